//! Moving a shared database in (`Fleet::plan_import`, `Fleet::import`, `Fleet::verify_import`):
//! real source files, a real data directory, real threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tenantdb::import::{ImportOptions, ImportPlan, Route, TenantAction};
use tenantdb::{Config, Fleet, MigrateOptions, NoProgress, TenantId};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The classic shared shape: every user's rows in one database, found by `user_id`.
const SHARED: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT);
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    due TEXT
);
CREATE INDEX todos_by_user ON todos (user_id);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY,
    todo_id INTEGER REFERENCES todos(id),
    author TEXT,
    body TEXT NOT NULL
);
CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL);
";

/// The same application, one user per database: migration 0001...
const TENANT_V1: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT);
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    due TEXT
);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY,
    todo_id INTEGER REFERENCES todos(id),
    author TEXT,
    body TEXT NOT NULL
);
";
/// ... and 0002, a column the source never had.
const TENANT_V2: &str = "ALTER TABLE todos ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;";

struct Setup {
    tmp: TempDir,
    fleet: Fleet,
    source: PathBuf,
}

impl Setup {
    /// A fleet at the tenant schema and an empty shared database of the classic shape.
    fn new() -> Setup {
        Setup::with(
            SHARED,
            &[
                ("0001_schema.sql", TENANT_V1),
                ("0002_priority.sql", TENANT_V2),
            ],
        )
    }

