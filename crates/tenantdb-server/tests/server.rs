//! The server end to end: real HTTP on loopback, real files, real tokens.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Options, SECRET, TestServer, int, rows, text};
use serde_json::{Value, json};
use tenantdb::TenantId;
use tenantdb_server::auth::mint_token;

#[test]
fn health_version_and_protocol_probes() {
    let s = TestServer::start();
    assert_eq!(s.get("/health"), (200, "ok".to_string()));
    let (status, version) = s.get("/version");
    assert_eq!(status, 200);
    assert!(version.contains("tenantdb"), "{version}");
    assert_eq!(s.get("/v2").0, 200);
    assert_eq!(s.get("/v3").0, 200);
    assert_eq!(s.get("/v3-protobuf").0, 404);
}

#[test]
fn execute_binds_values_and_round_trips_every_type() {
    let s = TestServer::start();
    let t = s.token("alice");
    let big = i64::MAX - 1;
    let insert = s.exec(
        &t,
        "INSERT INTO todos (title, done, data, score) VALUES (?, ?, ?, ?)",
        json!([text("milk"), int(big), {"type": "blob", "base64": "AAEC/w=="}, {"type": "float", "value": 2.5}]),
    );
    assert_eq!(insert["affected_row_count"], 1);
    assert_eq!(insert["last_insert_rowid"], "1");
    // Named arguments, with and without their prefix.
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([
            {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title, score) VALUES (:t, @s)",
                "named_args": [{"name": "t", "value": text("eggs")}, {"name": "@s", "value": {"type": "null"}}]}},
            {"type": "execute", "stmt": {"sql": "SELECT id, title, done, data, score FROM todos ORDER BY id"}},
            {"type": "close"}
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["baton"], Value::Null);
    let result = &body["results"][1]["response"]["result"];
    assert_eq!(
        result["cols"][1],
        json!({"name": "title", "decltype": "TEXT"})
    );
    assert_eq!(
        result["rows"][0][2],
        json!({"type": "integer", "value": big.to_string()})
    );
    assert_eq!(
        result["rows"][0][3],
        json!({"type": "blob", "base64": "AAEC/w=="})
    );
    assert_eq!(result["rows"][0][4], json!({"type": "float", "value": 2.5}));
    assert_eq!(result["rows"][1][4], json!({"type": "null"}));
    // want_rows: false runs the statement but returns no rows.
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "SELECT * FROM todos", "want_rows": false}}, {"type": "close"}]),
    );
    assert_eq!(body["results"][0]["response"]["result"]["rows"], json!([]));
}

#[test]
fn errors_carry_sqlite_codes_and_the_stream_goes_on() {
    let s = TestServer::start();
    let t = s.token("alice");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('a')", json!([]));
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([
            {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('a')"}},
            {"type": "execute", "stmt": {"sql": "SELEC 1"}},
            {"type": "execute", "stmt": {"sql": "SELECT 1; SELECT 2"}},
            {"type": "execute", "stmt": {"sql": "SELECT ?", "args": [int(1), int(2)]}},
            {"type": "execute", "stmt": {"sql": "SELECT :missing", "named_args": [{"name": "other", "value": int(1)}]}},
            {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}},
            {"type": "close"}
        ]),
    );
    assert_eq!(status, 200);
    let r = &body["results"];
    assert_eq!(
        r[0]["error"]["code"], "SQLITE_CONSTRAINT_UNIQUE",
        "{}",
        r[0]
    );
    assert_eq!(r[1]["error"]["code"], "SQLITE_ERROR");
    assert!(
        r[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("syntax error")
    );
    for i in 2..5 {
        assert_eq!(r[i]["type"], "error", "{}", r[i]);
    }
    assert_eq!(rows(&r[5]["response"]["result"]), vec![vec![json!(1)]]);
}

