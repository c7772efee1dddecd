//! `import`: moving a shared database into the fleet (`tenantdb import`).
//!
//! Setup (not timed): a shared database of the classic shape, `users` (one row per tenant),
//! `todos` with a `user_id` column and an index on it, and `comments` reaching their tenant
//! through `comments.todo_id -> todos.id`; `--rows` rows in `todos` and `comments` together
//! (three quarters todos), spread evenly over `--tenants` users. The fleet's schema is the same
//! tables without `user_id`.
//!
//! Measured: what `tenantdb import` does, through the library: the plan (fingerprint, schema
//! checks, counting every tenant's rows), the import (every tenant created and written in one
//! transaction each, `--clients` at once), and the verification (every tenant re-read and
//! compared with the source by row count and checksum). Baseline: copying the same source file
//! (and syncing the copy), the least any move of the data can cost.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, params};
use tenantdb::import::ImportOptions;
use tenantdb::{Config, Fleet, MigrateOptions, NoProgress};

use crate::Params;
use crate::harness::{ACTOR, Report, Workdir, status_mb, write_migration};

pub const DEFAULT_TENANTS: usize = 10_000;
pub const DEFAULT_ROWS: usize = 1_000_000;

const SHARED_SCHEMA: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT, created_at INTEGER NOT NULL);
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX todos_by_user ON todos (user_id, done);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY,
    todo_id INTEGER NOT NULL REFERENCES todos(id),
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX comments_by_todo ON comments (todo_id);
CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL);
";

const TENANT_SCHEMA: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT, created_at INTEGER NOT NULL);
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX todos_by_done ON todos (done);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY,
    todo_id INTEGER NOT NULL REFERENCES todos(id),
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX comments_by_todo ON comments (todo_id);
";

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let rows = params.rows;
    let shared = workdir.baseline_dir()?.join("shared.db");
    let started = Instant::now();
    build_shared(&shared, tenants, rows)?;
    let source_bytes = std::fs::metadata(&shared).map(|m| m.len()).unwrap_or(0);
    let migrations = workdir.migrations_dir()?;
    write_migration(&migrations, "0001_moving_in.sql", TENANT_SCHEMA)?;
    let fleet = Fleet::open(Config::new(workdir.fleet_dir())).context("opening the fleet")?;
    fleet
        .migrate(&migrations, &MigrateOptions::default(), &NoProgress, ACTOR)
        .context("applying the tenant schema")?;
    eprintln!(
        "setup: shared database of {tenants} users and {rows} rows ({:.0} MiB) in {:.1} s",
        source_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let mut options = ImportOptions::new(&shared, "user_id");
    if let Some(clients) = params.clients {
        options.jobs = clients;
    }
    let started = Instant::now();
    let plan = fleet.plan_import(&options).context("planning the import")?;
    if plan.is_refused() {
        bail!("the import was refused: {}", plan.problems.join("; "));
    }
    let plan_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let imported = fleet
        .import(&plan, &NoProgress, ACTOR)
        .context("importing")?;
    let import_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let verified = fleet
        .verify_import(&plan, &NoProgress)
        .context("verifying")?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let peak_rss_mb = status_mb("VmHWM")?;
    fleet.shutdown();
    drop(fleet);

    let baseline_seconds = copy_file(&shared, &workdir.baseline_dir()?.join("copy.db"))?;

    let seconds = plan_seconds + import_seconds + verify_seconds;
    let written = imported.rows;
    let rate = written as f64 / seconds;
    let ratio = seconds / baseline_seconds;
    let mut report = Report::new("import");
    report.param("tenants", tenants as u64);
    report.param("rows", rows as u64);
    report.param("clients", options.jobs as u64);
    report.figure("seconds", seconds);
    report.figure("rows_per_second", rate);
    report.figure("plan_seconds", plan_seconds);
    report.figure("import_seconds", import_seconds);
    report.figure("verify_seconds", verify_seconds);
    report.count("rows_written", written);
    report.count("tenants_imported", imported.imported as u64);
    report.count("failures", imported.failed.len() as u64);
    report.flag("verified", verified.ok);
    report.figure("peak_rss_mb", peak_rss_mb);
    report.figure("baseline_seconds", baseline_seconds);
    report.figure("ratio", ratio);

    report.line(format!(
        "import: shared database of {tenants} users, {rows} rows in todos and comments ({:.0} \
         MiB), {} jobs",
        source_bytes as f64 / (1 << 20) as f64,
        options.jobs
    ));
    report.line(format!(
        "  tenantdb  plan + import + verify   {seconds:>8.2} s   {rate:>10.0} rows/s   \
         (plan {plan_seconds:.2} s, import {import_seconds:.2} s, verify {verify_seconds:.2} s)"
    ));
    report.line(format!(
        "            {} tenants imported, {written} rows (plus users), {} failed, verified: {}, \
         peak RSS {peak_rss_mb:.0} MiB",
        imported.imported,
        imported.failed.len(),
        if verified.ok { "all match" } else { "MISMATCH" }
    ));
    report.line(format!(
        "  baseline  copy the source file     {baseline_seconds:>8.3} s"
    ));
    report.line(format!(
        "  ratio     {ratio:.1} (tenantdb seconds / baseline seconds)"
    ));
    for f in imported.failed.iter().take(5) {
        report.line(format!("  failed    {}: {}", f.tenant, f.error));
    }
    for m in verified.mismatches.iter().take(5) {
        report.line(format!("  mismatch  {}: {}", m.tenant, m.problem));
    }
    Ok(report)
}

