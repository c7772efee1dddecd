//! `POST /webhooks/clerk`: signup webhooks (DESIGN section 5.3).
//!
//! The auth provider (Clerk, which delivers through Svix) tells us when a user signs up or is
//! deleted. Deliveries are signed with the Standard Webhooks scheme, may arrive more than once,
//! late, or out of order, and are retried until we answer 2xx. So:
//!
//! 1. **Authenticity** ([`verify`]): HMAC-SHA256 with a configured secret over
//!    `{msg id}.{timestamp}.{raw body}`, compared in constant time against every `v1,` entry of
//!    the signature header, under every configured secret (rotation); the timestamp must be
//!    within [`TOLERANCE_SECS`] of our clock either way, which bounds replays of captured
//!    deliveries. Anything wrong: 401 `WEBHOOK_SIGNATURE`, and nothing is read or written.
//! 2. **Shape** ([`parse_event`]): a JSON object with a string `type`; `user.*` events need
//!    `data.id`, a valid tenant id. Anything wrong: 400 `WEBHOOK_PAYLOAD`, nothing is created,
//!    and the delivery is not recorded, so a corrected retry with the same message id works.
//! 3. **Once per message id**: deliveries are remembered in the catalog by message id; a
//!    repeated id is answered 200 `{"status":"duplicate"}` and does nothing.
//! 4. **The action**: `user.created` ensures the tenant exists (never re-creating a deleted
//!    user), `user.deleted` retires it (to trash, or as a tombstone when it never existed, so a
//!    late `user.created` cannot bring it back), other event types are acknowledged.
//!
//! Outcomes are counted in [`COUNTERS`] for the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tenantdb::{Error, Fleet, TenantId};

use crate::app::App;
use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Deliveries whose timestamp is further than this from our clock, either way, are refused.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// The actor recorded in the admin audit for everything this route does.
pub const ACTOR: &str = "webhook:clerk";

const SECRET_PREFIX: &str = "whsec_";

/// Length of an HMAC-SHA256 tag; a decoded signature of any other length never matches.
const SIGNATURE_LEN: usize = 32;

/// Longest message id and event type accepted (both end up in the catalog).
const MAX_ID_LEN: usize = 256;
const MAX_TYPE_LEN: usize = 256;

// ---------------------------------------------------------------------------------------------
// Counters

/// Webhook outcomes since the process started. Every request is counted once as
/// `rejected_signature` or `verified`; a verified one then ends as exactly one of
/// `rejected_payload`, `duplicate`, `created`, `deleted`, `ignored` or `failed`.
#[derive(Debug)]
pub struct WebhookCounters {
    /// Signature and timestamp checked and accepted.
    pub verified: AtomicU64,
    /// Refused before the signature was accepted: 401 for missing or malformed headers, no
    /// secret configured, a timestamp out of tolerance or no matching signature (and 413 for a
    /// body over the size limit, which is not even read to the end).
    pub rejected_signature: AtomicU64,
    /// Signed, but refused with 400: not JSON, no `type`, or no valid `data.id`.
    pub rejected_payload: AtomicU64,
    /// A message id handled before; answered 200 without doing anything.
    pub duplicate: AtomicU64,
    /// `user.created` handled: the tenant is live (newly created, or already there).
    pub created: AtomicU64,
    /// `user.deleted` handled: the tenant is in trash, or its id is tombstoned.
    pub deleted: AtomicU64,
    /// Acknowledged without action: other event types, and signups of deleted users.
    pub ignored: AtomicU64,
    /// Failed inside the server (answered 5xx, not recorded, so the sender retries).
    pub failed: AtomicU64,
}

/// A copy of [`WebhookCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookCountersSnapshot {
    pub verified: u64,
    pub rejected_signature: u64,
    pub rejected_payload: u64,
    pub duplicate: u64,
    pub created: u64,
    pub deleted: u64,
    pub ignored: u64,
    pub failed: u64,
}

