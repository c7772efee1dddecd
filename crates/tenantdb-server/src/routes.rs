//! The route table (DESIGN section 5).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::admin;
use crate::app::App;
use crate::hrana::http;

pub fn router(app: Arc<App>) -> Router {
    let operator = Router::new()
        .route("/webhooks/clerk", post(crate::webhook::clerk))
        .route("/metrics", get(crate::metrics::render))
        .merge(admin_routes(&app))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), time_limit));
    Router::new()
        .merge(data_plane(&app))
        .merge(operator)
        // Set explicitly so that unknown paths never take the data plane's CORS layer along
        // with its (merged) default fallback.
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::metrics::observe,
        ))
        .with_state(app)
}

/// What a user's client calls (DESIGN section 5.1), and the dev sign-in when it is on. These
/// are the only routes a web page may call from a browser, so CORS applies here and nowhere
/// else: the admin API, webhooks and metrics never answer a browser's cross-origin request.
fn data_plane(app: &Arc<App>) -> Router<Arc<App>> {
    let mut routes = Router::new()
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
        .route("/v1/batch", post(http::v1_batch));
    if app.config.dev_login {
        routes = routes.route("/dev/token", post(crate::dev_login::token));
    }
    // The time limit sits inside CORS, so a page sees its 503 rather than a network error.
    let routes = routes.layer(middleware::from_fn_with_state(Arc::clone(app), time_limit));
    match crate::cors::layer(&app.config.cors_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

/// The admin API (DESIGN section 5.2). Every route here requires the admin token.
fn admin_routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(
            "/admin/tenants",
            get(admin::list_tenants).post(admin::create_tenant),
        )
        .route(
            "/admin/tenants/{id}",
            get(admin::get_tenant).delete(admin::delete_tenant),
        )
        .route("/admin/tenants/{id}/restore", post(admin::restore_tenant))
        .route("/admin/tenants/{id}/export", get(admin::export_tenant))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/tenants/{id}/audit", get(admin::tenant_audit))
        .route("/admin/migrations", get(admin::migrations))
        .route("/admin/migrations/apply", post(admin::apply_migrations))
        .route("/admin/reports", post(crate::reports::run))
        .route_layer(middleware::from_fn_with_state(
            admin::Gate::new(Arc::clone(app)),
            admin::require_admin,
        ))
}

/// Answers 503 when a request takes longer than the configured limit. The statements it ran
/// are bounded by the guard's statement timeout and finish (or are interrupted) on their own;
/// a stream's transaction stays as it was.
async fn time_limit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let limit = app.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => crate::error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("the request took longer than the limit of {limit:?}"),
        )
        .into_response(),
    }
}