    fn with(shared: &str, migrations: &[(&str, &str)]) -> Setup {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("migrations");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, sql) in migrations {
            std::fs::write(dir.join(name), sql).unwrap();
        }
        let fleet = Fleet::open(Config::new(tmp.path().join("data"))).unwrap();
        fleet
            .migrate(&dir, &MigrateOptions::default(), &NoProgress, "test")
            .unwrap();
        let source = tmp.path().join("shared.db");
        let conn = Connection::open(&source).unwrap();
        conn.execute_batch(shared).unwrap();
        Setup { tmp, fleet, source }
    }

    /// The shared database as its app used it: SQLite's default of not enforcing foreign
    /// keys (this build turns them on by default), so it can hold dangling ones.
    fn shared(&self) -> Connection {
        let conn = Connection::open(&self.source).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        conn
    }

    fn options(&self) -> ImportOptions {
        let mut o = ImportOptions::new(&self.source, "user_id");
        o.jobs = 4;
        o
    }

    fn plan(&self) -> ImportPlan {
        self.fleet.plan_import(&self.options()).unwrap()
    }

    fn tenant(&self, id: &str) -> Connection {
        let conn = Connection::open(self.fleet.layout().tenant_db(&tid(id))).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        conn
    }

    fn tenant_files(&self) -> usize {
        files_under(&self.fleet.layout().tenants_dir())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .count()
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

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

/// `users` users `user_0`..; user i has i % 4 + 1 todos, every other todo has two comments.
fn fill(conn: &Connection, users: usize) {
    let tx = conn.unchecked_transaction().unwrap();
    let mut todo_id = 0;
    for u in 0..users {
        let user = format!("user_{u}");
        tx.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, ?2, ?3)",
            params![
                user,
                format!("{user}@example.com"),
                (u % 3 != 0).then(|| format!("User {u}"))
            ],
        )
        .unwrap();
        for t in 0..(u % 4 + 1) {
            todo_id += 1;
            tx.execute(
                "INSERT INTO todos (id, user_id, title, done, due) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    todo_id,
                    user,
                    format!("todo {t} of {user}"),
                    (t % 2) as i64,
                    (t == 0).then_some("2025-01-01")
                ],
            )
            .unwrap();
            if todo_id % 2 == 0 {
                for c in 0..2 {
                    tx.execute(
                        "INSERT INTO comments (todo_id, author, body) VALUES (?1, ?2, ?3)",
                        params![
                            todo_id,
                            format!("user_{}", (u + c) % users),
                            format!("comment {c}")
                        ],
                    )
                    .unwrap();
                }
            }
        }
    }
    tx.execute_batch("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan');")
        .unwrap();
    tx.commit().unwrap();
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Rows per user per table, as the source has them.
fn source_counts(conn: &Connection) -> BTreeMap<(String, &'static str), i64> {
    let mut out = BTreeMap::new();
    for (table, sql) in [
        ("users", "SELECT id, count(*) FROM users GROUP BY 1"),
        ("todos", "SELECT user_id, count(*) FROM todos GROUP BY 1"),
        (
            "comments",
            "SELECT t.user_id, count(*) FROM comments c JOIN todos t ON c.todo_id = t.id GROUP BY 1",
        ),
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap();
        for row in rows {
            let (user, n) = row.unwrap();
            out.insert((user, table), n);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The whole path
// ---------------------------------------------------------------------------------------------

#[test]
fn a_shared_database_is_split_into_tenants_and_verified() {
    let s = Setup::new();
    fill(&s.shared(), 12);
    let before = sha256_file(&s.source);

    let plan = s.plan();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let routes: BTreeMap<&str, &Route> = plan
        .tables
        .iter()
        .map(|t| (t.table.as_str(), &t.route))
        .collect();
    assert_eq!(
        routes["users"],
        &Route::Referenced {
            column: "id".into(),
            by: "todos.user_id".into()
        }
    );
    assert_eq!(
        routes["todos"],
        &Route::Column {
            column: "user_id".into()
        }
    );
    assert!(
        matches!(routes["comments"], Route::Follows { root, column, path } if root == "todos"
            && column == "user_id" && path.len() == 1 && path[0].columns == ["todo_id"]),
        "{:?}",
        routes["comments"]
    );
    // Parents come first, so each tenant is written top-down.
    let order: Vec<&str> = plan.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(order, ["users", "todos", "comments"]);
    // The global lookup table is reported and left alone.
    assert_eq!(plan.left_alone.len(), 1);
    assert_eq!(plan.left_alone[0].table, "countries");
    // The tenant column is dropped (reported); the new tenant column takes its default.
    let todos = plan.tables.iter().find(|t| t.table == "todos").unwrap();
    assert_eq!(todos.dropped, ["user_id"]);
    assert_eq!(todos.defaulted, ["priority"]);
    assert!(
        plan.notes.iter().any(|n| n.contains("user_id")),
        "{:?}",
        plan.notes
    );
    assert_eq!(plan.tenants.len(), 12);
    assert!(
        plan.tenants
            .iter()
            .all(|t| t.action == TenantAction::Create)
    );
    assert_eq!(plan.schema_version, 2);
    // Planning (the dry run) writes nothing: no tenant file, no catalog row.
    assert_eq!(s.tenant_files(), 0);
    assert!(s.fleet.list_tenants(None, 100).unwrap().is_empty());

    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.imported, 12);
    assert_eq!(report.created, 12);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let shared = s.shared();
    let total = count(&shared, "SELECT count(*) FROM users")
        + count(&shared, "SELECT count(*) FROM todos")
        + count(&shared, "SELECT count(*) FROM comments");
    assert_eq!(report.rows as i64, total);

    let verified = s.fleet.verify_import(&plan, &NoProgress).unwrap();
    assert!(verified.ok, "{:?}", verified.mismatches);
    assert_eq!(verified.matched, 12);
    assert_eq!(verified.rows as i64, total);

    // Each tenant holds exactly its own rows, ids and values as they were.
    for ((user, table), n) in source_counts(&shared) {
        let tenant = s.tenant(&user);
        assert_eq!(
            count(&tenant, &format!("SELECT count(*) FROM {table}")),
            n,
            "{user} {table}"
        );
    }
    let user_5 = s.tenant("user_5");
    let titles: Vec<(i64, String, Option<String>)> = user_5
        .prepare("SELECT id, title, due FROM todos ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<(i64, String, Option<String>)> = shared
        .prepare("SELECT id, title, due FROM todos WHERE user_id = 'user_5' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(titles, expected);
    assert_eq!(
        count(&user_5, "SELECT count(*) FROM todos WHERE priority != 0"),
        0
    );
    // The import is recorded inside the tenant, with the source's checksum.
    let (sha, rows): (String, String) = user_5
        .query_row(
            "SELECT source_sha256, rows FROM _tenantdb_import",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(sha, before);
    assert!(rows.contains("\"todos\":2"), "{rows}");
    // The migrations ledger inside the tenant is the template's, untouched.
    assert_eq!(
        count(&user_5, "SELECT count(*) FROM _tenantdb_migrations"),
        2
    );
    // The catalog knows every tenant, at the latest version; the admin audit has the import.
    let listed = s.fleet.list_tenants(None, 100).unwrap();
    assert_eq!(listed.len(), 12);
    assert!(listed.iter().all(|t| t.record.schema_version == 2));
    let audit = s.fleet.catalog().admin_audit(0, 1000).unwrap();
    let import = audit.iter().find(|e| e.action == "import").unwrap();
    assert_eq!(import.actor, "test");
    assert!(
        import
            .detail
            .as_deref()
            .unwrap()
            .contains("\"imported\":12")
    );

    // Tenants serve their rows through the guarded path too.
    let mut conn = s.fleet.connect(&tid("user_5")).unwrap();
    let r = conn
        .execute("SELECT count(*) FROM todos", &tenantdb::Args::default())
        .unwrap();
    assert_eq!(r.rows[0][0], tenantdb::Value::Integer(2));
    drop(conn);

    // The source was never changed, and nothing was left beside it.
    drop(shared);
    assert_eq!(sha256_file(&s.source), before);
    let beside: Vec<PathBuf> = std::fs::read_dir(s.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("shared.db"))
        .collect();
    assert_eq!(beside, std::slice::from_ref(&s.source));
}

#[test]
fn a_rerun_skips_what_is_done_without_duplicates() {
    let s = Setup::new();
    fill(&s.shared(), 9);
    let plan = s.plan();
    let first = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(first.imported, 9);

    let again = s.plan();
    assert!(again.tenants.iter().all(|t| t.action == TenantAction::Done));
    let second = s.fleet.import(&again, &NoProgress, "test").unwrap();
    assert_eq!(second.imported, 0);
    assert_eq!(second.already_imported, 9);
    assert_eq!(second.rows, 0);
    // Even a stale plan (which still says "create") cannot import a tenant twice: the record
    // is checked inside each tenant's transaction.
    let third = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!((third.imported, third.already_imported), (0, 9));
    assert!(s.fleet.verify_import(&again, &NoProgress).unwrap().ok);
    for ((user, table), n) in source_counts(&s.shared()) {
        assert_eq!(
            count(&s.tenant(&user), &format!("SELECT count(*) FROM {table}")),
            n
        );
    }
    assert_eq!(
        count(&s.tenant("user_3"), "SELECT count(*) FROM _tenantdb_import"),
        1
    );
}

#[test]
fn a_failed_tenant_is_isolated_and_a_rerun_finishes_it() {
    let s = Setup::new();
    fill(&s.shared(), 6);
    // user_2 signed up already and has a todo whose id collides with one being imported.
    let user_2 = tid("user_2");
    s.fleet.create_tenant(&user_2, "test").unwrap();
    let clash: i64 = s
        .shared()
        .query_row(
            "SELECT min(id) FROM todos WHERE user_id = 'user_2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    s.tenant("user_2")
        .execute("INSERT INTO todos (id, title) VALUES (?1, 'mine')", [clash])
        .unwrap();

    let plan = s.plan();
    assert_eq!(plan.tenant(&user_2).unwrap().action, TenantAction::Import);
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.imported, 5);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].tenant, user_2);
    assert!(
        report.failed[0].error.contains("UNIQUE"),
        "{}",
        report.failed[0].error
    );
    // Its transaction rolled back whole: only the row it had, and no import record.
    let t = s.tenant("user_2");
    assert_eq!(count(&t, "SELECT count(*) FROM todos"), 1);
    assert_eq!(count(&t, "SELECT count(*) FROM users"), 0);
    let verified = s.fleet.verify_import(&plan, &NoProgress).unwrap();
    assert!(!verified.ok);
    assert!(verified.mismatches.iter().all(|m| m.tenant == user_2));
    assert_eq!(verified.matched, 5);

    t.execute("DELETE FROM todos", []).unwrap();
    drop(t);
    let plan = s.plan();
    let rerun = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!((rerun.imported, rerun.already_imported), (1, 5));
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
}

/// A tenant that exists already may have triggers of its own (users may change their schema
/// with `allow_ddl`). They fire on the imported rows, but one that writes tenantdb's tables
/// (to erase the write audit) fails that tenant's import instead, and leaves the audit whole.
#[test]
fn a_tenants_trigger_may_not_write_tenantdb_tables_during_an_import() {
    let s = Setup::new();
    fill(&s.shared(), 3);
    let user_1 = tid("user_1");
    s.fleet.create_tenant(&user_1, "test").unwrap();
    s.fleet
        .connect(&user_1)
        .unwrap()
        .execute(
            "INSERT INTO users (id, email) VALUES ('early', 'early@example.com')",
            &tenantdb::Args::default(),
        )
        .unwrap();
    s.tenant("user_1")
        .execute_batch(
            "CREATE TRIGGER wipe AFTER INSERT ON todos BEGIN DELETE FROM _tenantdb_audit; END;",
        )
        .unwrap();

    let plan = s.plan();
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].tenant, user_1);
    assert!(
        report.failed[0]
            .error
            .contains("trigger wipe may not write _tenantdb_audit"),
        "{}",
        report.failed[0].error
    );
    let t = s.tenant("user_1");
    assert_eq!(count(&t, "SELECT count(*) FROM _tenantdb_audit"), 1);
    assert_eq!(count(&t, "SELECT count(*) FROM todos"), 0);
    assert!(
        s.fleet
            .verify_audit(&user_1)
            .unwrap()
            .first_broken
            .is_none()
    );
}

#[test]
fn deleted_tenants_are_reported_and_never_written() {
    let s = Setup::new();
    fill(&s.shared(), 4);
    let gone = tid("user_1");
    s.fleet.retire_tenant(&gone, "test").unwrap(); // a tombstone: the user left
    let plan = s.plan();
    assert_eq!(plan.tenant(&gone).unwrap().action, TenantAction::Deleted);
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.deleted, std::slice::from_ref(&gone));
    assert_eq!(report.imported, 3);
    assert!(!s.fleet.layout().tenant_db(&gone).exists());
    let verified = s.fleet.verify_import(&plan, &NoProgress).unwrap();
    assert!(verified.ok);
    assert_eq!(verified.deleted, [gone]);
}

