//! `tenantdb demo`: the whole system end to end in under a minute (DESIGN section 10), through
//! its public paths only — signed signup webhooks, Hrana with each user's own token, the admin
//! API — against a server started in this process on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tenantdb::{Config, Fleet, MigrateOptions, NoProgress, TenantId};
use tenantdb_server::ServerConfig;
use tenantdb_server::auth::{AuthConfig, mint_token};
use tenantdb_server::client::HttpClient;
use tenantdb_server::secrets::DevSecrets;

use crate::output::table;
use crate::progress::bar;

const TODOS: &str = "CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);\n";
const PRIORITY: &str = "ALTER TABLE todos ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n";
const SENDERS: usize = 8;

pub struct DemoArgs {
    pub data_dir: Option<PathBuf>,
    pub users: usize,
    pub use_existing: bool,
}

/// A server running on a runtime of its own until dropped.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(fleet: Arc<Fleet>, config: ServerConfig) -> Result<Running> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))
        .context("listening on loopback")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("demo-server".into())
        .spawn(move || {
            let served = runtime.block_on(tenantdb_server::serve(fleet, config, listener, async {
                let _ = stopped.await;
            }));
            if let Err(e) = served {
                eprintln!("demo server failed: {e}");
            }
        })?;
    Ok(Running {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn call(
    http: &mut HttpClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Result<(u16, Value)> {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body)?
    };
    let (status, reply) = http.send(method, path, headers, &bytes)?;
    let value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    Ok((status, value))
}

fn expect(what: &str, status: u16, body: &Value, wanted: u16) -> Result<()> {
    if status != wanted {
        bail!("{what}: expected HTTP {wanted}, got {status}: {body}");
    }
    Ok(())
}

/// Runs `work(i)` for `0..count` on a few threads, each with its own HTTP connection.
fn fan_out(
    addr: SocketAddr,
    count: usize,
    progress: &ProgressBar,
    work: impl Fn(&mut HttpClient, usize) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SENDERS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut http = HttpClient::new(addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        work(&mut http, i)?;
                        progress.inc(1);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a demo client panicked")))?;
        }
        Ok(())
    })
}

fn stmt(sql: &str, args: Value) -> Value {
    json!({"type": "execute", "stmt": {"sql": sql, "args": args}})
}

