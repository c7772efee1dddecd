//! Reports across tenants (DESIGN section 8), tested against the definition: the same SQL on
//! one shared database holding every tenant's rows with a `_tenant` column must give the same
//! answer. Real data directories, real tenant files, real threads.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rusqlite::{Connection, OpenFlags, params_from_iter};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tenantdb::report::{ReportOptions, ReportRequest};
use tenantdb::{Config, Error, Fleet, MigrateOptions, NoProgress, Progress, TenantId, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The tenants' schema (migration 0001).
const SCHEMA: &str = "
CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, score REAL, extra);
CREATE TABLE tags (id INTEGER PRIMARY KEY, todo_id INTEGER, name TEXT COLLATE NOCASE);
CREATE VIEW open_todos AS SELECT * FROM todos WHERE done = 0;
";

/// The same schema as one shared database: every table with `_tenant` first, no keys.
const SHARED_SCHEMA: &str = "
CREATE TABLE todos (_tenant TEXT, id INTEGER, title TEXT, done INTEGER NOT NULL DEFAULT 0, score REAL, extra);
CREATE TABLE tags (_tenant TEXT, id INTEGER, todo_id INTEGER, name TEXT COLLATE NOCASE);
CREATE VIEW open_todos AS SELECT * FROM todos WHERE done = 0;
";

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn write_migrations(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    for (name, sql) in files {
        std::fs::write(m.join(name), sql).unwrap();
    }
    m
}

fn migrate(fleet: &Fleet, dir: &Path) {
    let options = MigrateOptions {
        dry_run: false,
        jobs: 4,
    };
    fleet.migrate(dir, &options, &NoProgress, "test").unwrap();
}

/// A fleet whose tenants have [`SCHEMA`].
fn fleet(tmp: &TempDir) -> Fleet {
    let fleet = Fleet::open(Config::new(tmp.path().join("data"))).unwrap();
    migrate(
        &fleet,
        &write_migrations(tmp.path(), &[("0001_todos.sql", SCHEMA)]),
    );
    fleet
}

/// Creates tenants in parallel.
fn create(fleet: &Fleet, ids: &[TenantId]) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { break };
                    fleet.create_tenant(id, "test").unwrap();
                }
            });
        }
    });
}

#[derive(Debug, Clone)]
struct Todo {
    id: i64,
    title: String,
    done: Value,
    score: Option<f64>,
    extra: Value,
}

#[derive(Debug, Clone)]
struct Tag {
    id: i64,
    todo_id: i64,
    name: String,
}

#[derive(Debug, Clone, Default)]
struct TenantRows {
    todos: Vec<Todo>,
    tags: Vec<Tag>,
}

/// Writes rows straight into a tenant's file (setup, not the system under test).
fn fill(fleet: &Fleet, id: &TenantId, rows: &TenantRows) {
    let mut conn = Connection::open_with_flags(
        fleet.layout().tenant_db(id),
        OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    for t in &rows.todos {
        tx.execute(
            "INSERT INTO todos (id, title, done, score, extra) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![t.id, t.title, t.done, t.score, t.extra],
        )
        .unwrap();
    }
    for g in &rows.tags {
        tx.execute(
            "INSERT INTO tags (id, todo_id, name) VALUES (?1, ?2, ?3)",
            rusqlite::params![g.id, g.todo_id, g.name],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// The definition: one database holding every tenant's rows.
fn shared(data: &[(TenantId, TenantRows)]) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SHARED_SCHEMA).unwrap();
    for (id, rows) in data {
        for t in &rows.todos {
            conn.execute(
                "INSERT INTO todos VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![id.as_str(), t.id, t.title, t.done, t.score, t.extra],
            )
            .unwrap();
        }
        for g in &rows.tags {
            conn.execute(
                "INSERT INTO tags VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id.as_str(), g.id, g.todo_id, g.name],
            )
            .unwrap();
        }
    }
    conn
}

type Rows = Vec<Vec<Value>>;

fn query_shared(conn: &Connection, sql: &str, reduce: Option<&str>) -> (Vec<String>, Rows) {
    let sql = match reduce {
        None => sql.to_string(),
        Some(reduce) => {
            conn.execute_batch("DROP TABLE IF EXISTS temp.result")
                .unwrap();
            conn.execute_batch(&format!("CREATE TEMP TABLE result AS {sql}"))
                .unwrap();
            reduce.to_string()
        }
    };
    let mut stmt = conn.prepare(&sql).unwrap();
    let columns = stmt.column_names().map(String::from).collect();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<rusqlite::Result<Rows>>()
        .unwrap();
    (columns, rows)
}

fn run(
    fleet: &Fleet,
    request: &ReportRequest,
    options: &ReportOptions,
) -> tenantdb::Result<(tenantdb::Report, Rows)> {
    let mut report = fleet.report_with(request, options, &NoProgress, "test")?;
    let rows = report.rows.by_ref().collect::<tenantdb::Result<Rows>>()?;
    Ok((report, rows))
}

fn sql(sql: &str) -> ReportRequest {
    ReportRequest {
        sql: sql.to_string(),
        ..ReportRequest::default()
    }
}

/// A total order on values (SQLite's type order, then the value), to compare results whose
/// row order the SQL leaves open.
fn cmp_value(a: &Value, b: &Value) -> CmpOrdering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
        (Value::Integer(x), Value::Real(y)) => (*x as f64).total_cmp(y),
        (Value::Real(x), Value::Integer(y)) => x.total_cmp(&(*y as f64)),
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(x, y)| cmp_value(x, y))
            .find(|o| *o != CmpOrdering::Equal)
            .unwrap_or(CmpOrdering::Equal)
    });
    rows
}