// ---------------------------------------------------------------------------------------------
// How tables reach their tenant
// ---------------------------------------------------------------------------------------------

#[test]
fn rows_follow_foreign_keys_through_several_tables() {
    let shared = format!(
        "{SHARED}
        CREATE TABLE likes (
            comment_id INTEGER NOT NULL REFERENCES comments(id),
            who TEXT NOT NULL,
            PRIMARY KEY (comment_id, who)
        ) WITHOUT ROWID;
        CREATE TABLE subtasks (
            id INTEGER PRIMARY KEY,
            parent_id INTEGER REFERENCES subtasks(id),
            todo_id INTEGER NOT NULL REFERENCES todos(id),
            title TEXT
        );"
    );
    let tenant = format!(
        "{TENANT_V1}
        CREATE TABLE likes (comment_id INTEGER NOT NULL, who TEXT NOT NULL,
            PRIMARY KEY (comment_id, who)) WITHOUT ROWID;
        CREATE TABLE subtasks (id INTEGER PRIMARY KEY, parent_id INTEGER, todo_id INTEGER NOT NULL,
            title TEXT);"
    );
    let s = Setup::with(&shared, &[("0001_schema.sql", &tenant)]);
    let conn = s.shared();
    fill(&conn, 5);
    conn.execute_batch(
        "INSERT INTO likes SELECT id, 'user_0' FROM comments;
         INSERT INTO likes SELECT id, 'user_1' FROM comments WHERE id % 2 = 0;
         INSERT INTO subtasks (id, parent_id, todo_id, title) SELECT id, NULL, id, 'sub' FROM todos;
         INSERT INTO subtasks (parent_id, todo_id, title) SELECT id, todo_id, 'subsub' FROM subtasks;",
    )
    .unwrap();
    let plan = s.plan();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let likes = plan.tables.iter().find(|t| t.table == "likes").unwrap();
    match &likes.route {
        Route::Follows { path, root, .. } => {
            assert_eq!(root, "todos");
            let hops: Vec<&str> = path.iter().map(|h| h.parent.as_str()).collect();
            assert_eq!(hops, ["comments", "todos"]);
        }
        other => panic!("likes: {other:?}"),
    }
    // A self-reference does not count as a path; the foreign key to todos does.
    let subtasks = plan.tables.iter().find(|t| t.table == "subtasks").unwrap();
    assert!(
        matches!(&subtasks.route, Route::Follows { path, .. } if path.len() == 1 && path[0].parent == "todos")
    );

    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    for u in 0..5 {
        let user = format!("user_{u}");
        let expected = count(
            &conn,
            &format!(
                "SELECT count(*) FROM likes l JOIN comments c ON l.comment_id = c.id \
                 JOIN todos t ON c.todo_id = t.id WHERE t.user_id = '{user}'"
            ),
        );
        assert_eq!(
            count(&s.tenant(&user), "SELECT count(*) FROM likes"),
            expected
        );
        let expected = count(
            &conn,
            &format!(
                "SELECT count(*) FROM subtasks s JOIN todos t ON s.todo_id = t.id \
                 WHERE t.user_id = '{user}'"
            ),
        );
        assert_eq!(
            count(&s.tenant(&user), "SELECT count(*) FROM subtasks"),
            expected
        );
    }
}

