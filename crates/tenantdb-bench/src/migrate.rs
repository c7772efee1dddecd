//! `migrate`: rolling a schema change out to the whole fleet.
//!
//! Measured: `Fleet::migrate` taking every tenant from version 1 through two more migrations
//! (an `ADD COLUMN` and a `CREATE INDEX`), with the library's parallelism (or `--clients`
//! jobs). Baseline: the single-database equivalent, the same two statements on one shared
//! database holding every tenant's rows in one table with a tenant column.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use tenantdb::{MigrateOptions, NoProgress};

use crate::Params;
use crate::harness::{ACTOR, Report, Workdir, open_fleet, populated_fleet, write_migration};

pub const DEFAULT_TENANTS: usize = 10_000;

const ADD_PRIORITY: &str = "ALTER TABLE todos ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n";
const INDEX_PRIORITY: &str = "CREATE INDEX todos_priority ON todos(priority);\n";

/// Migration 0001 for one shared database: every row carries its tenant.
const SHARED_SCHEMA: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX todos_done ON todos (tenant, done);
";

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let rows = params.rows;
    populated_fleet(workdir, tenants, rows)?;

    let dir = workdir.migrations_dir()?;
    write_migration(&dir, "0002_add_priority.sql", ADD_PRIORITY)?;
    write_migration(&dir, "0003_index_priority.sql", INDEX_PRIORITY)?;
    let mut options = MigrateOptions::default();
    if let Some(clients) = params.clients {
        options.jobs = clients;
    }
    let fleet = open_fleet(workdir, 1000)?;
    let started = Instant::now();
    let outcome = fleet
        .migrate(&dir, &options, &NoProgress, ACTOR)
        .context("migrating the fleet")?;
    let seconds = started.elapsed().as_secs_f64();
    let at_latest = fleet
        .catalog()
        .tenants_by_version()?
        .into_iter()
        .find_map(|(version, n)| (version == 3).then_some(n))
        .unwrap_or(0);
    fleet.shutdown();
    drop(fleet);

    let shared = workdir.baseline_dir()?.join("shared.db");
    let baseline_seconds = shared_database(&shared, tenants, rows)?;

    let rate = tenants as f64 / seconds;
    let ratio = seconds / baseline_seconds;
    let failures = outcome.failed.len();

    let mut report = Report::new("migrate");
    report.param("tenants", tenants as u64);
    report.param("rows", rows as u64);
    report.param("clients", options.jobs as u64);
    report.figure("seconds", seconds);
    report.figure("tenants_per_second", rate);
    report.count("failures", failures as u64);
    report.count("migrated", outcome.migrated as u64);
    report.count("tenants_at_latest", at_latest);
    report.figure("baseline_seconds", baseline_seconds);
    report.figure("ratio", ratio);

    report.line(format!(
        "migrate: {tenants} tenants of {rows} rows, version 1 -> 3 (ADD COLUMN, CREATE INDEX), \
         {} jobs",
        options.jobs
    ));
    report.line(format!(
        "  tenantdb  Fleet::migrate                          {seconds:>8.3} s   {rate:>8.1} \
         tenants/s   {failures} failures, {} migrated, {at_latest} at version 3",
        outcome.migrated
    ));
    report.line(format!(
        "  baseline  one shared database of {:>9} rows   {baseline_seconds:>8.3} s",
        tenants * rows
    ));
    report.line(format!(
        "  ratio     {ratio:.1} (tenantdb seconds / baseline seconds)"
    ));
    for f in outcome.failed.iter().take(5) {
        report.line(format!(
            "  failed    {} at version {}: {}",
            f.tenant, f.version, f.error
        ));
    }
    Ok(report)
}

/// Builds the shared database (not timed), then times the two migrations on it, each in its
/// own transaction as on a tenant, through to the close that checkpoints the log.
fn shared_database(path: &Path, tenants: usize, rows: usize) -> Result<f64> {
    let mut conn =
        Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    conn.execute_batch(SHARED_SCHEMA)
        .context("creating the shared schema")?;
    let tx = conn.transaction().context("starting to insert rows")?;
    {
        let mut insert = tx
            .prepare("INSERT INTO todos (tenant, title, done, created_at) VALUES (?1, ?2, ?3, ?4)")
            .context("preparing the insert")?;
        for t in 0..tenants {
            let tenant = format!("t{t:06}");
            for row in 1..=rows {
                insert
                    .execute(params![
                        tenant,
                        format!("todo {row} of {tenant}"),
                        i64::from(row % 3 == 0),
                        1_700_000_000 + row as i64
                    ])
                    .context("inserting a row")?;
            }
        }
    }
    tx.commit().context("committing rows")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .context("checkpointing the shared database")?;

    let started = Instant::now();
    for sql in [ADD_PRIORITY, INDEX_PRIORITY] {
        let tx = conn.transaction().context("starting a migration")?;
        tx.execute_batch(sql).context("running a migration")?;
        tx.commit().context("committing a migration")?;
    }
    conn.close()
        .map_err(|(_, e)| e)
        .context("closing the shared database")?;
    Ok(started.elapsed().as_secs_f64())
}
