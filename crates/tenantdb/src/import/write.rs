//! Writing one tenant: one transaction on an unguarded connection that inserts all of the
//! tenant's rows and records the import in the tenant's own `_tenantdb_import`, so the rows and
//! the record of them commit together or not at all. A rerun finds the record and skips the
//! tenant; a tenant whose transaction did not commit holds neither and is imported again.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Statement, TransactionBehavior, params, params_from_iter};
use serde::Serialize;

use crate::connection;
use crate::error::{Context, Error, Result};
use crate::fleet::Fleet;
use crate::import::plan::{ImportPlan, TablePlan};
use crate::import::schema::quote;
use crate::import::stream::TenantRows;
use crate::migrate;
use crate::tenant_id::TenantId;
use crate::time::unix_now;

/// Each completed import of a source, inside the tenant. `rows` is a JSON object of rows
/// written per table. The library's own table: user SQL can read it but never write it.
pub const IMPORT_TABLE: &str = "CREATE TABLE IF NOT EXISTS _tenantdb_import (
    source_sha256 TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    tenant_column TEXT NOT NULL,
    rows TEXT NOT NULL,
    imported_at INTEGER NOT NULL
)";

/// Where a tenant stands with respect to an import.
pub(crate) enum ImportState {
    Ready,
    Done,
    Blocked(String),
}

pub(crate) fn import_state(conn: &Connection, plan: &ImportPlan) -> Result<ImportState> {
    let version = migrate::user_version(conn)?;
    if version != plan.schema_version {
        return Ok(ImportState::Blocked(format!(
            "its schema is at version {version} and the import maps columns onto version {}; \
             bring it to the latest version with `tenantdb migrate` and import again",
            plan.schema_version
        )));
    }
    let records = import_records(conn)?;
    if records.iter().any(|(sha, _)| *sha == plan.source_sha256) {
        return Ok(ImportState::Done);
    }
    if let Some((sha, source)) = records.first() {
        return Ok(ImportState::Blocked(format!(
            "it already holds an import of {source} (sha256 {}), a different source file; \
             importing another on top would mix the two",
            sha.chars().take(12).collect::<String>()
        )));
    }
    Ok(ImportState::Ready)
}

/// The imports a tenant holds: (source sha256, source path).
pub(crate) fn import_records(conn: &Connection) -> Result<Vec<(String, String)>> {
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_tenantdb_import'",
            [],
            |r| r.get(0),
        )
        .context("reading the import record")?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT source_sha256, source FROM _tenantdb_import ORDER BY imported_at")
        .context("reading the import record")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .context("reading the import record")?;
    rows.collect::<rusqlite::Result<_>>()
        .context("reading the import record")
}

/// Checking and verifying only read: a read-only connection never checkpoints when it closes,
/// so looking at a freshly imported tenant leaves its log for the tenant's next writer instead
/// of paying two fsyncs for it.
pub(crate) fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).context("opening a tenant database")?;
    conn.busy_timeout(connection::BUSY_TIMEOUT)
        .context("opening a tenant database")?;
    Ok(conn)
}

/// What happened to one tenant.
pub(crate) enum Outcome {
    Imported { created: bool, rows: Vec<u64> },
    AlreadyDone,
    Deleted { id: TenantId },
    Failed { id: TenantId, error: String },
}

pub(crate) fn write_tenant(
    fleet: &Fleet,
    plan: &ImportPlan,
    tenant: TenantRows,
    actor: &str,
) -> Outcome {
    let id = tenant.id.clone();
    match write(fleet, plan, tenant, actor) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed {
            id,
            error: e.to_string(),
        },
    }
}

fn write(fleet: &Fleet, plan: &ImportPlan, tenant: TenantRows, actor: &str) -> Result<Outcome> {
    let id = tenant.id.clone();
    let created = match fleet.ensure_tenant(&id, actor) {
        Ok((_, created)) => created,
        Err(Error::TenantDeleted(_)) => return Ok(Outcome::Deleted { id }),
        Err(e) => return Err(e),
    };
    // Unguarded: this is the operator's import, not user SQL. It writes the tenant's tables
    // and its own record, never `_tenantdb_migrations`.
    let mut conn = connection::open_tenant(&fleet.layout().tenant_db(&id), false)?;
    // The commit leaves the rows in the write-ahead log, which the tenant's next connection
    // checkpoints in its own time: checkpointing on close would cost two more fsyncs per
    // tenant, most of an import's time. Durability is the fleet's usual (see `connection`):
    // nothing is lost when the process dies; a power loss can roll back the last commits,
    // rows and import record together, and a rerun imports those tenants again.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .context("configuring the import connection")?;
    // A row may point at another tenant's row (a comment by another user): copied as it is.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .context("configuring the import connection")?;
    // An existing tenant's own triggers fire on the rows written, but may not touch tenantdb's
    // tables (its write audit) from this unguarded connection.
    let denied = crate::guard::keep_triggers_off_reserved_tables(&mut conn)
        .context("protecting tenantdb's tables during the import")?;
    let outcome = match write_rows(&mut conn, plan, tenant, created) {
        Ok(outcome) => outcome,
        Err(e) => {
            return Err(match denied.lock().ok().and_then(|mut d| d.take()) {
                Some(reason) => Error::Config(format!("{e}: {reason}")),
                None => e,
            });
        }
    };
    conn.close().map_err(|(_, source)| Error::Sqlite {
        context: "closing the tenant".into(),
        source,
    })?;
    Ok(outcome)
}

