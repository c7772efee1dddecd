//! Real libSQL clients that no one on the team wrote, against a running `tenantdb serve`
//! (DESIGN section 12): `@libsql/client` from npm (Hrana 2, `/v2/pipeline`) and the `libsql`
//! crate in remote mode (Hrana 3: `/v3/pipeline` for `execute`, `execute_batch`, `prepare`
//! and transactions; `/v3/cursor` for `query`).
//!
//! The npm package is pinned in `tests/clients/js/package-lock.json` and installed by the
//! README's test command (`scripts/test` runs `npm ci --prefix tests/clients/js`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use libsql::{Connection, Value, named_params, params};
use tempfile::TempDir;

mod common;
use common::{ServeProcess, output_within};

/// The HS256 secret the server checks user tokens with (32 bytes or more, as a real one).
const JWT_SECRET: &str = "clients-test-secret-0123456789abcdef";

const SCHEMA: &str = "CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL UNIQUE,
    done INTEGER NOT NULL DEFAULT 0,
    data BLOB,
    score REAL,
    big INTEGER
);
";

/// A `tenantdb` command that sees no `TENANTDB_*` setting from the environment it runs in,
/// only the test's own.
fn tenantdb(data: &Path) -> Command {
    let mut cmd = common::tenantdb(data);
    cmd.env("TENANTDB_JWT_SECRET", JWT_SECRET);
    cmd
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    common::ok(cmd.output().expect("the tenantdb binary runs"))
}

/// A running `tenantdb serve`, killed when dropped (also when a test panics).
struct Server {
    serve: ServeProcess,
    url: String,
    data: PathBuf,
    _dir: TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let migrations = dir.path().join("migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(migrations.join("0001_todos.sql"), SCHEMA).unwrap();
        run_ok(
            tenantdb(&data)
                .args(["migrate", "--migrations"])
                .arg(&migrations),
        );

        let serve = ServeProcess::start(&data, &[], &[("TENANTDB_JWT_SECRET", JWT_SECRET)]);
        let url = serve.url();
        let server = Server {
            serve,
            url,
            data,
            _dir: dir,
        };
        assert!(
            server.url.starts_with("http://127.0.0.1:"),
            "{}",
            server.url
        );
        server
    }

    /// A user token signed with the server's secret.
    fn token(&self, user: &str) -> String {
        run_ok(tenantdb(&self.data).args(["token", user]))
            .trim()
            .to_string()
    }

    /// A well-formed token for `user` signed with a secret the server does not know.
    fn foreign_token(&self, user: &str) -> String {
        run_ok(tenantdb(&self.data).args([
            "token",
            user,
            "--jwt-secret",
            "another-secret-the-server-never-saw-0123456789",
        ]))
        .trim()
        .to_string()
    }

