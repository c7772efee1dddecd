//! `serve`: point reads and small writes through Hrana over HTTP, as libSQL clients send them
//! (`/v2/pipeline` with an execute and a close), from concurrent clients over many tenants.
//!
//! Baseline, in the same run: the same server's `/health` round trip, the floor of what any
//! request can cost here (HTTP parsing, routing, the loopback round trip). Also measured: the
//! 99th percentile of warm reads while other clients keep opening cold tenants, against the
//! same reads without that cold traffic — opening a tenant must not stall the others.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tenantdb::TenantId;
use tenantdb_server::ServerConfig;
use tenantdb_server::auth::{AuthConfig, mint_token};

use crate::Params;
use crate::harness::{
    Report, Workdir, create_tenants, open_fleet, populated_fleet, setup_threads, summarize,
    tenant_ids,
};
use crate::inproc::{self, Load};
use tenantdb_server::client::HttpClient;

pub const DEFAULT_TENANTS: usize = 1000;
const DEFAULT_CLIENTS: usize = 32;
/// Tenants the cold phase opens for the first time while the warm clients read.
const COLD_TENANTS: usize = 3000;
/// Tenants the warm clients of the cold phase read from.
const HOT_TENANTS: usize = 100;
/// Alternating rounds of the audit on/off write comparison (each side runs this many times).
const AUDIT_ROUNDS: usize = 5;
const SECRET: &str = "benchmark-secret-benchmark-secret-32+";

fn read_body(id: i64) -> Vec<u8> {
    format!(
        r#"{{"baton":null,"requests":[{{"type":"execute","stmt":{{"sql":"SELECT title FROM todos WHERE id = ?","args":[{{"type":"integer","value":"{id}"}}]}}}},{{"type":"close"}}]}}"#
    )
    .into_bytes()
}

fn write_body(title: &str) -> Vec<u8> {
    format!(
        r#"{{"baton":null,"requests":[{{"type":"execute","stmt":{{"sql":"INSERT INTO todos (title, done, created_at) VALUES (?, 0, 1700000000)","args":[{{"type":"text","value":"{title}"}}]}}}},{{"type":"close"}}]}}"#
    )
    .into_bytes()
}

/// Sends one Hrana pipeline with `token` and requires its first step to have succeeded.
fn pipeline(http: &mut HttpClient, token: &str, body: &[u8]) -> Result<()> {
    let (status, reply) = http.send("POST", "/v2/pipeline", &[("authorization", token)], body)?;
    expect_ok(status, &reply)
}

