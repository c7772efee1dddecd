use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::AuthConfig;
use crate::cors::CorsOrigin;

/// How the server runs. The defaults suit one machine serving a web application's users.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub auth: AuthConfig,
    /// Create a user's database on their first authenticated request (signup webhooks are not
    /// guaranteed to arrive first, or at all). Deleted users are never re-created this way.
    pub lazy_provisioning: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A request that takes longer is answered 503; its statements are bounded separately by
    /// the guard's statement timeout.
    pub request_timeout: Duration,
    /// Requests running SQL at once; more wait their turn. SQLite work runs on blocking
    /// threads, so this bounds those threads and the connections in use.
    pub max_concurrent_requests: usize,
    /// An interactive stream (an open transaction) idle for longer is closed and rolled back.
    pub stream_idle_timeout: Duration,
    /// Open streams across all tenants.
    pub max_streams: usize,
    /// Standard Webhooks secrets (`whsec_<base64>`) for `/webhooks/clerk`; several at once
    /// while rotating. Empty: the webhook route refuses every delivery.
    pub webhook_secrets: Vec<String>,
    /// How long deleted tenants stay restorable in `trash/` before a background task purges them.
    pub trash_retention: Duration,
    /// The migrations directory (`--migrations`) that `POST /admin/migrations/apply` applies.
    /// None: that route refuses.
    pub migrations_dir: Option<PathBuf>,
    /// Origins of the web pages allowed to call the data plane from a browser (CORS). Empty:
    /// no CORS header is ever sent, which is right when only servers call tenantdb.
    pub cors_origins: Vec<CorsOrigin>,
    /// Serve `POST /dev/token`, which mints a token for any user who asks: for demos on a
    /// developer's machine only (see [`crate::dev_login`]).
    pub dev_login: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthConfig::default(),
            lazy_provisioning: true,
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 128,
            stream_idle_timeout: Duration::from_secs(10),
            max_streams: 10_000,
            webhook_secrets: Vec::new(),
            trash_retention: Duration::from_secs(7 * 86_400),
            migrations_dir: None,
            cors_origins: Vec::new(),
            dev_login: false,
        }
    }
}