/// Writes the shared database (not timed): ids as an auth provider issues them, rows spread
/// evenly, inserted in time order as an app would have (so each user's rows are scattered
/// through the file, not stored together).
fn build_shared(path: &Path, tenants: usize, rows: usize) -> Result<()> {
    let mut conn =
        Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .context("configuring the shared database")?;
    conn.execute_batch(SHARED_SCHEMA)
        .context("creating the shared schema")?;
    let todos = rows - rows / 4;
    let comments = rows / 4;
    let tx = conn.transaction().context("filling the shared database")?;
    {
        let mut user = tx
            .prepare("INSERT INTO users (id, email, name, created_at) VALUES (?1, ?2, ?3, ?4)")
            .context("preparing users")?;
        for u in 0..tenants {
            let id = user_id(u);
            user.execute(params![
                id,
                format!("{id}@example.com"),
                format!("User {u}"),
                1_700_000_000 + u as i64
            ])
            .context("inserting a user")?;
        }
        let mut todo = tx
            .prepare(
                "INSERT INTO todos (id, user_id, title, done, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .context("preparing todos")?;
        for t in 0..todos {
            todo.execute(params![
                t as i64 + 1,
                user_id(t % tenants),
                format!("todo number {t}, something to do"),
                i64::from(t % 3 == 0),
                1_700_000_000 + t as i64
            ])
            .context("inserting a todo")?;
        }
        let mut comment = tx
            .prepare("INSERT INTO comments (todo_id, body, created_at) VALUES (?1, ?2, ?3)")
            .context("preparing comments")?;
        for c in 0..comments {
            comment
                .execute(params![
                    (c * 7 % todos.max(1)) as i64 + 1,
                    format!("comment {c}: looks good to me"),
                    1_700_000_000 + c as i64
                ])
                .context("inserting a comment")?;
        }
        tx.execute_batch("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan');")
            .context("inserting countries")?;
    }
    tx.commit().context("committing the shared database")?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .context("checkpointing the shared database")?;
    conn.close()
        .map_err(|(_, e)| e)
        .context("closing the shared database")?;
    Ok(())
}

fn user_id(u: usize) -> String {
    format!("user_{u:06}")
}

/// Copies the file and syncs the copy; returns the seconds it took.
fn copy_file(from: &Path, to: &Path) -> Result<f64> {
    let started = Instant::now();
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", to.display()))?;
    Ok(started.elapsed().as_secs_f64())
}
