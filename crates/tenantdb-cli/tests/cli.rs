//! The `tenantdb` binary, driven as a user would: real processes, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_tenantdb");

fn tdb(data: &Path, args: &[&str]) -> Output {
    common::tenantdb(data)
        .args(args)
        .output()
        .expect("the tenantdb binary runs")
}

use common::ok;

#[track_caller]
fn json(out: Output) -> Value {
    serde_json::from_str(&ok(out)).expect("valid JSON")
}

#[track_caller]
fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_migration(dir: &Path, name: &str, sql: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), sql).unwrap();
}

const TODOS: &str = "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);";

/// A data directory under `tmp` migrated to the `todos` schema, and its migrations directory.
fn todos_fleet(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    write_migration(&migrations, "0001_todos.sql", TODOS);
    ok(tdb(
        &data,
        &["migrate", "--migrations", migrations.to_str().unwrap()],
    ));
    (data, migrations)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn tenant_path(data: &Path, id: &str) -> PathBuf {
    let info = json(tdb(data, &["tenant", "info", id, "--json"]));
    assert_eq!(info["id"], id);
    files_under(&data.join("tenants"))
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n == format!("{id}.db").as_str())
        })
        .expect("tenant file exists")
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn bad_tenant_ids_are_refused_before_anything_is_created() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let long = "x".repeat(129);
    for id in [
        "../x", "a/b", "..", ".hidden", "%2e%2e", "a b", "", &long, "é", "ü_user",
    ] {
        for args in [
            vec!["tenant", "create", id],
            vec!["sql", id, "SELECT 1"],
            vec!["tenant", "info", id],
            vec!["tenant", "delete", id],
        ] {
            let err = fails(tdb(&data, &args));
            assert!(err.contains("a tenant id is 1 to 128"), "{args:?}: {err}");
        }
    }
    assert!(!data.exists(), "nothing may be created for a bad id");
    // One bad id among good ones creates none of them.
    fails(tdb(
        &data,
        &["tenant", "create", "good1", "../bad", "good2"],
    ));
    assert!(!data.exists());
}

#[test]
fn tenant_lifecycle_through_the_cli() {
    let tmp = TempDir::new().unwrap();
    let (data, _) = todos_fleet(&tmp);

    let created = json(tdb(
        &data,
        &["tenant", "create", "user_1", "user_2", "--json"],
    ));
    assert_eq!(created.as_array().unwrap().len(), 2);
    assert_eq!(created[0]["schema_version"], 1);
    let err = fails(tdb(&data, &["tenant", "create", "user_1"]));
    assert!(err.contains("already exists"), "{err}");

    ok(tdb(
        &data,
        &[
            "sql",
            "user_1",
            "INSERT INTO todos (title) VALUES ('a'), ('b')",
        ],
    ));
    let rows = json(tdb(
        &data,
        &[
            "sql",
            "user_1",
            "SELECT id, title FROM todos ORDER BY id",
            "--json",
        ],
    ));
    assert_eq!(rows[0]["rows"], serde_json::json!([[1, "a"], [2, "b"]]));
    let text = ok(tdb(
        &data,
        &["sql", "user_1", "SELECT title FROM todos WHERE id = 2"],
    ));
    assert!(text.contains("title") && text.contains('b'), "{text}");

    let listed = json(tdb(&data, &["tenant", "list", "--json"]));
    let ids: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, ["user_1", "user_2"]);
    let page = json(tdb(
        &data,
        &["tenant", "list", "--after", "user_1", "--json"],
    ));
    assert_eq!(page[0]["id"], "user_2");

    // Export: a consistent standalone copy.
    let out = tmp.path().join("user_1.sqlite");
    ok(tdb(
        &data,
        &["tenant", "export", "user_1", "--out", out.to_str().unwrap()],
    ));
    let copy = raw(&out);
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let n: i64 = copy
        .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);

    // Delete to trash, refuse lazy re-creation, restore with the rows, then purge.
    let path = tenant_path(&data, "user_1");
    ok(tdb(&data, &["tenant", "delete", "user_1"]));
    assert!(!path.exists());
    assert_eq!(files_under(&data.join("trash")).len(), 1);
    fails(tdb(&data, &["sql", "user_1", "SELECT 1"]));
    fails(tdb(&data, &["tenant", "info", "user_1"]));
    ok(tdb(&data, &["tenant", "restore", "user_1"]));
    let rows = json(tdb(
        &data,
        &["sql", "user_1", "SELECT count(*) FROM todos", "--json"],
    ));
    assert_eq!(rows[0]["rows"][0][0], 2);
    ok(tdb(&data, &["tenant", "delete", "user_1", "--purge"]));
    assert!(files_under(&data.join("trash")).is_empty());
    assert!(!path.exists());
    let err = fails(tdb(&data, &["tenant", "restore", "user_1"]));
    assert!(err.contains("no deleted copy"), "{err}");
}

