//! The admin API (DESIGN.md 5.2): operators create, list, inspect, delete, restore and export
//! tenants, read the admin audit and roll migrations out, with the admin token. Also the
//! background task that purges trash older than the retention period.
//!
//! - Every route sits behind [`require_admin`]: no token or a wrong token is 401, a user's JWT
//!   is 403. The admin token is compared in constant time by the [`crate::auth::Authenticator`].
//!   A user token presented here is token misuse and is recorded in the admin audit as
//!   `admin.denied` (who, which route; never the token), at most once a minute per user so a
//!   misbehaving client cannot flood the catalog (every attempt is still logged).
//! - Times in responses are unix seconds (UTC), as the catalog keeps them: `created_at`,
//!   `last_active_at`, `deleted_at`, `restorable_until`, the audit's `at`, `registered_at`.
//! - Bad input (a malformed id, an unknown or repeated query parameter, a body that is not the
//!   expected JSON) is a 400 with a message saying what was expected; nothing is touched.
//! - SQLite and file work runs on the blocking pool, never on the async executor.
//! - Lifecycle actions are recorded in the admin audit by the library, with actor `admin`.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tenantdb::{Error, MigrateOptions, NoProgress, TenantId, TenantInfo, TenantState};
use tokio::io::AsyncReadExt;

use crate::app::App;
use crate::auth::{AuthError, Principal};
use crate::error::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The actor the library records for actions taken through this API.
const ACTOR: &str = "admin";
/// The actor recorded for purges by the retention task.
const RETENTION_ACTOR: &str = "retention";
/// Page size when `limit` is not given, and the largest one allowed.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Exports are written here (inside the data directory, so the final rename stays on one
/// filesystem) and removed once they are open for streaming.
const EXPORTS_DIR: &str = "exports";
/// Exports left behind by a crash are removed once they are this old.
const STALE_EXPORT_AGE: Duration = Duration::from_secs(3600);
/// Bytes read from an export per body chunk.
const EXPORT_CHUNK: usize = 64 * 1024;
/// `admin.denied` is recorded at most this often per user.
const DENIAL_AUDIT_INTERVAL: Duration = Duration::from_secs(60);
/// Users remembered for that throttle before forgetting the oldest.
const DENIAL_AUDIT_SUBJECTS: usize = 10_000;
/// How often the retention task looks at the trash: once a minute, or more often when the
/// retention itself is shorter (so a short retention is honoured within about its own length).
const PURGE_PERIOD_MAX: Duration = Duration::from_secs(60);
const PURGE_PERIOD_MIN: Duration = Duration::from_secs(1);

/// State of the admin middleware: the app, and when each user was last recorded as denied.
#[derive(Clone)]
pub struct Gate {
    app: Arc<App>,
    denials: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Gate {
    pub fn new(app: Arc<App>) -> Self {
        Gate {
            app,
            denials: Arc::default(),
        }
    }

    /// Whether this user's refusal should go to the audit now (the throttle).
    fn should_audit(&self, actor: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if seen
            .get(actor)
            .is_some_and(|last| now.duration_since(*last) < DENIAL_AUDIT_INTERVAL)
        {
            return false;
        }
        if seen.len() >= DENIAL_AUDIT_SUBJECTS {
            seen.retain(|_, last| now.duration_since(*last) < DENIAL_AUDIT_INTERVAL);
            if seen.len() >= DENIAL_AUDIT_SUBJECTS {
                seen.clear();
            }
        }
        seen.insert(actor.to_owned(), now);
        true
    }

    async fn record_denial(&self, user: &Principal, method: &Method, path: &str) {
        let actor = user.actor();
        tracing::warn!(%actor, %method, path = %truncated(path, 256), "a user token was refused on an admin route");
        if !self.should_audit(&actor) {
            return;
        }
        let tenant = user.tenant().cloned();
        let detail = format!("{method} {}", truncated(path, 256));
        let fleet = Arc::clone(&self.app.fleet);
        let written = tokio::task::spawn_blocking(move || {
            fleet
                .catalog()
                .audit(&actor, "admin.denied", tenant.as_ref(), Some(&detail))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "recording a refused admin call"),
            Err(e) => tracing::error!(error = %e, "recording a refused admin call"),
        }
    }
}

/// Lets only the admin token through to the admin routes.
pub async fn require_admin(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let mut refusal = match gate.app.auth.authenticate(request.headers()) {
        Ok(Principal::Admin { .. }) => return next.run(request).await,
        Ok(user) => {
            gate.record_denial(&user, request.method(), request.uri().path())
                .await;
            forbidden().into_response()
        }
        // A user token naming another tenant in x-tenant: still a user token.
        Err(AuthError::Forbidden) => forbidden().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    // The body of a refused request is never read, so the connection cannot carry another
    // request: say so, or a client reusing it would see its next request fail.
    if has_body(&request) {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "admin token required")
}

/// Runs blocking work (SQLite, files) on the blocking pool.
async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A value from the request quoted for an error message, short.
fn quoted(s: &str) -> String {
    let cut = truncated(s, 64);
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

fn tenant_id(path: Result<Path<String>, PathRejection>) -> Result<TenantId> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    TenantId::new(raw).map_err(|e| ApiError::from(Error::from(e)))
}

/// A route's query parameters: only the names it takes, each at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Self> {
        let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let takes = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {}; this route takes: {takes}",
                    quoted(name)
                )));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name} is given more than once"
                )));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    fn limit(&self) -> Result<usize> {
        let Some(raw) = self.get("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, not {}",
                quoted(raw)
            ))),
        }
    }

    fn flag(&self, name: &str) -> Result<bool> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "{name} must be true or false, not {}",
                quoted(other)
            ))),
        }
    }
}

