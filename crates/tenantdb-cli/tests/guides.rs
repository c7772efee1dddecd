//! The guides under `docs/` and the README's tour, run as written, so they cannot drift from
//! the code.
//!
//! Each guide becomes one bash script (`set -euo pipefail`): its `sh` blocks in order, and each
//! block marked `<!-- file: path -->` written to that path at the point where it appears (as a
//! reader saving it would). The script runs in a fresh directory that looks like the root of a
//! clone (`examples/migrations` is there) with the `tenantdb` that cargo built first on PATH,
//! no `TENANTDB_*` or `RUST_LOG` from the environment the tests run in, and `PORT` set to a free
//! port: the guides start servers with `--listen 127.0.0.1:${PORT:-8080}`, so a reader gets
//! 8080 and parallel tests never collide. Servers started in the background (`tenantdb serve
//! ... &`) belong to the script's process group, which is killed when the script ends, fails or
//! runs out of time.
//!
//! A guide that runs `@libsql/client` finds the pinned packages of `tests/clients/js` (installed
//! by `scripts/test`) linked as `node_modules` where it expects them.
//!
//! Only `sh` blocks run (`js`, `sql`, `text` and `json` blocks are illustrations or files);
//! each test names the few `sh` blocks it does not run (building from source, for one), and the
//! runner checks that those are exactly the ones skipped. Every block's stdout and stderr are
//! kept apart so each test can check what matters in the output.
//!
//! `docs/moving-in.md` is run by `tests/import.rs` (`the_moving_in_guide_runs_as_written`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;
use common::markdown::{self, Block, workspace_root};

const BIN: &str = env!("CARGO_BIN_EXE_tenantdb");

/// A guide that takes longer is stopped and fails.
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// Printed on stdout and stderr before each step, so outputs can be told apart.
const MARKER: &str = "@@tenantdb-guide-step";

/// Ends every file written by the script; a guide's file never contains it.
const HEREDOC_END: &str = "TENANTDB_GUIDE_FILE_END";

/// How a guide is run.
#[derive(Default)]
struct Options {
    /// Text found in each `sh` block that is shown but not run (exactly one block each).
    not_run: &'static [&'static str],
    /// The directory (under the working directory) where the guide runs Node.js with
    /// `@libsql/client`: the pinned packages of `tests/clients/js` are linked there as
    /// `node_modules`, so the guide's `npm install` has nothing to do.
    node_modules_in: Option<&'static str>,
}

/// One step of a guide: an `sh` block run, or a file written.
#[derive(Debug)]
struct Step {
    /// The block's text as the guide shows it.
    source: String,
    /// Where the block starts in the guide.
    line: usize,
    stdout: String,
    stderr: String,
}

/// A guide that ran to its end.
struct Ran {
    doc: &'static str,
    steps: Vec<Step>,
    /// The directory the guide ran in (the reader's working directory).
    work: PathBuf,
    _tmp: TempDir,
}

