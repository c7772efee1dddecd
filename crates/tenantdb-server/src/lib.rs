//! tenantdb's HTTP server: Hrana over HTTP for libSQL clients, authenticated by each user's
//! JWT so every request reaches only its own user's database.
//!
//! The server is a thin caller of [`tenantdb::Fleet`]; SQLite work runs on tokio's blocking
//! pool, bounded by [`ServerConfig::max_concurrent_requests`].

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod cors;
pub mod dev_login;
pub mod error;
pub mod hrana;
pub mod metrics;
mod reports;
mod routes;
pub mod secrets;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tenantdb::Fleet;
use tokio::net::TcpListener;

pub use app::App;
pub use config::ServerConfig;
pub use routes::router;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("authentication setup: {0}")]
    Auth(#[from] auth::AuthSetupError),
    #[error("{0}")]
    DevLogin(#[from] dev_login::DevLoginError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How often counted activity goes to the catalog.
const ACTIVITY_FLUSH_SECS: u64 = 5;

/// Serves until `shutdown` resolves, then finishes in-flight requests, rolls back open
/// transactions and closes every connection.
pub async fn serve(
    fleet: Arc<Fleet>,
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = App::new(fleet, config)?;
    let reaper = tokio::spawn(reap_streams(Arc::clone(&app)));
    let (stop_purger, purger_stop) = tokio::sync::oneshot::channel();
    let purger = tokio::spawn(admin::purge_trash(Arc::clone(&app), purger_stop));
    let served = axum::serve(listener, router(Arc::clone(&app)))
        .with_graceful_shutdown(shutdown)
        .await;
    reaper.abort();
    // Lets a purge in progress finish before the fleet shuts down.
    let _ = stop_purger.send(());
    let _ = purger.await;
    served?;
    let worker = Arc::clone(&app);
    let _ = tokio::task::spawn_blocking(move || {
        // Dropping a stream hands its connection back; one left in a transaction is closed,
        // which rolls the transaction back.
        drop(worker.streams.drain());
        if let Err(e) = worker.fleet.flush_activity() {
            tracing::warn!(error = %e, "recording activity in the catalog failed");
        }
        worker.fleet.shutdown();
    })
    .await;
    Ok(())
}

/// Closes streams left idle past the timeout (clients that vanished mid-transaction), and
/// every few seconds adds the activity counted in memory to the catalog in one transaction.
async fn reap_streams(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(ACTIVITY_FLUSH_SECS) {
            let fleet = Arc::clone(&app.fleet);
            let flushed = tokio::task::spawn_blocking(move || fleet.flush_activity()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "recording activity in the catalog failed");
            }
        }
        let expired = app.streams.expire();
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "closing idle streams");
            let _ = tokio::task::spawn_blocking(move || drop(expired)).await;
        }
    }
}