/// A report shape: its SQL, an optional reduce, and whether its SQL fixes the row order.
struct Shape {
    sql: &'static str,
    reduce: Option<&'static str>,
    ordered: bool,
}

const fn unordered(sql: &'static str) -> Shape {
    Shape {
        sql,
        reduce: None,
        ordered: false,
    }
}

const fn ordered(sql: &'static str) -> Shape {
    Shape {
        sql,
        reduce: None,
        ordered: true,
    }
}

const SHAPES: &[Shape] = &[
    ordered("SELECT count(*) FROM todos"),
    ordered(
        "SELECT count(*), count(DISTINCT _tenant), sum(done), total(score), avg(score), min(title), max(extra) FROM todos",
    ),
    unordered("SELECT _tenant, count(*), sum(done), total(score) FROM todos GROUP BY _tenant"),
    unordered("SELECT _tenant, count(*) FROM todos GROUP BY 1 HAVING count(*) > 2"),
    ordered("SELECT count(DISTINCT _tenant) FROM todos WHERE done = 0"),
    unordered(
        "SELECT t._tenant, t.id, t.title, g.name FROM todos t JOIN tags g ON g._tenant = t._tenant AND g.todo_id = t.id",
    ),
    unordered(
        "SELECT t._tenant, t.id, count(g.id) FROM todos t LEFT JOIN tags g ON g._tenant = t._tenant AND g.todo_id = t.id GROUP BY 1, 2",
    ),
    unordered(
        "SELECT t.title, g.name FROM todos t JOIN tags g USING (_tenant) WHERE g.todo_id = t.id",
    ),
    unordered(
        "SELECT _tenant, id, row_number() OVER (PARTITION BY _tenant ORDER BY id), sum(score) OVER (PARTITION BY _tenant ORDER BY id), rank() OVER (ORDER BY score) FROM todos",
    ),
    unordered(
        "SELECT _tenant, id, ntile(3) OVER (ORDER BY _tenant, id), lag(title) OVER (PARTITION BY _tenant ORDER BY id) FROM todos",
    ),
    unordered("SELECT DISTINCT title FROM todos"),
    ordered("SELECT count(*) FROM (SELECT DISTINCT name FROM tags)"),
    ordered(
        "SELECT count(DISTINCT name), count(DISTINCT title) FROM tags, (SELECT title FROM todos LIMIT 1)",
    ),
    unordered("SELECT lower(name), count(*) FROM tags GROUP BY name"),
    ordered("SELECT _tenant, id, title, score FROM todos ORDER BY score DESC, _tenant, id LIMIT 7"),
    ordered("SELECT score FROM todos ORDER BY score LIMIT 5 OFFSET 2"),
    ordered("SELECT name, _tenant, id FROM tags ORDER BY name, _tenant, id"),
    ordered(
        "WITH per AS (SELECT _tenant, count(*) AS n FROM todos GROUP BY 1) SELECT n, count(*) FROM per GROUP BY n ORDER BY n",
    ),
    ordered(
        "WITH RECURSIVE k(x) AS (VALUES (0) UNION ALL SELECT x + 1 FROM k WHERE x < 5) SELECT x, (SELECT count(*) FROM todos WHERE done = x) FROM k ORDER BY x",
    ),
    unordered("SELECT * FROM todos WHERE title LIKE 'a%'"),
    unordered("SELECT * FROM tags"),
    unordered("SELECT _tenant, typeof(extra), extra FROM todos"),
    unordered("SELECT typeof(score), typeof(done), count(*) FROM todos GROUP BY 1, 2"),
    ordered("SELECT count(*) FROM todos WHERE done = '1'"),
    unordered(
        "SELECT t._tenant, (SELECT count(*) FROM tags g WHERE g._tenant = t._tenant) FROM todos t",
    ),
    unordered("SELECT _tenant FROM todos UNION SELECT _tenant FROM tags"),
    unordered("SELECT _tenant, group_concat(title, ',' ORDER BY id) FROM todos GROUP BY _tenant"),
    unordered("SELECT _tenant, sum(id) FILTER (WHERE done) FROM todos GROUP BY 1"),
    unordered("SELECT _tenant, count(*) FROM open_todos GROUP BY 1"),
    ordered("SELECT * FROM todos WHERE 0"),
    ordered("SELECT 1 + 1, 'x'"),
    unordered(
        "SELECT t._tenant, t.id, j.value FROM todos t, json_each(json_array(t.title, t.done)) j",
    ),
    Shape {
        sql: "SELECT _tenant, count(*) AS n FROM todos GROUP BY 1",
        reduce: Some("SELECT count(*), sum(n), max(n) FROM result"),
        ordered: true,
    },
    Shape {
        sql: "SELECT title, count(*) AS n FROM todos GROUP BY title",
        reduce: Some("SELECT n, count(*) FROM result GROUP BY n ORDER BY n"),
        ordered: true,
    },
    Shape {
        sql: "SELECT score, score FROM todos",
        reduce: Some("SELECT typeof(score), count(*) FROM result GROUP BY 1 ORDER BY 1"),
        ordered: true,
    },
];

