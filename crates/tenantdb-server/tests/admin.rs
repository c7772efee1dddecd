//! The admin API (DESIGN.md 5.2) through real HTTP: tenant lifecycle, paging, export while
//! writes continue, trash retention, the admin audit and migrations.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, Options, TestServer, rows, text};
use serde_json::{Value, json};
use tenantdb::{TenantId, TenantState};

fn id(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn create(s: &TestServer, tenant: &str) -> (u16, Value) {
    s.post("/admin/tenants", Some(ADMIN), &[], &json!({"id": tenant}))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// The files in the data directory's trash whose names start with `tenant.`.
fn trash_files(s: &TestServer, tenant: &str) -> Vec<String> {
    let prefix = format!("{tenant}.");
    std::fs::read_dir(s.dir.path().join("data/trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn audit_entries(s: &TestServer) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = s.get_json(
            &format!("/admin/audit?after={after}&limit=1000"),
            Some(ADMIN),
        );
        assert_eq!(status, 200, "{body}");
        entries.extend(body["entries"].as_array().unwrap().iter().cloned());
        match body["next"].as_i64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// Every admin route, with a body where it takes one.
fn admin_routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        (
            "POST",
            "/admin/tenants",
            Some(json!({"id": "intruder_made"})),
        ),
        ("GET", "/admin/tenants", None),
        ("GET", "/admin/tenants?limit=5", None),
        ("GET", "/admin/tenants/victim", None),
        ("DELETE", "/admin/tenants/victim", None),
        ("DELETE", "/admin/tenants/victim?purge=true", None),
        ("POST", "/admin/tenants/victim/restore", None),
        ("GET", "/admin/tenants/victim/export", None),
        ("GET", "/admin/audit", None),
        ("GET", "/admin/migrations", None),
        (
            "POST",
            "/admin/migrations/apply",
            Some(json!({"dry_run": false})),
        ),
    ]
}

#[test]
fn admin_routes_refuse_missing_wrong_and_user_tokens() {
    let s = TestServer::start();
    assert_eq!(create(&s, "victim").0, 201);
    let user = s.token("mallory");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "mallory", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-not-the-server"),
    )
    .unwrap();

    for (method, path, body) in admin_routes() {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let call = |token: Option<&str>| s.call(method, path, token, bytes.as_deref());

        let none = call(None);
        assert_eq!(none.status, 401, "{method} {path} without a token");
        assert_eq!(error_code(&none.json()), "AUTH_MISSING");

        for wrong in ["wrong-admin-token", "admin-token-for-tests-", &forged] {
            let reply = call(Some(wrong));
            assert_eq!(reply.status, 401, "{method} {path} with a wrong token");
            assert!(
                reply.json()["error"]["code"].is_string(),
                "{}",
                reply.json()
            );
        }

        let reply = call(Some(&user));
        assert_eq!(reply.status, 403, "{method} {path} with a user token");
        if bytes.is_some() {
            // The unread body means the connection is not reused.
            assert_eq!(reply.header("connection"), Some("close"));
        }
        assert_eq!(
            reply.json(),
            json!({"error": {"code": "FORBIDDEN", "message": "admin token required"}})
        );

        // A user token naming another tenant in x-tenant is still refused with 403.
        let reply = s.call_with_headers(
            method,
            path,
            Some(&user),
            &[("x-tenant", "victim")],
            bytes.as_deref(),
        );
        assert_eq!(
            reply.status, 403,
            "{method} {path} with a user token and x-tenant"
        );
    }

    // Nothing changed.
    let victim = s.fleet.tenant(&id("victim")).unwrap();
    assert_eq!(victim.record.state, TenantState::Active);
    assert!(
        s.fleet
            .catalog()
            .tenant(&id("intruder_made"))
            .unwrap()
            .is_none()
    );
    assert!(trash_files(&s, "victim").is_empty());

    // The misuse of a user token is in the admin audit, without the token.
    let entries = audit_entries(&s);
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "admin.denied")
        .collect();
    assert!(!denied.is_empty(), "{entries:?}");
    for e in &denied {
        assert_eq!(e["actor"], "user:mallory");
        assert_eq!(e["tenant"], "mallory");
        assert!(e["detail"].as_str().unwrap().contains("/admin/"), "{e}");
    }
    assert_eq!(denied[0]["detail"], "POST /admin/tenants");
    let all = serde_json::to_string(&entries).unwrap();
    assert!(!all.contains(&user), "the audit holds no token");
    assert!(!all.contains(&forged));
    assert!(!all.contains("wrong-admin-token"));
    // Missing and wrong tokens are not attributable to anyone and are not audited.
    assert!(
        entries
            .iter()
            .all(|e| e["action"] != "admin.denied" || e["actor"] == "user:mallory")
    );
}

