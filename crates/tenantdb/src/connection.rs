//! How tenant and catalog databases are opened, and why with these settings.
//!
//! Tenant databases use WAL with `synchronous=NORMAL`. Measured on the 2-core machines this
//! project targets, against the rollback journal:
//! - a cold open plus first point query costs about 200 us in WAL against 65 us in rollback
//!   mode, but a warm point query on a cached connection costs 4 us against 7-8 us (rollback
//!   mode takes and drops file locks and re-reads the header on every read transaction);
//! - a small autocommit write costs about 12 us against 500-750 us (rollback mode syncs the
//!   journal and the database on every commit);
//! - readers never block the writer, so reports and exports can read a tenant that is serving.
//!
//! Servers keep hot tenants open in the connection cache, so the warm path and writes dominate,
//! and WAL wins. `synchronous=NORMAL` never corrupts a database and loses nothing when the
//! process dies; only a power loss can roll back the last commits, which
//! [`crate::Config::sync_every_commit`] trades for an fsync per commit.
//!
//! Each connection's page cache is capped at 512 KiB: per-user databases are small, a server
//! keeps a thousand of them open, and the OS page cache holds the rest.
//!
//! Tenant connections keep the `-wal` and `-shm` files when they close
//! (`SQLITE_FCNTL_PERSIST_WAL`). By default the last connection to close a WAL database deletes
//! both, so every cold open creates two files and every eviction deletes two. File creation is
//! the most expensive step of an open, and on the ext4 of these machines (mounted without a
//! journal) each creation also scans past every recently deleted inode, so the churn feeds
//! itself: `tenantdb-bench open` measured a cold open at 1.0-1.8 ms deleting the files and at
//! 260-290 us keeping them. The price is two inodes and a 32 KiB `-shm` per tenant ever opened;
//! the log itself is truncated to zero bytes on close (any `journal_size_limit` makes SQLite
//! do that for a persistent log), and the limit also trims it after checkpoints.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, FileControl, MAIN_DB, OpenFlags};

use crate::error::{Context, Error, Result};

/// How long a connection waits for another writer before reporting the database busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const TENANT_PAGE_CACHE_KIB: i64 = 512;

/// Bytes of write-ahead log kept after a checkpoint; see the module documentation.
const WAL_SIZE_LIMIT: i64 = 4 << 20;

/// Opens an existing tenant database. Never creates one: a missing file is an error, not a new
/// empty tenant.
pub fn open_tenant(path: &Path, sync_every_commit: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).context("opening a tenant database")?;
    // When the read-write open fails, SQLite quietly tries read-only. For a file that another
    // thread is creating, the first try can miss it and the second find it: a read-only
    // connection that would refuse every write of the tenant it serves. Refuse it instead; the
    // caller's retry then opens the file read-write.
    if conn
        .is_readonly(MAIN_DB)
        .context("opening a tenant database")?
    {
        return Err(Error::Sqlite {
            context: "opening a tenant database".into(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some("the database file could only be opened read-only".into()),
            ),
        });
    }
    // Keep `-wal` and `-shm` on close: see the module documentation.
    conn.file_control(Some(MAIN_DB), FileControl::PersistWal(&mut 1))
        .context("keeping the write-ahead log")?;
    configure(&conn, sync_every_commit)?;
    Ok(conn)
}

/// Creates a fresh database file (the template, a staging copy) in WAL mode.
pub fn create_database(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).context("creating a database")?;
    conn.execute_batch("PRAGMA journal_mode = WAL")
        .context("switching to WAL")?;
    configure(&conn, true)?;
    Ok(conn)
}

fn configure(conn: &Connection, sync_every_commit: bool) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .context("setting busy timeout")?;
    let synchronous = if sync_every_commit { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA cache_size = -{TENANT_PAGE_CACHE_KIB}; \
         PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
    ))
    .context("configuring a connection")
}