#[test]
fn batches_evaluate_every_condition() {
    let s = TestServer::start();
    let t = s.token("alice");
    let stmt = |sql: &str| json!({"sql": sql});
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "batch", "batch": {"steps": [
            {"stmt": stmt("BEGIN")},                                                            // 0 ok
            {"condition": {"type": "ok", "step": 0}, "stmt": stmt("INSERT INTO todos (title) VALUES ('x')")}, // 1 ok
            {"condition": {"type": "ok", "step": 1}, "stmt": stmt("INSERT INTO todos (title) VALUES ('x')")}, // 2 error
            {"condition": {"type": "error", "step": 2}, "stmt": stmt("SELECT 'saw error'")},   // 3 ok
            {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}}, "stmt": stmt("SELECT 'skipped'")}, // 4 skipped
            {"condition": {"type": "and", "conds": [{"type": "ok", "step": 1}, {"type": "error", "step": 2}]}, "stmt": stmt("SELECT 'and'")}, // 5 ok
            {"condition": {"type": "or", "conds": [{"type": "ok", "step": 4}, {"type": "ok", "step": 2}]}, "stmt": stmt("SELECT 'or'")}, // 6 skipped
            {"condition": {"type": "is_autocommit"}, "stmt": stmt("SELECT 'autocommit'")},     // 7 skipped: in tx
            {"condition": {"type": "not", "cond": {"type": "is_autocommit"}}, "stmt": stmt("COMMIT")}, // 8 ok
            {"condition": {"type": "is_autocommit"}, "stmt": stmt("SELECT count(*) FROM todos")}, // 9 ok
        ]}}, {"type": "close"}]),
    );
    assert_eq!(status, 200, "{body}");
    let result = &body["results"][0]["response"]["result"];
    let ran: Vec<&str> = (0..10)
        .map(
            |i| match (&result["step_results"][i], &result["step_errors"][i]) {
                (Value::Null, Value::Null) => "skip",
                (Value::Null, _) => "error",
                _ => "ok",
            },
        )
        .collect();
    assert_eq!(
        ran,
        [
            "ok", "ok", "error", "ok", "skip", "ok", "skip", "skip", "ok", "ok"
        ]
    );
    assert_eq!(result["step_errors"][2]["code"], "SQLITE_CONSTRAINT_UNIQUE");
    assert_eq!(rows(&result["step_results"][9]), vec![vec![json!(1)]]);
    // A condition pointing at a later step is an error for that step, not a silent skip.
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "batch", "batch": {"steps": [
            {"condition": {"type": "ok", "step": 5}, "stmt": stmt("SELECT 1")}
        ]}}, {"type": "close"}]),
    );
    assert!(
        body["results"][0]["response"]["result"]["step_errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("step 5")
    );
}

#[test]
fn a_failing_step_rolls_back_a_batch_transaction() {
    let s = TestServer::start();
    let t = s.token("bob");
    // The shape @libsql/client sends for batch(..., "write").
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "batch", "batch": {"steps": [
            {"stmt": {"sql": "BEGIN IMMEDIATE"}},
            {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO todos (title) VALUES ('one')"}},
            {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "INSERT INTO nope VALUES (1)"}},
            {"condition": {"type": "ok", "step": 2}, "stmt": {"sql": "COMMIT"}},
            {"condition": {"type": "not", "cond": {"type": "ok", "step": 3}}, "stmt": {"sql": "ROLLBACK"}},
        ]}}, {"type": "close"}]),
    );
    let result = &body["results"][0]["response"]["result"];
    assert!(result["step_errors"][2].is_object());
    assert!(
        result["step_results"][4].is_object(),
        "rolled back: {result}"
    );
    assert_eq!(
        rows(&s.exec(&t, "SELECT count(*) FROM todos", json!([]))),
        vec![vec![json!(0)]]
    );
}

