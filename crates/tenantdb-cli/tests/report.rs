//! `tenantdb report` through the real binary: formats, refusals, the audit, and a report from
//! this separate process while `tenantdb serve` keeps taking writes on the same data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::ServeProcess;

const JWT_SECRET: &str = "report-test-secret-0123456789abcdef0123";
const SCHEMA: &str = "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, data BLOB);";

/// A `tenantdb` command that sees only the test's own `TENANTDB_*` settings.
fn tenantdb(data: &Path) -> Command {
    let mut cmd = common::tenantdb(data);
    cmd.env("TENANTDB_JWT_SECRET", JWT_SECRET);
    cmd
}

fn run(data: &Path, args: &[&str]) -> Output {
    tenantdb(data)
        .args(args)
        .output()
        .expect("the tenantdb binary runs")
}

#[track_caller]
fn ok(out: Output) -> (String, String) {
    assert!(
        out.status.success(),
        "tenantdb failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

#[track_caller]
fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A data directory with `todos` and three tenants with rows, written through `tenantdb sql`.
fn fleet(dir: &TempDir) -> PathBuf {
    let data = dir.path().join("data");
    let migrations = dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(migrations.join("0001_todos.sql"), SCHEMA).unwrap();
    ok(run(
        &data,
        &["migrate", "--migrations", migrations.to_str().unwrap()],
    ));
    ok(run(&data, &["tenant", "create", "alice", "bob", "carol"]));
    for (tenant, titles) in [("alice", 3), ("bob", 1), ("carol", 2)] {
        for i in 0..titles {
            ok(run(
                &data,
                &[
                    "sql",
                    tenant,
                    &format!(
                        "INSERT INTO todos (title, done, data) VALUES ('{tenant} {i}', {}, x'0102')",
                        i % 2
                    ),
                ],
            ));
        }
    }
    data
}

/// Every file under `dir` with its contents.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with("-shm") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reports_print_tables_csv_and_json() {
    let dir = TempDir::new().unwrap();
    let data = fleet(&dir);
    let sql = "SELECT _tenant, count(*) AS n, sum(done) AS done FROM todos GROUP BY 1 ORDER BY 1";

    let (table, tally) = ok(run(&data, &["report", sql]));
    assert_eq!(
        table,
        "_tenant  n  done\nalice    3  1\nbob      1  0\ncarol    2  1\n"
    );
    assert!(
        tally.contains("3 rows from 3 tenants; 0 skipped"),
        "{tally}"
    );

    let (csv, _) = ok(run(&data, &["report", sql, "--format", "csv"]));
    assert_eq!(
        csv,
        "_tenant,n,done\r\nalice,3,1\r\nbob,1,0\r\ncarol,2,1\r\n"
    );

    let (doc, _) = ok(run(
        &data,
        &[
            "report",
            "SELECT _tenant, title, data FROM todos WHERE done = 1 ORDER BY 1",
            "--format",
            "json",
            "--tenants",
            "carol,alice,nobody",
        ],
    ));
    let doc: Value = serde_json::from_str(&doc).expect("valid JSON");
    assert_eq!(
        doc,
        json!({
            "columns": ["_tenant", "title", "data"],
            "rows": [["alice", "alice 1", "AQI="], ["carol", "carol 1", "AQI="]],
            "tenants_scanned": 2,
            "tenants_skipped": [{"tenant": "nobody", "reason": "not found"}],
        })
    );
    // `--json` is JSON too; a reduce works over `result`.
    let (doc, _) = ok(run(
        &data,
        &[
            "--json",
            "report",
            "SELECT _tenant, count(*) AS n FROM todos GROUP BY 1",
            "--reduce",
            "SELECT max(n) AS most, sum(n) AS total FROM result",
        ],
    ));
    let doc: Value = serde_json::from_str(&doc).expect("valid JSON");
    assert_eq!(doc["columns"], json!(["most", "total"]));
    assert_eq!(doc["rows"], json!([[3, 6]]));

    // Creation time filters: everyone was created just now.
    let (doc, _) = ok(run(
        &data,
        &[
            "report",
            "SELECT count(DISTINCT _tenant) FROM todos",
            "--format",
            "json",
            "--created-after",
            "2000-01-01",
            "--created-before",
            "2999-01-01T00:00:00Z",
        ],
    ));
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["tenants_scanned"], 3);
    let (doc, _) = ok(run(
        &data,
        &[
            "report",
            "SELECT count(*) FROM todos",
            "--format",
            "json",
            "--created-before",
            "946684800",
        ],
    ));
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["tenants_scanned"], 0);
    assert_eq!(doc["rows"], json!([[0]]));
}

