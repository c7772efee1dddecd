//! `POST /admin/reports`: one SELECT across every tenant (DESIGN sections 5.2 and 8).
//!
//! ```text
//! POST /admin/reports {"sql":"…","reduce":null,"tenants":null,"created_after":null,"created_before":null}
//!   -> {"columns":[…],"rows":[[…]],"tenants_scanned":N,"tenants_skipped":[{"tenant","reason"}]}
//! ```
//!
//! - Behind the admin token like every `/admin` route (the route sits in the admin router).
//! - The report is checked before any tenant is opened: anything but one SELECT is a 400
//!   `REPORT_REFUSED`, a syntax error or unknown name a 400 `SQL_ERROR` pointing at the SQL.
//! - The work runs on the blocking pool; rows come through a bounded channel and the body is
//!   streamed, so a result of millions of rows never sits in memory. The response starts once
//!   every tenant has been read (its status then is final); an error after that cuts the body
//!   short, which a client sees as an incomplete response, never as a complete wrong one.
//! - `Accept: text/csv` gives CSV (a header line, then rows), with `x-tenants-scanned` and
//!   `x-tenants-skipped` headers; anything else gives JSON with plain values (numbers,
//!   strings, null, blobs as base64, integers beyond 2^53 as strings).
//! - A client that goes away stops the report: gathering is cancelled, the query interrupted.
//! - Every run is recorded in the admin audit (`report.run`, actor `admin`, the SQL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tenantdb::report::{ReportOptions, ReportRequest, render};
use tenantdb::{Error, NoProgress, SkippedTenant, TenantId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::app::App;
use crate::error::ApiError;

/// The actor recorded in the admin audit for reports run through the API.
const ACTOR: &str = "admin";
/// Reports running at once in this process; each already uses a thread per core.
static REPORT_SLOTS: Semaphore = Semaphore::const_new(2);
/// Body bytes gathered before a chunk is sent.
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks in flight between the report and the connection.
const CHUNKS_IN_FLIGHT: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    sql: String,
    #[serde(default)]
    reduce: Option<String>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
    #[serde(default)]
    created_after: Option<i64>,
    #[serde(default)]
    created_before: Option<i64>,
}

const EXAMPLE: &str =
    r#"{"sql":"SELECT _tenant, count(*) FROM todos GROUP BY 1","reduce":null,"tenants":null}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// What the client gets before the rows.
struct Head {
    columns: Vec<String>,
    scanned: usize,
    skipped: Vec<SkippedTenant>,
}

/// Cancels the report when dropped unless disarmed: a request abandoned while tenants are
/// being read (client gone, request time limit) stops the reading.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// `POST /admin/reports`.
pub async fn run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = parse(&app, body).await?;
    let format = format(&headers);
    let slot = REPORT_SLOTS.acquire().await.map_err(ApiError::internal)?;

    let cancel = Arc::new(AtomicBool::new(false));
    let mut guard = CancelOnDrop(Some(Arc::clone(&cancel)));
    let (head_tx, head_rx) = oneshot::channel::<Result<Head, Error>>();
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let fleet = Arc::clone(&app.fleet);
    let timed = Arc::clone(&app);
    tokio::task::spawn_blocking(move || {
        // Held until the last row is sent.
        let _slot = slot;
        let started = std::time::Instant::now();
        let options = ReportOptions {
            cancel: Some(cancel),
            ..ReportOptions::default()
        };
        let mut report = match fleet.report_with(&request, &options, &NoProgress, ACTOR) {
            Ok(report) => report,
            Err(e) => {
                let _ = head_tx.send(Err(e));
                return;
            }
        };
        let head = Head {
            columns: report.columns.clone(),
            scanned: report.tenants_scanned,
            skipped: report.tenants_skipped.clone(),
        };
        if head_tx.send(Ok(head)).is_err() {
            return;
        }
        stream(&mut report, format, &body_tx);
        timed
            .metrics
            .observe_report(started.elapsed().as_secs_f64());
    });

    let head = match head_rx.await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(report_error(e)),
        Err(_) => {
            return Err(ApiError::internal(
                "the report task ended without an answer",
            ));
        }
    };
    // From here on, the body stream owns the way to stop the report: a client that goes away
    // drops it, and the report stops at its next chunk.
    guard.0 = None;
    tracing::info!(
        tenants_scanned = head.scanned,
        tenants_skipped = head.skipped.len(),
        "report run through the admin API"
    );
    let first = match format {
        Format::Json => render::json_head(&head.columns),
        Format::Csv => render::csv_line(&head.columns),
    };
    let chunks =
        futures_util::stream::unfold((Some(first), body_rx), |(first, mut rx)| async move {
            if let Some(first) = first {
                return Some((Ok(Bytes::from(first)), (None, rx)));
            }
            rx.recv().await.map(|chunk| (chunk, (None, rx)))
        });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match format {
        Format::Json => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Format::Csv => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
            );
            headers.insert("x-tenants-scanned", HeaderValue::from(head.scanned));
            headers.insert("x-tenants-skipped", HeaderValue::from(head.skipped.len()));
        }
    }
    Ok(response)
}