fn check_shapes(fleet: &Fleet, data: &[(TenantId, TenantRows)], options: &ReportOptions) {
    let reference = shared(data);
    for shape in SHAPES {
        let request = ReportRequest {
            sql: shape.sql.to_string(),
            reduce: shape.reduce.map(String::from),
            ..ReportRequest::default()
        };
        let (report, rows) =
            run(fleet, &request, options).unwrap_or_else(|e| panic!("{}: {e}", shape.sql));
        let (columns, expected) = query_shared(&reference, shape.sql, shape.reduce);
        assert_eq!(report.columns, columns, "{}", shape.sql);
        assert_eq!(report.tenants_scanned, data.len(), "{}", shape.sql);
        assert!(report.tenants_skipped.is_empty(), "{}", shape.sql);
        if shape.ordered {
            assert_eq!(rows, expected, "{} ({options:?})", shape.sql);
        } else {
            assert_eq!(
                sorted(rows),
                sorted(expected),
                "{} ({options:?})",
                shape.sql
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random fleets
// ---------------------------------------------------------------------------------------------

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-5i64..5).prop_map(Value::Integer),
        Just(Value::Integer(i64::MAX)),
        (-8i32..8).prop_map(|q| Value::Real(f64::from(q) * 0.25)),
        "[a-c]{0,2}".prop_map(Value::Text),
        Just(Value::Text("12".into())),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(Value::Blob),
    ]
}

fn tenant_rows_strategy() -> impl Strategy<Value = TenantRows> {
    let todo = (
        prop_oneof!["[ab]{0,2}", "[AB]{1}", Just("a b".to_string())],
        prop_oneof![
            Just(Value::Integer(0)),
            Just(Value::Integer(1)),
            Just(Value::Text("1".into())),
            Just(Value::Integer(2)),
        ],
        proptest::option::of((-40i32..40).prop_map(|q| f64::from(q) * 0.25)),
        value_strategy(),
    );
    let tag = (1i64..6, prop_oneof!["[aAbB]{1,2}", Just("Z".to_string())]);
    (
        proptest::collection::vec(todo, 0..6),
        proptest::collection::vec(tag, 0..5),
    )
        .prop_map(|(todos, tags)| TenantRows {
            todos: todos
                .into_iter()
                .enumerate()
                .map(|(i, (title, done, score, extra))| Todo {
                    id: i as i64 + 1,
                    title,
                    done,
                    score,
                    extra,
                })
                .collect(),
            tags: tags
                .into_iter()
                .enumerate()
                .map(|(i, (todo_id, name))| Tag {
                    id: i as i64 + 1,
                    todo_id,
                    name,
                })
                .collect(),
        })
}

/// Fleets of a few tenants most of the time, larger than one ATTACH batch sometimes; empty
/// tenants included. Batches are made small at random, so even small fleets take several.
fn fleet_strategy() -> impl Strategy<Value = (Vec<TenantRows>, usize, usize)> {
    let small = proptest::collection::vec(
        prop_oneof![3 => tenant_rows_strategy(), 1 => Just(TenantRows::default())],
        0..10,
    );
    let large = proptest::collection::vec(
        prop_oneof![3 => tenant_rows_strategy(), 1 => Just(TenantRows::default())],
        126..200,
    );
    (
        prop_oneof![6 => small, 1 => large],
        prop_oneof![Just(125usize), 1usize..5],
        1usize..4,
    )
}

#[test]
fn reports_equal_the_same_sql_on_one_shared_database() {
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 32,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&fleet_strategy(), |(tenants, batch, jobs)| {
            let tmp = TempDir::new().unwrap();
            let fleet = fleet(&tmp);
            let data: Vec<(TenantId, TenantRows)> = tenants
                .into_iter()
                .enumerate()
                .map(|(i, rows)| (tid(&format!("u{i:03}")), rows))
                .collect();
            let ids: Vec<TenantId> = data.iter().map(|(id, _)| id.clone()).collect();
            create(&fleet, &ids);
            for (id, rows) in &data {
                fill(&fleet, id, rows);
            }
            let options = ReportOptions {
                jobs,
                batch_tenants: batch,
                ..ReportOptions::default()
            };
            check_shapes(&fleet, &data, &options);
            Ok(())
        })
        .unwrap();
}

