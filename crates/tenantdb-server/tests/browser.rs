//! What a web page calling tenantdb from the browser relies on, over real HTTP on loopback:
//! CORS on the data plane only, for the configured origins only, and the dev sign-in
//! (`POST /dev/token`) that exists only when it is turned on.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{ADMIN, Options, Reply, TestServer, rows, text};
use serde_json::{Value, json};
use tenantdb::{Config, Fleet};
use tenantdb_server::auth::AuthConfig;
use tenantdb_server::dev_login::DevLoginError;
use tenantdb_server::{App, ServeError, ServerConfig};

const APP: &str = "http://127.0.0.1:5173";

fn server_with(cors: &[&str], dev_login: bool) -> TestServer {
    let mut options = Options::default();
    options.server.cors_origins = cors.iter().map(|o| o.parse().unwrap()).collect();
    options.server.dev_login = dev_login;
    TestServer::with(options)
}

/// A browser's preflight for a POST with a bearer token and a JSON body.
fn preflight(server: &TestServer, path: &str, origin: &str) -> Reply {
    server.call_with_headers(
        "OPTIONS",
        path,
        None,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
        None,
    )
}

/// A request as a page on `origin` sends it.
fn from_origin(
    server: &TestServer,
    origin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Reply {
    server.call_with_headers(method, path, token, &[("origin", origin)], body)
}

/// Fails, naming them, when a response carries any `access-control-*` header.
#[track_caller]
fn assert_no_cors(reply: &Reply, what: &str) {
    let found: Vec<String> = reply
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-"))
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
        .collect();
    assert!(found.is_empty(), "{what} answered CORS: {found:?}");
}

/// `SELECT 1` on `/v2/pipeline` with `token`, as a page on `origin` sends it.
fn select_one(server: &TestServer, origin: &str, token: &str) -> Reply {
    let body = serde_json::to_vec(&json!({"requests": [
        {"type": "execute", "stmt": {"sql": "SELECT 1"}},
        {"type": "close"},
    ]}))
    .unwrap();
    let path = "/v2/pipeline";
    from_origin(server, origin, "POST", path, Some(token), Some(&body))
}

#[test]
fn listed_origins_may_call_the_data_plane() {
    let other_app = "https://app.example.com";
    let server = server_with(&[APP, other_app], false);
    let token = server.token("alice");

    let reply = preflight(&server, "/v2/pipeline", APP);
    assert!(reply.status < 300, "preflight: {}", reply.status);
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP));
    let methods = reply
        .header("access-control-allow-methods")
        .unwrap()
        .to_ascii_lowercase();
    assert!(methods.contains("post"), "{methods}");
    let headers = reply
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    assert_eq!(reply.header("access-control-allow-credentials"), None);
    assert!(reply.header("access-control-max-age").is_some());

    // The request itself.
    let ok = select_one(&server, APP, &token);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));

    for path in ["/health", "/version", "/v2", "/v3"] {
        let reply = from_origin(&server, other_app, "GET", path, None, None);
        assert_eq!(reply.status, 200, "{path}");
        let allowed = reply.header("access-control-allow-origin");
        assert_eq!(allowed, Some(other_app), "{path}");
    }
    for path in ["/v3/pipeline", "/v3/cursor", "/v1/execute", "/v1/batch"] {
        let reply = preflight(&server, path, APP);
        let allowed = reply.header("access-control-allow-origin");
        assert_eq!(allowed, Some(APP), "{path}");
    }

    // A page must be able to read a refusal to tell the user their session expired. (Last:
    // the server refuses before reading the body and then closes the connection.)
    let refused = select_one(&server, APP, "not-a-token");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("access-control-allow-origin"), Some(APP));
}

#[test]
fn other_origins_get_no_access() {
    let server = server_with(&[APP], false);
    let token = server.token("alice");
    // A different host, port or scheme is a different origin; so is the literal "null".
    for origin in [
        "http://evil.example",
        "http://127.0.0.1:5174",
        "https://127.0.0.1:5173",
        "http://localhost:5173",
        "null",
    ] {
        let reply = preflight(&server, "/v2/pipeline", origin);
        let allowed = reply.header("access-control-allow-origin");
        assert_eq!(allowed, None, "preflight from {origin}");
        let reply = select_one(&server, origin, &token);
        // The server still answers (CORS is enforced by browsers), without allowing the read.
        assert_eq!(reply.status, 200, "{origin}");
        let allowed = reply.header("access-control-allow-origin");
        assert_eq!(allowed, None, "request from {origin}");
    }
}