/// Reads a request body within the configured limit.
async fn read_body(app: &App, body: Body) -> Result<Bytes> {
    let limit = app.config.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    })
}

/// Reads a JSON body (after authentication, within the body limit). An empty body is `empty`
/// when the route has defaults, else refused; `example` shows the expected shape.
pub(crate) async fn json_body<T: DeserializeOwned>(
    app: &App,
    body: Body,
    empty: Option<T>,
    example: &str,
) -> Result<T> {
    let bytes = read_body(app, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return empty.ok_or_else(|| {
            ApiError::bad_request(format!("the body is empty; send JSON like {example}"))
        });
    }
    let invalid = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("the body must be JSON like {example}: {e}"))
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(&e))?;
    // serde would also read a struct from an array (`["user_1"]`); only an object is meant.
    if !value.is_object() {
        return Err(invalid(&"it is not an object"));
    }
    serde_json::from_value(value).map_err(|e| invalid(&e))
}

/// A tenant as the API shows it.
fn tenant_json(info: &TenantInfo) -> Value {
    let r = &info.record;
    json!({
        "id": r.id.as_str(),
        "state": r.state.as_str(),
        "schema_version": r.schema_version,
        "size_bytes": info.size_bytes,
        "created_at": r.created_at,
        "last_active_at": r.last_active_at,
        "migration_error": r.migration_error.as_ref().map(|f| json!({
            "version": f.version,
            "error": f.error,
            "at": f.at,
        })),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
}

/// `POST /admin/tenants {"id":"user_1"}`: 201 with the tenant | 409 `TENANT_EXISTS` | 400.
pub async fn create_tenant(State(app): State<Arc<App>>, body: Body) -> Result<Response> {
    let request: CreateTenant = json_body(&app, body, None, r#"{"id":"user_1"}"#).await?;
    let id = TenantId::new(request.id).map_err(Error::from)?;
    let fleet = Arc::clone(&app.fleet);
    let info = blocking(move || {
        fleet.create_tenant(&id, ACTOR)?;
        Ok(fleet.tenant(&id)?)
    })
    .await?;
    let location = HeaderValue::from_str(&format!("/admin/tenants/{}", info.record.id.as_str()))
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(tenant_json(&info)),
    )
        .into_response())
}

/// `GET /admin/tenants?limit=&after=`: live tenants in id order. `next` is the last id of a
/// full page (pass it as `after`), `null` when there are no more. Keyset paging: tenants
/// created while paging never shift the pages, so none is seen twice or skipped.
pub async fn list_tenants(
    State(app): State<Arc<App>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>> {
    let params = Params::parse(query, &["limit", "after"])?;
    let limit = params.limit()?;
    let after = match params.get("after") {
        None | Some("") => None,
        Some(raw) => Some(TenantId::new(raw).map_err(|e| {
            ApiError::bad_request(format!(
                "after must be a tenant id (the `next` of the previous page): {e}"
            ))
        })?),
    };
    let fleet = Arc::clone(&app.fleet);
    let page =
        blocking(move || Ok(fleet.list_tenants(after.as_ref().map(TenantId::as_str), limit)?))
            .await?;
    let next = match page.last() {
        Some(last) if page.len() == limit => Some(last.record.id.as_str()),
        _ => None,
    };
    Ok(Json(json!({
        "tenants": page.iter().map(tenant_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// `GET /admin/tenants/{id}`: a live tenant | 404.
pub async fn get_tenant(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>> {
    let id = tenant_id(path)?;
    let fleet = Arc::clone(&app.fleet);
    let info = blocking(move || Ok(fleet.tenant(&id)?)).await?;
    Ok(Json(tenant_json(&info)))
}

/// `DELETE /admin/tenants/{id}[?purge=true]`: moves a live tenant to trash (restorable until
/// the retention period ends), or with `purge` removes its files for good (also for a tenant
/// already in trash). 200 | 404.
pub async fn delete_tenant(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>> {
    let id = tenant_id(path)?;
    let purge = Params::parse(query, &["purge"])?.flag("purge")?;
    let fleet = Arc::clone(&app.fleet);
    let record = blocking(move || {
        fleet.delete_tenant(&id, purge, ACTOR)?;
        fleet
            .catalog()
            .tenant(&id)?
            .ok_or_else(|| ApiError::from(Error::TenantNotFound(id.to_string())))
    })
    .await?;
    let mut body = json!({"id": record.id.as_str(), "state": record.state.as_str()});
    if record.state == TenantState::Deleted
        && let Some(deleted_at) = record.deleted_at
    {
        let retention = i64::try_from(app.config.trash_retention.as_secs()).unwrap_or(i64::MAX);
        body["deleted_at"] = json!(deleted_at);
        body["restorable_until"] = json!(deleted_at.saturating_add(retention));
    }
    Ok(Json(body))
}

/// `POST /admin/tenants/{id}/restore`: brings a deleted tenant back from trash as it was.
/// 200 | 404 `NOTHING_TO_RESTORE` (never existed, purged) | 409 when it is live.
pub async fn restore_tenant(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>> {
    let id = tenant_id(path)?;
    // The route takes no body; one sent anyway (`{}`) is read and ignored, so the connection
    // stays usable.
    read_body(&app, body).await?;
    let fleet = Arc::clone(&app.fleet);
    let info = blocking(move || {
        match fleet.restore_tenant(&id, ACTOR) {
            Ok(_) => {}
            Err(Error::TenantNotFound(id)) => return Err(Error::NothingToRestore(id).into()),
            Err(Error::TenantExists(id)) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "TENANT_EXISTS",
                    format!("tenant {id} is live; only a deleted tenant can be restored"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(fleet.tenant(&id)?)
    })
    .await?;
    Ok(Json(tenant_json(&info)))
}

/// `GET /admin/tenants/{id}/export`: a consistent snapshot of a live tenant (SQLite's online
/// backup, taken while the tenant keeps serving) as `application/vnd.sqlite3`. The snapshot is
/// written to `<data>/exports/`, opened, and unlinked before streaming starts, so nothing is
/// left behind whether or not the client reads it all.
pub async fn export_tenant(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = tenant_id(path)?;
    let fleet = Arc::clone(&app.fleet);
    let name = id.clone();
    let export = blocking(move || {
        let dir = fleet.layout().root().join(EXPORTS_DIR);
        create_private_dir(&dir).map_err(ApiError::internal)?;
        let path = dir.join(format!("{}.{}.sqlite", id.as_str(), nonce()?));
        fleet.export_tenant(&id, &path, ACTOR)?;
        Export::open(path).map_err(ApiError::internal)
    })
    .await?;
    let length = export.length;
    let file = tokio::fs::File::from_std(export.file);
    let cleanup = export.cleanup;
    let chunks = futures_util::stream::unfold(Some((file, cleanup)), |state| async move {
        let (mut file, cleanup) = state?;
        let mut buf = vec![0u8; EXPORT_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some((file, cleanup))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let disposition = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.sqlite\"",
        name.as_str()
    ))
    .map_err(ApiError::internal)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.sqlite3"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// A finished export, open for reading.
struct Export {
    file: std::fs::File,
    length: u64,
    cleanup: RemoveOnDrop,
}

impl Export {
    fn open(path: PathBuf) -> std::io::Result<Export> {
        // Removes the file on any early return.
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut cleanup = RemoveOnDrop(Some(path.clone()));
        let file = std::fs::File::open(&path)?;
        let length = file.metadata()?.len();
        // On Unix the open handle keeps the snapshot readable after its name is gone: remove
        // it now, so neither a client that disconnects nor a crash mid-stream leaves it behind.
        #[cfg(unix)]
        {
            std::fs::remove_file(&path)?;
            cleanup.0 = None;
        }
        Ok(Export {
            file,
            length,
            cleanup,
        })
    }
}

/// Removes a file when dropped (where an open file cannot be unlinked: after streaming).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn create_private_dir(dir: &FsPath) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn nonce() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(ApiError::internal)?;
    Ok(hex::encode(bytes))
}

/// `after` and `limit` of an audit page.
fn audit_page(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<(i64, usize)> {
    let params = Params::parse(query, &["after", "limit"])?;
    let limit = params.limit()?;
    let after = match params.get("after") {
        None | Some("") => 0,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "after must be an audit seq (a whole number, the `next` of the previous \
                     page), not {}",
                    quoted(raw)
                )));
            }
        },
    };
    Ok((after, limit))
}

/// `GET /admin/tenants/{id}/audit?after=&limit=`: the tenant's write audit in order, with
/// `next` as for the admin audit.
pub async fn tenant_audit(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>> {
    let id = tenant_id(path)?;
    let (after, limit) = audit_page(query)?;
    let fleet = Arc::clone(&app.fleet);
    let entries = blocking(move || Ok(fleet.tenant_audit(&id, after, limit)?)).await?;
    let next = match entries.last() {
        Some(last) if entries.len() == limit => Some(last.seq),
        _ => None,
    };
    Ok(Json(json!({"entries": entries, "next": next})))
}

/// `GET /admin/stats`: fleet analytics (DESIGN section 9).
pub async fn stats(State(app): State<Arc<App>>) -> Result<Json<Value>> {
    let fleet = Arc::clone(&app.fleet);
    let stats = blocking(move || Ok(fleet.stats()?)).await?;
    Ok(Json(
        serde_json::to_value(stats).map_err(ApiError::internal)?,
    ))
}

/// `GET /admin/audit?after=&limit=`: the admin audit in order; `next` is the last `seq` of a
/// full page (pass it as `after`), `null` when there are no more.
pub async fn audit(
    State(app): State<Arc<App>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>> {
    let (after, limit) = audit_page(query)?;
    let fleet = Arc::clone(&app.fleet);
    let entries = blocking(move || Ok(fleet.catalog().admin_audit(after, limit)?)).await?;
    let next = match entries.last() {
        Some(last) if entries.len() == limit => Some(last.seq),
        _ => None,
    };
    Ok(Json(json!({"entries": entries, "next": next})))
}

/// `GET /admin/migrations`: the ledger, tenants per version and failing tenants. When the
/// server was started with `--migrations`, also `pending` (files in it not applied yet) and
/// `problem` (why that directory cannot be applied, if it cannot).
pub async fn migrations(State(app): State<Arc<App>>) -> Result<Json<Value>> {
    let fleet = Arc::clone(&app.fleet);
    let dir = app.config.migrations_dir.clone();
    let status = blocking(move || Ok(fleet.migration_status(dir.as_deref())?)).await?;
    Ok(Json(
        serde_json::to_value(status).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApplyMigrations {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/migrations/apply {"dry_run":false}`: applies the directory the server was
/// started with (`--migrations`) to every live tenant. Failing tenants stay at their version
/// and are listed in `failed`; edited or removed applied migrations stop the run (400).
pub async fn apply_migrations(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>> {
    let request: ApplyMigrations = json_body(
        &app,
        body,
        Some(ApplyMigrations::default()),
        r#"{"dry_run":false}"#,
    )
    .await?;
    let Some(dir) = app.config.migrations_dir.clone() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NO_MIGRATIONS_DIR",
            "the server was started without --migrations",
        ));
    };
    let options = MigrateOptions {
        dry_run: request.dry_run,
        ..MigrateOptions::default()
    };
    let fleet = Arc::clone(&app.fleet);
    let report = blocking(move || Ok(fleet.migrate(&dir, &options, &NoProgress, ACTOR)?)).await?;
    tracing::info!(
        dry_run = report.dry_run,
        version = report.schema_version,
        migrated = report.migrated,
        failed = report.failed.len(),
        "migrations applied through the admin API"
    );
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

/// Purges trash past the retention period: once at start, then every minute (more often when
/// the retention is shorter than a minute), until `stop` fires. Also removes exports that a
/// crash left behind.
pub(crate) async fn purge_trash(app: Arc<App>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let retention = app.config.trash_retention;
    let mut tick = tokio::time::interval(retention.clamp(PURGE_PERIOD_MIN, PURGE_PERIOD_MAX));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let fleet = Arc::clone(&app.fleet);
        let outcome = tokio::task::spawn_blocking(move || {
            remove_stale_exports(&fleet.layout().root().join(EXPORTS_DIR));
            fleet.purge_expired(retention, RETENTION_ACTOR)
        })
        .await;
        match outcome {
            Ok(Ok(purged)) if purged.is_empty() => {}
            Ok(Ok(purged)) => {
                let ids: Vec<&str> = purged.iter().map(TenantId::as_str).collect();
                tracing::info!(count = ids.len(), tenants = ?ids, "purged expired trash");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "purging expired trash"),
            Err(e) => tracing::error!(error = %e, "purging expired trash"),
        }
    }
}

/// Removes exports older than [`STALE_EXPORT_AGE`] (a crash between writing an export and
/// unlinking it). Blocking.
fn remove_stale_exports(dir: &FsPath) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= STALE_EXPORT_AGE);
        if stale {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale export"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a stale export")
                }
            }
        }
    }
}
