//! `open`: reaching a tenant's data through the connection cache, cold and warm, and what a
//! full cache costs in memory.
//!
//! - Cold: with a cache of one tenant, every access opens: `Fleet::connect` (open, version
//!   check, guard) plus one point query, per tenant. Baselines: a naive rusqlite open (default
//!   flags) + the same query + close, and a raw `std::fs::read` of the same file.
//! - Memory: peak RSS after touching 10,000 tenants (or `--tenants`, if fewer) through a cache
//!   of 1,000.
//! - Warm: repeated point queries on a leased connection (as user SQL, through the guard), and
//!   full cache hits (checkout + query + hand back) across the cached tenants. Baseline: the
//!   same query on a plain, unguarded connection.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rusqlite::Connection;
use tenantdb::layout::Layout;
use tenantdb::{Args, Fleet, TenantId, Value};

use crate::Params;
use crate::harness::{
    POINT_QUERY, Report, Summary, Workdir, micros, open_fleet, populated_fleet, reset_peak_rss,
    status_mb, summarize, summarize_us,
};

pub const DEFAULT_TENANTS: usize = 1000;
/// A cache this small makes every access in the cold pass a miss.
const COLD_CACHE_CAPACITY: usize = 1;
/// The memory figure: this many tenants touched through a cache of `RSS_CACHE_CAPACITY`.
const RSS_TOUCHED: usize = 10_000;
const RSS_CACHE_CAPACITY: usize = 1000;

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let rows = params.rows;
    let budget = Duration::from_secs_f64(params.seconds);
    let ids = populated_fleet(workdir, tenants, rows)?;
    // Tenant i is asked for row `key(i)`, so the rows read differ from tenant to tenant.
    let key = |i: usize| (i % rows) as i64 + 1;

    // Cold: every access opens the tenant. The first pass is each tenant's first open through
    // the library since it was filled; the second is the steady state of a server, where an
    // evicted tenant is opened again.
    let fleet = open_fleet(workdir, COLD_CACHE_CAPACITY)?;
    let first = cold_pass(&fleet, &ids, &key)?;
    let cold = cold_pass(&fleet, &ids, &key)?;
    let cold_misses = fleet.cache().stats.misses.load(Ordering::Relaxed);
    fleet.shutdown();
    drop(fleet);

    // Baselines for the cold path, over the same files. The naive open is measured in its own
    // steady state too: its first pass finds the files as the library left them.
    let layout = Layout::new(workdir.fleet_dir());
    let paths: Vec<PathBuf> = ids.iter().map(|id| layout.tenant_db(id)).collect();
    naive_pass(&paths, &key)?;
    let naive = naive_pass(&paths, &key)?;
    let mut raw = Vec::with_capacity(tenants);
    let mut bytes = 0u64;
    for path in &paths {
        let started = Instant::now();
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        raw.push(started.elapsed());
        bytes += data.len() as u64;
    }

    // Memory: touch many tenants through a server-sized cache.
    let touched = tenants.min(RSS_TOUCHED);
    let peak_reset = reset_peak_rss();
    let rss_before_mb = status_mb("VmRSS")?;
    let fleet = open_fleet(workdir, RSS_CACHE_CAPACITY)?;
    for (i, id) in ids.iter().take(touched).enumerate() {
        let mut lease = fleet.connect(id)?;
        lease.execute(POINT_QUERY, &point(key(i)))?;
    }
    let peak_rss_mb = status_mb("VmHWM")?;
    let rss_mb = status_mb("VmRSS")?;
    let cached = fleet.cache().len();

    // Warm: the tenants still in the cache.
    let hot: Vec<(usize, TenantId)> = ids
        .iter()
        .cloned()
        .enumerate()
        .take(touched)
        .skip(touched.saturating_sub(cached))
        .collect();
    let warm = warm_figures(&fleet, &hot, &key, budget)?;
    fleet.shutdown();
    drop(fleet);

    let first = summarize_us(&first);
    let cold = summarize_us(&cold);
    let naive = summarize_us(&naive);
    let raw = summarize_us(&raw);

    let mut report = Report::new("open");
    report.param("tenants", tenants as u64);
    report.param("rows", rows as u64);
    report.param("seconds", params.seconds);
    report.figure("cold_us_median", cold.median);
    report.figure("cold_us_p99", cold.p99);
    report.figure("cold_first_us_median", first.median);
    report.figure("cold_first_us_p99", first.p99);
    report.count("cold_cache_misses", cold_misses);
    report.figure("baseline_naive_open_us_median", naive.median);
    report.figure("baseline_naive_open_us_p99", naive.p99);
    report.figure("baseline_raw_read_us_median", raw.median);
    report.figure("baseline_raw_read_us_p99", raw.p99);
    report.figure("ratio_cold_vs_naive_open", cold.median / naive.median);
    report.figure("ratio_cold_vs_raw_read", cold.median / raw.median);
    report.figure("warm_us_median", warm.query.median);
    report.figure("warm_us_p99", warm.query.p99);
    report.figure("warm_checkout_us_median", warm.checkout.median);
    report.figure("warm_checkout_us_p99", warm.checkout.p99);
    report.figure("baseline_warm_us_median", warm.baseline.median);
    report.figure(
        "ratio_warm_vs_baseline",
        warm.query.median / warm.baseline.median,
    );
    report.figure("peak_rss_mb", peak_rss_mb);
    report.figure("rss_mb", rss_mb);
    report.figure("rss_before_mb", rss_before_mb);
    report.flag("peak_rss_reset", peak_reset);
    report.count("rss_tenants_touched", touched as u64);
    report.count("rss_cache_capacity", RSS_CACHE_CAPACITY as u64);
    report.count("rss_tenants_cached", cached as u64);

    report.line(format!(
        "open: {tenants} tenants of {rows} rows ({} bytes each on average)",
        bytes / tenants as u64
    ));
    report.line("  cold (each access opens the tenant), per tenant:");
    report.line(us_row("tenantdb  connect + point query", cold));
    report.line(us_row("tenantdb  same, first open since setup", first));
    report.line(us_row("baseline  rusqlite open + query + close", naive));
    report.line(us_row("baseline  std::fs::read of the file", raw));
    report.line(format!(
        "  ratio     {:.2} against the naive open, {:.1} against the raw read (medians)",
        cold.median / naive.median,
        cold.median / raw.median
    ));
    report.line(format!(
        "  warm, on {} cached tenants, for {:.1} s each:",
        hot.len(),
        params.seconds
    ));
    report.line(us_row(
        "tenantdb  point query on a leased connection",
        warm.query,
    ));
    report.line(us_row(
        "tenantdb  checkout + point query + hand back",
        warm.checkout,
    ));
    report.line(us_row(
        "baseline  point query on a plain connection",
        warm.baseline,
    ));
    report.line(format!(
        "  ratio     {:.2} (leased query / plain connection, medians)",
        warm.query.median / warm.baseline.median
    ));
    report.line(format!(
        "  memory: peak RSS {peak_rss_mb:.1} MB after touching {touched} tenants through a cache \
         of {RSS_CACHE_CAPACITY} ({cached} cached, RSS now {rss_mb:.1} MB, {rss_before_mb:.1} MB \
         before{})",
        if peak_reset {
            ""
        } else {
            "; the peak could not be reset and covers the whole run"
        }
    ));
    Ok(report)
}

