//! The data-plane routes: `/v2/pipeline`, `/v3/pipeline`, `/v3/cursor`, `/v1/execute`,
//! `/v1/batch`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::exec::{Budget, Next};
use super::proto::{
    Batch, BatchResult, CursorEntry, CursorReqBody, CursorRespBody, PipelineReqBody,
    PipelineRespBody, Stmt, StmtResult, StreamRequest, StreamResult,
};
use super::streams::{BatonError, Stream};
use crate::app::App;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::TenantTag;

type Result<T> = std::result::Result<T, ApiError>;

fn json_response(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => ApiError::internal(e).hrana().into_response(),
    }
}

/// The most of a refused request's body read just to keep its connection usable.
const REFUSED_BODY_DRAIN: usize = 64 << 10;

/// Reads and parses a JSON body within the size limit, after authentication: an
/// unauthenticated caller learns nothing, not even whether its body parses.
async fn authenticated<T: DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Principal, T)> {
    let principal = match app.auth.authenticate(headers) {
        Ok(principal) => principal,
        Err(e) => {
            // Read (and drop) a small body still on its way, so the refusal does not cost the
            // client its keep-alive connection; a large one is left unread and the connection
            // closes instead.
            let _ = axum::body::to_bytes(body, REFUSED_BODY_DRAIN).await;
            return Err(ApiError::from(e).hrana());
        }
    };
    let bytes: Bytes = axum::body::to_bytes(body, app.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    app.config.max_body_bytes
                ),
            )
            .hrana()
        })?;
    let parsed = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "PROTOCOL_ERROR",
            format!("malformed request body: {e}"),
        )
        .hrana()
    })?;
    Ok((principal, parsed))
}

/// Runs blocking SQLite work on the blocking pool, within the concurrency limit.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let permit = Arc::clone(&app.sql_slots)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(e).hrana())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::internal(e).hrana())?
}

