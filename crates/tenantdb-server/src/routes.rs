//! The route table (DESIGN section 5).

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::json;

use crate::app::App;
use crate::hrana::http;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/version",
            get(|| async {
                axum::Json(json!({"name": "tenantdb", "version": env!("CARGO_PKG_VERSION")}))
            }),
        )
        .route("/v2", get(|| async { StatusCode::OK }))
        .route("/v3", get(|| async { StatusCode::OK }))
        .route("/v3-protobuf", get(|| async { StatusCode::NOT_FOUND }))
        .route("/v2/pipeline", post(http::pipeline))
        .route("/v3/pipeline", post(http::pipeline))
        .route("/v3/cursor", post(http::cursor))
        .route("/v1/execute", post(http::v1_execute))
        .route("/v1/batch", post(http::v1_batch))
        .with_state(app)
}
