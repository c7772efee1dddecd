//! `report`: one SQL statement over every tenant's database (DESIGN section 8).
//!
//! Measured: `Fleet::report` over N tenants of R rows (default 10,000 x 20), for several
//! shapes, each run to its last row: a count, a count per tenant, the top 10 rows across
//! tenants, a self-join of each tenant's rows on (tenant, key), and every row (the memory
//! figure: with `--rows 100` that is a result of one million rows). The first report over the
//! fresh fleet is timed on its own (it creates each tenant's `-wal`/`-shm`, as any first open
//! does); the shapes are then medians of three runs.
//!
//! Baseline, in the same run: the same SQL on one shared database holding the same rows with a
//! `_tenant` column (keyed by `(_tenant, id)`, open and warm), read to its last row. Also the
//! raw cost of opening and reading every tenant file (`std::fs::read`), the floor for any
//! engine that reads each tenant's file.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use tenantdb::report::{ReportOptions, ReportRequest};
use tenantdb::{Fleet, NoProgress};

use crate::Params;
use crate::harness::{
    ACTOR, Report, Workdir, open_fleet, populated_fleet, reset_peak_rss, status_mb, summarize,
};

pub const DEFAULT_TENANTS: usize = 10_000;

/// Runs per shape; the figures are medians.
const RUNS: usize = 3;

/// The shapes: a name, and the SQL run on the fleet and on the shared database alike.
const SHAPES: &[(&str, &str)] = &[
    ("count", "SELECT count(*) FROM todos"),
    (
        "group_by_tenant",
        "SELECT _tenant, count(*) FROM todos GROUP BY 1",
    ),
    (
        "top_k",
        "SELECT _tenant, id, title, created_at FROM todos ORDER BY created_at DESC, _tenant, id \
         LIMIT 10",
    ),
    (
        "join",
        "SELECT a._tenant, count(*), sum(b.done) FROM todos a JOIN todos b \
         ON b._tenant = a._tenant AND b.id = a.id + 1 GROUP BY 1",
    ),
    ("all_rows", "SELECT * FROM todos"),
];

/// The headline shape: the "count per tenant" target.
const HEADLINE: &str = "group_by_tenant";

/// The shared database: every tenant's rows in one table, keyed by tenant and id.
const SHARED_SCHEMA: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE todos (
    _tenant TEXT NOT NULL,
    id INTEGER NOT NULL,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (_tenant, id)
) WITHOUT ROWID;
CREATE INDEX todos_done ON todos (_tenant, done);
";