fn expect_ok(status: u16, body: &[u8]) -> Result<()> {
    const OK: &[u8] = br#"[{"type":"ok","#;
    if status != 200 || !body.windows(OK.len()).any(|w| w == OK) {
        bail!(
            "unexpected answer {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// Starts the server on `fleet` and touches every tenant once, so later phases measure the
/// cached path.
fn start_warm(fleet: &Arc<tenantdb::Fleet>, tokens: &[String]) -> Result<inproc::RunningServer> {
    let server = inproc::start(
        Arc::clone(fleet),
        ServerConfig {
            auth: AuthConfig {
                jwt_secret: Some(SECRET.into()),
                ..AuthConfig::default()
            },
            ..ServerConfig::default()
        },
    )?;
    let mut http = HttpClient::new(server.addr);
    for token in tokens {
        pipeline(&mut http, token, &read_body(1))?;
    }
    Ok(server)
}

pub fn run(workdir: &Workdir, params: &Params) -> Result<Report> {
    let tenants = params.tenants;
    let clients = params.clients.unwrap_or(DEFAULT_CLIENTS);
    let rows = params.rows;
    let seconds = params.seconds.max(1.0);
    let ids = populated_fleet(workdir, tenants, rows)?;
    let fleet = Arc::new(open_fleet(workdir, tenants.max(1000))?);
    let cold_ids: Vec<TenantId> = tenant_ids(tenants + COLD_TENANTS)?.split_off(tenants);
    create_tenants(&fleet, &cold_ids, setup_threads())?;
    let bearer = |id: &TenantId| -> Result<String> {
        Ok(format!(
            "Bearer {}",
            mint_token(SECRET, id, Duration::from_secs(3600), "sub")?
        ))
    };
    let tokens: Vec<String> = ids.iter().map(bearer).collect::<Result<_>>()?;
    let cold_tokens: Vec<String> = cold_ids.iter().map(bearer).collect::<Result<_>>()?;
    let server = start_warm(&fleet, &tokens)?;
    let addr = server.addr;

    let health = inproc::load(
        addr,
        clients,
        seconds,
        1,
        |_| 0,
        |_, _, http| {
            let (status, _) = http.send("GET", "/health", &[], &[])?;
            if status != 200 {
                bail!("/health answered {status}");
            }
            Ok(())
        },
    )?;
    let pick = |c: usize, i: usize, n: usize| (c.wrapping_mul(7919) + i.wrapping_mul(104_729)) % n;
    let reads = inproc::load(
        addr,
        clients,
        seconds,
        1,
        |_| 0,
        |c, i, http| {
            let t = pick(c, i, tokens.len());
            let row = (i % rows) as i64 + 1;
            pipeline(http, &tokens[t], &read_body(row))
        },
    )?;
    // Single-row inserts, each to a tenant picked like the reads; `tag` keeps titles apart.
    let write_phase = |addr, tag: &'static str| {
        inproc::load(
            addr,
            clients,
            seconds,
            1,
            |_| 0,
            |c, i, http| {
                let t = pick(c, i, tokens.len());
                pipeline(http, &tokens[t], &write_body(&format!("{tag} c{c} i{i}")))
            },
        )
    };
    let writes = write_phase(addr, "on")?;
    // Warm reads over a small hot set, alone and then beside clients opening cold tenants.
    let hot = HOT_TENANTS.min(tokens.len());
    let hot_alone = inproc::load(
        addr,
        clients / 2,
        seconds,
        1,
        |_| 0,
        |c, i, http| {
            let t = pick(c, i, hot);
            pipeline(http, &tokens[t], &read_body(1))
        },
    )?;
    let next_cold = std::sync::atomic::AtomicUsize::new(0);
    let mixed = inproc::load(
        addr,
        clients,
        seconds,
        2,
        |c| c % 2,
        |c, i, http| {
            if c % 2 == 0 {
                let t = pick(c, i, hot);
                return pipeline(http, &tokens[t], &read_body(1));
            }
            let n = next_cold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = &cold_tokens[n % cold_tokens.len()];
            let (status, body) = http.send(
                "POST",
                "/v2/pipeline",
                &[("authorization", token)],
                &read_body(1),
            )?;
            if status != 200 {
                bail!("cold open answered {status}");
            }
            let _ = body;
            Ok(())
        },
    )?;
    let opened = next_cold
        .load(std::sync::atomic::Ordering::Relaxed)
        .min(COLD_TENANTS);
    server.stop();
    fleet.shutdown();
    drop(fleet);

    // The write audit's cost: the same write phase with the audit on and off, in alternating
    // rounds on the same tenants (each round on a freshly opened fleet and server), so drift
    // in the machine's load or in the tenants' size falls on both sides alike.
    let mut audit_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..AUDIT_ROUNDS {
        for audited in [round % 2 == 0, round % 2 != 0] {
            // Write back what earlier phases left dirty in the page cache, so the kernel's
            // writeback of one round does not throttle the next.
            let _ = std::process::Command::new("sync").status();
            let mut config = tenantdb::Config::new(workdir.fleet_dir());
            config.cache_capacity = tenants.max(1000);
            config.audit_writes = audited;
            let fleet = Arc::new(tenantdb::Fleet::open(config)?);
            let server = start_warm(&fleet, &tokens)?;
            let tag = if audited { "on" } else { "off" };
            let load = write_phase(server.addr, tag)?;
            audit_rates[usize::from(audited)].push(load.rate());
            server.stop();
            fleet.shutdown();
        }
    }
    let audit_off = summarize(&audit_rates[0]).median;
    let audit_on = summarize(&audit_rates[1]).median;

    let mut report = Report::new("serve");
    report.param("tenants", tenants as u64);
    report.param("rows", rows as u64);
    report.param("clients", clients as u64);
    report.param("seconds", seconds);
    report.line(format!(
        "serve: {tenants} tenants x {rows} rows, {clients} concurrent clients, {seconds:.1} s per phase"
    ));
    let phase = |report: &mut Report, name: &str, load: &Load, what: &str| -> (f64, f64, f64) {
        let s = summarize(&load.all_latencies());
        report.figure(&format!("{name}_per_second"), load.rate());
        report.figure(&format!("{name}_p50_us"), s.median);
        report.figure(&format!("{name}_p99_us"), s.p99);
        report.line(format!(
            "  {what:<44} {:>9.0} req/s   p50 {:>7.0} us   p99 {:>7.0} us",
            load.rate(),
            s.median,
            s.p99
        ));
        (load.rate(), s.median, s.p99)
    };
    let (health_rate, ..) = phase(
        &mut report,
        "baseline_health",
        &health,
        "baseline  GET /health (same server)",
    );
    let (read_rate, ..) = phase(
        &mut report,
        "reads",
        &reads,
        "point reads (/v2/pipeline execute+close)",
    );
    let (write_rate, ..) = phase(
        &mut report,
        "writes",
        &writes,
        "single-row inserts (autocommit)",
    );
    let (_, _, hot_p99) = phase(
        &mut report,
        "hot_reads_alone",
        &hot_alone,
        "warm reads, 100 tenants, alone",
    );
    let hot_during = summarize(&mixed.latencies_us[0]);
    let cold = summarize(&mixed.latencies_us[1]);
    report.figure("hot_reads_during_cold_opens_p99_us", hot_during.p99);
    report.figure("hot_reads_during_cold_opens_p50_us", hot_during.median);
    report.figure("cold_open_request_p50_us", cold.median);
    report.figure("cold_open_request_p99_us", cold.p99);
    report.count("cold_tenants_opened", opened as u64);
    report.line(format!(
        "  warm reads while {opened} cold tenants open: p50 {:.0} us, p99 {:.0} us (alone: p99 {hot_p99:.0} us); cold requests p50 {:.0} us, p99 {:.0} us",
        hot_during.median, hot_during.p99, cold.median, cold.p99
    ));
    report.figure("writes_audit_on_per_second", audit_on);
    report.figure("writes_audit_off_per_second", audit_off);
    report.figure("audit_write_ratio", audit_on / audit_off);
    let rounds = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.line(format!(
        "  single-row inserts, write audit on / off ({AUDIT_ROUNDS} alternating rounds): medians {audit_on:.0} / {audit_off:.0} req/s (on: {}; off: {})",
        rounds(&audit_rates[1]),
        rounds(&audit_rates[0])
    ));
    report.line(format!(
        "  audit     {:.2} (median inserts/s with the write audit / without)",
        audit_on / audit_off
    ));
    let ratio = read_rate / health_rate;
    report.figure("ratio", ratio);
    report.figure("write_ratio", write_rate / health_rate);
    report.line(format!(
        "  ratio     {ratio:.2} (point reads/s / /health req/s); writes {:.2}",
        write_rate / health_rate
    ));
    Ok(report)
}
