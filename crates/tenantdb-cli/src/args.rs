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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, export and delete tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Run SQL in one tenant's database, as its user would (under the guard).
    Sql { id: String, sql: String },
    /// Apply the migrations directory to every tenant (or `migrate status`).
    Migrate(MigrateCommand),
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
    /// Tenants migrated at once (default: twice the number of cores).
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