impl WebhookCounters {
    pub const fn new() -> Self {
        WebhookCounters {
            verified: AtomicU64::new(0),
            rejected_signature: AtomicU64::new(0),
            rejected_payload: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            created: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> WebhookCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookCountersSnapshot {
            verified: get(&self.verified),
            rejected_signature: get(&self.rejected_signature),
            rejected_payload: get(&self.rejected_payload),
            duplicate: get(&self.duplicate),
            created: get(&self.created),
            deleted: get(&self.deleted),
            ignored: get(&self.ignored),
            failed: get(&self.failed),
        }
    }
}

impl Default for WebhookCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide webhook counters (the metrics endpoint exports them).
pub static COUNTERS: WebhookCounters = WebhookCounters::new();

/// The current values of [`COUNTERS`].
pub fn snapshot() -> WebhookCountersSnapshot {
    COUNTERS.snapshot()
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the server has no webhook secret configured, so it refuses every delivery; set \
         --webhook-secret (TENANTDB_WEBHOOK_SECRET) to the endpoint's whsec_ secret"
    )]
    NoSecret,
    #[error(
        "none of the server's webhook secrets is usable (each must be whsec_ followed by \
         base64); the server log has the details"
    )]
    NoUsableSecret,
    #[error(
        "missing the {0} header (send svix-id, svix-timestamp and svix-signature, or \
         webhook-id, webhook-timestamp and webhook-signature)"
    )]
    MissingHeader(&'static str),
    #[error("the {0} header is malformed")]
    MalformedHeader(&'static str),
    #[error("the delivery timestamp is more than {TOLERANCE_SECS} seconds old")]
    TooOld,
    #[error("the delivery timestamp is more than {TOLERANCE_SECS} seconds in the future")]
    TooNew,
    #[error("no signature in the signature header matches the body under any configured secret")]
    NoMatch,
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "WEBHOOK_SIGNATURE", e.to_string())
    }
}

/// The signing key in a configured secret: `whsec_<base64>`, or the base64 alone.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
    let key = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .ok()?;
    (!key.is_empty()).then_some(key)
}

/// The HMAC state after absorbing `{msg_id}.{timestamp}.{body}`; cloned once per candidate
/// signature, so a long signature list costs one pass over the body per secret, not per entry.
fn keyed(key: &[u8], msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The raw HMAC-SHA256 tag of a delivery under `key`.
pub fn signature(key: &[u8], msg_id: &str, timestamp: &str, body: &[u8]) -> [u8; SIGNATURE_LEN] {
    keyed(key, msg_id, timestamp, body)
        .finalize()
        .into_bytes()
        .into()
}

/// The `v1,<base64>` signature header entry for a delivery, as a sender would produce it
/// (for benchmarks and tools; the tests use the official `standardwebhooks` package instead).
pub fn sign(secret: &str, msg_id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = decode_secret(secret)?;
    Some(format!(
        "v1,{}",
        STANDARD.encode(signature(&key, msg_id, timestamp, body))
    ))
}

/// Whether `candidate` (decoded bytes) is the full-length signature of the delivery under
/// `key`, compared in constant time.
pub fn signature_matches(
    key: &[u8],
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    candidate: &[u8],
) -> bool {
    candidate.len() == SIGNATURE_LEN
        && keyed(key, msg_id, timestamp, body)
            .verify_slice(candidate)
            .is_ok()
}

/// The decoded `v1` signatures of a signature header. Entries of other versions, and entries
/// that are not canonical base64 of exactly 32 bytes (empty, truncated, padded), are dropped:
/// they can never match.
fn v1_signatures(header: &str) -> Vec<Vec<u8>> {
    header
        .split_ascii_whitespace()
        .filter_map(|entry| {
            let (version, encoded) = entry.split_once(',')?;
            if version != "v1" {
                return None;
            }
            let decoded = STANDARD.decode(encoded).ok()?;
            (decoded.len() == SIGNATURE_LEN).then_some(decoded)
        })
        .collect()
}

/// A delivery whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub msg_id: String,
    pub timestamp: i64,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .ok_or(SignatureError::MissingHeader(name))?;
    let text = value
        .to_str()
        .map_err(|_| SignatureError::MalformedHeader(name))?
        .trim();
    if text.is_empty() {
        return Err(SignatureError::MissingHeader(name));
    }
    Ok(text)
}