impl Ran {
    /// The one step whose text is `needle` (leading and trailing blank space aside), or else
    /// the one step whose text contains it.
    #[track_caller]
    fn step(&self, needle: &str) -> &Step {
        let exact: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| s.source.trim() == needle.trim())
            .collect();
        if let [one] = exact.as_slice() {
            return one;
        }
        let found: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| s.source.contains(needle))
            .collect();
        match found.as_slice() {
            [one] => one,
            [] => panic!("{}: no step contains {needle:?}", self.doc),
            many => panic!(
                "{}: {} steps contain {needle:?} (lines {:?}); use a longer needle",
                self.doc,
                many.len(),
                many.iter().map(|s| s.line).collect::<Vec<_>>()
            ),
        }
    }

    /// What the step containing `needle` printed on stdout.
    #[track_caller]
    fn stdout(&self, needle: &str) -> &str {
        &self.step(needle).stdout
    }

    /// Asserts that the stdout of the step containing `needle` contains every one of `wanted`.
    #[track_caller]
    fn expect_stdout(&self, needle: &str, wanted: &[&str]) {
        let step = self.step(needle);
        for w in wanted {
            assert!(
                step.stdout.contains(w),
                "{} line {}: the output of\n{}\ndoes not contain {w:?}; it is:\n{}",
                self.doc,
                step.line,
                step.source,
                step.stdout
            );
        }
    }

    /// Asserts that one line of the stdout of the step containing `needle` holds all of `parts`,
    /// in that order (table columns are as wide as their widest cell, so spacing varies).
    #[track_caller]
    fn expect_line(&self, needle: &str, parts: &[&str]) {
        let step = self.step(needle);
        let found = step.stdout.lines().any(|line| {
            let mut rest = line;
            parts.iter().all(|part| match rest.find(part) {
                Some(at) => {
                    rest = &rest[at + part.len()..];
                    true
                }
                None => false,
            })
        });
        assert!(
            found,
            "{} line {}: no line of the output of\n{}\nholds {parts:?}; it is:\n{}",
            self.doc, step.line, step.source, step.stdout
        );
    }

    /// Asserts that the stderr of the step containing `needle` contains every one of `wanted`.
    #[track_caller]
    fn expect_stderr(&self, needle: &str, wanted: &[&str]) {
        let step = self.step(needle);
        for w in wanted {
            assert!(
                step.stderr.contains(w),
                "{} line {}: the stderr of\n{}\ndoes not contain {w:?}; it is:\n{}",
                self.doc,
                step.line,
                step.source,
                step.stderr
            );
        }
    }
}

/// Kills a process group when dropped: servers a guide started in the background never outlive
/// its test, whatever happens.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A path a guide asks the reader to save a file under: relative, plain.
fn checked_file_path(doc: &str, block: &Block, path: &str) -> String {
    let plain = !path.is_empty()
        && !path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !path.split('/').any(|part| part == ".." || part.is_empty());
    assert!(
        plain,
        "{doc} line {}: file path {path:?} must be relative and plain",
        block.line
    );
    assert!(
        !block.body.contains(HEREDOC_END),
        "{doc} line {}: the file contains {HEREDOC_END}",
        block.line
    );
    path.to_string()
}

/// The script for a guide's steps, and the steps (without output yet).
fn script(doc: &'static str, blocks: &[Block], options: &Options) -> (String, Vec<Step>) {
    let mut script = format!(
        "set -euo pipefail\n\
         __guide_step() {{ printf '\\n{MARKER} %s@@\\n' \"$1\"; printf '\\n{MARKER} %s@@\\n' \"$1\" >&2; }}\n"
    );
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for block in blocks {
        let text = if let Some(path) = &block.file {
            let path = checked_file_path(doc, block, path);
            format!(
                "mkdir -p \"$(dirname '{path}')\"\ncat > '{path}' <<'{HEREDOC_END}'\n{}{HEREDOC_END}\n",
                block.body
            )
        } else if block.lang == "sh" {
            if let Some(needle) = options.not_run.iter().find(|n| block.body.contains(*n)) {
                skipped.push(*needle);
                continue;
            }
            block.body.clone()
        } else {
            continue;
        };
        script.push_str(&format!("__guide_step {}\n{text}", steps.len()));
        steps.push(Step {
            source: block.body.clone(),
            line: block.line,
            stdout: String::new(),
            stderr: String::new(),
        });
    }
    script.push_str("__guide_step end\n");
    let mut expected: Vec<&str> = options.not_run.to_vec();
    expected.sort_unstable();
    skipped.sort_unstable();
    assert_eq!(
        skipped, expected,
        "{doc}: each not-run needle must match exactly one sh block"
    );
    (script, steps)
}

/// Splits a stream by the step markers and hands each step its part (without the blank line
/// that each marker starts with, in case the output before it did not end its line). Returns
/// the last marker seen.
fn split_output(
    text: &str,
    steps: &mut [Step],
    pick: fn(&mut Step) -> &mut String,
) -> Option<String> {
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(MARKER) {
            current = Some(rest.trim().trim_end_matches("@@").to_string());
            continue;
        }
        let index = current.as_deref().and_then(|c| c.parse::<usize>().ok());
        if let Some(step) = index.and_then(|i| steps.get_mut(i)) {
            let out = pick(step);
            out.push_str(line);
            out.push('\n');
        }
    }
    for step in steps.iter_mut() {
        let out = pick(step);
        if out.ends_with("\n\n") {
            out.pop();
        }
    }
    current
}