/// The default batch size with a fleet of more than two batches.
#[test]
fn a_fleet_of_several_batches_answers_like_one_database() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet(&tmp);
    let mut runner = TestRunner::deterministic();
    let data: Vec<(TenantId, TenantRows)> = (0..300)
        .map(|i| {
            let rows = if i % 7 == 0 {
                TenantRows::default()
            } else {
                tenant_rows_strategy()
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
            };
            (tid(&format!("user_{i:04}")), rows)
        })
        .collect();
    let ids: Vec<TenantId> = data.iter().map(|(id, _)| id.clone()).collect();
    create(&fleet, &ids);
    for (id, rows) in &data {
        fill(&fleet, id, rows);
    }
    check_shapes(&fleet, &data, &ReportOptions::default());
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// Every file under `dir` with a checksum of its contents. `-shm` files are SQLite's shared
/// memory (read marks change when anyone reads), not data, and are left out.
fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with("-shm") {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Every file that existed before is byte for byte the same. SQLite creates an empty `-wal`
/// (and a `-shm`) beside a WAL-mode tenant that had none when anyone, even a read-only reader,
/// opens it; those are the only new files allowed.
#[track_caller]
fn assert_unchanged(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for (path, sum) in before {
        assert_eq!(after.get(path), Some(sum), "{} changed", path.display());
    }
    for (path, sum) in after {
        if !before.contains_key(path) {
            assert!(
                path.to_string_lossy().ends_with("-wal") && sum == EMPTY,
                "{} appeared",
                path.display()
            );
        }
    }
}

fn small_fleet(tmp: &TempDir) -> (Fleet, Vec<(TenantId, TenantRows)>) {
    let fleet = fleet(tmp);
    let mut runner = TestRunner::deterministic();
    let data: Vec<(TenantId, TenantRows)> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|name| {
            let rows = tenant_rows_strategy()
                .new_tree(&mut runner)
                .unwrap()
                .current();
            (tid(name), rows)
        })
        .collect();
    let ids: Vec<TenantId> = data.iter().map(|(id, _)| id.clone()).collect();
    create(&fleet, &ids);
    for (id, rows) in &data {
        fill(&fleet, id, rows);
    }
    (fleet, data)
}

fn report_audits(fleet: &Fleet) -> Vec<(String, Option<String>)> {
    fleet
        .catalog()
        .admin_audit(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "report.run")
        .map(|e| (e.actor, e.detail))
        .collect()
}

#[test]
fn anything_but_one_read_is_refused_before_a_tenant_is_opened() {
    let tmp = TempDir::new().unwrap();
    let (fleet, _) = small_fleet(&tmp);
    let tenants = fleet.layout().tenants_dir();
    let before = checksums(&tenants);
    let refused = [
        "INSERT INTO todos (title) VALUES ('x')",
        "INSERT INTO todos SELECT * FROM todos",
        "UPDATE todos SET done = 1",
        "DELETE FROM todos",
        "REPLACE INTO tags (id, name) VALUES (1, 'x')",
        "WITH x AS (SELECT 1) DELETE FROM todos",
        "CREATE TABLE t (x)",
        "CREATE TEMP TABLE t AS SELECT * FROM todos",
        "CREATE INDEX i ON todos (title)",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TRIGGER tr AFTER INSERT ON todos BEGIN SELECT 1; END",
        "DROP TABLE todos",
        "DROP VIEW open_todos",
        "ALTER TABLE todos ADD COLUMN x",
        "ATTACH DATABASE '/tmp/evil.db' AS evil",
        "DETACH DATABASE main",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = 1",
        "PRAGMA temp_store_directory = '/tmp'",
        "PRAGMA table_info(todos)",
        "BEGIN",
        "COMMIT",
        "SAVEPOINT s",
        "VACUUM",
        "VACUUM INTO '/tmp/copy.db'",
        "ANALYZE",
        "REINDEX",
        "EXPLAIN SELECT * FROM todos",
        "SELECT 1; DELETE FROM todos",
        "SELECT 1; SELECT 2",
        "SELECT count(*) FROM todos; ATTACH DATABASE 'x.db' AS x",
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT rowid, * FROM todos",
        "SELECT * FROM sqlite_schema",
        "SELECT * FROM pragma_table_info('todos')",
        "SELECT * FROM dbstat",
        "",
        "  -- only a comment",
    ];
    for statement in refused {
        let err = fleet
            .report(&sql(statement), &NoProgress, "test")
            .expect_err(statement);
        assert!(
            matches!(&err, Error::Sql { .. }),
            "{statement}: unexpected error kind {err:?}"
        );
        let message = err.to_string();
        assert!(!message.is_empty(), "{statement}");
    }
    let reduce_refused = [
        "DELETE FROM result",
        "SELECT * FROM todos",
        "SELECT * FROM result; DROP TABLE result",
        "PRAGMA user_version",
        "ATTACH 'x' AS y",
    ];
    for reduce in reduce_refused {
        let request = ReportRequest {
            sql: "SELECT _tenant, count(*) AS n FROM todos GROUP BY 1".into(),
            reduce: Some(reduce.into()),
            ..ReportRequest::default()
        };
        let err = fleet
            .report(&request, &NoProgress, "test")
            .expect_err(reduce);
        assert!(matches!(&err, Error::Sql { .. }), "{reduce}: {err:?}");
    }
    // No tenant file changed, none appeared, nothing was left in the scratch directory, and
    // nothing was recorded as run.
    assert_eq!(checksums(&tenants), before);
    assert!(!Path::new("/tmp/evil.db").exists());
    let scratch = fleet.layout().root().join("reports");
    assert!(
        !scratch.exists() || std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch left behind"
    );
    assert!(report_audits(&fleet).is_empty());
}

