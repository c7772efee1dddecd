//! `tenantdb`: the command line over the tenantdb library.

mod args;
mod demo;
mod import;
mod output;
mod progress;
mod report;
mod serve;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches};
use serde_json::json;
use tenantdb::{Config, Fleet, MigrateOptions, TenantId, TenantInfo};

use args::{Cli, Command, MigrateCommand, MigrateStatus, TenantCommand};
use output::{cell, json_value, print_json, table, time};

/// Who the admin audit says acted, for everything done from this command line.
const ACTOR: &str = "cli";

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let explicit_data_dir = matches
        .value_source("data_dir")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The demo's server logs every request; keep its output to the walk-through.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "warn,tenantdb=info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file or a collector stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    cli.explicit_data_dir = explicit_data_dir;
    if !matches!(cli.command, Command::Serve(_) | Command::Demo { .. }) {
        end_quietly_when_stdout_closes();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A printing command whose reader goes away (`tenantdb report … | head`) ends quietly, as
/// command-line tools do, instead of panicking in `println!`: Rust starts programs with SIGPIPE
/// ignored, which turns a closed pipe into an error at every print. Not for `serve` and `demo`:
/// they write to sockets, where a client hanging up must stay an error, not end the process.
fn end_quietly_when_stdout_closes() {
    // SAFETY: `signal` with `SIG_DFL` installs no handler code, so nothing can run in a signal
    // context; it is called once at start-up, before the command starts any thread.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Bad ids are refused before the data directory is even opened: nothing is created.
    for raw in ids_named(&cli.command) {
        tenant_id(raw)?;
    }
    match cli.command {
        Command::Serve(args) => {
            serve::serve(&cli.data_dir, args)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Token { id, ttl, auth } => {
            serve::token(&cli.data_dir, &id, &ttl, &auth)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Demo {
            users,
            use_existing,
        } => {
            demo::run(demo::DemoArgs {
                data_dir: cli.explicit_data_dir.then(|| cli.data_dir.clone()),
                users,
                use_existing,
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Import(args) => return import::run(&cli.data_dir, args, cli.json),
        _ => {}
    }
    let fleet = open(&cli.data_dir)?;
    match cli.command {
        Command::Serve(_) | Command::Token { .. } | Command::Import(_) | Command::Demo { .. } => {
            unreachable!("handled above")
        }
        Command::Tenant(cmd) => tenant(&fleet, cmd, cli.json),
        Command::Sql { id, sql } => run_sql(&fleet, &id, &sql, cli.json),
        Command::Stats => stats(&fleet, cli.json),
        Command::Audit {
            id,
            admin,
            verify,
            after,
            limit,
        } => audit(&fleet, id.as_deref(), admin, verify, after, limit, cli.json),
        Command::Migrate(cmd) => migrate(&fleet, cmd, cli.json),
        Command::Report(args) => report::run(&fleet, args, cli.json, ACTOR),
    }
}

fn ids_named(command: &Command) -> Vec<&str> {
    match command {
        Command::Tenant(TenantCommand::Create { ids }) => ids.iter().map(String::as_str).collect(),
        Command::Tenant(
            TenantCommand::Info { id }
            | TenantCommand::Delete { id, .. }
            | TenantCommand::Restore { id }
            | TenantCommand::Export { id, .. },
        )
        | Command::Sql { id, .. }
        | Command::Audit { id: Some(id), .. }
        | Command::Token { id, .. } => vec![id.as_str()],
        Command::Report(args) => args.tenants.iter().map(String::as_str).collect(),
        Command::Serve(_) | Command::Import(_) => Vec::new(),
        Command::Tenant(TenantCommand::List { .. })
        | Command::Migrate(_)
        | Command::Audit { id: None, .. }
        | Command::Stats
        | Command::Demo { .. } => Vec::new(),
    }
}

fn open(data_dir: &Path) -> Result<Fleet> {
    let fleet = Fleet::open(Config::new(data_dir))
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let found = fleet.reconciled();
    if !found.is_clean() {
        eprintln!(
            "note: reconciliation: {} adopted, {} deletions finished, {} missing, {} staging files \
             removed, {} unknown files",
            found.adopted.len(),
            found.finished_deletions.len(),
            found.missing.len(),
            found.removed_staging.len(),
            found.unknown_files.len()
        );
        for id in &found.missing {
            eprintln!("warning: tenant {id} is in the catalog but its database file is missing");
        }
    }
    Ok(fleet)
}

fn tenant_id(raw: &str) -> Result<TenantId> {
    Ok(TenantId::new(raw)?)
}

fn tenant(fleet: &Fleet, cmd: TenantCommand, json: bool) -> Result<ExitCode> {
    match cmd {
        TenantCommand::Create { ids } => {
            let ids = ids
                .iter()
                .map(String::as_str)
                .map(tenant_id)
                .collect::<Result<Vec<_>>>()?;
            let mut created = Vec::new();
            for id in &ids {
                let record = fleet.create_tenant(id, ACTOR)?;
                created.push(fleet.tenant(&record.id)?);
            }
            print_tenants(&created, json)?;
        }
        TenantCommand::List { after, limit } => {
            let tenants = fleet.list_tenants(after.as_deref(), limit.unwrap_or(usize::MAX))?;
            print_tenants(&tenants, json)?;
        }
        TenantCommand::Info { id } => {
            let info = fleet.tenant(&tenant_id(&id)?)?;
            if json {
                print_json(&info)?;
            } else {
                print_tenants(std::slice::from_ref(&info), false)?;
                if let Some(f) = &info.record.migration_error {
                    println!("migration {} failed: {}", f.version, f.error);
                }
            }
        }
        TenantCommand::Delete { id, purge } => {
            let id = tenant_id(&id)?;
            fleet.delete_tenant(&id, purge, ACTOR)?;
            let state = if purge { "purged" } else { "deleted" };
            if json {
                print_json(&json!({"id": id, "state": state}))?;
            } else {
                println!("tenant {id} {state}");
            }
        }
        TenantCommand::Restore { id } => {
            let id = tenant_id(&id)?;
            fleet.restore_tenant(&id, ACTOR)?;
            let info = fleet.tenant(&id)?;
            print_tenants(std::slice::from_ref(&info), json)?;
        }
        TenantCommand::Export { id, out } => {
            let id = tenant_id(&id)?;
            let bytes = fleet.export_tenant(&id, &out, ACTOR)?;
            if json {
                print_json(&json!({"id": id, "out": out, "bytes": bytes}))?;
            } else {
                println!("exported tenant {id} to {} ({bytes} bytes)", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tenants(tenants: &[TenantInfo], json: bool) -> Result<()> {
    if json {
        return print_json(&tenants);
    }
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.record.id.to_string(),
                t.record.state.as_str().to_string(),
                t.record.schema_version.to_string(),
                t.size_bytes.to_string(),
                time(Some(t.record.created_at)),
                time(t.record.last_active_at),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "VERSION", "BYTES", "CREATED", "LAST ACTIVE"],
        &rows,
    );
    Ok(())
}

fn run_sql(fleet: &Fleet, id: &str, sql: &str, json: bool) -> Result<ExitCode> {
    let id = tenant_id(id)?;
    let mut conn = fleet.connect(&id)?;
    conn.set_actor(format!("admin:{ACTOR}"));
    let results = conn.execute_script(sql)?;
    if json {
        let out: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "columns": r.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
                    "rows": r.rows.iter()
                        .map(|row| row.iter().map(json_value).collect::<Vec<_>>())
                        .collect::<Vec<_>>(),
                    "rows_affected": r.rows_affected,
                    "last_insert_rowid": r.last_insert_rowid,
                })
            })
            .collect();
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &results {
        if r.columns.is_empty() {
            if r.last_insert_rowid.is_some() {
                println!("{} rows changed", r.rows_affected);
            }
            continue;
        }
        let headers: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        let rows: Vec<Vec<String>> = r
            .rows
            .iter()
            .map(|row| row.iter().map(cell).collect())
            .collect();
        table(&headers, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

fn migrate(fleet: &Fleet, cmd: MigrateCommand, json: bool) -> Result<ExitCode> {
    if let Some(MigrateStatus::Status { migrations }) = cmd.status {
        return migrate_status(fleet, migrations.as_deref(), json);
    }
    let Some(dir) = cmd.run.migrations else {
        bail!("no migrations directory: pass --migrations DIR or set TENANTDB_MIGRATIONS");
    };
    let mut options = MigrateOptions {
        dry_run: cmd.run.dry_run,
        ..MigrateOptions::default()
    };
    if let Some(jobs) = cmd.run.jobs {
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        options.jobs = jobs;
    }
    let bar = progress::Bar::new(if options.dry_run {
        "dry run"
    } else {
        "migrating"
    });
    let report = fleet.migrate(&dir, &options, &bar, ACTOR)?;
    if json {
        print_json(&report)?;
    } else {
        let verb = if report.dry_run {
            "would migrate"
        } else {
            "migrated"
        };
        println!(
            "schema version {}: {verb} {} of {} tenants, {} failed ({:.2}s)",
            report.schema_version,
            report.migrated,
            report.tenants,
            report.failed.len(),
            report.seconds
        );
        for f in &report.failed {
            println!("  {} at migration {}: {}", f.tenant, f.version, f.error);
        }
    }
    // Tenant failures are reported above; the exit code tells scripts the fleet is not current.
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn migrate_status(fleet: &Fleet, dir: Option<&Path>, json: bool) -> Result<ExitCode> {
    let status = fleet.migration_status(dir)?;
    if json {
        print_json(&status)?;
    } else {
        println!("latest schema version: {}", status.latest);
        let rows: Vec<Vec<String>> = status
            .migrations
            .iter()
            .map(|m| {
                vec![
                    m.version.to_string(),
                    m.name.clone(),
                    m.sha256[..12].to_string(),
                    time(Some(m.registered_at)),
                ]
            })
            .collect();
        table(&["VERSION", "NAME", "SHA256", "REGISTERED"], &rows);
        println!();
        let rows: Vec<Vec<String>> = status
            .tenants_by_version
            .iter()
            .map(|(v, n)| vec![v.to_string(), n.to_string()])
            .collect();
        table(&["VERSION", "TENANTS"], &rows);
        for name in &status.pending {
            println!("pending: {name}");
        }
        if let Some(problem) = &status.problem {
            println!("cannot apply the migrations directory: {problem}");
        }
        if !status.failures.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = status
                .failures
                .iter()
                .map(|f| vec![f.tenant.to_string(), f.version.to_string(), f.error.clone()])
                .collect();
            table(&["FAILED TENANT", "AT VERSION", "ERROR"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(
    fleet: &Fleet,
    id: Option<&str>,
    admin: bool,
    verify: bool,
    after: i64,
    limit: usize,
    json: bool,
) -> Result<ExitCode> {
    if admin {
        let entries = fleet.catalog().admin_audit(after, limit)?;
        if json {
            print_json(&entries)?;
        } else {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        time(Some(e.at)),
                        e.actor.clone(),
                        e.action.clone(),
                        e.tenant.clone().unwrap_or_default(),
                        e.detail.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(&["SEQ", "AT", "ACTOR", "ACTION", "TENANT", "DETAIL"], &rows);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = tenant_id(id.unwrap_or_default())?;
    if verify {
        let outcome = fleet.verify_audit(&id)?;
        if json {
            print_json(&outcome)?;
        } else {
            match &outcome.first_broken {
                None => println!("audit of {id}: {} entries, chain intact", outcome.entries),
                Some(b) => println!(
                    "audit of {id}: chain broken at entry {}: {}",
                    b.seq, b.reason
                ),
            }
        }
        // A broken chain is an alarm: scripts see it in the exit code.
        return Ok(if outcome.first_broken.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        });
    }
    let entries = fleet.tenant_audit(&id, after, limit)?;
    if json {
        print_json(&entries)?;
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    time(Some(e.at / 1000)),
                    e.actor.clone(),
                    e.rows_changed.to_string(),
                    e.statement.clone(),
                ]
            })
            .collect();
        table(&["SEQ", "AT", "ACTOR", "ROWS", "STATEMENT"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(fleet: &Fleet, json: bool) -> Result<ExitCode> {
    let s = fleet.stats()?;
    if json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "tenants: {} total; active {} (1 day), {} (7 days), {} (30 days)",
        s.tenants_total, s.active_1d, s.active_7d, s.active_30d
    );
    println!(
        "sizes: {} bytes in all; p50 {} bytes, p99 {} bytes",
        s.sizes.total_bytes, s.sizes.p50_bytes, s.sizes.p99_bytes
    );
    let versions: Vec<String> = s
        .schema_versions
        .iter()
        .map(|(v, n)| format!("v{v}: {n}"))
        .collect();
    println!("schema versions: {}", versions.join(", "));
    println!(
        "requests: {}; writes: {}; cache hit rate: {}",
        s.requests_total,
        s.writes_total,
        s.cache
            .hit_rate
            .map_or("n/a".to_string(), |r| format!("{:.1}%", r * 100.0))
    );
    let section = |title: &str, rows: &[tenantdb::stats::TenantCount]| {
        if rows.is_empty() {
            return;
        }
        println!();
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|t| vec![t.tenant.to_string(), t.count.to_string()])
            .collect();
        table(&[title, "COUNT"], &rows);
    };
    section("LARGEST (BYTES)", &s.sizes.largest);
    section("TOP REQUESTS", &s.top_requests);
    section("TOP WRITES", &s.top_writes);
    if !s.signups_per_day.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .signups_per_day
            .iter()
            .map(|(d, n)| vec![d.clone(), n.to_string()])
            .collect();
        table(&["DAY", "SIGNUPS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