/// Checks a delivery's Standard Webhooks signature against the configured secrets, with `now`
/// (unix seconds) as the current time. Accepts the `svix-*` header names (used when `svix-id`
/// is present) or the `webhook-*` ones.
pub fn verify(
    secrets: &[String],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, SignatureError> {
    if secrets.iter().all(|s| s.trim().is_empty()) {
        return Err(SignatureError::NoSecret);
    }
    let [id_name, ts_name, sig_name] = if headers.contains_key("svix-id") {
        ["svix-id", "svix-timestamp", "svix-signature"]
    } else {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    };
    let msg_id = header(headers, id_name)?;
    let timestamp = header(headers, ts_name)?;
    let signatures = header(headers, sig_name)?;
    if msg_id.len() > MAX_ID_LEN {
        return Err(SignatureError::MalformedHeader(id_name));
    }
    if timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedHeader(ts_name));
    }
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::MalformedHeader(ts_name))?;
    if now - sent > TOLERANCE_SECS {
        return Err(SignatureError::TooOld);
    }
    if sent - now > TOLERANCE_SECS {
        return Err(SignatureError::TooNew);
    }
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .filter(|s| !s.trim().is_empty())
        .filter_map(|s| {
            let key = decode_secret(s);
            if key.is_none() {
                tracing::error!(
                    "a configured webhook secret is not whsec_ followed by base64; it is ignored"
                );
            }
            key
        })
        .collect();
    if keys.is_empty() {
        return Err(SignatureError::NoUsableSecret);
    }
    let candidates = v1_signatures(signatures);
    let matched = keys.iter().any(|key| {
        let mac = keyed(key, msg_id, timestamp, body);
        candidates
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    Ok(Verified {
        msg_id: msg_id.to_string(),
        timestamp: sent,
    })
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// The part of a delivery's body that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type, such as `user.created`.
    pub kind: String,
    /// The user (`data.id`) of a `user.*` event; `None` for other events.
    pub tenant: Option<TenantId>,
}

fn payload_error(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "WEBHOOK_PAYLOAD", message)
}

/// Parses a (verified) delivery body.
pub fn parse_event(body: &[u8]) -> Result<Event, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| payload_error(format!("the webhook body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(payload_error("the webhook body is not a JSON object"));
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= MAX_TYPE_LEN => kind,
        Some(Value::String(_)) => {
            return Err(payload_error(format!(
                "the webhook event's \"type\" must be 1 to {MAX_TYPE_LEN} bytes"
            )));
        }
        Some(_) => {
            return Err(payload_error(
                "the webhook event's \"type\" is not a string",
            ));
        }
        None => return Err(payload_error("the webhook event has no \"type\"")),
    };
    if !kind.starts_with("user.") {
        return Ok(Event {
            kind: kind.clone(),
            tenant: None,
        });
    }
    let data = match object.get("data") {
        Some(Value::Object(data)) => data,
        Some(_) => {
            return Err(payload_error(format!(
                "the {kind} event's \"data\" is not an object"
            )));
        }
        None => return Err(payload_error(format!("the {kind} event has no \"data\""))),
    };
    let id = match data.get("id") {
        Some(Value::String(id)) => id,
        Some(_) => {
            return Err(payload_error(format!(
                "the {kind} event's \"data.id\" is not a string"
            )));
        }
        None => {
            return Err(payload_error(format!(
                "the {kind} event has no \"data.id\" (the user id)"
            )));
        }
    };
    let tenant = TenantId::new(id.as_str()).map_err(|e| {
        payload_error(format!(
            "the {kind} event's \"data.id\" cannot be a tenant id: {e}"
        ))
    })?;
    Ok(Event {
        kind: kind.clone(),
        tenant: Some(tenant),
    })
}

