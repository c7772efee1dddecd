//! Errors as HTTP responses. Admin and webhook routes answer
//! `{"error":{"code","message"}}`; Hrana routes answer Hrana's own `{"message","code"}`, which
//! libSQL clients parse.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Hrana,
    Api,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub shape: Shape,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            shape: Shape::Api,
        }
    }

    pub fn hrana(mut self) -> Self {
        self.shape = Shape::Hrana;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "TENANT_NOT_FOUND",
            "tenant not found",
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; the server log has the details",
        )
    }
}

impl From<tenantdb::Error> for ApiError {
    fn from(e: tenantdb::Error) -> Self {
        use tenantdb::Error as E;
        match e {
            E::InvalidTenantId(_) => {
                Self::new(StatusCode::BAD_REQUEST, "INVALID_TENANT_ID", e.to_string())
            }
            // Deleted and never-existing tenants look the same from outside.
            E::TenantNotFound(_) | E::TenantDeleted(_) => Self::not_found(),
            E::TenantExists(_) => Self::new(StatusCode::CONFLICT, "TENANT_EXISTS", e.to_string()),
            E::NothingToRestore(_) => {
                Self::new(StatusCode::NOT_FOUND, "NOTHING_TO_RESTORE", e.to_string())
            }
            E::Busy(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TENANT_BUSY",
                e.to_string(),
            ),
            E::Guard(_) => Self::new(StatusCode::FORBIDDEN, "GUARD", e.to_string()),
            E::Sql { message, .. } => Self::new(StatusCode::BAD_REQUEST, "SQL_ERROR", message),
            E::StatementTimeout(_) => {
                Self::new(StatusCode::BAD_REQUEST, "STATEMENT_TIMEOUT", e.to_string())
            }
            E::ResponseTooLarge(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RESPONSE_TOO_LARGE",
                e.to_string(),
            ),
            E::InvalidMigration(_) | E::MigrationDrift { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "INVALID_MIGRATION", e.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.shape {
            Shape::Hrana => json!({"message": self.message, "code": self.code}),
            Shape::Api => json!({"error": {"code": self.code, "message": self.message}}),
        };
        (self.status, Json(body)).into_response()
    }
}
