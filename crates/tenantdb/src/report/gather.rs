//! Copying the rows a report reads from every selected tenant into one scratch database.
//!
//! See the [module documentation](super) for the strategy. The work per tenant is: a `stat`,
//! a read-only `ATTACH` (open the file, its `-wal` and `-shm`, map the WAL index, read the
//! schema), one prepared `INSERT … SELECT` per table read, a read transaction during its
//! batch's copy, and a `DETACH`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode, OpenFlags, Statement};

use super::analyze::{self, Plan, TableRead, quote};
use super::{ReportRequest, SkippedTenant, cancelled, interrupted};
use crate::catalog::{TenantRecord, TenantState};
use crate::connection::BUSY_TIMEOUT;
use crate::error::{Context, Error, Result, io_error};
use crate::fleet::Fleet;
use crate::fsutil;
use crate::rollout::Progress;
use crate::tenant_id::TenantId;

/// Scratch databases live here, inside the data directory: on the same disk as the tenants
/// (never a memory-backed `/tmp`), removed when the report is done.
pub const SCRATCH_DIR: &str = "reports";

/// Scratch directories left by a crash are removed once they are this old.
const STALE_SCRATCH_AGE: Duration = Duration::from_secs(24 * 3600);

/// Page cache of each gathering connection, in KiB.
const GATHER_CACHE_KIB: u32 = 4 << 10;

/// Catalog rows read per page while selecting tenants.
const CATALOG_PAGE: usize = 1000;

/// Tenants handed to a worker at once: one channel hand-off (and wake-up) per chunk, not per
/// tenant.
const HANDOFF: usize = 32;

/// A report's scratch database: a private directory holding `scratch.db`, removed when
/// dropped. (SQLite's own temporary files, for sorts and the like, are unlinked as soon as
/// they are created, so they go away with the connection.)
pub struct Scratch {
    dir: PathBuf,
    db: PathBuf,
}

impl Scratch {
    fn create(data_root: &Path) -> Result<Scratch> {
        let parent = data_root.join(SCRATCH_DIR);
        fsutil::ensure_dir(&parent).map_err(io_error("creating the reports directory", &parent))?;
        remove_stale(&parent);
        let dir = parent.join(format!("report-{:016x}", fsutil::nonce()));
        std::fs::create_dir(&dir)
            .map_err(io_error("creating a report's scratch directory", &dir))?;
        let db = dir.join("scratch.db");
        Ok(Scratch { dir, db })
    }

    /// A connection to the scratch database, configured for bulk loading and bounded memory:
    /// no sync (the file is thrown away), an in-memory rollback journal (a batch that meets a
    /// broken tenant is rolled back and copied again without it), temporary storage in files.
    pub fn open(&self, cache_kib: u32) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(super::file_uri(&self.db, "")?, flags)
            .context("opening a report's scratch database")?;
        analyze::harden(&conn)?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .context("setting a busy timeout")?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE; \
             PRAGMA cache_size = -{cache_kib};"
        ))
        .context("configuring a report's scratch database")?;
        Ok(conn)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing a report's scratch directory");
        }
    }
}

