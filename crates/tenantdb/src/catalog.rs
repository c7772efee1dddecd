//! The catalog (`catalog.db`): which tenants exist and in what state, the migration ledger and
//! the admin audit. Tenant files hold the data; the catalog holds what is needed to find,
//! migrate and account for them without opening each one.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{Context, Result};
use crate::tenant_id::TenantId;
use crate::time::unix_now;

/// The catalog's own schema, one entry per version. Appended to, never edited.
const CATALOG_SCHEMA: &[&str] = &[
    r#"
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('active', 'deleted', 'purged')),
    schema_version INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    trash_file TEXT,
    last_active_at INTEGER,
    migration_error TEXT,
    migration_error_version INTEGER,
    migration_error_at INTEGER
) WITHOUT ROWID;
CREATE INDEX tenants_by_state ON tenants (state, id);
CREATE TABLE migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sql TEXT NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE TABLE admin_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    tenant TEXT,
    detail TEXT
);
"#,
    r#"
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    tenant TEXT,
    outcome TEXT NOT NULL
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE tenants ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN writes INTEGER NOT NULL DEFAULT 0;
"#,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Active,
    Deleted,
    Purged,
}

impl TenantState {
    fn parse(s: &str) -> Self {
        match s {
            "active" => TenantState::Active,
            "deleted" => TenantState::Deleted,
            _ => TenantState::Purged,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Deleted => "deleted",
            TenantState::Purged => "purged",
        }
    }
}

/// A migration that failed on a tenant, kept until a later run succeeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationFailure {
    pub tenant: TenantId,
    pub version: u32,
    pub error: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub state: TenantState,
    pub schema_version: u32,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub last_active_at: Option<i64>,
    #[serde(skip)]
    pub trash_file: Option<String>,
    pub migration_error: Option<MigrationFailure>,
}

/// One migration: a numbered SQL file, as loaded from a directory or kept in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub sha256: String,
    #[serde(skip)]
    pub sql: String,
    pub registered_at: i64,
}

