//! The data directory's shape (DESIGN section 3). This is the only module that turns a tenant
//! id into a path, so a later move of tenants between nodes or storage has one place to change.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tenant_id::TenantId;

pub const CATALOG_FILE: &str = "catalog.db";
pub const TEMPLATE_FILE: &str = "template.db";
pub const TENANTS_DIR: &str = "tenants";
pub const TRASH_DIR: &str = "trash";
pub const SERVING_LOCK_FILE: &str = "serving.lock";

/// SQLite keeps these beside a database file; they move and vanish with it.
pub const SIDE_FILE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn catalog(&self) -> PathBuf {
        self.root.join(CATALOG_FILE)
    }

    pub fn template(&self) -> PathBuf {
        self.root.join(TEMPLATE_FILE)
    }

    pub fn tenants_dir(&self) -> PathBuf {
        self.root.join(TENANTS_DIR)
    }

    /// See [`crate::serving`].
    pub fn serving_lock(&self) -> PathBuf {
        self.root.join(SERVING_LOCK_FILE)
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.root.join(TRASH_DIR)
    }

    /// `tenants/<hh>/`, where hh is the first byte of sha256(id) in hex: 256 directories keep
    /// each one small even with millions of tenants, and the hash spreads sequential ids.
    pub fn shard_dir(&self, id: &TenantId) -> PathBuf {
        self.tenants_dir().join(shard(id))
    }

    pub fn tenant_db(&self, id: &TenantId) -> PathBuf {
        self.shard_dir(id).join(format!("{id}.db"))
    }

    /// Where a tenant's files wait, under a unique name, until they are copied into place.
    pub fn tenant_staging(&self, id: &TenantId, nonce: u64) -> PathBuf {
        self.shard_dir(id).join(format!(".{id}.{nonce}.creating"))
    }

    pub fn trashed_db(&self, id: &TenantId, unix_seconds: i64) -> PathBuf {
        self.trash_dir().join(format!("{id}.{unix_seconds}.db"))
    }

    /// Parses a trash file name back into its tenant and deletion time.
    pub fn parse_trashed(name: &str) -> Option<(TenantId, i64)> {
        let stem = name.strip_suffix(".db")?;
        let (id, unix) = stem.rsplit_once('.')?;
        Some((TenantId::new(id).ok()?, unix.parse().ok()?))
    }

    /// Parses a file name found under `tenants/<hh>/` back into a tenant id, if it is one of
    /// ours and sits in the shard its id hashes to.
    pub fn parse_tenant_file(&self, shard_name: &str, file_name: &str) -> Option<TenantId> {
        let id = TenantId::new(file_name.strip_suffix(".db")?).ok()?;
        (shard(&id) == shard_name).then_some(id)
    }
}

fn shard(id: &TenantId) -> String {
    let digest = Sha256::digest(id.as_str().as_bytes());
    hex::encode(&digest[..1])
}

#[cfg(test)]
mod tests {
    use std::path::Component;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn shards_by_hash() {
        let layout = Layout::new("/data");
        let id = TenantId::new("user_1").unwrap();
        let path = layout.tenant_db(&id);
        assert_eq!(path.file_name().unwrap(), "user_1.db");
        let shard = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(shard.len(), 2);
        assert_eq!(layout.parse_tenant_file(shard, "user_1.db"), Some(id));
        assert_eq!(layout.parse_tenant_file("zz", "user_1.db"), None);
    }

    #[test]
    fn trash_names_round_trip() {
        let layout = Layout::new("/data");
        let id = TenantId::new("user-9_x").unwrap();
        let path = layout.trashed_db(&id, 1_700_000_000);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(Layout::parse_trashed(name), Some((id, 1_700_000_000)));
    }

    proptest! {
        /// Whatever string is offered, an id that passes validation names a file exactly two
        /// levels below `tenants/`, with only normal path components on the way.
        #[test]
        fn accepted_ids_stay_inside_tenants(raw in "\\PC{0,140}|[A-Za-z0-9_.%/-]{0,140}") {
            if let Ok(id) = TenantId::new(raw) {
                let layout = Layout::new("/data");
                let path = layout.tenant_db(&id);
                let rel = path.strip_prefix(layout.tenants_dir()).unwrap();
                let parts: Vec<_> = rel.components().collect();
                prop_assert_eq!(parts.len(), 2);
                prop_assert!(parts.iter().all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(path.starts_with("/data/tenants"));
                for staged in [layout.tenant_staging(&id, 7), layout.trashed_db(&id, 1)] {
                    prop_assert!(staged.components().all(|c| !matches!(c, Component::ParentDir)));
                }
            }
        }
    }
}
