//! Which process serves a data directory.
//!
//! A server keeps tenants' connections open across requests. If another process moved a
//! tenant's files meanwhile (a deletion or a restore from the command line), the server would
//! go on reading and writing the file it still holds open, now in the trash, and answer from a
//! database that is no longer the tenant's. So a server claims the directory with an advisory
//! lock on `serving.lock`, and lifecycle changes from any other process are refused while it
//! holds it: they go through the server (the admin API), which closes the tenant's
//! connections first. The lock is the kernel's, so it ends with the process, however it ends.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result, io_error};
use crate::layout::Layout;

/// Held by the one process serving a data directory, for as long as it serves.
#[derive(Debug)]
pub struct ServingLock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error("opening the serving lock", path))
}

impl ServingLock {
    /// Claims the data directory; fails if another process serves it.
    pub fn acquire(layout: &Layout) -> Result<ServingLock> {
        let path = layout.serving_lock();
        let file = open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(ServingLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::ServedElsewhere(layout.root().into())),
            Err(TryLockError::Error(e)) => Err(io_error("locking the data directory", &path)(e)),
        }
    }

    /// Whether some process (possibly this one, through another handle) serves the directory
    /// right now.
    pub fn is_held(layout: &Layout) -> Result<bool> {
        let path = layout.serving_lock();
        if !path.exists() {
            return Ok(false);
        }
        let file = open(&path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(io_error("checking the serving lock", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let tmp = tempfile::TempDir::new().unwrap();
        let layout = Layout::new(tmp.path());
        assert!(!ServingLock::is_held(&layout).unwrap());
        let held = ServingLock::acquire(&layout).unwrap();
        assert!(ServingLock::is_held(&layout).unwrap());
        assert!(matches!(
            ServingLock::acquire(&layout),
            Err(Error::ServedElsewhere(_))
        ));
        drop(held);
        assert!(!ServingLock::is_held(&layout).unwrap());
        ServingLock::acquire(&layout).unwrap();
    }
}