/// Removes scratch directories a crashed report left behind.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= STALE_SCRATCH_AGE);
        if old && entry.file_name().to_string_lossy().starts_with("report-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What gathering produced: the filled scratch database and the tally.
pub struct Gathered {
    pub scratch: Scratch,
    pub scanned: usize,
    pub skipped: Vec<SkippedTenant>,
}

#[derive(Default)]
struct Tally {
    scanned: usize,
    skipped: Vec<SkippedTenant>,
}

/// Fills a new scratch database with every selected tenant's rows of the tables `plan` reads.
pub fn gather(
    fleet: &Fleet,
    request: &ReportRequest,
    options: &super::ReportOptions,
    plan: &Plan,
    cancel: &Arc<AtomicBool>,
    progress: &dyn Progress,
) -> Result<Gathered> {
    let scratch = Scratch::create(fleet.layout().root())?;
    {
        let conn = scratch.open(GATHER_CACHE_KIB)?;
        let mut ddl = String::new();
        for read in &plan.reads {
            ddl.push_str(&read.create_sql());
            ddl.push_str(";\n");
        }
        conn.execute_batch(&ddl)
            .context("creating a report's scratch tables")?;
        analyze::create_views(&conn, &plan.views);
    }
    let mut tally = Tally::default();
    let total = selection_size(fleet, request)?;
    progress.start(total);
    let job = Job {
        fleet,
        request,
        options,
        plan,
        scratch: &scratch,
        cancel,
        progress,
    };
    let outcome = job.copy_all(&mut tally);
    progress.finish();
    outcome?;
    tally.skipped.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(Gathered {
        scratch,
        scanned: tally.scanned,
        skipped: tally.skipped,
    })
}

fn in_range(request: &ReportRequest, record: &TenantRecord) -> bool {
    request.created_after.is_none_or(|t| record.created_at >= t)
        && request.created_before.is_none_or(|t| record.created_at < t)
}

/// How many tenants the report will look at, for the progress bar.
fn selection_size(fleet: &Fleet, request: &ReportRequest) -> Result<u64> {
    if let Some(list) = &request.tenants {
        return Ok(list.len() as u64);
    }
    if request.created_after.is_none() && request.created_before.is_none() {
        let by_version = fleet.catalog().tenants_by_version()?;
        return Ok(by_version.iter().map(|(_, n)| n).sum());
    }
    let mut count = 0;
    each_live_tenant(fleet, |record| {
        count += u64::from(in_range(request, record));
        true
    })?;
    Ok(count)
}

/// Calls `f` with every live tenant in id order, a page of the catalog at a time, until it
/// returns false.
fn each_live_tenant(fleet: &Fleet, mut f: impl FnMut(&TenantRecord) -> bool) -> Result<()> {
    let mut after: Option<TenantId> = None;
    loop {
        let page =
            fleet
                .catalog()
                .list(after.as_ref().map(TenantId::as_str), CATALOG_PAGE, false)?;
        for record in &page {
            if !f(record) {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == CATALOG_PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// Everything one gathering run works with.
struct Job<'a> {
    fleet: &'a Fleet,
    request: &'a ReportRequest,
    options: &'a super::ReportOptions,
    plan: &'a Plan,
    scratch: &'a Scratch,
    cancel: &'a Arc<AtomicBool>,
    progress: &'a dyn Progress,
}

impl Job<'_> {
    /// Runs the workers and feeds them the selected tenants; adds what they did to `tally`.
    fn copy_all(&self, tally: &mut Tally) -> Result<()> {
        let Job {
            fleet,
            request,
            options,
            plan,
            scratch,
            cancel,
            progress,
        } = *self;
        let batch_tenants = options
            .batch_tenants
            .clamp(1, crate::fleet::REQUIRED_MAX_ATTACHED as usize);
        let (tx, rx) = sync_channel::<Vec<TenantId>>(4);
        let queue = Mutex::new(Some(rx));
        let writer = Mutex::new(());
        let failed = AtomicBool::new(false);
        let shared = Mutex::new(std::mem::take(tally));
        let worker = Worker {
            fleet,
            plan,
            scratch,
            queue: &queue,
            writer: &writer,
            cancel,
            failed: &failed,
            progress,
            batch_tenants,
            batch_bytes: options.batch_bytes.max(1),
            tally: &shared,
        };
        let outcome = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..options.jobs.max(1))
                .map(|_| {
                    let worker = &worker;
                    scope.spawn(move || {
                        let _exit = WorkerExit(worker);
                        let result = worker.run();
                        if result.is_err() {
                            worker.failed.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                })
                .collect();
            let produced = produce(fleet, request, &tx, &failed, cancel, &shared, progress);
            drop(tx);
            let mut first_error = produced.err();
            for handle in handles {
                let result = handle.join().unwrap_or_else(|_| {
                    Err(Error::Config("a report worker thread panicked".into()))
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        *tally = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
        if cancelled(cancel) {
            return Err(interrupted());
        }
        outcome
    }
}

/// Sends the selected tenants to the workers; selected ids that are not live tenants go
/// straight to the skipped list.
fn produce(
    fleet: &Fleet,
    request: &ReportRequest,
    tx: &SyncSender<Vec<TenantId>>,
    failed: &AtomicBool,
    cancel: &AtomicBool,
    tally: &Mutex<Tally>,
    progress: &dyn Progress,
) -> Result<()> {
    let stop = || failed.load(Ordering::Relaxed) || cancelled(cancel);
    let skip = |tenant: &TenantId, reason: &str| {
        tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .skipped
            .push(SkippedTenant {
                tenant: tenant.clone(),
                reason: reason.to_string(),
            });
        progress.advance(1);
    };
    let mut chunk = Vec::with_capacity(HANDOFF);
    // Adds a tenant to the chunk, sending it when full; false once the workers are gone.
    let hand_off = |id: TenantId, chunk: &mut Vec<TenantId>| {
        chunk.push(id);
        chunk.len() < HANDOFF || tx.send(std::mem::take(chunk)).is_ok()
    };
    match &request.tenants {
        Some(list) => {
            let mut ids = list.clone();
            ids.sort();
            ids.dedup();
            for id in ids {
                if stop() {
                    break;
                }
                match fleet.catalog().tenant(&id)? {
                    // Deleted, purged and never-created tenants look the same.
                    Some(record) if record.state == TenantState::Active => {
                        if !in_range(request, &record) {
                            skip(&id, "created outside the requested time range");
                        } else if !hand_off(id, &mut chunk) {
                            break;
                        }
                    }
                    _ => skip(&id, "not found"),
                }
            }
        }
        None => each_live_tenant(fleet, |record| {
            if stop() {
                return false;
            }
            !in_range(request, record) || hand_off(record.id.clone(), &mut chunk)
        })?,
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
    }
    Ok(())
}

struct Worker<'a> {
    fleet: &'a Fleet,
    plan: &'a Plan,
    scratch: &'a Scratch,
    queue: &'a Mutex<Option<Receiver<Vec<TenantId>>>>,
    /// Held while a batch copies into the scratch database: one writer at a time, and no
    /// thread ever waits inside SQLite's busy handler for another.
    writer: &'a Mutex<()>,
    cancel: &'a Arc<AtomicBool>,
    failed: &'a AtomicBool,
    progress: &'a dyn Progress,
    batch_tenants: usize,
    batch_bytes: u64,
    tally: &'a Mutex<Tally>,
}

/// Runs when a worker thread ends, also by panicking: a panic stops the others, and once
/// the run is stopped the queue is closed, which wakes a producer waiting for room in it.
struct WorkerExit<'a, 'w>(&'a Worker<'w>);

impl Drop for WorkerExit<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
        }
        if self.0.stopped() {
            self.0
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }
}

/// A tenant attached in the current batch, with its copy statements prepared.
struct Attached<'c> {
    id: TenantId,
    statements: Vec<Statement<'c>>,
}

impl Worker<'_> {
    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || cancelled(self.cancel)
    }

    fn next_tenant(&self, local: &mut std::vec::IntoIter<TenantId>) -> Option<TenantId> {
        if let Some(id) = local.next() {
            return Some(id);
        }
        let chunk = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()?
            .recv()
            .ok()?;
        *local = chunk.into_iter();
        local.next()
    }

    fn run(&self) -> Result<()> {
        let mut conn = self.scratch.open(GATHER_CACHE_KIB)?;
        let cancel = Arc::clone(self.cancel);
        conn.progress_handler(1000, Some(move || cancel.load(Ordering::Relaxed)))
            .context("installing a progress handler")?;
        let slots: Vec<String> = (0..self.batch_tenants).map(|i| format!("t{i}")).collect();
        let mut local = Vec::new().into_iter();
        loop {
            if self.stopped() {
                return Ok(());
            }
            let (attached, skipped) = self.attach_batch(&conn, &slots, &mut local)?;
            if attached.is_empty() && skipped.is_empty() {
                return Ok(());
            }
            let in_batch = attached.len() + skipped.len();
            let outcome = self.copy_batch(&conn, attached);
            let detached = detach_all(&conn, &slots);
            let (scanned, mut failures) = outcome?;
            detached?;
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.scanned += scanned;
            tally.skipped.extend(skipped);
            tally.skipped.append(&mut failures);
            drop(tally);
            self.progress.advance(in_batch as u64);
        }
    }

    /// Attaches the next batch of tenants and prepares their copy statements. Tenants that
    /// cannot be attached or lack what the report reads are returned as skipped.
    fn attach_batch<'c>(
        &self,
        conn: &'c Connection,
        slots: &[String],
        local: &mut std::vec::IntoIter<TenantId>,
    ) -> Result<(Vec<Attached<'c>>, Vec<SkippedTenant>)> {
        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        let mut bytes = 0u64;
        while attached.len() < slots.len() && bytes < self.batch_bytes {
            if self.stopped() {
                break;
            }
            let Some(id) = self.next_tenant(local) else {
                break;
            };
            let path = self.fleet.layout().tenant_db(&id);
            let size = match std::fs::metadata(&path) {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    skipped.push(skip(&id, "deleted"));
                    continue;
                }
                Err(e) => {
                    skipped.push(skip(&id, &format!("unreadable: {e}")));
                    continue;
                }
            };
            let slot = &slots[attached.len()];
            if let Err(e) = attach(conn, &path, slot) {
                if is_fatal(&e) {
                    return Err(Error::Sqlite {
                        context: "attaching a tenant".into(),
                        source: e,
                    });
                }
                let reason = if path.exists() {
                    unreadable(&e)
                } else {
                    "deleted".to_string()
                };
                skipped.push(skip(&id, &reason));
                continue;
            }
            match prepare_copies(conn, slot, &self.plan.reads) {
                Ok(statements) => {
                    bytes += size;
                    attached.push(Attached { id, statements });
                }
                Err(e) => {
                    let reason =
                        lacking(conn, slot, &self.plan.reads).unwrap_or_else(|| unreadable(&e));
                    skipped.push(skip(&id, &reason));
                    detach(conn, slot)?;
                }
            }
        }
        Ok((attached, skipped))
    }

    /// Copies a batch inside one transaction: each tenant is read from one snapshot, and its
    /// read locks last only as long as this copy. A tenant that fails while being read is
    /// dropped and the batch copied again without it (the journal makes that rollback exact).
    fn copy_batch(
        &self,
        conn: &Connection,
        mut attached: Vec<Attached<'_>>,
    ) -> Result<(usize, Vec<SkippedTenant>)> {
        let mut failures = Vec::new();
        if attached.is_empty() {
            return Ok((0, failures));
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        'attempt: loop {
            conn.execute_batch("BEGIN IMMEDIATE")
                .context("starting a report batch")?;
            for i in 0..attached.len() {
                let tenant = &mut attached[i];
                for stmt in &mut tenant.statements {
                    if let Err(e) = stmt.execute([tenant.id.as_str()]) {
                        let _ = conn.execute_batch("ROLLBACK");
                        if is_fatal(&e) || cancelled(self.cancel) {
                            return Err(if cancelled(self.cancel) {
                                interrupted()
                            } else {
                                Error::Sqlite {
                                    context: "copying a tenant's rows".into(),
                                    source: e,
                                }
                            });
                        }
                        failures.push(skip(&tenant.id, &unreadable(&e)));
                        attached.remove(i);
                        continue 'attempt;
                    }
                }
            }
            conn.execute_batch("COMMIT")
                .context("committing a report batch")?;
            return Ok((attached.len(), failures));
        }
    }
}

