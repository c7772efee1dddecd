//! Reports across tenants (DESIGN section 8): one SQL statement over every user's database.
//!
//! # What a report means
//!
//! The SQL is written as if every tenant's rows were in one database whose tables each carry an
//! extra first column `_tenant` (the tenant id), and it returns exactly what it would return on
//! that database: joins between tenant tables, `GROUP BY`, `ORDER BY`, `LIMIT`, `DISTINCT`,
//! window functions, CTEs, aggregates over all tenants. `--reduce` runs a second SELECT over the
//! first one's result, stored as the table `result` (`CREATE TABLE result AS <report>`).
//!
//! What a single database would offer but a report does not: `rowid` (it is per tenant; select
//! the table's keys), `sqlite_*` tables, `pragma_*` table functions and `dbstat` (they would
//! describe the scratch database), a template table that has its own `_tenant` column, and
//! double-quoted strings (a double-quoted name is always an identifier). `json_each` and
//! `json_tree` work.
//!
//! # How: gather into a scratch database, then run the SQL once
//!
//! 1. **Check** (module `analyze`): the SQL is prepared against a schema-only database built from
//!    the template (each table with `_tenant` first). SQLite's authorizer records every
//!    `(table, column)` it reads and denies everything that is not a read, so writes, DDL,
//!    `ATTACH`, `PRAGMA`, transactions and several statements are refused before any tenant is
//!    opened; syntax errors and unknown names come back as SQLite's message with the place in
//!    the SQL.
//! 2. **Gather** (module `gather`): a scratch database (a file under `<data>/reports/`, removed
//!    afterwards) gets one table per tenant table the report reads, holding `_tenant` and only
//!    the columns it reads, with the template's declared types and collations (so affinity,
//!    comparison, grouping and ordering are the tenant table's own). Worker threads (one per
//!    core) each attach up to 125 tenants read-only (`mode=ro`), prepare one
//!    `INSERT INTO scratch SELECT ?tenant, cols FROM tN.table` per table per tenant (a tenant
//!    lacking a table or column fails here and is listed as skipped, with its schema version),
//!    then copy the whole batch inside one transaction on the scratch connection, so every
//!    tenant is read from one snapshot (never half a migration) and its read locks last only
//!    for the copy. Attaching is parallel; the short copies are serialized by a mutex, so the
//!    scratch database never sees two writers.
//! 3. **Run**: the report SQL runs once on the scratch database, under the same authorizer, and
//!    its rows stream from a thread through a bounded channel ([`ReportRows`]).
//!
//! # Why no push-down
//!
//! Only rows cross from tenants to the scratch database, never partial results, so every
//! SELECT gets the single-database answer with SQLite's own semantics for NULLs, collations,
//! affinity, `DISTINCT`, window frames and `LIMIT`; no rewriting of the SQL is involved.
//! Push-down (aggregating per batch) could only save the copying, and copying is not where the
//! time goes. Measured per tenant on one thread (release build, 2-core machine, the bench's
//! `todos` schema): attaching and preparing 170-350 us (SQLite opening a WAL database: the
//! file, its `-wal` and `-shm`, initialising the WAL index with an `ftruncate` and eight
//! `pwrite`s when no other process has the tenant open, about 25 lock calls, 25 `stat`s, and
//! parsing the tenant's schema), copying 13 us at 20 rows and 30 us at 100 rows, detaching
//! 22-26 us. So copying is 5-12% of the work; push-down would win at most that, for the
//! aggregates that decompose, at the price of a second code path to keep equivalent.
//!
//! `tenantdb-bench report` (10,000 tenants x 20 rows, 2 jobs, same run): a count 1.67 s
//! (the shared database: 0.6 ms), a count per tenant 1.70 s (8.7 ms), the top 10 rows 1.60 s
//! (11.6 ms), a self-join on (tenant, id) 1.70 s (59 ms), all 200,000 rows 1.64 s (15 ms);
//! about 170 us per tenant against 9.5 us for a raw open, read and close of the file, peak RSS
//! 42 MB. With 100 rows per tenant, the 1,000,000-row result streams in 2.2 s with a peak of
//! 50 MB (81 MB for the count per tenant).
//!
//! Reading a WAL database, even read-only, makes SQLite create its `-wal` (empty) and `-shm`
//! when they are missing, as any open does (tenant connections keep them anyway); the database
//! file and an existing log are never written, and detaching never checkpoints
//! (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`).
//!
//! # Bounded memory
//!
//! The scratch database is a file with a bounded page cache; `temp_store=FILE` puts sorts,
//! `DISTINCT`, automatic indexes and window partitions in temporary files (SQLite's temp
//! directory: `SQLITE_TMPDIR`, else `TMPDIR`, else `/var/tmp` or `/tmp`; point it at a disk
//! where `/tmp` is memory); a batch attaches at most 125 tenants and about 32 MB of database
//! files (each attached database caches at most 2 MB); rows stream through a channel of a few
//! hundred rows. The tenant list is paged from the catalog.
//!
//! # Living beside `tenantdb serve`
//!
//! Tenants are attached read-only and never written; in WAL mode readers never block writers,
//! and each tenant's read transaction lasts only for its batch's copy (milliseconds), so
//! checkpoints are held back no longer than that. Reports run the same from another process.

mod analyze;
mod gather;
pub mod render;
mod rows;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::rollout::Progress;
use crate::tenant_id::TenantId;