#[test]
fn admin_webhooks_and_metrics_never_answer_cors() {
    let server = server_with(&[APP], true);
    for path in [
        "/admin/tenants",
        "/admin/stats",
        "/admin/reports",
        "/admin/nowhere",
        "/webhooks/clerk",
        "/metrics",
        "/nowhere",
    ] {
        assert_no_cors(&preflight(&server, path, APP), &format!("preflight {path}"));
    }
    let listed = from_origin(&server, APP, "GET", "/admin/tenants", Some(ADMIN), None);
    assert_eq!(listed.status, 200);
    assert_no_cors(&listed, "GET /admin/tenants");
    let metrics = from_origin(&server, APP, "GET", "/metrics", None, None);
    assert_eq!(metrics.status, 200);
    assert_no_cors(&metrics, "GET /metrics");
    let webhook = from_origin(&server, APP, "POST", "/webhooks/clerk", None, Some(b"{}"));
    assert_eq!(webhook.status, 401);
    assert_no_cors(&webhook, "POST /webhooks/clerk");
}

#[test]
fn no_origin_configured_means_no_cors_headers_at_all() {
    let server = server_with(&[], false);
    let token = server.token("alice");
    for path in ["/v2/pipeline", "/health", "/admin/tenants"] {
        assert_no_cors(&preflight(&server, path, APP), &format!("preflight {path}"));
    }
    let reply = select_one(&server, APP, &token);
    assert_eq!(reply.status, 200);
    assert_no_cors(&reply, "POST /v2/pipeline");
    let reply = from_origin(&server, APP, "GET", "/health", None, None);
    assert_no_cors(&reply, "GET /health");
}

