//! The command line (DESIGN section 4).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tenantdb", version, about = "A SQLite database per user")]
pub struct Cli {
    /// The data directory holding the catalog, the template and every tenant's database.
    #[arg(
        long,
        global = true,
        env = "TENANTDB_DATA_DIR",
        default_value = "./tenantdb-data"
    )]
    pub data_dir: PathBuf,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,

    /// Whether `--data-dir` (or its variable) was given rather than defaulted.
    #[arg(skip)]
    pub explicit_data_dir: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every tenant's database over Hrana (libSQL clients) with JWT auth.
    Serve(ServeArgs),
    /// Mint a user token for a tenant with the configured HS256 secret (development).
    Token {
        id: String,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Create, inspect, export and delete tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Run SQL in one tenant's database, as its user would (under the guard).
    Sql { id: String, sql: String },
    /// Apply the migrations directory to every tenant (or `migrate status`).
    Migrate(MigrateCommand),
    /// Split a shared database (a tenant column in every table) into per-tenant databases,
    /// then verify every tenant against it.
    Import(crate::import::ImportArgs),
    /// One SELECT across every tenant, as if all their rows were in one database.
    Report(crate::report::ReportArgs),
    /// Fleet analytics: tenants, activity, sizes, versions, traffic.
    Stats,
    /// Walk through the whole system in under a minute, in a temporary directory (or in
    /// --data-dir when given): signups by webhook, per-user writes over Hrana, isolation, a
    /// migration, a cross-tenant report, the audit and fleet stats.
    Demo {
        /// Users to sign up.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Run even if the data directory already holds tenants.
        #[arg(long)]
        use_existing: bool,
    },
    /// Read a tenant's write audit (`--verify` checks its hash chain), or the admin audit.
    Audit {
        /// The tenant whose write audit to read.
        #[arg(required_unless_present = "admin", conflicts_with = "admin")]
        id: Option<String>,
        /// Read the admin audit (lifecycle and operator actions) instead.
        #[arg(long)]
        admin: bool,
        /// Recompute the tenant's hash chain and name the first broken entry.
        #[arg(long, conflicts_with = "admin")]
        verify: bool,
        /// Start after this entry.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create tenants at the latest schema version.
    Create {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List live tenants.
    List {
        /// Start after this tenant id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many tenants.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one tenant.
    Info { id: String },
    /// Delete a tenant: its files go to trash (restorable) or, with --purge, away for good.
    Delete {
        id: String,
        #[arg(long)]
        purge: bool,
    },
    /// Bring a deleted tenant back from trash.
    Restore { id: String },
    /// Write a consistent snapshot of a tenant's database to a file.
    Export {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateCommand {
    #[command(subcommand)]
    pub status: Option<MigrateStatus>,
    #[command(flatten)]
    pub run: MigrateRun,
}

#[derive(Debug, Args)]
pub struct MigrateRun {
    /// Directory of NNNN_name.sql files.
    #[arg(long, env = "TENANTDB_MIGRATIONS")]
    pub migrations: Option<PathBuf>,
    /// Run every pending migration on every tenant inside a transaction that is rolled back.
    #[arg(long)]
    pub dry_run: bool,
    /// Tenants migrated at once (default: eight per core; a migration mostly waits on fsync).
    #[arg(long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum MigrateStatus {
    /// Show the ledger, tenants per version and failures.
    Status {
        /// Also check this directory against the ledger and list what it would add.
        #[arg(long, env = "TENANTDB_MIGRATIONS")]
        migrations: Option<PathBuf>,
    },
}

/// Where user tokens and the admin token are checked against (DESIGN section 5.4).
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// HS256 secret shared with the auth provider or the app that mints user tokens.
    #[arg(long, env = "TENANTDB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RS256, ES256 or EdDSA, from the key).
    #[arg(long, env = "TENANTDB_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file; keys are chosen by the token's `kid`.
    #[arg(long, env = "TENANTDB_JWKS")]
    pub jwks: Option<PathBuf>,
    /// Required `iss` of user tokens.
    #[arg(long, env = "TENANTDB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The claim that names the user's tenant.
    #[arg(long, env = "TENANTDB_TENANT_CLAIM", default_value = "sub")]
    pub tenant_claim: String,
    /// The operator's token for the admin API and `x-tenant`.
    #[arg(long, env = "TENANTDB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TENANTDB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Migrations directory: registered at start-up and rolled out to the fleet in the
    /// background; tenants opened before the rollout reaches them are migrated on open.
    #[arg(long, env = "TENANTDB_MIGRATIONS")]
    pub migrations: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Do not create a user's database on their first request (only webhooks and admins do).
    #[arg(long)]
    pub no_lazy_provisioning: bool,
    /// Let user SQL change the schema (CREATE/ALTER/DROP). Off: the schema belongs to migrations.
    #[arg(long)]
    pub allow_ddl: bool,
    /// Do not record users' writes in each tenant's `_tenantdb_audit`.
    #[arg(long)]
    pub no_audit: bool,
    /// Tenants kept open in the connection cache.
    #[arg(long, default_value_t = 1000)]
    pub cache_capacity: usize,
    /// Longest a statement may run, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub statement_timeout_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Largest result one request may return, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_response_bytes: usize,
    /// Largest database a tenant may grow to, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_database_bytes: u64,
    /// Requests running SQL at once; more wait their turn.
    #[arg(long, default_value_t = 128)]
    pub max_concurrent_requests: usize,
    /// Seconds an interactive transaction may sit idle before it is rolled back.
    #[arg(long, default_value_t = 10)]
    pub stream_idle_timeout_secs: u64,
    /// Seconds a whole request may take.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Signup webhook secret(s), `whsec_<base64>`; give several (comma-separated or repeated)
    /// while rotating.
    #[arg(
        long,
        env = "TENANTDB_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secret: Vec<String>,
    /// How long deleted tenants stay restorable before they are purged: 90s, 30m, 12h, 7d.
    #[arg(long, env = "TENANTDB_TRASH_RETENTION", default_value = "7d")]
    pub trash_retention: String,
    /// Origin of a web page allowed to call the data plane from a browser (CORS), as
    /// scheme://host[:port]; repeat it or separate several with commas. `*` is refused: list
    /// your app's own origins.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "TENANTDB_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<tenantdb_server::cors::CorsOrigin>,
    /// Serve `POST /dev/token`, which mints a token for any user who asks, so a demo page can
    /// sign people in without an identity provider. Development only: refused when a JWT
    /// secret, public key, JWKS or admin token is configured.
    #[arg(long)]
    pub dev_login: bool,
}