#[test]
fn user_sql_cannot_escape_the_guard() {
    let tmp = TempDir::new().unwrap();
    let (data, _) = todos_fleet(&tmp);
    ok(tdb(&data, &["tenant", "create", "victim", "attacker"]));
    ok(tdb(
        &data,
        &[
            "sql",
            "victim",
            "INSERT INTO todos (title) VALUES ('secret')",
        ],
    ));
    ok(tdb(
        &data,
        &[
            "sql",
            "attacker",
            "INSERT INTO todos (title) VALUES ('mine')",
        ],
    ));
    let victim = tenant_path(&data, "victim");
    let attacker = tenant_path(&data, "attacker");
    let stolen = tmp.path().join("stolen.db");
    let snapshot = |p: &Path| -> (Vec<String>, i64, i64) {
        let c = raw(p);
        let mut s = c
            .prepare("SELECT type || ':' || name FROM sqlite_schema ORDER BY 1")
            .unwrap();
        let schema = s
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let rows = c
            .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))
            .unwrap();
        let applied = c
            .query_row("SELECT count(*) FROM _tenantdb_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        (schema, rows, applied)
    };
    let before = snapshot(&attacker);
    let attacks = [
        format!("ATTACH '{}' AS v", victim.display()),
        format!("VACUUM INTO '{}'", stolen.display()),
        "PRAGMA writable_schema = 1".to_string(),
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so')".to_string(),
        "INSERT INTO _tenantdb_migrations VALUES (99, 'x', 'y', 0)".to_string(),
        "DELETE FROM _tenantdb_migrations".to_string(),
        "UPDATE _tenantdb_migrations SET name = 'x'".to_string(),
        "CREATE TABLE evil (x)".to_string(),
        "DROP TABLE todos".to_string(),
        "ALTER TABLE todos ADD COLUMN x".to_string(),
        "CREATE TRIGGER t AFTER INSERT ON todos BEGIN DELETE FROM todos; END".to_string(),
        "PRAGMA database_list".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        "PRAGMA user_version = 7".to_string(),
        "CREATE TEMP TRIGGER t AFTER INSERT ON main.todos BEGIN INSERT INTO _tenantdb_migrations VALUES (98, 'a', 'b', 0); END; INSERT INTO todos (title) VALUES ('x')".to_string(),
    ];
    for sql in &attacks {
        let err = fails(tdb(&data, &["sql", "attacker", sql]));
        assert!(err.contains("error:"), "{sql}: {err}");
        assert_eq!(snapshot(&attacker), before, "{sql} changed the database");
    }
    assert!(!stolen.exists());
    assert_eq!(snapshot(&victim).1, 1);
    // Reads of bookkeeping tables and schema introspection are fine.
    ok(tdb(
        &data,
        &["sql", "attacker", "SELECT * FROM _tenantdb_migrations"],
    ));
    ok(tdb(&data, &["sql", "attacker", "PRAGMA table_info(todos)"]));
}

