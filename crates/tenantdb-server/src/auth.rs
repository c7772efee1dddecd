//! Who is calling: the admin token or a user's JWT, and which tenant the request may touch.
//!
//! Everything expensive (parsing PEM and JWKS keys, building `Validation`s, keying the HMAC used
//! to compare admin tokens) happens once in [`Authenticator::new`]; [`Authenticator::authenticate`]
//! runs on every request and only parses the token header, picks a key and verifies.
//!
//! Rules (DESIGN.md 5.1, 5.4, 7):
//! - The algorithm is fixed by the configured key, never by the token: a shared secret accepts
//!   HS256 only; a PEM public key accepts its own family (RSA: RS*/PS*, P-256: ES256,
//!   P-384: ES384, Ed25519: EdDSA); a JWKS key accepts the one algorithm its `alg`/`kty`/`crv`
//!   name. So `alg: none` is never accepted, and an HS256 token "signed" with a public key is
//!   refused unless a shared secret is configured (and then it must verify under that secret).
//! - `exp` is required and checked, `nbf` is checked when present, both with `leeway_secs`; `iss`
//!   is required and must match when an issuer is configured.
//! - `aud` is not checked: there is no audience setting, and refusing every token that carries
//!   one would refuse most providers' tokens.
//! - Error messages never contain the token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tenantdb::TenantId;

type HmacSha256 = Hmac<Sha256>;

/// The header with which the admin token addresses a tenant.
pub const X_TENANT: &str = "x-tenant";

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Largest RSA modulus the verifier handles, in bytes (4096 bits).
const MAX_RSA_MODULUS_BYTES: usize = 512;
/// Shared secrets shorter than this are accepted with a warning.
const RECOMMENDED_SECRET_BYTES: usize = 32;

/// How requests are authenticated. Any combination of the JWT sources may be set at once.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret (its UTF-8 bytes are the HMAC key).
    pub jwt_secret: Option<String>,
    /// A PEM public key (`-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`);
    /// its algorithm follows from the key: RSA, EC P-256/P-384 or Ed25519.
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// A JWKS document (`{"keys":[…]}`); keys are chosen by the token header's `kid`.
    pub jwks_json: Option<Vec<u8>>,
    /// When set, tokens must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// The claim naming the tenant (default `sub`).
    pub tenant_claim: String,
    /// The operator's token: any tenant, via `x-tenant`.
    pub admin_token: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 10).
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_pem: None,
            jwks_json: None,
            issuer: None,
            tenant_claim: "sub".to_owned(),
            admin_token: None,
            leeway_secs: 10,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<set>" } else { "<none>" };
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &redacted(self.jwt_secret.is_some()))
            .field(
                "jwt_public_key_pem",
                &redacted(self.jwt_public_key_pem.is_some()),
            )
            .field("jwks_json", &redacted(self.jwks_json.is_some()))
            .field("issuer", &self.issuer)
            .field("tenant_claim", &self.tenant_claim)
            .field("admin_token", &redacted(self.admin_token.is_some()))
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// A configuration that cannot authenticate anything, or a key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "no authentication is configured: set a JWT secret, a JWT public key, a JWKS file \
         or an admin token"
    )]
    NothingConfigured,
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("the admin token is empty")]
    EmptyAdminToken,
    #[error("the tenant claim name is empty")]
    EmptyTenantClaim,
    #[error("the JWT issuer is empty (leave it unset to accept any issuer)")]
    EmptyIssuer,
    #[error("cannot read the JWT public key: {0}")]
    UnreadablePem(String),
    #[error("unsupported JWT public key: {0}")]
    UnsupportedKey(String),
    #[error("cannot read the JWKS: {0}")]
    UnreadableJwks(String),
    #[error("the JWKS has no usable signature key ({})", .skipped.join("; "))]
    NoUsableJwksKeys { skipped: Vec<String> },
    #[error("cannot generate a random key: {0}")]
    Random(String),
}

/// Why a request is not authenticated (401), not allowed (403) or malformed (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("token refused: {0}")]
    Algorithm(String),
    #[error("token refused: its key id (kid) names no configured key")]
    UnknownKey,
    #[error("token refused: invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid: its nbf is in the future")]
    NotYetValid,
    #[error("token refused: {0}")]
    InvalidClaims(String),
    #[error("token refused: wrong issuer")]
    WrongIssuer,
    #[error("token refused: {0}")]
    InvalidTenantClaim(String),
    #[error("invalid x-tenant header: {0}")]
    InvalidTenantHeader(String),
    #[error("this token may not address that tenant")]
    Forbidden,
}

impl AuthError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Forbidden => StatusCode::FORBIDDEN,
            AuthError::InvalidTenantHeader(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "AUTH_MISSING",
            AuthError::Malformed(_) => "AUTH_MALFORMED",
            AuthError::Expired => "AUTH_EXPIRED",
            AuthError::NotYetValid => "AUTH_NOT_YET_VALID",
            AuthError::InvalidTenantClaim(_) => "AUTH_INVALID_TENANT",
            AuthError::InvalidTenantHeader(_) => "INVALID_TENANT_ID",
            AuthError::Forbidden => "FORBIDDEN",
            AuthError::Algorithm(_)
            | AuthError::UnknownKey
            | AuthError::BadSignature
            | AuthError::InvalidClaims(_)
            | AuthError::WrongIssuer => "AUTH_INVALID",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user's token: exactly one tenant.
    User { tenant: TenantId, subject: String },
    /// The admin token, addressing a tenant with `x-tenant` or none.
    Admin { tenant: Option<TenantId> },
}

impl Principal {
    /// The tenant this request addresses, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Principal::User { tenant, .. } => Some(tenant),
            Principal::Admin { tenant } => tenant.as_ref(),
        }
    }

    /// The actor recorded in audit logs: `user:<sub>` or `admin`.
    pub fn actor(&self) -> String {
        match self {
            Principal::User { subject, .. } => format!("user:{subject}"),
            Principal::Admin { .. } => "admin".to_owned(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }
}

/// One trusted key with the algorithms it accepts and the claim checks that go with them.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// The admin token, kept only as an HMAC digest under a per-process random key, so comparing
/// it costs the same whatever the presented token is (no early exit on the first differing
/// byte, no dependence on its length).
struct AdminToken {
    mac: HmacSha256,
    digest: Vec<u8>,
}

impl AdminToken {
    fn new(token: &str) -> Result<Self, AuthSetupError> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| AuthSetupError::Random(e.to_string()))?;
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|e| AuthSetupError::Random(e.to_string()))?;
        let mut keyed = mac.clone();
        keyed.update(token.as_bytes());
        let digest = keyed.finalize().into_bytes().to_vec();
        Ok(AdminToken { mac, digest })
    }

    fn matches(&self, presented: &str) -> bool {
        let mut mac = self.mac.clone();
        mac.update(presented.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&self.digest).is_ok()
    }
}

/// Checks requests' credentials. Build once, share (it is `Send + Sync`), call per request.
pub struct Authenticator {
    secret: Option<Verifier>,
    public_key: Option<Verifier>,
    jwks_by_kid: HashMap<String, Vec<Verifier>>,
    jwks_without_kid: Vec<Verifier>,
    admin: Option<AdminToken>,
    tenant_claim: String,
    /// Tokens already verified with a public key, so a client reusing its token (as libSQL
    /// clients do) pays for the RSA/ECDSA verification once. `None` without public keys.
    verified: Option<VerifiedCache>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("secret", &self.secret.is_some())
            .field(
                "public_key",
                &self.public_key.as_ref().map(|v| &v.validation.algorithms),
            )
            .field("jwks_kids", &self.jwks_by_kid.keys().collect::<Vec<_>>())
            .field("jwks_without_kid", &self.jwks_without_kid.len())
            .field("admin", &self.admin.is_some())
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        if config.tenant_claim.is_empty() {
            return Err(AuthSetupError::EmptyTenantClaim);
        }
        if config.issuer.as_deref() == Some("") {
            return Err(AuthSetupError::EmptyIssuer);
        }
        let nothing = config.jwt_secret.is_none()
            && config.jwt_public_key_pem.is_none()
            && config.jwks_json.is_none()
            && config.admin_token.is_none();
        if nothing {
            return Err(AuthSetupError::NothingConfigured);
        }

        let secret = match &config.jwt_secret {
            None => None,
            Some(s) if s.is_empty() => return Err(AuthSetupError::EmptySecret),
            Some(s) => {
                if s.len() < RECOMMENDED_SECRET_BYTES {
                    tracing::warn!(
                        "the JWT secret is shorter than {RECOMMENDED_SECRET_BYTES} bytes; \
                         a short HS256 secret can be guessed offline from any token"
                    );
                }
                Some(Verifier {
                    key: DecodingKey::from_secret(s.as_bytes()),
                    validation: validation(config, &[Algorithm::HS256]),
                })
            }
        };

        let public_key = match &config.jwt_public_key_pem {
            None => None,
            Some(pem) => Some(pem_verifier(pem, config)?),
        };

        let mut jwks_by_kid: HashMap<String, Vec<Verifier>> = HashMap::new();
        let mut jwks_without_kid = Vec::new();
        if let Some(json) = &config.jwks_json {
            for (kid, verifier) in jwks_verifiers(json, config)? {
                match kid {
                    Some(kid) => jwks_by_kid.entry(kid).or_default().push(verifier),
                    None => jwks_without_kid.push(verifier),
                }
            }
        }

        let admin = match &config.admin_token {
            None => None,
            Some(t) if t.is_empty() => return Err(AuthSetupError::EmptyAdminToken),
            Some(t) => Some(AdminToken::new(t)?),
        };