fn skip(tenant: &TenantId, reason: &str) -> SkippedTenant {
    SkippedTenant {
        tenant: tenant.clone(),
        reason: reason.to_string(),
    }
}

fn attach(conn: &Connection, path: &Path, slot: &str) -> rusqlite::Result<()> {
    let uri = super::file_uri(path, "mode=ro").map_err(|e| {
        rusqlite::Error::InvalidPath(PathBuf::from(format!("{}: {e}", path.display())))
    })?;
    conn.prepare_cached("ATTACH DATABASE ?1 AS ?2")?
        .execute([uri.as_str(), slot])?;
    Ok(())
}

fn detach(conn: &Connection, slot: &str) -> Result<()> {
    conn.prepare_cached("DETACH DATABASE ?1")
        .and_then(|mut s| s.execute([slot]))
        .context("detaching a tenant")?;
    Ok(())
}

/// Detaches whatever is attached (after a batch, whether or not it succeeded).
fn detach_all(conn: &Connection, slots: &[String]) -> Result<()> {
    let attached: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_database_list WHERE seq >= 2")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .context("listing attached tenants")?;
    for name in attached {
        if slots.contains(&name) {
            detach(conn, &name)?;
        }
    }
    Ok(())
}

/// One `INSERT … SELECT` per table the report reads, for the tenant attached as `slot`.
/// Preparing fails when the tenant lacks a table or column.
fn prepare_copies<'c>(
    conn: &'c Connection,
    slot: &str,
    reads: &[TableRead],
) -> rusqlite::Result<Vec<Statement<'c>>> {
    reads
        .iter()
        .map(|read| {
            let mut target = quote(super::TENANT_COLUMN);
            let mut source = "?1".to_string();
            for c in &read.columns {
                target.push_str(", ");
                target.push_str(&quote(&c.name));
                source.push_str(", ");
                source.push_str(&quote(&c.name));
            }
            let table = quote(&read.table.name);
            conn.prepare(&format!(
                "INSERT INTO main.{table} ({target}) SELECT {source} FROM {}.{table}",
                quote(slot)
            ))
        })
        .collect()
}

