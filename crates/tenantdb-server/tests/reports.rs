//! `POST /admin/reports` through real HTTP on loopback: JSON and CSV, refusals, auth, the
//! admin audit, and reports while users keep writing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, TestServer, int, text};
use serde_json::{Value, json};

/// Creates tenants through the admin API and writes a few todos to each through Hrana, as
/// their users would.
fn seed(server: &TestServer, tenants: &[&str], todos: i64) {
    for id in tenants {
        let (status, body) = server.post("/admin/tenants", Some(ADMIN), &[], &json!({"id": id}));
        assert_eq!(status, 201, "{body}");
        let token = server.token(id);
        for i in 0..todos {
            server.exec(
                &token,
                "INSERT INTO todos (title, done, score) VALUES (?, ?, ?)",
                json!([text(&format!("{id} todo {i}")), int(i % 2), {"type": "float", "value": i as f64 / 2.0}]),
            );
        }
    }
}

fn report(server: &TestServer, body: &Value, accept: Option<&str>) -> common::Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| vec![("accept", a)]).unwrap_or_default();
    server.call_with_headers(
        "POST",
        "/admin/reports",
        Some(ADMIN),
        &headers,
        Some(&serde_json::to_vec(body).unwrap()),
    )
}

#[test]
fn reports_answer_in_json_with_plain_values() {
    let server = TestServer::start();
    seed(&server, &["alice", "bob", "carol"], 3);
    let reply = report(
        &server,
        &json!({
            "sql": "SELECT _tenant, count(*) AS n, sum(done), total(score), \
                    x'00ff' AS b, 9007199254740993 AS big, NULL AS empty \
                    FROM todos GROUP BY 1 ORDER BY 1",
            "tenants": ["carol", "alice", "ghost"],
        }),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(
        body,
        json!({
            "columns": ["_tenant", "n", "sum(done)", "total(score)", "b", "big", "empty"],
            "rows": [
                ["alice", 3, 1, 1.5, "AP8=", "9007199254740993", null],
                ["carol", 3, 1, 1.5, "AP8=", "9007199254740993", null],
            ],
            "tenants_scanned": 2,
            "tenants_skipped": [{"tenant": "ghost", "reason": "not found"}],
        })
    );

    // With a reduce, over every tenant.
    let reply = report(
        &server,
        &json!({
            "sql": "SELECT _tenant, count(*) AS n FROM todos GROUP BY 1",
            "reduce": "SELECT count(*) AS tenants, sum(n) AS todos FROM result",
            "tenants": null,
        }),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(
        reply.json(),
        json!({
            "columns": ["tenants", "todos"],
            "rows": [[3, 9]],
            "tenants_scanned": 3,
            "tenants_skipped": [],
        })
    );
}

#[test]
fn reports_answer_in_csv_when_asked() {
    let server = TestServer::start();
    seed(&server, &["alice", "bob"], 2);
    let reply = report(
        &server,
        &json!({"sql": "SELECT _tenant, title, 'a,\"b\"' AS odd FROM todos ORDER BY 1, 2"}),
        Some("text/csv"),
    );
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/csv")),
        "{:?}",
        reply.header("content-type")
    );
    assert_eq!(reply.header("x-tenants-scanned"), Some("2"));
    assert_eq!(reply.header("x-tenants-skipped"), Some("0"));
    let body = String::from_utf8(reply.body).unwrap();
    assert_eq!(
        body,
        "_tenant,title,odd\r\n\
         alice,alice todo 0,\"a,\"\"b\"\"\"\r\n\
         alice,alice todo 1,\"a,\"\"b\"\"\"\r\n\
         bob,bob todo 0,\"a,\"\"b\"\"\"\r\n\
         bob,bob todo 1,\"a,\"\"b\"\"\"\r\n"
    );
}

#[test]
fn large_results_stream() {
    let server = TestServer::start();
    seed(&server, &["alice"], 1);
    let reply = report(
        &server,
        &json!({"sql": "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k \
                        WHERE x < 200000) SELECT x, (SELECT count(*) FROM todos) FROM k"}),
        Some("text/csv"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), None, "the body is streamed");
    let body = String::from_utf8(reply.body).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 200_001);
    assert_eq!(lines[200_000], "200000,1");
}

