//! The todo example (`examples/todo-web`) end to end: the page, bundled with esbuild and served
//! on its own origin, uses `@libsql/client/web` in Debian's headless Chromium against a real
//! `tenantdb serve --dev-login --cors-origin <page origin>`. The browser part is
//! `examples/todo-web/e2e.mjs` (playwright-core); this test builds the bundle, starts both
//! servers, hands the driver an expired token, and afterwards reads what each user's database
//! holds through the CLI.
//!
//! It needs Node.js, the example's pinned packages and /usr/bin/chromium, all of which the
//! README's test command (`scripts/test`) installs. Without them it fails and says what to run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

mod common;
use common::markdown::workspace_root;
use common::{ServeProcess, output_within};

/// Debian's package, which `scripts/test` installs; `CHROMIUM` names another.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser to drive, after checking that everything the test runs is installed.
fn required_tools(example: &Path) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: run the README's test command, scripts/test, which installs \
         Debian's chromium (apt-get install chromium)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|out| out.status.success()),
        "node is missing: install Node.js 20+ and npm, then run scripts/test"
    );
    for package in ["@libsql/client", "esbuild", "playwright-core"] {
        assert!(
            example
                .join("node_modules")
                .join(package)
                .join("package.json")
                .is_file(),
            "{package} is not installed in {}: run scripts/test, which runs \
             `npm ci --prefix examples/todo-web`",
            example.display()
        );
    }
    chromium
}

/// `node serve.mjs 0`: the page on a free port of its own, stopped when dropped.
struct PageServer {
    child: Child,
    /// The page's origin, `http://127.0.0.1:PORT`.
    url: String,
}

impl PageServer {
    fn start(example: &Path) -> PageServer {
        let mut child = Command::new("node")
            .args(["serve.mjs", "0"])
            .current_dir(example)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs serve.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("todo-web on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => PageServer { child, url },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve.mjs did not print its address within 30s");
            }
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session token for `user`, signed with the server's generated secret, that expired an
/// hour ago: far past the server's leeway.
fn expired_token(data: &Path, user: &str) -> String {
    let secrets = tenantdb_server::secrets::load(data)
        .expect("secrets.toml is readable")
        .expect("tenantdb serve generated development secrets");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "iat": now - 7200, "exp": now - 3600}),
        &EncodingKey::from_secret(secrets.jwt_secret.as_bytes()),
    )
    .unwrap()
}

/// Waits (up to 30s) until the server's stderr holds `needle`; its lines arrive after start.
#[track_caller]
fn wait_for_log(server: &ServeProcess, needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {what} from tenantdb serve within 30s:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tenantdb --json <args>` on the data directory, as JSON.
#[track_caller]
fn cli_json(data: &Path, args: &[&str]) -> Value {
    let out = common::tenantdb(data)
        .arg("--json")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the tenantdb binary runs");
    assert!(
        out.status.success(),
        "tenantdb {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn todo_page_in_headless_chromium() {
    let root = workspace_root();
    let example = root.join("examples/todo-web");
    let chromium = required_tools(&example);

    // The bundle is built from the sources as they are now, never taken from an earlier build.
    let build = output_within(
        Command::new("npm")
            .args(["run", "build", "--silent"])
            .current_dir(&example),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        build.status.success(),
        "npm run build failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let page = PageServer::start(&example);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let migrations = root.join("examples/migrations");
    let server = ServeProcess::start(
        &data,
        &[
            "--migrations",
            migrations.to_str().unwrap(),
            "--dev-login",
            "--cors-origin",
            &page.url,
        ],
        &[],
    );
    wait_for_log(
        &server,
        "dev sign-in on: POST",
        "the start-up line for the dev sign-in",
    );

    let driven = output_within(
        Command::new("node")
            .arg("e2e.mjs")
            .current_dir(&example)
            .env("TODO_WEB_URL", &page.url)
            .env("TENANTDB_URL", server.url())
            .env("TENANTDB_PID", server.pid().to_string())
            .env("TODO_WEB_EXPIRED_TOKEN", expired_token(&data, "alice"))
            .env("CHROMIUM", &chromium),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- tenantdb serve ---\n{}", server.log()));
    let stdout = String::from_utf8_lossy(&driven.stdout);
    let stderr = String::from_utf8_lossy(&driven.stderr);
    assert!(
        driven.status.success(),
        "e2e.mjs failed ({}):\n{stdout}{stderr}\n--- tenantdb serve ---\n{}",
        driven.status,
        server.log()
    );
    let shown: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("e2e.mjs printed no JSON result:\n{stdout}{stderr}"));
    assert_eq!(
        shown,
        json!({
            "alice": [["buy milk", false], ["water the plants", true]],
            "bob": [["<b>not bold</b>", false], ["book flights", true]],
        })
    );

    // The driver stopped the server (SIGTERM) to show the "cannot reach" message; it shuts
    // down gracefully, and then the CLI reads each user's own database.
    wait_for_log(&server, "tenantdb stopped", "a graceful stop after SIGTERM");
    let sql = "SELECT title, done FROM todos ORDER BY id";
    let alice = cli_json(&data, &["sql", "alice", sql]);
    assert_eq!(
        alice[0]["rows"],
        json!([["buy milk", 0], ["water the plants", 1]])
    );
    let bob = cli_json(&data, &["sql", "bob", sql]);
    assert_eq!(
        bob[0]["rows"],
        json!([["<b>not bold</b>", 0], ["book flights", 1]])
    );
    // Only the two who signed in have a database: the expired token and the sign-in
    // attempted while the server was down created none.
    let ids: Vec<Value> = cli_json(&data, &["tenant", "list"])
        .as_array()
        .expect("a list of tenants")
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("alice"), json!("bob")]);
}