#[test]
fn sequence_describe_store_sql_and_autocommit() {
    let s = TestServer::start();
    let t = s.token("carol");
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([
            {"type": "sequence", "sql": "INSERT INTO todos (title) VALUES ('a'); INSERT INTO todos (title) VALUES ('b');"},
            {"type": "store_sql", "sql_id": 7, "sql": "SELECT title FROM todos WHERE id = ?"},
            {"type": "execute", "stmt": {"sql_id": 7, "args": [int(2)]}},
            {"type": "describe", "sql_id": 7},
            {"type": "describe", "sql": "INSERT INTO todos (title) VALUES (:title)"},
            {"type": "get_autocommit"},
            {"type": "execute", "stmt": {"sql": "BEGIN"}},
            {"type": "get_autocommit"},
            {"type": "store_sql", "sql_id": 7, "sql": "SELECT 1"},
            {"type": "close_sql", "sql_id": 7},
            {"type": "execute", "stmt": {"sql_id": 7}},
            {"type": "close_sql", "sql_id": 99},
            {"type": "sequence", "sql": "SELECT 1; SELEC 2; INSERT INTO todos (title) VALUES ('never')"},
        ]),
    );
    assert_eq!(status, 200, "{body}");
    let r = &body["results"];
    assert_eq!(r[0]["response"]["type"], "sequence");
    assert_eq!(rows(&r[2]["response"]["result"]), vec![vec![json!("b")]]);
    let d = &r[3]["response"]["result"];
    assert_eq!(d["params"], json!([{"name": null}]));
    assert_eq!(d["cols"][0]["name"], "title");
    assert_eq!(d["is_readonly"], true);
    assert_eq!(d["is_explain"], false);
    let d = &r[4]["response"]["result"];
    assert_eq!(d["params"], json!([{"name": ":title"}]));
    assert_eq!(d["is_readonly"], false);
    assert_eq!(r[5]["response"]["is_autocommit"], true);
    assert_eq!(r[7]["response"]["is_autocommit"], false);
    assert_eq!(
        r[8]["type"], "error",
        "an sql_id in use cannot be stored again"
    );
    assert_eq!(r[9]["type"], "ok");
    assert_eq!(r[10]["type"], "error", "closed sql_id is gone");
    assert_eq!(r[11]["type"], "ok", "closing an unknown id is fine");
    assert_eq!(r[12]["type"], "error");
    // The stream stays open (in a transaction) and its baton works once.
    let baton = body["baton"].as_str().unwrap().to_string();
    let (_, next) = s.pipeline(
        &t,
        Some(&baton),
        json!([{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}}]),
    );
    assert_eq!(
        rows(&next["results"][0]["response"]["result"]),
        vec![vec![json!(2)]]
    );
    let (status, stale) = s.pipeline(&t, Some(&baton), json!([{"type": "get_autocommit"}]));
    assert_eq!(status, 400, "a used baton is stale: {stale}");
    let baton = next["baton"].as_str().unwrap();
    let (_, closed) = s.pipeline(&t, Some(baton), json!([{"type": "execute", "stmt": {"sql": "ROLLBACK"}}, {"type": "close"}, {"type": "get_autocommit"}]));
    assert_eq!(closed["baton"], Value::Null);
    assert_eq!(closed["results"][2]["type"], "error");
}

#[test]
fn too_many_stored_sql_texts_are_refused() {
    let s = TestServer::start();
    let t = s.token("dave");
    let requests: Vec<Value> = (0..1100)
        .map(|i| json!({"type": "store_sql", "sql_id": i, "sql": "SELECT 1"}))
        .collect();
    let (status, body) = s.pipeline(&t, None, Value::Array(requests));
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[1023]["type"], "ok");
    assert_eq!(results[1024]["type"], "error");
    assert!(
        results[1024]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many stored SQL")
    );
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn interactive_transactions_span_requests_and_readers_are_not_blocked() {
    let s = TestServer::start();
    let t = s.token("erin");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('before')", json!([]));
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "BEGIN IMMEDIATE"}},
               {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('inside')"}}]),
    );
    let baton = body["baton"].as_str().unwrap().to_string();
    // The same user reads on another stream while the write transaction is open...
    let started = Instant::now();
    let seen = s.exec(&t, "SELECT count(*) FROM todos", json!([]));
    assert_eq!(
        rows(&seen),
        vec![vec![json!(1)]],
        "uncommitted rows are invisible"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // ...and another user writes freely.
    s.exec(
        &s.token("frank"),
        "INSERT INTO todos (title) VALUES ('other user')",
        json!([]),
    );
    let (_, body) = s.pipeline(
        &t,
        Some(&baton),
        json!([{"type": "execute", "stmt": {"sql": "COMMIT"}}, {"type": "close"}]),
    );
    assert_eq!(body["results"][0]["type"], "ok", "{body}");
    assert_eq!(
        rows(&s.exec(&t, "SELECT count(*) FROM todos", json!([]))),
        vec![vec![json!(2)]]
    );
}