#[test]
fn bad_reports_are_refused_before_any_tenant_is_read() {
    let server = TestServer::start();
    seed(&server, &["alice"], 2);
    for (sql, code) in [
        ("DELETE FROM todos", "REPORT_REFUSED"),
        ("SELECT 1; DROP TABLE todos", "REPORT_REFUSED"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", "REPORT_REFUSED"),
        ("PRAGMA user_version = 9", "REPORT_REFUSED"),
        ("SELECT * FROM todoz", "SQL_ERROR"),
        ("SELEC 1", "SQL_ERROR"),
    ] {
        let reply = report(&server, &json!({"sql": sql}), None);
        assert_eq!(reply.status, 400, "{sql}: {}", reply.json());
        assert_eq!(
            reply.json()["error"]["code"],
            code,
            "{sql}: {}",
            reply.json()
        );
    }
    let reply = report(&server, &json!({"sql": "SELECT * FROM todoz"}), None);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("no such table: todoz"), "{message}");
    assert!(message.contains('^'), "{message}");
    for (body, code) in [
        (json!({}), "BAD_REQUEST"),
        (json!({"sql": "SELECT 1", "bogus": 1}), "BAD_REQUEST"),
        (json!(["SELECT 1"]), "BAD_REQUEST"),
        (
            json!({"sql": "SELECT 1", "tenants": ["../etc"]}),
            "INVALID_TENANT_ID",
        ),
    ] {
        let reply = report(&server, &body, None);
        assert_eq!(reply.status, 400, "{body}: {}", reply.json());
        assert_eq!(reply.json()["error"]["code"], code, "{body}");
    }
    // The tenant still has both its rows.
    let result = server.exec(
        &server.token("alice"),
        "SELECT count(*) FROM todos",
        json!([]),
    );
    assert_eq!(common::rows(&result), vec![vec![json!(2)]]);
}

#[test]
fn reports_need_the_admin_token_and_are_audited() {
    let server = TestServer::start();
    seed(&server, &["alice"], 1);
    let body = serde_json::to_vec(&json!({"sql": "SELECT count(*) FROM todos"})).unwrap();
    let none = server.call("POST", "/admin/reports", None, Some(&body));
    assert_eq!(none.status, 401);
    let wrong = server.call(
        "POST",
        "/admin/reports",
        Some("not-the-admin-token"),
        Some(&body),
    );
    assert_eq!(wrong.status, 401);
    let user = server.call(
        "POST",
        "/admin/reports",
        Some(&server.token("alice")),
        Some(&body),
    );
    assert_eq!(user.status, 403);

    let sql = "SELECT count(*) FROM todos -- audited";
    let reply = report(&server, &json!({"sql": sql}), None);
    assert_eq!(reply.status, 200);
    let (status, audit) = server.get_json("/admin/audit?limit=1000", Some(ADMIN));
    assert_eq!(status, 200);
    let runs: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "report.run")
        .collect();
    assert_eq!(runs.len(), 1, "{audit}");
    assert_eq!(runs[0]["actor"], "admin");
    assert_eq!(runs[0]["detail"], sql);
}

#[test]
fn reports_run_while_users_keep_writing() {
    let server = TestServer::start();
    let tenants: Vec<String> = (0..40).map(|i| format!("w{i:02}")).collect();
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    seed(&server, &names, 1);
    let tokens: Vec<String> = tenants.iter().map(|t| server.token(t)).collect();
    let stop = AtomicBool::new(false);
    let written = AtomicUsize::new(0);
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    let reports = std::thread::scope(|s| {
        for w in 0..3 {
            let (stop, written, slowest, tokens, server) =
                (&stop, &written, &slowest, &tokens, &server);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let token = &tokens[(i * 3 + w) % tokens.len()];
                    let started = Instant::now();
                    server.exec(
                        token,
                        "INSERT INTO todos (title) VALUES (?)",
                        json!([text(&format!("write {w} {i}"))]),
                    );
                    let took = started.elapsed();
                    let mut worst = slowest.lock().unwrap();
                    *worst = (*worst).max(took);
                    drop(worst);
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        let mut runs = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline || runs < 3 {
            let reply = report(
                &server,
                &json!({"sql": "SELECT count(*), count(DISTINCT _tenant) FROM todos"}),
                None,
            );
            assert_eq!(reply.status, 200, "{}", reply.json());
            let body = reply.json();
            assert_eq!(body["tenants_scanned"], 40);
            assert_eq!(body["rows"][0][1], 40);
            runs += 1;
        }
        stop.store(true, Ordering::Relaxed);
        runs
    });
    assert!(reports >= 3);
    let written = written.load(Ordering::Relaxed);
    assert!(written > 0, "no write went through while reports ran");
    // Every write landed, and the last report sees all of them.
    let reply = report(&server, &json!({"sql": "SELECT count(*) FROM todos"}), None);
    assert_eq!(reply.json()["rows"][0][0], json!(40 + written));
    let worst = *slowest.lock().unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "a write took {worst:?} during reports"
    );
    // The report left no scratch database behind.
    let scratch = server.fleet.layout().root().join("reports");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
}

#[test]
fn a_report_past_the_time_limit_gets_503_and_stops() {
    let mut options = common::Options::default();
    options.server.request_timeout = Duration::from_millis(500);
    let server = TestServer::with(options);
    seed(&server, &["alice"], 1);
    let started = Instant::now();
    let reply = report(
        &server,
        &json!({"sql": "WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k) \
                        SELECT sum(x) FROM k, todos"}),
        None,
    );
    assert_eq!(reply.status, 503, "{}", reply.json());
    assert_eq!(reply.json()["error"]["code"], "REQUEST_TIMEOUT");
    // The abandoned report is cancelled: its scratch database goes away soon after.
    let scratch = server.fleet.layout().root().join("reports");
    while std::fs::read_dir(&scratch).unwrap().count() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the abandoned report kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the server answers the next one.
    let reply = report(&server, &json!({"sql": "SELECT count(*) FROM todos"}), None);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["rows"], json!([[1]]));
}
