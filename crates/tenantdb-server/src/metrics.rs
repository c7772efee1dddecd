//! `/metrics` in the Prometheus text format, and the per-request log line.
//!
//! The families are few and fixed, and most counters already live as atomics in the library and
//! the webhook module, so they are rendered here directly at scrape time rather than through a
//! metrics facade and exporter (two fewer dependencies in a build that must stay lean).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// One route's counters, updated with atomics only: the request path takes no lock once the
/// route has been seen.
#[derive(Default)]
struct RouteStats {
    /// Counts by status code, for the codes the server answers; others share `other`.
    statuses: [AtomicU64; STATUS_CODES.len()],
    other: Mutex<BTreeMap<u16, u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// The status codes the server itself answers with.
const STATUS_CODES: [u16; 12] = [200, 201, 204, 400, 401, 403, 404, 409, 413, 500, 503, 405];

impl RouteStats {
    fn observe(&self, status: u16, seconds: f64) {
        match STATUS_CODES.iter().position(|c| *c == status) {
            Some(i) => {
                self.statuses[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut other = self.other.lock().unwrap_or_else(|p| p.into_inner());
                *other.entry(status).or_insert(0) += 1;
            }
        }
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn statuses(&self) -> BTreeMap<u16, u64> {
        let mut all = self.other.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (code, n) in STATUS_CODES.iter().zip(&self.statuses) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                all.insert(*code, n);
            }
        }
        all
    }

    fn histogram(&self) -> Histogram {
        let mut h = Histogram::default();
        for (slot, count) in h.counts.iter_mut().zip(&self.buckets) {
            *slot = count.load(Ordering::Relaxed);
        }
        h.sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        h.count = self.count.load(Ordering::Relaxed);
        h
    }
}

/// What the HTTP layer counts itself.
#[derive(Default)]
pub struct Metrics {
    /// By route template; written once per new route, read (shared) on every request.
    routes: RwLock<BTreeMap<String, Arc<RouteStats>>>,
    reports: Mutex<Histogram>,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let known = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let stats = match known {
            Some(stats) => stats,
            None => Arc::clone(
                self.routes
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(route.to_string())
                    .or_default(),
            ),
        };
        stats.observe(status, seconds);
    }

    /// Records how long a cross-tenant report took.
    pub fn observe_report(&self, seconds: f64) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(seconds);
    }
}

/// The tenant a response was for, left by handlers for the request log.
#[derive(Clone)]
pub struct TenantTag(pub String);

/// Counts, times and logs every request: one line with route, status, duration and tenant.
pub async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    app.metrics.observe_request(route, status, seconds);
    let tenant = response
        .extensions()
        .get::<TenantTag>()
        .map_or("-", |t| t.0.as_str());
    tracing::info!(
        target: "tenantdb::request",
        %method,
        route = %route,
        status,
        tenant,
        duration_ms = seconds * 1000.0,
        "request"
    );
    response
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn render(State(app): State<Arc<App>>) -> Response {
    let mut out = String::with_capacity(8 * 1024);
    {
        let routes: Vec<(String, Arc<RouteStats>)> = app
            .metrics
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(route, stats)| (route.clone(), Arc::clone(stats)))
            .collect();
        family(
            &mut out,
            "tenantdb_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for (route, stats) in &routes {
            for (status, n) in stats.statuses() {
                let _ = writeln!(
                    out,
                    "tenantdb_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        family(
            &mut out,
            "tenantdb_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route.",
        );
        for (route, stats) in &routes {
            stats.histogram().render(
                &mut out,
                "tenantdb_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        family(
            &mut out,
            "tenantdb_report_duration_seconds",
            "histogram",
            "Cross-tenant report run time.",
        );
        app.metrics
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .render(&mut out, "tenantdb_report_duration_seconds", "");
    }
    let fleet = &app.fleet;
    let cache = &fleet.cache().stats;
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    };
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    };
    gauge(
        &mut out,
        "tenantdb_open_tenants",
        "Tenants with connections in the cache.",
        fleet.cache().len() as u64,
    );
    gauge(
        &mut out,
        "tenantdb_open_streams",
        "Hrana streams kept between requests.",
        app.streams.len() as u64,
    );
    counter(
        &mut out,
        "tenantdb_cache_hits_total",
        "Connection cache lookups that found the tenant open.",
        cache.hits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tenantdb_cache_misses_total",
        "Connection cache lookups that opened the tenant.",
        cache.misses.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tenantdb_cache_evictions_total",
        "Tenants evicted from the connection cache.",
        cache.evictions.load(Ordering::Relaxed),
    );
    let counters = fleet.counters();
    counter(
        &mut out,
        "tenantdb_tenants_provisioned_total",
        "Tenants created by this process.",
        counters.tenants_provisioned.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "tenantdb_migrations_total",
        "counter",
        "Tenant migrations by outcome.",
    );
    let _ = writeln!(
        out,
        "tenantdb_migrations_total{{outcome=\"applied\"}} {}",
        counters.migrations_applied.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "tenantdb_migrations_total{{outcome=\"failed\"}} {}",
        counters.migrations_failed.load(Ordering::Relaxed)
    );
    let w = crate::webhook::snapshot();
    family(
        &mut out,
        "tenantdb_webhook_deliveries_total",
        "counter",
        "Signup webhook deliveries by outcome.",
    );
    for (outcome, n) in [
        ("created", w.created),
        ("deleted", w.deleted),
        ("duplicate", w.duplicate),
        ("ignored", w.ignored),
        ("rejected_signature", w.rejected_signature),
        ("rejected_payload", w.rejected_payload),
        ("failed", w.failed),
    ] {
        let _ = writeln!(
            out,
            "tenantdb_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