        let has_public_keys =
            public_key.is_some() || !jwks_by_kid.is_empty() || !jwks_without_kid.is_empty();
        let has_secret = secret.is_some();
        Ok(Authenticator {
            secret,
            public_key,
            jwks_by_kid,
            jwks_without_kid,
            admin,
            tenant_claim: config.tenant_claim.clone(),
            verified: (has_public_keys || has_secret)
                .then(|| VerifiedCache::new(VERIFIED_CACHE_CAPACITY, config.leeway_secs)),
        })
    }

    /// Authenticates a request from its headers (`Authorization`, `x-tenant`).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;

        if self.admin.as_ref().is_some_and(|a| a.matches(token)) {
            let tenant = match single_x_tenant(headers)? {
                None => None,
                Some(raw) => {
                    let raw = raw.to_str().map_err(|_| {
                        AuthError::InvalidTenantHeader("it is not printable ASCII".to_owned())
                    })?;
                    let id = TenantId::new(raw)
                        .map_err(|e| AuthError::InvalidTenantHeader(e.to_string()))?;
                    Some(id)
                }
            };
            return Ok(Principal::Admin { tenant });
        }

        let Verified {
            tenant, subject, ..
        } = self.verify_jwt(token)?;
        // A user token may name its own tenant in x-tenant, nothing else. The refusal is the same
        // whether or not the other tenant exists.
        for value in headers.get_all(X_TENANT) {
            if value.as_bytes() != tenant.as_str().as_bytes() {
                return Err(AuthError::Forbidden);
            }
        }
        Ok(Principal::User { tenant, subject })
    }

    fn verify_jwt(&self, token: &str) -> Result<Verified, AuthError> {
        let Some(cache) = &self.verified else {
            return self.verify_jwt_uncached(token);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = cache.get(&digest) {
            return hit;
        }
        let verified = self.verify_jwt_uncached(token)?;
        if verified.cacheable {
            cache.insert(digest, &verified);
        }
        Ok(verified)
    }

    fn verify_jwt_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let header = peek_header(token)?;
        let alg = header.alg;
        let kid = header.kid.as_deref();

        // A kid naming a JWKS key selects that key and nothing else; otherwise (no kid, or a kid
        // the JWKS does not know) the other configured keys of the token's algorithm are tried.
        if let Some(entries) = kid.and_then(|k| self.jwks_by_kid.get(k)) {
            return match self.try_verifiers(token, entries.iter().filter(|v| v.accepts(alg))) {
                Some(result) => result,
                None => Err(AuthError::Algorithm(format!(
                    "the key it names does not accept {alg:?}"
                ))),
            };
        }
        let others = self
            .secret
            .iter()
            .chain(self.public_key.iter())
            .chain(self.jwks_without_kid.iter())
            .filter(|v| v.accepts(alg));
        if let Some(result) = self.try_verifiers(token, others) {
            return result;
        }
        if kid.is_some() && !self.jwks_by_kid.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        Err(AuthError::Algorithm(self.refusal_reason(alg)))
    }

    /// Verifies with each candidate in turn; the first valid signature decides. `None` when there
    /// is no candidate at all.
    fn try_verifiers<'a>(
        &self,
        token: &str,
        candidates: impl Iterator<Item = &'a Verifier>,
    ) -> Option<Result<Verified, AuthError>> {
        let mut outcome = None;
        for verifier in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &verifier.key,
                &verifier.validation,
            ) {
                Ok(data) => {
                    return Some(self.tenant_from_claims(&data.claims));
                }
                Err(e) => {
                    let error = map_jwt_error(e);
                    // Only a bad signature depends on the key tried. Any other error is either
                    // about the token's form or from the claim checks that follow a verified
                    // signature: its verdict stands.
                    if error != AuthError::BadSignature {
                        return Some(Err(error));
                    }
                    outcome = Some(Err(error));
                }
            }
        }
        outcome
    }

    fn refusal_reason(&self, alg: Algorithm) -> String {
        match alg.family() {
            AlgorithmFamily::Hmac if self.secret.is_none() => {
                format!("{alg:?} tokens are not accepted: no shared secret is configured")
            }
            AlgorithmFamily::Hmac => {
                format!("{alg:?} tokens are not accepted: the shared secret is for HS256 only")
            }
            _ if self.public_key.is_none() && self.jwks_by_kid.is_empty() => {
                let none = if self.jwks_without_kid.is_empty() {
                    "no public key is configured"
                } else {
                    "no configured key accepts it"
                };
                format!("{alg:?} tokens are not accepted: {none}")
            }
            _ => format!("{alg:?} tokens are not accepted by the configured keys"),
        }
    }

    fn tenant_from_claims(&self, claims: &Map<String, Value>) -> Result<Verified, AuthError> {
        let name = &self.tenant_claim;
        let value = claims.get(name).ok_or_else(|| {
            AuthError::InvalidTenantClaim(format!("the token has no `{name}` claim"))
        })?;
        let raw = value.as_str().ok_or_else(|| {
            AuthError::InvalidTenantClaim(format!("the `{name}` claim is not a string"))
        })?;
        let tenant = TenantId::new(raw).map_err(|e| {
            AuthError::InvalidTenantClaim(format!("the `{name}` claim is not a tenant id: {e}"))
        })?;
        let subject = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => sub.to_owned(),
            _ => tenant.as_str().to_owned(),
        };
        // `exp` was validated as a number; keep it to re-check expiry on cache hits.
        let exp = claims.get("exp").and_then(|exp| {
            exp.as_u64().or_else(|| {
                exp.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.round() as u64)
            })
        });
        Ok(Verified {
            tenant,
            subject,
            exp: exp.unwrap_or(0),
            cacheable: exp.is_some(),
        })
    }
}

/// How many verified tokens are remembered. Even HS256 is worth it: decoding and checking a
/// token took 8% of a point read's server time (`perf`, `tenantdb-bench serve`), a cache hit
/// is one SHA-256 of the token and a map lookup.
const VERIFIED_CACHE_CAPACITY: usize = 16_384;

/// The outcome of verifying a token.
#[derive(Debug, Clone)]
struct Verified {
    tenant: TenantId,
    subject: String,
    exp: u64,
    cacheable: bool,
}

/// Verified tokens by the SHA-256 of their exact bytes. Only tokens that passed every check are
/// stored, and a hit re-checks `exp`: the same bytes carry the same signature, header and claims,
/// and `nbf`, once passed, stays passed. Bounded: when full, expired entries go, and if that is
/// not enough, everything does.
struct VerifiedCache {
    entries: RwLock<HashMap<[u8; 32], Verified>>,
    capacity: usize,
    leeway: u64,
}

impl VerifiedCache {
    fn new(capacity: usize, leeway: u64) -> Self {
        VerifiedCache {
            entries: RwLock::new(HashMap::new()),
            capacity,
            leeway,
        }
    }

    fn is_expired(&self, exp: u64, now: u64) -> bool {
        exp.saturating_add(self.leeway) < now
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Result<Verified, AuthError>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let hit = entries.get(digest)?;
        if self.is_expired(hit.exp, unix_now()) {
            drop(entries);
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(digest);
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(hit.clone()))
    }

    fn insert(&self, digest: [u8; 32], verified: &Verified) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            let now = unix_now();
            entries.retain(|_, v| !self.is_expired(v.exp, now));
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(digest, verified.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Seconds since the epoch; a clock before 1970 reads as the far future, so nothing cached is
/// accepted by mistake.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |d| d.as_secs())
}

/// The claim checks every key shares; only the algorithms differ.
fn validation(config: &AuthConfig, algorithms: &[Algorithm]) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = algorithms.to_vec();
    v.leeway = config.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v.required_spec_claims.insert("exp".to_owned());
    if let Some(issuer) = &config.issuer {
        v.set_issuer(&[issuer]);
        v.required_spec_claims.insert("iss".to_owned());
    }
    v
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not printable ASCII"))?
        .trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "the Authorization scheme must be Bearer",
        ));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("the bearer token is empty"));
    }
    Ok(token)
}

fn single_x_tenant(headers: &HeaderMap) -> Result<Option<&axum::http::HeaderValue>, AuthError> {
    let mut values = headers.get_all(X_TENANT).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::InvalidTenantHeader(
            "more than one x-tenant header".to_owned(),
        ));
    }
    Ok(first)
}

struct PeekedHeader {
    alg: Algorithm,
    kid: Option<String>,
}

/// Reads the token's header (unverified) to choose a key. Refuses `none`, unknown algorithms
/// and critical extensions here, with clear messages, before any key is involved.
fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: Option<String>,
        kid: Option<String>,
        crit: Option<Value>,
    }

    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "the bearer token is neither the admin token nor a JWT",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("the JWT header is not base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("the JWT header is not a JSON object"))?;
    if raw.crit.is_some() {
        return Err(AuthError::Algorithm(
            "critical header extensions (crit) are not supported".to_owned(),
        ));
    }
    let alg = raw
        .alg
        .ok_or(AuthError::Malformed("the JWT header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Algorithm(
            "unsigned tokens (alg none) are never accepted".to_owned(),
        ));
    }
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| AuthError::Algorithm("its algorithm is not supported".to_owned()))?;
    Ok(PeekedHeader { alg, kid: raw.kid })
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed("the JWT is not well formed"),
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::InvalidClaims(format!("the required `{claim}` claim is missing"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::InvalidClaims(format!("the `{claim}` claim is not a number"))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => {
            AuthError::Algorithm("its algorithm does not match the key".to_owned())
        }
        // Key errors cannot normally happen (keys are checked in `new`); a signature that cannot
        // be checked is not a valid one.
        _ => AuthError::BadSignature,
    }
}

// ---------------------------------------------------------------------------------------------
// Key loading.