fn baton_error(e: BatonError) -> ApiError {
    let (status, code) = match e {
        BatonError::Invalid => (StatusCode::BAD_REQUEST, "STREAM_EXPIRED"),
        BatonError::Busy => (StatusCode::CONFLICT, "STREAM_BUSY"),
        BatonError::TooMany(_) => (StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_STREAMS"),
    };
    ApiError::new(status, code, e.to_string()).hrana()
}

/// The stream a request continues (by baton) or a new one.
fn stream_for(app: &App, principal: &Principal, baton: Option<&str>) -> Result<Box<Stream>> {
    let tenant = App::tenant_of(principal).map_err(ApiError::hrana)?;
    let stream = match baton {
        Some(baton) => app.streams.take(baton, &tenant).map_err(baton_error)?,
        None => {
            let lease = app.connect(principal, &tenant).map_err(ApiError::hrana)?;
            app.streams.open(tenant, lease).map_err(baton_error)?
        }
    };
    Ok(with_actor(stream, principal))
}

/// The write audit names who wrote: the user, or the operator through the admin token.
fn with_actor(mut stream: Box<Stream>, principal: &Principal) -> Box<Stream> {
    stream.lease.set_actor(match principal {
        Principal::User { .. } => principal.actor(),
        Principal::Admin { .. } => "admin:api".to_string(),
    });
    stream
}

/// How long a pipeline may run on the thread that received it (see [`quick_stream`]). A point
/// read takes a few microseconds; this leaves room for small scans while keeping the async
/// executor's threads free for everyone else.
const QUICK_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether a statement looks like a read, judged from its first word. Only a hint: the
/// connection's quick-read confinement has the last word (`WITH … INSERT` reads as a read
/// here); it keeps writes from trying the quick path first only to be sent elsewhere.
fn looks_like_read(stmt: &Stmt) -> bool {
    let Some(sql) = &stmt.sql else { return false };
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next();
    first.is_some_and(|w| {
        ["SELECT", "WITH", "VALUES"]
            .iter()
            .any(|r| w.eq_ignore_ascii_case(r))
    })
}

/// A new stream on an idle cached connection, confined to quick reads, for a pipeline that may
/// be answered without leaving the async executor: handing each request to the blocking pool
/// and back costs two thread wake-ups, several times what a point read itself costs. `None`
/// when the pipeline continues a stream, keeps state (stored SQL), writes, or no connection
/// is idle.
fn quick_stream(app: &App, principal: &Principal, req: &PipelineReqBody) -> Option<Box<Stream>> {
    let reads_only = req.requests.iter().all(|r| match r {
        StreamRequest::Execute { stmt } => looks_like_read(stmt),
        StreamRequest::Batch { batch } => batch.steps.iter().all(|s| looks_like_read(&s.stmt)),
        StreamRequest::GetAutocommit | StreamRequest::Close => true,
        _ => false,
    });
    if req.baton.is_some() || !reads_only {
        return None;
    }
    let tenant = App::tenant_of(principal).ok()?;
    let lease = app.fleet.connect_idle(&tenant)?;
    let stream = app.streams.open(tenant, lease).ok()?;
    Some(with_actor(stream, principal))
}

pub async fn pipeline(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let mut tenant = None;
    let run = async {
        let (principal, req): (Principal, PipelineReqBody) =
            authenticated(&app, &headers, body).await?;
        tenant = principal.tenant().map(|t| TenantTag(t.to_string()));
        if let Some(mut stream) = quick_stream(&app, &principal, &req) {
            if stream.lease.quick_reads_only(Some(QUICK_BUDGET)) {
                let ran = run_requests(&mut stream, &req.requests);
                let refused = stream.lease.quick_refused();
                stream.lease.quick_reads_only(None);
                if !refused {
                    return Ok(finish(&app, stream, ran));
                }
            }
            // Not a quick read after all (nothing was changed), or this tenant's reads have
            // lately been slow: run it all where blocking is allowed.
            let worker = Arc::clone(&app);
            return blocking(&app, move || {
                let ran = run_requests(&mut stream, &req.requests);
                Ok(finish(&worker, stream, ran))
            })
            .await;
        }
        let worker = Arc::clone(&app);
        blocking(&app, move || {
            let mut stream = stream_for(&worker, &principal, req.baton.as_deref())?;
            let ran = run_requests(&mut stream, &req.requests);
            Ok(finish(&worker, stream, ran))
        })
        .await
    };
    let mut response = match run.await {
        Ok(resp) => json_response(&resp),
        Err(e) => e.into_response(),
    };
    if let Some(tag) = tenant {
        response.extensions_mut().insert(tag);
    }
    response
}

/// A pipeline's results, and whether one of its requests closed the stream.
struct Ran {
    results: Vec<StreamResult>,
    closed: bool,
}

/// Runs a pipeline's requests in order on its stream; after a `close`, the rest fail.
fn run_requests(stream: &mut Stream, requests: &[StreamRequest]) -> Ran {
    let mut budget = Budget::new(stream.lease.limits().max_response_bytes);
    let mut results = Vec::with_capacity(requests.len());
    let mut closed = false;
    for request in requests {
        if closed {
            results.push(StreamResult::Error {
                error: super::proto::Error {
                    message: "the stream was closed by an earlier request".into(),
                    code: Some("STREAM_CLOSED".into()),
                },
            });
            continue;
        }
        let Stream { lease, state, .. } = stream;
        let (outcome, next) = state.handle(lease, request, &mut budget);
        closed = matches!(next, Next::Close);
        results.push(match outcome {
            Ok(response) => StreamResult::Ok { response },
            Err(error) => StreamResult::Error { error },
        });
    }
    Ran { results, closed }
}

/// Records the stream's activity and parks it for its next request (or forgets it if closed).
fn finish(app: &App, stream: Box<Stream>, Ran { results, closed }: Ran) -> PipelineRespBody {
    app.fleet
        .record_activity(&stream.tenant, stream.lease.take_writes());
    let baton = if closed {
        app.streams.forget(&stream);
        None
    } else {
        Some(app.streams.put_back(stream))
    };
    PipelineRespBody {
        baton,
        base_url: None,
        results,
    }
}

/// `/v3/cursor`: the batch's results stream back as lines of JSON while it runs, so a large
/// result never sits whole in the server's memory.
pub async fn cursor(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let start = async {
        let (principal, req): (Principal, CursorReqBody) =
            authenticated(&app, &headers, body).await?;
        let worker = Arc::clone(&app);
        let baton = req.baton.clone();
        let stream = blocking(&app, move || {
            stream_for(&worker, &principal, baton.as_deref())
        })
        .await?;
        Ok::<_, ApiError>((stream, req.batch))
    };
    let (mut stream, batch) = match start.await {
        Ok(started) => started,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let head = CursorRespBody {
        baton: Some(app.streams.next_baton(&stream)),
        base_url: None,
    };
    let worker = Arc::clone(&app);
    let permit = match Arc::clone(&app.sql_slots).acquire_owned().await {
        Ok(p) => p,
        Err(e) => return ApiError::internal(e).hrana().into_response(),
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let send = |value: &dyn erased::Line| tx.blocking_send(value.line()).is_ok();
        if !send(&head) {
            worker.streams.put_back(stream);
            return;
        }
        let mut budget = Budget::new(stream.lease.limits().max_response_bytes);
        let Stream { lease, state, .. } = &mut *stream;
        state.cursor(lease, &batch, &mut budget, &mut |entry: CursorEntry| {
            send(&entry)
        });
        worker
            .fleet
            .record_activity(&stream.tenant, stream.lease.take_writes());
        worker.streams.put_back(stream);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Serializes values of different types as one JSON line each.
mod erased {
    use axum::body::Bytes;
    use serde::Serialize;

    pub trait Line {
        fn line(&self) -> Bytes;
    }

    impl<T: Serialize> Line for T {
        fn line(&self) -> Bytes {
            let mut bytes = serde_json::to_vec(self).unwrap_or_else(|e| {
                format!(r#"{{"type":"error","error":{{"message":"{e}"}}}}"#).into_bytes()
            });
            bytes.push(b'\n');
            Bytes::from(bytes)
        }
    }
}

#[derive(serde::Deserialize)]
pub struct ExecuteReq {
    stmt: Stmt,
}

#[derive(Serialize)]
struct ExecuteResp {
    result: StmtResult,
}

#[derive(serde::Deserialize)]
pub struct BatchReq {
    batch: Batch,
}

#[derive(Serialize)]
struct BatchResp {
    result: BatchResult,
}

/// `/v1/execute`: one statement on a stream of its own.
pub async fn v1_execute(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let (principal, req): (Principal, ExecuteReq) = authenticated(&app, &headers, body).await?;
        let worker = Arc::clone(&app);
        blocking(&app, move || {
            let mut stream = stream_for(&worker, &principal, None)?;
            let mut budget = Budget::new(stream.lease.limits().max_response_bytes);
            let Stream { lease, state, .. } = &mut *stream;
            state
                .execute(lease, &req.stmt, &mut budget)
                .map(|result| ExecuteResp { result })
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "SQL_ERROR", e.message).hrana())
        })
        .await
    };
    match run.await {
        Ok(resp) => json_response(&resp),
        Err(e) => e.into_response(),
    }
}

/// `/v1/batch`: one batch on a stream of its own.
pub async fn v1_batch(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let (principal, req): (Principal, BatchReq) = authenticated(&app, &headers, body).await?;
        let worker = Arc::clone(&app);
        blocking(&app, move || {
            let mut stream = stream_for(&worker, &principal, None)?;
            let mut budget = Budget::new(stream.lease.limits().max_response_bytes);
            let Stream { lease, state, .. } = &mut *stream;
            Ok(BatchResp {
                result: state.batch(lease, &req.batch, &mut budget),
            })
        })
        .await
    };
    match run.await {
        Ok(resp) => json_response(&resp),
        Err(e) => e.into_response(),
    }
}