/// Why a tenant cannot answer the report: the tables and columns its schema lacks, with its
/// schema version. `None` when nothing is missing (the error was something else).
fn lacking(conn: &Connection, slot: &str, reads: &[TableRead]) -> Option<String> {
    let mut missing = Vec::new();
    for read in reads {
        let present: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_xinfo(?1, ?2)")
            .and_then(|mut s| {
                s.query_map([read.table.name.as_str(), slot], |r| r.get(0))?
                    .collect()
            })
            .ok()?;
        if present.is_empty() {
            missing.push(format!("table {}", read.table.name));
            continue;
        }
        for c in &read.columns {
            if !present.iter().any(|p| p.eq_ignore_ascii_case(&c.name)) {
                missing.push(format!("column {}.{}", read.table.name, c.name));
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let version: Option<i64> = conn
        .query_row(&format!("PRAGMA {}.user_version", quote(slot)), [], |r| {
            r.get(0)
        })
        .ok();
    let at = version.map_or(String::new(), |v| format!(" (version {v})"));
    Some(format!("its schema{at} lacks {}", missing.join(", ")))
}

/// Errors that are about the scratch database or the process, not one tenant: they end the
/// report instead of skipping a tenant.
fn is_fatal(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::OutOfMemory | ErrorCode::OperationInterrupted)
    )
}

/// Why a tenant could not be read, for the skipped list.
fn unreadable(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("busy: {}", message(e))
        }
        _ => format!("unreadable: {}", message(e)),
    }
}

fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(code, Some(msg)) => format!("{msg} ({code})"),
        other => other.to_string(),
    }
}
