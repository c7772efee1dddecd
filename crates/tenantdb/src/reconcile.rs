//! Start-up reconciliation: tenant files against catalog rows.
//!
//! Creation writes the file before the catalog row, and deletion writes the tombstone before
//! moving the file, so after a crash the two can disagree in known ways. This finishes what was
//! interrupted and reports everything else; it never deletes a database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::catalog::{Catalog, TenantState};
use crate::connection;
use crate::error::{Result, io_error};
use crate::fsutil;
use crate::layout::Layout;
use crate::migrate;
use crate::tenant_id::TenantId;

/// Staging files younger than this may belong to a creation still running in another process.
const STAGING_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Complete tenant files without a catalog row (a creation interrupted after its copy
    /// landed): registered as tenants.
    pub adopted: Vec<TenantId>,
    /// Tenants marked deleted whose files were still in place: moved to trash.
    pub finished_deletions: Vec<TenantId>,
    /// Live tenants whose database file is missing. Left as they are, for an operator.
    pub missing: Vec<TenantId>,
    /// Leftover staging copies of interrupted creations, removed.
    pub removed_staging: Vec<PathBuf>,
    /// Files under `tenants/` that are not tenant databases. Left alone.
    pub unknown_files: Vec<PathBuf>,
}

impl ReconcileReport {
    pub fn is_clean(&self) -> bool {
        self.adopted.is_empty()
            && self.finished_deletions.is_empty()
            && self.missing.is_empty()
            && self.removed_staging.is_empty()
            && self.unknown_files.is_empty()
    }
}

pub fn run(layout: &Layout, catalog: &Catalog) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let records: HashMap<TenantId, _> = catalog
        .all_tenants()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut present = std::collections::HashSet::new();
    let tenants = layout.tenants_dir();
    let shards = std::fs::read_dir(&tenants).map_err(io_error("scanning tenants", &tenants))?;
    for shard in shards {
        let shard = shard.map_err(io_error("scanning tenants", &tenants))?;
        let shard_path = shard.path();
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        if !shard_path.is_dir() {
            report.unknown_files.push(shard_path);
            continue;
        }
        let files =
            std::fs::read_dir(&shard_path).map_err(io_error("scanning a shard", &shard_path))?;
        for file in files {
            let file = file.map_err(io_error("scanning a shard", &shard_path))?;
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".creating") {
                if is_stale(&path) {
                    let _ = std::fs::remove_file(&path);
                    report.removed_staging.push(path);
                }
                continue;
            }
            if crate::layout::SIDE_FILE_SUFFIXES
                .iter()
                .any(|s| name.ends_with(&format!(".db{s}")))
            {
                continue;
            }
            let Some(id) = layout.parse_tenant_file(&shard_name, &name) else {
                report.unknown_files.push(path);
                continue;
            };
            present.insert(id.clone());
            match records.get(&id).map(|r| (r.state, r.trash_file.clone())) {
                Some((TenantState::Active, _)) => {}
                Some((TenantState::Deleted, Some(trash_name))) => {
                    let target = layout.trash_dir().join(trash_name);
                    if !target.exists() {
                        fsutil::move_no_replace(&path, &target)
                            .map_err(io_error("finishing a deletion", &path))?;
                        let wal = fsutil::side_file(&path, "-wal");
                        if wal.exists() {
                            let _ =
                                fsutil::move_no_replace(&wal, &fsutil::side_file(&target, "-wal"));
                        }
                        report.finished_deletions.push(id);
                    } else {
                        report.unknown_files.push(path);
                    }
                }
                Some(_) => report.unknown_files.push(path),
                None => {
                    let version = connection::open_tenant(&path, false)
                        .and_then(|c| migrate::user_version(&c));
                    match version {
                        Ok(v) => {
                            catalog.insert_tenant(&id, v)?;
                            catalog.audit("reconcile", "tenant.adopt", Some(&id), None)?;
                            report.adopted.push(id);
                        }
                        Err(_) => report.unknown_files.push(path),
                    }
                }
            }
        }
    }
    for (id, record) in &records {
        if record.state == TenantState::Active && !present.contains(id) {
            report.missing.push(id.clone());
        }
    }
    report.missing.sort();
    for id in &report.adopted {
        tracing::warn!(tenant = %id, "adopted a tenant file that had no catalog row");
    }
    for id in &report.missing {
        tracing::error!(tenant = %id, "tenant database file is missing");
    }
    for path in &report.unknown_files {
        tracing::warn!(path = %path.display(), "unexpected file under tenants/");
    }
    Ok(report)
}

fn is_stale(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_none_or(|age| age > STAGING_GRACE)
}