#[test]
fn failing_tenants_stay_behind_and_the_rest_migrate() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    let dir = migrations.to_str().unwrap();
    write_migration(&migrations, "0001_todos.sql", TODOS);
    ok(tdb(&data, &["migrate", "--migrations", dir]));
    let ids: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let mut args = vec!["tenant", "create"];
    args.extend(ids.iter().map(String::as_str));
    ok(tdb(&data, &args));
    for id in ["t03", "t11"] {
        ok(tdb(
            &data,
            &[
                "sql",
                id,
                "INSERT INTO todos (title) VALUES ('dup'), ('dup')",
            ],
        ));
    }
    write_migration(
        &migrations,
        "0002_unique_titles.sql",
        "CREATE UNIQUE INDEX todos_title ON todos (title);",
    );

    // A dry run changes nothing but tells who would fail.
    let dry = tdb(
        &data,
        &["migrate", "--migrations", dir, "--dry-run", "--json"],
    );
    assert_eq!(dry.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 2);
    for id in &ids {
        let v: i64 = raw(&tenant_path(&data, id))
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1, "dry run migrated {id}");
    }

    let run = tdb(&data, &["migrate", "--migrations", dir, "--json"]);
    assert_eq!(run.status.code(), Some(2), "failures give exit code 2");
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["migrated"], 18);
    let status = json(tdb(&data, &["migrate", "status", "--json"]));
    assert_eq!(status["latest"], 2);
    assert_eq!(
        status["tenants_by_version"],
        serde_json::json!({"1": 2, "2": 18})
    );
    let failed: Vec<_> = status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["tenant"].clone())
        .collect();
    assert_eq!(failed, ["t03", "t11"]);
    assert!(
        status["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("UNIQUE")
    );
    for id in &ids {
        let c = raw(&tenant_path(&data, id));
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let applied: i64 = c
            .query_row("SELECT max(version) FROM _tenantdb_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        let index: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'todos_title'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let expect = if id == "t03" || id == "t11" { 1 } else { 2 };
        assert_eq!((v, applied, index), (expect, expect, expect - 1), "{id}");
    }

    // Fixing the data and rerunning finishes the fleet.
    ok(tdb(
        &data,
        &["sql", "t03", "DELETE FROM todos WHERE id = 2"],
    ));
    ok(tdb(
        &data,
        &[
            "sql",
            "t11",
            "UPDATE todos SET title = 'other' WHERE id = 2",
        ],
    ));
    ok(tdb(&data, &["migrate", "--migrations", dir]));
    let status = json(tdb(&data, &["migrate", "status", "--json"]));
    assert_eq!(status["tenants_by_version"], serde_json::json!({"2": 20}));
    assert_eq!(status["failures"], serde_json::json!([]));
}

#[test]
fn broken_or_changed_migrations_stop_before_any_tenant() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    let dir = migrations.to_str().unwrap();
    write_migration(&migrations, "0001_todos.sql", TODOS);
    ok(tdb(&data, &["migrate", "--migrations", dir]));
    ok(tdb(&data, &["tenant", "create", "a", "b"]));
    let file = tenant_path(&data, "a");
    let before = std::fs::read(&file).unwrap();

    write_migration(&migrations, "0002_broken.sql", "CREATE TABLEX nope (x);");
    let err = fails(tdb(&data, &["migrate", "--migrations", dir]));
    assert!(
        err.contains("0002_broken.sql") && err.contains("syntax error"),
        "{err}"
    );
    std::fs::remove_file(migrations.join("0002_broken.sql")).unwrap();

    write_migration(
        &migrations,
        "0001_todos.sql",
        &format!("{TODOS}\n-- edited"),
    );
    let err = fails(tdb(&data, &["migrate", "--migrations", dir]));
    assert!(
        err.contains("0001_todos.sql") && err.contains("edited"),
        "{err}"
    );
    std::fs::remove_file(migrations.join("0001_todos.sql")).unwrap();
    write_migration(&migrations, "0002_more.sql", "CREATE TABLE more (x);");
    let err = fails(tdb(&data, &["migrate", "--migrations", dir]));
    assert!(
        err.contains("0001_todos.sql") || err.contains("version 1"),
        "{err}"
    );

    write_migration(&migrations, "0001_todos.sql", TODOS);
    write_migration(&migrations, "0004_gap.sql", "SELECT 1;");
    let err = fails(tdb(&data, &["migrate", "--migrations", dir]));
    assert!(err.contains("version 3 is missing"), "{err}");

    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "no tenant may be touched"
    );
    let status = json(tdb(&data, &["migrate", "status", "--json"]));
    assert_eq!(status["latest"], 1);
}

