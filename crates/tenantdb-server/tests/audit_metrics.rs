//! The write audit, fleet analytics and `/metrics`, through the real server.

mod common;

use common::{ADMIN, Options, TestServer, rows, text};
use serde_json::{Value, json};
use tenantdb::TenantId;

fn audit(s: &TestServer, tenant: &str) -> Vec<Value> {
    let (status, body) = s.get_json(&format!("/admin/tenants/{tenant}/audit"), Some(ADMIN));
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

fn verify(s: &TestServer, tenant: &str) -> tenantdb::audit::Verification {
    s.fleet
        .verify_audit(&TenantId::new(tenant).unwrap())
        .unwrap()
}

#[test]
fn every_committed_write_is_audited_with_its_actor_and_a_digest_of_its_arguments() {
    let s = TestServer::start();
    let t = s.token("amy");
    s.exec(
        &t,
        "INSERT INTO todos (title) VALUES (?)",
        json!([text("a secret title")]),
    );
    s.exec(&t, "UPDATE todos SET done = 1", json!([]));
    s.exec(&t, "SELECT * FROM todos", json!([]));
    let (status, _) = s.pipeline(
        &t,
        None,
        json!([{"type": "sequence", "sql": "INSERT INTO todos (title) VALUES ('b'); DELETE FROM todos WHERE title = 'b';"}, {"type": "close"}]),
    );
    assert_eq!(status, 200);
    let entries = audit(&s, "amy");
    let statements: Vec<&str> = entries
        .iter()
        .map(|e| e["statement"].as_str().unwrap())
        .collect();
    assert_eq!(
        statements,
        [
            "INSERT INTO todos (title) VALUES (?)",
            "UPDATE todos SET done = 1",
            "INSERT INTO todos (title) VALUES ('b');",
            "DELETE FROM todos WHERE title = 'b';"
        ]
    );
    assert!(entries.iter().all(|e| e["actor"] == "user:amy"));
    assert_eq!(entries[0]["rows_changed"], 1);
    assert_eq!(entries[0]["args_digest"].as_str().unwrap().len(), 64);
    assert!(
        !entries
            .iter()
            .any(|e| e.to_string().contains("a secret title")),
        "values are never stored"
    );
    assert_eq!(entries[1]["args_digest"], Value::Null);
    assert_eq!(verify(&s, "amy").first_broken, None);
    // Users may read their audit.
    let read = s.exec(&t, "SELECT count(*) FROM _tenantdb_audit", json!([]));
    assert_eq!(rows(&read), vec![vec![json!(4)]]);
    // The admin token is named as such.
    let (status, _) = s.post(
        "/v3/pipeline",
        Some(ADMIN),
        &[("x-tenant", "amy")],
        &json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "DELETE FROM todos"}}, {"type": "close"}]}),
    );
    assert_eq!(status, 200);
    assert_eq!(audit(&s, "amy").last().unwrap()["actor"], "admin:api");
}

#[test]
fn rolled_back_work_leaves_no_entry() {
    let s = TestServer::start();
    let t = s.token("ben");
    // An interactive transaction rolled back.
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "BEGIN"}},
               {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('gone')"}}]),
    );
    let baton = body["baton"].as_str().unwrap();
    let (_, body) = s.pipeline(
        &t,
        Some(baton),
        json!([{"type": "execute", "stmt": {"sql": "ROLLBACK"}}, {"type": "close"}]),
    );
    assert_eq!(body["results"][0]["type"], "ok");
    // A batch whose failing step rolls the transaction back.
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "batch", "batch": {"steps": [
            {"stmt": {"sql": "BEGIN IMMEDIATE"}},
            {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO todos (title) VALUES ('one')"}},
            {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "INSERT INTO todos (title) VALUES ('one')"}},
            {"condition": {"type": "ok", "step": 2}, "stmt": {"sql": "COMMIT"}},
            {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}}, "stmt": {"sql": "ROLLBACK"}},
        ]}}, {"type": "close"}]),
    );
    assert!(
        body["results"][0]["response"]["result"]["step_errors"][2].is_object(),
        "{body}"
    );
    // A failing autocommit write.
    s.exec(&t, "INSERT INTO todos (title) VALUES ('x')", json!([]));
    let err = s.exec_err(&t, "INSERT INTO todos (title) VALUES ('x')");
    assert_eq!(err["code"], "SQLITE_CONSTRAINT_UNIQUE");
    let entries = audit(&s, "ben");
    assert_eq!(entries.len(), 1, "only the committed insert: {entries:?}");
    assert_eq!(verify(&s, "ben").first_broken, None);
}

#[test]
fn nobody_can_change_the_audit_through_sql() {
    let s = TestServer::start();
    let t = s.token("cleo");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('a')", json!([]));
    s.exec(&t, "INSERT INTO todos (title) VALUES ('b')", json!([]));
    let before = audit(&s, "cleo");
    for sql in [
        "DELETE FROM _tenantdb_audit",
        "UPDATE _tenantdb_audit SET actor = 'someone else'",
        "DROP TABLE _tenantdb_audit",
        "INSERT INTO _tenantdb_audit (seq, at, actor, statement, rows_changed, prev_hash, hash) VALUES (99, 0, 'x', 'forged', 1, 'a', 'b')",
        "CREATE TEMP TRIGGER t AFTER INSERT ON main.todos BEGIN DELETE FROM _tenantdb_audit; END",
        "ALTER TABLE _tenantdb_audit RENAME TO x",
    ] {
        let (_, body) = s.pipeline(
            &t,
            None,
            json!([{"type": "sequence", "sql": format!("{sql}; INSERT INTO todos (title) VALUES ('{}')", sql.len())}, {"type": "close"}]),
        );
        assert_eq!(body["results"][0]["type"], "error", "{sql}: {body}");
        let count = rows(&s.exec(&t, "SELECT count(*) FROM todos", json!([])));
        assert_eq!(
            count,
            vec![vec![json!(2)]],
            "{sql}: the sequence stopped at the refusal"
        );
        assert_eq!(body["results"][0]["error"]["code"], "SQLITE_AUTH", "{sql}");
    }
    // Creating the temp trigger itself is allowed (temp objects are the connection's own); the
    // write it attempts is what is refused. Nothing that was there changed.
    let after = audit(&s, "cleo");
    assert_eq!(after[..before.len()], before[..]);
    assert!(after[before.len()..].iter().all(|e| {
        e["statement"]
            .as_str()
            .unwrap()
            .starts_with("CREATE TEMP TRIGGER")
    }));
    assert_eq!(verify(&s, "cleo").first_broken, None);
}