pub use analyze::{RESULT_TABLE, TENANT_COLUMN};
pub use rows::ReportRows;

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct ReportRequest {
    /// One SELECT, written as if all tenants' rows were in one database whose tables have an
    /// extra first column `_tenant`.
    pub sql: String,
    /// An optional SELECT over the report's result, stored as the table `result`.
    pub reduce: Option<String>,
    /// Only these tenants (default: every live tenant). Ids that are not live tenants are
    /// listed as skipped, "not found".
    pub tenants: Option<Vec<TenantId>>,
    /// Only tenants created at or after this time (unix seconds).
    pub created_after: Option<i64>,
    /// Only tenants created before this time (unix seconds).
    pub created_before: Option<i64>,
}

/// How a report runs. The defaults suit a server; tests and benchmarks vary them.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Threads attaching and copying tenants. Attaching is system calls (opening files,
    /// mapping the WAL index, taking locks), so one per core.
    pub jobs: usize,
    /// Tenants attached at once by one thread (at most 125, SQLite's attach limit here).
    pub batch_tenants: usize,
    /// Database bytes attached at once by one thread: bounds the page cache held by attached
    /// tenants and how long one batch's read transactions last.
    pub batch_bytes: u64,
    /// Page cache of the connection that runs the report SQL, in KiB. Sorts spill to
    /// temporary files beyond about this much.
    pub cache_kib: u32,
    /// Set to stop the report: gathering stops, a running query is interrupted.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_tenants: crate::fleet::REQUIRED_MAX_ATTACHED as usize,
            batch_bytes: 32 << 20,
            cache_kib: 16 << 10,
            cancel: None,
        }
    }
}

/// A tenant a report did not read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedTenant {
    pub tenant: TenantId,
    pub reason: String,
}

/// A report's answer: its columns, then rows as they are read (see [`ReportRows`]).
pub struct Report {
    pub columns: Vec<String>,
    /// Tenants whose rows the report read.
    pub tenants_scanned: usize,
    /// Tenants selected but not read: unknown ids, tenants whose schema lacks a table or
    /// column the report reads, tenants deleted while the report ran.
    pub tenants_skipped: Vec<SkippedTenant>,
    pub rows: ReportRows,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("columns", &self.columns)
            .field("tenants_scanned", &self.tenants_scanned)
            .field("tenants_skipped", &self.tenants_skipped)
            .finish_non_exhaustive()
    }
}

/// The action recorded in the admin audit for every report run.
pub const AUDIT_ACTION: &str = "report.run";

impl Fleet {
    /// Runs a report with the default [`ReportOptions`].
    pub fn report(
        &self,
        request: &ReportRequest,
        progress: &dyn Progress,
        actor: &str,
    ) -> Result<Report> {
        self.report_with(request, &ReportOptions::default(), progress, actor)
    }

    /// Checks the report (refusing anything but one SELECT before any tenant is opened),
    /// records it in the admin audit as run by `actor`, gathers the selected tenants' rows and
    /// starts the query. Rows are read from the returned [`Report`].
    pub fn report_with(
        &self,
        request: &ReportRequest,
        options: &ReportOptions,
        progress: &dyn Progress,
        actor: &str,
    ) -> Result<Report> {
        let schema = analyze::Schema::load(&self.layout().template())?;
        let plan = analyze::analyze(&schema, &request.sql, request.reduce.as_deref())?;
        let detail = match &request.reduce {
            None => request.sql.clone(),
            Some(reduce) => format!("{}\n-- reduce:\n{reduce}", request.sql),
        };
        self.catalog()
            .audit(actor, AUDIT_ACTION, None, Some(&detail))?;
        let cancel = options.cancel.clone().unwrap_or_default();
        let gathered = gather::gather(self, request, options, &plan, &cancel, progress)?;
        let rows = rows::start(gathered.scratch, &schema, request, options, cancel)?;
        Ok(Report {
            columns: rows.columns().to_vec(),
            tenants_scanned: gathered.scanned,
            tenants_skipped: gathered.skipped,
            rows,
        })
    }
}

fn cancelled(cancel: &AtomicBool) -> bool {
    cancel.load(Ordering::Relaxed)
}

fn interrupted() -> Error {
    Error::Sql {
        message: "the report was cancelled".into(),
        code: "SQLITE_INTERRUPT".into(),
    }
}

/// A `file:` URI for `path` with `query`, every byte outside a safe set percent-encoded, so any
/// path SQLite is given stays that path (no `?` or `#` read as URI syntax).
fn file_uri(path: &Path, query: &str) -> Result<String> {
    let absolute = std::path::absolute(path)
        .map_err(crate::error::io_error("resolving a database path", path))?;
    let mut uri = String::from("file:");
    for &b in absolute.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_everything_uri_syntax_could_read() {
        let uri = file_uri(Path::new("/data/we?ird#dir %/t.db"), "mode=ro").unwrap();
        assert_eq!(uri, "file:/data/we%3Fird%23dir%20%25/t.db?mode=ro");
    }

    #[test]
    fn errors_point_at_the_sql() {
        let shown = analyze::pointed("no such table: todoz", "SELECT *\nFROM todoz", 14);
        assert_eq!(
            shown,
            "no such table: todoz (line 2, column 6):\n  FROM todoz\n       ^"
        );
        assert_eq!(analyze::pointed("x", "abc", -1), "x");
        assert_eq!(analyze::pointed("x", "abc", 99), "x");
    }
}