#[test]
fn refusals_say_why() {
    let tmp = TempDir::new().unwrap();
    let (fleet, _) = small_fleet(&tmp);
    let message = |statement: &str| {
        fleet
            .report(&sql(statement), &NoProgress, "test")
            .unwrap_err()
            .to_string()
    };
    assert!(message("DELETE FROM todos").contains("DELETE FROM todos is not allowed"));
    assert!(message("SELECT 1; SELECT 2").contains("one statement"));
    assert!(message("ATTACH 'x.db' AS x").contains("ATTACH"));
    assert!(message("PRAGMA user_version = 3").contains("PRAGMA user_version"));
    assert!(message("SELECT rowid FROM todos").contains("rowid"));
    let unknown = message("SELECT count(*)\nFROM todoz WHERE done = 0");
    assert!(unknown.contains("no such table: todoz"), "{unknown}");
    assert!(unknown.contains("line 2, column 6"), "{unknown}");
    assert!(
        unknown.contains("FROM todoz WHERE done = 0\n       ^"),
        "{unknown}"
    );
    // A query that fails while it runs (before its first row) is the report's error.
    let overflow = message("SELECT sum(9223372036854775807) FROM todos");
    assert!(overflow.contains("integer overflow"), "{overflow}");
    let column = message("SELECT nope FROM todos");
    assert!(column.contains("no such column: nope"), "{column}");
    let syntax = message("SELEC * FROM todos");
    assert!(syntax.contains("syntax error"), "{syntax}");
    assert!(syntax.contains("SELEC"), "{syntax}");
}

// ---------------------------------------------------------------------------------------------
// Read-only, audit, selection
// ---------------------------------------------------------------------------------------------

#[test]
fn a_report_changes_no_tenant_file_and_is_audited() {
    let tmp = TempDir::new().unwrap();
    let (fleet, data) = small_fleet(&tmp);
    // Give one tenant a write-ahead log with frames in it, as a serving tenant has.
    {
        let conn = fleet.connect(&data[0].0).unwrap();
        drop(conn);
        let mut lease = fleet.connect(&data[1].0).unwrap();
        lease
            .execute(
                "INSERT INTO todos (title) VALUES ('fresh')",
                &tenantdb::Args::default(),
            )
            .unwrap();
    }
    let tenants = fleet.layout().tenants_dir();
    let before = checksums(&tenants);
    let request = ReportRequest {
        sql: "SELECT _tenant, count(*), group_concat(title) FROM todos GROUP BY 1".into(),
        reduce: Some("SELECT count(*) FROM result".into()),
        ..ReportRequest::default()
    };
    let (report, rows) = run(&fleet, &request, &ReportOptions::default()).unwrap();
    assert_eq!(report.tenants_scanned, data.len());
    assert_eq!(rows.len(), 1);
    assert_unchanged(&before, &checksums(&tenants));
    let audits = report_audits(&fleet);
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].0, "test");
    let detail = audits[0].1.as_deref().unwrap();
    assert!(detail.contains("GROUP BY 1") && detail.contains("SELECT count(*) FROM result"));
    // The scratch database is gone once the rows are read.
    drop(report);
    let scratch = fleet.layout().root().join("reports");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
}

#[test]
fn tenants_can_be_chosen_by_id_and_creation_time() {
    let tmp = TempDir::new().unwrap();
    let (fleet, _) = small_fleet(&tmp);
    fleet.delete_tenant(&tid("dave"), false, "test").unwrap();
    let listed = ReportRequest {
        sql: "SELECT DISTINCT _tenant FROM todos ORDER BY 1".into(),
        tenants: Some(vec![
            tid("carol"),
            tid("alice"),
            tid("nobody"),
            tid("dave"),
            tid("alice"),
        ]),
        ..ReportRequest::default()
    };
    let (report, _) = run(&fleet, &listed, &ReportOptions::default()).unwrap();
    assert_eq!(report.tenants_scanned, 2);
    let skipped: Vec<(&str, &str)> = report
        .tenants_skipped
        .iter()
        .map(|s| (s.tenant.as_str(), s.reason.as_str()))
        .collect();
    // A deleted tenant and one that never existed look the same.
    assert_eq!(skipped, [("dave", "not found"), ("nobody", "not found")]);

    // Backdate two tenants' creation in the catalog.
    let catalog = Connection::open(fleet.layout().catalog()).unwrap();
    catalog
        .execute(
            "UPDATE tenants SET created_at = 1000 WHERE id IN ('alice', 'bob')",
            [],
        )
        .unwrap();
    let tenants_of = |after: Option<i64>, before: Option<i64>| {
        let request = ReportRequest {
            sql: "SELECT count(*) FROM todos".into(),
            created_after: after,
            created_before: before,
            ..ReportRequest::default()
        };
        let (report, _) = run(&fleet, &request, &ReportOptions::default()).unwrap();
        report.tenants_scanned
    };
    assert_eq!(tenants_of(None, Some(1001)), 2);
    assert_eq!(tenants_of(Some(1001), None), 1);
    assert_eq!(tenants_of(Some(1000), Some(1001)), 2);
    assert_eq!(tenants_of(Some(2000), Some(1000)), 0);
    assert_eq!(tenants_of(None, None), 3);
}