#[test]
fn non_reads_are_refused_and_nothing_changes() {
    let dir = TempDir::new().unwrap();
    let data = fleet(&dir);
    let before = contents(&data.join("tenants"));
    for sql in [
        "DELETE FROM todos",
        "UPDATE todos SET done = 1",
        "INSERT INTO todos (title) VALUES ('x')",
        "DROP TABLE todos",
        "ATTACH DATABASE 'evil.db' AS evil",
        "PRAGMA journal_mode = DELETE",
        "SELECT 1; DELETE FROM todos",
        "VACUUM",
    ] {
        let err = fails(run(&data, &["report", sql]));
        assert!(err.starts_with("error: "), "{sql}: {err}");
    }
    let err = fails(run(&data, &["report", "SELECT * FROM todoz"]));
    assert!(err.contains("no such table: todoz"), "{err}");
    assert!(
        err.contains("SELECT * FROM todoz\n                ^"),
        "{err}"
    );
    let err = fails(run(&data, &["report", "SELECT 1", "--tenants", "../x"]));
    assert!(err.contains("invalid tenant id"), "{err}");
    let err = fails(run(
        &data,
        &["report", "SELECT 1", "--created-after", "soon"],
    ));
    assert!(err.contains("--created-after"), "{err}");
    assert_eq!(contents(&data.join("tenants")), before);
    assert!(!data.join("evil.db").exists());
}

#[test]
fn report_runs_are_in_the_admin_audit() {
    let dir = TempDir::new().unwrap();
    let data = fleet(&dir);
    let sql = "SELECT count(*) FROM todos /* audited */";
    ok(run(&data, &["report", sql]));
    fails(run(&data, &["report", "DELETE FROM todos"]));
    let (audit, _) = ok(run(&data, &["--json", "audit", "--admin"]));
    let audit: Value = serde_json::from_str(&audit).expect("valid JSON");
    let entries = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .expect("a list of entries")
        .clone();
    let runs: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "report.run")
        .collect();
    assert_eq!(runs.len(), 1, "{audit}");
    assert_eq!(runs[0]["actor"], "cli");
    assert_eq!(runs[0]["detail"], sql);
}

#[test]
fn a_report_from_another_process_runs_while_the_server_takes_writes() {
    let dir = TempDir::new().unwrap();
    let data = fleet(&dir);
    let ids: Vec<String> = (0..30).map(|i| format!("w{i:02}")).collect();
    let mut create = vec!["tenant", "create"];
    create.extend(ids.iter().map(String::as_str));
    ok(run(&data, &create));
    let server = ServeProcess::start(&data, &[], &[("TENANTDB_JWT_SECRET", JWT_SECRET)]);
    let tokens: Vec<String> = ids
        .iter()
        .map(|id| ok(run(&data, &["token", id])).0.trim().to_string())
        .collect();

    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            runtime.block_on(async {
                let mut conns = Vec::new();
                for token in &tokens {
                    let db = libsql::Builder::new_remote(server.url(), token.clone())
                        .build()
                        .await
                        .expect("a remote database");
                    conns.push(db.connect().expect("a remote connection"));
                }
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let conn = &conns[(i as usize) % conns.len()];
                    let started = Instant::now();
                    conn.execute(
                        "INSERT INTO todos (title) VALUES (?1)",
                        libsql::params![format!("write {i}")],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("a write failed during reports: {e}"));
                    assert!(
                        started.elapsed() < Duration::from_secs(2),
                        "a write waited {:?}",
                        started.elapsed()
                    );
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline || reports < 3 {
            let (doc, _) = ok(run(
                &data,
                &[
                    "report",
                    "SELECT count(DISTINCT _tenant), count(*) FROM todos",
                    "--format",
                    "json",
                ],
            ));
            let doc: Value = serde_json::from_str(&doc).expect("valid JSON");
            assert_eq!(doc["tenants_scanned"], 33);
            assert!(
                doc["tenants_skipped"].as_array().unwrap().is_empty(),
                "{doc}"
            );
            reports += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let written = written.load(Ordering::Relaxed);
    assert!(written > 0, "no write went through: {}", server.log());
    let (doc, _) = ok(run(
        &data,
        &[
            "report",
            "SELECT count(*) FROM todos WHERE title LIKE 'write %'",
            "--format",
            "json",
        ],
    ));
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["rows"][0][0],
        json!(written),
        "every acknowledged write is in the report"
    );
    drop(server);
}