#[test]
fn unrelated_tables_are_left_alone_unless_named() {
    let shared = format!(
        "{SHARED}
        CREATE TABLE settings (owner TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
            PRIMARY KEY (owner, key));"
    );
    let tenant = format!(
        "{TENANT_V1}
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);"
    );
    let s = Setup::with(&shared, &[("0001_schema.sql", &tenant)]);
    let conn = s.shared();
    fill(&conn, 3);
    conn.execute_batch(
        "INSERT INTO settings VALUES ('user_0', 'theme', 'dark'), ('user_0', 'lang', 'fr'),
             ('user_2', 'theme', 'light');",
    )
    .unwrap();

    let plan = s.plan();
    let alone: Vec<&str> = plan.left_alone.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(alone, ["countries", "settings"]);
    assert!(
        plan.left_alone[1]
            .reason
            .contains("--table settings=COLUMN")
    );

    let mut options = s.options();
    options.tables.push(("settings".into(), "owner".into()));
    let plan = s.fleet.plan_import(&options).unwrap();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let settings = plan.tables.iter().find(|t| t.table == "settings").unwrap();
    assert_eq!(
        settings.route,
        Route::Named {
            column: "owner".into()
        }
    );
    assert_eq!(settings.dropped, ["owner"]);
    s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    assert_eq!(
        count(&s.tenant("user_0"), "SELECT count(*) FROM settings"),
        2
    );
    assert_eq!(
        count(&s.tenant("user_1"), "SELECT count(*) FROM settings"),
        0
    );

    // Naming a table or column that does not exist is a problem, not a guess.
    let mut options = s.options();
    options.tables.push(("nope".into(), "owner".into()));
    options.tables.push(("settings".into(), "nobody".into()));
    let plan = s.fleet.plan_import(&options).unwrap();
    assert_eq!(plan.problems.len(), 2, "{:?}", plan.problems);
}