#[test]
fn create_and_get_tenants() {
    let s = TestServer::start();
    let before = now();
    let reply = s.call(
        "POST",
        "/admin/tenants",
        Some(ADMIN),
        Some(br#"{"id":"user_1"}"#),
    );
    assert_eq!(reply.status, 201, "{}", reply.json());
    assert_eq!(reply.header("location"), Some("/admin/tenants/user_1"));
    let created = reply.json();
    assert_eq!(created["id"], "user_1");
    assert_eq!(created["state"], "active");
    assert_eq!(created["schema_version"], 1);
    assert!(created["size_bytes"].as_u64().unwrap() > 0, "{created}");
    let created_at = created["created_at"].as_i64().unwrap();
    assert!(created_at >= before && created_at <= now(), "unix seconds");
    assert_eq!(created["last_active_at"], Value::Null);

    let (status, got) = s.get_json("/admin/tenants/user_1", Some(ADMIN));
    assert_eq!(status, 200);
    for field in [
        "id",
        "state",
        "schema_version",
        "created_at",
        "last_active_at",
    ] {
        assert_eq!(got[field], created[field], "{field}");
    }

    // The tenant serves its user.
    let t = s.token("user_1");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('one')", json!([]));
    let (_, got) = s.get_json("/admin/tenants/user_1", Some(ADMIN));
    assert!(got["size_bytes"].as_u64().unwrap() > 0);

    let (status, body) = create(&s, "user_1");
    assert_eq!(status, 409);
    assert_eq!(error_code(&body), "TENANT_EXISTS");

    for bad in ["../etc", "a.b", "", "-x", "a/b", "x%2e"] {
        let (status, body) = create(&s, bad);
        assert_eq!(status, 400, "{bad:?}");
        assert_eq!(error_code(&body), "INVALID_TENANT_ID", "{bad:?}: {body}");
    }
    for body in [
        &b"not json"[..],
        b"",
        b"{}",
        br#"{"id":5}"#,
        br#"{"id":null}"#,
        br#"{"id":"ok_id","extra":1}"#,
        b"[\"user_2\"]",
    ] {
        let reply = s.call("POST", "/admin/tenants", Some(ADMIN), Some(body));
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(r#"{"id":"user_1"}"#), "{message}");
    }
    assert!(s.fleet.catalog().tenant(&id("ok_id")).unwrap().is_none());

    let (status, body) = s.get_json("/admin/tenants/nobody", Some(ADMIN));
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "TENANT_NOT_FOUND");
    let (status, body) = s.get_json("/admin/tenants/a.b", Some(ADMIN));
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "INVALID_TENANT_ID");
    let (status, _) = s.get_json("/admin/tenants/a%2Fb", Some(ADMIN));
    assert_eq!(status, 400);
}