#[test]
fn internal_tables_and_views_can_be_read() {
    let tmp = TempDir::new().unwrap();
    let (fleet, data) = small_fleet(&tmp);
    let (_, rows) = run(
        &fleet,
        &sql("SELECT _tenant, version, name FROM _tenantdb_migrations ORDER BY _tenant"),
        &ReportOptions::default(),
    )
    .unwrap();
    assert_eq!(rows.len(), data.len());
    assert!(
        rows.iter()
            .all(|r| r[1] == Value::Integer(1) && r[2] == Value::Text("0001_todos.sql".into()))
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants that cannot answer
// ---------------------------------------------------------------------------------------------

#[test]
fn tenants_behind_the_schema_are_skipped_with_the_reason() {
    let tmp = TempDir::new().unwrap();
    let (fleet, data) = small_fleet(&tmp);
    // carol has two todos with the same title: the unique index of migration 2 fails on her,
    // so she stays at version 1, without the new column and table.
    fill(
        &fleet,
        &tid("carol"),
        &TenantRows {
            todos: vec![
                Todo {
                    id: 100,
                    title: "twin".into(),
                    done: Value::Integer(0),
                    score: None,
                    extra: Value::Null,
                },
                Todo {
                    id: 101,
                    title: "twin".into(),
                    done: Value::Integer(0),
                    score: None,
                    extra: Value::Null,
                },
            ],
            tags: vec![],
        },
    );
    for (id, _) in &data {
        if id.as_str() != "carol" {
            let conn = Connection::open(fleet.layout().tenant_db(id)).unwrap();
            conn.execute("DELETE FROM todos WHERE rowid NOT IN (SELECT min(rowid) FROM todos GROUP BY title)", [])
                .unwrap();
        }
    }
    let dir = write_migrations(
        tmp.path(),
        &[(
            "0002_priority.sql",
            "ALTER TABLE todos ADD COLUMN priority INTEGER NOT NULL DEFAULT 3;
             CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             CREATE UNIQUE INDEX todos_title ON todos (title);",
        )],
    );
    let outcome = fleet
        .migrate(&dir, &MigrateOptions::default(), &NoProgress, "test")
        .unwrap();
    assert_eq!(outcome.failed.len(), 1, "{outcome:?}");

    let (report, rows) = run(
        &fleet,
        &sql("SELECT _tenant, sum(priority) FROM todos GROUP BY 1 ORDER BY 1"),
        &ReportOptions::default(),
    )
    .unwrap();
    assert_eq!(report.tenants_scanned, 3);
    assert_eq!(report.tenants_skipped.len(), 1);
    assert_eq!(report.tenants_skipped[0].tenant.as_str(), "carol");
    assert_eq!(
        report.tenants_skipped[0].reason,
        "its schema (version 1) lacks column todos.priority"
    );
    assert!(rows.iter().all(|r| r[0] != Value::Text("carol".into())));

    let (report, _) = run(
        &fleet,
        &sql("SELECT count(*) FROM notes"),
        &ReportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        report.tenants_skipped[0].reason,
        "its schema (version 1) lacks table notes"
    );
    // A report that reads only what every version has answers for everyone.
    let (report, _) = run(
        &fleet,
        &sql("SELECT _tenant, title FROM todos"),
        &ReportOptions::default(),
    )
    .unwrap();
    assert_eq!(report.tenants_scanned, 4);
    assert!(report.tenants_skipped.is_empty());
}

/// Deletes a tenant from inside the report, once the first batch is done.
struct DeleteOnFirstBatch<'a> {
    fleet: &'a Fleet,
    victim: TenantId,
    done: AtomicBool,
}

impl Progress for DeleteOnFirstBatch<'_> {
    fn advance(&self, _n: u64) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.fleet
                .delete_tenant(&self.victim, false, "test")
                .unwrap();
        }
    }
}

#[test]
fn a_tenant_deleted_during_a_report_is_skipped() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet(&tmp);
    let ids: Vec<TenantId> = (0..8).map(|i| tid(&format!("t{i}"))).collect();
    create(&fleet, &ids);
    // t7's file vanishes behind the catalog's back too.
    std::fs::remove_file(fleet.layout().tenant_db(&ids[7])).unwrap();
    let progress = DeleteOnFirstBatch {
        fleet: &fleet,
        victim: ids[6].clone(),
        done: AtomicBool::new(false),
    };
    let options = ReportOptions {
        jobs: 1,
        batch_tenants: 2,
        ..ReportOptions::default()
    };
    let mut report = fleet
        .report_with(
            &sql("SELECT count(*) FROM todos"),
            &options,
            &progress,
            "test",
        )
        .unwrap();
    let rows: Rows = report.rows.by_ref().map(Result::unwrap).collect();
    assert_eq!(rows, vec![vec![Value::Integer(0)]]);
    assert_eq!(report.tenants_scanned, 6);
    let skipped: Vec<(&str, &str)> = report
        .tenants_skipped
        .iter()
        .map(|s| (s.tenant.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped, [("t6", "deleted"), ("t7", "deleted")]);
}