#[test]
fn integer_tenant_values_name_tenants_by_their_digits() {
    let shared = "
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES accounts(id), body TEXT);
        CREATE TABLE tags (id INTEGER PRIMARY KEY, user_id, tag TEXT);";
    let tenant = "
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        CREATE TABLE tags (id INTEGER PRIMARY KEY, tag TEXT);";
    let s = Setup::with(shared, &[("0001_schema.sql", tenant)]);
    s.shared()
        .execute_batch(
            "INSERT INTO accounts VALUES (7, 'seven'), (42, 'forty-two'), (100, 'hundred');
             INSERT INTO notes (user_id, body) VALUES (7, 'a'), (42, 'b'), (100, 'c'), (42, 'd');
             -- a column without type affinity keeps '42' as text: the same tenant as 42
             INSERT INTO tags (user_id, tag) VALUES ('42', 'x'), (42, 'y'), ('7', 'z');",
        )
        .unwrap();
    let plan = s.plan();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let ids: Vec<&str> = plan.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["100", "42", "7"]);
    s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    let t = s.tenant("42");
    assert_eq!(count(&t, "SELECT count(*) FROM notes"), 2);
    assert_eq!(count(&t, "SELECT count(*) FROM tags"), 2);
    assert_eq!(count(&t, "SELECT count(*) FROM accounts"), 1);
}