/// What a PEM public key is, read from its SubjectPublicKeyInfo algorithm identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
const OID_RSA_PSS: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x71];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first PEM block: its label and DER body.
fn parse_pem_armor(pem: &[u8]) -> Result<(String, Vec<u8>), AuthSetupError> {
    let unreadable = |why: &str| AuthSetupError::UnreadablePem(why.to_owned());
    let text = std::str::from_utf8(pem).map_err(|_| unreadable("it is not text"))?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| unreadable("no `-----BEGIN …-----` line"))?;
    let after_begin = &text[begin + "-----BEGIN ".len()..];
    let label_end = after_begin
        .find("-----")
        .ok_or_else(|| unreadable("the BEGIN line is not closed by `-----`"))?;
    let label = after_begin[..label_end].trim().to_owned();
    let body_and_rest = &after_begin[label_end + "-----".len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = body_and_rest
        .find(&end_marker)
        .ok_or_else(|| AuthSetupError::UnreadablePem(format!("no `{end_marker}` line")))?;
    let body: String = body_and_rest[..body_end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|_| unreadable("its body is not base64"))?;
    if der.is_empty() {
        return Err(unreadable("its body is empty"));
    }
    Ok((label, der))
}

fn classify_public_key(label: &str, der: &[u8]) -> Result<KeyKind, AuthSetupError> {
    let unsupported = |why: &str| AuthSetupError::UnsupportedKey(why.to_owned());
    match label {
        "RSA PUBLIC KEY" => return Ok(KeyKind::Rsa),
        "PUBLIC KEY" => {}
        l if l.contains("PRIVATE KEY") => {
            return Err(unsupported(
                "the file holds a private key; give its public key \
                 (`openssl pkey -in key.pem -pubout`)",
            ));
        }
        "CERTIFICATE" => {
            return Err(unsupported(
                "the file holds a certificate; give its public key \
                 (`openssl x509 -in cert.pem -pubkey -noout`)",
            ));
        }
        other => {
            return Err(AuthSetupError::UnsupportedKey(format!(
                "a PEM `{other}` block; expected `PUBLIC KEY`"
            )));
        }
    }
    // The algorithm identifier opens the SubjectPublicKeyInfo; look only there so key material
    // can never be mistaken for an OID.
    let head = &der[..der.len().min(32)];
    if contains(head, OID_RSA) {
        Ok(KeyKind::Rsa)
    } else if contains(head, OID_EC) {
        if contains(head, OID_P256) {
            Ok(KeyKind::EcP256)
        } else if contains(head, OID_P384) {
            Ok(KeyKind::EcP384)
        } else {
            Err(unsupported(
                "an EC key on a curve other than P-256 or P-384",
            ))
        }
    } else if contains(head, OID_ED25519) {
        Ok(KeyKind::Ed25519)
    } else if contains(head, OID_ED448) {
        Err(unsupported("an Ed448 key (only Ed25519 is supported)"))
    } else if contains(head, OID_RSA_PSS) {
        Err(unsupported(
            "an RSASSA-PSS-only key; export it as a plain RSA public key",
        ))
    } else {
        Err(unsupported(
            "not an RSA, EC P-256/P-384 or Ed25519 public key",
        ))
    }
}

/// Makes the crypto backend build its verifying key once, so a key it cannot use fails here and
/// not on every request. (RSA keys are only parsed when verifying; they are checked separately.)
fn check_key(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    jsonwebtoken::crypto::verify("", b"", key, alg)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_rsa_modulus(modulus: &[u8]) -> Result<(), String> {
    let first = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let len = modulus.len() - first;
    if len < MIN_RSA_MODULUS_BYTES {
        Err(format!(
            "the RSA key has {} bits; at least 2048 are required",
            len * 8
        ))
    } else if len > MAX_RSA_MODULUS_BYTES {
        Err(format!(
            "the RSA key has {} bits; at most 4096 are supported",
            len * 8
        ))
    } else {
        Ok(())
    }
}

fn pem_verifier(pem: &[u8], config: &AuthConfig) -> Result<Verifier, AuthSetupError> {
    let (label, der) = parse_pem_armor(pem)?;
    let kind = classify_public_key(&label, &der)?;
    let unreadable = |e: jsonwebtoken::errors::Error| AuthSetupError::UnreadablePem(e.to_string());
    let (key, algorithms): (DecodingKey, &[Algorithm]) = match kind {
        KeyKind::Rsa => {
            let key = DecodingKey::from_rsa_pem(pem).map_err(unreadable)?;
            let jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(&key, Some(Algorithm::RS256))
                .map_err(|e| AuthSetupError::UnreadablePem(format!("bad RSA key: {e}")))?;
            if let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
                let n = URL_SAFE_NO_PAD
                    .decode(&rsa.n)
                    .map_err(|e| AuthSetupError::UnreadablePem(e.to_string()))?;
                check_rsa_modulus(&n).map_err(AuthSetupError::UnsupportedKey)?;
            }
            (key, AlgorithmFamily::Rsa.algorithms())
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let key = DecodingKey::from_ec_pem(pem).map_err(unreadable)?;
            let alg: &[Algorithm] = if kind == KeyKind::EcP256 {
                &[Algorithm::ES256]
            } else {
                &[Algorithm::ES384]
            };
            check_key(&key, alg[0])
                .map_err(|e| AuthSetupError::UnreadablePem(format!("bad EC key: {e}")))?;
            (key, alg)
        }
        KeyKind::Ed25519 => {
            let key = DecodingKey::from_ed_pem(pem).map_err(unreadable)?;
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                return Err(AuthSetupError::UnreadablePem(
                    "bad Ed25519 key: not 32 bytes".to_owned(),
                ));
            }
            check_key(&key, Algorithm::EdDSA)
                .map_err(|e| AuthSetupError::UnreadablePem(format!("bad Ed25519 key: {e}")))?;
            (key, &[Algorithm::EdDSA])
        }
    };
    Ok(Verifier {
        key,
        validation: validation(config, algorithms),
    })
}

/// Every usable signature key of a JWKS, with its `kid`. Unusable keys (encryption keys, shared
/// secrets, unsupported curves, malformed entries) are skipped with a warning; a JWKS with no
/// usable key at all is an error.
fn jwks_verifiers(
    json: &[u8],
    config: &AuthConfig,
) -> Result<Vec<(Option<String>, Verifier)>, AuthSetupError> {
    let doc: Value = serde_json::from_slice(json)
        .map_err(|e| AuthSetupError::UnreadableJwks(format!("not JSON: {e}")))?;
    let keys: Vec<&Value> = match doc.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => {
            return Err(AuthSetupError::UnreadableJwks(
                "`keys` is not an array".to_owned(),
            ));
        }
        // A single JWK on its own is accepted too.
        None if doc.get("kty").is_some() => vec![&doc],
        None => {
            return Err(AuthSetupError::UnreadableJwks("no `keys` array".to_owned()));
        }
    };

    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (index, jwk) in keys.into_iter().enumerate() {
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        let name = match &kid {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{index}"),
        };
        match jwk_verifier(jwk, config) {
            Ok(verifier) => usable.push((kid, verifier)),
            Err(reason) => {
                tracing::warn!("JWKS {name} skipped: {reason}");
                skipped.push(format!("{name}: {reason}"));
            }
        }
    }
    if usable.is_empty() {
        if skipped.is_empty() {
            skipped.push("the key list is empty".to_owned());
        }
        return Err(AuthSetupError::NoUsableJwksKeys { skipped });
    }
    Ok(usable)
}

