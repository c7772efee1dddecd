//! A `tenantdb serve` process killed (SIGKILL) while signup webhooks are being delivered: the
//! sender's retries, to the restarted server, complete the work — exactly one whole tenant per
//! signup, each at the latest schema, and nothing half-made left behind.
//!
//! Signatures come from the official Standard Webhooks library (the `standardwebhooks` npm
//! package pinned in `tests/clients/js/package-lock.json`, installed by `scripts/test`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::{ServeProcess, ok};

const WEBHOOK_SECRET: &str = "whsec_dGVuYW50ZGItd2ViaG9vay1jcmFzaC10ZXN0LXNlY3JldCE=";
const JWT_SECRET: &str = "webhook-crash-test-secret-0123456789abcdef";
const SIGNUPS: usize = 200;
const SENDERS: usize = 6;
/// The server is killed once this many deliveries have been acknowledged.
const KILL_AFTER: usize = 50;

const TODOS: &str = "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);";

/// A `tenantdb` command that sees no `TENANTDB_*` setting from the environment it runs in.
fn tenantdb(data: &Path) -> Command {
    let mut cmd = common::tenantdb(data);
    cmd.env("TENANTDB_JWT_SECRET", JWT_SECRET);
    cmd
}

/// A running `tenantdb serve` that provisions at signup and checks webhook signatures.
fn serve(data: &Path) -> ServeProcess {
    ServeProcess::start(
        data,
        &["--no-lazy-provisioning", "--webhook-secret", WEBHOOK_SECRET],
        &[("TENANTDB_JWT_SECRET", JWT_SECRET)],
    )
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/js")
}

/// Signs (msg id, body) pairs at `ts` with `tests/clients/js/sign-webhook.mjs`.
fn sign_all(deliveries: &[Delivery], ts: i64) -> Vec<String> {
    let js = js_dir();
    assert!(
        js.join("node_modules/standardwebhooks/package.json")
            .is_file(),
        "the pinned `standardwebhooks` npm package is not installed in {}: run the README's test \
         command, `scripts/test`, which installs it from the lockfile with `npm ci --prefix \
         tests/clients/js` before running cargo test",
        js.display()
    );
    let input: String = deliveries
        .iter()
        .map(|d| {
            format!(
                "{}\n",
                json!({"secret": WEBHOOK_SECRET, "id": d.msg_id, "timestamp": ts, "body": d.body})
            )
        })
        .collect();
    let mut child = Command::new("node")
        .args(["sign-webhook.mjs", "--batch"])
        .current_dir(&js)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (Node.js 20+ is needed for this test): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sign-webhook.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sigs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(sigs.len(), deliveries.len());
    sigs
}

#[derive(Debug, Clone)]
struct Delivery {
    user: String,
    msg_id: String,
    body: String,
}

/// One webhook POST over a fresh connection; `None` when the server did not answer (it was
/// killed before or while handling it).
fn post(addr: &str, d: &Delivery, ts: i64, sig: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let request = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nsvix-id: {}\r\nsvix-timestamp: {ts}\r\n\
         svix-signature: {sig}\r\n\r\n{}",
        d.body.len(),
        d.msg_id,
        d.body
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let body = serde_json::from_str(body).ok()?;
    Some((status, body))
}