#[test]
fn a_broken_tenant_is_skipped_and_the_others_answer() {
    let tmp = TempDir::new().unwrap();
    let (fleet, data) = small_fleet(&tmp);
    let broken = &data[1].0;
    std::fs::write(fleet.layout().tenant_db(broken), vec![b'x'; 8192]).unwrap();
    let (report, rows) = run(
        &fleet,
        &sql("SELECT DISTINCT _tenant FROM todos"),
        &ReportOptions::default(),
    )
    .unwrap();
    assert_eq!(report.tenants_scanned, data.len() - 1);
    assert_eq!(report.tenants_skipped.len(), 1);
    assert_eq!(&report.tenants_skipped[0].tenant, broken);
    assert!(
        report.tenants_skipped[0].reason.starts_with("unreadable: "),
        "{:?}",
        report.tenants_skipped
    );
    assert!(rows.iter().all(|r| r[0] != Value::Text(broken.to_string())));
}

#[test]
fn a_tenant_migrating_during_reports_is_read_whole() {
    // Migration 2 moves every row of `a_old` to `b_new` in one transaction per tenant. A report
    // copies `a_old` (big: the window for the race) then `b_new`; read from two snapshots, a
    // tenant would show its rows twice (or none), read from one it shows them once.
    const PER_TENANT: i64 = 3000;
    let tmp = TempDir::new().unwrap();
    let fleet = Fleet::open(Config::new(tmp.path().join("data"))).unwrap();
    let dir = write_migrations(
        tmp.path(),
        &[(
            "0001_rows.sql",
            "CREATE TABLE a_old (id INTEGER PRIMARY KEY, v INTEGER);
             CREATE TABLE b_new (id INTEGER PRIMARY KEY, v INTEGER);",
        )],
    );
    migrate(&fleet, &dir);
    let ids: Vec<TenantId> = (0..60).map(|i| tid(&format!("m{i:02}"))).collect();
    create(&fleet, &ids);
    for id in &ids {
        let conn = Connection::open(fleet.layout().tenant_db(id)).unwrap();
        conn.execute(
            "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k WHERE x < ?1) \
             INSERT INTO a_old (id, v) SELECT x, x FROM k",
            [PER_TENANT],
        )
        .unwrap();
    }
    let dir = write_migrations(
        tmp.path(),
        &[(
            "0002_move.sql",
            "INSERT INTO b_new SELECT * FROM a_old; DELETE FROM a_old;
             ALTER TABLE b_new ADD COLUMN moved INTEGER NOT NULL DEFAULT 1;",
        )],
    );
    let report_sql = "SELECT t, sum(n) FROM (SELECT _tenant AS t, count(*) AS n FROM a_old \
                      GROUP BY 1 UNION ALL SELECT _tenant, count(*) FROM b_new GROUP BY 1) \
                      GROUP BY t";
    let migrating = AtomicBool::new(true);
    let reports = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let options = MigrateOptions {
                dry_run: false,
                jobs: 2,
            };
            fleet.migrate(&dir, &options, &NoProgress, "test").unwrap();
            migrating.store(false, Ordering::SeqCst);
        });
        let options = ReportOptions {
            jobs: 2,
            batch_tenants: 4,
            ..ReportOptions::default()
        };
        loop {
            let still = migrating.load(Ordering::SeqCst);
            let (report, rows) = run(&fleet, &sql(report_sql), &options).unwrap();
            assert!(report.tenants_skipped.is_empty(), "{report:?}");
            assert_eq!(report.tenants_scanned, ids.len());
            assert_eq!(rows.len(), ids.len());
            for row in &rows {
                assert_eq!(
                    row[1],
                    Value::Integer(PER_TENANT),
                    "half-migrated read: {row:?}"
                );
            }
            reports.fetch_add(1, Ordering::Relaxed);
            if !still {
                break;
            }
        }
    });
    assert!(reports.load(Ordering::Relaxed) >= 2);
}

/// Commits a write to one tenant from another thread shortly after the first batch is done,
/// while the report copies that tenant's big table.
struct WriteDuringCopy {
    path: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Progress for WriteDuringCopy {
    fn advance(&self, _n: u64) {
        let mut writer = self.writer.lock().unwrap();
        if writer.is_none() {
            let path = self.path.clone();
            *writer = Some(std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let conn = Connection::open(path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(5))
                    .unwrap();
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     UPDATE big SET g = 2 WHERE id = (SELECT max(id) FROM big);
                     UPDATE small SET g = 2;
                     COMMIT;",
                )
                .unwrap();
            }));
        }
    }
}