/// Polls the tenant files' headers (user_version at offset 60) without opening them in SQLite.
fn header_versions(data: &Path) -> Vec<u32> {
    files_under(&data.join("tenants"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() >= 64)
        .map(|b| u32::from_be_bytes([b[60], b[61], b[62], b[63]]))
        .collect()
}

#[test]
fn killed_migration_resumes_and_leaves_no_tenant_half_migrated() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    let dir = migrations.to_str().unwrap();
    write_migration(&migrations, "0001_todos.sql", TODOS);
    ok(tdb(&data, &["migrate", "--migrations", dir]));
    let ids: Vec<String> = (0..300).map(|i| format!("user_{i:03}")).collect();
    for chunk in ids.chunks(100) {
        let mut args = vec!["tenant", "create"];
        args.extend(chunk.iter().map(String::as_str));
        ok(tdb(&data, &args));
    }
    // Rows written straight to the files keep setup fast; the migrations below must keep them.
    for id in &ids {
        let c = raw(&tenant_path_fast(&data, id));
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
             INSERT INTO todos (title) SELECT 'todo ' || i FROM n;",
        )
        .unwrap();
    }
    write_migration(
        &migrations,
        "0002_priority.sql",
        "ALTER TABLE todos ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\nUPDATE todos SET priority = id % 5;",
    );
    write_migration(
        &migrations,
        "0003_index.sql",
        "CREATE INDEX todos_priority ON todos (priority, title);",
    );

    let mut child = common::tenantdb(&data)
        .args(["migrate", "--migrations", dir, "--jobs", "1"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let versions = header_versions(&data);
        let done = versions.iter().filter(|v| **v == 3).count();
        if done >= 10 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let versions = header_versions(&data);
    let finished = versions.iter().filter(|v| **v == 3).count();
    assert!(
        finished > 0 && finished < 300,
        "killed part-way: {finished} of 300 done"
    );

    ok(tdb(&data, &["migrate", "--migrations", dir]));
    for id in &ids {
        let c = raw(&tenant_path_fast(&data, id));
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let applied: Vec<i64> = c
            .prepare("SELECT version FROM _tenantdb_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let (rows, prioritized): (i64, i64) = c
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE priority = id % 5) FROM todos",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let index: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'todos_priority'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            (v, applied, rows, prioritized, index),
            (3, vec![1, 2, 3], 200, 200, 1),
            "{id}"
        );
    }
    let status = json(tdb(&data, &["migrate", "status", "--json"]));
    assert_eq!(status["tenants_by_version"], serde_json::json!({"3": 300}));
}

fn tenant_path_fast(data: &Path, id: &str) -> PathBuf {
    files_under(&data.join("tenants"))
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n == format!("{id}.db").as_str())
        })
        .unwrap_or_else(|| panic!("no file for {id}"))
}

