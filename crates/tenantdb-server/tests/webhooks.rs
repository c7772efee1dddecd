//! `POST /webhooks/clerk` end to end: real HTTP on loopback, real files, and signatures made by
//! the official Standard Webhooks library (the `standardwebhooks` npm package, pinned in
//! `tests/clients/js/package-lock.json`), not by our own code.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Options, TestServer};
use serde_json::{Value, json};
use tenantdb::{TenantId, TenantState};

/// Two endpoint secrets (the server is configured with one, or both while rotating) and one the
/// server never saw.
const SECRET_A: &str = "whsec_dGVuYW50ZGItd2ViaG9vay10ZXN0LXNlY3JldC1BISE=";
const SECRET_B: &str = "whsec_dGVuYW50ZGItd2ViaG9vay10ZXN0LXNlY3JldC1CISE=";
const FOREIGN: &str = "whsec_c29tZS1vdGhlci1lbmRwb2ludC1zZWNyZXQtQ0NDQyE=";

/// The published Svix test vector.
const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TS: i64 = 1_614_265_330;
const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// ---------------------------------------------------------------------------------------------
// The signer: node + standardwebhooks.

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/js")
}

/// Signs deliveries with `tests/clients/js/sign-webhook.mjs`, in one node process:
/// (secret, msg id, timestamp, body) → the signature header value.
fn sign_all(requests: &[(&str, &str, i64, &str)]) -> Vec<String> {
    let js = js_dir();
    assert!(
        js.join("node_modules/standardwebhooks/package.json")
            .is_file(),
        "the pinned `standardwebhooks` npm package is not installed in {}: run the README's test \
         command, `scripts/test`, which installs it from the lockfile with `npm ci --prefix \
         tests/clients/js` before running cargo test",
        js.display()
    );
    let input: String = requests
        .iter()
        .map(|(secret, id, ts, body)| {
            format!(
                "{}\n",
                json!({"secret": secret, "id": id, "timestamp": ts, "body": body})
            )
        })
        .collect();
    let mut child = Command::new("node")
        .arg("sign-webhook.mjs")
        .arg("--batch")
        .current_dir(&js)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (Node.js 20+ is needed for these tests): {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sign-webhook.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), requests.len(), "one signature per request");
    for line in &lines {
        assert!(line.starts_with("v1,"), "{line}");
    }
    lines
}

fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    sign_all(&[(secret, id, ts, body)]).remove(0)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A Clerk-shaped event body.
fn event(kind: &str, user: &str) -> String {
    json!({
        "data": {"id": user, "object": "user", "email_addresses": [], "first_name": "Test"},
        "object": "event",
        "type": kind,
        "timestamp": 1_700_000_000_000_i64,
    })
    .to_string()
}

fn server(secrets: &[&str]) -> TestServer {
    let mut options = Options::default();
    options.server.webhook_secrets = secrets.iter().map(|s| s.to_string()).collect();
    // Only webhooks create tenants here.
    options.server.lazy_provisioning = false;
    TestServer::with(options)
}

/// Request headers as (name, value).
type Headers = Vec<(String, String)>;

/// Headers as (name, value) with the given name prefix (`svix` or `webhook`).
fn headers(prefix: &str, id: &str, ts: i64, sig: &str) -> Headers {
    vec![
        (format!("{prefix}-id"), id.to_string()),
        (format!("{prefix}-timestamp"), ts.to_string()),
        (format!("{prefix}-signature"), sig.to_string()),
    ]
}

fn deliver_with(s: &TestServer, headers: &[(String, String)], body: &str) -> (u16, Value) {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    s.post_raw("/webhooks/clerk", None, &refs, body.as_bytes())
}

fn deliver(s: &TestServer, id: &str, ts: i64, sig: &str, body: &str) -> (u16, Value) {
    deliver_with(s, &headers("svix", id, ts, sig), body)
}