#[test]
fn a_write_committed_during_the_copy_is_seen_whole_or_not_at_all() {
    let tmp = TempDir::new().unwrap();
    let fleet = Fleet::open(Config::new(tmp.path().join("data"))).unwrap();
    let dir = write_migrations(
        tmp.path(),
        &[(
            "0001_gen.sql",
            "CREATE TABLE big (id INTEGER PRIMARY KEY, g INTEGER, pad TEXT);
             CREATE TABLE small (g INTEGER);",
        )],
    );
    migrate(&fleet, &dir);
    let (first, busy) = (tid("a_first"), tid("b_busy"));
    create(&fleet, &[first.clone(), busy.clone()]);
    let conn = Connection::open(fleet.layout().tenant_db(&busy)).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k WHERE x < 400000)
         INSERT INTO big SELECT x, 1, printf('%020d', x) FROM k;
         INSERT INTO small VALUES (1);",
    )
    .unwrap();
    drop(conn);
    let progress = WriteDuringCopy {
        path: fleet.layout().tenant_db(&busy),
        writer: Mutex::new(None),
    };
    let options = ReportOptions {
        jobs: 1,
        batch_tenants: 1,
        ..ReportOptions::default()
    };
    // `big` is copied before `small`: a read from two snapshots would pair big's old
    // generation with small's new one.
    let request = sql(
        "SELECT b._tenant, max(b.g), count(*), s.g FROM big b JOIN small s USING (_tenant) \
         GROUP BY 1",
    );
    let mut report = fleet
        .report_with(&request, &options, &progress, "test")
        .unwrap();
    let rows: Rows = report.rows.by_ref().map(Result::unwrap).collect();
    if let Some(writer) = progress.writer.lock().unwrap().take() {
        writer.join().unwrap();
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][2], Value::Integer(400_000));
    assert_eq!(rows[0][1], rows[0][3], "read from two snapshots: {rows:?}");
}

#[test]
fn checkpoints_are_not_held_back_once_tenants_are_read() {
    let tmp = TempDir::new().unwrap();
    let (fleet, data) = small_fleet(&tmp);
    // The rows are not read yet: the tenants must already be released.
    let mut report = fleet
        .report(
            &sql("SELECT _tenant, title FROM todos"),
            &NoProgress,
            "test",
        )
        .unwrap();
    for (id, _) in &data {
        let conn = Connection::open(fleet.layout().tenant_db(id)).unwrap();
        conn.execute("INSERT INTO todos (title) VALUES ('later')", [])
            .unwrap();
        let (busy, log, done): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log, done), (0, 0, 0), "{id}: checkpoint held back");
    }
    let rows: Rows = report.rows.by_ref().map(Result::unwrap).collect();
    let expected: usize = data.iter().map(|(_, r)| r.todos.len()).sum();
    assert_eq!(
        rows.len(),
        expected,
        "the report reads the tenants as they were"
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

#[test]
fn rows_stream_and_stopping_early_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let (fleet, _) = small_fleet(&tmp);
    let request = sql(
        "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k WHERE x < 1000000) \
         SELECT x, (SELECT count(*) FROM todos) FROM k",
    );
    let mut report = fleet.report(&request, &NoProgress, "test").unwrap();
    let first: Vec<Rows> = vec![
        report
            .rows
            .by_ref()
            .take(1000)
            .map(Result::unwrap)
            .collect(),
    ];
    assert_eq!(first[0].len(), 1000);
    assert_eq!(first[0][999][0], Value::Integer(1000));
    drop(report);
    let scratch = fleet.layout().root().join("reports");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
}

#[test]
fn a_cancelled_report_stops() {
    let tmp = TempDir::new().unwrap();
    let (fleet, _) = small_fleet(&tmp);
    let cancel = Arc::new(AtomicBool::new(false));
    let options = ReportOptions {
        cancel: Some(Arc::clone(&cancel)),
        ..ReportOptions::default()
    };
    // Never produces a row: only cancelling ends it.
    let request = sql(
        "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k) \
         SELECT sum(x) FROM k, todos",
    );
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            cancel.store(true, Ordering::SeqCst);
        });
        fleet.report_with(&request, &options, &NoProgress, "test")
    });
    let err = outcome.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    let scratch = fleet.layout().root().join("reports");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
}

/// Sets the cancel flag when the first batch is done.
struct CancelOnFirstBatch(Arc<AtomicBool>);

impl Progress for CancelOnFirstBatch {
    fn advance(&self, _n: u64) {
        // By now the producer has filled the hand-off queue and waits for room.
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn cancelling_while_tenants_are_read_stops_the_reading() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet(&tmp);
    // More tenants than the hand-off queue holds, so the producer is waiting for room.
    let ids: Vec<TenantId> = (0..260).map(|i| tid(&format!("c{i:03}"))).collect();
    create(&fleet, &ids);
    let cancel = Arc::new(AtomicBool::new(false));
    let options = ReportOptions {
        jobs: 1,
        batch_tenants: 1,
        cancel: Some(Arc::clone(&cancel)),
        ..ReportOptions::default()
    };
    let err = fleet
        .report_with(
            &sql("SELECT count(*) FROM todos"),
            &options,
            &CancelOnFirstBatch(cancel),
            "test",
        )
        .unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    let scratch = fleet.layout().root().join("reports");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
}

#[test]
fn values_keep_their_types() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet(&tmp);
    create(&fleet, &[tid("v")]);
    let conn = Connection::open(fleet.layout().tenant_db(&tid("v"))).unwrap();
    let values = [
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Real(-0.5),
        Value::Text("héllo\0world".into()),
        Value::Blob(vec![0, 255, 1]),
    ];
    for (i, v) in values.iter().enumerate() {
        conn.execute(
            "INSERT INTO todos (id, title, extra) VALUES (?1, 't', ?2)",
            params_from_iter([Value::Integer(i as i64 + 1), v.clone()]),
        )
        .unwrap();
    }
    let (_, rows) = run(
        &fleet,
        &sql("SELECT extra FROM todos ORDER BY id"),
        &ReportOptions::default(),
    )
    .unwrap();
    let got: Vec<Value> = rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(got, values);
}
