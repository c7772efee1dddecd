use std::path::PathBuf;

use crate::guard::GuardConfig;

/// How a [`crate::Fleet`] runs. `Config::new(dir)` gives the defaults a server uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Tenants kept open in the connection cache. Each costs a few file descriptors and up to
    /// 512 KiB of page cache per connection; 1,000 keeps a busy server's working set warm.
    pub cache_capacity: usize,
    /// Idle connections kept per cached tenant (more are opened while a tenant is busy).
    pub idle_connections_per_tenant: usize,
    pub guard: GuardConfig,
    /// Sync the write-ahead log on every commit (`synchronous=FULL`) so that even a power loss
    /// cannot roll back an acknowledged write. Off by default: see [`crate::connection`].
    pub sync_every_commit: bool,
    /// Append every write by user SQL to the tenant's `_tenantdb_audit` (see [`crate::audit`]).
    pub audit_writes: bool,
    /// Compare files with catalog rows when opening (see [`crate::reconcile`]).
    pub reconcile_on_open: bool,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            cache_capacity: 1000,
            idle_connections_per_tenant: 2,
            guard: GuardConfig::default(),
            sync_every_commit: false,
            audit_writes: true,
            reconcile_on_open: true,
        }
    }
}
