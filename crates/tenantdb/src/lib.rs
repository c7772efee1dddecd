//! tenantdb: a SQLite database per user.
//!
//! [`Fleet`] owns a data directory of per-tenant databases (DESIGN.md section 3): it creates a
//! tenant from a template, hands out guarded connections from a bounded cache, rolls
//! migrations out to every tenant, and deletes tenants into a trash. The server and the CLI are
//! thin callers of it.

pub mod audit;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod connection;
pub mod error;
pub mod fleet;
mod fsutil;
pub mod guard;
pub mod import;
pub mod layout;
pub mod migrate;
pub mod reconcile;
pub mod report;
pub mod rollout;
pub mod serving;
pub mod session;
mod sqlite_codes;
pub mod stats;
pub mod template;
pub mod tenant_id;
pub mod time;

pub use cache::Lease;
pub use catalog::{MigrationFailure, TenantRecord, TenantState};
pub use config::Config;
pub use error::{Error, Result};
pub use fleet::{Fleet, TenantInfo};
pub use guard::GuardConfig;
pub use import::{ImportOptions, ImportPlan, ImportReport, VerifyReport};
pub use reconcile::ReconcileReport;
pub use report::{Report, ReportOptions, ReportRequest, ReportRows, SkippedTenant};
pub use rollout::{MigrateOptions, MigrateReport, MigrationStatus, NoProgress, Progress};
pub use session::{Args, ColumnInfo, StatementResult, TenantConnection};
pub use tenant_id::{TENANT_ID_RULE, TenantId};

/// Values as SQLite stores them.
pub use rusqlite::types::Value;