#[test]
fn a_large_tenant_streams_through_in_batches() {
    let s = Setup::new();
    let conn = s.shared();
    fill(&conn, 3);
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..12_000 {
        tx.execute(
            "INSERT INTO todos (user_id, title) VALUES ('user_1', ?1)",
            [format!("{i} {}", "x".repeat(200))],
        )
        .unwrap();
    }
    // Text that is not valid UTF-8 arrives byte for byte.
    tx.execute(
        "INSERT INTO todos (user_id, title) VALUES ('user_2', CAST(x'ff00fe61' AS TEXT))",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
    let plan = s.plan();
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    assert_eq!(
        count(&s.tenant("user_1"), "SELECT count(*) FROM todos"),
        12_002
    );
    let raw: Vec<u8> = s
        .tenant("user_2")
        .query_row(
            "SELECT CAST(title AS BLOB) FROM todos WHERE typeof(title) = 'text' \
             AND title NOT LIKE 'todo%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(raw, [0xff, 0x00, 0xfe, 0x61]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: refused before anything is written
// ---------------------------------------------------------------------------------------------

fn assert_nothing_written(s: &Setup) {
    assert_eq!(s.tenant_files(), 0);
    assert!(s.fleet.catalog().all_tenants().unwrap().is_empty());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let s = Setup::new();
    for (name, bytes) in [
        ("text.db", b"user_id,title\nalice,milk\n".to_vec()),
        ("empty.db", Vec::new()),
        ("short.db", b"SQLite format 3\0".to_vec()),
    ] {
        let path = s.tmp.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let mut options = s.options();
        options.source = path.clone();
        let err = s.fleet.plan_import(&options).unwrap_err().to_string();
        assert!(err.contains("is not a SQLite database"), "{name}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} was changed");
    }
    let mut options = s.options();
    options.source = s.tmp.path().join("missing.db");
    let err = s.fleet.plan_import(&options).unwrap_err().to_string();
    assert!(err.contains("cannot read the source"), "{err}");
    assert!(!s.tmp.path().join("missing.db").exists());
    assert_nothing_written(&s);
}

#[test]
fn a_tenant_column_that_does_not_exist_is_refused() {
    let s = Setup::new();
    fill(&s.shared(), 2);
    let mut options = s.options();
    options.tenant_column = "owner_id".into();
    let err = s.fleet.plan_import(&options).unwrap_err().to_string();
    assert!(err.contains("no table"), "{err}");
    assert!(err.contains("owner_id"), "{err}");
    assert!(err.contains("comments, countries, todos, users"), "{err}");
    assert_nothing_written(&s);
}

#[test]
fn invalid_tenant_values_are_counted_with_examples_and_refused() {
    let s = Setup::new();
    let conn = s.shared();
    fill(&conn, 3);
    conn.execute_batch(
        "INSERT INTO todos (user_id, title) VALUES ('../../etc/passwd', 'x'), ('a b', 'y'),
             ('a b', 'z'), ('', 'e'), ('user.1', 'dot'), ('user_1', 'fine');
         INSERT INTO comments (todo_id, body) SELECT id, 'on a bad todo' FROM todos
             WHERE user_id = 'a b';",
    )
    .unwrap();
    let plan = s.plan();
    assert!(plan.is_refused());
    let todos = plan.tables.iter().find(|t| t.table == "todos").unwrap();
    assert_eq!(todos.left_out.invalid, 5);
    let problem = plan
        .problems
        .iter()
        .find(|p| p.starts_with("todos.user_id"))
        .unwrap();
    assert!(problem.contains("5 rows"), "{problem}");
    assert!(problem.contains("\"a b\" (2 rows)"), "{problem}");
    assert!(
        problem.contains("\"../../etc/passwd\" (1 row)"),
        "{problem}"
    );
    assert!(problem.contains("--skip-invalid"), "{problem}");
    // Rows that follow a bad parent are bad too.
    let comments = plan.tables.iter().find(|t| t.table == "comments").unwrap();
    assert_eq!(comments.left_out.invalid, 2);
    // Good tenants are still listed, so the dry run shows them, but nothing is written.
    assert_eq!(plan.tenants.len(), 3);
    let err = s
        .fleet
        .import(&plan, &NoProgress, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused before anything was written"), "{err}");
    assert!(s.fleet.verify_import(&plan, &NoProgress).is_err());
    assert_nothing_written(&s);
    assert!(!s.fleet.layout().root().join("etc").exists());
}

#[test]
fn null_tenant_values_and_orphans_are_refused_or_skipped_when_asked() {
    let s = Setup::with(
        &SHARED.replace("user_id TEXT NOT NULL", "user_id TEXT"),
        &[("0001_schema.sql", TENANT_V1)],
    );
    let conn = s.shared();
    fill(&conn, 3);
    conn.execute_batch(
        "INSERT INTO todos (id, user_id, title) VALUES (1000, NULL, 'template todo'),
             (1001, NULL, 'another');
         INSERT INTO comments (todo_id, body) VALUES (NULL, 'no todo'), (999999, 'dangling'),
             (1000, 'on a NULL todo');",
    )
    .unwrap();
    let plan = s.plan();
    assert!(plan.is_refused());
    let todos = plan.tables.iter().find(|t| t.table == "todos").unwrap();
    assert_eq!(todos.left_out.null, 2);
    let comments = plan.tables.iter().find(|t| t.table == "comments").unwrap();
    assert_eq!((comments.left_out.null, comments.left_out.orphaned), (1, 2));
    assert!(
        plan.problems
            .iter()
            .any(|p| p.contains("2 rows have a NULL tenant value"))
    );
    assert!(
        plan.problems
            .iter()
            .any(|p| p.contains("2 rows have no parent row"))
    );
    assert!(s.fleet.import(&plan, &NoProgress, "test").is_err());
    assert_nothing_written(&s);

    let mut options = s.options();
    options.skip_invalid = true;
    let plan = s.fleet.plan_import(&options).unwrap();
    assert!(!plan.is_refused(), "{:?}", plan.problems);
    assert_eq!(plan.rows_left_out, 5);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("left out (--skip-invalid)"))
    );
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.rows_left_out, 5);
    assert_eq!(report.imported, 3);
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    let in_tenants: i64 = (0..3)
        .map(|u| {
            count(
                &s.tenant(&format!("user_{u}")),
                "SELECT count(*) FROM todos",
            )
        })
        .sum();
    assert_eq!(
        in_tenants,
        count(
            &conn,
            "SELECT count(*) FROM todos WHERE user_id IS NOT NULL"
        )
    );
}

#[test]
fn column_and_type_mismatches_are_reported_before_writing() {
    let tenant = "
        CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT,
            plan TEXT NOT NULL);
        CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL,
            due TEXT);
        CREATE TABLE comments (id INTEGER PRIMARY KEY, todo_id INTEGER, author TEXT,
            body TEXT NOT NULL);";
    let shared = SHARED.replace("done INTEGER NOT NULL DEFAULT 0", "done TEXT");
    let s = Setup::with(&shared, &[("0001_schema.sql", tenant)]);
    let conn = s.shared();
    fill(&conn, 3);
    conn.execute("UPDATE todos SET done = NULL WHERE id = 1", [])
        .unwrap();
    let plan = s.plan();
    let problems = plan.problems.join("\n");
    // '0' and '1' stored as text would become integers in the tenant's INTEGER column.
    assert!(problems.contains("todos.done:"), "{problems}");
    assert!(problems.contains("would change type"), "{problems}");
    assert!(
        problems.contains("declared TEXT in the source, INTEGER in the tenant"),
        "{problems}"
    );
    // A NULL cannot go into the tenant's NOT NULL column.
    assert!(
        problems.contains("1 row is NULL, but the tenant column is NOT NULL"),
        "{problems}"
    );
    // A NOT NULL tenant column without a default that the source cannot fill.
    assert!(
        problems.contains("column plan is NOT NULL without a default"),
        "{problems}"
    );
    assert!(s.fleet.import(&plan, &NoProgress, "test").is_err());
    assert_nothing_written(&s);

    // A table the tenant schema lacks is a problem, unless skipped.
    let s = Setup::with(
        SHARED,
        &[(
            "0001_schema.sql",
            "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, due TEXT);",
        )],
    );
    fill(&s.shared(), 2);
    let plan = s.plan();
    let problems = plan.problems.join("\n");
    assert!(problems.contains("table users"), "{problems}");
    assert!(problems.contains("table comments"), "{problems}");
    assert!(problems.contains("--skip-table"), "{problems}");
    let mut options = s.options();
    options.skip_tables = vec!["users".into(), "comments".into()];
    let plan = s.fleet.plan_import(&options).unwrap();
    assert!(!plan.is_refused(), "{:?}", plan.problems);
    s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert!(s.fleet.verify_import(&plan, &NoProgress).unwrap().ok);
    assert_eq!(count(&s.tenant("user_1"), "SELECT count(*) FROM todos"), 2);
}

