//! What every scenario shares: the working directory, the schema, fast setup of a fleet full of
//! rows, parallel runs, statistics, memory readings and the report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use tenantdb::{Config, Fleet, MigrateOptions, NoProgress, TenantId};

/// Who the admin audit says acted.
pub const ACTOR: &str = "bench";

/// Migration 0001: the application schema every scenario starts from.
pub const TODOS_SCHEMA: &str = "CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX todos_done ON todos (done);
";

/// The point query every read measurement runs.
pub const POINT_QUERY: &str = "SELECT title FROM todos WHERE id = ?";

/// Where a run keeps its databases: a temporary directory removed at the end, or a directory
/// the user named (which must start empty and is kept).
pub struct Workdir {
    root: PathBuf,
    temp: Option<TempDir>,
}

impl Workdir {
    pub fn new(dir: Option<&Path>) -> Result<Workdir> {
        let Some(dir) = dir else {
            let temp = tempfile::Builder::new()
                .prefix("tenantdb-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            return Ok(Workdir {
                root: temp.path().to_path_buf(),
                temp: Some(temp),
            });
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading data directory {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "data directory {} is not empty; the benchmark needs a fresh one",
                dir.display()
            );
        }
        Ok(Workdir {
            root: dir.to_path_buf(),
            temp: None,
        })
    }

    /// The tenantdb data directory (created by `Fleet::open`).
    pub fn fleet_dir(&self) -> PathBuf {
        self.root.join("fleet")
    }

    /// A directory for the baseline's own databases.
    pub fn baseline_dir(&self) -> Result<PathBuf> {
        self.subdir("baseline")
    }

    pub fn migrations_dir(&self) -> Result<PathBuf> {
        self.subdir("migrations")
    }

    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Removes the temporary directory, if the run made one.
    pub fn finish(self) -> Result<()> {
        match self.temp {
            Some(temp) => temp.close().context("removing the temporary directory"),
            None => Ok(()),
        }
    }
}

pub fn write_migration(dir: &Path, file: &str, sql: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, sql).with_context(|| format!("writing {}", path.display()))
}

/// Opens a fleet in `workdir` whose schema is migration 0001 (the `todos` table).
pub fn open_fleet_at_v1(workdir: &Workdir) -> Result<Fleet> {
    let migrations = workdir.migrations_dir()?;
    write_migration(&migrations, "0001_create_todos.sql", TODOS_SCHEMA)?;
    let fleet = Fleet::open(Config::new(workdir.fleet_dir())).context("opening the fleet")?;
    fleet
        .migrate(&migrations, &MigrateOptions::default(), &NoProgress, ACTOR)
        .context("applying migration 0001")?;
    Ok(fleet)
}

/// Opens the fleet in `workdir` with a given connection cache capacity.
pub fn open_fleet(workdir: &Workdir, cache_capacity: usize) -> Result<Fleet> {
    let mut config = Config::new(workdir.fleet_dir());
    config.cache_capacity = cache_capacity;
    Fleet::open(config).context("opening the fleet")
}

/// `t000000`, `t000001`, ...
pub fn tenant_ids(n: usize) -> Result<Vec<TenantId>> {
    (0..n)
        .map(|i| TenantId::new(format!("t{i:06}")).context("making a tenant id"))
        .collect()
}

