//! Durable file operations: what "it is on disk" means for creation, deletion and restore.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Copies `from` into a new file `to` (which must not exist) and syncs its contents.
pub fn copy_synced(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = File::options().write(true).create_new(true).open(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

/// Moves `from` to `to` without ever replacing an existing `to`: a hard link fails when the
/// target exists, where a rename would silently clobber a tenant's data.
pub fn move_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Creates `dir` (and parents) and syncs the parent when it was new, so a later file renamed
/// into it survives a crash.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        // A one-word relative path's parent is "", the current directory.
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// A value unique within this machine's running processes, for temporary file names.
pub fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 32) | (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

/// Size of a database and its write-ahead log, in bytes (0 for missing files).
pub fn database_size(db: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    len(db) + len(Path::new(&wal))
}

/// The path of a side file SQLite keeps beside `db` (`-wal`, `-shm`, `-journal`).
pub fn side_file(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// Reads `user_version` (the big-endian u32 at offset 60) from a database file's header.
/// Only meaningful when no write-ahead log holds newer pages: a template, or a file with no
/// `-wal` beside it.
pub fn header_user_version(db: &Path) -> Option<u32> {
    let mut header = [0u8; 100];
    let mut file = File::open(db).ok()?;
    io::Read::read_exact(&mut file, &mut header).ok()?;
    if &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    Some(u32::from_be_bytes([
        header[60], header[61], header[62], header[63],
    ]))
}