#[test]
fn list_pages_through_every_tenant_once_in_order() {
    let s = TestServer::start();
    let mut expected = BTreeSet::new();
    for i in 0..250 {
        // Ids whose order is not their creation order.
        let name = format!("u{:03}", (i * 7919) % 1000);
        s.fleet.create_tenant(&id(&name), "test").unwrap();
        expected.insert(name);
    }
    let page_through = |limit: Option<usize>| -> (Vec<String>, Vec<usize>) {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = "/admin/tenants?".to_owned();
            if let Some(l) = limit {
                path += &format!("limit={l}&");
            }
            if let Some(a) = &after {
                path += &format!("after={a}");
            }
            let (status, body) = s.get_json(&path, Some(ADMIN));
            assert_eq!(status, 200, "{body}");
            let page = body["tenants"].as_array().unwrap();
            sizes.push(page.len());
            for t in page {
                assert_eq!(t["state"], "active");
                for field in ["schema_version", "size_bytes", "created_at"] {
                    assert!(t[field].is_number(), "{field}: {t}");
                }
                assert!(t.get("last_active_at").is_some());
                seen.push(t["id"].as_str().unwrap().to_owned());
            }
            match &body["next"] {
                Value::Null => return (seen, sizes),
                Value::String(next) => {
                    assert_eq!(Some(next), seen.last(), "next is the page's last id");
                    after = Some(next.clone());
                }
                other => panic!("next: {other}"),
            }
        }
    };
    let expected: Vec<String> = expected.into_iter().collect();

    let (seen, sizes) = page_through(Some(100));
    assert_eq!(seen, expected, "every tenant once, in id order");
    assert_eq!(sizes, vec![100, 100, 50]);

    let (seen, sizes) = page_through(None);
    assert_eq!(seen, expected);
    assert_eq!(sizes, vec![100, 100, 50], "limit defaults to 100");

    // A page that ends exactly at the last tenant: one more, empty page with next null.
    let (seen, sizes) = page_through(Some(125));
    assert_eq!(seen, expected);
    assert_eq!(sizes, vec![125, 125, 0]);

    let (seen, sizes) = page_through(Some(1000));
    assert_eq!(seen, expected);
    assert_eq!(sizes, vec![250]);

    // Deleted tenants are not listed.
    s.fleet
        .delete_tenant(&id(&expected[0]), false, "test")
        .unwrap();
    let (_, body) = s.get_json("/admin/tenants?limit=1", Some(ADMIN));
    assert_eq!(body["tenants"][0]["id"], expected[1].as_str());

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=",
        "after=a.b",
        "after=..%2Fx",
        "lmit=5",
        "limit=5&limit=6",
    ] {
        let (status, body) = s.get_json(&format!("/admin/tenants?{bad}"), Some(ADMIN));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 10,
            "a clear message: {body}"
        );
    }
    let (_, body) = s.get_json("/admin/tenants?limit=0", Some(ADMIN));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from 1 to 1000"),
        "{body}"
    );
}