// ---------------------------------------------------------------------------------------------
// Handling

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message id was handled before; nothing was done.
    Duplicate,
    /// `user.created`: the tenant was created at the latest schema.
    Created,
    /// `user.created`: the tenant already existed.
    AlreadyExists,
    /// `user.created` for a deleted user: not re-created.
    IgnoredDeletedUser,
    /// `user.deleted`: the tenant was moved to trash.
    Deleted,
    /// `user.deleted` for a tenant already deleted, or never created (now tombstoned).
    AlreadyDeleted,
    /// Any other event type.
    IgnoredEventType,
}

impl Outcome {
    /// The `status` in the response, and the outcome recorded for the delivery.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Duplicate => "duplicate",
            Outcome::Created => "created",
            Outcome::AlreadyExists => "exists",
            Outcome::IgnoredDeletedUser => "ignored: user was deleted",
            Outcome::Deleted => "deleted",
            Outcome::AlreadyDeleted => "already deleted",
            Outcome::IgnoredEventType => "ignored: event type not handled",
        }
    }

    fn counter(self) -> &'static AtomicU64 {
        match self {
            Outcome::Duplicate => &COUNTERS.duplicate,
            Outcome::Created | Outcome::AlreadyExists => &COUNTERS.created,
            Outcome::Deleted | Outcome::AlreadyDeleted => &COUNTERS.deleted,
            Outcome::IgnoredDeletedUser | Outcome::IgnoredEventType => &COUNTERS.ignored,
        }
    }
}

/// Serializes the deliveries that concern one user (or, for other events, one message id)
/// within this process, so that concurrent copies of one delivery settle as one action and then
/// duplicates (the fleet itself already serializes each tenant's lifecycle changes; this is
/// only about what each copy reports).
static STRIPES: [Mutex<()>; 64] = [const { Mutex::new(()) }; 64];

fn stripe(key: &str) -> &'static Mutex<()> {
    // FNV-1a: any spread will do, it only picks a lock.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let index = usize::try_from(hash % STRIPES.len() as u64).unwrap_or(0);
    &STRIPES[index]
}