#[test]
fn read_only_transactions_refuse_writes() {
    let s = TestServer::start();
    let t = s.token("gina");
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([
            {"type": "execute", "stmt": {"sql": "BEGIN TRANSACTION READONLY"}},
            {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}},
            {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('no')"}},
            {"type": "execute", "stmt": {"sql": "COMMIT"}},
            {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('yes')"}},
            {"type": "close"}
        ]),
    );
    let r = &body["results"];
    assert_eq!(r[0]["type"], "ok", "{}", r[0]);
    assert_eq!(r[1]["type"], "ok");
    assert_eq!(r[2]["type"], "error");
    assert!(
        r[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{}",
        r[2]
    );
    assert_eq!(r[3]["type"], "ok");
    assert_eq!(
        r[4]["type"], "ok",
        "writes work again after the read transaction"
    );
}

#[test]
fn abandoned_transactions_are_rolled_back_after_the_idle_timeout() {
    let mut options = Options::default();
    options.server.stream_idle_timeout = Duration::from_millis(300);
    let s = TestServer::with(options);
    let t = s.token("hank");
    let (_, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "BEGIN IMMEDIATE"}},
               {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('lost')"}}]),
    );
    let baton = body["baton"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let (status, _) = s.pipeline(
        &t,
        Some(&baton),
        json!([{"type": "execute", "stmt": {"sql": "COMMIT"}}]),
    );
    assert_eq!(status, 400, "the expired baton is refused");
    // The write lock is free again and nothing of the transaction stayed.
    s.exec(&t, "INSERT INTO todos (title) VALUES ('after')", json!([]));
    assert_eq!(
        rows(&s.exec(&t, "SELECT title FROM todos", json!([]))),
        vec![vec![json!("after")]]
    );
}

#[test]
fn cursor_streams_step_entries_as_json_lines() {
    let s = TestServer::start();
    let t = s.token("ivy");
    s.exec(
        &t,
        "INSERT INTO todos (title) VALUES ('a'), ('b'), ('c')",
        json!([]),
    );
    let body = json!({"baton": null, "batch": {"steps": [
        {"stmt": {"sql": "SELECT title FROM todos ORDER BY id"}},
        {"stmt": {"sql": "SELEC"}},
        {"condition": {"type": "error", "step": 1}, "stmt": {"sql": "INSERT INTO todos (title) VALUES ('d')"}},
        {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "SELECT 'skipped'"}},
    ]}});
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(format!("{}/v3/cursor", s.url))
        .header("authorization", format!("Bearer {t}"))
        .send_json(&body)
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.body_mut().read_to_string().unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["baton"].is_string(), "{}", lines[0]);
    let kinds: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "step_begin",
            "row",
            "row",
            "row",
            "step_end",
            "step_error",
            "step_begin",
            "step_end"
        ]
    );
    assert_eq!(lines[1]["step"], 0);
    assert_eq!(lines[2]["row"][0], text_value("a"));
    assert_eq!(lines[6]["step"], 1);
    assert_eq!(lines[7]["step"], 2);
    assert_eq!(lines[8]["affected_row_count"], 1);
    // The cursor's baton continues the stream.
    let baton = lines[0]["baton"].as_str().unwrap();
    let (status, next) = s.pipeline(&t, Some(baton), json!([{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}}, {"type": "close"}]));
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        rows(&next["results"][0]["response"]["result"]),
        vec![vec![json!(4)]]
    );
}

fn text_value(v: &str) -> Value {
    json!({"type": "text", "value": v})
}

