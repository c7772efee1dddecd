//! Fleet analytics (DESIGN section 9): who is active, how the fleet grows, how big tenants are,
//! which versions they run, and where the traffic goes.
//!
//! Request and write counts are kept in memory per tenant ([`Activity`]) and added to the
//! catalog in one transaction per flush, never with a catalog write per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::error::Result;
use crate::fleet::Fleet;
use crate::fsutil;
use crate::tenant_id::TenantId;
use crate::time::{format_utc, unix_now};

/// Activity counted since the last flush.
#[derive(Default)]
pub struct Activity {
    pending: Mutex<HashMap<TenantId, (u64, u64, i64)>>,
}

impl Activity {
    pub fn record(&self, id: &TenantId, requests: u64, writes: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Look up before inserting: a busy tenant's id is not copied on every request.
        let entry = match pending.get_mut(id) {
            Some(entry) => entry,
            None => pending.entry(id.clone()).or_default(),
        };
        entry.0 += requests;
        entry.1 += writes;
        entry.2 = unix_now();
    }

    fn take(&self) -> Vec<(TenantId, u64, u64, i64)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .drain()
            .map(|(id, (r, w, at))| (id, r, w, at))
            .collect()
    }
}

/// Counters of fleet events since the process started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub tenants_provisioned: std::sync::atomic::AtomicU64,
    pub migrations_applied: std::sync::atomic::AtomicU64,
    pub migrations_failed: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantCount {
    pub tenant: TenantId,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub total_bytes: u64,
    pub p50_bytes: u64,
    pub p99_bytes: u64,
    pub largest: Vec<TenantCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheView {
    pub open_tenants: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Hits over lookups since start; `null` before the first lookup.
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStats {
    pub tenants_total: u64,
    pub active_1d: u64,
    pub active_7d: u64,
    pub active_30d: u64,
    /// Day (UTC, `YYYY-MM-DD`) to tenants created that day, for the last 30 days.
    pub signups_per_day: BTreeMap<String, u64>,
    pub sizes: Sizes,
    pub schema_versions: BTreeMap<u32, u64>,
    pub requests_total: u64,
    pub writes_total: u64,
    pub top_requests: Vec<TenantCount>,
    pub top_writes: Vec<TenantCount>,
    pub cache: CacheView,
}

fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Fleet {
    /// Counts one request (and the writes it ran) for a tenant, in memory.
    pub fn record_activity(&self, id: &TenantId, writes: u64) {
        self.activity().record(id, 1, writes);
    }

    /// Adds the activity counted so far to the catalog, in one transaction. Servers call it
    /// every few seconds and at shutdown.
    pub fn flush_activity(&self) -> Result<()> {
        let batch = self.activity().take();
        self.catalog().add_activity(&batch)
    }

    pub fn stats(&self) -> Result<FleetStats> {
        self.flush_activity()?;
        let now = unix_now();
        let records = self.catalog().list(None, usize::MAX, false)?;
        let since = |days: i64| {
            records
                .iter()
                .filter(|r| r.last_active_at.is_some_and(|t| t >= now - days * 86_400))
                .count() as u64
        };
        let mut signups_per_day = BTreeMap::new();
        for r in records.iter().filter(|r| r.created_at >= now - 30 * 86_400) {
            let day = format_utc(r.created_at)[..10].to_string();
            *signups_per_day.entry(day).or_insert(0) += 1;
        }
        let mut schema_versions = BTreeMap::new();
        for r in &records {
            *schema_versions.entry(r.schema_version).or_insert(0) += 1;
        }
        let mut sized: Vec<(u64, &TenantId)> = records
            .iter()
            .map(|r| {
                (
                    fsutil::database_size(&self.layout().tenant_db(&r.id)),
                    &r.id,
                )
            })
            .collect();
        sized.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut ascending: Vec<u64> = sized.iter().map(|(s, _)| *s).collect();
        ascending.reverse();
        let top = |column: &str| -> Result<Vec<TenantCount>> {
            self.catalog().with_conn(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT id, {column} FROM tenants WHERE state = 'active' AND {column} > 0 \
                     ORDER BY {column} DESC, id LIMIT 10"
                ))?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, n) = row?;
                    if let Ok(tenant) = TenantId::new(id) {
                        out.push(TenantCount {
                            tenant,
                            count: n.max(0) as u64,
                        });
                    }
                }
                Ok(out)
            })
        };
        let (requests_total, writes_total) = self.catalog().with_conn(|c| {
            c.query_row(
                "SELECT coalesce(sum(requests), 0), coalesce(sum(writes), 0) FROM tenants",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                    ))
                },
            )
        })?;
        let cache = &self.cache().stats;
        let (hits, misses) = (
            cache.hits.load(Ordering::Relaxed),
            cache.misses.load(Ordering::Relaxed),
        );
        Ok(FleetStats {
            tenants_total: records.len() as u64,
            active_1d: since(1),
            active_7d: since(7),
            active_30d: since(30),
            signups_per_day,
            sizes: Sizes {
                total_bytes: ascending.iter().sum(),
                p50_bytes: nearest_rank(&ascending, 0.50),
                p99_bytes: nearest_rank(&ascending, 0.99),
                largest: sized
                    .iter()
                    .take(5)
                    .map(|(s, id)| TenantCount {
                        tenant: (*id).clone(),
                        count: *s,
                    })
                    .collect(),
            },
            schema_versions,
            requests_total,
            writes_total,
            top_requests: top("requests")?,
            top_writes: top("writes")?,
            cache: CacheView {
                open_tenants: self.cache().len(),
                hits,
                misses,
                evictions: cache.evictions.load(Ordering::Relaxed),
                hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50);
        assert_eq!(nearest_rank(&v, 0.99), 99);
        assert_eq!(nearest_rank(&[], 0.5), 0);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
    }
}
