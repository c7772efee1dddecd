//! `webhook`: signed `user.created` deliveries per second through the real HTTP path
//! (signature check, idempotency record, provisioning, admin audit), from concurrent senders.
//!
//! Baseline, in the same run: `provision`, creating the same number of tenants through
//! `Fleet::create_tenant` from the same number of threads — the work a delivery exists to do.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use tenantdb::TenantId;
use tenantdb_server::ServerConfig;
use tenantdb_server::auth::AuthConfig;

use crate::Params;
use crate::harness::{Report, Workdir, create_tenants, open_fleet_at_v1, summarize, summarize_us};
use tenantdb_server::client::HttpClient;

pub const DEFAULT_TENANTS: usize = 2000;
const DEFAULT_CLIENTS: usize = 16;
/// `whsec_` + base64 of a fixed 24-byte key: the benchmark signs its own deliveries.
const SECRET_KEY: &[u8] = b"benchmark-webhook-key-24";

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let clients = params.clients.unwrap_or(DEFAULT_CLIENTS);
    let fleet = Arc::new(open_fleet_at_v1(workdir)?);
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret = format!("whsec_{}", b64.encode(SECRET_KEY));
    let server = crate::inproc::start(
        Arc::clone(&fleet),
        ServerConfig {
            auth: AuthConfig {
                admin_token: Some("benchmark-admin-token".into()),
                ..AuthConfig::default()
            },
            webhook_secrets: vec![secret.clone()],
            ..ServerConfig::default()
        },
    )?;
    let addr = server.addr;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("reading the clock")?
        .as_secs()
        .to_string();
    let deliveries: Vec<(String, Vec<u8>, String)> = (0..tenants)
        .map(|i| {
            let id = format!("msg_bench_{i:07}");
            let body = format!(
                r#"{{"type":"user.created","object":"event","data":{{"id":"user_w{i:07}"}}}}"#
            )
            .into_bytes();
            let signature = tenantdb_server::webhook::sign(&secret, &id, &timestamp, &body)
                .context("signing a delivery")?;
            Ok((id, body, signature))
        })
        .collect::<Result<_>>()?;

    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let latencies: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (next, deliveries, timestamp) = (&next, &deliveries, &timestamp);
                scope.spawn(move || -> Result<Vec<f64>> {
                    let mut http = HttpClient::new(addr);
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((id, body, signature)) = deliveries.get(i) else {
                            return Ok(mine);
                        };
                        let t = Instant::now();
                        let (status, reply) = http.send(
                            "POST",
                            "/webhooks/clerk",
                            &[
                                ("svix-id", id),
                                ("svix-timestamp", timestamp),
                                ("svix-signature", signature),
                            ],
                            body,
                        )?;
                        if status != 200 {
                            bail!(
                                "delivery {id} answered {status}: {}",
                                String::from_utf8_lossy(&reply)
                            );
                        }
                        mine.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let seconds = started.elapsed().as_secs_f64();
    server.stop();
    let created = fleet.list_tenants(None, usize::MAX)?.len();
    if created != tenants {
        bail!("{created} tenants exist after {tenants} signups");
    }

    let baseline_ids: Vec<TenantId> = (0..tenants)
        .map(|i| TenantId::new(format!("user_p{i:07}")).context("tenant id"))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let baseline_latencies = create_tenants(&fleet, &baseline_ids, clients)?;
    let baseline_seconds = started.elapsed().as_secs_f64();
    fleet.shutdown();

    let ours = summarize(&latencies.concat());
    let theirs = summarize_us(&baseline_latencies);
    let rate = tenants as f64 / seconds;
    let baseline_rate = tenants as f64 / baseline_seconds;
    let mut report = Report::new("webhook");
    report.param("tenants", tenants as u64);
    report.param("clients", clients as u64);
    report.figure("signups_per_second", rate);
    report.figure("delivery_us_median", ours.median);
    report.figure("delivery_us_p99", ours.p99);
    report.figure("seconds", seconds);
    report.figure("baseline_tenants_per_second", baseline_rate);
    report.figure("baseline_create_us_median", theirs.median);
    report.figure("baseline_seconds", baseline_seconds);
    report.figure("ratio", rate / baseline_rate);
    report.line(format!(
        "webhook: {tenants} signed user.created deliveries from {clients} senders"
    ));
    report.line(format!(
        "  POST /webhooks/clerk                    {rate:>9.1} signups/s   median {:>8.1} us, p99 {:>8.1} us   ({seconds:.2} s)",
        ours.median, ours.p99
    ));
    report.line(format!(
        "  baseline  provision (Fleet::create_tenant) {baseline_rate:>9.1} tenants/s  median {:>8.1} us   ({baseline_seconds:.2} s)",
        theirs.median
    ));
    report.line(format!(
        "  ratio     {:.2} (signups/s / provision tenants/s)",
        rate / baseline_rate
    ));
    Ok(report)
}
