//! `tenantdb import`, driven as an operator would: the real binary, real files, a real SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::markdown;

/// A `tenantdb` command that sees no `TENANTDB_*` setting from the environment it runs in.
fn tenantdb(data: &Path) -> Command {
    let mut cmd = common::tenantdb(data);
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn run(data: &Path, args: &[&str]) -> Output {
    tenantdb(data)
        .args(args)
        .output()
        .expect("the tenantdb binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

use common::ok;

/// Asserts the exit code and returns (stdout, stderr).
#[track_caller]
fn exits(out: Output, code: i32) -> (String, String) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

const SHARED: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE todos (id INTEGER PRIMARY KEY, user_id TEXT REFERENCES users(id), title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0);
CREATE INDEX todos_by_user ON todos (user_id);
CREATE TABLE comments (id INTEGER PRIMARY KEY, todo_id INTEGER REFERENCES todos(id),
    body TEXT NOT NULL);
CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE settings (owner TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (owner, key));
";

const TENANT: &str = "
CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE comments (id INTEGER PRIMARY KEY, todo_id INTEGER REFERENCES todos(id),
    body TEXT NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
";

struct Env {
    tmp: TempDir,
    data: PathBuf,
    shared: PathBuf,
}

impl Env {
    /// A data directory at the tenant schema (through `tenantdb migrate`) and a shared
    /// database with `users` users.
    fn new(users: usize, todos_per_user: usize) -> Env {
        let tmp = TempDir::new().unwrap();
        let data = tmp.path().join("data");
        let migrations = tmp.path().join("migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(migrations.join("0001_app.sql"), TENANT).unwrap();
        ok(run(
            &data,
            &["migrate", "--migrations", migrations.to_str().unwrap()],
        ));
        let shared = tmp.path().join("shared.db");
        let conn = Connection::open(&shared).unwrap();
        conn.execute_batch(SHARED).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for u in 0..users {
            let user = format!("user_{u:04}");
            tx.execute(
                "INSERT INTO users VALUES (?1, ?2)",
                params![user, format!("{user}@example.com")],
            )
            .unwrap();
            for t in 0..todos_per_user {
                tx.execute(
                    "INSERT INTO todos (user_id, title, done) VALUES (?1, ?2, ?3)",
                    params![user, format!("todo {t}"), (t % 2) as i64],
                )
                .unwrap();
                let todo = tx.last_insert_rowid();
                if t % 3 == 0 {
                    tx.execute(
                        "INSERT INTO comments (todo_id, body) VALUES (?1, 'a comment')",
                        [todo],
                    )
                    .unwrap();
                }
            }
        }
        tx.execute_batch(
            "INSERT INTO countries VALUES ('fr', 'France');
             INSERT INTO settings VALUES ('user_0000', 'theme', 'dark');",
        )
        .unwrap();
        tx.commit().unwrap();
        Env { tmp, data, shared }
    }

    fn shared(&self) -> Connection {
        let conn = Connection::open(&self.shared).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        conn
    }

    fn import(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "import",
            "--from",
            self.shared.to_str().unwrap(),
            "--tenant-column",
            "user_id",
        ];
        args.extend_from_slice(extra);
        run(&self.data, &args)
    }

    fn tenant_files(&self) -> Vec<PathBuf> {
        files_under(&self.data.join("tenants"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .collect()
    }

    fn catalog_tenants(&self) -> i64 {
        let catalog = Connection::open_with_flags(
            self.data.join("catalog.db"),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        catalog
            .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
            .unwrap()
    }

    fn tenant(&self, id: &str) -> Connection {
        let path = self
            .tenant_files()
            .into_iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n == format!("{id}.db").as_str())
            })
            .unwrap_or_else(|| panic!("tenant {id} has a file"));
        Connection::open(path).unwrap()
    }
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

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The guide
// ---------------------------------------------------------------------------------------------

/// Splits a command line like a POSIX shell does for the simple cases the guide uses: words,
/// single and double quotes, and a trailing `# comment`.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {line:?}");
    if in_word {
        words.push(word);
    }
    words
}

/// The guide's files (`<!-- file: path -->` before a fenced block) and the lines of its `sh`
/// blocks, in order.
fn guide() -> (Vec<(String, String)>, Vec<String>) {
    let mut files = Vec::new();
    let mut commands = Vec::new();
    for block in markdown::blocks(&markdown::read_doc("docs/moving-in.md")) {
        if let Some(file) = block.file {
            files.push((file, block.body));
        } else if block.lang == "sh" {
            commands.extend(block.body.lines().map(str::to_string));
        }
    }
    (files, commands)
}

/// Runs the guide: writes its files, builds `shared.db` from its `shared.sql` with a few users'
/// rows, and runs every command of its `sh` blocks in order with the real binary.
#[test]
fn the_moving_in_guide_runs_as_written() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let (files, commands) = guide();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["shared.sql", "migrations/0001_create_app.sql"]);
    for (name, body) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let shared = Connection::open(dir.join("shared.db")).unwrap();
    shared
        .execute_batch(&std::fs::read_to_string(dir.join("shared.sql")).unwrap())
        .unwrap();
    shared
        .execute_batch(
            "INSERT INTO users VALUES ('alice', 'alice@example.com', 'Alice'),
                 ('bob', 'bob@example.com', 'Bob'), ('carol', 'carol@example.com', NULL);
             INSERT INTO todos (id, user_id, title, done) VALUES (1, 'alice', 'buy milk', 0),
                 (2, 'alice', 'write the guide', 1), (3, 'bob', 'fix the bike', 0),
                 (4, 'bob', 'call mom', 0), (5, 'carol', 'read', 1);
             INSERT INTO comments (todo_id, body) VALUES (1, 'organic'), (1, 'two liters'),
                 (3, 'rear tire');
             INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan');",
        )
        .unwrap();
    drop(shared);

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut ran = Vec::new();
    for line in &commands {
        let words = shell_words(line);
        let Some(first) = words.first() else { continue };
        if first == "export" {
            let (name, value) = words[1].split_once('=').unwrap();
            env.insert(name.to_string(), value.to_string());
            continue;
        }
        assert_eq!(
            first, "tenantdb",
            "the guide's sh blocks hold tenantdb commands: {line}"
        );
        let out = common::bare_command()
            .args(&words[1..])
            .current_dir(dir)
            .envs(&env)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = ok(out);
        let data = dir.join(env.get("TENANTDB_DATA_DIR").unwrap());
        if line.contains("--dry-run") {
            assert!(stdout.contains("dry run: nothing was written"), "{stdout}");
            assert!(
                files_under(&data.join("tenants")).is_empty(),
                "the dry run wrote tenants"
            );
        }
        ran.push((line.clone(), stdout));
    }
    let ran_lines: Vec<&str> = ran.iter().map(|(l, _)| l.as_str()).collect();
    assert!(ran_lines.len() >= 8, "{ran_lines:?}");
    let output =
        |needle: &str| -> &str { &ran.iter().find(|(l, _)| l.contains(needle)).unwrap().1 };
    // The dry run, the import and the verification report what the guide shows.
    let dry = output("--dry-run");
    assert!(
        dry.contains("split by id (referenced by todos.user_id)"),
        "{dry}"
    );
    assert!(
        dry.contains("follows its parent rows (comments.todo_id -> todos.id)"),
        "{dry}"
    );
    assert!(dry.contains("left alone: countries"), "{dry}");
    assert!(dry.contains("alice   create"), "{dry}");
    let verified = output("--verify-only");
    assert!(
        verified.contains("verified: 3 of 3 tenants match the source (11 rows"),
        "{verified}"
    );
    // The app's new query, without `WHERE user_id = ?`, sees exactly alice's open todos.
    let open = output("WHERE done = 0");
    assert!(open.contains("buy milk"), "{open}");
    assert!(
        !open.contains("write the guide") && !open.contains("fix the bike"),
        "{open}"
    );
    let comments = output("WHERE todo_id = 1");
    assert!(
        comments.contains("organic") && comments.contains("two liters"),
        "{comments}"
    );
}

// ---------------------------------------------------------------------------------------------
// A crash in the middle
// ---------------------------------------------------------------------------------------------

/// `tenantdb import` killed with SIGKILL partway through a few hundred tenants; the same
/// command run again finishes the job: every tenant verified, nothing duplicated.
#[test]
fn an_import_killed_midway_finishes_on_rerun_without_duplicates() {
    const USERS: usize = 600;
    let env = Env::new(USERS, 12);
    let mut child = tenantdb(&env.data)
        .args([
            "import",
            "--from",
            env.shared.to_str().unwrap(),
            "--tenant-column",
            "user_id",
        ])
        .args(["--table", "settings=owner"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seen = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the import finished ({status}) before it could be killed: {seen} tenants seen");
        }
        if env.data.join("catalog.db").exists() {
            seen = env.catalog_tenants();
        }
        if seen >= 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress: {seen} tenants"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Mid-way: some tenants hold the import, not all of them.
    let complete = env
        .tenant_files()
        .iter()
        .filter(|p| {
            let conn = Connection::open(p).unwrap();
            count(
                &conn,
                "SELECT count(*) FROM sqlite_schema WHERE name = '_tenantdb_import'",
            ) == 1
        })
        .count();
    assert!(
        complete > 0 && complete < USERS,
        "{complete} of {USERS} complete at the kill"
    );
    eprintln!("killed with {complete} of {USERS} tenants imported");

    let out = env.import(&["--table", "settings=owner", "--json"]);
    let report: Value = serde_json::from_str(&ok(out)).unwrap();
    let import = &report["import"];
    assert_eq!(import["failed"].as_array().unwrap().len(), 0, "{import}");
    let (imported, skipped) = (
        import["imported"].as_u64().unwrap(),
        import["already_imported"].as_u64().unwrap(),
    );
    assert_eq!(imported + skipped, USERS as u64, "{import}");
    assert!(skipped >= complete as u64, "{import}");
    assert_eq!(report["verify"]["ok"], true, "{}", report["verify"]);
    assert_eq!(report["verify"]["matched"], USERS as u64);

    // No duplicates: every tenant holds exactly its rows and one import record.
    let shared = env.shared();
    let mut stmt = shared
        .prepare("SELECT user_id, count(*) FROM todos GROUP BY 1")
        .unwrap();
    let expected: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(expected.len(), USERS);
    for (user, n) in expected.iter().step_by(37) {
        let t = env.tenant(user);
        assert_eq!(count(&t, "SELECT count(*) FROM todos"), *n, "{user}");
        assert_eq!(count(&t, "SELECT count(*) FROM users"), 1, "{user}");
        assert_eq!(
            count(&t, "SELECT count(*) FROM _tenantdb_import"),
            1,
            "{user}"
        );
    }
    assert_eq!(
        count(&env.tenant("user_0000"), "SELECT count(*) FROM settings"),
        1
    );
    assert_eq!(env.catalog_tenants(), USERS as i64);
    // A third run has nothing left to do.
    let (stdout, _) = exits(env.import(&["--table", "settings=owner"]), 0);
    assert!(
        stdout.contains("imported 0 tenants (0 created), 0 rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{USERS} already imported")),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input, dry runs, verification
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_sources_and_columns_are_refused_before_writing() {
    let env = Env::new(3, 2);
    let not_sqlite = env.tmp.path().join("export.csv");
    std::fs::write(&not_sqlite, "user_id,title\nalice,milk\n").unwrap();
    let (_, err) = exits(
        run(
            &env.data,
            &[
                "import",
                "--from",
                not_sqlite.to_str().unwrap(),
                "--tenant-column",
                "user_id",
            ],
        ),
        1,
    );
    assert!(err.contains("is not a SQLite database"), "{err}");

    let (_, err) = exits(
        run(
            &env.data,
            &[
                "import",
                "--from",
                env.shared.to_str().unwrap(),
                "--tenant-column",
                "owner_id",
            ],
        ),
        1,
    );
    assert!(err.contains("no table in"), "{err}");
    assert!(err.contains("has a column owner_id"), "{err}");

    let (_, err) = exits(env.import(&["--table", "settings"]), 2); // clap: usage error
    assert!(err.contains("T=COLUMN"), "{err}");
    assert!(env.tenant_files().is_empty());
    assert_eq!(env.catalog_tenants(), 0);

    // No data directory: nothing is created, not even the directory.
    let elsewhere = env.tmp.path().join("nowhere");
    let (_, err) = exits(
        run(
            &elsewhere,
            &[
                "import",
                "--from",
                env.shared.to_str().unwrap(),
                "--tenant-column",
                "user_id",
            ],
        ),
        1,
    );
    assert!(err.contains("tenantdb migrate"), "{err}");
    assert!(!elsewhere.exists());
}

#[test]
fn invalid_and_null_tenant_values_are_refused_or_skipped() {
    let env = Env::new(4, 3);
    env.shared()
        .execute_batch(
            "INSERT INTO todos (user_id, title) VALUES ('../../x', 'a'), ('has space', 'b'),
                 ('has space', 'c'), (NULL, 'd');
             INSERT INTO comments (todo_id, body) VALUES (424242, 'dangling');",
        )
        .unwrap();
    let (stdout, err) = exits(env.import(&[]), 1);
    assert!(err.contains("refused before anything was written"), "{err}");
    assert!(
        err.contains("3 rows have a user_id that is not a valid tenant id"),
        "{err}"
    );
    assert!(err.contains("\"has space\" (2 rows)"), "{err}");
    assert!(err.contains("\"../../x\" (1 row)"), "{err}");
    assert!(err.contains("1 row has a NULL tenant value"), "{err}");
    assert!(err.contains("1 row has no parent row"), "{err}");
    assert!(stdout.contains("LEFT OUT"), "{stdout}");
    // Nothing anywhere: no tenant file, no catalog row, no odd path.
    assert!(env.tenant_files().is_empty());
    assert_eq!(env.catalog_tenants(), 0);
    assert!(
        files_under(&env.data)
            .iter()
            .all(|p| p.starts_with(&env.data))
    );
    assert!(!env.tmp.path().join("x").exists());

    // Asked to, the import leaves those rows out, reports them, and imports the rest.
    let (stdout, _) = exits(env.import(&["--skip-invalid"]), 0);
    assert!(
        stdout.contains("left out: 5 rows with no valid tenant"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verified: 4 of 4 tenants match"),
        "{stdout}"
    );
    assert_eq!(env.tenant_files().len(), 4);
}

#[test]
fn type_mismatches_are_reported_before_writing() {
    let env = Env::new(2, 2);
    let conn = env.shared();
    conn.execute_batch(
        "ALTER TABLE todos RENAME TO old_todos;
         CREATE TABLE todos (id INTEGER PRIMARY KEY, user_id TEXT, title TEXT NOT NULL, done TEXT);
         INSERT INTO todos SELECT id, user_id, title, CAST(done AS TEXT) FROM old_todos;
         DROP TABLE old_todos;",
    )
    .unwrap();
    let (_, err) = exits(env.import(&[]), 1);
    assert!(
        err.contains("todos.done: 4 values would change type"),
        "{err}"
    );
    assert!(env.tenant_files().is_empty());
}

#[test]
fn a_dry_run_reports_per_table_and_tenant_and_writes_nothing() {
    let env = Env::new(3, 2);
    let (stdout, _) = exits(env.import(&["--dry-run", "--table", "settings=owner"]), 0);
    assert!(
        stdout.contains("TENANT     ACTION  users  settings  todos  comments"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_0000  create  1      1         2      1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_0001  create  1      0         2      1"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing was written"), "{stdout}");
    assert!(env.tenant_files().is_empty());
    assert_eq!(env.catalog_tenants(), 0);

    let out = env.import(&["--dry-run", "--json"]);
    let plan: Value = serde_json::from_str(&ok(out)).unwrap();
    let plan = &plan["plan"];
    assert_eq!(plan["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(plan["tenants"][0]["id"], "user_0000");
    assert_eq!(plan["tenants"][0]["action"], "create");
    assert_eq!(plan["tables"][1]["table"], "todos");
    assert_eq!(plan["tables"][1]["route"]["kind"], "column");
    assert_eq!(plan["left_alone"][0]["table"], "countries");
    assert_eq!(plan["left_alone"][1]["table"], "settings");
    assert!(env.tenant_files().is_empty());

    ok(env.import(&[]));
    let (stdout, _) = exits(env.import(&["--dry-run"]), 0);
    assert!(stdout.contains("user_0001  done"), "{stdout}");
}

#[test]
fn verify_only_finds_differences_and_exits_2() {
    let env = Env::new(3, 4);
    // Before any import, nothing matches.
    let (stdout, _) = exits(env.import(&["--verify-only"]), 2);
    assert!(
        stdout.contains("verification FAILED: 0 of 3 tenants match"),
        "{stdout}"
    );
    assert!(stdout.contains("the tenant does not exist"), "{stdout}");
    assert!(env.tenant_files().is_empty());

    ok(env.import(&[]));
    let (stdout, _) = exits(env.import(&["--verify-only"]), 0);
    assert!(
        stdout.contains("verified: 3 of 3 tenants match the source"),
        "{stdout}"
    );
    ok(run(
        &env.data,
        &[
            "sql",
            "user_0001",
            "UPDATE todos SET title = 'changed' WHERE id = 5",
        ],
    ));
    ok(run(
        &env.data,
        &["sql", "user_0002", "DELETE FROM comments"],
    ));
    let (stdout, _) = exits(env.import(&["--verify-only"]), 2);
    assert!(
        stdout.contains("verification FAILED: 1 of 3 tenants match"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_0001 todos: same row count, different content"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_0002 comments: 2 rows in the source, 0 in the tenant"),
        "{stdout}"
    );
    let out = env.import(&["--verify-only", "--json"]);
    let report: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let mismatch = &report["verify"]["mismatches"][0];
    assert_eq!(mismatch["tenant"], "user_0001");
    assert_ne!(mismatch["source_checksum"], mismatch["tenant_checksum"]);
    // The import itself was recorded in the admin audit.
    let audit = ok(run(&env.data, &["audit", "--admin", "--json"]));
    let entries: Value = serde_json::from_str(&audit).unwrap();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "import" && e["actor"] == "cli"),
        "{audit}"
    );
}