/// Connects to every tenant through a cache too small to keep any of them, with one point
/// query each; returns each access's time.
fn cold_pass(
    fleet: &Fleet,
    ids: &[TenantId],
    key: &impl Fn(usize) -> i64,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let started = Instant::now();
        let mut lease = fleet.connect(id)?;
        let result = lease.execute(POINT_QUERY, &point(key(i)))?;
        drop(lease);
        times.push(started.elapsed());
        ensure!(
            result.rows.len() == 1,
            "tenant {id}: the point query found no row"
        );
    }
    Ok(times)
}

/// The naive way: open with rusqlite's defaults, query, close; returns each tenant's time.
fn naive_pass(paths: &[PathBuf], key: &impl Fn(usize) -> i64) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let started = Instant::now();
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        let title: String = conn
            .query_row(POINT_QUERY, [key(i)], |r| r.get(0))
            .context("running the point query")?;
        conn.close()
            .map_err(|(_, e)| e)
            .context("closing a database")?;
        times.push(started.elapsed());
        ensure!(!title.is_empty(), "empty title in {}", path.display());
    }
    Ok(times)
}

fn point(id: i64) -> Args {
    Args {
        positional: vec![Value::Integer(id)],
        named: Vec::new(),
    }
}

fn us_row(what: &str, s: Summary) -> String {
    format!(
        "  {what:<48} median {:>9.2} us   p99 {:>9.2} us   ({} samples)",
        s.median, s.p99, s.count
    )
}

/// Warm figures, in microseconds.
struct Warm {
    query: Summary,
    checkout: Summary,
    baseline: Summary,
}

fn warm_figures(
    fleet: &Fleet,
    hot: &[(usize, TenantId)],
    key: &impl Fn(usize) -> i64,
    budget: Duration,
) -> Result<Warm> {
    let (first_index, first) = hot.first().context("no tenant stayed in the cache")?;
    let first_index = *first_index;

    let mut lease = fleet.connect(first)?;
    let args = point(key(first_index));
    let query = timed_loop(budget, |_| {
        lease.execute(POINT_QUERY, &args)?;
        Ok(())
    })?;
    drop(lease);

    let checkout = timed_loop(budget, |n| {
        let (i, id) = &hot[n % hot.len()];
        let mut lease = fleet.connect(id)?;
        lease.execute(POINT_QUERY, &point(key(*i)))?;
        Ok(())
    })?;

    let path = fleet.layout().tenant_db(first);
    let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let baseline = timed_loop(budget, |_| {
        let _: String = conn
            .query_row(POINT_QUERY, [key(first_index)], |r| r.get(0))
            .context("running the point query")?;
        Ok(())
    })?;
    conn.close()
        .map_err(|(_, e)| e)
        .context("closing a database")?;

    Ok(Warm {
        query,
        checkout,
        baseline,
    })
}

/// Runs `f` repeatedly for `budget` (at least 1,000 times) and summarizes each call's time in
/// microseconds.
fn timed_loop(budget: Duration, mut f: impl FnMut(usize) -> Result<()>) -> Result<Summary> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut n = 0usize;
    while n < 1000 || started.elapsed() < budget {
        let t = Instant::now();
        f(n)?;
        samples.push(micros(t.elapsed()));
        n += 1;
    }
    Ok(summarize(&samples))
}