#[test]
fn v1_execute_and_batch() {
    let s = TestServer::start();
    let t = s.token("jack");
    let (status, body) = s.post(
        "/v1/execute",
        Some(&t),
        &[],
        &json!({"stmt": {"sql": "INSERT INTO todos (title) VALUES (?)", "args": [text("x")]}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["affected_row_count"], 1);
    let (status, body) = s.post(
        "/v1/batch",
        Some(&t),
        &[],
        &json!({"batch": {"steps": [
            {"stmt": {"sql": "SELECT title FROM todos"}},
            {"stmt": {"sql": "SELECT nope FROM todos"}}
        ]}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rows(&body["result"]["step_results"][0]),
        vec![vec![json!("x")]]
    );
    assert!(body["result"]["step_errors"][1]["message"].is_string());
    let (status, _) = s.post(
        "/v2/pipeline",
        Some(&t),
        &[],
        &json!({"baton": null, "requests": [{"type": "close"}]}),
    );
    assert_eq!(status, 200);
}

#[test]
fn bad_tokens_are_refused_and_touch_nothing() {
    let s = TestServer::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let hs = |claims: Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let bad = [
        ("malformed", "not.a.jwt".to_string()),
        (
            "expired",
            hs(json!({"sub": "mallory", "exp": now - 3600}), SECRET),
        ),
        (
            "not yet valid",
            hs(
                json!({"sub": "mallory", "exp": now + 3600, "nbf": now + 600}),
                SECRET,
            ),
        ),
        (
            "wrong secret",
            hs(
                json!({"sub": "mallory", "exp": now + 3600}),
                "another-secret-another-secret-another!!",
            ),
        ),
        ("no exp", hs(json!({"sub": "mallory"}), SECRET)),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&json!({"sub": "mallory", "exp": now + 3600}))
            ),
        ),
        (
            "bad tenant id",
            hs(json!({"sub": "../etc", "exp": now + 3600}), SECRET),
        ),
    ];
    for (what, token) in &bad {
        let (status, body) = s.pipeline(
            token,
            None,
            json!([{"type": "execute", "stmt": {"sql": "SELECT 1"}}]),
        );
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            body["message"].is_string(),
            "{what}: Hrana error shape {body}"
        );
    }
    let (status, _) = s.post(
        "/v3/pipeline",
        None,
        &[],
        &json!({"baton": null, "requests": []}),
    );
    assert_eq!(status, 401, "missing token");
    let (status, _) = s.post(
        "/v3/pipeline",
        Some("admin-token-for-testsX"),
        &[("x-tenant", "mallory")],
        &json!({"baton": null, "requests": []}),
    );
    assert_eq!(status, 401, "wrong admin token");
    assert!(
        s.fleet.tenant(&TenantId::new("mallory").unwrap()).is_err(),
        "nothing was provisioned"
    );
    assert!(s.fleet.list_tenants(None, 100).unwrap().is_empty());
}

