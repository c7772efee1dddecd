//! Moving in: splitting one shared database (every table carries a `user_id`, every query
//! filters on it) into one database per tenant (DESIGN section 4, `tenantdb import`).
//!
//! An import has three steps, each a method of [`Fleet`]:
//!
//! 1. [`Fleet::plan_import`] reads the source (read-only) and the tenant schema (the template,
//!    at the latest migration) and decides everything before a row is written: how each source
//!    table reaches a tenant ([`Route`]: its own tenant column; the table that column
//!    references, such as `users`; a parent reached through foreign keys, such as
//!    `comments.todo_id -> todos.id`; or a column named with `--table`), which tables are left
//!    alone (no path to a tenant), how columns map by name, whether any value would change type
//!    or be refused on the way in, and how many rows each tenant gets per table. Tenant values
//!    that are NULL or not valid tenant ids are counted with examples. A plan with problems is
//!    refused as a whole. A plan is also the dry run: it writes nothing.
//! 2. [`Fleet::import`] writes every tenant's rows into its own database, tenants in parallel.
//!    Each tenant is one transaction on an unguarded connection that also records the import
//!    inside the tenant (`_tenantdb_import`: source path, source sha256, rows per table), so a
//!    rerun after a crash or a failure skips the tenants that committed and finishes the rest,
//!    without duplicates. Missing tenants are created at the latest schema version; deleted
//!    tenants are reported and never re-created.
//! 3. [`Fleet::verify_import`] compares, per tenant and table, the row count and an
//!    order-independent content checksum of the copied columns between the source and the
//!    tenant, and checks each tenant's import record.
//!
//! The source is read once per table for counting and once per table for copying (each pass
//! ordered by tenant value, sorted by SQLite with bounded memory), and once more to verify.

mod cell;
mod plan;
mod schema;
mod source;
mod stream;
mod types;
mod verify;
mod write;

use std::time::Instant;

pub use cell::TableDigest;
pub use plan::{
    Hop, ImportOptions, ImportPlan, LeftAlone, LeftOut, Route, TablePlan, TenantAction, TenantPlan,
    default_jobs,
};
pub use verify::{Mismatch, TableCheck, VerifyReport};
pub use write::{IMPORT_TABLE, ImportFailure, ImportReport};

use crate::error::Result;
use crate::fleet::Fleet;
use crate::rollout::Progress;

impl Fleet {
    /// Plans an import of `options.source` into this fleet and writes nothing: the dry run.
    /// Fails when the source is not a SQLite database, when no table has the tenant column, or
    /// when the tenant schema is empty; anything else that would make the import wrong is
    /// listed in the plan's `problems`.
    pub fn plan_import(&self, options: &ImportOptions) -> Result<ImportPlan> {
        plan::build(self, options)
    }

    /// Imports what `plan` describes. Refuses a plan with problems, or a source that changed
    /// since it was planned, before writing anything. Tenants fail one by one (listed in the
    /// report, their transactions rolled back) without stopping the others. Records the run
    /// in the admin audit.
    pub fn import(
        &self,
        plan: &ImportPlan,
        progress: &dyn Progress,
        actor: &str,
    ) -> Result<ImportReport> {
        plan.refuse_if_problems()?;
        plan.source_file.check_unchanged()?;
        let started = Instant::now();
        let mut report = ImportReport::new(plan);
        progress.start(plan.tenants.len() as u64);
        let result = stream::run(
            plan,
            |id| {
                let action = plan.tenant(id).map(|t| t.action);
                match action {
                    Some(TenantAction::Done) => Some(write::Outcome::AlreadyDone),
                    Some(TenantAction::Deleted) => Some(write::Outcome::Deleted { id: id.clone() }),
                    _ => None,
                }
            },
            |rows| write::write_tenant(self, plan, rows, actor),
            |outcome| {
                progress.advance(1);
                report.record(outcome, plan);
                Ok(())
            },
        );
        progress.finish();
        report.finish();
        report.seconds = started.elapsed().as_secs_f64();
        let detail = serde_json::json!({
            "source": plan.source,
            "sha256": plan.source_sha256,
            "tenant_column": plan.tenant_column,
            "tenants": report.tenants,
            "imported": report.imported,
            "created": report.created,
            "already_imported": report.already_imported,
            "deleted": report.deleted.len(),
            "failed": report.failed.len(),
            "rows": report.rows,
            "rows_left_out": report.rows_left_out,
            "error": result.as_ref().err().map(ToString::to_string),
        });
        self.catalog()
            .audit(actor, "import", None, Some(&detail.to_string()))?;
        result?;
        Ok(report)
    }

    /// Compares every tenant in `plan` with the source: row counts and content checksums per
    /// table, and the tenant's record of the import. Writes nothing.
    pub fn verify_import(
        &self,
        plan: &ImportPlan,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        plan.refuse_if_problems()?;
        let started = Instant::now();
        let mut report = VerifyReport::new(plan);
        progress.start(plan.tenants.len() as u64);
        let result = stream::run(
            plan,
            |id| match plan.tenant(id).map(|t| t.action) {
                Some(TenantAction::Deleted) => Some(verify::Check::Deleted { id: id.clone() }),
                _ => None,
            },
            |rows| verify::check_tenant(self, plan, rows),
            |check| {
                progress.advance(1);
                report.record(check, plan);
                Ok(())
            },
        );
        progress.finish();
        result?;
        report.finish();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}
