//! [`Fleet`]: the library's entry point. It owns the data directory and is the only way the
//! server, the CLI and the benchmarks reach tenant databases.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::limits::Limit;
use serde::Serialize;

use crate::cache::{Cache, Lease};
use crate::catalog::{Catalog, Migration, TenantRecord, TenantState, VersionUpdate};
use crate::config::Config;
use crate::connection;
use crate::error::{Context, Error, Result, io_error};
use crate::fsutil;
use crate::guard::{self, GuardConfig};
use crate::layout::Layout;
use crate::migrate;
use crate::reconcile::{self, ReconcileReport};
use crate::session::TenantConnection;
use crate::template;
use crate::tenant_id::TenantId;
use crate::time::unix_now;

/// Reports need to attach this many tenant databases at once; SQLite fixes the ceiling at
/// compile time (see `.cargo/config.toml`).
pub const REQUIRED_MAX_ATTACHED: i32 = 125;

/// How long deletion waits for a tenant's in-flight requests before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A tenant as shown to operators: the catalog's record plus what the files say now.
#[derive(Debug, Clone, Serialize)]
pub struct TenantInfo {
    #[serde(flatten)]
    pub record: TenantRecord,
    pub size_bytes: u64,
}

pub struct Fleet {
    layout: Layout,
    catalog: Catalog,
    cache: Arc<Cache>,
    ledger: RwLock<Arc<Vec<Migration>>>,
    guard: Arc<GuardConfig>,
    sync_every_commit: bool,
    audit_writes: bool,
    activity: crate::stats::Activity,
    counters: crate::stats::Counters,
    /// Lifecycle changes of one tenant (create, delete, restore, purge) run one at a time:
    /// each is a catalog change plus file moves, and two interleaved would trip over each
    /// other's files. Striped by id, so different tenants never wait for each other.
    lifecycle: [Mutex<()>; 64],
    reconciled: ReconcileReport,
    /// Held while this fleet serves the directory (see [`crate::serving`]).
    serving: Mutex<Option<crate::serving::ServingLock>>,
}