/// Signs with `secret` and delivers with svix-* headers.
fn send(s: &TestServer, secret: &str, id: &str, body: &str) -> (u16, Value) {
    let ts = now();
    deliver(s, id, ts, &sign(secret, id, ts, body), body)
}

fn tenants(s: &TestServer) -> Vec<String> {
    s.fleet
        .list_tenants(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.record.id.to_string())
        .collect()
}

/// Every catalog row, tombstones included: rejected deliveries must not even add a tombstone.
fn catalog_rows(s: &TestServer) -> BTreeMap<String, String> {
    s.fleet
        .catalog()
        .all_tenants()
        .unwrap()
        .into_iter()
        .map(|r| (r.id.to_string(), r.state.as_str().to_string()))
        .collect()
}

fn seen(s: &TestServer, msg_id: &str) -> bool {
    s.fleet.catalog().delivery_seen(msg_id).unwrap()
}

fn state(s: &TestServer, id: &str) -> Option<TenantState> {
    s.fleet
        .catalog()
        .tenant(&TenantId::new(id).unwrap())
        .unwrap()
        .map(|r| r.state)
}

#[track_caller]
fn assert_status(got: (u16, Value), status: u16, expected: &str) -> Value {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["status"], expected, "{}", got.1);
    got.1
}

#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

// ---------------------------------------------------------------------------------------------
// The signer itself, against the published vector.

#[test]
fn the_npm_signer_reproduces_the_svix_test_vector() {
    assert_eq!(
        sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY),
        VECTOR_SIG
    );
    // And our own HMAC agrees with both.
    assert_eq!(
        tenantdb_server::webhook::sign(
            VECTOR_SECRET,
            VECTOR_ID,
            &VECTOR_TS.to_string(),
            VECTOR_BODY.as_bytes()
        )
        .as_deref(),
        Some(VECTOR_SIG)
    );
}

#[test]
fn the_svix_test_vector_is_refused_over_http_as_too_old() {
    let s = server(&[VECTOR_SECRET]);
    let got = deliver(&s, VECTOR_ID, VECTOR_TS, VECTOR_SIG, VECTOR_BODY);
    assert_error(&got, 401, "WEBHOOK_SIGNATURE");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("old"), "{message}");
    assert!(!seen(&s, VECTOR_ID));
    assert!(catalog_rows(&s).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Deliveries that are acted on.

#[test]
fn a_signup_creates_the_tenant_at_the_latest_schema() {
    let s = server(&[SECRET_A]);
    let body = event("user.created", "user_alice");
    let got = assert_status(send(&s, SECRET_A, "msg_alice_1", &body), 200, "created");
    assert_eq!(got["tenant"], "user_alice");
    assert_eq!(tenants(&s), ["user_alice"]);
    let info = s
        .fleet
        .tenant(&TenantId::new("user_alice").unwrap())
        .unwrap();
    assert_eq!(info.record.schema_version, s.fleet.latest_version());
    assert!(s.fleet.latest_version() >= 1);
    // The tenant serves its user at that schema.
    let count = s.exec(
        &s.token("user_alice"),
        "SELECT count(*) FROM todos",
        json!([]),
    );
    assert_eq!(common::rows(&count), vec![vec![json!(0)]]);
    // Recorded, and audited with the message id.
    assert!(seen(&s, "msg_alice_1"));
    let audit = s.fleet.catalog().admin_audit(0, 1000).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "webhook.user.created"
            && e.actor == "webhook:clerk"
            && e.tenant.as_deref() == Some("user_alice")
            && e.detail
                .as_deref()
                .is_some_and(|d| d.contains("msg_alice_1"))),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.action == "tenant.create" && e.actor == "webhook:clerk"),
        "{audit:?}"
    );
}