/// Renders the rows (and, for JSON, the tally) into chunks on the channel. Blocking.
fn stream(
    report: &mut tenantdb::Report,
    format: Format,
    body: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut buffer = String::with_capacity(CHUNK_BYTES * 2);
    let mut first = true;
    let send = |buffer: &mut String| -> bool {
        let chunk = Bytes::from(std::mem::take(buffer));
        body.blocking_send(Ok(chunk)).is_ok()
    };
    for row in report.rows.by_ref() {
        match row {
            Ok(row) => {
                match format {
                    Format::Json => buffer.push_str(&render::json_row(&row, first)),
                    Format::Csv => buffer.push_str(&render::csv_row(&row)),
                }
                first = false;
                if buffer.len() >= CHUNK_BYTES && !send(&mut buffer) {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a report failed while streaming its rows");
                // What was rendered goes out, then the body ends in an error, so the client
                // sees an incomplete response rather than a short, well-formed one.
                if !buffer.is_empty() && !send(&mut buffer) {
                    return;
                }
                let _ = body.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        }
    }
    if format == Format::Json {
        buffer.push_str(&render::json_tail(
            report.tenants_scanned,
            &report.tenants_skipped,
        ));
    }
    if !buffer.is_empty() {
        send(&mut buffer);
    }
}

/// Reads and checks the body: the SQL, optional reduce, tenant ids and creation range.
async fn parse(app: &App, body: Body) -> Result<ReportRequest, ApiError> {
    let limit = app.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    })?;
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("the body must be JSON like {EXAMPLE}: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| invalid(&e))?;
    if !value.is_object() {
        return Err(invalid(&"it is not an object"));
    }
    let body: ReportBody = serde_json::from_value(value).map_err(|e| invalid(&e))?;
    let tenants = match body.tenants {
        None => None,
        Some(ids) => Some(
            ids.into_iter()
                .map(|raw| TenantId::new(raw).map_err(|e| ApiError::from(Error::from(e))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ReportRequest {
        sql: body.sql,
        reduce: body.reduce,
        tenants,
        created_after: body.created_after,
        created_before: body.created_before,
    })
}

/// CSV when the client asks for it first (`text/csv`, or `text/*`), JSON otherwise.
fn format(headers: &HeaderMap) -> Format {
    for accept in headers.get_all(header::ACCEPT) {
        let Ok(accept) = accept.to_str() else {
            continue;
        };
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match media.as_str() {
                "text/csv" | "text/*" => return Format::Csv,
                "application/json" | "application/*" | "*/*" => return Format::Json,
                _ => {}
            }
        }
    }
    Format::Json
}

/// A refused or invalid report is the client's mistake (400); the rest is the server's.
fn report_error(e: Error) -> ApiError {
    match e {
        Error::Sql { message, code } if code == "SQLITE_AUTH" => {
            ApiError::new(StatusCode::BAD_REQUEST, "REPORT_REFUSED", message)
        }
        Error::Sql { message, code } if code == "SQLITE_INTERRUPT" => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "REPORT_CANCELLED", message)
        }
        other => ApiError::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        format(&headers)
    }

    #[test]
    fn csv_only_when_asked_for_first() {
        assert_eq!(format(&HeaderMap::new()), Format::Json);
        assert_eq!(accept("text/csv"), Format::Csv);
        assert_eq!(accept("Text/CSV; charset=utf-8"), Format::Csv);
        assert_eq!(accept("application/json, text/csv"), Format::Json);
        assert_eq!(accept("text/csv;q=0, application/json"), Format::Json);
        assert_eq!(accept("text/html, text/csv"), Format::Csv);
        assert_eq!(accept("*/*"), Format::Json);
    }
}