#[test]
fn killed_creation_leaves_whole_tenants_only() {
    let tmp = TempDir::new().unwrap();
    let (data, _) = todos_fleet(&tmp);
    for round in 0..6u64 {
        let ids: Vec<String> = (0..400).map(|i| format!("r{round}_{i}")).collect();
        let mut child = common::tenantdb(&data)
            .arg("tenant")
            .arg("create")
            .args(&ids)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(40 + round * 25));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Opening the fleet reconciles: every tenant file is a whole tenant in the catalog, and every
    // catalog row has a whole file at the latest version.
    let listed = json(tdb(&data, &["tenant", "list", "--json"]));
    let listed: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !listed.is_empty() && listed.len() < 2400,
        "kills interrupted creation: {}",
        listed.len()
    );
    let files: Vec<PathBuf> = files_under(&data.join("tenants"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    assert_eq!(
        files.len(),
        listed.len(),
        "every file is a listed tenant and back"
    );
    for file in &files {
        let c = raw(file);
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((check.as_str(), v), ("ok", 1), "{}", file.display());
    }
    for id in &listed {
        ok(tdb(&data, &["sql", id, "SELECT count(*) FROM todos"]));
    }
}

#[test]
fn audit_and_stats_through_the_cli() {
    let tmp = TempDir::new().unwrap();
    let (data, _) = todos_fleet(&tmp);
    ok(tdb(&data, &["tenant", "create", "ann", "bo"]));
    ok(tdb(
        &data,
        &[
            "sql",
            "ann",
            "INSERT INTO todos (title) VALUES ('a'); UPDATE todos SET done = 1",
        ],
    ));
    let entries = json(tdb(&data, &["audit", "ann", "--json"]));
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["actor"], "admin:cli");
    assert_eq!(entries[1]["statement"], "UPDATE todos SET done = 1");
    let verified = json(tdb(&data, &["audit", "ann", "--verify", "--json"]));
    assert_eq!(verified["first_broken"], Value::Null);
    assert_eq!(verified["entries"], 2);

    // Edited behind tenantdb's back: --verify names the entry and exits non-zero.
    let c = raw(&tenant_path(&data, "ann"));
    c.execute(
        "UPDATE _tenantdb_audit SET rows_changed = 5 WHERE seq = 1",
        [],
    )
    .unwrap();
    drop(c);
    let out = tdb(&data, &["audit", "ann", "--verify"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("broken at entry 1"), "{text}");

    let admin = json(tdb(&data, &["audit", "--admin", "--json"]));
    let actions: Vec<&str> = admin
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"tenant.create") && actions.contains(&"migrations.apply"),
        "{actions:?}"
    );

    let stats = json(tdb(&data, &["stats", "--json"]));
    assert_eq!(stats["tenants_total"], 2);
    assert_eq!(stats["schema_versions"], serde_json::json!({"1": 2}));
    ok(tdb(&data, &["stats"]));
}

