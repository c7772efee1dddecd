//! `tenantdb import`: split a shared database into per-tenant databases, then verify.
//!
//! Exit codes: 0 when every tenant is imported (now or by an earlier run) and verified;
//! 1 when the import is refused before anything is written (bad source, unknown tenant column,
//! invalid tenant values, mismatched columns...) or cannot run; 2 when it ran but some tenants
//! failed or verification found a difference.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tenantdb::import::{ImportOptions, ImportPlan, ImportReport, TenantAction, VerifyReport};

use crate::output::{print_json, table};
use crate::progress::Bar;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The shared SQLite database to split. Opened read-only; never changed.
    #[arg(long, value_name = "FILE")]
    pub from: std::path::PathBuf,
    /// The column that holds each row's tenant id in the shared database.
    #[arg(long, value_name = "COLUMN")]
    pub tenant_column: String,
    /// Also split table T by its own COLUMN (for a table with no tenant column and no foreign
    /// key to an imported table, which is otherwise left alone). Repeatable.
    #[arg(long = "table", value_name = "T=COLUMN", value_parser = parse_table)]
    pub tables: Vec<(String, String)>,
    /// Do not write table T to tenants (for example, a table the tenant schema dropped).
    /// Repeatable.
    #[arg(long = "skip-table", value_name = "T")]
    pub skip_tables: Vec<String>,
    /// Leave out rows whose tenant value is NULL or not a valid tenant id (and rows with no
    /// parent to follow) and report them, instead of refusing the import.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Show what would be written per table and tenant; write nothing, create no tenant.
    #[arg(long, conflicts_with = "verify_only")]
    pub dry_run: bool,
    /// Only compare the tenants with the source (row counts and checksums); write nothing.
    #[arg(long)]
    pub verify_only: bool,
    /// Tenants written or verified at once (default: twice the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
}

fn parse_table(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((t, c)) if !t.trim().is_empty() && !c.trim().is_empty() => {
            Ok((t.trim().to_string(), c.trim().to_string()))
        }
        _ => Err(format!(
            "expected T=COLUMN, as in notes=owner_id; got {raw:?}"
        )),
    }
}

pub fn run(data_dir: &Path, args: ImportArgs, json: bool) -> Result<ExitCode> {
    // The tenant schema must exist before rows can be mapped onto it; checking first also
    // keeps a dry run from creating a data directory.
    if !data_dir.join(tenantdb::layout::CATALOG_FILE).exists() {
        bail!(
            "no tenantdb data directory at {}: write the tenant schema as migrations and apply \
             it with `tenantdb migrate --migrations DIR` before importing",
            data_dir.display()
        );
    }
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    let fleet = crate::open(data_dir)?;
    let mut options = ImportOptions::new(&args.from, &args.tenant_column);
    options.tables = args.tables;
    options.skip_tables = args.skip_tables;
    options.skip_invalid = args.skip_invalid;
    if let Some(jobs) = args.jobs {
        options.jobs = jobs;
    }
    let plan = fleet
        .plan_import(&options)
        .with_context(|| format!("planning the import of {}", args.from.display()))?;

    if plan.is_refused() {
        if json {
            print_json(&json!({ "plan": plan }))?;
        } else {
            print_plan(&plan, false);
        }
        bail!(
            "the import was refused before anything was written:\n  - {}",
            plan.problems.join("\n  - ")
        );
    }
    if args.dry_run {
        if json {
            print_json(&json!({ "plan": plan }))?;
        } else {
            print_plan(&plan, true);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        print_plan(&plan, false);
    }
    let imported = if args.verify_only {
        None
    } else {
        let report = fleet.import(&plan, &Bar::new("importing"), crate::ACTOR)?;
        if !json {
            print_import(&report);
        }
        Some(report)
    };
    let verified = fleet.verify_import(&plan, &Bar::new("verifying"))?;
    if json {
        print_json(&json!({ "plan": plan, "import": imported, "verify": verified }))?;
    } else {
        print_verify(&verified);
    }
    let complete = imported.as_ref().is_none_or(ImportReport::is_complete);
    Ok(if complete && verified.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_plan(plan: &ImportPlan, per_tenant: bool) {
    println!(
        "source {} (sha256 {}), tenant column {}, tenant schema version {}",
        plan.source.display(),
        plan.source_sha256.get(..12).unwrap_or(&plan.source_sha256),
        plan.tenant_column,
        plan.schema_version
    );
    let rows: Vec<Vec<String>> = plan
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.route.describe(),
                if t.skipped {
                    "skipped (--skip-table)".into()
                } else {
                    t.tenant_table.clone().unwrap_or_else(|| "-".into())
                },
                t.rows.to_string(),
                t.left_out.total().to_string(),
            ]
        })
        .collect();
    table(&["TABLE", "HOW", "INTO", "ROWS", "LEFT OUT"], &rows);
    for alone in &plan.left_alone {
        println!("left alone: {}: {}", alone.table, alone.reason);
    }
    for note in &plan.notes {
        println!("note: {note}");
    }
    println!(
        "{} tenants: {} to create, {} to import, {} already imported, {} deleted (not \
         written), {} blocked; {} rows",
        plan.tenants.len(),
        plan.count(TenantAction::Create),
        plan.count(TenantAction::Import),
        plan.count(TenantAction::Done),
        plan.count(TenantAction::Deleted),
        plan.count(TenantAction::Blocked),
        plan.rows
    );
    for t in plan
        .tenants
        .iter()
        .filter(|t| t.action == TenantAction::Blocked)
    {
        println!(
            "blocked: {}: {}",
            t.id,
            t.reason.as_deref().unwrap_or("unknown")
        );
    }
    if per_tenant {
        println!();
        let written: Vec<usize> = (0..plan.tables.len())
            .filter(|&i| !plan.tables[i].skipped && plan.tables[i].tenant_table.is_some())
            .collect();
        let mut headers = vec!["TENANT", "ACTION"];
        headers.extend(written.iter().map(|&i| plan.tables[i].table.as_str()));
        let rows: Vec<Vec<String>> = plan
            .tenants
            .iter()
            .map(|t| {
                let mut row = vec![t.id.to_string(), action_name(t.action).to_string()];
                row.extend(written.iter().map(|&i| t.rows[i].to_string()));
                row
            })
            .collect();
        table(&headers, &rows);
        println!("dry run: nothing was written");
    }
}