/// The outcome of migrating one tenant, written back in batches.
#[derive(Debug, Clone)]
pub struct VersionUpdate {
    pub tenant: TenantId,
    pub version: u32,
    pub failure: Option<(u32, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminAuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    pub detail: Option<String>,
}

pub struct Catalog {
    conn: Mutex<Connection>,
}

const TENANT_COLUMNS: &str = "id, state, schema_version, created_at, deleted_at, last_active_at, \
     trash_file, migration_error, migration_error_version, migration_error_at";

fn tenant_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TenantRecord> {
    let raw_id: String = row.get(0)?;
    let id = TenantId::new(raw_id).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let state: String = row.get(1)?;
    let error: Option<String> = row.get(7)?;
    let migration_error = match error {
        Some(error) => Some(MigrationFailure {
            tenant: id.clone(),
            version: row.get(8)?,
            error,
            at: row.get(9)?,
        }),
        None => None,
    };
    Ok(TenantRecord {
        id,
        state: TenantState::parse(&state),
        schema_version: row.get(2)?,
        created_at: row.get(3)?,
        deleted_at: row.get(4)?,
        last_active_at: row.get(5)?,
        trash_file: row.get(6)?,
        migration_error,
    })
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut conn = Connection::open(path).context("opening the catalog")?;
        conn.busy_timeout(crate::connection::BUSY_TIMEOUT)
            .context("setting the catalog's busy timeout")?;
        // Commits are not synced one by one (`synchronous = NORMAL`): a commit survives the
        // process dying, and after a power loss the catalog is consistent but may miss its
        // last commits. That is safe because every catalog write is either rebuilt from the
        // files by reconciliation (a created tenant whose row is lost is adopted again) or is
        // made durable with [`Catalog::sync`] before the file operation that depends on it
        // (deletion, tombstones). Creating a tenant thus costs two fsyncs, not three.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .context("configuring the catalog")?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("upgrading the catalog")?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .context("reading the catalog version")?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > CATALOG_SCHEMA.len() {
            return Err(crate::Error::Config(format!(
                "catalog {} was written by a newer tenantdb (catalog version {version})",
                path.display()
            )));
        }
        for (i, sql) in CATALOG_SCHEMA.iter().enumerate().skip(version) {
            tx.execute_batch(sql).context("upgrading the catalog")?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .context("upgrading the catalog")?;
        }
        tx.commit().context("upgrading the catalog")?;
        Ok(Catalog {
            conn: Mutex::new(conn),
        })
    }

    /// Makes every commit so far durable: the write-ahead log is synced before a checkpoint
    /// copies it, whatever the checkpoint then manages to copy.
    pub fn sync(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .context("syncing the catalog")
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection half-changed: every
        // multi-statement change runs in a transaction that rolls back when dropped.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"
            ))
            .context("reading a tenant")?;
        stmt.query_row([id.as_str()], tenant_from_row)
            .optional()
            .context("reading a tenant")
    }

    /// Inserts an active tenant unless a row for the id exists; returns the row that is there
    /// afterwards and whether this call inserted it.
    pub fn insert_tenant(&self, id: &TenantId, version: u32) -> Result<(TenantRecord, bool)> {
        let conn = self.conn();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO tenants (id, state, schema_version, created_at) \
                 VALUES (?1, 'active', ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), version, unix_now()]))
            .context("registering a tenant")?;
        drop(conn);
        let record = self
            .tenant(id)?
            .ok_or_else(|| crate::Error::TenantNotFound(id.to_string()))?;
        Ok((record, inserted == 1))
    }

    /// Like [`Catalog::insert_tenant`], and when it inserts, appends `action` by `actor` to the
    /// admin audit in the same transaction. Creating a tenant then costs one synced catalog
    /// commit instead of two (the catalog commits are serialized, so this bounds how fast
    /// tenants can be created), and a crash cannot keep the tenant but lose its audit entry.
    pub fn insert_tenant_audited(
        &self,
        id: &TenantId,
        version: u32,
        actor: &str,
        action: &str,
    ) -> Result<(TenantRecord, bool)> {
        let mut conn = self.conn();
        let tx = conn.transaction().context("registering a tenant")?;
        let now = unix_now();
        let inserted = tx
            .prepare_cached(
                "INSERT INTO tenants (id, state, schema_version, created_at) \
                 VALUES (?1, 'active', ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), version, now]))
            .context("registering a tenant")?;
        if inserted == 1 {
            tx.prepare_cached(
                "INSERT INTO admin_audit (at, actor, action, tenant, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![now, actor, action, id.as_str(), None::<&str>])
            })
            .context("writing the admin audit")?;
        }
        tx.commit().context("registering a tenant")?;
        drop(conn);
        let record = self
            .tenant(id)?
            .ok_or_else(|| crate::Error::TenantNotFound(id.to_string()))?;
        Ok((record, inserted == 1))
    }

    /// Live tenants in id order, after `after`: keyset paging stays stable while tenants are
    /// created concurrently.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<TenantRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id > ?1 {} ORDER BY id LIMIT ?2",
            if include_deleted {
                ""
            } else {
                "AND state = 'active'"
            }
        );
        let mut stmt = conn.prepare_cached(&sql).context("listing tenants")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after.unwrap_or(""), limit], tenant_from_row)
            .context("listing tenants")?;
        rows.collect::<rusqlite::Result<_>>()
            .context("listing tenants")
    }

    /// Every tenant row, live or not (reconciliation needs the tombstones too).
    pub fn all_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.list(None, usize::MAX, true)
    }

    /// Records a deletion for an id that never had a tenant (a `user.deleted` that arrived
    /// before its `user.created`), so the late creation does not bring the user back. Returns
    /// false when a row already exists.
    pub fn insert_tombstone(&self, id: &TenantId) -> Result<bool> {
        let now = unix_now();
        let inserted = self
            .conn()
            .execute(
                "INSERT INTO tenants (id, state, created_at, deleted_at) VALUES (?1, 'purged', ?2, ?2) \
                 ON CONFLICT (id) DO NOTHING",
                params![id.as_str(), now],
            )
            .context("recording a tombstone")?;
        Ok(inserted == 1)
    }

    /// Adds counted activity to tenants' rows in one transaction (see `Fleet::flush_activity`).
    pub fn add_activity(&self, batch: &[(TenantId, u64, u64, i64)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().context("recording activity")?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE tenants SET requests = requests + ?2, writes = writes + ?3, \
                     last_active_at = max(coalesce(last_active_at, 0), ?4) WHERE id = ?1",
                )
                .context("recording activity")?;
            for (id, requests, writes, at) in batch {
                let clamp = |n: &u64| i64::try_from(*n).unwrap_or(i64::MAX);
                stmt.execute(params![id.as_str(), clamp(requests), clamp(writes), at])
                    .context("recording activity")?;
            }
        }
        tx.commit().context("recording activity")
    }

    /// Runs a read-only query for fleet analytics.
    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        f(&self.conn()).context("reading fleet analytics")
    }

    /// Whether a webhook delivery with this message id was already handled.
    pub fn delivery_seen(&self, id: &str) -> Result<bool> {
        self.conn()
            .prepare_cached("SELECT 1 FROM webhook_deliveries WHERE id = ?1")
            .and_then(|mut s| s.exists([id]))
            .context("reading webhook deliveries")
    }

    /// Records a handled webhook delivery; returns false if it was already recorded.
    pub fn record_delivery(
        &self,
        id: &str,
        event_type: &str,
        tenant: Option<&TenantId>,
        outcome: &str,
    ) -> Result<bool> {
        let inserted = self
            .conn()
            .prepare_cached(
                "INSERT INTO webhook_deliveries (id, received_at, event_type, tenant, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    unix_now(),
                    event_type,
                    tenant.map(TenantId::as_str),
                    outcome
                ])
            })
            .context("recording a webhook delivery")?;
        Ok(inserted == 1)
    }

    pub fn mark_deleted(&self, id: &TenantId, trash_file: &str, at: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE tenants SET state = 'deleted', deleted_at = ?2, trash_file = ?3 WHERE id = ?1",
                params![id.as_str(), at, trash_file],
            )
            .context("marking a tenant deleted")?;
        Ok(())
    }

    pub fn mark_purged(&self, id: &TenantId) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE tenants SET state = 'purged', trash_file = NULL WHERE id = ?1",
                [id.as_str()],
            )
            .context("marking a tenant purged")?;
        Ok(())
    }

    pub fn mark_restored(&self, id: &TenantId, version: u32) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE tenants SET state = 'active', deleted_at = NULL, trash_file = NULL, \
                 schema_version = ?2 WHERE id = ?1",
                params![id.as_str(), version],
            )
            .context("restoring a tenant")?;
        Ok(())
    }

    /// Makes a deleted or purged id a live tenant again with a new, empty database (an admin
    /// creating it anew, not a restore): it starts its life over, so nothing of the old
    /// tenant's history (creation time, activity, a migration failure) carries over.
    pub fn mark_recreated(&self, id: &TenantId, version: u32) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE tenants SET state = 'active', deleted_at = NULL, trash_file = NULL, \
                 schema_version = ?2, created_at = ?3, last_active_at = NULL, requests = 0, \
                 writes = 0, migration_error = NULL, migration_error_version = NULL, \
                 migration_error_at = NULL WHERE id = ?1",
                params![id.as_str(), version, unix_now()],
            )
            .context("re-creating a tenant")?;
        Ok(())
    }

    /// Writes many tenants' migration outcomes in one transaction: a fleet run of 10,000
    /// tenants costs a handful of catalog commits, not 10,000.
    pub fn apply_version_updates(&self, updates: &[VersionUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().context("recording migration results")?;
        {
            let mut ok = tx
                .prepare_cached(
                    "UPDATE tenants SET schema_version = ?2, migration_error = NULL, \
                     migration_error_version = NULL, migration_error_at = NULL WHERE id = ?1",
                )
                .context("recording migration results")?;
            let mut failed = tx
                .prepare_cached(
                    "UPDATE tenants SET schema_version = ?2, migration_error = ?3, \
                     migration_error_version = ?4, migration_error_at = ?5 WHERE id = ?1",
                )
                .context("recording migration results")?;
            let now = unix_now();
            for u in updates {
                match &u.failure {
                    None => ok.execute(params![u.tenant.as_str(), u.version]),
                    Some((version, error)) => {
                        failed.execute(params![u.tenant.as_str(), u.version, error, version, now])
                    }
                }
                .context("recording migration results")?;
            }
        }
        tx.commit().context("recording migration results")
    }

    pub fn ledger(&self) -> Result<Vec<Migration>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, name, sha256, sql, registered_at FROM migrations ORDER BY version",
            )
            .context("reading the migration ledger")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Migration {
                    version: r.get(0)?,
                    name: r.get(1)?,
                    sha256: r.get(2)?,
                    sql: r.get(3)?,
                    registered_at: r.get(4)?,
                })
            })
            .context("reading the migration ledger")?;
        rows.collect::<rusqlite::Result<_>>()
            .context("reading the migration ledger")
    }

    /// Adds migrations to the ledger. Entries already present with the same checksum are left
    /// as they are, so two processes registering the same directory agree.
    pub fn register(&self, entries: &[Migration]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().context("registering migrations")?;
        for e in entries {
            tx.execute(
                "INSERT INTO migrations (version, name, sha256, sql, registered_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (version) DO NOTHING",
                params![e.version, e.name, e.sha256, e.sql, e.registered_at],
            )
            .context("registering migrations")?;
        }
        tx.commit().context("registering migrations")
    }

    pub fn tenants_by_version(&self) -> Result<Vec<(u32, u64)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT schema_version, count(*) FROM tenants WHERE state = 'active' \
                 GROUP BY 1 ORDER BY 1",
            )
            .context("counting tenants by version")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .context("counting tenants by version")?;
        rows.collect::<rusqlite::Result<_>>()
            .context("counting tenants by version")
    }

    pub fn migration_failures(&self) -> Result<Vec<MigrationFailure>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, migration_error_version, migration_error, migration_error_at \
                 FROM tenants WHERE state = 'active' AND migration_error IS NOT NULL ORDER BY id",
            )
            .context("reading migration failures")?;
        let rows = stmt
            .query_map([], |r| {
                let id: String = r.get(0)?;
                Ok((id, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .context("reading migration failures")?;
        let mut out = Vec::new();
        for row in rows {
            let (id, version, error, at) = row.context("reading migration failures")?;
            if let Ok(tenant) = TenantId::new(id) {
                out.push(MigrationFailure {
                    tenant,
                    version,
                    error,
                    at,
                });
            }
        }
        Ok(out)
    }

    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        tenant: Option<&TenantId>,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO admin_audit (at, actor, action, tenant, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    unix_now(),
                    actor,
                    action,
                    tenant.map(TenantId::as_str),
                    detail
                ])
            })
            .context("writing the admin audit")?;
        Ok(())
    }

    pub fn admin_audit(&self, after: i64, limit: usize) -> Result<Vec<AdminAuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, at, actor, action, tenant, detail FROM admin_audit WHERE seq > ?1 \
                 ORDER BY seq LIMIT ?2",
            )
            .context("reading the admin audit")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after, limit], |r| {
                Ok(AdminAuditEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    tenant: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .context("reading the admin audit")?;
        rows.collect::<rusqlite::Result<_>>()
            .context("reading the admin audit")
    }
}