#[test]
fn declared_types_that_store_the_same_values_are_only_noted() {
    let shared = SHARED.replace(
        "done INTEGER NOT NULL DEFAULT 0",
        "done BOOLEAN NOT NULL DEFAULT 0",
    );
    let s = Setup::with(&shared, &[("0001_schema.sql", TENANT_V1)]);
    fill(&s.shared(), 2);
    let plan = s.plan();
    assert!(!plan.is_refused(), "{:?}", plan.problems);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("todos.done") && n.contains("unchanged")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn tenants_behind_the_schema_or_imported_from_another_source_are_blocked() {
    let s = Setup::new();
    fill(&s.shared(), 3);
    // user_0 exists at schema version 1 (its migration to 2 never ran).
    let plan = s.plan();
    s.fleet.import(&plan, &NoProgress, "test").unwrap();
    s.tenant("user_0")
        .execute_batch("PRAGMA user_version = 1")
        .unwrap();
    // The source changes: a different file for every tenant.
    s.shared()
        .execute(
            "INSERT INTO todos (user_id, title) VALUES ('user_1', 'new')",
            [],
        )
        .unwrap();
    let plan = s.plan();
    let user_0 = plan.tenant(&tid("user_0")).unwrap();
    assert_eq!(user_0.action, TenantAction::Blocked);
    assert!(user_0.reason.as_deref().unwrap().contains("version 1"));
    let user_1 = plan.tenant(&tid("user_1")).unwrap();
    assert_eq!(user_1.action, TenantAction::Blocked);
    assert!(
        user_1
            .reason
            .as_deref()
            .unwrap()
            .contains("different source")
    );
    let report = s.fleet.import(&plan, &NoProgress, "test").unwrap();
    assert_eq!(report.failed.len(), 3);
    assert_eq!(count(&s.tenant("user_1"), "SELECT count(*) FROM todos"), 2);
}

#[test]
fn a_source_that_changes_after_planning_is_refused() {
    let s = Setup::new();
    fill(&s.shared(), 2);
    let plan = s.plan();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.shared()
        .execute(
            "INSERT INTO todos (user_id, title) VALUES ('user_1', 'late')",
            [],
        )
        .unwrap();
    let err = s
        .fleet
        .import(&plan, &NoProgress, "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("changed since the import was planned"),
        "{err}"
    );
    assert_nothing_written(&s);
}

#[test]
fn verification_notices_changed_missing_and_extra_rows() {
    let s = Setup::new();
    fill(&s.shared(), 4);
    let plan = s.plan();
    s.fleet.import(&plan, &NoProgress, "test").unwrap();
    s.tenant("user_1")
        .execute(
            "UPDATE todos SET title = 'edited' WHERE id = (SELECT min(id) FROM todos)",
            [],
        )
        .unwrap();
    s.tenant("user_2")
        .execute(
            "DELETE FROM todos WHERE id = (SELECT min(id) FROM todos)",
            [],
        )
        .unwrap();
    s.tenant("user_3")
        .execute(
            "INSERT INTO comments (todo_id, body) VALUES (1, 'extra')",
            [],
        )
        .unwrap();
    let report = s.fleet.verify_import(&plan, &NoProgress).unwrap();
    assert!(!report.ok);
    assert_eq!(report.matched, 1);
    let found: Vec<(String, String, String)> = report
        .mismatches
        .iter()
        .map(|m| {
            (
                m.tenant.to_string(),
                m.table.clone().unwrap_or_default(),
                m.problem.clone(),
            )
        })
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].0, "user_1");
    assert_eq!(found[0].2, "same row count, different content");
    assert_eq!(
        (found[1].0.as_str(), found[1].1.as_str()),
        ("user_2", "todos")
    );
    assert!(found[1].2.contains("in the tenant"), "{:?}", found[1]);
    assert_eq!(
        (found[2].0.as_str(), found[2].1.as_str()),
        ("user_3", "comments")
    );
    let todos = report.tables.iter().find(|t| t.table == "todos").unwrap();
    assert_eq!(todos.tenants_mismatched, 2);
    assert_eq!(todos.tenant_rows + 1, todos.source_rows);
}