fn jwk_verifier(jwk: &Value, config: &AuthConfig) -> Result<Verifier, String> {
    let field = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` is not a string")),
        }
    };
    let required = |name: &str| -> Result<&str, String> {
        field(name)?.ok_or_else(|| format!("`{name}` is missing"))
    };
    if !jwk.is_object() {
        return Err("not a JSON object".to_owned());
    }
    field("kid")?;
    if let Some(usage) = field("use")?
        && usage != "sig"
    {
        return Err(format!("it is for `{usage}`, not `sig`"));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("its key_ops do not include `verify`".to_owned());
        }
    }
    let declared = field("alg")?;
    let kty = required("kty")?;

    let (key, alg) = match kty {
        "RSA" => {
            let alg = match declared {
                None => Algorithm::RS256,
                Some(name @ ("RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512")) => name
                    .parse()
                    .map_err(|_| format!("unsupported alg `{name}`"))?,
                Some(other) => return Err(format!("alg `{other}` does not fit an RSA key")),
            };
            let n = required("n")?;
            let e = required("e")?;
            let modulus = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| "`n` is not base64url".to_owned())?;
            check_rsa_modulus(&modulus)?;
            let key =
                DecodingKey::from_rsa_components(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            (key, alg)
        }
        "EC" => {
            let alg = match required("crv")? {
                "P-256" => Algorithm::ES256,
                "P-384" => Algorithm::ES384,
                other => return Err(format!("unsupported curve `{other}`")),
            };
            if let Some(name) = declared
                && name.parse::<Algorithm>().ok() != Some(alg)
            {
                return Err(format!("alg `{name}` does not fit its curve"));
            }
            let key = DecodingKey::from_ec_components(required("x")?, required("y")?)
                .map_err(|e| format!("bad EC key: {e}"))?;
            check_key(&key, alg).map_err(|e| format!("bad EC key: {e}"))?;
            (key, alg)
        }
        "OKP" => {
            match required("crv")? {
                "Ed25519" => {}
                other => return Err(format!("unsupported curve `{other}`")),
            }
            // RFC 9864 names the fully specified algorithm `Ed25519`.
            if let Some(name) = declared
                && name != "EdDSA"
                && name != "Ed25519"
            {
                return Err(format!("alg `{name}` does not fit an Ed25519 key"));
            }
            let x = required("x")?;
            let raw = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| "`x` is not base64url".to_owned())?;
            if raw.len() != 32 {
                return Err("bad Ed25519 key: `x` is not 32 bytes".to_owned());
            }
            let key =
                DecodingKey::from_ed_components(x).map_err(|e| format!("bad Ed25519 key: {e}"))?;
            check_key(&key, Algorithm::EdDSA).map_err(|e| format!("bad Ed25519 key: {e}"))?;
            (key, Algorithm::EdDSA)
        }
        "oct" => {
            return Err(
                "shared-secret (oct) keys are not taken from a JWKS; configure the JWT secret"
                    .to_owned(),
            );
        }
        other => return Err(format!("unsupported key type `{other}`")),
    };
    Ok(Verifier {
        key,
        validation: validation(config, &[alg]),
    })
}

// ---------------------------------------------------------------------------------------------
// Minting.

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("no JWT secret is configured")]
    NoSecret,
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("the tenant claim name is empty")]
    EmptyClaim,
    #[error("`{0}` is a registered claim and cannot carry the tenant")]
    ReservedClaim(String),
    #[error("the token lifetime is too long")]
    TtlTooLong,
    #[error("the system clock is before 1970")]
    Clock,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Mints an HS256 user token `{claim: tenant, exp, iat}` (plus `sub: tenant` when the tenant
/// claim is not `sub`), valid for `ttl`.
pub fn mint_token(
    secret: &str,
    tenant: &TenantId,
    ttl: Duration,
    claim: &str,
) -> Result<String, MintError> {
    mint(secret, tenant, ttl, claim, None).map(|minted| minted.token)
}

/// Mints a token that the [`Authenticator`] built from `config` accepts: its secret, its tenant
/// claim and, when one is configured, its issuer.
pub fn mint_token_for(
    config: &AuthConfig,
    tenant: &TenantId,
    ttl: Duration,
) -> Result<String, MintError> {
    mint_for(config, tenant, ttl).map(|minted| minted.token)
}

/// A minted token and the moment it expires, for callers that tell the holder when to get a
/// new one.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    pub token: String,
    /// The token's `exp`: unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// [`mint_token_for`], with the token's expiry.
pub fn mint_for(
    config: &AuthConfig,
    tenant: &TenantId,
    ttl: Duration,
) -> Result<Minted, MintError> {
    let secret = config.jwt_secret.as_deref().ok_or(MintError::NoSecret)?;
    mint(
        secret,
        tenant,
        ttl,
        &config.tenant_claim,
        config.issuer.as_deref(),
    )
}

fn mint(
    secret: &str,
    tenant: &TenantId,
    ttl: Duration,
    claim: &str,
    issuer: Option<&str>,
) -> Result<Minted, MintError> {
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if claim.is_empty() {
        return Err(MintError::EmptyClaim);
    }
    if matches!(claim, "exp" | "iat" | "nbf" | "iss" | "aud" | "jti") {
        return Err(MintError::ReservedClaim(claim.to_owned()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?
        .as_secs();
    let exp = now
        .checked_add(ttl.as_secs())
        .filter(|exp| *exp <= i64::MAX as u64)
        .ok_or(MintError::TtlTooLong)?;
    let mut claims = Map::new();
    claims.insert(claim.to_owned(), Value::from(tenant.as_str()));
    if claim != "sub" {
        claims.insert("sub".to_owned(), Value::from(tenant.as_str()));
    }
    if let Some(iss) = issuer {
        claims.insert("iss".to_owned(), Value::from(iss));
    }
    claims.insert("iat".to_owned(), Value::from(now));
    claims.insert("exp".to_owned(), Value::from(exp));
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError::Sign(e.to_string()))?;
    Ok(Minted {
        token,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    // Test-only key pairs, generated with OpenSSL 3.0 on the build machine
    // (`openssl genpkey -algorithm RSA|EC|ED25519 …`, `openssl pkey -pubout`).
    const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCzjiU4rIKzxpQD
bcPe29v0pzp/4fCbgR8Yz7njzqP5tz4MuJGxq1Zet/i8iDCumIbv2+LZYqnjhNbb
tNf1Wby2nvrAr7kieF/DWRNc2L9Mdi0XFvBiWq/a/zPKQ4Gbd6NqhjKCOanarhvR
UiD5PWvA2FkkDNtKPysgkADcdurKqAayiU93yzoOlNqKWFRQCj46t3pJ85uNzB5D
OA33MutJZUJLftQQOb1iCPXm2lTPo7T4l6H+7txNEG5e8JRDgaXkkajiKlJTXCRE
z7tyad56K6QXiPBhoo08/gKUuZBggax8touA085G+2doBE9XblGys7RN7hOocuuP
D+7sjyKBAgMBAAECggEAK9v+cpQNDy3kDNxcmoz48w+ARimiFNIbDvv6y883lbFx
ijjxecVBAT0OGLtprNRcLa34ASLNHeLeeud3Uxq68p7t4HBsGCPwPG7/QFA/lkVN
qVS0nknJqARrma4YtCmqtMQYBWBhgaXC7MQTgt5CemY+jARJ8p5wgfE7DJ9Npfex
aGYkuW0kLjQcRlrb2OGGosy8gzzPg/rKlnIgKh8wHwu9xsxeQ5xGXAi6j7X+zTkL
IuN0LOEf3PwCt/IdGg4kX/ga530mbX2BuBjcJwMcPuNPZM6KNQTqB9nLGQip/7JS
SoDiDH3ar4jdfJp0BA64AhSg5OGhA/UF5e8QTyJ0wwKBgQDf01CXrIOt7FDGRpjp
SynZ5ImVl9m0MNR1Z27asaDPmHlUvsKzI7+e+MLdenin7zxkC7N+08hmpk6mW27m
1D23YmY6HYdSCQdhSswBgvJ285ZNAsjyxxbJzPuEwmoNNvq8EsLbVDYLBHKcMfyF
DVChSTNkT5IDvVe3U+3xGaaMpwKBgQDNXbSePxusSYlSnba7Pp2qyDFXrtuUsMAA
BkGGzrNDPgpzV4+ROXOWNOZ06UQrt7tORZg3ePGxFQMs4XzAV4WmXngMzXqp9T3J
Vu6S1IpfyznbM3RoFQn3s5e3j8YUsfQY6kfsLzVb/x0EyfoPQLF3LoW523EZxIzV
f300AgX0lwKBgEXOylwD2i3sfmTYr+hTIQJsXNzjN2sTr6/OSqy6qcUVcQIVXPQy
OhmCzIP3Jpp56wPpAlqUAvTA+da4vaYQnA8OCYQmoYXcewjFI0t1Y9nlrwLl03ak
0V6vJ+MIH7tvYlQ2Jb/yS8iz4msEzBVTScqD4htvFcNE0o7DBnsj3OYRAoGAb7pm
VJ3S6WXMjyT80FwdnVdy+NhJ4FhU7O56YeQ8xP2Q4/WkRwcxqmu3Ya2zB/HatpfI
W42yOHxNEPLQUziKntvQhm6YKLUi21IvU7TMX5eKL4aL80BW/us3RIe05Xd3bMKx
RH7ekeF2oS9dm0TACC5IVLhdjP5Q/KpyrIPZR5sCgYEAwjdWVQ8E/VbzhQMB585h
7A0vtPUI/N1bDqRBPCj+FZwoao4ethSVkWIlLldY8lM1c9rDJEyegWhitUjVGCJT
d7J/QXBX2j17v4VaKUW587jtKWbSX94EIv/CurPF/rve6Ryzc/twGtYxy0pCUbDd
pi09v2lSgduUSdaUve04z8o=
-----END PRIVATE KEY-----
";

    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAs44lOKyCs8aUA23D3tvb
9Kc6f+Hwm4EfGM+5486j+bc+DLiRsatWXrf4vIgwrpiG79vi2WKp44TW27TX9Vm8
tp76wK+5Inhfw1kTXNi/THYtFxbwYlqv2v8zykOBm3ejaoYygjmp2q4b0VIg+T1r
wNhZJAzbSj8rIJAA3HbqyqgGsolPd8s6DpTailhUUAo+Ord6SfObjcweQzgN9zLr
SWVCS37UEDm9Ygj15tpUz6O0+Jeh/u7cTRBuXvCUQ4Gl5JGo4ipSU1wkRM+7cmne
eiukF4jwYaKNPP4ClLmQYIGsfLaLgNPORvtnaARPV25RsrO0Te4TqHLrjw/u7I8i
gQIDAQAB
-----END PUBLIC KEY-----
";

    const RSA_PUBLIC_PKCS1: &str = "\
-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAs44lOKyCs8aUA23D3tvb9Kc6f+Hwm4EfGM+5486j+bc+DLiRsatW
Xrf4vIgwrpiG79vi2WKp44TW27TX9Vm8tp76wK+5Inhfw1kTXNi/THYtFxbwYlqv
2v8zykOBm3ejaoYygjmp2q4b0VIg+T1rwNhZJAzbSj8rIJAA3HbqyqgGsolPd8s6
DpTailhUUAo+Ord6SfObjcweQzgN9zLrSWVCS37UEDm9Ygj15tpUz6O0+Jeh/u7c
TRBuXvCUQ4Gl5JGo4ipSU1wkRM+7cmneeiukF4jwYaKNPP4ClLmQYIGsfLaLgNPO
RvtnaARPV25RsrO0Te4TqHLrjw/u7I8igQIDAQAB
-----END RSA PUBLIC KEY-----
";

    const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgisqDUM92Eexd+vch
x5b0WZQDmO7r84bpPsm4g8867bqhRANCAATaRCR8oTIhnVgUUWL+IL8dkmlOSv78
5G5+MnmXRZwG5O4DOWKSb0YuLRO67PznJiMWAogrc/QYSt9CxPb1QqUA
-----END PRIVATE KEY-----
";

    const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2kQkfKEyIZ1YFFFi/iC/HZJpTkr+
/ORufjJ5l0WcBuTuAzlikm9GLi0Tuuz85yYjFgKIK3P0GErfQsT29UKlAA==
-----END PUBLIC KEY-----
";

    const EC_OTHER_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguntZITb/P1o9gfKe
kbnimCOfZs1JRleizuhZvZ4Z50qhRANCAAQz+xsmsuLopyM6+g5akqAdMYH+/k3D
V9n5u3u+84v8Y4SlWVzS8vEAZF/JgfrNzb1wmT4B7xzxYqPHjLQCIi81
-----END PRIVATE KEY-----
";

    const EC384_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBOho1G5lew7ciAo6SY
dSexQgLzd4ZhJw5avidcdfGO20nPw20yT6IAuLlvQKw090+hZANiAATOFFDynhYA
rwyJ9DWWeFdCg3woWKPlJtYVSy5P1/hGMjyyWLJcDKm3U74wO4lr+DVGame9c6S6
bDae1cgPzf8tvcub+XygWSAHKj/qsJPdGalmrvOexJNpEmY2oyKD7d4=
-----END PRIVATE KEY-----
";

    const EC384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEzhRQ8p4WAK8MifQ1lnhXQoN8KFij5SbW
FUsuT9f4RjI8sliyXAypt1O+MDuJa/g1RmpnvXOkumw2ntXID83/Lb3Lm/l8oFkg
Byo/6rCT3RmpZq7znsSTaRJmNqMig+3e
-----END PUBLIC KEY-----
";

    const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFT+oL/tJZ3m3ts5RDKi3WliV2yQl8Lri5D1MP9iFnIX
-----END PRIVATE KEY-----
";

    const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA++lt4POcswcfXpvxDRYzSmmQtsuQqCgnzUk+w6w0TdM=
-----END PUBLIC KEY-----
";

    const SECP256K1_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEBqmigHiq5xSuO5Qfbeh9XyFc+QXGPetf
sRPNrsj2IglkqfnhzGF5E4J/RtQ8procm19zyO3TrW6n5A1aCWAZvQ==
-----END PUBLIC KEY-----
";

    const ED448_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MEMwBQYDK2VxAzoAiV2e/ivvgCJnqZbIz0RJ4vfNeOBhNgWSIRkYMuben7nUxQcj
ix9JAhP2pzCZptMBHh/61R3LqI2A
-----END PUBLIC KEY-----
";

    const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
    const ADMIN: &str = "admin-token-0123456789-abcdefghijklmnop";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims_for(sub: &str) -> Value {
        json!({ "sub": sub, "iat": now(), "exp": now() + 600 })
    }

    fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(secret: &str, claims: &Value) -> String {
        sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            None,
            claims,
        )
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
    }
    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap()
    }
    fn ec_other_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_OTHER_PRIVATE.as_bytes()).unwrap()
    }
    fn ec384_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap()
    }
    fn ed_key() -> EncodingKey {
        EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap()
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn with_x_tenant(mut h: HeaderMap, tenant: &str) -> HeaderMap {
        h.append(X_TENANT, HeaderValue::from_str(tenant).unwrap());
        h
    }

    fn secret_config() -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        }
    }

    fn pem_config(public: &str) -> AuthConfig {
        AuthConfig {
            jwt_public_key_pem: Some(public.as_bytes().to_vec()),
            ..AuthConfig::default()
        }
    }

    fn auth(config: &AuthConfig) -> Authenticator {
        Authenticator::new(config).unwrap()
    }

    fn user(tenant: &str) -> Principal {
        Principal::User {
            tenant: TenantId::new(tenant).unwrap(),
            subject: tenant.to_owned(),
        }
    }

    /// Authenticates and checks that whatever the outcome, the error text never holds the token.
    fn check(a: &Authenticator, h: &HeaderMap) -> Result<Principal, AuthError> {
        let result = a.authenticate(h);
        if let Err(e) = &result
            && let Some(Ok(value)) = h.get(AUTHORIZATION).map(HeaderValue::to_str)
        {
            let token = value.trim_start_matches("Bearer ");
            let text = format!("{e} {e:?}");
            // (Tokens of a few letters occur in any English message.)
            assert!(
                token.len() < 8 || !text.contains(token),
                "error {text} echoes the token"
            );
            if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() > 8) {
                assert!(
                    !text.contains(signature),
                    "error {text} echoes the signature"
                );
            }
        }
        result
    }

    // ---- HS256 ------------------------------------------------------------------------------

    #[test]
    fn hs256_token_names_its_tenant() {
        let a = auth(&secret_config());
        let p = check(&a, &headers(&hs256(SECRET, &claims_for("user_2abcDEF")))).unwrap();
        assert_eq!(p, user("user_2abcDEF"));
        assert_eq!(p.tenant().unwrap().as_str(), "user_2abcDEF");
        assert_eq!(p.actor(), "user:user_2abcDEF");
        assert!(!p.is_admin());
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let a = auth(&secret_config());
        let err = check(&a, &headers(&hs256("another-secret", &claims_for("u1")))).unwrap_err();
        assert_eq!(err, AuthError::BadSignature);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(err.code(), "AUTH_INVALID");
    }

    #[test]
    fn tampered_claims_are_a_bad_signature() {
        let a = auth(&secret_config());
        let token = hs256(SECRET, &claims_for("u1"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(&claims_for("u2")), parts[2]);
        assert_eq!(check(&a, &headers(&forged)), Err(AuthError::BadSignature));
    }

    #[test]
    fn hs384_is_refused_with_an_hs256_secret() {
        let a = auth(&secret_config());
        let token = sign_with(
            Algorithm::HS384,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            &claims_for("u1"),
        );
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
    }

    // ---- time claims --------------------------------------------------------------------------

    #[test]
    fn expired_token_is_refused() {
        let a = auth(&secret_config());
        let token = hs256(SECRET, &json!({ "sub": "u1", "exp": now() - 60 }));
        let err = check(&a, &headers(&token)).unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.code(), "AUTH_EXPIRED");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let a = auth(&secret_config());
        let token = hs256(SECRET, &json!({ "sub": "u1", "exp": now() - 3 }));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
        let strict = auth(&AuthConfig {
            leeway_secs: 0,
            ..secret_config()
        });
        assert_eq!(check(&strict, &headers(&token)), Err(AuthError::Expired));
    }

    #[test]
    fn future_nbf_is_refused_and_past_nbf_accepted() {
        let a = auth(&secret_config());
        let future = hs256(
            SECRET,
            &json!({ "sub": "u1", "exp": now() + 600, "nbf": now() + 300 }),
        );
        let err = check(&a, &headers(&future)).unwrap_err();
        assert_eq!(err, AuthError::NotYetValid);
        assert_eq!(err.code(), "AUTH_NOT_YET_VALID");
        let past = hs256(
            SECRET,
            &json!({ "sub": "u1", "exp": now() + 600, "nbf": now() - 300 }),
        );
        assert_eq!(check(&a, &headers(&past)), Ok(user("u1")));
    }

    #[test]
    fn exp_is_required() {
        let a = auth(&secret_config());
        let token = hs256(SECRET, &json!({ "sub": "u1", "iat": now() }));
        let err = check(&a, &headers(&token)).unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidClaims(ref m) if m.contains("exp")),
            "{err}"
        );
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        let textual = hs256(SECRET, &json!({ "sub": "u1", "exp": "tomorrow" }));
        assert!(matches!(
            check(&a, &headers(&textual)),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    // ---- issuer -------------------------------------------------------------------------------

    #[test]
    fn issuer_must_match_when_configured() {
        let config = AuthConfig {
            issuer: Some("https://clerk.example.com".to_owned()),
            ..secret_config()
        };
        let a = auth(&config);
        let mut claims = claims_for("u1");
        claims["iss"] = json!("https://clerk.example.com");
        assert_eq!(check(&a, &headers(&hs256(SECRET, &claims))), Ok(user("u1")));

        claims["iss"] = json!("https://evil.example.com");
        let err = check(&a, &headers(&hs256(SECRET, &claims))).unwrap_err();
        assert_eq!(err, AuthError::WrongIssuer);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);

        let missing = hs256(SECRET, &claims_for("u1"));
        assert!(matches!(
            check(&a, &headers(&missing)),
            Err(AuthError::InvalidClaims(ref m)) if m.contains("iss")
        ));

        // Without an issuer configured, any issuer is fine.
        let open = auth(&secret_config());
        assert_eq!(
            check(&open, &headers(&hs256(SECRET, &claims))),
            Ok(user("u1"))
        );
    }

    // ---- tenant claim -------------------------------------------------------------------------

    #[test]
    fn invalid_tenant_ids_in_the_claim_are_refused() {
        let a = auth(&secret_config());
        for bad in ["../etc/passwd", "a.b", "", "-leading", "has space", "x%2F"] {
            let token = hs256(SECRET, &claims_for(bad));
            let err = check(&a, &headers(&token)).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidTenantClaim(_)),
                "{bad:?}: {err}"
            );
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(err.code(), "AUTH_INVALID_TENANT");
        }
        let long = "a".repeat(129);
        assert!(matches!(
            check(&a, &headers(&hs256(SECRET, &claims_for(&long)))),
            Err(AuthError::InvalidTenantClaim(_))
        ));
        let numeric = hs256(SECRET, &json!({ "sub": 42, "exp": now() + 600 }));
        assert!(matches!(
            check(&a, &headers(&numeric)),
            Err(AuthError::InvalidTenantClaim(ref m)) if m.contains("not a string")
        ));
        let absent = hs256(SECRET, &json!({ "exp": now() + 600 }));
        assert!(matches!(
            check(&a, &headers(&absent)),
            Err(AuthError::InvalidTenantClaim(ref m)) if m.contains("no `sub` claim")
        ));
    }

    #[test]
    fn tenant_claim_name_is_configurable() {
        let config = AuthConfig {
            tenant_claim: "org_id".to_owned(),
            ..secret_config()
        };
        let a = auth(&config);
        let token = hs256(
            SECRET,
            &json!({ "sub": "user_1", "org_id": "org_9", "exp": now() + 600 }),
        );
        let p = check(&a, &headers(&token)).unwrap();
        assert_eq!(
            p,
            Principal::User {
                tenant: TenantId::new("org_9").unwrap(),
                subject: "user_1".to_owned()
            }
        );
        assert_eq!(p.actor(), "user:user_1");
        // The `sub` alone is not the tenant under this configuration.
        let token = hs256(SECRET, &claims_for("user_1"));
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::InvalidTenantClaim(_))
        ));
    }

    // ---- algorithm attacks ------------------------------------------------------------------

    fn alg_none_token(alg: &str) -> String {
        format!(
            "{}.{}.",
            b64(&json!({ "alg": alg, "typ": "JWT" })),
            b64(&claims_for("victim"))
        )
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let everything = AuthConfig {
            jwt_public_key_pem: Some(RSA_PUBLIC.as_bytes().to_vec()),
            admin_token: Some(ADMIN.to_owned()),
            ..secret_config()
        };
        for config in [secret_config(), pem_config(RSA_PUBLIC), everything] {
            let a = auth(&config);
            for alg in ["none", "None", "NONE", "nOnE"] {
                let err = check(&a, &headers(&alg_none_token(alg))).unwrap_err();
                assert!(
                    matches!(err, AuthError::Algorithm(ref m) if m.contains("none")),
                    "{err}"
                );
                assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            }
            // A none token with a signature tacked on is no better.
            let err = check(&a, &headers(&format!("{}AAAA", alg_none_token("none")))).unwrap_err();
            assert!(matches!(err, AuthError::Algorithm(_)));
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion attack: the attacker knows the public key and uses its PEM bytes
        // as an HMAC secret.
        for public in [RSA_PUBLIC, EC_PUBLIC, ED_PUBLIC] {
            let forged = hs256(public, &claims_for("victim"));
            let a = auth(&pem_config(public));
            let err = check(&a, &headers(&forged)).unwrap_err();
            assert!(
                matches!(err, AuthError::Algorithm(ref m) if m.contains("no shared secret")),
                "{err}"
            );
            // With a (different) shared secret configured too, it is checked against that
            // secret, and fails.
            let both = auth(&AuthConfig {
                jwt_public_key_pem: Some(public.as_bytes().to_vec()),
                ..secret_config()
            });
            assert_eq!(
                check(&both, &headers(&forged)),
                Err(AuthError::BadSignature)
            );
        }
    }

    #[test]
    fn hs256_signed_with_jwks_material_is_refused() {
        let a = auth(&jwks_config());
        let jwks = jwks_json();
        let mut forged_with_n_as_secret = claims_for("victim");
        forged_with_n_as_secret["exp"] = json!(now() + 600);
        let n = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
        let token = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(n.as_bytes()),
            Some("rsa-1"),
            &forged_with_n_as_secret,
        );
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
        let token = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(n.as_bytes()),
            None,
            &forged_with_n_as_secret,
        );
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn public_key_tokens_are_refused_when_only_a_secret_is_configured() {
        let a = auth(&secret_config());
        let rs = sign_with(Algorithm::RS256, &rsa_key(), None, &claims_for("u1"));
        let es = sign_with(Algorithm::ES256, &ec_key(), None, &claims_for("u1"));
        let ed = sign_with(Algorithm::EdDSA, &ed_key(), None, &claims_for("u1"));
        for token in [rs, es, ed] {
            let err = check(&a, &headers(&token)).unwrap_err();
            assert!(
                matches!(err, AuthError::Algorithm(ref m) if m.contains("no public key")),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_algorithms_and_crit_headers_are_refused() {
        let a = auth(&secret_config());
        let token = format!(
            "{}.{}.AAAA",
            b64(&json!({ "alg": "XS999" })),
            b64(&claims_for("u1"))
        );
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["b64".to_owned()]);
        let token = jsonwebtoken::encode(
            &header,
            &claims_for("u1"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(ref m)) if m.contains("crit")
        ));
    }

    // ---- PEM public keys -----------------------------------------------------------------------

    #[test]
    fn rsa_pem_accepts_rs256_and_its_family() {
        let a = auth(&pem_config(RSA_PUBLIC));
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
        ] {
            let token = sign_with(alg, &rsa_key(), None, &claims_for("u_rsa"));
            assert_eq!(check(&a, &headers(&token)), Ok(user("u_rsa")), "{alg:?}");
        }
        // Not another family's algorithm, even signed by a valid key of that family.
        let es = sign_with(Algorithm::ES256, &ec_key(), None, &claims_for("u1"));
        assert!(matches!(
            check(&a, &headers(&es)),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn pkcs1_rsa_public_key_is_accepted() {
        let a = auth(&pem_config(RSA_PUBLIC_PKCS1));
        let token = sign_with(Algorithm::RS256, &rsa_key(), None, &claims_for("u_rsa"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u_rsa")));
    }

    #[test]
    fn ec_p256_pem_accepts_es256_only() {
        let a = auth(&pem_config(EC_PUBLIC));
        let token = sign_with(Algorithm::ES256, &ec_key(), None, &claims_for("u_ec"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u_ec")));
        let other = sign_with(Algorithm::ES256, &ec_other_key(), None, &claims_for("u_ec"));
        assert_eq!(check(&a, &headers(&other)), Err(AuthError::BadSignature));
        let es384 = sign_with(Algorithm::ES384, &ec384_key(), None, &claims_for("u_ec"));
        assert!(matches!(
            check(&a, &headers(&es384)),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn ec_p384_pem_accepts_es384() {
        let a = auth(&pem_config(EC384_PUBLIC));
        let token = sign_with(Algorithm::ES384, &ec384_key(), None, &claims_for("u_384"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u_384")));
    }

    #[test]
    fn ed25519_pem_accepts_eddsa() {
        let a = auth(&pem_config(ED_PUBLIC));
        let token = sign_with(Algorithm::EdDSA, &ed_key(), None, &claims_for("u_ed"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u_ed")));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(check(&a, &headers(&tampered)).is_err());
    }

    #[test]
    fn expired_and_future_tokens_are_refused_with_public_keys_too() {
        let a = auth(&pem_config(EC_PUBLIC));
        let expired = sign_with(
            Algorithm::ES256,
            &ec_key(),
            None,
            &json!({ "sub": "u1", "exp": now() - 100 }),
        );
        assert_eq!(check(&a, &headers(&expired)), Err(AuthError::Expired));
        let early = sign_with(
            Algorithm::ES256,
            &ec_key(),
            None,
            &json!({ "sub": "u1", "exp": now() + 600, "nbf": now() + 100 }),
        );
        assert_eq!(check(&a, &headers(&early)), Err(AuthError::NotYetValid));
        let no_exp = sign_with(Algorithm::ES256, &ec_key(), None, &json!({ "sub": "u1" }));
        assert!(matches!(
            check(&a, &headers(&no_exp)),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn secret_and_public_key_work_side_by_side() {
        let a = auth(&AuthConfig {
            jwt_public_key_pem: Some(ED_PUBLIC.as_bytes().to_vec()),
            ..secret_config()
        });
        let hs = hs256(SECRET, &claims_for("u_hs"));
        let ed = sign_with(Algorithm::EdDSA, &ed_key(), None, &claims_for("u_ed"));
        assert_eq!(check(&a, &headers(&hs)), Ok(user("u_hs")));
        assert_eq!(check(&a, &headers(&ed)), Ok(user("u_ed")));
    }

    #[test]
    fn bad_pem_keys_are_setup_errors() {
        let err = |pem: &str| Authenticator::new(&pem_config(pem)).unwrap_err();
        assert!(matches!(err("not a key"), AuthSetupError::UnreadablePem(_)));
        assert!(matches!(
            err("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n"),
            AuthSetupError::UnreadablePem(_)
        ));
        assert!(matches!(
            err("-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n"),
            AuthSetupError::UnreadablePem(_)
        ));
        assert!(matches!(
            Authenticator::new(&AuthConfig {
                jwt_public_key_pem: Some(vec![0xff, 0xfe, 0x00]),
                ..AuthConfig::default()
            })
            .unwrap_err(),
            AuthSetupError::UnreadablePem(_)
        ));
        // A truncated but well-armoured RSA key.
        let truncated = "-----BEGIN PUBLIC KEY-----\n\
            MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAs44lOKyCs8aUA23D3tvb\n\
            -----END PUBLIC KEY-----\n";
        assert!(matches!(err(truncated), AuthSetupError::UnreadablePem(_)));

        for (pem, expect) in [
            (RSA_PRIVATE, "private key"),
            (EC_PRIVATE, "private key"),
            (SECP256K1_PUBLIC, "curve"),
            (ED448_PUBLIC, "Ed448"),
        ] {
            let e = err(pem);
            assert!(
                matches!(e, AuthSetupError::UnsupportedKey(ref m) if m.contains(expect)),
                "{e}"
            );
        }
    }

    // ---- JWKS ---------------------------------------------------------------------------------

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
        let mut value =
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap())
                .unwrap();
        if let Some(kid) = kid {
            value["kid"] = json!(kid);
        }
        value["use"] = json!("sig");
        value
    }

    fn jwks_json() -> Value {
        json!({ "keys": [
            jwk(&rsa_key(), Algorithm::RS256, Some("rsa-1")),
            jwk(&ec_key(), Algorithm::ES256, Some("ec-1")),
            jwk(&ed_key(), Algorithm::EdDSA, Some("ed-1")),
            // Entries a real JWKS may carry that must be skipped, not fatal.
            { "kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0" },
            { "kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB" },
            { "kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA" },
        ]})
    }

    fn jwks_config() -> AuthConfig {
        AuthConfig {
            jwks_json: Some(serde_json::to_vec(&jwks_json()).unwrap()),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn jwks_selects_the_key_by_kid() {
        let a = auth(&jwks_config());
        let rs = sign_with(
            Algorithm::RS256,
            &rsa_key(),
            Some("rsa-1"),
            &claims_for("u_rsa"),
        );
        let es = sign_with(
            Algorithm::ES256,
            &ec_key(),
            Some("ec-1"),
            &claims_for("u_ec"),
        );
        let ed = sign_with(
            Algorithm::EdDSA,
            &ed_key(),
            Some("ed-1"),
            &claims_for("u_ed"),
        );
        assert_eq!(check(&a, &headers(&rs)), Ok(user("u_rsa")));
        assert_eq!(check(&a, &headers(&es)), Ok(user("u_ec")));
        assert_eq!(check(&a, &headers(&ed)), Ok(user("u_ed")));
    }

    #[test]
    fn jwks_key_fixes_its_algorithm() {
        let a = auth(&jwks_config());
        // RS384 with the right RSA key is still refused: the JWK says RS256.
        let rs384 = sign_with(
            Algorithm::RS384,
            &rsa_key(),
            Some("rsa-1"),
            &claims_for("u1"),
        );
        assert!(matches!(
            check(&a, &headers(&rs384)),
            Err(AuthError::Algorithm(_))
        ));
        // An ES256 token naming the RSA key's kid.
        let es = sign_with(
            Algorithm::ES256,
            &ec_key(),
            Some("rsa-1"),
            &claims_for("u1"),
        );
        assert!(matches!(
            check(&a, &headers(&es)),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn jwks_wrong_key_for_kid_is_a_bad_signature() {
        let a = auth(&jwks_config());
        let forged = sign_with(
            Algorithm::ES256,
            &ec_other_key(),
            Some("ec-1"),
            &claims_for("u1"),
        );
        assert_eq!(check(&a, &headers(&forged)), Err(AuthError::BadSignature));
    }

    #[test]
    fn jwks_unknown_kid_is_refused() {
        let a = auth(&jwks_config());
        let token = sign_with(Algorithm::ES256, &ec_key(), Some("nope"), &claims_for("u1"));
        let err = check(&a, &headers(&token)).unwrap_err();
        assert_eq!(err, AuthError::UnknownKey);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(err.code(), "AUTH_INVALID");
        // The skipped oct key's kid is not usable either, even with its own secret.
        let token = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"secret"),
            Some("hmac-1"),
            &claims_for("u1"),
        );
        assert!(check(&a, &headers(&token)).is_err());
    }

    #[test]
    fn jwks_token_without_kid_is_refused_when_every_key_has_one() {
        let a = auth(&jwks_config());
        let token = sign_with(Algorithm::ES256, &ec_key(), None, &claims_for("u1"));
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
    }

    #[test]
    fn jwks_keys_without_kid_match_tokens_without_kid() {
        let config = AuthConfig {
            jwks_json: Some(
                serde_json::to_vec(&json!({ "keys": [
                    jwk(&ec_other_key(), Algorithm::ES256, None),
                    jwk(&ec_key(), Algorithm::ES256, None),
                ]}))
                .unwrap(),
            ),
            ..AuthConfig::default()
        };
        let a = auth(&config);
        let token = sign_with(Algorithm::ES256, &ec_key(), None, &claims_for("u1"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
    }

    #[test]
    fn jwks_kid_unknown_falls_back_to_the_pem_key() {
        let config = AuthConfig {
            jwt_public_key_pem: Some(EC_PUBLIC.as_bytes().to_vec()),
            ..jwks_config()
        };
        let a = auth(&config);
        let token = sign_with(
            Algorithm::ES256,
            &ec_key(),
            Some("rotated"),
            &claims_for("u1"),
        );
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
    }

    #[test]
    fn jwks_setup_errors() {
        let config = |json: &str| AuthConfig {
            jwks_json: Some(json.as_bytes().to_vec()),
            ..AuthConfig::default()
        };
        let err = |json: &str| Authenticator::new(&config(json)).unwrap_err();
        assert!(matches!(
            err("{not json"),
            AuthSetupError::UnreadableJwks(_)
        ));
        assert!(matches!(
            err(r#"{"keys": 3}"#),
            AuthSetupError::UnreadableJwks(_)
        ));
        assert!(matches!(
            err(r#"{"other": []}"#),
            AuthSetupError::UnreadableJwks(_)
        ));
        assert!(matches!(
            err(r#"{"keys": []}"#),
            AuthSetupError::NoUsableJwksKeys { .. }
        ));
        let e = err(r#"{"keys": [
                {"kty": "oct", "kid": "a", "k": "c2VjcmV0"},
                {"kty": "EC", "kid": "b", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
                {"kty": "OKP", "kid": "c", "crv": "Ed25519", "x": "AAAA"},
                {"kty": "RSA", "kid": "d", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "e", "use": "enc"},
                {"kty": "EC", "kid": "f", "crv": "secp256k1", "x": "AA", "y": "AA"},
                {"kid": "g"},
                "not an object"
            ]}"#);
        let AuthSetupError::NoUsableJwksKeys { skipped } = &e else {
            panic!("{e}")
        };
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        let text = e.to_string();
        for hint in [
            "oct",
            "bad EC key",
            "32 bytes",
            "2048",
            "`enc`",
            "secp256k1",
            "kty",
        ] {
            assert!(text.contains(hint), "{hint} not in {text}");
        }
        // A declared alg that contradicts the key.
        let mut wrong = jwk(&ec_key(), Algorithm::ES256, Some("x"));
        wrong["alg"] = json!("RS256");
        let e = err(&json!({ "keys": [wrong] }).to_string());
        assert!(e.to_string().contains("does not fit"), "{e}");
        // A single bare JWK is accepted as a one-key set.
        let single = jwk(&ed_key(), Algorithm::EdDSA, Some("ed-1")).to_string();
        let a = auth(&config(&single));
        let token = sign_with(Algorithm::EdDSA, &ed_key(), Some("ed-1"), &claims_for("u1"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
    }

    // ---- verified-token cache ------------------------------------------------------------------

    #[test]
    fn public_key_tokens_are_verified_once() {
        let a = auth(&AuthConfig {
            jwt_public_key_pem: Some(RSA_PUBLIC.as_bytes().to_vec()),
            ..secret_config()
        });
        let cache = a.verified.as_ref().unwrap();
        let token = sign_with(Algorithm::RS256, &rsa_key(), None, &claims_for("u1"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
        assert_eq!(cache.len(), 1);
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
        assert_eq!(cache.len(), 1);
        // The x-tenant rule still applies to a cached token.
        assert_eq!(
            check(&a, &with_x_tenant(headers(&token), "u2")),
            Err(AuthError::Forbidden)
        );
        // A token differing in one byte is not a hit.
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(check(&a, &headers(&tampered)).is_err());
        assert_eq!(cache.len(), 1, "failures are never remembered");
        // HS256 tokens are remembered too.
        let hs = hs256(SECRET, &claims_for("u3"));
        assert_eq!(check(&a, &headers(&hs)), Ok(user("u3")));
        assert_eq!(check(&a, &headers(&hs)), Ok(user("u3")));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn secret_only_configuration_remembers_verified_tokens() {
        let a = auth(&secret_config());
        let token = hs256(SECRET, &claims_for("u1"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
        assert_eq!(a.verified.as_ref().unwrap().len(), 1);
        // A token signed with another secret is refused, cached or not.
        let forged = hs256(
            "another-secret-another-secret-0123456789",
            &claims_for("u1"),
        );
        assert_eq!(check(&a, &headers(&forged)), Err(AuthError::BadSignature));
        assert_eq!(a.verified.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn cached_tokens_expire() {
        let cache = VerifiedCache::new(8, 5);
        let entry = |exp| Verified {
            tenant: TenantId::new("u1").unwrap(),
            subject: "u1".to_owned(),
            exp,
            cacheable: true,
        };
        cache.insert([1; 32], &entry(now() + 60));
        cache.insert([2; 32], &entry(now() - 3)); // within the leeway
        cache.insert([3; 32], &entry(now() - 60));
        assert!(matches!(cache.get(&[1; 32]), Some(Ok(_))));
        assert!(matches!(cache.get(&[2; 32]), Some(Ok(_))));
        assert_eq!(
            cache.get(&[3; 32]).unwrap().unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(cache.len(), 2, "the expired entry is dropped");
        assert!(cache.get(&[4; 32]).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = VerifiedCache::new(4, 0);
        for i in 0..100u8 {
            cache.insert(
                [i; 32],
                &Verified {
                    tenant: TenantId::new("u1").unwrap(),
                    subject: "u1".to_owned(),
                    exp: now() + 60,
                    cacheable: true,
                },
            );
            assert!(cache.len() <= 4);
        }
        assert!(matches!(cache.get(&[99; 32]), Some(Ok(_))));
    }

    // ---- admin token ----------------------------------------------------------------------------

    fn admin_config() -> AuthConfig {
        AuthConfig {
            admin_token: Some(ADMIN.to_owned()),
            ..secret_config()
        }
    }

    #[test]
    fn admin_token_without_x_tenant() {
        let a = auth(&admin_config());
        let p = check(&a, &headers(ADMIN)).unwrap();
        assert_eq!(p, Principal::Admin { tenant: None });
        assert!(p.is_admin());
        assert_eq!(p.tenant(), None);
        assert_eq!(p.actor(), "admin");
    }

    #[test]
    fn admin_token_addresses_any_tenant() {
        let a = auth(&admin_config());
        let p = check(&a, &with_x_tenant(headers(ADMIN), "user_42")).unwrap();
        assert_eq!(
            p,
            Principal::Admin {
                tenant: Some(TenantId::new("user_42").unwrap())
            }
        );
        assert_eq!(p.tenant().unwrap().as_str(), "user_42");
    }

    #[test]
    fn admin_with_an_invalid_x_tenant_is_a_bad_request() {
        let a = auth(&admin_config());
        for bad in ["../x", "a.b", "", " "] {
            let err = check(&a, &with_x_tenant(headers(ADMIN), bad)).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidTenantHeader(_)),
                "{bad:?}: {err}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert_eq!(err.code(), "INVALID_TENANT_ID");
        }
        let two = with_x_tenant(with_x_tenant(headers(ADMIN), "a"), "b");
        assert!(matches!(
            check(&a, &two),
            Err(AuthError::InvalidTenantHeader(_))
        ));
    }

    #[test]
    fn wrong_admin_tokens_are_refused() {
        let a = auth(&admin_config());
        let shorter = &ADMIN[..ADMIN.len() - 1];
        let longer = format!("{ADMIN}x");
        let other_case = ADMIN.to_uppercase();
        for wrong in [shorter, longer.as_str(), other_case.as_str(), "a"] {
            let err = check(&a, &headers(wrong)).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{err}");
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        }
        // The wrong admin token with x-tenant is still just unauthenticated.
        let err = check(&a, &with_x_tenant(headers(shorter), "u1")).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn user_jwt_beside_an_admin_token_is_a_user() {
        let a = auth(&admin_config());
        let token = hs256(SECRET, &claims_for("u1"));
        assert_eq!(check(&a, &headers(&token)), Ok(user("u1")));
    }

    #[test]
    fn admin_only_configuration_refuses_jwts() {
        let a = auth(&AuthConfig {
            admin_token: Some(ADMIN.to_owned()),
            ..AuthConfig::default()
        });
        assert_eq!(
            check(&a, &headers(ADMIN)),
            Ok(Principal::Admin { tenant: None })
        );
        let token = hs256(SECRET, &claims_for("u1"));
        assert!(matches!(
            check(&a, &headers(&token)),
            Err(AuthError::Algorithm(_))
        ));
    }

    // ---- x-tenant with user tokens ------------------------------------------------------------

    #[test]
    fn user_may_name_only_its_own_tenant() {
        let a = auth(&admin_config());
        let token = hs256(SECRET, &claims_for("u1"));
        assert_eq!(
            check(&a, &with_x_tenant(headers(&token), "u1")),
            Ok(user("u1"))
        );
        for other in ["u2", "U1", "../u1", ""] {
            let err = check(&a, &with_x_tenant(headers(&token), other)).unwrap_err();
            assert_eq!(err, AuthError::Forbidden, "{other:?}");
            assert_eq!(err.status(), StatusCode::FORBIDDEN);
            assert_eq!(err.code(), "FORBIDDEN");
            // Nothing about the other tenant is revealed.
            assert!(!err.to_string().contains("u2"));
        }
        let mixed = with_x_tenant(with_x_tenant(headers(&token), "u1"), "u2");
        assert_eq!(check(&a, &mixed), Err(AuthError::Forbidden));
    }

    #[test]
    fn forbidden_needs_a_valid_token_first() {
        let a = auth(&secret_config());
        let bad = hs256("wrong", &claims_for("u1"));
        assert_eq!(
            check(&a, &with_x_tenant(headers(&bad), "u2")),
            Err(AuthError::BadSignature)
        );
    }

    // ---- Authorization header parsing -----------------------------------------------------------

    #[test]
    fn authorization_header_parsing() {
        let a = auth(&admin_config());
        let err = check(&a, &HeaderMap::new()).unwrap_err();
        assert_eq!(err, AuthError::Missing);
        assert_eq!(err.code(), "AUTH_MISSING");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);

        let raw = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert_eq!(check(&a, &raw("")), Err(AuthError::Missing));
        for (value, expect) in [
            ("Basic dXNlcjpwYXNz", "scheme"),
            ("Bearer", "empty"),
            ("Bearer    ", "empty"),
            (ADMIN, "scheme"),
        ] {
            let err = check(&a, &raw(value)).unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed(m) if m.contains(expect)),
                "{value}: {err}"
            );
            assert_eq!(err.code(), "AUTH_MALFORMED");
        }
        for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
            assert!(
                check(&a, &raw(&format!("{scheme} {ADMIN}")))
                    .unwrap()
                    .is_admin()
            );
        }
        assert!(
            check(&a, &raw(&format!("Bearer   {ADMIN}  ")))
                .unwrap()
                .is_admin()
        );

        let mut two = headers(ADMIN);
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(check(&a, &two), Err(AuthError::Malformed(_))));

        let mut binary = HeaderMap::new();
        binary.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(matches!(check(&a, &binary), Err(AuthError::Malformed(_))));

        for junk in ["a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.", "W10.e30.AAAA"] {
            let err = check(&a, &headers(junk)).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{junk}: {err}");
        }
    }

    // ---- setup ---------------------------------------------------------------------------------

    #[test]
    fn setup_errors() {
        assert!(matches!(
            Authenticator::new(&AuthConfig::default()).unwrap_err(),
            AuthSetupError::NothingConfigured
        ));
        assert!(matches!(
            Authenticator::new(&AuthConfig {
                jwt_secret: Some(String::new()),
                ..AuthConfig::default()
            })
            .unwrap_err(),
            AuthSetupError::EmptySecret
        ));
        assert!(matches!(
            Authenticator::new(&AuthConfig {
                admin_token: Some(String::new()),
                ..secret_config()
            })
            .unwrap_err(),
            AuthSetupError::EmptyAdminToken
        ));
        assert!(matches!(
            Authenticator::new(&AuthConfig {
                tenant_claim: String::new(),
                ..secret_config()
            })
            .unwrap_err(),
            AuthSetupError::EmptyTenantClaim
        ));
        assert!(matches!(
            Authenticator::new(&AuthConfig {
                issuer: Some(String::new()),
                ..secret_config()
            })
            .unwrap_err(),
            AuthSetupError::EmptyIssuer
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = admin_config();
        let shown = format!("{config:?} {:?}", auth(&config));
        assert!(!shown.contains(SECRET) && !shown.contains(ADMIN), "{shown}");
    }

    #[test]
    fn authenticator_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
    }

    // ---- minting -------------------------------------------------------------------------------

    #[test]
    fn minted_tokens_authenticate() {
        let a = auth(&secret_config());
        let tenant = TenantId::new("user_2xyz").unwrap();
        let token = mint_token(SECRET, &tenant, Duration::from_secs(3600), "sub").unwrap();
        assert_eq!(check(&a, &headers(&token)), Ok(user("user_2xyz")));

        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(exp - iat, 3600);
        assert!(iat.abs_diff(now()) <= 5);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
    }

    #[test]
    fn minted_tokens_with_a_custom_claim_carry_sub_too() {
        let tenant = TenantId::new("org_1").unwrap();
        let token = mint_token(SECRET, &tenant, Duration::from_secs(60), "tenant").unwrap();
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["tenant"], "org_1");
        assert_eq!(claims["sub"], "org_1");
        let a = auth(&AuthConfig {
            tenant_claim: "tenant".to_owned(),
            ..secret_config()
        });
        assert_eq!(check(&a, &headers(&token)), Ok(user("org_1")));
    }

    #[test]
    fn mint_token_for_follows_the_configuration() {
        let config = AuthConfig {
            issuer: Some("tenantdb-dev".to_owned()),
            tenant_claim: "tid".to_owned(),
            ..secret_config()
        };
        let tenant = TenantId::new("t1").unwrap();
        let token = mint_token_for(&config, &tenant, Duration::from_secs(60)).unwrap();
        assert_eq!(check(&auth(&config), &headers(&token)), Ok(user("t1")));
        // A plain `mint_token` lacks the issuer the configuration requires.
        let plain = mint_token(SECRET, &tenant, Duration::from_secs(60), "tid").unwrap();
        assert!(check(&auth(&config), &headers(&plain)).is_err());
        assert!(matches!(
            mint_token_for(&AuthConfig::default(), &tenant, Duration::from_secs(60)),
            Err(MintError::NoSecret)
        ));
    }

    #[test]
    fn mint_token_refuses_bad_input() {
        let tenant = TenantId::new("t1").unwrap();
        let ttl = Duration::from_secs(60);
        assert!(matches!(
            mint_token("", &tenant, ttl, "sub"),
            Err(MintError::EmptySecret)
        ));
        assert!(matches!(
            mint_token(SECRET, &tenant, ttl, ""),
            Err(MintError::EmptyClaim)
        ));
        assert!(matches!(
            mint_token(SECRET, &tenant, ttl, "exp"),
            Err(MintError::ReservedClaim(_))
        ));
        assert!(matches!(
            mint_token(SECRET, &tenant, Duration::MAX, "sub"),
            Err(MintError::TtlTooLong)
        ));
    }
}