fn action_name(action: TenantAction) -> &'static str {
    match action {
        TenantAction::Create => "create",
        TenantAction::Import => "import",
        TenantAction::Done => "done",
        TenantAction::Deleted => "deleted",
        TenantAction::Blocked => "blocked",
    }
}

fn print_import(report: &ImportReport) {
    println!(
        "imported {} tenants ({} created), {} rows in {:.2} s; {} already imported, {} deleted \
         (not written), {} failed",
        report.imported,
        report.created,
        report.rows,
        report.seconds,
        report.already_imported,
        report.deleted.len(),
        report.failed.len()
    );
    if report.rows_left_out > 0 {
        println!(
            "left out: {} rows with no valid tenant (--skip-invalid)",
            report.rows_left_out
        );
    }
    for id in &report.deleted {
        println!("deleted, not written: {id}");
    }
    for f in &report.failed {
        println!("failed: {}: {}", f.tenant, f.error);
    }
}

fn print_verify(report: &VerifyReport) {
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.source_rows.to_string(),
                t.tenant_rows.to_string(),
                t.tenants_mismatched.to_string(),
            ]
        })
        .collect();
    table(
        &["TABLE", "SOURCE ROWS", "TENANT ROWS", "TENANTS DIFFERING"],
        &rows,
    );
    if report.ok {
        println!(
            "verified: {} of {} tenants match the source ({} rows, counts and checksums), {} \
             deleted not compared ({:.2} s)",
            report.matched,
            report.tenants,
            report.rows,
            report.deleted.len(),
            report.seconds
        );
        return;
    }
    println!(
        "verification FAILED: {} of {} tenants match the source; {} differences:",
        report.matched,
        report.tenants,
        report.mismatches.len()
    );
    const SHOWN: usize = 50;
    for m in report.mismatches.iter().take(SHOWN) {
        match &m.table {
            Some(table) => println!("  {} {table}: {}", m.tenant, m.problem),
            None => println!("  {}: {}", m.tenant, m.problem),
        }
    }
    if report.mismatches.len() > SHOWN {
        println!(
            "  ... and {} more (--json lists them all)",
            report.mismatches.len() - SHOWN
        );
    }
}