struct Measured {
    seconds: f64,
    rows: u64,
    peak_rss_mb: f64,
    scanned: usize,
    skipped: usize,
}

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let rows = params.rows;
    let ids = populated_fleet(workdir, tenants, rows)?;
    let mut options = ReportOptions::default();
    if let Some(clients) = params.clients {
        options.jobs = clients;
    }
    let fleet = open_fleet(workdir, 1000)?;

    // The raw floor: open, read and close every tenant file.
    let started = Instant::now();
    let mut bytes = 0u64;
    for id in &ids {
        let path = fleet.layout().tenant_db(id);
        bytes += std::fs::read(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len() as u64;
    }
    let raw_us = started.elapsed().as_secs_f64() * 1e6 / tenants as f64;

    let headline_sql = SHAPES
        .iter()
        .find(|(name, _)| *name == HEADLINE)
        .map_or("", |(_, sql)| *sql);
    let first = measure(&fleet, headline_sql, &options)?;

    let mut results = Vec::new();
    for (name, sql) in SHAPES {
        let runs: Vec<Measured> = (0..RUNS)
            .map(|_| measure(&fleet, sql, &options))
            .collect::<Result<_>>()?;
        let seconds = summarize(&runs.iter().map(|m| m.seconds).collect::<Vec<_>>()).median;
        let peak = runs.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max);
        let last = runs.last().context("no runs")?;
        results.push((
            *name,
            *sql,
            seconds,
            peak,
            last.rows,
            last.scanned,
            last.skipped,
        ));
    }
    fleet.shutdown();
    drop(fleet);

    let shared = workdir.baseline_dir()?.join("shared.db");
    let conn = shared_database(&shared, tenants, rows)?;
    let mut report = Report::new("report");
    report.param("tenants", tenants as u64);
    report.param("rows", rows as u64);
    report.param("clients", options.jobs as u64);
    report.line(format!(
        "report: {tenants} tenants x {rows} rows, {} jobs, batches of {}; medians of {RUNS} runs",
        options.jobs, options.batch_tenants
    ));
    report.line(format!(
        "  first report over the fresh fleet ({HEADLINE}): {:.3} s (creates each tenant's -wal/-shm)",
        first.seconds
    ));
    report.line(format!(
        "  {:<16} {:>9} {:>12} {:>9} {:>10} {:>9}",
        "shape", "seconds", "baseline s", "ratio", "rows", "peak MB"
    ));
    for (name, sql, seconds, peak, out_rows, scanned, skipped) in results {
        let (baseline, baseline_rows) = baseline(&conn, sql)?;
        anyhow::ensure!(
            baseline_rows == out_rows,
            "{name}: the report returned {out_rows} rows, the shared database {baseline_rows}"
        );
        anyhow::ensure!(
            scanned == tenants && skipped == 0,
            "{name}: {scanned} tenants scanned, {skipped} skipped"
        );
        let ratio = seconds / baseline;
        if name == HEADLINE {
            report.figure("seconds", seconds);
            report.figure("baseline_seconds", baseline);
            report.figure("ratio", ratio);
            report.figure("peak_rss_mb", peak);
            report.figure("us_per_tenant", seconds * 1e6 / tenants as f64);
            report.figure(
                "core_us_per_tenant",
                seconds * 1e6 * options.jobs as f64 / tenants as f64,
            );
        }
        report.figure(&format!("{name}_seconds"), seconds);
        report.figure(&format!("{name}_baseline_seconds"), baseline);
        report.figure(&format!("{name}_ratio"), ratio);
        report.figure(&format!("{name}_peak_rss_mb"), peak);
        report.count(&format!("{name}_rows"), out_rows);
        report.line(format!(
            "  {name:<16} {seconds:>9.3} {baseline:>12.4} {ratio:>9.1} {out_rows:>10} {peak:>9.1}"
        ));
    }
    report.figure("first_seconds", first.seconds);
    report.figure("raw_read_us_per_tenant", raw_us);
    report.line(format!(
        "  raw open+read+close of every tenant file: {raw_us:.1} us per tenant ({} KiB each)",
        bytes / 1024 / tenants.max(1) as u64
    ));
    Ok(report)
}

/// One report, read to its last row; with the peak memory while it ran.
fn measure(fleet: &Fleet, sql: &str, options: &ReportOptions) -> Result<Measured> {
    let request = ReportRequest {
        sql: sql.to_string(),
        ..ReportRequest::default()
    };
    reset_peak_rss();
    let started = Instant::now();
    let mut report = fleet
        .report_with(&request, options, &NoProgress, ACTOR)
        .with_context(|| format!("running {sql}"))?;
    let mut rows = 0u64;
    for row in report.rows.by_ref() {
        row.with_context(|| format!("reading the rows of {sql}"))?;
        rows += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mb = status_mb("VmHWM")?;
    Ok(Measured {
        seconds,
        rows,
        peak_rss_mb,
        scanned: report.tenants_scanned,
        skipped: report.tenants_skipped.len(),
    })
}

/// The same SQL on the shared database, read to its last row: median seconds, and the rows.
fn baseline(conn: &Connection, sql: &str) -> Result<(f64, u64)> {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let mut stmt = conn.prepare(sql).context("preparing the baseline")?;
        let mut rows = stmt.query([]).context("running the baseline")?;
        count = 0u64;
        while rows.next().context("reading the baseline")?.is_some() {
            count += 1;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    Ok((summarize(&times).median, count))
}

/// Builds the shared database with the rows `fill_rows` put in the tenants (not timed).
fn shared_database(path: &Path, tenants: usize, rows: usize) -> Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    conn.execute_batch(SHARED_SCHEMA)
        .context("creating the shared schema")?;
    let tx = conn.transaction().context("starting to insert rows")?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO todos (_tenant, id, title, done, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .context("preparing the insert")?;
        for t in 0..tenants {
            let tenant = format!("t{t:06}");
            for row in 1..=rows {
                insert
                    .execute(params![
                        tenant,
                        row as i64,
                        format!("todo {row} of {tenant}"),
                        i64::from(row % 3 == 0),
                        1_700_000_000 + row as i64
                    ])
                    .context("inserting a row")?;
            }
        }
    }
    tx.commit().context("committing rows")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .context("finishing the shared database")?;
    Ok(conn)
}
