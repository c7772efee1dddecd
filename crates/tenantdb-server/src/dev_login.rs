//! Dev sign-in: `POST /dev/token {"user":"alice"}` mints a user token, so a demo page can sign
//! a person in without an identity provider. It hands a token for any user to anyone who asks,
//! so it exists only when [`crate::ServerConfig::dev_login`] is on, and it is refused next to
//! provider keys ([`check`]); `tenantdb serve --dev-login` further insists on the generated
//! development secret.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantdb::TenantId;

use crate::app::App;
use crate::auth::{AuthConfig, mint_for};
use crate::error::ApiError;

/// A token's lifetime when the request names none: as `tenantdb token`'s default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a request may ask for. A demo session needs no more, and a token
/// minted here cannot be revoked short of changing the secret.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

const EXAMPLE: &str = r#"{"user":"alice"}"#;

/// Why dev sign-in cannot be turned on with this authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevLoginError {
    #[error(
        "dev sign-in cannot be on while a JWT public key or JWKS is configured: an identity \
         provider signs the real tokens, and a server that also mints its own is not one to \
         trust"
    )]
    ProviderKeys,
    #[error("dev sign-in needs a JWT secret to sign its tokens, and none is configured")]
    NoSecret,
}

/// Refuses dev sign-in next to an identity provider's keys, or without a secret to sign with.
pub fn check(auth: &AuthConfig) -> Result<(), DevLoginError> {
    if auth.jwt_public_key_pem.is_some() || auth.jwks_json.is_some() {
        return Err(DevLoginError::ProviderKeys);
    }
    if auth.jwt_secret.is_none() {
        return Err(DevLoginError::NoSecret);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    ttl_seconds: Option<u64>,
}

/// `POST /dev/token`: `{"user":"alice","ttl_seconds":600}` -> `{"token":"…","expires_at":<unix s>}`.
pub async fn token(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>, ApiError> {
    let request: TokenRequest = crate::admin::json_body(&app, body, None, EXAMPLE).await?;
    let tenant = TenantId::new(request.user).map_err(tenantdb::Error::from)?;
    let ttl = match request.ttl_seconds {
        None => DEFAULT_TTL,
        Some(secs) if (1..=MAX_TTL.as_secs()).contains(&secs) => Duration::from_secs(secs),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_TTL",
                format!(
                    "ttl_seconds must be from 1 to {} (one day)",
                    MAX_TTL.as_secs()
                ),
            ));
        }
    };
    let minted = mint_for(&app.config.auth, &tenant, ttl).map_err(ApiError::internal)?;
    tracing::info!(tenant = %tenant.as_str(), ttl_secs = ttl.as_secs(), "dev sign-in minted a token");
    Ok(Json(
        json!({"token": minted.token, "expires_at": minted.expires_at}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shared_secret_alone_may_sign_dev_tokens() {
        let secret = AuthConfig {
            jwt_secret: Some("s".repeat(32)),
            ..AuthConfig::default()
        };
        assert_eq!(check(&secret), Ok(()));
        assert_eq!(check(&AuthConfig::default()), Err(DevLoginError::NoSecret));
        let with_key = AuthConfig {
            jwt_public_key_pem: Some(b"pem".to_vec()),
            ..secret.clone()
        };
        assert_eq!(check(&with_key), Err(DevLoginError::ProviderKeys));
        let with_jwks = AuthConfig {
            jwks_json: Some(b"{}".to_vec()),
            ..secret
        };
        assert_eq!(check(&with_jwks), Err(DevLoginError::ProviderKeys));
    }
}
