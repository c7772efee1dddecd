//! A real server on loopback for the integration tests, and a small Hrana client over HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tenantdb::{Config, Fleet, GuardConfig, MigrateOptions, NoProgress, TenantId};
use tenantdb_server::ServerConfig;
use tenantdb_server::auth::{AuthConfig, mint_token};

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256!!";
pub const ADMIN: &str = "admin-token-for-tests";

pub struct TestServer {
    pub url: String,
    pub dir: TempDir,
    pub fleet: Arc<Fleet>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    agent: ureq::Agent,
}

pub fn migrations(dir: &std::path::Path) -> PathBuf {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("0001_todos.sql"),
        "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE, done INTEGER NOT NULL DEFAULT 0, data BLOB, score REAL);",
    )
    .unwrap();
    m
}

pub struct Options {
    pub guard: GuardConfig,
    pub server: ServerConfig,
    /// Give the server the test's migrations directory (`--migrations`) unless
    /// `server.migrations_dir` names another.
    pub serve_migrations: bool,
    /// Record users' writes in `_tenantdb_audit`.
    pub audit_writes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            guard: GuardConfig::default(),
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                auth: AuthConfig {
                    jwt_secret: Some(SECRET.into()),
                    admin_token: Some(ADMIN.into()),
                    ..AuthConfig::default()
                },
                ..ServerConfig::default()
            },
            serve_migrations: true,
            audit_writes: true,
        }
    }
}

/// A response as the client saw it.
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (a string value when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> TestServer {
        let dir = TempDir::new().unwrap();
        let mut config = Config::new(dir.path().join("data"));
        config.guard = options.guard;
        config.audit_writes = options.audit_writes;
        let fleet = Arc::new(Fleet::open(config).unwrap());
        fleet
            .migrate(
                &migrations(dir.path()),
                &MigrateOptions::default(),
                &NoProgress,
                "test",
            )
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server_fleet = Arc::clone(&fleet);
        let mut server_config = options.server;
        if options.serve_migrations && server_config.migrations_dir.is_none() {
            server_config.migrations_dir = Some(dir.path().join("migrations"));
        }
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(server_config.listen)
                    .await
                    .unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                tenantdb_server::serve(server_fleet, server_config, listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        TestServer {
            url: format!("http://{addr}"),
            dir,
            fleet,
            stop: Some(stop),
            thread: Some(thread),
            agent,
        }
    }

    pub fn token(&self, tenant: &str) -> String {
        mint_token(
            SECRET,
            &TenantId::new(tenant).unwrap(),
            Duration::from_secs(600),
            "sub",
        )
        .unwrap()
    }

    /// POSTs JSON with a bearer token (and optional extra headers); returns status and body.
    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, Value) {
        self.post_raw(path, token, headers, &serde_json::to_vec(body).unwrap())
    }

    pub fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.url))
            .call()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    }

    /// Any request with an optional bearer token and body; the whole response body is read.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        self.call_with_headers(method, path, token, &[], body)
    }

    /// [`TestServer::call`] with extra headers.
    pub fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = match body {
            Some(bytes) => self.agent.run(
                req.header("content-type", "application/json")
                    .body(bytes.to_vec())
                    .unwrap(),
            ),
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = resp.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GETs with a bearer token; returns status and the body as JSON.
    pub fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let reply = self.call("GET", path, token, None);
        (reply.status, reply.json())
    }

    /// DELETEs with a bearer token; returns status and the body as JSON.
    pub fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let reply = self.call("DELETE", path, token, None);
        (reply.status, reply.json())
    }

    /// A pipeline on `/v3/pipeline`; returns (status, body).
    pub fn pipeline(&self, token: &str, baton: Option<&str>, requests: Value) -> (u16, Value) {
        self.post(
            "/v3/pipeline",
            Some(token),
            &[],
            &json!({"baton": baton, "requests": requests}),
        )
    }

    /// Executes one statement on a fresh stream and returns the `result`, panicking on errors.
    pub fn exec(&self, token: &str, sql: &str, args: Value) -> Value {
        let (status, body) = self.pipeline(
            token,
            None,
            json!([{"type": "execute", "stmt": {"sql": sql, "args": args}}, {"type": "close"}]),
        );
        assert_eq!(status, 200, "{body}");
        let result = &body["results"][0];
        assert_eq!(result["type"], "ok", "{sql}: {result}");
        result["response"]["result"].clone()
    }

    /// Executes one statement and returns its Hrana error object.
    pub fn exec_err(&self, token: &str, sql: &str) -> Value {
        let (status, body) = self.pipeline(
            token,
            None,
            json!([{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]),
        );
        assert_eq!(status, 200, "{body}");
        let result = &body["results"][0];
        assert_eq!(result["type"], "error", "{sql} should fail: {result}");
        result["error"].clone()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the server (graceful shutdown) and keeps the data directory for inspection.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn text(v: &str) -> Value {
    json!({"type": "text", "value": v})
}

pub fn int(v: i64) -> Value {
    json!({"type": "integer", "value": v.to_string()})
}

/// The rows of a StmtResult as plain JSON values (integers as numbers when they fit).
pub fn rows(result: &Value) -> Vec<Vec<Value>> {
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| match v["type"].as_str().unwrap() {
                    "null" => Value::Null,
                    "integer" => json!(v["value"].as_str().unwrap().parse::<i64>().unwrap()),
                    "float" => v["value"].clone(),
                    "text" => v["value"].clone(),
                    "blob" => json!({"base64": v["base64"]}),
                    other => panic!("unknown value type {other}"),
                })
                .collect()
        })
        .collect()
}