impl Fleet {
    /// Opens (creating if needed) the data directory: catalog, template, and with
    /// `reconcile_on_open` a check of files against the catalog.
    pub fn open(config: Config) -> Result<Fleet> {
        check_attach_limit()?;
        let layout = Layout::new(&config.data_dir);
        for dir in [
            layout.root().to_path_buf(),
            layout.tenants_dir(),
            layout.trash_dir(),
        ] {
            fsutil::ensure_dir(&dir).map_err(io_error("creating the data directory", &dir))?;
        }
        let catalog = Catalog::open(&layout.catalog())?;
        let ledger = catalog.ledger()?;
        let latest = ledger.last().map_or(0, |m| m.version);
        if template::version(&layout) != Some(latest) {
            template::rebuild(&layout, &ledger)?;
        }
        let mut fleet = Fleet {
            cache: Cache::new(config.cache_capacity, config.idle_connections_per_tenant),
            layout,
            catalog,
            ledger: RwLock::new(Arc::new(ledger)),
            guard: Arc::new(config.guard),
            sync_every_commit: config.sync_every_commit,
            audit_writes: config.audit_writes,
            activity: crate::stats::Activity::default(),
            counters: crate::stats::Counters::default(),
            lifecycle: [const { Mutex::new(()) }; 64],
            reconciled: ReconcileReport::default(),
            serving: Mutex::new(None),
        };
        if config.reconcile_on_open {
            fleet.reconciled = reconcile::run(&fleet.layout, &fleet.catalog)?;
        }
        Ok(fleet)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Event counters since this process opened the fleet.
    pub fn counters(&self) -> &crate::stats::Counters {
        &self.counters
    }

    pub(crate) fn activity(&self) -> &crate::stats::Activity {
        &self.activity
    }

    /// What reconciliation found when the fleet was opened.
    /// Claims the data directory for this fleet's server, for as long as the fleet lives:
    /// other processes may no longer delete or restore tenants behind its back (see
    /// [`crate::serving`]). Fails if another process serves the directory.
    pub fn claim_serving(&self) -> Result<()> {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving.is_none() {
            *serving = Some(crate::serving::ServingLock::acquire(&self.layout)?);
        }
        Ok(())
    }

    /// Refuses to move a tenant's files while another process serves the directory: it may
    /// hold the tenant open.
    fn refuse_if_served_elsewhere(&self) -> Result<()> {
        let ours = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !ours && crate::serving::ServingLock::is_held(&self.layout)? {
            return Err(Error::ServedElsewhere(self.layout.root().to_path_buf()));
        }
        Ok(())
    }

    pub fn reconciled(&self) -> &ReconcileReport {
        &self.reconciled
    }

    pub fn latest_version(&self) -> u32 {
        self.ledger().last().map_or(0, |m| m.version)
    }

    fn ledger(&self) -> Arc<Vec<Migration>> {
        Arc::clone(&self.ledger.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn reload_ledger(&self) -> Result<Arc<Vec<Migration>>> {
        let fresh = Arc::new(self.catalog.ledger()?);
        *self.ledger.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Creates a tenant (an operator's explicit create). Refuses an id that is live; brings
    /// back a deleted id as a new, empty tenant.
    pub fn create_tenant(&self, id: &TenantId, actor: &str) -> Result<TenantRecord> {
        let _lifecycle = self.lock_lifecycle(id);
        if let Some(existing) = self.catalog.tenant(id)?
            && existing.state == TenantState::Active
        {
            return Err(Error::TenantExists(id.to_string()));
        }
        let (record, created) = self.provision(id, true, actor)?;
        if !created {
            return Err(Error::TenantExists(id.to_string()));
        }
        Ok(record)
    }

    /// Makes sure a tenant exists (signup webhooks, lazy provisioning): creates it if it never
    /// existed, returns it if it does, and refuses an id that was deleted, so a late or
    /// replayed signup never resurrects a user who left.
    pub fn ensure_tenant(&self, id: &TenantId, actor: &str) -> Result<(TenantRecord, bool)> {
        let _lifecycle = self.lock_lifecycle(id);
        if let Some(existing) = self.catalog.tenant(id)? {
            return match existing.state {
                TenantState::Active => Ok((existing, false)),
                _ => Err(Error::TenantDeleted(id.to_string())),
            };
        }
        let (record, created) = self.provision(id, false, actor)?;
        if record.state != TenantState::Active {
            // The id was retired while we copied the template: the copy must not stay.
            template::remove_database(&self.layout.tenant_db(id));
            return Err(Error::TenantDeleted(id.to_string()));
        }
        Ok((record, created))
    }

    /// Copies the template into place, then registers the tenant. A crash before the catalog
    /// row leaves a complete file that reconciliation adopts; a crash before the rename leaves
    /// only a staging file that reconciliation removes. Either way: no tenant, or a whole one.
    /// A tenant this call creates is recorded in the admin audit as created by `actor`.
    fn provision(&self, id: &TenantId, revive: bool, actor: &str) -> Result<(TenantRecord, bool)> {
        let shard = self.layout.shard_dir(id);
        fsutil::ensure_dir(&shard).map_err(io_error("creating a shard directory", &shard))?;
        let target = self.layout.tenant_db(id);
        let staging = self.layout.tenant_staging(id, fsutil::nonce());
        let template = self.layout.template();
        let copied = fsutil::copy_synced(&template, &staging)
            .map_err(io_error("copying the template", &staging));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        let placed = fsutil::move_no_replace(&staging, &target);
        let adopted_version = match placed {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&staging);
                Some(self.file_version(&target)?)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return Err(io_error("placing a new tenant", &target)(e));
            }
        };
        fsutil::sync_dir(&shard).map_err(io_error("syncing a shard directory", &shard))?;
        let version = match adopted_version {
            Some(v) => v,
            None => template::version(&self.layout).unwrap_or(0),
        };
        if revive
            && let Some(existing) = self.catalog.tenant(id)?
            && existing.state != TenantState::Active
        {
            self.catalog.mark_recreated(id, version)?;
            self.catalog.audit(actor, "tenant.create", Some(id), None)?;
            self.counters
                .tenants_provisioned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((self.require(id)?, true));
        }
        let (record, created) =
            self.catalog
                .insert_tenant_audited(id, version, actor, "tenant.create")?;
        if created {
            self.counters
                .tenants_provisioned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((record, created))
    }

    /// A tenant file's version: from its header when no write-ahead log could hold a newer
    /// one (cheap, and leaves no `-wal`/`-shm` behind), else through SQLite.
    fn file_version(&self, path: &Path) -> Result<u32> {
        if !fsutil::side_file(path, "-wal").exists()
            && let Some(version) = fsutil::header_user_version(path)
        {
            return Ok(version);
        }
        let conn = connection::open_tenant(path, false)?;
        migrate::user_version(&conn)
    }

    fn require(&self, id: &TenantId) -> Result<TenantRecord> {
        self.catalog
            .tenant(id)?
            .ok_or_else(|| Error::TenantNotFound(id.to_string()))
    }

    /// A live tenant's record and current size.
    pub fn tenant(&self, id: &TenantId) -> Result<TenantInfo> {
        let record = self.require(id)?;
        if record.state != TenantState::Active {
            return Err(Error::TenantNotFound(id.to_string()));
        }
        Ok(self.info(record))
    }

    fn info(&self, record: TenantRecord) -> TenantInfo {
        let size_bytes = fsutil::database_size(&self.layout.tenant_db(&record.id));
        TenantInfo { record, size_bytes }
    }

    /// Live tenants in id order, starting after `after`.
    pub fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<Vec<TenantInfo>> {
        let records = self.catalog.list(after, limit, false)?;
        Ok(records.into_iter().map(|r| self.info(r)).collect())
    }

    /// A guarded connection to a live tenant, from the cache.
    pub fn connect(&self, id: &TenantId) -> Result<Lease> {
        self.cache
            .checkout(id, |first| self.open_connection(id, first))
    }

    /// A connection to `id` if the cache holds an idle one, without opening or waiting (see
    /// [`Cache::checkout_idle`]); `None` says "use [`Fleet::connect`]", not that the tenant is
    /// missing.
    pub fn connect_idle(&self, id: &TenantId) -> Option<Lease> {
        self.cache.checkout_idle(id)
    }

    fn open_connection(&self, id: &TenantId, first: bool) -> Result<TenantConnection> {
        let path = self.layout.tenant_db(id);
        let mut conn = match connection::open_tenant(&path, self.sync_every_commit) {
            Ok(conn) => conn,
            // Another thread may have finished creating the tenant since the first attempt.
            Err(e) => match self.explain_unopenable(id, e) {
                Error::Sqlite { .. } if path.exists() => {
                    connection::open_tenant(&path, self.sync_every_commit)?
                }
                other => return Err(other),
            },
        };
        if first {
            self.catch_up(id, &mut conn)?;
        }
        // Room for a request mix's statements plus the audit's own (see `audit::internal`).
        conn.set_prepared_statement_cache_capacity(64);
        let guard = guard::install(&mut conn, &self.guard)?;
        Ok(TenantConnection::new(
            conn,
            guard,
            Arc::clone(&self.guard),
            id.clone(),
            self.audit_writes,
        ))
    }

    /// Migrates a tenant that is behind before it serves anything. If its migration fails, it
    /// serves at its previous version and the failure is recorded for `migrate status`.
    fn catch_up(&self, id: &TenantId, conn: &mut rusqlite::Connection) -> Result<()> {
        let version = migrate::user_version(conn)?;
        let mut ledger = self.ledger();
        let latest = ledger.last().map_or(0, |m| m.version);
        if version > latest {
            // Another process registered newer migrations; learn them.
            ledger = self.reload_ledger()?;
        }
        if version >= ledger.last().map_or(0, |m| m.version) {
            return Ok(());
        }
        let (reached, failure) = migrate::apply(conn, &ledger, false)?;
        let counter = match failure {
            None => &self.counters.migrations_applied,
            Some(_) => &self.counters.migrations_failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(f) = &failure {
            tracing::warn!(tenant = %id, version = f.version, error = %f.error, "migration on open failed");
        }
        self.catalog.apply_version_updates(&[VersionUpdate {
            tenant: id.clone(),
            version: reached,
            failure: failure.map(|f| (f.version, f.error)),
        }])
    }

    fn explain_unopenable(&self, id: &TenantId, e: Error) -> Error {
        match self.catalog.tenant(id) {
            Ok(None) => Error::TenantNotFound(id.to_string()),
            Ok(Some(r)) if r.state != TenantState::Active => Error::TenantDeleted(id.to_string()),
            Ok(Some(_)) if !self.layout.tenant_db(id).exists() => {
                Error::TenantFileMissing(id.to_string())
            }
            _ => e,
        }
    }

    /// Deletes a tenant: marks it deleted (a tombstone that stops re-creation), waits for its
    /// in-flight requests, and moves its files to `trash/` (or removes them with `purge`).
    pub fn delete_tenant(&self, id: &TenantId, purge: bool, actor: &str) -> Result<()> {
        self.refuse_if_served_elsewhere()?;
        let _lifecycle = self.lock_lifecycle(id);
        self.delete_locked(id, purge, actor)
    }

    fn delete_locked(&self, id: &TenantId, purge: bool, actor: &str) -> Result<()> {
        let record = self.require(id)?;
        match record.state {
            TenantState::Active => {}
            TenantState::Deleted if purge => return self.purge_one(&record, actor),
            _ => return Err(Error::TenantNotFound(id.to_string())),
        }
        let now = unix_now();
        let trashed = self.layout.trashed_db(id, now);
        let trash_name = file_name(&trashed);
        let _fence = self.cache.fence(id);
        self.catalog.mark_deleted(id, &trash_name, now)?;
        // The tombstone must be on disk before the files move (see `Catalog::sync`).
        self.catalog.sync()?;
        self.cache.evict_and_wait(id, DRAIN_TIMEOUT)?;
        let path = self.layout.tenant_db(id);
        checkpoint(&path);
        move_database(&path, &trashed)?;
        self.catalog.audit(actor, "tenant.delete", Some(id), None)?;
        if purge {
            let record = self.require(id)?;
            self.purge_one(&record, actor)?;
        }
        Ok(())
    }

    /// Deletes a user's tenant if it exists, and in any case leaves a tombstone for the id, so
    /// that a signup event delivered late (or replayed) never brings the user back. Returns
    /// whether a live tenant was deleted.
    pub fn retire_tenant(&self, id: &TenantId, actor: &str) -> Result<bool> {
        self.refuse_if_served_elsewhere()?;
        let _lifecycle = self.lock_lifecycle(id);
        self.retire_locked(id, actor)
    }

    fn retire_locked(&self, id: &TenantId, actor: &str) -> Result<bool> {
        match self.catalog.tenant(id)? {
            Some(r) if r.state == TenantState::Active => {
                self.delete_locked(id, false, actor)?;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                if self.catalog.insert_tombstone(id)? {
                    self.catalog.sync()?;
                    self.catalog
                        .audit(actor, "tenant.tombstone", Some(id), None)?;
                    Ok(false)
                } else {
                    // A creation raced us and won: delete what it made.
                    self.retire_locked(id, actor)
                }
            }
        }
    }

    fn lock_lifecycle(&self, id: &TenantId) -> std::sync::MutexGuard<'_, ()> {
        // FNV-1a: any spread will do, it only picks a stripe.
        let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let stripe = usize::try_from(hash % self.lifecycle.len() as u64).unwrap_or(0);
        self.lifecycle[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn purge_one(&self, record: &TenantRecord, actor: &str) -> Result<()> {
        if let Some(name) = &record.trash_file {
            let path = self.layout.trash_dir().join(name);
            template::remove_database(&path);
            let trash = self.layout.trash_dir();
            fsutil::sync_dir(&trash).map_err(io_error("syncing trash", &trash))?;
        }
        self.catalog.mark_purged(&record.id)?;
        self.catalog
            .audit(actor, "tenant.purge", Some(&record.id), None)
    }

    /// Brings a deleted tenant back from trash, as it was when deleted.
    pub fn restore_tenant(&self, id: &TenantId, actor: &str) -> Result<TenantRecord> {
        self.refuse_if_served_elsewhere()?;
        let _lifecycle = self.lock_lifecycle(id);
        let record = self.require(id)?;
        let name = match (&record.state, &record.trash_file) {
            (TenantState::Deleted, Some(name)) => name.clone(),
            (TenantState::Active, _) => return Err(Error::TenantExists(id.to_string())),
            _ => return Err(Error::NothingToRestore(id.to_string())),
        };
        let trashed = self.layout.trash_dir().join(&name);
        if !trashed.exists() {
            return Err(Error::NothingToRestore(id.to_string()));
        }
        let shard = self.layout.shard_dir(id);
        fsutil::ensure_dir(&shard).map_err(io_error("creating a shard directory", &shard))?;
        move_database(&trashed, &self.layout.tenant_db(id))?;
        let version = self.file_version(&self.layout.tenant_db(id))?;
        self.catalog.mark_restored(id, version)?;
        self.catalog.sync()?;
        self.catalog
            .audit(actor, "tenant.restore", Some(id), None)?;
        self.require(id)
    }

    /// Purges trash older than the retention period; returns the tenants purged. Works from
    /// the trash directory itself, so copies left behind by an admin re-creating a deleted id
    /// are purged on the same schedule.
    pub fn purge_expired(&self, retention: Duration, actor: &str) -> Result<Vec<TenantId>> {
        let cutoff = unix_now() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let trash = self.layout.trash_dir();
        let entries = std::fs::read_dir(&trash).map_err(io_error("scanning trash", &trash))?;
        let mut purged = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("scanning trash", &trash))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((id, deleted_at)) = Layout::parse_trashed(&name) else {
                continue;
            };
            if deleted_at > cutoff {
                continue;
            }
            let _lifecycle = self.lock_lifecycle(&id);
            match self.catalog.tenant(&id)? {
                Some(r)
                    if r.state == TenantState::Deleted
                        && r.trash_file.as_deref() == Some(&name) =>
                {
                    self.purge_one(&r, actor)?;
                }
                _ => {
                    template::remove_database(&entry.path());
                    self.catalog
                        .audit(actor, "tenant.purge", Some(&id), Some(&name))?;
                }
            }
            purged.push(id);
        }
        Ok(purged)
    }

    /// Writes a consistent snapshot of a live tenant to `out` with SQLite's online backup, while
    /// the tenant keeps serving. The file is a standalone database in rollback-journal mode.
    pub fn export_tenant(&self, id: &TenantId, out: &Path, actor: &str) -> Result<u64> {
        let record = self.require(id)?;
        if record.state != TenantState::Active {
            return Err(Error::TenantNotFound(id.to_string()));
        }
        let source = connection::open_tenant(&self.layout.tenant_db(id), false)
            .map_err(|e| self.explain_unopenable(id, e))?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staging = dir.join(format!(".tenantdb-export.{}.tmp", fsutil::nonce()));
        let result = (|| {
            let mut dest = rusqlite::Connection::open(&staging).context("creating the export")?;
            {
                let backup = rusqlite::backup::Backup::new(&source, &mut dest)
                    .context("starting the export")?;
                // One step of all pages copies under one read transaction: a consistent
                // snapshot, however busy the tenant is.
                let step = backup.step(-1).context("copying the database")?;
                if step != rusqlite::backup::StepResult::Done {
                    return Err(Error::Busy(id.to_string()));
                }
            }
            dest.execute_batch("PRAGMA journal_mode = DELETE")
                .context("finishing the export")?;
            dest.close().map_err(|(_, source)| Error::Sqlite {
                context: "closing the export".into(),
                source,
            })?;
            std::fs::File::open(&staging)
                .and_then(|f| f.sync_all())
                .map_err(io_error("syncing the export", &staging))?;
            std::fs::rename(&staging, out).map_err(io_error("writing the export", out))
        })();
        if let Err(e) = result {
            template::remove_database(&staging);
            return Err(e);
        }
        self.catalog.audit(
            actor,
            "tenant.export",
            Some(id),
            Some(&out.display().to_string()),
        )?;
        Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
    }

    /// A live tenant's write audit, oldest first, after entry `after`.
    pub fn tenant_audit(
        &self,
        id: &TenantId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditEntry>> {
        let conn = self.bookkeeping_connection(id)?;
        crate::audit::read(&conn, after, limit).context("reading the audit")
    }

    /// Recomputes a live tenant's audit chain and names the first broken entry.
    pub fn verify_audit(&self, id: &TenantId) -> Result<crate::audit::Verification> {
        let conn = self.bookkeeping_connection(id)?;
        crate::audit::verify(&conn).context("verifying the audit")
    }

    /// An unguarded connection to a live tenant, for the library's own reads.
    fn bookkeeping_connection(&self, id: &TenantId) -> Result<rusqlite::Connection> {
        let record = self.require(id)?;
        if record.state != TenantState::Active {
            return Err(Error::TenantNotFound(id.to_string()));
        }
        connection::open_tenant(&self.layout.tenant_db(id), self.sync_every_commit)
            .map_err(|e| self.explain_unopenable(id, e))
    }

    /// Compares tenant files with catalog rows again (also done by `open`).
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        reconcile::run(&self.layout, &self.catalog)
    }

    /// Closes every cached connection; leased ones close when handed back.
    pub fn shutdown(&self) {
        self.cache.shutdown();
    }

    pub(crate) fn set_ledger(&self, ledger: Vec<Migration>) {
        *self.ledger.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ledger);
    }

    pub(crate) fn sync_every_commit(&self) -> bool {
        self.sync_every_commit
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cache.shutdown();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Folds a leftover write-ahead log into the database file, so a tenant moves as one file.
/// Best effort: if it cannot (another process holds the tenant open), the log moves with it.
fn checkpoint(db: &Path) {
    if fsutil::side_file(db, "-wal").exists()
        && let Ok(conn) = connection::open_tenant(db, false)
    {
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        let _ = conn.close();
    }
}

/// Moves a database and its write-ahead log; the `-shm` index is rebuilt from them on open.
/// An empty log holds nothing (tenant connections keep theirs when they close, see
/// [`connection`]), so it is removed rather than moved.
fn move_database(from: &Path, to: &Path) -> Result<()> {
    fsutil::move_no_replace(from, to).map_err(io_error("moving a database", from))?;
    let wal_from = fsutil::side_file(from, "-wal");
    match std::fs::metadata(&wal_from) {
        Ok(meta) if meta.len() == 0 => {
            let _ = std::fs::remove_file(&wal_from);
        }
        Ok(_) => {
            let wal_to = fsutil::side_file(to, "-wal");
            fsutil::move_no_replace(&wal_from, &wal_to)
                .map_err(io_error("moving a WAL", &wal_from))?;
        }
        Err(_) => {}
    }
    let _ = std::fs::remove_file(fsutil::side_file(from, "-shm"));
    for dir in [from.parent(), to.parent()].into_iter().flatten() {
        fsutil::sync_dir(dir).map_err(io_error("syncing a directory", dir))?;
    }
    Ok(())
}

fn check_attach_limit() -> Result<()> {
    let conn = rusqlite::Connection::open_in_memory().context("probing SQLite")?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, REQUIRED_MAX_ATTACHED)
        .context("probing SQLite")?;
    let max = conn
        .limit(Limit::SQLITE_LIMIT_ATTACHED)
        .context("probing SQLite")?;
    if max < REQUIRED_MAX_ATTACHED {
        return Err(Error::Config(format!(
            "this build's SQLite attaches at most {max} databases; reports need \
             {REQUIRED_MAX_ATTACHED}: build with LIBSQLITE3_FLAGS=-DSQLITE_MAX_ATTACHED=125 \
             (set in .cargo/config.toml)"
        )));
    }
    Ok(())
}