#[test]
fn one_user_cannot_reach_another() {
    let s = TestServer::start();
    let victim = s.token("victim");
    let attacker = s.token("attacker");
    s.exec(
        &victim,
        "INSERT INTO todos (title) VALUES ('secret')",
        json!([]),
    );
    s.exec(
        &attacker,
        "INSERT INTO todos (title) VALUES ('mine')",
        json!([]),
    );

    // x-tenant naming someone else: 403, for an existing and a missing tenant alike.
    for target in ["victim", "nobody-here"] {
        let (status, body) = s.post(
            "/v3/pipeline",
            Some(&attacker),
            &[("x-tenant", target)],
            &json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT * FROM todos"}}]}),
        );
        assert_eq!(status, 403, "{target}: {body}");
    }
    // A baton from the victim's stream is just invalid for the attacker.
    let (_, body) = s.pipeline(
        &victim,
        None,
        json!([{"type": "store_sql", "sql_id": 1, "sql": "SELECT title FROM todos"}]),
    );
    let victim_baton = body["baton"].as_str().unwrap().to_string();
    let (status, body) = s.pipeline(
        &attacker,
        Some(&victim_baton),
        json!([{"type": "execute", "stmt": {"sql_id": 1}}]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("secret"));
    // A forged baton (bytes flipped) is refused too.
    let mut forged = victim_baton.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let (status, _) = s.pipeline(
        &victim,
        Some(std::str::from_utf8(&forged).unwrap()),
        json!([]),
    );
    assert_eq!(status, 400);
    // Stored SQL ids are per stream: the attacker's own stream has no id 1.
    let (_, body) = s.pipeline(
        &attacker,
        None,
        json!([{"type": "execute", "stmt": {"sql_id": 1}}, {"type": "close"}]),
    );
    assert_eq!(body["results"][0]["type"], "error");
    // SQL that reaches for other files is refused by the guard.
    let victim_file = s
        .fleet
        .layout()
        .tenant_db(&TenantId::new("victim").unwrap());
    for sql in [
        format!("ATTACH '{}' AS v", victim_file.display()),
        format!("ATTACH 'file:{}?mode=ro' AS v", victim_file.display()),
        format!("VACUUM INTO '{}'", victim_file.display()),
        "PRAGMA database_list".to_string(),
        "SELECT load_extension('libc.so.6')".to_string(),
    ] {
        let err = s.exec_err(&attacker, &sql);
        assert_eq!(err["code"], "SQLITE_AUTH", "{sql}: {err}");
    }
    // The victim's data is intact and only theirs.
    assert_eq!(
        rows(&s.exec(&victim, "SELECT title FROM todos", json!([]))),
        vec![vec![json!("secret")]]
    );
    assert_eq!(
        rows(&s.exec(&attacker, "SELECT title FROM todos", json!([]))),
        vec![vec![json!("mine")]]
    );
}

#[test]
fn admin_token_reaches_any_tenant_with_x_tenant() {
    let s = TestServer::start();
    s.exec(
        &s.token("kate"),
        "INSERT INTO todos (title) VALUES ('k')",
        json!([]),
    );
    let (status, body) = s.post(
        "/v3/pipeline",
        Some(ADMIN),
        &[("x-tenant", "kate")],
        &json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT title FROM todos"}}, {"type": "close"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rows(&body["results"][0]["response"]["result"]),
        vec![vec![json!("k")]]
    );
    let (status, _) = s.post(
        "/v3/pipeline",
        Some(ADMIN),
        &[],
        &json!({"baton": null, "requests": []}),
    );
    assert_eq!(status, 400, "admin must name a tenant");
    let (status, _) = s.post(
        "/v3/pipeline",
        Some(ADMIN),
        &[("x-tenant", "ghost")],
        &json!({"baton": null, "requests": [{"type": "close"}]}),
    );
    assert_eq!(status, 404, "admins do not provision lazily");
    // The user's own tenant in x-tenant is fine.
    let (status, _) = s.post(
        "/v3/pipeline",
        Some(&s.token("kate")),
        &[("x-tenant", "kate")],
        &json!({"baton": null, "requests": [{"type": "close"}]}),
    );
    assert_eq!(status, 200);
}

#[test]
fn lazy_provisioning_creates_on_first_request_but_never_revives_the_deleted() {
    let s = TestServer::start();
    let id = TenantId::new("newcomer").unwrap();
    assert!(s.fleet.tenant(&id).is_err());
    s.exec(&s.token("newcomer"), "SELECT 1", json!([]));
    assert_eq!(s.fleet.tenant(&id).unwrap().record.schema_version, 1);
    s.fleet.delete_tenant(&id, false, "test").unwrap();
    let (status, body) = s.pipeline(
        &s.token("newcomer"),
        None,
        json!([{"type": "execute", "stmt": {"sql": "SELECT 1"}}]),
    );
    assert_eq!(status, 404, "{body}");
    assert!(s.fleet.tenant(&id).is_err());

    let mut options = Options::default();
    options.server.lazy_provisioning = false;
    let strict = TestServer::with(options);
    let (status, _) = strict.pipeline(&strict.token("someone"), None, json!([{"type": "close"}]));
    assert_eq!(status, 404);
    assert!(strict.fleet.list_tenants(None, 10).unwrap().is_empty());
}

#[test]
fn malformed_requests_get_protocol_errors_and_the_server_keeps_serving() {
    let mut options = Options::default();
    options.server.max_body_bytes = 64 * 1024;
    let s = TestServer::with(options);
    let t = s.token("lena");
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"baton": null, "requests": [{"type": "frobnicate"}]}"#.to_vec(),
        br#"{"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "integer", "value": "x1"}]}}]}"#.to_vec(),
        br#"{"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "blob", "base64": "!!"}]}}]}"#.to_vec(),
        br#"{"baton": null, "requests": [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "integer", "value": 1.5}]}}]}"#.to_vec(),
        br#"{"baton": 12, "requests": []}"#.to_vec(),
    ];
    for body in &bodies {
        let (status, resp) = s.post_raw("/v3/pipeline", Some(&t), &[], body);
        assert_eq!(status, 400, "{}: {resp}", String::from_utf8_lossy(body));
        assert!(
            resp["message"].as_str().unwrap().contains("malformed"),
            "{resp}"
        );
    }
    let huge = json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": format!("SELECT '{}'", "x".repeat(100_000))}}]});
    let (status, _) = s.post("/v3/pipeline", Some(&t), &[], &huge);
    assert_eq!(status, 413);
    // Neither sql nor sql_id, or both.
    let (_, body) = s.pipeline(&t, None, json!([{"type": "execute", "stmt": {}}, {"type": "execute", "stmt": {"sql": "SELECT 1", "sql_id": 1}}, {"type": "close"}]));
    assert_eq!(body["results"][0]["type"], "error");
    assert_eq!(body["results"][1]["type"], "error");
    assert_eq!(
        rows(&s.exec(&t, "SELECT 42", json!([]))),
        vec![vec![json!(42)]]
    );
}