#[test]
fn the_same_delivery_five_times_creates_one_tenant() {
    let s = server(&[SECRET_A]);
    let body = event("user.created", "user_bob");
    let ts = now();
    let sig = sign(SECRET_A, "msg_bob", ts, &body);
    let before = tenantdb_server::webhook::snapshot();
    assert_status(deliver(&s, "msg_bob", ts, &sig, &body), 200, "created");
    for _ in 0..4 {
        let got = deliver(&s, "msg_bob", ts, &sig, &body);
        assert_eq!(got, (200, json!({"status": "duplicate"})));
    }
    assert_eq!(tenants(&s), ["user_bob"]);
    let after = tenantdb_server::webhook::snapshot();
    assert!(after.duplicate >= before.duplicate + 4, "{after:?}");
    assert!(after.verified >= before.verified + 5, "{after:?}");
}

#[test]
fn a_hundred_concurrent_deliveries_of_twenty_signups_make_twenty_tenants() {
    let s = server(&[SECRET_A]);
    let ts = now();
    let mut plan: Vec<(String, String, String)> = Vec::new(); // (user, msg id, body)
    for user in 0..20 {
        for copy in 0..5 {
            let id = format!("user_c{user:02}");
            plan.push((
                id.clone(),
                format!("msg_c{user:02}_{copy}"),
                event("user.created", &id),
            ));
        }
    }
    let requests: Vec<(&str, &str, i64, &str)> = plan
        .iter()
        .map(|(_, msg, body)| (SECRET_A, msg.as_str(), ts, body.as_str()))
        .collect();
    let sigs = sign_all(&requests);
    let barrier = Barrier::new(plan.len());
    let results: Vec<(String, (u16, Value))> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .zip(&sigs)
            .map(|((user, msg, body), sig)| {
                let (s, barrier) = (&s, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    (user.clone(), deliver(s, msg, ts, sig, body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for (user, (status, body)) in &results {
        assert_eq!(*status, 200, "{user}: {body}");
        match body["status"].as_str() {
            Some("created") => *created.entry(user.clone()).or_default() += 1,
            Some("exists") => {}
            other => panic!("{user}: unexpected status {other:?} in {body}"),
        }
    }
    let expected: Vec<String> = (0..20).map(|u| format!("user_c{u:02}")).collect();
    assert_eq!(tenants(&s), expected);
    assert_eq!(created.len(), 20, "{created:?}");
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    for (_, msg, _) in &plan {
        assert!(seen(&s, msg), "{msg}");
    }
    for id in &expected {
        let info = s
            .fleet
            .tenant(&TenantId::new(id.as_str()).unwrap())
            .unwrap();
        assert_eq!(info.record.schema_version, s.fleet.latest_version());
    }
}

#[test]
fn user_deleted_moves_the_tenant_to_trash() {
    let s = server(&[SECRET_A]);
    assert_status(
        send(&s, SECRET_A, "msg_d1", &event("user.created", "user_dave")),
        200,
        "created",
    );
    assert_status(
        send(&s, SECRET_A, "msg_d2", &event("user.deleted", "user_dave")),
        200,
        "deleted",
    );
    assert!(tenants(&s).is_empty());
    let record = s
        .fleet
        .catalog()
        .tenant(&TenantId::new("user_dave").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(record.state, TenantState::Deleted);
    let trash = s
        .fleet
        .layout()
        .trash_dir()
        .join(record.trash_file.unwrap());
    assert!(trash.is_file(), "{}", trash.display());
    // Deleted again (a new message id): nothing more to do.
    assert_status(
        send(&s, SECRET_A, "msg_d3", &event("user.deleted", "user_dave")),
        200,
        "already deleted",
    );
    // A late or replayed signup (new message id) does not bring the user back.
    assert_status(
        send(&s, SECRET_A, "msg_d4", &event("user.created", "user_dave")),
        200,
        "ignored: user was deleted",
    );
    assert!(tenants(&s).is_empty());
    assert_eq!(state(&s, "user_dave"), Some(TenantState::Deleted));
    let audit = s.fleet.catalog().admin_audit(0, 1000).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "webhook.user.deleted"
            && e.detail.as_deref().is_some_and(|d| d.contains("msg_d2"))),
        "{audit:?}"
    );
}

#[test]
fn user_deleted_before_user_created_never_creates_the_tenant() {
    let s = server(&[SECRET_A]);
    assert_status(
        send(&s, SECRET_A, "msg_e2", &event("user.deleted", "user_erin")),
        200,
        "already deleted",
    );
    assert_status(
        send(&s, SECRET_A, "msg_e1", &event("user.created", "user_erin")),
        200,
        "ignored: user was deleted",
    );
    assert!(tenants(&s).is_empty());
    assert!(
        s.fleet
            .connect(&TenantId::new("user_erin").unwrap())
            .is_err()
    );
    let file = s
        .fleet
        .layout()
        .tenant_db(&TenantId::new("user_erin").unwrap());
    assert!(!file.exists(), "{}", file.display());
    assert!(seen(&s, "msg_e1") && seen(&s, "msg_e2"));
}

#[test]
fn webhook_header_names_are_accepted() {
    let s = server(&[SECRET_A]);
    let body = event("user.created", "user_frank");
    let ts = now();
    let sig = sign(SECRET_A, "msg_f", ts, &body);
    assert_status(
        deliver_with(&s, &headers("webhook", "msg_f", ts, &sig), &body),
        200,
        "created",
    );
    // The same message under the other header names is the same delivery.
    assert_eq!(
        deliver(&s, "msg_f", ts, &sig, &body),
        (200, json!({"status": "duplicate"}))
    );
    assert_eq!(tenants(&s), ["user_frank"]);
}

#[test]
fn any_signature_in_the_header_may_match() {
    let s = server(&[SECRET_A]);
    let body = event("user.created", "user_gina");
    let ts = now();
    let sigs = sign_all(&[
        (FOREIGN, "msg_g", ts, &body),
        (
            SECRET_A,
            "msg_g",
            ts,
            r#"{"type":"user.created","data":{"id":"other"}}"#,
        ),
        (SECRET_A, "msg_g", ts, &body),
    ]);
    let valid = &sigs[2];
    let header = format!("{} {} v2,{} v1, {}", sigs[0], sigs[1], &valid[3..], valid);
    assert_status(deliver(&s, "msg_g", ts, &header, &body), 200, "created");
    assert_eq!(tenants(&s), ["user_gina"]);
}

#[test]
fn several_secrets_while_rotating() {
    // The new secret configured as bare base64 (no whsec_ prefix) works too.
    let bare_b = SECRET_B.strip_prefix("whsec_").unwrap();
    let s = server(&[SECRET_A, bare_b]);
    assert_status(
        send(&s, SECRET_A, "msg_r1", &event("user.created", "user_old")),
        200,
        "created",
    );
    assert_status(
        send(&s, SECRET_B, "msg_r2", &event("user.created", "user_new")),
        200,
        "created",
    );
    let got = send(
        &s,
        FOREIGN,
        "msg_r3",
        &event("user.created", "user_foreign"),
    );
    assert_error(&got, 401, "WEBHOOK_SIGNATURE");
    assert_eq!(tenants(&s), ["user_new", "user_old"]);
}

#[test]
fn unknown_event_types_are_acknowledged_and_recorded() {
    let s = server(&[SECRET_A]);
    let body = json!({"type": "session.created", "object": "event", "data": {"id": "sess_1", "user_id": "user_x"}}).to_string();
    let ts = now();
    let sig = sign(SECRET_A, "msg_u", ts, &body);
    assert_status(
        deliver(&s, "msg_u", ts, &sig, &body),
        200,
        "ignored: event type not handled",
    );
    assert!(seen(&s, "msg_u"));
    assert_eq!(
        deliver(&s, "msg_u", ts, &sig, &body),
        (200, json!({"status": "duplicate"}))
    );
    // user.* events this route does not act on are acknowledged the same way.
    assert_status(
        send(&s, SECRET_A, "msg_u2", &event("user.updated", "user_x")),
        200,
        "ignored: event type not handled",
    );
    assert!(catalog_rows(&s).is_empty());
    let audit = s.fleet.catalog().admin_audit(0, 1000).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "webhook.session.created"
            && e.detail.as_deref().is_some_and(|d| d.contains("msg_u"))),
        "{audit:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Deliveries that are refused.

#[test]
fn bad_signatures_are_refused_and_change_nothing() {
    let s = server(&[SECRET_A]);
    // A live tenant a forged user.deleted would remove, and rows to compare against.
    assert_status(
        send(
            &s,
            SECRET_A,
            "msg_keep",
            &event("user.created", "user_keep"),
        ),
        200,
        "created",
    );
    let rows_before = catalog_rows(&s);
    let tenants_before = tenants(&s);
    let before = tenantdb_server::webhook::snapshot();

    let create = event("user.created", "user_mallory");
    let delete = event("user.deleted", "user_keep");
    let ts = now();
    let old = ts - 6 * 60;
    let ahead = ts + 6 * 60;
    let sigs = sign_all(&[
        (SECRET_A, "msg_x", ts, &create),    // 0: valid for create
        (FOREIGN, "msg_x", ts, &create),     // 1: wrong secret
        (SECRET_A, "msg_x", ts, &delete),    // 2: valid for delete (a different body)
        (SECRET_A, "msg_x", old, &create),   // 3: correctly signed, 6 minutes old
        (SECRET_A, "msg_x", ahead, &create), // 4: correctly signed, 6 minutes ahead
        (SECRET_A, "msg_x", old, &delete),   // 5
        (SECRET_A, "msg_x", ahead, &delete), // 6
        (FOREIGN, "msg_x", ts, &delete),     // 7
    ]);
    let valid = &sigs[0];
    let b64 = &valid[3..];
    let raw = STANDARD.decode(b64).unwrap();
    let delete_valid = &sigs[2];

    let h = |ts: i64, sig: &str| headers("svix", "msg_x", ts, sig);
    let without = |name: &str| -> Headers {
        h(ts, valid)
            .into_iter()
            .filter(|(k, _)| k != name)
            .collect()
    };
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("no headers at all", vec![], &create),
        ("no svix-id", without("svix-id"), &create),
        ("no svix-timestamp", without("svix-timestamp"), &create),
        ("no svix-signature", without("svix-signature"), &create),
        ("empty signature header", h(ts, ""), &create),
        ("wrong secret", h(ts, &sigs[1]), &create),
        ("wrong secret, delete", h(ts, &sigs[7]), &delete),
        ("only `v1,`", h(ts, "v1,"), &create),
        ("only `v1,` entries", h(ts, "v1, v1, v1,"), &create),
        ("no version", h(ts, b64), &create),
        ("another version", h(ts, &format!("v2,{b64}")), &create),
        (
            "truncated text",
            h(ts, &format!("v1,{}", &b64[..b64.len() - 4])),
            &create,
        ),
        (
            "truncated bytes",
            h(ts, &format!("v1,{}", STANDARD.encode(&raw[..31]))),
            &create,
        ),
        (
            "truncated to 16 bytes",
            h(ts, &format!("v1,{}", STANDARD.encode(&raw[..16]))),
            &create,
        ),
        ("padded text", h(ts, &format!("v1,{b64}AAAA")), &create),
        ("padded with =", h(ts, &format!("v1,{b64}=")), &create),
        (
            "padded bytes",
            h(
                ts,
                &format!("v1,{}", STANDARD.encode([&raw[..], &[0u8]].concat())),
            ),
            &create,
        ),
        (
            "unpadded base64",
            h(ts, &format!("v1,{}", b64.trim_end_matches('='))),
            &create,
        ),
        (
            "signature of a different body",
            h(ts, delete_valid),
            &create,
        ),
        ("body swapped for a delete", h(ts, valid), &delete),
        ("timestamp 6 minutes old", h(old, &sigs[3]), &create),
        ("timestamp 6 minutes ahead", h(ahead, &sigs[4]), &create),
        ("delete 6 minutes old", h(old, &sigs[5]), &delete),
        ("delete 6 minutes ahead", h(ahead, &sigs[6]), &delete),
        (
            "valid signature, timestamp moved",
            h(ts + 1, valid),
            &create,
        ),
        (
            "valid signature, other message id",
            headers("svix", "msg_y", ts, valid),
            &create,
        ),
        (
            "timestamp not a number",
            h(ts, valid)
                .into_iter()
                .map(|(k, v)| {
                    if k == "svix-timestamp" {
                        (k, "soon".into())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            &create,
        ),
        (
            "webhook-* names, wrong secret",
            headers("webhook", "msg_x", ts, &sigs[1]),
            &create,
        ),
    ];
    for (name, headers, body) in &cases {
        let got = deliver_with(&s, headers, body);
        assert_error(&got, 401, "WEBHOOK_SIGNATURE");
        assert_eq!(tenants(&s), tenants_before, "{name}");
        assert_eq!(catalog_rows(&s), rows_before, "{name}");
        assert!(!seen(&s, "msg_x") && !seen(&s, "msg_y"), "{name}");
    }
    assert!(
        s.fleet
            .connect(&TenantId::new("user_keep").unwrap())
            .is_ok()
    );
    let after = tenantdb_server::webhook::snapshot();
    assert!(
        after.rejected_signature >= before.rejected_signature + cases.len() as u64,
        "{before:?} -> {after:?}"
    );

    // The genuine delivery still goes through afterwards.
    assert_status(deliver(&s, "msg_x", ts, valid, &create), 200, "created");
    assert_eq!(tenants(&s), ["user_keep", "user_mallory"]);
}

#[test]
fn a_server_without_a_webhook_secret_refuses_everything() {
    let s = server(&[]);
    let got = send(&s, SECRET_A, "msg_n", &event("user.created", "user_nobody"));
    assert_error(&got, 401, "WEBHOOK_SIGNATURE");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("no webhook secret"), "{message}");
    assert!(catalog_rows(&s).is_empty());
    assert!(!seen(&s, "msg_n"));
}

#[test]
fn bad_payloads_are_refused_and_a_corrected_delivery_still_works() {
    let s = server(&[SECRET_A]);
    let before = tenantdb_server::webhook::snapshot();
    let cases: [(&str, String, &str); 7] = [
        ("not JSON", "this is not json".into(), "JSON"),
        ("not an object", "[1,2,3]".into(), "object"),
        (
            "no type",
            json!({"data": {"id": "user_p"}}).to_string(),
            "type",
        ),
        (
            "no data",
            json!({"type": "user.created"}).to_string(),
            "data",
        ),
        (
            "no data.id",
            json!({"type": "user.created", "data": {"object": "user"}}).to_string(),
            "data.id",
        ),
        (
            "data.id not a string",
            event("user.created", "x").replace("\"x\"", "42"),
            "data.id",
        ),
        ("data.id ../x", event("user.created", "../x"), "tenant id"),
    ];
    for (name, body, mentions) in &cases {
        // Every case under the same message id: refusals are not recorded.
        let got = send(&s, SECRET_A, "msg_p", body);
        assert_error(&got, 400, "WEBHOOK_PAYLOAD");
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{name}: {message}");
        assert!(catalog_rows(&s).is_empty(), "{name}");
        assert!(!seen(&s, "msg_p"), "{name}");
    }
    // No file appeared anywhere for the path-like id either.
    assert!(!s.dir.path().join("data/x.db").exists());
    let after = tenantdb_server::webhook::snapshot();
    assert!(
        after.rejected_payload >= before.rejected_payload + cases.len() as u64,
        "{before:?} -> {after:?}"
    );
    // The corrected delivery, with the same message id, works; so does a new one.
    assert_status(
        send(&s, SECRET_A, "msg_p", &event("user.created", "user_p")),
        200,
        "created",
    );
    assert_status(
        send(&s, SECRET_A, "msg_q", &event("user.created", "user_q")),
        200,
        "created",
    );
    assert_eq!(tenants(&s), ["user_p", "user_q"]);
}