#[test]
fn demo_walks_through_the_system_and_refuses_a_used_directory() {
    let tmp = TempDir::new().unwrap();
    let out = common::bare_command()
        .args(["demo", "--users", "40"])
        .output()
        .unwrap();
    let text = ok(out);
    for expected in [
        "40 users signed up through signed webhooks",
        "120 todos written",
        "refused (403)",
        "40 tenants migrated, 0 failed",
        "report across 40 tenants",
        "audit of user_demo",
        "fleet: 40 tenants",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // In a given directory it runs once; a second run refuses unless told to reuse it.
    let dir = tmp.path().join("demo");
    ok(tdb(&dir, &["demo", "--users", "5"]));
    let err = fails(tdb(&dir, &["demo", "--users", "5"]));
    assert!(err.contains("already holds tenants"), "{err}");
    let text = ok(tdb(&dir, &["demo", "--users", "5", "--use-existing"]));
    assert!(text.contains("fleet: 10 tenants"), "{text}");
}

/// `serve --dev-login` hands a token for any user to anyone who asks, so it runs only on the
/// generated development secrets; a malformed or wildcard CORS origin stops `serve` too. Both
/// are refused before the data directory is touched.
#[test]
fn serve_refuses_dev_login_with_configured_auth_and_bad_cors_origins() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let jwks = jwks.to_str().unwrap();
    // Runs `serve` with `args` and `envs`, which must fail saying `hint` and leave no trace.
    let refused = |args: &[&str], envs: &[(&str, &str)], hint: &str| {
        let mut cmd = common::tenantdb(&data);
        cmd.envs(envs.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        // A server that wrongly starts is killed at the limit and fails the test.
        let err = fails(
            common::output_within(&mut cmd, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(err.contains(hint), "{args:?} {envs:?}: {err}");
        if args.contains(&"--dev-login") {
            assert!(
                err.contains("--dev-login works only with the generated"),
                "{err}"
            );
        }
        assert!(
            !data.exists(),
            "{args:?} {envs:?} touched the data directory"
        );
    };
    let secret = "a-real-secret-shared-with-the-app-0123456789";
    let key_file = &[("TENANTDB_JWT_PUBLIC_KEY", jwks)];
    refused(
        &["--dev-login"],
        &[("TENANTDB_JWT_SECRET", secret)],
        "TENANTDB_JWT_SECRET",
    );
    refused(
        &["--dev-login", "--jwt-secret", secret],
        &[],
        "--jwt-secret",
    );
    refused(&["--dev-login", "--jwks", jwks], &[], "--jwks");
    refused(&["--dev-login"], key_file, "--jwt-public-key");
    refused(
        &["--dev-login", "--admin-token", "admin"],
        &[],
        "--admin-token",
    );
    refused(&["--cors-origin", "*"], &[], "`*` is not accepted");
    let one_bad = "http://127.0.0.1:5173,ftp://x";
    refused(&["--cors-origin", one_bad], &[], "http or https");
    let with_path = &[("TENANTDB_CORS_ORIGINS", "https://app.example.com/")];
    refused(&[], with_path, "no path");
}

/// `serve --migrations` on a fresh data directory: the very first request, sent the moment the
/// server says it is serving, lazily creates a user who already has the migrated schema (the
/// rollout to existing tenants may still be running; new tenants must not wait for it).
#[test]
fn serve_registers_migrations_before_the_first_request() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    write_migration(&migrations, "0001_todos.sql", TODOS);
    let secret = "startup-test-secret-0123456789abcdef";
    let server = common::ServeProcess::start(
        &data,
        &["--migrations", migrations.to_str().unwrap()],
        &[("TENANTDB_JWT_SECRET", secret)],
    );
    let token = ok(Command::new(BIN)
        .args(["token", "first_user", "--jwt-secret", secret])
        .output()
        .unwrap());
    let mut http = tenantdb_server::client::HttpClient::new(server.addr.parse().unwrap());
    let body = br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT count(*) FROM todos"}},{"type":"close"}]}"#;
    let bearer = format!("Bearer {}", token.trim());
    let (status, reply) = http
        .send("POST", "/v2/pipeline", &[("authorization", &bearer)], body)
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status, 200, "{reply}");
    assert!(
        reply.contains(r#""type":"ok","response":{"type":"execute""#),
        "{reply}"
    );
}

/// `tenantdb … | head`: when the reader of a printing command goes away, the command ends
/// quietly, without a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_a_printing_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    ok(tdb(&data, &["tenant", "create", "piper"]));
    let mut child = common::tenantdb(&data)
        .args([
            "sql",
            "piper",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 300000) SELECT x FROM c",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    // The reader is gone (dropped above); the command must end on its own.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// While a server runs on a data directory, another process may not delete or restore its
/// tenants (the server may hold them open), nor serve the same directory; once the server is
/// gone, both work again.
#[test]
fn lifecycle_changes_and_second_servers_are_refused_while_a_server_runs() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    ok(tdb(&data, &["tenant", "create", "held", "other"]));
    ok(tdb(&data, &["tenant", "delete", "other"]));
    let mut server = common::ServeProcess::start(&data, &[], &[]);

    let refused = fails(tdb(&data, &["tenant", "delete", "held"]));
    assert!(
        refused.contains("a tenantdb server is running"),
        "{refused}"
    );
    let refused = fails(tdb(&data, &["tenant", "restore", "other"]));
    assert!(
        refused.contains("a tenantdb server is running"),
        "{refused}"
    );
    let second = fails(tdb(&data, &["serve", "--listen", "127.0.0.1:0"]));
    assert!(second.contains("a tenantdb server is running"), "{second}");
    // Reading is fine meanwhile.
    ok(tdb(&data, &["tenant", "info", "held"]));

    server.kill();
    ok(tdb(&data, &["tenant", "delete", "held"]));
    ok(tdb(&data, &["tenant", "restore", "other"]));
}

/// Started with the common soft limit of open files far below what its connection cache needs,
/// `serve` raises the soft limit to the hard one.
#[cfg(target_os = "linux")]
#[test]
fn serve_raises_its_open_file_limit() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let mut child = Command::new("bash")
        .args([
            "-c",
            r#"ulimit -Sn 256 && exec "$0" "$@""#,
            BIN,
            "--data-dir",
        ])
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut serving = false;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("tenantdb serving ") {
            serving = true;
            break;
        }
        line.clear();
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "the server did not start");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_ne!(soft, "256", "{open_files}");
    if hard != "unlimited" {
        assert_eq!(soft, hard, "{open_files}");
    }
}
