//! The shared database being moved in: checked to be SQLite, fingerprinted, and opened
//! read-only. The import never writes to it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};

const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How much memory the source connection may use for its page cache and for sorting rows by
/// tenant; larger sorts spill to temporary files.
const SOURCE_CACHE_KIB: i64 = 32 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub path: PathBuf,
    /// sha256 of the database file (and of its write-ahead log, when there is one).
    pub sha256: String,
    wal_mode: bool,
    stamp: Stamp,
}

/// What a file looked like: enough to notice that it changed under us.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(u64, Option<SystemTime>)>);

impl Source {
    /// Checks that `path` is a SQLite database and fingerprints it.
    pub(crate) fn inspect(path: &Path) -> Result<Source> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Config(format!("cannot read the source database {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(Error::Config(format!(
                "the source {shown} is not a file; --from takes the shared SQLite database file"
            )));
        }
        let mut header = [0u8; 100];
        let read = File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut header))
            .map_err(|e| Error::Config(format!("cannot read the source database {shown}: {e}")))?;
        if read < header.len() || &header[..16] != HEADER {
            let what = if read == 0 {
                "it is empty".to_string()
            } else {
                "it does not start with the SQLite file header".to_string()
            };
            return Err(Error::Config(format!(
                "the source {shown} is not a SQLite database ({what}); --from takes the shared \
                 SQLite database file"
            )));
        }
        let path = std::fs::canonicalize(path)
            .map_err(|e| Error::Config(format!("cannot resolve the source {shown}: {e}")))?;
        let wal_mode = header[18] == 2 && header[19] == 2;
        let stamp = stamp(&path);
        let sha256 = checksum(&path)?;
        Ok(Source {
            path,
            sha256,
            wal_mode,
            stamp,
        })
    }

    /// A read-only connection. A WAL database whose log is absent is opened `immutable`, so
    /// reading it creates no `-wal`/`-shm` files beside it; otherwise the log is read too.
    pub(crate) fn open(&self) -> Result<Connection> {
        let wal = crate::fsutil::side_file(&self.path, "-wal");
        let mode = if self.wal_mode && !wal.exists() {
            "immutable=1"
        } else {
            "mode=ro"
        };
        let uri = format!("file:{}?{mode}", uri_path(&self.path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&uri, flags).map_err(|e| self.unreadable(e))?;
        conn.execute_batch(&format!(
            "PRAGMA trusted_schema = OFF; PRAGMA query_only = ON; \
             PRAGMA cache_size = -{SOURCE_CACHE_KIB};"
        ))
        .map_err(|e| self.unreadable(e))?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| self.unreadable(e))?;
        Ok(conn)
    }

    fn unreadable(&self, e: rusqlite::Error) -> Error {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            return Error::Config(format!(
                "the source {} is not a SQLite database (SQLite: {e})",
                self.path.display()
            ));
        }
        Error::Sqlite {
            context: format!("reading the source {}", self.path.display()),
            source: e,
        }
    }

    /// Refuses to go on when the source changed since it was fingerprinted: the plan (and the
    /// checksum every tenant records) would no longer describe it.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        if stamp(&self.path) != self.stamp {
            return Err(Error::Config(format!(
                "the source {} changed since the import was planned; stop writes to it (or \
                 import a copy) and run the import again",
                self.path.display()
            )));
        }
        Ok(())
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn stamp(path: &Path) -> Stamp {
    let files = [path.to_path_buf(), crate::fsutil::side_file(path, "-wal")];
    Stamp(
        files
            .iter()
            .map(|p| match std::fs::metadata(p) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (0, None),
            })
            .collect(),
    )
}

fn checksum(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let wal = crate::fsutil::side_file(path, "-wal");
    for file in [path, wal.as_path()] {
        let mut f = match File::open(file) {
            Ok(f) => f,
            Err(e) if file == wal && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::error::io_error("reading the source", file)(e)),
        };
        loop {
            let n = f
                .read(&mut buf)
                .map_err(crate::error::io_error("reading the source", file))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A path as the path part of a `file:` URI: everything but unreserved characters and `/`
/// percent-encoded, so `?`, `#` and `%` in a file name stay part of the name.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens the tenant template read-only and `immutable`: it is only ever replaced by a rename,
/// never changed in place, and opening it normally would leave `-wal`/`-shm` files beside it.
pub(crate) fn open_template(path: &Path) -> Result<Connection> {
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(&uri, flags).context("opening the tenant template")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_escape_what_uris_treat_specially() {
        assert_eq!(
            uri_path(Path::new("/a/b c?d#e%f.db")),
            "/a/b%20c%3Fd%23e%25f.db"
        );
    }
}