/// Runs the guide at `doc` (a path from the workspace root) as the module documentation says.
/// Panics with the failing step, its output and the end of the whole run's stderr if any
/// command fails.
fn run_guide(doc: &'static str, options: Options) -> Ran {
    let blocks = markdown::blocks(&markdown::read_doc(doc));
    let (script, mut steps) = script(doc, &blocks, &options);
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("tenantdb")).unwrap();
    let work = root.join("work");
    copy_dir(
        &workspace_root().join("examples/migrations"),
        &work.join("examples/migrations"),
    );
    if let Some(dir) = options.node_modules_in {
        let modules = workspace_root().join("tests/clients/js/node_modules");
        assert!(
            modules.join("@libsql/client/package.json").is_file(),
            "{doc} runs @libsql/client, which is not installed in {}: run the README's test \
             command, `scripts/test`, which installs the pinned packages with `npm ci --prefix \
             tests/clients/js` before running cargo test",
            modules.display()
        );
        std::fs::create_dir_all(work.join(dir)).unwrap();
        std::os::unix::fs::symlink(&modules, work.join(dir).join("node_modules")).unwrap();
    }
    let script_path = root.join("guide.sh");
    std::fs::write(&script_path, &script).unwrap();
    let stdout_path = root.join("stdout");
    let stderr_path = root.join("stderr");

    let mut cmd = Command::new("bash");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("TENANTDB_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let started = Instant::now();
    let mut child = cmd
        .arg(&script_path)
        .current_dir(&work)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("PORT", free_port().to_string())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let group = GroupGuard(child.id());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIME_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(group);
    let _ = child.wait();
    let seconds = started.elapsed().as_secs_f64();

    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let last = split_output(&stdout, &mut steps, |s| &mut s.stdout);
    split_output(&stderr, &mut steps, |s| &mut s.stderr);
    let finished = status.is_some_and(|s| s.success()) && last.as_deref() == Some("end");
    if !finished {
        let failed = last
            .as_deref()
            .and_then(|l| l.parse::<usize>().ok())
            .and_then(|i| steps.get(i));
        let tail: String = {
            let lines: Vec<&str> = stderr.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let why = match status {
            None => format!("did not finish within {TIME_LIMIT:?}"),
            Some(s) => format!("stopped ({s})"),
        };
        match failed {
            Some(step) => panic!(
                "{doc} {why} in the block at line {}:\n{}\n--- its stdout ---\n{}\n--- its \
                 stderr ---\n{}\n--- the end of the run's stderr ---\n{tail}",
                step.line, step.source, step.stdout, step.stderr
            ),
            None => panic!("{doc} {why} before its first block:\n{tail}"),
        }
    }
    // Shown with `cargo test --test guides -- --nocapture`: what each block printed, to update
    // the outputs a guide shows.
    for step in &steps {
        println!(
            "--- {doc} line {} ---\n{}--- stdout ---\n{}--- stderr ---\n{}",
            step.line, step.source, step.stdout, step.stderr
        );
    }
    println!("{doc}: {} steps in {seconds:.1}s", steps.len());
    Ran {
        doc,
        steps,
        work,
        _tmp: tmp,
    }
}

// ---------------------------------------------------------------------------------------------
// The guides
// ---------------------------------------------------------------------------------------------

#[test]
fn the_quickstart_runs_as_written() {
    let ran = run_guide(
        "docs/quickstart.md",
        Options {
            not_run: &["cargo build --release --bin tenantdb"],
            node_modules_in: Some("client"),
        },
    );
    // alice's first request created her database and wrote to it.
    ran.expect_stdout(
        "-H \"Authorization: Bearer $ALICE\" -d '{",
        &[
            r#""affected_row_count":1"#,
            r#"[{"type":"integer","value":"1"},{"type":"text","value":"buy milk"},{"type":"integer","value":"0"}]"#,
        ],
    );
    // bob sees an empty table of his own, and cannot name alice's database.
    ran.expect_stdout(
        "SELECT count(*) FROM todos",
        &[r#""rows":[[{"type":"integer","value":"0"}]]"#],
    );
    assert_eq!(ran.stdout("x-tenant: alice").trim(), "403");
    // @libsql/client: a plain write, a committed transaction, and the rows in order.
    assert_eq!(
        ran.stdout("node todos.mjs"),
        "1 buy milk done\n2 call the plumber open\n3 buy bread open\n",
        "(and npm had nothing to install)"
    );
    let list = ran.stdout("tenantdb tenant list");
    assert!(
        list.contains("alice  active  2") && list.contains("bob    active  2"),
        "{list}"
    );
    ran.expect_stdout(
        "tenantdb audit alice",
        &["user:alice", "INSERT INTO todos (title) VALUES (?)"],
    );
    // The server printed its development secrets, and stopped cleanly.
    ran.expect_stderr(
        "tenantdb serve --listen",
        &["development mode: secrets generated in ./tenantdb-data/secrets.toml (mode 0600)"],
    );
    ran.expect_stderr("kill $SERVER", &["tenantdb stopped"]);
    ran.expect_stdout(
        "tenantdb demo --users 20",
        &[
            "20 users signed up through signed webhooks",
            "naming another user's database is refused (403)",
        ],
    );
    let secrets = ran.work.join("tenantdb-data/secrets.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(secrets).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_auth_guide_runs_as_written() {
    let ran = run_guide("docs/auth.md", Options::default());
    // The webhook: a signup, its duplicate, a forged and a stale delivery.
    ran.expect_stdout(
        "deliver() {",
        &[r#"{"status":"created","tenant":"user_2abc"} 200"#],
    );
    let duplicate = ran
        .steps
        .iter()
        .filter(|s| s.stdout.contains(r#"{"status":"duplicate"} 200"#))
        .count();
    assert_eq!(duplicate, 1);
    ran.expect_stdout(
        "deliver msg_002",
        &[
            r#""code":"WEBHOOK_SIGNATURE","message":"no signature in the signature header matches the body under any configured secret"}} 401"#,
            r#""message":"the delivery timestamp is more than 300 seconds old"}} 401"#,
        ],
    );
    // Session tokens from the JWKS: accepted, then refused for issuer and signature.
    ran.expect_stdout("session_token() {", &[r#""affected_row_count":1"#, "} 200"]);
    ran.expect_stdout(
        "https://evil.example.com",
        &[
            r#"{"code":"AUTH_INVALID","message":"token refused: wrong issuer"} 401"#,
            r#"{"code":"AUTH_INVALID","message":"token refused: invalid signature"} 401"#,
        ],
    );
    // Lazy provisioning on, then off.
    ran.expect_stdout(
        "\"sub\": \"user_2new\"",
        &[r#"[{"type":"integer","value":"0"}]"#],
    );
    ran.expect_line(
        "\"sub\": \"user_2new\"",
        &["lazy:user:user_2new", "tenant.create", "user_2new"],
    );
    ran.expect_stdout(
        "serve --no-lazy-provisioning",
        &[r#"{"code":"TENANT_NOT_FOUND","message":"tenant not found"} 404"#],
    );
    // Deletion, the tombstone, and a restore with the data.
    ran.expect_stdout(
        "deliver msg_004",
        &[
            r#"{"status":"deleted","tenant":"user_2abc"} 200"#,
            r#"{"code":"TENANT_NOT_FOUND","message":"tenant not found"} 404"#,
        ],
    );
    ran.expect_stdout(
        "deliver msg_005",
        &[r#"{"status":"ignored: user was deleted","tenant":"user_2abc"} 200"#],
    );
    ran.expect_stdout(
        "/admin/tenants/user_2abc/restore",
        &[
            r#""state":"active""#,
            r#"{"type":"text","value":"first todo"}"#,
            "} 200",
        ],
    );
    // Rotation: both secrets verify.
    ran.expect_stdout(
        "NEW=whsec_",
        &[
            r#"{"status":"created","tenant":"user_2b"} 200"#,
            r#"{"status":"created","tenant":"user_2c"} 200"#,
        ],
    );
    // A PEM key and another tenant claim: the organization's database, written by the user.
    ran.expect_stdout(
        "--tenant-claim org",
        &["user:user_2abc  1     INSERT INTO todos (title) VALUES ('team todo')"],
    );
    // The admin token reaches any tenant; user tokens reach no other.
    ran.expect_stdout(
        "x-tenant: org_2acme\" \\",
        &[
            r#""id":"org_2acme","last_active_at":null,"migration_error":null,"schema_version":2"#,
            r#"{"type":"text","value":"team todo"}"#,
        ],
    );
    ran.expect_stdout(
        "for check in",
        &[
            "x-tenant: org_2acme: 403",
            "x-tenant: no_such_tenant: 403",
            "admin route with a user token: 403",
        ],
    );
}

#[test]
fn the_migrations_guide_runs_as_written() {
    let ran = run_guide("docs/migrations.md", Options::default());
    ran.expect_stdout(
        "tenantdb migrate --migrations migrations --dry-run\ntenantdb migrate --migrations migrations\n",
        &[
            "schema version 3: would migrate 3 of 3 tenants, 0 failed",
            "schema version 3: migrated 3 of 3 tenants, 0 failed",
        ],
    );
    // The expansion backfilled alice's done todo, and the trigger keeps the old path working.
    ran.expect_stdout(
        "SELECT title, done, completed_at",
        &["buy milk  1     1\ncall mom  1     1\n"],
    );
    ran.expect_stdout(
        "SELECT title, completed_at IS NOT NULL",
        &[
            "schema version 4: migrated 3 of 3 tenants, 0 failed",
            "buy milk  1\ncall mom  1\n",
        ],
    );
    // carol fails version 5 in the dry run and for real, alone; the others go on.
    ran.expect_stdout(
        "--dry-run || echo",
        &[
            "schema version 5: would migrate 2 of 3 tenants, 1 failed",
            "carol at migration 5: 0005_unique_titles.sql: UNIQUE constraint failed: todos.title",
            "exit status 2",
        ],
    );
    ran.expect_stdout(
        "tenantdb migrate --migrations migrations || echo",
        &[
            "schema version 5: migrated 2 of 3 tenants, 1 failed",
            "exit status 2",
            "VERSION  TENANTS\n4        1\n5        2\n",
            "carol          5           0005_unique_titles.sql: UNIQUE constraint failed: todos.title",
        ],
    );
    // Fixed, carol is migrated when next opened.
    ran.expect_stdout(
        "tenantdb tenant info carol",
        &["todos\n1\n", "carol  active  5"],
    );
    ran.expect_stderr("tenantdb tenant info carol", &["migration on open failed"]);
    ran.expect_stdout(
        "tenantdb migrate --migrations migrations",
        &["schema version 5: migrated 0 of 3 tenants, 0 failed"],
    );
    // The admin API: status, pending, a dry run and an apply.
    ran.expect_stdout(
        "curl -s \"$URL/admin/migrations\" -H \"$ADMIN\"\necho",
        &[
            r#""failures":[],"latest":5"#,
            r#""tenants_by_version":{"5":3}"#,
        ],
    );
    ran.expect_stdout(
        "/admin/migrations/apply",
        &[
            r#""pending":["0006_add_notes.sql"]"#,
            r#"{"dry_run":true,"failed":[],"migrated":3,"registered":[6],"schema_version":6,"#,
            r#"{"dry_run":false,"failed":[],"migrated":3,"registered":[6],"schema_version":6,"#,
        ],
    );
}

#[test]
fn the_reports_guide_runs_as_written() {
    let ran = run_guide("docs/reports.md", Options::default());
    ran.expect_stdout(
        "UPDATE todos SET priority = 3",
        &[
            "carol at migration 3: 0003_priorities.sql: UNIQUE constraint failed",
            "exit status 2",
        ],
    );
    ran.expect_stdout(
        "sum(done) AS done",
        &["_tenant  todos  done\nalice    3      1\nbob      2      1\ncarol    2      0\n"],
    );
    ran.expect_stderr("sum(done) AS done", &["3 rows from 3 tenants; 0 skipped"]);
    ran.expect_stdout(
        "users_with_open_todos FROM",
        &[
            "users_with_open_todos\n3\n",
            "title     users\nbuy milk  2\n",
            "alice    pay rent      1\nalice    call mom      2\nbob      fix the bike  1\n",
        ],
    );
    // carol lacks `priority`: skipped, with the reason, not silently dropped.
    ran.expect_stdout(
        "WHERE priority >= 2",
        &["_tenant  title\nalice    pay rent\n"],
    );
    ran.expect_stderr(
        "WHERE priority >= 2",
        &[
            "1 row from 2 tenants; 1 skipped",
            "skipped carol: its schema (version 2) lacks column todos.priority",
        ],
    );
    ran.expect_stderr(
        "tenantdb report \"DELETE FROM todos\" || true",
        &[
            "error: reports only read: DELETE FROM todos is not allowed",
            "error: reports cannot read the rowid of todos",
            "error: no such column: titel (line 1, column 8)",
        ],
    );
    ran.expect_stdout("--reduce", &["users  avg_todos", "3      2.3333"]);
    ran.expect_stdout(
        "--tenants alice,bob,zed",
        &["alice    3\nbob      2\n", "users\n0\n"],
    );
    ran.expect_stderr(
        "--tenants alice,bob,zed",
        &["skipped zed: not found", "1 row from 0 tenants"],
    );
    ran.expect_stdout(
        "--format csv",
        &[
            "_tenant,todos\nalice,3\nbob,2\ncarol,2\n",
            r#""tenants_scanned":2,"tenants_skipped":[{"reason":"its schema (version 2) lacks column todos.priority","tenant":"carol"}]}"#,
        ],
    );
    ran.expect_stdout(
        "curl -s \"$URL/admin/reports\"",
        &[
            "[\"alice\",2],\n[\"bob\",1]],\"tenants_scanned\":2,\"tenants_skipped\":[]}",
            "x-tenants-scanned: 2",
            "x-tenants-skipped: 1",
            "_tenant,title\nalice,pay rent\n",
        ],
    );
    ran.expect_stdout(
        "grep report.run",
        &["cli    report.run", "admin  report.run"],
    );
}

#[test]
fn the_audit_and_analytics_guide_runs_as_written() {
    let ran = run_guide("docs/audit-and-analytics.md", Options::default());
    // Committed writes only, each with its actor; no read, no rolled-back delete.
    let audit = ran.stdout("tenantdb audit alice\n");
    let entries: Vec<&str> = audit
        .lines()
        .skip_while(|l| !l.starts_with("SEQ"))
        .skip(1)
        .collect();
    assert_eq!(entries.len(), 4, "{audit}");
    for (entry, (actor, statement)) in entries.iter().zip([
        ("user:alice", "INSERT INTO todos (title) VALUES (?)"),
        (
            "user:alice",
            "INSERT INTO todos (title, done) VALUES (?, 1)",
        ),
        ("user:alice", "UPDATE todos SET done = 1 WHERE title = ?"),
        (
            "admin:cli",
            "DELETE FROM todos WHERE title = 'renew passport'",
        ),
    ]) {
        assert!(
            entry.contains(actor) && entry.ends_with(statement),
            "{entry}"
        );
    }
    // Users read their audit and cannot write it.
    ran.expect_stdout(
        "DELETE FROM _tenantdb_audit",
        &[
            r#"[{"type":"integer","value":"4"},{"type":"text","value":"admin:cli"}"#,
            "writing to _tenantdb_audit is not allowed",
        ],
    );
    ran.expect_stdout("--after 3 --json", &["\"seq\": 4", "\"args_digest\": null"]);
    assert!(!ran.stdout("--after 3 --json").contains("\"seq\": 3"));
    ran.expect_stdout(
        "tenantdb audit alice --verify\n",
        &["audit of alice: 4 entries, chain intact"],
    );
    ran.expect_stdout(
        "UPDATE _tenantdb_audit SET statement",
        &[
            "audit of alice: chain broken at entry 2: its hash does not match its contents",
            "exit status 3",
        ],
    );
    // With --no-audit the write is served but not recorded.
    ran.expect_stdout(
        "--no-audit",
        &["4    ", "DELETE FROM todos WHERE title = 'renew passport'"],
    );
    ran.expect_line("tenantdb audit --admin", &["cli", "migrations.apply"]);
    ran.expect_line(
        "tenantdb audit --admin",
        &["lazy:user:alice", "tenant.create", "alice"],
    );
    ran.expect_stdout(
        "curl -s \"$URL/admin/stats\"",
        &[
            "\"tenants_total\":2",
            "\"requests_total\":",
            "tenants: 2 total",
            "cache hit rate: n/a",
        ],
    );
    ran.expect_stdout(
        "curl -s \"$URL/metrics\"",
        &[
            "tenantdb_open_tenants ",
            "tenantdb_http_requests_total{route=\"/v2/pipeline\",status=\"200\"}",
        ],
    );
    // The request log is plain text in a file.
    let line = ran.stdout("grep 'tenantdb::request' serve.log");
    assert!(
        line.contains("INFO tenantdb::request: request method="),
        "{line}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a log file: {line:?}"
    );
}

#[test]
fn the_operations_guide_runs_as_written() {
    let ran = run_guide("docs/operations.md", Options::default());
    let files = ran.stdout("find tenantdb-data");
    for path in [
        "tenantdb-data/catalog.db\n",
        "tenantdb-data/template.db\n",
        "tenantdb-data/trash\n",
        "/alice.db\n",
        "/bob.db\n",
    ] {
        assert!(files.contains(path), "{path} missing from:\n{files}");
    }
    // Exports from the command line and over HTTP are whole, plain SQLite files.
    ran.expect_stdout(
        "tenantdb tenant export alice",
        &[
            "exported tenant alice to alice-backup.db",
            "buy milk\ncall mom\n",
        ],
    );
    // Trash, restore, purge and its tombstone.
    ran.expect_stdout(
        "curl -s -X DELETE \"$URL/admin/tenants/alice\"",
        &[
            r#""id":"alice","restorable_until":"#,
            "alice.",
            r#""state":"active"}"#,
            "todos\n2\n",
        ],
    );
    ran.expect_stdout(
        "?purge=true",
        &[
            r#"{"id":"bob","state":"purged"}"#,
            r#"{"error":{"code":"NOTHING_TO_RESTORE","#,
        ],
    );
    ran.expect_stdout("--trash-retention 1s", &["tenant alice deleted"]);
    ran.expect_line("--trash-retention 1s", &["admin", "tenant.purge", "bob"]);
    ran.expect_line(
        "--trash-retention 1s",
        &["retention", "tenant.purge", "alice"],
    );
    assert!(
        std::fs::read_dir(ran.work.join("tenantdb-data/trash"))
            .unwrap()
            .next()
            .is_none()
    );
    // Start-up adopts the orphan file and removes the stale staging file.
    ran.expect_stderr(
        "touch -d '2 minutes ago'",
        &["note: reconciliation: 1 adopted, 0 deletions finished, 0 missing, 1 staging files removed, 0 unknown files"],
    );
    ran.expect_stdout("touch -d '2 minutes ago'", &["dave  active  2"]);
    ran.expect_stderr("kill $SERVER\nwait $SERVER", &["tenantdb stopped"]);
}

#[test]
fn the_security_guide_runs_as_written() {
    let ran = run_guide("docs/security.md", Options::default());
    // bob's own table is empty; naming alice's (or anyone's) is refused alike.
    ran.expect_stdout(
        "ALICE=$(tenantdb token alice)",
        &["200 [[{\"type\":\"integer\",\"value\":\"0\"}]]"],
    );
    assert_eq!(
        ran.stdout("query \"$BOB\" \"SELECT title FROM todos\" alice"),
        "403 this token may not address that tenant\n403 this token may not address that tenant\n"
    );
    ran.expect_stdout(
        "../catalog",
        &[
            "400 invalid x-tenant header: invalid tenant id",
            "404 tenant not found",
        ],
    );
    // Forged, unsigned and expired tokens are refused; a good one passes.
    let tokens: Vec<&str> = ran.stdout("HS256='{").lines().collect();
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert_eq!(
        tokens[0],
        "401 token refused: unsigned tokens (alg none) are never accepted"
    );
    assert_eq!(tokens[1], "401 token refused: invalid signature");
    assert_eq!(tokens[2], "401 token expired");
    assert_eq!(tokens[3], "200 [[{\"type\":\"integer\",\"value\":\"1\"}]]");
    // The guard's refusals, one per statement.
    let refusals = ran.stdout("for sql in");
    for reason in [
        "ATTACH is not allowed",
        "PRAGMA database_list is not allowed",
        "PRAGMA journal_mode may be read but not set",
        "DROP TABLE todos: the schema is changed by migrations",
        "writing to _tenantdb_audit is not allowed",
        "loading extensions is not allowed",
    ] {
        assert!(
            refusals.contains(&format!("200 refused by the guard: {reason}")),
            "{reason}:\n{refusals}"
        );
    }
    assert_eq!(
        refusals.matches("refused by the guard").count(),
        7,
        "{refusals}"
    );
    ran.expect_stdout(
        "for sql in",
        &["200 [[{\"type\":\"integer\",\"value\":\"0\"},{\"type\":\"text\",\"value\":\"id\"}"],
    );
    // --allow-ddl, the quota, a trigger kept out of the audit, and the statement time limit.
    let limits: Vec<&str> = ran.stdout("serve --allow-ddl").lines().collect();
    assert_eq!(
        limits,
        [
            "200",
            "200",
            "200 database or disk is full",
            "200",
            "200 refused by the guard: writing to _tenantdb_audit is not allowed: it belongs to tenantdb or SQLite",
            "200 statement interrupted: it ran longer than the limit of 200ms",
        ]
    );
    // Development secrets: private, and a warning once they are not.
    ran.expect_stdout("stat -c", &["600 dev-data/secrets.toml"]);
    ran.expect_stderr(
        "stat -c",
        &["dev-data/secrets.toml is readable by other users (mode 644)"],
    );
}

#[test]
fn the_readme_tour_runs_as_written() {
    let ran = run_guide(
        "README.md",
        Options {
            // The first lines (serve from source, run every test) and the benchmarks are
            // commands for a clone, not for a test.
            not_run: &["scripts/test", "cargo build --release -p tenantdb-bench"],
            ..Options::default()
        },
    );
    ran.expect_stdout(
        "tenantdb demo --users 50",
        &[
            "50 users signed up through signed webhooks",
            r#""affected_row_count":1"#,
            "id  title  done\n1   milk   0\n",
            "_tenant  todos\nalice    1\n",
            "audit of alice: 1 entries, chain intact",
            "tenants: 1 total",
        ],
    );
}

/// Every guide under `docs/` is run by a test (this file's, or `tests/import.rs` for
/// moving-in), the README links each one, and every link between the documents resolves.
#[test]
fn every_guide_is_run_and_linked() {
    const RUN_HERE: [&str; 7] = [
        "quickstart.md",
        "auth.md",
        "migrations.md",
        "reports.md",
        "audit-and-analytics.md",
        "operations.md",
        "security.md",
    ];
    let root = workspace_root();
    let mut guides: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    guides.sort();
    let mut known: Vec<String> = RUN_HERE
        .iter()
        .chain(&["moving-in.md"])
        .map(|s| s.to_string())
        .collect();
    known.sort();
    assert_eq!(
        guides, known,
        "a guide under docs/ that no test runs, or one that is gone"
    );
    let this_file = include_str!("guides.rs");
    for guide in RUN_HERE {
        assert!(
            this_file.contains(&format!("run_guide(\n        \"docs/{guide}\""))
                || this_file.contains(&format!("run_guide(\"docs/{guide}\"")),
            "no test runs docs/{guide}"
        );
    }

    let readme = markdown::read_doc("README.md");
    for guide in &guides {
        assert!(
            readme.contains(&format!("](docs/{guide})")),
            "the README does not link docs/{guide}"
        );
    }
    assert!(readme.contains("](examples/todo-web/README.md)"));

    // Links from one guide to another (and to files of the repository) resolve.
    for guide in &guides {
        let text = markdown::read_doc(&format!("docs/{guide}"));
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split(')').next().unwrap();
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let path = root.join("docs").join(target.split('#').next().unwrap());
            assert!(
                path.exists(),
                "docs/{guide} links {target}, which does not exist"
            );
        }
    }
}