    fn log(&self) -> String {
        self.serve.log()
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The `@libsql/client` suite (`tests/clients/js/`) under Node's own test runner.
fn run_js_suite(server: &Server) -> Result<(), String> {
    let root = workspace_root();
    let js = root.join("tests/clients/js");
    if !js
        .join("node_modules/@libsql/client/package.json")
        .is_file()
    {
        return Err(format!(
            "the pinned @libsql/client is not installed in {}: run the README's test command, \
             `scripts/test`, which installs it from the lockfile with `npm ci --prefix \
             tests/clients/js` before running cargo test",
            js.display()
        ));
    }
    let out = output_within(
        Command::new("node")
            // TAP whether or not stdout is a terminal, so the summary lines below are known.
            .args(["--test", "--test-reporter=tap", "tests/clients/js/"])
            .current_dir(&root)
            .env("TENANTDB_TEST_URL", &server.url)
            .env("TENANTDB_TEST_TOKEN_A", server.token("js_alice"))
            .env("TENANTDB_TEST_TOKEN_B", server.token("js_bob"))
            .env(
                "TENANTDB_TEST_TOKEN_WRONG",
                server.foreign_token("js_alice"),
            ),
        Duration::from_secs(180),
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown by the test harness when the test fails (or with --nocapture).
    println!("node --test tests/clients/js/ ({}):\n{text}", out.status);
    if !out.status.success() {
        return Err(format!(
            "node --test tests/clients/js/ failed ({}):\n{text}\n--- server stderr ---\n{}",
            out.status,
            server.log()
        ));
    }
    if !text.lines().any(|l| l.trim() == "# fail 0") || text.lines().any(|l| l.trim() == "# pass 0")
    {
        return Err(format!(
            "node ran no passing test or reported failures:\n{text}"
        ));
    }
    Ok(())
}

#[test]
fn real_libsql_clients_against_tenantdb_serve() {
    let server = Server::start();
    // Both suites run against the same server, each with its own users; the npm suite's
    // verdict is given after the Rust client's, so one failing does not hide the other.
    let js = run_js_suite(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(rust_client_suite(&server));
    if let Err(message) = js {
        panic!("{message}");
    }
    // Everything the clients did is normal use (their refused requests included): nothing of
    // it is a server error worth an operator's attention.
    let log = server.serve.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the server logged errors while serving real clients:\n{}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The `libsql` crate in remote mode.

async fn connect(server: &Server, token: String) -> Connection {
    let db = libsql::Builder::new_remote(server.url.clone(), token)
        .build()
        .await
        .expect("a remote database handle");
    db.connect().expect("a remote connection")
}

/// Every row of a query, as values.
async fn all(
    conn: &Connection,
    sql: &str,
    params: impl libsql::params::IntoParams,
) -> Vec<Vec<Value>> {
    let mut rows = conn
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let width = rows.column_count();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        out.push((0..width).map(|i| row.get_value(i).unwrap()).collect());
    }
    out
}

async fn count(conn: &Connection, sql: &str) -> i64 {
    match all(conn, sql, ()).await.as_slice() {
        [row] => match row.as_slice() {
            [Value::Integer(n)] => *n,
            other => panic!("{sql}: expected one integer, got {other:?}"),
        },
        other => panic!("{sql}: expected one row, got {other:?}"),
    }
}

async fn titles(conn: &Connection) -> Vec<String> {
    all(conn, "SELECT title FROM todos ORDER BY title", ())
        .await
        .into_iter()
        .map(|row| match &row[0] {
            Value::Text(t) => t.clone(),
            other => panic!("title {other:?}"),
        })
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The error a call must fail with, which must mention `needle`: for single statements the
/// server's Hrana error code (`SQLITE_CONSTRAINT_UNIQUE`), which the crate shows in its message
/// (it keeps Hrana errors behind a private type, so their text is all a caller can read).
#[track_caller]
fn expect_err<T: std::fmt::Debug>(result: libsql::Result<T>, needle: &str) -> String {
    match result {
        Ok(v) => panic!("expected an error mentioning {needle}, got {v:?}"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                matches!(e, libsql::Error::Hrana(_)),
                "expected a Hrana error, got {e:?}"
            );
            assert!(
                message.contains(needle),
                "expected {needle} in the error, got: {message}"
            );
            message
        }
    }
}

async fn rust_client_suite(server: &Server) {
    let carol = connect(server, server.token("rs_carol")).await;
    let dave = connect(server, server.token("rs_dave")).await;

    positional_and_named_params(&carol).await;
    every_value_type(&carol).await;
    many_rows_stream_through_the_cursor(&carol).await;
    execute_batch(&carol).await;
    transactions(server, &carol).await;
    errors(&carol).await;
    isolation(&carol, &dave).await;
    wrong_token(server).await;
}

async fn positional_and_named_params(conn: &Connection) {
    conn.execute("DELETE FROM todos", ()).await.unwrap();
    let n = conn
        .execute(
            "INSERT INTO todos (title, done) VALUES (?, ?)",
            params!["positional", 0],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let id = conn.last_insert_rowid();
    assert!(id > 0);
    assert_eq!(conn.changes(), 1);
    conn.execute(
        "INSERT INTO todos (title, done) VALUES (?2, ?1)",
        params![1, "numbered"],
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO todos (title, done) VALUES (:title, :done)",
        named_params! {":title": "colon", ":done": 1},
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO todos (title, done) VALUES (@title, $done)",
        named_params! {"@title": "at", "$done": 0},
    )
    .await
    .unwrap();

    // Parameters on the query (cursor) path, positional and named.
    assert_eq!(
        all(
            conn,
            "SELECT id, title FROM todos WHERE title = ?",
            params!["positional"]
        )
        .await,
        vec![vec![Value::Integer(id), text("positional")]]
    );
    assert_eq!(
        all(
            conn,
            "SELECT title, done FROM todos WHERE done = :done ORDER BY title",
            named_params! {":done": 1},
        )
        .await,
        vec![
            vec![text("colon"), Value::Integer(1)],
            vec![text("numbered"), Value::Integer(1)]
        ]
    );
    let updated = conn
        .execute(
            "UPDATE todos SET done = 1 WHERE title IN (?, ?)",
            params!["positional", "at"],
        )
        .await
        .unwrap();
    assert_eq!(updated, 2);
    assert_eq!(
        count(conn, "SELECT count(*) FROM todos WHERE done = 1").await,
        4
    );
}

async fn every_value_type(conn: &Connection) {
    conn.execute("DELETE FROM todos", ()).await.unwrap();
    let blob: Vec<u8> = (0..=255).collect();
    let rows = [
        (
            "max",
            Value::Integer(i64::MAX),
            Value::Real(std::f64::consts::PI),
            Value::Blob(blob.clone()),
        ),
        (
            "min",
            Value::Integer(i64::MIN),
            Value::Real(-0.5),
            Value::Blob(vec![]),
        ),
        (
            "beyond 2^53",
            Value::Integer((1 << 53) + 1),
            Value::Real(1e300),
            Value::Blob(vec![0]),
        ),
        ("nulls", Value::Null, Value::Null, Value::Null),
        (
            "whole float",
            Value::Integer(0),
            Value::Real(2.0),
            Value::Blob(vec![0xff, 0xfe]),
        ),
    ];
    for (title, big, score, data) in &rows {
        conn.execute(
            "INSERT INTO todos (title, big, score, data) VALUES (?, ?, ?, ?)",
            params![*title, big.clone(), score.clone(), data.clone()],
        )
        .await
        .unwrap();
    }
    let got = all(
        conn,
        "SELECT title, big, score, data FROM todos ORDER BY id",
        (),
    )
    .await;
    let want: Vec<Vec<Value>> = rows
        .iter()
        .map(|(t, big, score, data)| vec![text(t), big.clone(), score.clone(), data.clone()])
        .collect();
    assert_eq!(got, want);

    // The storage classes SQLite saw match what was sent.
    let types = all(
        conn,
        "SELECT typeof(big), typeof(score), typeof(data) FROM todos WHERE title = 'max'",
        (),
    )
    .await;
    assert_eq!(
        types,
        vec![vec![text("integer"), text("real"), text("blob")]]
    );

    // Typed getters, column names and non-ASCII text.
    let unicode = "naïve café ✓ 🚀 \"quoted\" 'single'\nnewline \\ backslash";
    conn.execute("INSERT INTO todos (title) VALUES (?)", params![unicode])
        .await
        .unwrap();
    let mut rs = conn
        .query(
            "SELECT title, big, score, data, id AS row_id FROM todos WHERE title = ?1 OR title = ?2 ORDER BY id",
            params!["max", unicode],
        )
        .await
        .unwrap();
    assert_eq!(rs.column_count(), 5);
    assert_eq!(rs.column_name(0), Some("title"));
    assert_eq!(rs.column_name(4), Some("row_id"));
    let row = rs.next().await.unwrap().expect("the 'max' row");
    assert_eq!(row.get::<String>(0).unwrap(), "max");
    assert_eq!(row.get::<i64>(1).unwrap(), i64::MAX);
    assert_eq!(row.get::<f64>(2).unwrap(), std::f64::consts::PI);
    assert_eq!(row.get::<Vec<u8>>(3).unwrap(), blob);
    let row = rs.next().await.unwrap().expect("the unicode row");
    assert_eq!(row.get::<String>(0).unwrap(), unicode);
    assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
    assert_eq!(row.get::<Option<Vec<u8>>>(3).unwrap(), None);
    assert!(rs.next().await.unwrap().is_none());

    // Values computed by SQLite, not stored.
    assert_eq!(
        all(
            conn,
            "SELECT ? + 1, 7 / 2.0, x'00ff10', NULL, 'text'",
            params![i64::MAX - 1]
        )
        .await,
        vec![vec![
            Value::Integer(i64::MAX),
            Value::Real(3.5),
            Value::Blob(vec![0, 0xff, 0x10]),
            Value::Null,
            text("text"),
        ]]
    );
}

async fn many_rows_stream_through_the_cursor(conn: &Connection) {
    let mut rows = conn
        .query(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000)
             SELECT x, printf('row %d', x) FROM n",
            (),
        )
        .await
        .unwrap();
    let mut expected = 1;
    while let Some(row) = rows.next().await.unwrap() {
        assert_eq!(row.get::<i64>(0).unwrap(), expected);
        assert_eq!(row.get::<String>(1).unwrap(), format!("row {expected}"));
        expected += 1;
    }
    assert_eq!(expected, 5001);
}

async fn execute_batch(conn: &Connection) {
    conn.execute("DELETE FROM todos", ()).await.unwrap();
    let mut results = conn
        .execute_batch(
            "INSERT INTO todos (title) VALUES ('b1');
             INSERT INTO todos (title) VALUES ('b2');
             UPDATE todos SET done = 1 WHERE title = 'b2';
             SELECT title, done FROM todos ORDER BY title;",
        )
        .await
        .unwrap();
    // One result per statement, each of which ran. (The crate sends every statement of
    // `execute_batch` with `want_rows: false`, so even the SELECT's rows are not returned.)
    for _ in 0..4 {
        assert!(matches!(results.next_stmt_row(), Some(Some(_))));
    }
    assert!(results.next_stmt_row().is_none());
    assert_eq!(
        all(conn, "SELECT title, done FROM todos ORDER BY title", ()).await,
        vec![
            vec![text("b1"), Value::Integer(0)],
            vec![text("b2"), Value::Integer(1)]
        ]
    );

    // A batch stops at its first error: the statements before it stay (autocommit), the ones
    // after it do not run.
    let err = conn
        .execute_batch(
            "INSERT INTO todos (title) VALUES ('b3');
             INSERT INTO todos (title) VALUES ('b1');
             INSERT INTO todos (title) VALUES ('b4');",
        )
        .await;
    // For batches the crate keeps only the message of the first step error, not its code.
    expect_err(err, "UNIQUE constraint failed: todos.title");
    assert_eq!(titles(conn).await, ["b1", "b2", "b3"]);

    // A transactional batch (BEGIN, steps conditioned on the previous ones, COMMIT, ROLLBACK
    // on failure) is all or nothing.
    let err = conn
        .execute_transactional_batch(
            "INSERT INTO todos (title) VALUES ('t1');
             INSERT INTO todos (title) VALUES ('b2');",
        )
        .await;
    expect_err(err, "UNIQUE constraint failed: todos.title");
    assert!(conn.is_autocommit());
    assert_eq!(titles(conn).await, ["b1", "b2", "b3"]);
    conn.execute_transactional_batch(
        "INSERT INTO todos (title) VALUES ('t1');
         INSERT INTO todos (title) VALUES ('t2');",
    )
    .await
    .unwrap();
    assert_eq!(titles(conn).await, ["b1", "b2", "b3", "t1", "t2"]);
}

async fn transactions(server: &Server, conn: &Connection) {
    conn.execute("DELETE FROM todos", ()).await.unwrap();
    // Another connection of the same user: sees only what was committed.
    let other = connect(server, server.token("rs_carol")).await;

    let tx = conn.transaction().await.unwrap();
    assert!(!tx.is_autocommit());
    tx.execute(
        "INSERT INTO todos (title) VALUES (?)",
        params!["committed 1"],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO todos (title, big) VALUES (:t, :b)",
        named_params! {":t": "committed 2", ":b": i64::MAX},
    )
    .await
    .unwrap();
    // A query inside the transaction (a cursor on the transaction's stream) sees its writes.
    assert_eq!(count(&tx, "SELECT count(*) FROM todos").await, 2);
    assert_eq!(count(&other, "SELECT count(*) FROM todos").await, 0);
    tx.commit().await.unwrap();
    assert!(conn.is_autocommit());
    assert_eq!(titles(&other).await, ["committed 1", "committed 2"]);
    assert_eq!(
        all(
            &other,
            "SELECT big FROM todos WHERE title = 'committed 2'",
            ()
        )
        .await,
        vec![vec![Value::Integer(i64::MAX)]]
    );

    let tx = conn
        .transaction_with_behavior(libsql::TransactionBehavior::Immediate)
        .await
        .unwrap();
    tx.execute("INSERT INTO todos (title) VALUES ('rolled back')", ())
        .await
        .unwrap();
    tx.execute("DELETE FROM todos WHERE title = 'committed 1'", ())
        .await
        .unwrap();
    assert_eq!(titles(&tx).await, ["committed 2", "rolled back"]);
    tx.rollback().await.unwrap();
    assert!(conn.is_autocommit());
    assert_eq!(titles(conn).await, ["committed 1", "committed 2"]);
    assert_eq!(titles(&other).await, ["committed 1", "committed 2"]);

    // BEGIN / COMMIT sent as plain statements keep the stream open between them.
    conn.execute("BEGIN", ()).await.unwrap();
    assert!(!conn.is_autocommit());
    conn.execute("INSERT INTO todos (title) VALUES ('manual')", ())
        .await
        .unwrap();
    conn.execute("COMMIT", ()).await.unwrap();
    assert!(conn.is_autocommit());
    assert_eq!(
        titles(&other).await,
        ["committed 1", "committed 2", "manual"]
    );

    // A read-only transaction reads, and refuses writes.
    let tx = conn
        .transaction_with_behavior(libsql::TransactionBehavior::ReadOnly)
        .await
        .unwrap();
    assert_eq!(count(&tx, "SELECT count(*) FROM todos").await, 3);
    let refused = tx
        .execute("INSERT INTO todos (title) VALUES ('read only')", ())
        .await;
    assert!(
        refused.is_err(),
        "a write in a read-only transaction: {refused:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count(conn, "SELECT count(*) FROM todos").await, 3);
}

async fn errors(conn: &Connection) {
    conn.execute("DELETE FROM todos", ()).await.unwrap();
    conn.execute("INSERT INTO todos (title) VALUES ('dup')", ())
        .await
        .unwrap();
    // On the pipeline (execute) and on the cursor (query).
    let message = expect_err(
        conn.execute("INSERT INTO todos (title) VALUES ('dup')", ())
            .await,
        "SQLITE_CONSTRAINT_UNIQUE",
    );
    assert!(
        message.contains("UNIQUE constraint failed: todos.title"),
        "{message}"
    );
    let cursor = async {
        let mut rows = conn
            .query("INSERT INTO todos (title) VALUES ('dup') RETURNING id", ())
            .await?;
        rows.next().await.map(|row| row.is_some())
    };
    expect_err(cursor.await, "SQLITE_CONSTRAINT_UNIQUE");
    expect_err(
        conn.execute("INSERT INTO todos (title) VALUES (NULL)", ())
            .await,
        "SQLITE_CONSTRAINT_NOTNULL",
    );
    expect_err(
        conn.execute("SELECT * FROM no_such_table", ()).await,
        "SQLITE_ERROR",
    );
    // The guard's refusals carry SQLite's authorization code.
    expect_err(conn.execute("DROP TABLE todos", ()).await, "SQLITE_AUTH");
    // A unique violation inside a transaction leaves the transaction usable.
    let tx = conn.transaction().await.unwrap();
    expect_err(
        tx.execute("INSERT INTO todos (title) VALUES ('dup')", ())
            .await,
        "SQLITE_CONSTRAINT_UNIQUE",
    );
    tx.execute("INSERT INTO todos (title) VALUES ('after the error')", ())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(titles(conn).await, ["after the error", "dup"]);
}

async fn isolation(carol: &Connection, dave: &Connection) {
    carol.execute("DELETE FROM todos", ()).await.unwrap();
    dave.execute("DELETE FROM todos", ()).await.unwrap();
    carol
        .execute("INSERT INTO todos (title) VALUES ('carol only')", ())
        .await
        .unwrap();
    dave.execute("INSERT INTO todos (title) VALUES ('dave only')", ())
        .await
        .unwrap();
    assert_eq!(titles(carol).await, ["carol only"]);
    assert_eq!(titles(dave).await, ["dave only"]);
    // The same title is no UNIQUE violation across users: they are separate databases.
    dave.execute("INSERT INTO todos (title) VALUES ('carol only')", ())
        .await
        .unwrap();
    assert_eq!(count(carol, "SELECT count(*) FROM todos").await, 1);
    assert_eq!(count(dave, "SELECT count(*) FROM todos").await, 2);
    // ... and neither reaches the other's rows from inside a transaction.
    let tx = dave.transaction().await.unwrap();
    assert_eq!(
        tx.execute("DELETE FROM todos", ()).await.unwrap(),
        2,
        "dave deletes only his own two rows"
    );
    tx.rollback().await.unwrap();
    assert_eq!(titles(carol).await, ["carol only"]);
}

async fn wrong_token(server: &Server) {
    let conn = connect(server, server.foreign_token("rs_carol")).await;
    let refused = conn.execute("SELECT 1", ()).await;
    let message = expect_err(refused, "status=401");
    assert!(message.contains(r#""code":"AUTH_INVALID""#), "{message}");
    // `Rows` is not `Debug`, so no `expect_err` here.
    let refused = match conn.query("SELECT 1", ()).await {
        Ok(_) => panic!("a token signed with another secret must be refused on the query path"),
        Err(e) => Err::<(), _>(e),
    };
    let message = expect_err(refused, "status=401");
    assert!(message.contains(r#""code":"AUTH_INVALID""#), "{message}");
    let conn = connect(server, "not-a-jwt".to_string()).await;
    let message = expect_err(conn.execute("SELECT 1", ()).await, "status=401");
    assert!(message.contains(r#""code":"AUTH_MALFORMED""#), "{message}");
}