/// Handles one verified, well-formed delivery. Blocking (SQLite and file system work).
///
/// The order is: check the message id, perform the action, audit it, and only then record the
/// delivery as handled. Every action is idempotent by itself (creating a tenant that exists,
/// retiring one already retired, ignoring an event), so a crash after the action but before the
/// record only means the sender's retry — same message id, not yet recorded — performs the
/// action again, harmlessly, and records it then. Recording first would be the unsafe order: a
/// crash between the record and the action would turn the retry into a "duplicate" and the
/// action would never happen. For the same reason the audit entry is written before the record:
/// a crash can repeat it, but never lose it.
pub fn handle(fleet: &Fleet, msg_id: &str, event: &Event) -> Result<Outcome, Error> {
    let _serial = stripe(event.tenant.as_ref().map_or(msg_id, TenantId::as_str))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let catalog = fleet.catalog();
    if catalog.delivery_seen(msg_id)? {
        return Ok(Outcome::Duplicate);
    }
    let outcome = match (event.kind.as_str(), &event.tenant) {
        ("user.created", Some(id)) => match fleet.ensure_tenant(id, ACTOR) {
            Ok((_, true)) => Outcome::Created,
            Ok((_, false)) => Outcome::AlreadyExists,
            Err(Error::TenantDeleted(_)) => Outcome::IgnoredDeletedUser,
            Err(e) => return Err(e),
        },
        ("user.deleted", Some(id)) => match fleet.retire_tenant(id, ACTOR) {
            Ok(true) => Outcome::Deleted,
            Ok(false) => Outcome::AlreadyDeleted,
            // Deleted by someone else (an operator) between the check and the deletion.
            Err(Error::TenantNotFound(_) | Error::TenantDeleted(_)) => Outcome::AlreadyDeleted,
            Err(e) => return Err(e),
        },
        _ => Outcome::IgnoredEventType,
    };
    let detail = format!("msg_id={msg_id} outcome={}", outcome.as_str());
    catalog.audit(
        ACTOR,
        &format!("webhook.{}", event.kind),
        event.tenant.as_ref(),
        Some(&detail),
    )?;
    if !catalog.record_delivery(msg_id, &event.kind, event.tenant.as_ref(), outcome.as_str())? {
        // Another process sharing the catalog handled the same message id meanwhile; our
        // action was idempotent, so the result is the same.
        tracing::debug!(msg_id, "webhook delivery recorded concurrently");
    }
    Ok(outcome)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `POST /webhooks/clerk`.
pub async fn clerk(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match receive(&app, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn receive(app: &Arc<App>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let limit = app.config.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        count(&COUNTERS.rejected_signature);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    })?;
    let verified = match verify(&app.config.webhook_secrets, headers, &bytes, unix_now()) {
        Ok(verified) => verified,
        Err(e) => {
            count(&COUNTERS.rejected_signature);
            tracing::info!(reason = %e, "webhook delivery refused");
            return Err(e.into());
        }
    };
    count(&COUNTERS.verified);
    let event = parse_event(&bytes).inspect_err(|e| {
        count(&COUNTERS.rejected_payload);
        tracing::info!(msg_id = %verified.msg_id, reason = %e.message, "webhook payload refused");
    })?;

    let permit = Arc::clone(&app.sql_slots)
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let fleet = Arc::clone(&app.fleet);
    let msg_id = verified.msg_id.clone();
    let work = event.clone();
    let handled = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        handle(&fleet, &msg_id, &work)
    })
    .await;
    let outcome = match handled {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            count(&COUNTERS.failed);
            return Err(match e {
                Error::Busy(_) => ApiError::from(e),
                other => ApiError::internal(other),
            });
        }
        Err(join) => {
            count(&COUNTERS.failed);
            return Err(ApiError::internal(join));
        }
    };
    count(outcome.counter());
    tracing::info!(
        msg_id = %verified.msg_id,
        event = %event.kind,
        tenant = event.tenant.as_ref().map(TenantId::as_str),
        outcome = outcome.as_str(),
        "webhook delivery"
    );
    let body = match (&event.tenant, outcome) {
        (_, Outcome::Duplicate) | (None, _) => json!({"status": outcome.as_str()}),
        (Some(id), _) => json!({"status": outcome.as_str(), "tenant": id.as_str()}),
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    // The published Svix test vector.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: &str = "1614265330";
    const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(prefix: &str, id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [("id", id), ("timestamp", ts), ("signature", sig)] {
            h.insert(
                axum::http::HeaderName::try_from(format!("{prefix}-{name}")).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn vector_key() -> Vec<u8> {
        decode_secret(VECTOR_SECRET).unwrap()
    }

    #[test]
    fn svix_test_vector_hmac() {
        let key = vector_key();
        let expected = STANDARD.decode(&VECTOR_SIG[3..]).unwrap();
        assert_eq!(
            signature(&key, VECTOR_ID, VECTOR_TS, VECTOR_BODY.as_bytes()).as_slice(),
            expected.as_slice()
        );
        assert!(signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY.as_bytes(),
            &expected
        ));
        assert_eq!(
            sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY.as_bytes()).as_deref(),
            Some(VECTOR_SIG)
        );
        // The secret without its prefix is the same key.
        assert_eq!(
            decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Some(key.clone())
        );
        // Truncated (left or right), extended, or a different body: no match.
        assert!(!signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY.as_bytes(),
            &expected[..31]
        ));
        assert!(!signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY.as_bytes(),
            &expected[1..]
        ));
        let mut longer = expected.clone();
        longer.push(0);
        assert!(!signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY.as_bytes(),
            &longer
        ));
        assert!(!signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            br#"{"test": 2432232315}"#,
            &expected
        ));
        assert!(!signature_matches(
            &key,
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY.as_bytes(),
            &[]
        ));
    }

    #[test]
    fn svix_test_vector_through_the_verifier() {
        let secrets = vec![VECTOR_SECRET.to_string()];
        let now: i64 = VECTOR_TS.parse().unwrap();
        for prefix in ["svix", "webhook"] {
            let h = headers(prefix, VECTOR_ID, VECTOR_TS, VECTOR_SIG);
            assert_eq!(
                verify(&secrets, &h, VECTOR_BODY.as_bytes(), now),
                Ok(Verified {
                    msg_id: VECTOR_ID.into(),
                    timestamp: now
                })
            );
            // Within the tolerance either way, and not beyond.
            assert!(verify(&secrets, &h, VECTOR_BODY.as_bytes(), now + 300).is_ok());
            assert!(verify(&secrets, &h, VECTOR_BODY.as_bytes(), now - 300).is_ok());
            assert_eq!(
                verify(&secrets, &h, VECTOR_BODY.as_bytes(), now + 301),
                Err(SignatureError::TooOld)
            );
            assert_eq!(
                verify(&secrets, &h, VECTOR_BODY.as_bytes(), now - 301),
                Err(SignatureError::TooNew)
            );
        }
        let verify_sig = |sig: &str, secrets: &[String]| {
            verify(
                secrets,
                &headers("svix", VECTOR_ID, VECTOR_TS, sig),
                VECTOR_BODY.as_bytes(),
                now,
            )
        };
        let good = &VECTOR_SIG[3..];
        let other = "whsec_".to_string() + &STANDARD.encode([7u8; 24]);
        // Several entries, other versions skipped, rotation across secrets.
        assert!(verify_sig(&format!("v2,{good} v1,AAAA v1,{good}"), &secrets).is_ok());
        assert!(verify_sig(VECTOR_SIG, &[other.clone(), VECTOR_SECRET.into()]).is_ok());
        for bad in [
            "v1,".to_string(),
            "v1".to_string(),
            format!("v2,{good}"),
            format!("v1,{}", &good[..good.len() - 4]),
            format!("v1,{good}AAAA"),
            format!("v1,{}", good.trim_end_matches('=')),
            format!("v1,{good}="),
            format!("v1 ,{good}"),
        ] {
            assert_eq!(
                verify_sig(&bad, &secrets),
                Err(SignatureError::NoMatch),
                "{bad}"
            );
        }
        assert_eq!(
            verify_sig(VECTOR_SIG, std::slice::from_ref(&other)),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(verify_sig(VECTOR_SIG, &[]), Err(SignatureError::NoSecret));
        assert_eq!(
            verify_sig(VECTOR_SIG, &["whsec_!!not base64!!".into()]),
            Err(SignatureError::NoUsableSecret)
        );
    }

    #[test]
    fn malformed_headers() {
        let secrets = vec![VECTOR_SECRET.to_string()];
        let now: i64 = VECTOR_TS.parse().unwrap();
        let mut h = headers("svix", VECTOR_ID, VECTOR_TS, VECTOR_SIG);
        h.remove("svix-signature");
        assert_eq!(
            verify(&secrets, &h, b"{}", now),
            Err(SignatureError::MissingHeader("svix-signature"))
        );
        for ts in [
            "-1614265330",
            "+1614265330",
            "1614265330.0",
            "16142653300000000",
        ] {
            let h = headers("webhook", VECTOR_ID, ts, VECTOR_SIG);
            assert_eq!(
                verify(&secrets, &h, VECTOR_BODY.as_bytes(), now),
                Err(SignatureError::MalformedHeader("webhook-timestamp")),
                "{ts}"
            );
        }
        assert_eq!(
            verify(&secrets, &HeaderMap::new(), b"{}", now),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn payloads() {
        let ok = parse_event(br#"{"type":"user.created","data":{"id":"user_2abc"}}"#).unwrap();
        assert_eq!(ok.kind, "user.created");
        assert_eq!(ok.tenant.unwrap().as_str(), "user_2abc");
        let other = parse_event(br#"{"type":"session.created","data":{"id":"../x"}}"#).unwrap();
        assert_eq!(other.tenant, None);
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"type":7}"#,
            br#"{"type":"user.created"}"#,
            br#"{"type":"user.created","data":[]}"#,
            br#"{"type":"user.created","data":{}}"#,
            br#"{"type":"user.created","data":{"id":5}}"#,
            br#"{"type":"user.created","data":{"id":"../x"}}"#,
            br#"{"type":"user.deleted","data":{"id":""}}"#,
        ] {
            let e = parse_event(bad).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "WEBHOOK_PAYLOAD")
            );
        }
    }
}