/// Writes one tenant's rows and its import record in one transaction.
fn write_rows(
    conn: &mut Connection,
    plan: &ImportPlan,
    tenant: TenantRows,
    created: bool,
) -> Result<Outcome> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting the import transaction")?;
    match import_state(&tx, plan)? {
        ImportState::Ready => {}
        ImportState::Done => return Ok(Outcome::AlreadyDone),
        ImportState::Blocked(reason) => return Err(Error::Config(reason)),
    }
    tx.execute_batch(IMPORT_TABLE)
        .context("creating the import record")?;
    let mut rows = vec![0u64; plan.tables.len()];
    let complete = {
        let mut inserts: Vec<Option<Statement<'_>>> = plan.tables.iter().map(|_| None).collect();
        tenant.for_each(|t, cells| {
            let table = &plan.tables[t];
            let insert = match &mut inserts[t] {
                Some(stmt) => stmt,
                empty => empty.insert(
                    tx.prepare(&insert_sql(table))
                        .context(format!("preparing to write {}", table.table))?,
                ),
            };
            insert
                .execute(params_from_iter(cells.iter()))
                .context(format!("writing a row of {}", table.table))?;
            rows[t] += 1;
            Ok(())
        })?
    };
    if !complete {
        return Err(Error::Config(
            "the import stopped before all of this tenant's rows were read; nothing of it was \
             written"
                .into(),
        ));
    }
    let counts: BTreeMap<&str, u64> = plan
        .tables
        .iter()
        .zip(&rows)
        .filter(|(t, _)| t.written())
        .map(|(t, n)| (t.table.as_str(), *n))
        .collect();
    let counts = serde_json::to_string(&counts).unwrap_or_else(|_| "{}".into());
    tx.execute(
        "INSERT INTO _tenantdb_import (source_sha256, source, tenant_column, rows, imported_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            plan.source_sha256,
            plan.source.display().to_string(),
            plan.tenant_column,
            counts,
            unix_now()
        ],
    )
    .context("recording the import")?;
    tx.commit().context("committing the import")?;
    Ok(Outcome::Imported { created, rows })
}

fn insert_sql(table: &TablePlan) -> String {
    let target = table.tenant_table.as_deref().unwrap_or(&table.table);
    let columns: Vec<String> = table.target_columns.iter().map(|c| quote(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote(target),
        columns.join(", "),
        params.join(", ")
    )
}

/// A tenant the import could not write.
#[derive(Debug, Clone, Serialize)]
pub struct ImportFailure {
    pub tenant: TenantId,
    pub error: String,
}

/// What an import run did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub source: std::path::PathBuf,
    pub source_sha256: String,
    /// Tenants that have rows in the source.
    pub tenants: usize,
    /// Tenants this run imported (each in one transaction).
    pub imported: usize,
    /// Of those, tenants this run created.
    pub created: usize,
    /// Tenants an earlier run had already imported: skipped.
    pub already_imported: usize,
    /// Deleted tenants (or retired ids): not written, not re-created.
    pub deleted: Vec<TenantId>,
    pub failed: Vec<ImportFailure>,
    /// Rows this run wrote, in total and per table.
    pub rows: u64,
    pub rows_by_table: BTreeMap<String, u64>,
    /// Rows left out because they reach no valid tenant (`skip_invalid`).
    pub rows_left_out: u64,
    pub seconds: f64,
}

impl ImportReport {
    pub(crate) fn new(plan: &ImportPlan) -> ImportReport {
        ImportReport {
            source: plan.source.clone(),
            source_sha256: plan.source_sha256.clone(),
            tenants: plan.tenants.len(),
            imported: 0,
            created: 0,
            already_imported: 0,
            deleted: Vec::new(),
            failed: Vec::new(),
            rows: 0,
            rows_by_table: plan
                .tables
                .iter()
                .filter(|t| t.written())
                .map(|t| (t.table.clone(), 0))
                .collect(),
            rows_left_out: plan.rows_left_out,
            seconds: 0.0,
        }
    }

    pub(crate) fn record(&mut self, outcome: Outcome, plan: &ImportPlan) {
        match outcome {
            Outcome::Imported { created, rows, .. } => {
                self.imported += 1;
                self.created += usize::from(created);
                for (table, n) in plan.tables.iter().zip(rows) {
                    if n > 0 {
                        *self.rows_by_table.entry(table.table.clone()).or_default() += n;
                        self.rows += n;
                    }
                }
            }
            Outcome::AlreadyDone => self.already_imported += 1,
            Outcome::Deleted { id } => self.deleted.push(id),
            Outcome::Failed { id, error } => self.failed.push(ImportFailure { tenant: id, error }),
        }
    }

    pub(crate) fn finish(&mut self) {
        self.deleted.sort();
        self.failed.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }

    /// Every tenant in the source is imported (by this run or an earlier one) or deliberately
    /// skipped because it was deleted.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}
