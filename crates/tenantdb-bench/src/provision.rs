//! `provision`: creating tenants at the latest schema.
//!
//! Measured: `Fleet::create_tenant` (a synced copy of the template, a rename into place, the
//! catalog row and the admin audit entry) from `--clients` threads. Baseline: the naive way,
//! making each database fresh by running the schema SQL on it (open, WAL, schema, close), from
//! the same number of threads.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rusqlite::Connection;

use crate::Params;
use crate::harness::{
    Report, Summary, TODOS_SCHEMA, Workdir, create_tenants, open_fleet_at_v1, parallel,
    summarize_us, tenant_ids,
};

pub const DEFAULT_TENANTS: usize = 2000;
const DEFAULT_CLIENTS: usize = 4;

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let clients = params.clients.unwrap_or(DEFAULT_CLIENTS);
    let ids = tenant_ids(tenants)?;

    let fleet = open_fleet_at_v1(workdir)?;
    let started = Instant::now();
    let latencies = create_tenants(&fleet, &ids, clients)?;
    let seconds = started.elapsed().as_secs_f64();
    fleet.shutdown();
    drop(fleet);

    let dir = workdir.baseline_dir()?;
    let started = Instant::now();
    let baseline_latencies = parallel(clients, tenants, |i| {
        naive_create(&dir.join(format!("{}.db", ids[i])))
    })?;
    let baseline_seconds = started.elapsed().as_secs_f64();

    let ours = summarize_us(&latencies);
    let theirs = summarize_us(&baseline_latencies);
    let rate = tenants as f64 / seconds;
    let baseline_rate = tenants as f64 / baseline_seconds;
    let ratio = rate / baseline_rate;

    let mut report = Report::new("provision");
    report.param("tenants", tenants as u64);
    report.param("clients", clients as u64);
    report.figure("tenants_per_second", rate);
    report.figure("create_us_median", ours.median);
    report.figure("create_us_p99", ours.p99);
    report.figure("seconds", seconds);
    report.figure("baseline_tenants_per_second", baseline_rate);
    report.figure("baseline_create_us_median", theirs.median);
    report.figure("baseline_create_us_p99", theirs.p99);
    report.figure("baseline_seconds", baseline_seconds);
    report.figure("ratio", ratio);

    report.line(format!(
        "provision: {tenants} tenants at schema version 1, {clients} client threads"
    ));
    report.line(row("tenantdb  Fleet::create_tenant", rate, ours, seconds));
    report.line(row(
        "baseline  open, WAL, schema SQL, close",
        baseline_rate,
        theirs,
        baseline_seconds,
    ));
    report.line(format!(
        "  ratio     {ratio:.2} (tenantdb tenants/s / baseline tenants/s)"
    ));
    Ok(report)
}

fn row(what: &str, rate: f64, per_create: Summary, seconds: f64) -> String {
    format!(
        "  {what:<40} {rate:>9.1} tenants/s   per create: median {:>8.1} us, p99 {:>8.1} us   \
         ({seconds:.2} s)",
        per_create.median, per_create.p99
    )
}

/// The naive way to give a new user a database: make it and run the schema on it.
fn naive_create(path: &Path) -> Result<Duration> {
    let started = Instant::now();
    let conn = Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    conn.execute_batch("PRAGMA journal_mode = WAL")
        .context("switching to WAL")?;
    conn.execute_batch(TODOS_SCHEMA)
        .context("running the schema")?;
    conn.close()
        .map_err(|(_, e)| e)
        .context("closing a new database")?;
    Ok(started.elapsed())
}