fn text(v: &str) -> Value {
    json!({"type": "text", "value": v})
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let temp;
    let data_dir: &Path = match &args.data_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::Builder::new()
                .prefix("tenantdb-demo-")
                .tempdir()?;
            temp.path()
        }
    };
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    let fleet = Arc::new(Fleet::open(Config::new(data_dir.join("data")))?);
    let existing = fleet.list_tenants(None, 1)?;
    if !existing.is_empty() && !args.use_existing {
        bail!(
            "{} already holds tenants; the demo signs up users of its own. Give it an empty \
             directory, or pass --use-existing to run it there anyway",
            data_dir.display()
        );
    }
    let migrations = data_dir.join("demo-migrations");
    std::fs::create_dir_all(&migrations)?;
    std::fs::write(migrations.join("0001_create_todos.sql"), TODOS)?;
    if fleet.migration_status(Some(&migrations))?.problem.is_none() {
        fleet.migrate(&migrations, &MigrateOptions::default(), &NoProgress, "demo")?;
    }
    let secrets = DevSecrets::generate()?;
    let server = start(
        Arc::clone(&fleet),
        ServerConfig {
            auth: AuthConfig {
                jwt_secret: Some(secrets.jwt_secret.clone()),
                admin_token: Some(secrets.admin_token.clone()),
                ..AuthConfig::default()
            },
            webhook_secrets: vec![secrets.webhook_secret.clone()],
            migrations_dir: Some(migrations.clone()),
            ..ServerConfig::default()
        },
    )?;
    let addr = server.addr;
    println!(
        "tenantdb demo: server on http://{addr}, data in {}",
        data_dir.display()
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    // Ids unique to this run, so a run in a used directory signs up users of its own.
    let run_id = format!("{:x}", now.as_nanos() % (1 << 48));
    let users: Vec<TenantId> = (0..args.users)
        .map(|i| TenantId::new(format!("user_demo{run_id}_{i:05}")))
        .collect::<Result<_, _>>()?;
    let admin = format!("Bearer {}", secrets.admin_token);

    // 1. Signups arrive as signed webhooks, as an auth provider sends them.
    let progress = bar("signing up users", users.len() as u64);
    let timestamp = now.as_secs().to_string();
    fan_out(addr, users.len(), &progress, |http, i| {
        let msg_id = format!("msg_demo_{run_id}_{i}");
        let body = serde_json::to_vec(
            &json!({"type": "user.created", "data": {"id": users[i].as_str()}}),
        )?;
        let signature =
            tenantdb_server::webhook::sign(&secrets.webhook_secret, &msg_id, &timestamp, &body)
                .context("signing a webhook")?;
        let (status, reply) = http.send(
            "POST",
            "/webhooks/clerk",
            &[
                ("svix-id", &msg_id),
                ("svix-timestamp", &timestamp),
                ("svix-signature", &signature),
            ],
            &body,
        )?;
        if status != 200 {
            bail!(
                "signup webhook answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    println!("  {} users signed up through signed webhooks", users.len());

    // 2. Each user writes their own todos through Hrana with their own token.
    let tokens: Vec<String> = users
        .iter()
        .map(|u| {
            Ok(format!(
                "Bearer {}",
                mint_token(&secrets.jwt_secret, u, Duration::from_secs(3600), "sub")?
            ))
        })
        .collect::<Result<_>>()?;
    let progress = bar("writing todos", users.len() as u64);
    fan_out(addr, users.len(), &progress, |http, i| {
        let requests = json!([
            stmt("INSERT INTO todos (title) VALUES (?)", json!([text(&format!("{} buys milk", users[i]))])),
            stmt("INSERT INTO todos (title, done) VALUES (?, ?)", json!([text("write the report"), {"type": "integer", "value": (i % 2).to_string()}])),
            stmt("INSERT INTO todos (title) VALUES ('call home')", json!([])),
            {"type": "close"},
        ]);
        let (status, body) = call(
            http,
            "POST",
            "/v2/pipeline",
            &[("authorization", &tokens[i])],
            &json!({"baton": null, "requests": requests}),
        )?;
        expect("writing todos", status, &body, 200)?;
        if body["results"]
            .as_array()
            .is_none_or(|r| r.iter().any(|x| x["type"] != "ok"))
        {
            bail!("a write failed: {body}");
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    println!("  {} todos written, each by its own user", users.len() * 3);

    // 3. Isolation: a user sees only their rows and cannot name someone else's database.
    let mut http = HttpClient::new(addr);
    let (status, body) = call(
        &mut http,
        "POST",
        "/v2/pipeline",
        &[("authorization", &tokens[0])],
        &json!({"baton": null, "requests": [stmt("SELECT count(*), min(title) FROM todos", json!([])), {"type": "close"}]}),
    )?;
    expect("reading one's own todos", status, &body, 200)?;
    let own = &body["results"][0]["response"]["result"]["rows"][0];
    let (status, _) = call(
        &mut http,
        "POST",
        "/v2/pipeline",
        &[
            ("authorization", &tokens[0]),
            ("x-tenant", users.get(1).unwrap_or(&users[0]).as_str()),
        ],
        &json!({"baton": null, "requests": [stmt("SELECT * FROM todos", json!([]))]}),
    )?;
    let refused = users.len() == 1 || status == 403;
    if !refused {
        bail!("isolation check failed: reaching another user answered {status}");
    }
    println!(
        "  isolation: {} sees {} todos of their own (\"{}\"); naming another user's database is refused (403)",
        users[0],
        own[0]["value"].as_str().unwrap_or("?"),
        own[1]["value"].as_str().unwrap_or("?")
    );

    // 4. A migration rolled out to the whole fleet through the admin API.
    std::fs::write(migrations.join("0002_todo_priority.sql"), PRIORITY)?;
    let (status, body) = call(
        &mut http,
        "POST",
        "/admin/migrations/apply",
        &[("authorization", &admin)],
        &json!({"dry_run": false}),
    )?;
    expect("applying the migration", status, &body, 200)?;
    println!(
        "  migration 0002 (ADD COLUMN priority): schema version {}, {} tenants migrated, {} failed",
        body["schema_version"],
        body["migrated"],
        body["failed"].as_array().map_or(0, Vec::len)
    );

    // 5. A report across every user's database.
    let (status, body) = call(
        &mut http,
        "POST",
        "/admin/reports",
        &[("authorization", &admin)],
        &json!({
            "sql": "SELECT done, count(DISTINCT _tenant) AS users, count(*) AS todos FROM todos GROUP BY done ORDER BY done"
        }),
    )?;
    expect("running the report", status, &body, 200)?;
    println!("  report across {} tenants:", body["tenants_scanned"]);
    let headers: Vec<String> = body["columns"].as_array().map_or_else(Vec::new, |c| {
        c.iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect()
    });
    let rows: Vec<Vec<String>> = body["rows"].as_array().map_or_else(Vec::new, |rows| {
        rows.iter()
            .map(|r| {
                r.as_array()
                    .map_or_else(Vec::new, |r| r.iter().map(|v| v.to_string()).collect())
            })
            .collect()
    });
    table(
        &headers.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    );

    // 6. The write audit of one user, and fleet analytics.
    let (status, body) = call(
        &mut http,
        "GET",
        &format!("/admin/tenants/{}/audit?limit=3", users[0]),
        &[("authorization", &admin)],
        &Value::Null,
    )?;
    expect("reading the audit", status, &body, 200)?;
    println!("  audit of {}:", users[0]);
    for e in body["entries"].as_array().map_or(&[][..], Vec::as_slice) {
        println!(
            "    #{} {} {} ({} row)",
            e["seq"],
            e["actor"].as_str().unwrap_or(""),
            e["statement"].as_str().unwrap_or(""),
            e["rows_changed"]
        );
    }
    let (status, stats) = call(
        &mut http,
        "GET",
        "/admin/stats",
        &[("authorization", &admin)],
        &Value::Null,
    )?;
    expect("reading stats", status, &stats, 200)?;
    println!(
        "  fleet: {} tenants, {} active today, {} requests and {} writes counted, {} bytes on disk, versions {}",
        stats["tenants_total"],
        stats["active_1d"],
        stats["requests_total"],
        stats["writes_total"],
        stats["sizes"]["total_bytes"],
        stats["schema_versions"]
    );
    drop(server);
    fleet.shutdown();
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