#[test]
fn paging_while_tenants_are_created_sees_every_earlier_tenant_once() {
    let s = Arc::new(TestServer::start());
    let mut before = BTreeSet::new();
    for i in 0..300 {
        let name = format!("p{i:03}");
        s.fleet.create_tenant(&id(&name), "test").unwrap();
        before.insert(name);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let creator = {
        let (s, stop, created) = (Arc::clone(&s), Arc::clone(&stop), Arc::clone(&created));
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // New ids land before, among and after the pages already read.
                let name = format!("p{:03}_new{n}", (n * 37) % 300);
                let (status, body) = create(&s, &name);
                assert_eq!(status, 201, "{body}");
                created.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    while created.load(Ordering::Relaxed) < 5 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (status, body) = s.get_json(
            &format!("/admin/tenants?limit=20&after={after}"),
            Some(ADMIN),
        );
        assert_eq!(status, 200, "{body}");
        for t in body["tenants"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_owned());
        }
        // Let at least one creation land between any two pages.
        let mark = created.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while created.load(Ordering::Relaxed) == mark {
            assert!(Instant::now() < deadline, "the creator stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        pages += 1;
        match body["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    creator.join().unwrap();
    assert!(pages >= 15, "{pages} pages");
    assert!(
        created.load(Ordering::Relaxed) >= pages,
        "creations ran between the pages"
    );

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: no tenant twice"
    );
    for name in &before {
        assert_eq!(
            seen.iter().filter(|s| *s == name).count(),
            1,
            "{name} seen exactly once"
        );
    }
}

#[test]
fn export_is_a_consistent_snapshot_while_writes_continue() {
    let s = Arc::new(TestServer::start());
    assert_eq!(create(&s, "writer").0, 201);
    let token = s.token("writer");
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, acked, stop, token) = (
            Arc::clone(&s),
            Arc::clone(&acked),
            Arc::clone(&stop),
            token.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                s.exec(
                    &token,
                    "INSERT INTO todos (title, data) VALUES (?, randomblob(2000))",
                    json!([text(&format!("row{n}"))]),
                );
                n += 1;
                acked.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    while acked.load(Ordering::SeqCst) < 100 {
        std::thread::sleep(Duration::from_millis(5));
    }

    // Rows row0..row{before-1} were acknowledged before the export request started.
    let before = acked.load(Ordering::SeqCst);
    let reply = s.call("GET", "/admin/tenants/writer/export", Some(ADMIN), None);
    let during = acked.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let total = writer.join().unwrap();
    assert!(total > during, "writes went on after the export");

    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.sqlite3")
    );
    assert_eq!(
        reply.header("content-disposition"),
        Some(r#"attachment; filename="writer.sqlite""#)
    );
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert!(reply.body.starts_with(b"SQLite format 3\0"));

    let file = s.dir.path().join("downloaded.sqlite");
    std::fs::write(&file, &reply.body).unwrap();
    let conn = rusqlite::Connection::open(&file).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let titles: BTreeSet<String> = conn
        .prepare("SELECT title FROM todos")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for n in 0..before {
        assert!(
            titles.contains(&format!("row{n}")),
            "row{n} acknowledged before the export"
        );
    }
    assert!(titles.len() >= before && titles.len() <= total);
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);

    // The tenant still serves, and no export file is left in the data directory.
    let count = rows(&s.exec(&token, "SELECT count(*) FROM todos", json!([])));
    assert_eq!(count, vec![vec![json!(total)]]);
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path().join("data/exports"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (status, body) = s.get_json("/admin/tenants/nobody/export", Some(ADMIN));
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), "TENANT_NOT_FOUND");
    let (status, _) = s.delete("/admin/tenants/writer", Some(ADMIN));
    assert_eq!(status, 200);
    let (status, _) = s.get_json("/admin/tenants/writer/export", Some(ADMIN));
    assert_eq!(status, 404, "a deleted tenant is not exported");
    let (status, _) = s.get_json("/admin/tenants/a.b/export", Some(ADMIN));
    assert_eq!(status, 400);
}

#[test]
fn delete_to_trash_and_restore_keeps_the_rows() {
    let s = TestServer::start();
    assert_eq!(create(&s, "leaver").0, 201);
    let t = s.token("leaver");
    for title in ["a", "b", "c"] {
        s.exec(
            &t,
            "INSERT INTO todos (title) VALUES (?)",
            json!([text(title)]),
        );
    }
    let select = "SELECT title FROM todos ORDER BY id";
    let rows_before = rows(&s.exec(&t, select, json!([])));

    let (status, body) = s.delete("/admin/tenants/leaver?purge=yes", Some(ADMIN));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        s.fleet.tenant(&id("leaver")).unwrap().record.id.as_str(),
        "leaver"
    );

    let (status, body) = s.delete("/admin/tenants/leaver", Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "leaver");
    assert_eq!(body["state"], "deleted");
    let deleted_at = body["deleted_at"].as_i64().unwrap();
    assert_eq!(
        body["restorable_until"].as_i64().unwrap(),
        deleted_at + 7 * 86_400
    );
    assert_eq!(trash_files(&s, "leaver").len(), 1);
    let (status, _) = s.get_json("/admin/tenants/leaver", Some(ADMIN));
    assert_eq!(status, 404);
    let (status, _) = s.get_json("/admin/tenants", Some(ADMIN));
    assert_eq!(status, 200);
    let (status, body) = s.delete("/admin/tenants/leaver", Some(ADMIN));
    assert_eq!(status, 404, "already deleted: {body}");
    // The user's token does not bring it back.
    let (status, _) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "SELECT 1"}}]),
    );
    assert_eq!(status, 404);

    let (status, body) = s.post(
        "/admin/tenants/leaver/restore",
        Some(ADMIN),
        &[],
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "leaver");
    assert_eq!(body["state"], "active");
    assert_eq!(body["schema_version"], 1);
    assert!(trash_files(&s, "leaver").is_empty());
    assert_eq!(rows(&s.exec(&t, select, json!([]))), rows_before);

    let (status, body) = s.post_raw("/admin/tenants/leaver/restore", Some(ADMIN), &[], b"");
    assert_eq!(status, 409, "a live tenant: {body}");
    let (status, body) = s.post_raw("/admin/tenants/nobody/restore", Some(ADMIN), &[], b"");
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "NOTHING_TO_RESTORE");
    let (status, body) = s.delete("/admin/tenants/nobody", Some(ADMIN));
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "TENANT_NOT_FOUND");
    let (status, body) = s.delete("/admin/tenants/a.b", Some(ADMIN));
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "INVALID_TENANT_ID");
}