/// Delivers everything from `SENDERS` threads; returns each delivery's answer (None when it
/// got none). `on_ack` runs after every answered delivery with the number answered so far.
fn send_all(
    addr: &str,
    deliveries: &[Delivery],
    sigs: &[String],
    ts: i64,
    on_ack: &(dyn Fn(usize) + Sync),
) -> Vec<Option<(u16, Value)>> {
    let next = AtomicUsize::new(0);
    let answered = AtomicUsize::new(0);
    let dead = AtomicBool::new(false);
    let results: Mutex<Vec<Option<(u16, Value)>>> = Mutex::new(vec![None; deliveries.len()]);
    std::thread::scope(|scope| {
        for _ in 0..SENDERS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= deliveries.len() || dead.load(Ordering::SeqCst) {
                        break;
                    }
                    match post(addr, &deliveries[i], ts, &sigs[i]) {
                        Some(answer) => {
                            results.lock().unwrap()[i] = Some(answer);
                            on_ack(answered.fetch_add(1, Ordering::SeqCst) + 1);
                        }
                        // The server is gone: this sender stops, as a real one would back off.
                        None => dead.store(true, Ordering::SeqCst),
                    }
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// Staging copies (`.<id>.<nonce>.creating`) under `tenants/`, with the pid in their nonce.
fn staging_files(data: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(data.join("tenants")) else {
        return out;
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".creating") {
                let nonce: u64 = stem
                    .rsplit_once('.')
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected staging name {name}"));
                let pid = u32::try_from(nonce >> 32).unwrap();
                out.push((file.path(), pid));
            }
        }
    }
    out
}

#[test]
fn a_server_killed_mid_delivery_completes_every_signup_on_retry() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("data");
    let migrations = tmp.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(migrations.join("0001_todos.sql"), TODOS).unwrap();
    ok(tenantdb(&data)
        .args(["migrate", "--migrations"])
        .arg(&migrations)
        .output()
        .unwrap());

    let deliveries: Vec<Delivery> = (0..SIGNUPS)
        .map(|i| {
            let user = format!("user_k{i:03}");
            Delivery {
                msg_id: format!("msg_crash_{i:03}"),
                body: json!({"type": "user.created", "object": "event",
                             "data": {"id": user, "object": "user"}})
                .to_string(),
                user,
            }
        })
        .collect();
    let expected: BTreeSet<String> = deliveries.iter().map(|d| d.user.clone()).collect();

    // Round 1: killed part-way.
    let mut first = serve(&data);
    let first_pid = first.pid();
    let addr = first.addr.clone();
    let ts = now();
    let sigs = sign_all(&deliveries, ts);
    let round1 = {
        // The sender thread that sees the KILL_AFTER-th answer kills the server while the
        // others are mid-request.
        let killer = Mutex::new(Some(&mut first));
        send_all(&addr, &deliveries, &sigs, ts, &|answered| {
            if answered >= KILL_AFTER
                && let Some(server) = killer.lock().unwrap().take()
            {
                server.kill();
            }
        })
    };
    first.kill();
    let acknowledged: Vec<usize> = (0..SIGNUPS).filter(|&i| round1[i].is_some()).collect();
    for &i in &acknowledged {
        let (status, body) = round1[i].as_ref().unwrap();
        assert_eq!(*status, 200, "{}: {body}", deliveries[i].msg_id);
        assert_eq!(
            body["status"], "created",
            "{}: {body}",
            deliveries[i].msg_id
        );
    }
    assert!(
        acknowledged.len() >= KILL_AFTER && acknowledged.len() < SIGNUPS,
        "the kill must land part-way: {} of {SIGNUPS} acknowledged",
        acknowledged.len()
    );

    // Round 2: the sender retries everything (re-signed with a fresh timestamp, same message
    // ids and bodies, as Svix does) against the restarted server.
    let second = serve(&data);
    let ts = now();
    let sigs = sign_all(&deliveries, ts);
    let round2 = send_all(&second.addr, &deliveries, &sigs, ts, &|_| {});
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, answer) in round2.iter().enumerate() {
        let d = &deliveries[i];
        let Some((status, body)) = answer else {
            panic!(
                "{} got no answer from the restarted server; its log:\n{}",
                d.msg_id,
                second.log()
            );
        };
        assert_eq!(*status, 200, "{}: {body}", d.msg_id);
        let outcome = body["status"].as_str().unwrap_or_default().to_string();
        if round1[i].is_some() {
            // Acknowledged before the kill, so recorded: a retry does nothing.
            assert_eq!(outcome, "duplicate", "{}: {body}", d.msg_id);
        } else {
            assert!(
                ["created", "exists", "duplicate"].contains(&outcome.as_str()),
                "{}: {body}",
                d.msg_id
            );
        }
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!(
        "acknowledged before the kill: {}; retry outcomes: {outcomes:?}",
        acknowledged.len()
    );
    drop(second);

    // Exactly one whole tenant per signup, each at the latest schema and openable.
    let listed: Value = serde_json::from_str(&ok(tenantdb(&data)
        .args(["tenant", "list", "--json"])
        .output()
        .unwrap()))
    .unwrap();
    let listed = listed.as_array().expect("a JSON array of tenants");
    let ids: BTreeSet<String> = listed
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), SIGNUPS);
    assert_eq!(ids, expected);
    for tenant in listed {
        assert_eq!(tenant["schema_version"], 1, "{tenant}");
    }
    for id in &expected {
        let out: Value = serde_json::from_str(&ok(tenantdb(&data)
            .args(["sql", id, "SELECT count(*) FROM todos", "--json"])
            .output()
            .unwrap()))
        .unwrap();
        assert_eq!(out[0]["rows"], json!([[0]]), "{id}: {out}");
    }

    // Staging copies: only the killed process can have left any (at most one per delivery in
    // flight), none from the restarted server; once older than the grace period, opening the
    // data directory removes them.
    let leftovers = staging_files(&data);
    println!(
        "staging copies left by the killed server: {}",
        leftovers.len()
    );
    assert!(leftovers.len() <= SENDERS, "{leftovers:?}");
    for (path, pid) in &leftovers {
        assert_eq!(*pid, first_pid, "{}", path.display());
    }
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    for (path, _) in &leftovers {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    ok(tenantdb(&data)
        .args(["tenant", "list", "--json"])
        .output()
        .unwrap());
    assert_eq!(staging_files(&data), vec![]);
}