#[test]
fn dev_token_route_does_not_exist_without_dev_login() {
    let server = server_with(&[APP], false);
    let (status, _) = server.post("/dev/token", None, &[], &json!({"user": "alice"}));
    assert_eq!(status, 404);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs in through the dev route; returns the token and its `expires_at`.
fn dev_token(server: &TestServer, request: Value) -> (String, u64) {
    let (status, body) = server.post("/dev/token", None, &[], &request);
    assert_eq!(status, 200, "{body}");
    (
        body["token"].as_str().expect("a token").to_owned(),
        body["expires_at"]
            .as_u64()
            .expect("expires_at in unix seconds"),
    )
}

#[test]
fn a_dev_token_reaches_its_own_user_only() {
    let server = server_with(&[APP], true);
    let before = now();
    let (alice, expires) = dev_token(&server, json!({"user": "alice"}));
    assert!(
        (before + 3600..=now() + 3600).contains(&expires),
        "default lifetime is an hour: {expires} at {before}"
    );
    let (bob, _) = dev_token(&server, json!({"user": "bob", "ttl_seconds": 60}));

    server.exec(
        &alice,
        "INSERT INTO todos (title) VALUES (?)",
        json!([text("alice's milk")]),
    );
    let (status, body) = server.post(
        "/v2/pipeline",
        Some(&alice),
        &[],
        &json!({"requests": [
            {"type": "execute", "stmt": {"sql": "SELECT title FROM todos"}},
            {"type": "close"},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rows(&body["results"][0]["response"]["result"]),
        vec![vec![json!("alice's milk")]]
    );
    let bobs = server.exec(&bob, "SELECT count(*) FROM todos", json!([]));
    assert_eq!(rows(&bobs), vec![vec![json!(0)]]);
    // The route answers a browser on a listed origin, like the rest of the data plane.
    let reply = preflight(&server, "/dev/token", APP);
    assert_eq!(reply.header("access-control-allow-origin"), Some(APP));

    // Alice's token cannot be pointed at Bob's database. (Last: the server refuses before
    // reading the body and then closes the connection.)
    let (status, _) = server.post(
        "/v2/pipeline",
        Some(&alice),
        &[("x-tenant", "bob")],
        &json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}),
    );
    assert_eq!(status, 403);
}

#[test]
fn dev_token_requests_are_checked() {
    let server = server_with(&[], true);
    let (_, expires) = dev_token(&server, json!({"user": "user_2abcXYZ", "ttl_seconds": 60}));
    assert!(expires.abs_diff(now() + 60) <= 2, "{expires}");
    dev_token(&server, json!({"user": "carol", "ttl_seconds": 86_400}));

    let cases = [
        (json!({"user": "../etc"}), "INVALID_TENANT_ID"),
        (json!({"user": ""}), "INVALID_TENANT_ID"),
        (json!({"user": "a.b"}), "INVALID_TENANT_ID"),
        (json!({"user": "alice", "ttl_seconds": 0}), "INVALID_TTL"),
        (
            json!({"user": "alice", "ttl_seconds": 86_401}),
            "INVALID_TTL",
        ),
        (json!({"user": "alice", "ttl_seconds": -1}), "BAD_REQUEST"),
        (json!({"user": "alice", "admin": true}), "BAD_REQUEST"),
        (json!({}), "BAD_REQUEST"),
        (json!(["alice"]), "BAD_REQUEST"),
    ];
    for (request, code) in cases {
        let (status, body) = server.post("/dev/token", None, &[], &request);
        assert_eq!(status, 400, "{request}: {body}");
        assert_eq!(body["error"]["code"], code, "{request}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{request}: {body}"
        );
    }
    let (status, body) = server.post_raw("/dev/token", None, &[], b"user=alice");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "BAD_REQUEST", "{body}");
    // Minting touches no database: a user's appears on their first request.
    assert!(server.fleet.list_tenants(None, 10).unwrap().is_empty());
}

#[test]
fn dev_login_is_refused_next_to_provider_keys() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Arc::new(Fleet::open(Config::new(dir.path())).unwrap());
    let refused = |auth: AuthConfig| {
        let config = ServerConfig {
            auth,
            dev_login: true,
            ..ServerConfig::default()
        };
        match App::new(Arc::clone(&fleet), config) {
            Err(ServeError::DevLogin(e)) => e,
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("dev sign-in was accepted"),
        }
    };
    let secret = AuthConfig {
        jwt_secret: Some(common::SECRET.into()),
        ..AuthConfig::default()
    };
    let with_jwks = AuthConfig {
        jwks_json: Some(br#"{"keys":[]}"#.to_vec()),
        ..secret.clone()
    };
    assert_eq!(refused(with_jwks), DevLoginError::ProviderKeys);
    let with_key = AuthConfig {
        jwt_public_key_pem: Some(b"-----BEGIN PUBLIC KEY-----".to_vec()),
        ..secret
    };
    let e = refused(with_key);
    assert_eq!(e, DevLoginError::ProviderKeys);
    assert!(e.to_string().contains("JWKS"), "{e}");
    let admin_only = AuthConfig {
        admin_token: Some(ADMIN.into()),
        ..AuthConfig::default()
    };
    assert_eq!(refused(admin_only), DevLoginError::NoSecret);
}

/// A request cut off by the time limit still answers the page's origin, so the page can show
/// the 503 instead of a network failure.
#[test]
fn a_timed_out_request_still_answers_cors() {
    let mut options = Options::default();
    options.server.cors_origins = vec![APP.parse().unwrap()];
    options.server.request_timeout = std::time::Duration::from_millis(300);
    options.guard.statement_timeout = std::time::Duration::from_secs(2);
    let s = TestServer::with(options);
    let token = s.token("tess");
    let body = serde_json::to_vec(&json!({"requests": [
        {"type": "execute", "stmt": {"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"}},
        {"type": "close"},
    ]}))
    .unwrap();
    let reply = from_origin(&s, APP, "POST", "/v2/pipeline", Some(&token), Some(&body));
    assert_eq!(reply.status, 503, "{}", reply.json());
    assert_eq!(reply.json()["error"]["code"], "REQUEST_TIMEOUT");
    assert_eq!(
        reply
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(APP)
    );
}