#[test]
fn long_statements_are_interrupted_and_the_tenant_stays_usable() {
    let mut options = Options::default();
    options.guard.statement_timeout = Duration::from_millis(300);
    let s = TestServer::with(options);
    let t = s.token("mike");
    let started = Instant::now();
    let err = s.exec_err(
        &t,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err["code"], "SQLITE_INTERRUPT", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("interrupted"),
        "{err}"
    );
    assert_eq!(
        rows(&s.exec(&t, "SELECT 1", json!([]))),
        vec![vec![json!(1)]]
    );
}

#[test]
fn oversize_results_are_refused() {
    let mut options = Options::default();
    options.guard.max_response_bytes = 10_000;
    let s = TestServer::with(options);
    let t = s.token("nina");
    let err = s.exec_err(&t, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) SELECT x, 'padding padding' FROM c");
    assert_eq!(err["code"], "RESPONSE_TOO_LARGE", "{err}");
}

#[test]
fn graceful_shutdown_rolls_back_open_transactions() {
    let mut s = TestServer::start();
    let t = s.token("olga");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('kept')", json!([]));
    let (_, body) = s.pipeline(&t, None, json!([{"type": "execute", "stmt": {"sql": "BEGIN"}}, {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('dropped')"}}]));
    assert!(body["baton"].is_string());
    let path = s.fleet.layout().tenant_db(&TenantId::new("olga").unwrap());
    s.shutdown();
    let wal = std::fs::metadata(tenantdb_side_file(&path, "-wal")).map_or(0, |m| m.len());
    assert_eq!(
        wal, 0,
        "connections were closed cleanly, the log checkpointed"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let titles: Vec<String> = conn
        .prepare("SELECT title FROM todos")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(titles, ["kept"]);
}

fn tenantdb_side_file(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// 32 clients over 200 tenants mixing reads, writes and interactive transactions; every
/// acknowledged write must be there afterwards, and nothing fails for an undocumented reason.
#[test]
fn load_mixed_clients_lose_no_acknowledged_write() {
    let s = std::sync::Arc::new(TestServer::start());
    let tenants: Vec<String> = (0..200).map(|i| format!("load_{i:03}")).collect();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut handles = Vec::new();
    for client in 0..32usize {
        let s = std::sync::Arc::clone(&s);
        let tenants = tenants.clone();
        handles.push(std::thread::spawn(move || {
            let mut acknowledged: Vec<(String, String)> = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                n += 1;
                let tenant = &tenants[(client * 7919 + n * 31) % tenants.len()];
                let token = mint_token(SECRET, &TenantId::new(tenant.as_str()).unwrap(), Duration::from_secs(600), "sub").unwrap();
                let title = format!("c{client}-n{n}");
                match n % 4 {
                    0 | 1 => {
                        let (status, body) = s.pipeline(&token, None, json!([{"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}}, {"type": "close"}]));
                        if status != 200 || body["results"][0]["type"] != "ok" {
                            failures.push(format!("read {status} {body}"));
                        }
                    }
                    2 => {
                        let (status, body) = s.pipeline(&token, None, json!([{"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES (?)", "args": [text(&title)]}}, {"type": "close"}]));
                        if status == 200 && body["results"][0]["type"] == "ok" {
                            acknowledged.push((tenant.clone(), title));
                        } else if !busy(&body) {
                            failures.push(format!("write {status} {body}"));
                        }
                    }
                    _ => {
                        let (status, body) = s.pipeline(&token, None, json!([{"type": "execute", "stmt": {"sql": "BEGIN IMMEDIATE"}}, {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES (?)", "args": [text(&title)]}}]));
                        if status != 200 || body["results"][1]["type"] != "ok" {
                            if !busy(&body) {
                                failures.push(format!("tx begin {status} {body}"));
                            }
                            if let Some(b) = body["baton"].as_str() {
                                s.pipeline(&token, Some(b), json!([{"type": "execute", "stmt": {"sql": "ROLLBACK"}}, {"type": "close"}]));
                            }
                            continue;
                        }
                        let baton = body["baton"].as_str().unwrap().to_string();
                        let (status, body) = s.pipeline(&token, Some(&baton), json!([{"type": "execute", "stmt": {"sql": "COMMIT"}}, {"type": "close"}]));
                        if status == 200 && body["results"][0]["type"] == "ok" {
                            acknowledged.push((tenant.clone(), title));
                        } else {
                            failures.push(format!("commit {status} {body}"));
                        }
                    }
                }
            }
            (acknowledged, failures)
        }));
    }
    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    for h in handles {
        let (a, f) = h.join().unwrap();
        acknowledged.extend(a);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        acknowledged.len() > 100,
        "the load test did real work: {}",
        acknowledged.len()
    );
    let mut by_tenant: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    for (tenant, title) in acknowledged {
        by_tenant.entry(tenant).or_default().push(title);
    }
    for (tenant, titles) in by_tenant {
        let result = s.exec(&s.token(&tenant), "SELECT title FROM todos", json!([]));
        let present: std::collections::HashSet<String> = rows(&result)
            .into_iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        for title in titles {
            assert!(
                present.contains(&title),
                "{tenant} lost acknowledged write {title}"
            );
        }
    }
}

/// SQLITE_BUSY is the documented outcome when two writers of one tenant collide past the busy
/// timeout.
fn busy(body: &Value) -> bool {
    body.to_string().contains("SQLITE_BUSY")
}

#[test]
fn requests_past_the_time_limit_get_503_and_others_are_served() {
    let mut options = Options::default();
    options.server.request_timeout = Duration::from_millis(300);
    options.guard.statement_timeout = Duration::from_secs(5);
    let s = TestServer::with(options);
    let t = s.token("pete");
    let started = Instant::now();
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([{"type": "execute", "stmt": {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}}]),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered long before the statement's own 5 s limit"
    );
    assert_eq!(
        rows(&s.exec(&s.token("quinn"), "SELECT 7", json!([]))),
        vec![vec![json!(7)]]
    );
}

/// Reads on a warm tenant are answered on the thread that received them, under a short budget;
/// whatever outgrows it (a long read, a write behind a `WITH`) is run again on the blocking pool
/// and answered exactly as it would have been, exactly once.
#[test]
fn reads_that_outgrow_the_quick_path_are_answered_in_full_and_once() {
    let s = TestServer::start();
    let t = s.token("quentin");
    s.exec(&t, "INSERT INTO todos (title) VALUES ('warm')", json!([]));
    // Looks like a read, writes: the row lands once and its audit entry with it.
    s.exec(
        &t,
        "WITH t(title) AS (VALUES ('via with')) INSERT INTO todos (title) SELECT title FROM t",
        json!([]),
    );
    // A read, then a write in one pipeline: both run, once each, in order.
    let (status, body) = s.pipeline(
        &t,
        None,
        json!([
            {"type": "execute", "stmt": {"sql": "SELECT count(*) FROM todos"}},
            {"type": "execute", "stmt": {"sql": "INSERT INTO todos (title) VALUES ('second')"}},
            {"type": "close"}
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rows(&body["results"][0]["response"]["result"]),
        vec![vec![json!(2)]]
    );
    let titles = s.exec(&t, "SELECT title FROM todos ORDER BY id", json!([]));
    assert_eq!(
        rows(&titles),
        vec![
            vec![json!("warm")],
            vec![json!("via with")],
            vec![json!("second")]
        ]
    );
    let audit = s.exec(&t, "SELECT count(*) FROM _tenantdb_audit", json!([]));
    assert_eq!(rows(&audit), vec![vec![json!(3)]]);
    // Far beyond the quick budget (and afterwards, while this tenant's connection skips the
    // quick path for a while): complete answers, never an interruption.
    for _ in 0..2 {
        let long = s.exec(
            &t,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) \
             SELECT count(*) FROM c",
            json!([]),
        );
        assert_eq!(rows(&long), vec![vec![json!(2_000_000)]]);
    }
}

/// A refused request does not cost a keep-alive client its connection: the next request on the
/// same connection is served.
#[test]
fn a_refused_request_leaves_the_keep_alive_connection_usable() {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = TestServer::start();
    let good = s.token("kim");
    let addr = s.url.trim_start_matches("http://").to_string();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let body = r#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT 1"}},{"type":"close"}]}"#;
    let mut exchange = |token: &str| -> u16 {
        let request = format!(
            "POST /v2/pipeline HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // Head and body in two writes, as many clients send them.
        writer.write_all(request.as_bytes()).unwrap();
        writer.flush().unwrap();
        writer.write_all(body.as_bytes()).unwrap();
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no response: {status_line:?}"))
            .parse()
            .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut reply = vec![0; length];
        reader.read_exact(&mut reply).unwrap();
        status
    };
    for _ in 0..20 {
        assert_eq!(exchange("not-a-token"), 401);
        assert_eq!(exchange(&good), 200);
    }
}