#[test]
fn purge_removes_the_files_for_good() {
    let s = TestServer::start();
    for tenant in ["gone_now", "gone_later"] {
        assert_eq!(create(&s, tenant).0, 201);
        s.exec(
            &s.token(tenant),
            "INSERT INTO todos (title) VALUES ('x')",
            json!([]),
        );
    }

    // A live tenant purged at once.
    let (status, body) = s.delete("/admin/tenants/gone_now?purge=true", Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": "gone_now", "state": "purged"}));
    assert!(trash_files(&s, "gone_now").is_empty());
    assert!(!s.fleet.layout().tenant_db(&id("gone_now")).exists());

    // A tenant in trash purged later.
    assert_eq!(s.delete("/admin/tenants/gone_later", Some(ADMIN)).0, 200);
    assert_eq!(trash_files(&s, "gone_later").len(), 1);
    let (status, body) = s.delete("/admin/tenants/gone_later?purge=true", Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "purged");
    assert!(trash_files(&s, "gone_later").is_empty());

    for tenant in ["gone_now", "gone_later"] {
        let (status, _) = s.get_json(&format!("/admin/tenants/{tenant}"), Some(ADMIN));
        assert_eq!(status, 404);
        let (status, body) = s.post_raw(
            &format!("/admin/tenants/{tenant}/restore"),
            Some(ADMIN),
            &[],
            b"",
        );
        assert_eq!(status, 404);
        assert_eq!(error_code(&body), "NOTHING_TO_RESTORE");
        let (status, _) = s.delete(&format!("/admin/tenants/{tenant}?purge=true"), Some(ADMIN));
        assert_eq!(status, 404, "nothing left to purge");
        assert_eq!(
            s.fleet
                .catalog()
                .tenant(&id(tenant))
                .unwrap()
                .unwrap()
                .state,
            TenantState::Purged
        );
    }

    // An admin may create the id again: a new, empty tenant.
    assert_eq!(create(&s, "gone_now").0, 201);
    let count = rows(&s.exec(
        &s.token("gone_now"),
        "SELECT count(*) FROM todos",
        json!([]),
    ));
    assert_eq!(count, vec![vec![json!(0)]]);
}

#[test]
fn trash_is_purged_after_the_retention_period() {
    let mut options = Options::default();
    options.server.trash_retention = Duration::from_secs(1);
    let s = TestServer::with(options);
    assert_eq!(create(&s, "short_stay").0, 201);
    assert_eq!(create(&s, "stays").0, 201);
    assert_eq!(s.delete("/admin/tenants/short_stay", Some(ADMIN)).0, 200);
    assert_eq!(trash_files(&s, "short_stay").len(), 1);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = s
            .fleet
            .catalog()
            .tenant(&id("short_stay"))
            .unwrap()
            .unwrap()
            .state;
        if state == TenantState::Purged && trash_files(&s, "short_stay").is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not purged within 10 s (state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = s.get_json("/admin/tenants/short_stay", Some(ADMIN));
    assert_eq!(status, 404);
    let (status, body) = s.post_raw("/admin/tenants/short_stay/restore", Some(ADMIN), &[], b"");
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "NOTHING_TO_RESTORE");
    let (status, _) = s.get_json("/admin/tenants/stays", Some(ADMIN));
    assert_eq!(status, 200, "live tenants are untouched");

    let purges: Vec<Value> = audit_entries(&s)
        .into_iter()
        .filter(|e| e["action"] == "tenant.purge")
        .collect();
    assert_eq!(purges.len(), 1, "{purges:?}");
    assert_eq!(purges[0]["actor"], "retention");
    assert_eq!(purges[0]["tenant"], "short_stay");
}

#[test]
fn admin_audit_lists_lifecycle_actions_by_admin() {
    let s = TestServer::start();
    assert_eq!(create(&s, "audited").0, 201);
    assert_eq!(s.delete("/admin/tenants/audited", Some(ADMIN)).0, 200);
    assert_eq!(
        s.post_raw("/admin/tenants/audited/restore", Some(ADMIN), &[], b"")
            .0,
        200
    );
    assert_eq!(
        s.call("GET", "/admin/tenants/audited/export", Some(ADMIN), None)
            .status,
        200
    );

    let entries = audit_entries(&s);
    let ours: Vec<&Value> = entries
        .iter()
        .filter(|e| e["tenant"] == "audited")
        .collect();
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec![
            "tenant.create",
            "tenant.delete",
            "tenant.restore",
            "tenant.export"
        ]
    );
    let start = now() - 60;
    for e in &ours {
        assert_eq!(e["actor"], "admin", "{e}");
        assert!(e["seq"].is_i64());
        let at = e["at"].as_i64().unwrap();
        assert!(at >= start && at <= now(), "unix seconds: {e}");
    }

    // Paging by seq sees each entry once, in order.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) =
            s.get_json(&format!("/admin/audit?limit=2&after={after}"), Some(ADMIN));
        assert_eq!(status, 200, "{body}");
        let page = body["entries"].as_array().unwrap();
        assert!(page.len() <= 2);
        paged.extend(page.iter().cloned());
        match body["next"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), page.last().and_then(|e| e["seq"].as_i64()));
                after = next;
            }
            None => break,
        }
    }
    assert_eq!(paged, entries);
    let (_, body) = s.get_json("/admin/audit", Some(ADMIN));
    assert_eq!(body["entries"].as_array().unwrap().len(), entries.len());
    assert_eq!(body["next"], Value::Null);

    for bad in ["after=-1", "after=x", "limit=0", "limit=5000", "since=3"] {
        let (status, body) = s.get_json(&format!("/admin/audit?{bad}"), Some(ADMIN));
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[test]
fn migrations_status_and_apply() {
    let s = TestServer::start();
    for tenant in ["m1", "m2", "m3"] {
        assert_eq!(create(&s, tenant).0, 201);
    }
    let (status, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["latest"], 1);
    assert_eq!(body["migrations"].as_array().unwrap().len(), 1);
    assert_eq!(body["migrations"][0]["version"], 1);
    assert_eq!(body["migrations"][0]["name"], "0001_todos.sql");
    assert_eq!(body["tenants_by_version"], json!({"1": 3}));
    assert_eq!(body["failures"], json!([]));

    let dir = s.dir.path().join("migrations");
    std::fs::write(
        dir.join("0002_tags.sql"),
        "ALTER TABLE todos ADD COLUMN tag TEXT;",
    )
    .unwrap();
    let (_, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(body["pending"], json!(["0002_tags.sql"]));

    // A body that is not what the route takes is refused, and nothing runs.
    for bad in [&br#"{"dryrun":true}"#[..], b"nope", br#"{"dry_run":"yes"}"#] {
        let (status, body) = s.post_raw("/admin/migrations/apply", Some(ADMIN), &[], bad);
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(s.fleet.latest_version(), 1);

    let (status, body) = s.post(
        "/admin/migrations/apply",
        Some(ADMIN),
        &[],
        &json!({"dry_run": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["schema_version"], 2);
    assert_eq!(body["migrated"], 3);
    assert_eq!(body["failed"], json!([]));
    let (_, status_body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(status_body["latest"], 1, "a dry run changes nothing");
    assert_eq!(status_body["tenants_by_version"], json!({"1": 3}));

    let (status, body) = s.post(
        "/admin/migrations/apply",
        Some(ADMIN),
        &[],
        &json!({"dry_run": false}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema_version"], 2);
    assert_eq!(body["migrated"], 3);
    assert_eq!(body["failed"], json!([]));
    let (_, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(body["latest"], 2);
    assert_eq!(body["tenants_by_version"], json!({"2": 3}));
    assert_eq!(body["pending"], json!([]));
    let (_, tenant) = s.get_json("/admin/tenants/m2", Some(ADMIN));
    assert_eq!(tenant["schema_version"], 2);
    s.exec(
        &s.token("m2"),
        "INSERT INTO todos (title, tag) VALUES ('t', 'x')",
        json!([]),
    );

    // A migration that fails on one tenant: it stays at its version, the others go on.
    let m1 = s.token("m1");
    for title in ["a", "b"] {
        s.exec(
            &m1,
            "INSERT INTO todos (title, tag) VALUES (?, 'dup')",
            json!([text(title)]),
        );
    }
    std::fs::write(
        dir.join("0003_unique_tags.sql"),
        "CREATE UNIQUE INDEX todos_tag ON todos (tag);",
    )
    .unwrap();
    // An empty body means {"dry_run": false}.
    let (status, body) = s.post_raw("/admin/migrations/apply", Some(ADMIN), &[], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema_version"], 3);
    assert_eq!(body["migrated"], 2);
    let failed = body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{body}");
    assert_eq!(failed[0]["tenant"], "m1");
    assert_eq!(failed[0]["version"], 3);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("UNIQUE"),
        "{body}"
    );
    let (_, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(body["tenants_by_version"], json!({"2": 1, "3": 2}));
    assert_eq!(body["failures"][0]["tenant"], "m1");

    // Editing an applied migration stops the run before any tenant is touched.
    std::fs::write(
        dir.join("0002_tags.sql"),
        "ALTER TABLE todos ADD COLUMN label TEXT;",
    )
    .unwrap();
    let (status, body) = s.post("/admin/migrations/apply", Some(ADMIN), &[], &json!({}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "INVALID_MIGRATION");
    let (_, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert!(body["problem"].as_str().unwrap().contains("0002"), "{body}");

    let applies = audit_entries(&s)
        .into_iter()
        .filter(|e| e["action"] == "migrations.apply" && e["actor"] == "admin")
        .collect::<Vec<_>>();
    assert_eq!(applies.len(), 2, "dry runs are not applies: {applies:?}");
    assert!(
        applies[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("version 2")
    );
}

#[test]
fn applying_migrations_needs_a_migrations_directory() {
    let options = Options {
        serve_migrations: false,
        ..Options::default()
    };
    let s = TestServer::with(options);
    let (status, body) = s.post(
        "/admin/migrations/apply",
        Some(ADMIN),
        &[],
        &json!({"dry_run": false}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the server was started without --migrations"
    );
    let (status, body) = s.get_json("/admin/migrations", Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["latest"], 1);
}