/// Threads for setup work, which waits on fsyncs more than on the CPUs.
pub fn setup_threads() -> usize {
    (cores() * 2).max(4)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs `work(0..count)` on `threads` threads, each index once; returns the results in no
/// particular order. Stops at the first error and returns it.
pub fn parallel<T: Send>(
    threads: usize,
    count: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let results = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, count.max(1)) {
            scope.spawn(|| {
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    match work(i) {
                        Ok(value) => mine.push(value),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Creates `ids` through the library, in parallel; returns each creation's latency.
pub fn create_tenants(fleet: &Fleet, ids: &[TenantId], threads: usize) -> Result<Vec<Duration>> {
    parallel(threads, ids.len(), |i| {
        let started = Instant::now();
        fleet
            .create_tenant(&ids[i], ACTOR)
            .with_context(|| format!("creating tenant {}", ids[i]))?;
        Ok(started.elapsed())
    })
}

/// Puts `rows` rows into every tenant's `todos`: one raw connection and one transaction per
/// tenant, without fsyncs (setup, not measurement).
pub fn fill_rows(fleet: &Fleet, ids: &[TenantId], rows: usize, threads: usize) -> Result<()> {
    let layout = fleet.layout();
    parallel(threads, ids.len(), |i| {
        let path = layout.tenant_db(&ids[i]);
        let mut conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch("PRAGMA synchronous = OFF")
            .context("configuring a setup connection")?;
        let tx = conn.transaction().context("starting to insert rows")?;
        {
            let mut insert = tx
                .prepare("INSERT INTO todos (id, title, done, created_at) VALUES (?1, ?2, ?3, ?4)")
                .context("preparing the insert")?;
            for row in 1..=rows {
                insert
                    .execute(params![
                        row as i64,
                        format!("todo {row} of {}", ids[i]),
                        i64::from(row % 3 == 0),
                        1_700_000_000 + row as i64
                    ])
                    .context("inserting a row")?;
            }
        }
        tx.commit().context("committing rows")?;
        conn.close()
            .map_err(|(_, e)| e)
            .context("closing a setup connection")?;
        Ok(())
    })?;
    Ok(())
}

/// A fleet at version 1 holding `tenants` tenants of `rows` rows each; logs setup time.
pub fn populated_fleet(workdir: &Workdir, tenants: usize, rows: usize) -> Result<Vec<TenantId>> {
    let started = Instant::now();
    let fleet = open_fleet_at_v1(workdir)?;
    let ids = tenant_ids(tenants)?;
    create_tenants(&fleet, &ids, setup_threads())?;
    let created = started.elapsed();
    fill_rows(&fleet, &ids, rows, cores())?;
    eprintln!(
        "setup: {tenants} tenants created in {:.1} s, {rows} rows each inserted in {:.1} s",
        created.as_secs_f64(),
        (started.elapsed() - created).as_secs_f64()
    );
    fleet.shutdown();
    Ok(ids)
}

/// Median and 99th percentile of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p99: f64,
    pub count: usize,
}

/// Summarizes samples (any unit; the summary is in the same unit).
pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Summary {
            median: 0.0,
            p99: 0.0,
            count: 0,
        };
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    // Nearest rank: the smallest sample at or above 99% of all samples.
    let rank = ((n as f64) * 0.99).ceil() as usize;
    let p99 = sorted[rank.clamp(1, n) - 1];
    Summary {
        median,
        p99,
        count: n,
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Summarizes durations in microseconds.
pub fn summarize_us(samples: &[Duration]) -> Summary {
    summarize(&samples.iter().copied().map(micros).collect::<Vec<_>>())
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
pub fn status_mb(field: &str) -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("/proc/self/status has no {field}"))?;
    let kb: f64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("parsing {field} in /proc/self/status"))?;
    Ok(kb / 1024.0)
}

/// Resets the kernel's peak-RSS mark (`VmHWM`) so a later reading covers only what follows.
/// Returns false where the kernel does not allow it; the peak then covers the whole process.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// One scenario run's result: its parameters, its figures, and the text shown to people.
pub struct Report {
    scenario: &'static str,
    params: Map<String, Value>,
    figures: Map<String, Value>,
    text: String,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            params: Map::new(),
            figures: Map::new(),
            text: String::new(),
        }
    }

    pub fn param(&mut self, name: &str, value: impl Into<Value>) {
        self.params.insert(name.to_string(), value.into());
    }

    /// Records a figure, rounded to a precision that still shows its last meaningful digit.
    pub fn figure(&mut self, name: &str, value: f64) {
        let digits = if value.abs() >= 100.0 {
            1
        } else if value.abs() >= 1.0 {
            2
        } else {
            4
        };
        let scale = 10f64.powi(digits);
        let rounded = (value * scale).round() / scale;
        let value = serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number);
        self.figures.insert(name.to_string(), value);
    }

    pub fn count(&mut self, name: &str, value: u64) {
        self.figures.insert(name.to_string(), json!(value));
    }

    pub fn flag(&mut self, name: &str, value: bool) {
        self.figures.insert(name.to_string(), json!(value));
    }

    /// Adds a line to the human-readable output.
    pub fn line(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", text.as_ref());
    }

    /// The report as one line of JSON, keys in the documented order (scenario, params,
    /// figures).
    pub fn json_line(&self) -> Result<String> {
        Ok(format!(
            "{{\"scenario\":{},\"params\":{},\"figures\":{}}}",
            serde_json::to_string(self.scenario)?,
            serde_json::to_string(&self.params)?,
            serde_json::to_string(&self.figures)?
        ))
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_middle_and_nearest_rank() {
        let s = summarize(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.p99, s.count), (3.0, 5.0, 3));
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median, 2.5);
        let many: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(summarize(&many).p99, 198.0);
        assert_eq!(summarize(&[]).count, 0);
    }

    #[test]
    fn parallel_runs_each_index_once_and_reports_errors() {
        let mut got = parallel(3, 100, Ok).unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        let err = parallel(3, 100, |i| {
            if i == 42 {
                bail!("boom at {i}")
            }
            Ok(i)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom at 42");
    }

    #[test]
    fn figures_are_rounded() {
        let mut r = Report::new("x");
        r.figure("big", 1234.567);
        r.figure("mid", 12.3456);
        r.figure("small", 0.123456);
        r.param("tenants", 3u64);
        let line = r.json_line().unwrap();
        assert!(
            line.starts_with(r#"{"scenario":"x","params":{"tenants":3},"figures":{"#),
            "{line}"
        );
        let j: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(j["figures"]["big"], json!(1234.6));
        assert_eq!(j["figures"]["mid"], json!(12.35));
        assert_eq!(j["figures"]["small"], json!(0.1235));
    }
}