#[test]
fn tampering_behind_the_servers_back_is_found() {
    let s = TestServer::start();
    let t = s.token("dan");
    for i in 0..5 {
        s.exec(
            &t,
            "INSERT INTO todos (title) VALUES (?)",
            json!([text(&format!("t{i}"))]),
        );
    }
    let path = s.fleet.layout().tenant_db(&TenantId::new("dan").unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE _tenantdb_audit SET statement = 'DELETE FROM nothing' WHERE seq = 3",
        [],
    )
    .unwrap();
    let broken = verify(&s, "dan").first_broken.unwrap();
    assert_eq!(broken.seq, 3, "{}", broken.reason);
    raw.execute("DELETE FROM _tenantdb_audit WHERE seq = 3", [])
        .unwrap();
    assert_eq!(verify(&s, "dan").first_broken.unwrap().seq, 4);
}

#[test]
fn audit_can_be_switched_off() {
    let s = TestServer::with(Options {
        audit_writes: false,
        ..Options::default()
    });
    let t = s.token("eve");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('a')", json!([]));
    assert!(audit(&s, "eve").is_empty());
}

#[test]
fn stats_count_requests_writes_and_tenants() {
    let s = TestServer::start();
    for (user, writes) in [("fay", 3), ("gus", 1)] {
        let t = s.token(user);
        for i in 0..writes {
            s.exec(
                &t,
                "INSERT INTO todos (title) VALUES (?)",
                json!([text(&format!("{i}"))]),
            );
        }
        s.exec(&t, "SELECT 1", json!([]));
    }
    let (status, stats) = s.get_json("/admin/stats", Some(ADMIN));
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["tenants_total"], 2);
    assert_eq!(stats["active_1d"], 2);
    assert_eq!(stats["requests_total"], 6);
    assert_eq!(stats["writes_total"], 4);
    assert_eq!(stats["top_writes"][0], json!({"tenant": "fay", "count": 3}));
    assert_eq!(stats["schema_versions"], json!({"1": 2}));
    let signups: u64 = stats["signups_per_day"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(signups, 2);
    assert!(stats["sizes"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["sizes"]["largest"].as_array().unwrap().len(), 2);
    assert!(stats["cache"]["hit_rate"].as_f64().unwrap() > 0.0);
    let (status, _) = s.get_json("/admin/stats", Some(&s.token("fay")));
    assert_eq!(status, 403);
}

#[test]
fn metrics_parse_as_prometheus_text_with_the_expected_families() {
    let s = TestServer::start();
    let t = s.token("hal");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('a')", json!([]));
    s.exec_err(&t, "SELEC 1");
    let (status, _) = s.pipeline("not-a-token", None, json!([]));
    assert_eq!(status, 401);
    let (status, body) = s.get("/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        "tenantdb_http_requests_total",
        "tenantdb_http_request_duration_seconds",
        "tenantdb_open_tenants",
        "tenantdb_open_streams",
        "tenantdb_cache_hits_total",
        "tenantdb_cache_misses_total",
        "tenantdb_tenants_provisioned_total",
        "tenantdb_webhook_deliveries_total",
        "tenantdb_migrations_total",
        "tenantdb_report_duration_seconds",
    ] {
        assert!(names.contains(family), "{family} missing from:\n{body}");
    }
    let count = |route: &str, status: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|x| x.metric == "tenantdb_http_requests_total")
            .filter(|x| {
                x.labels.get("route") == Some(route) && x.labels.get("status") == Some(status)
            })
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(count("/v3/pipeline", "200"), 2.0);
    assert_eq!(count("/v3/pipeline", "401"), 1.0);
    let provisioned = scrape
        .samples
        .iter()
        .find(|x| x.metric == "tenantdb_tenants_provisioned_total")
        .unwrap();
    assert!(matches!(provisioned.value, prometheus_parse::Value::Counter(v) if v >= 1.0));
}

#[test]
fn report_durations_reach_the_metrics() {
    let s = TestServer::start();
    s.exec(
        &s.token("ivy"),
        "INSERT INTO todos (title) VALUES ('a')",
        json!([]),
    );
    let (status, body) = s.post(
        "/admin/reports",
        Some(ADMIN),
        &[],
        &json!({"sql": "SELECT count(*) FROM todos"}),
    );
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = s.get("/metrics");
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let count = scrape
        .samples
        .iter()
        .find(|x| x.metric == "tenantdb_report_duration_seconds_count")
        .map(|x| match x.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => -1.0,
        });
    let histogram = scrape
        .samples
        .iter()
        .find(|x| x.metric == "tenantdb_report_duration_seconds");
    let observed = match histogram.map(|h| &h.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            buckets.last().map_or(0.0, |b| b.count)
        }
        _ => count.unwrap_or(0.0),
    };
    assert_eq!(observed, 1.0, "{metrics}");
}
