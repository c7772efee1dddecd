//! The connection cache: open tenant connections kept for reuse, bounded by the number of
//! tenants held, least recently used first out.
//!
//! - Single flight: when many requests arrive for a tenant that is not open, one of them opens
//!   it (and migrates it if it is behind) while the others wait for that result.
//! - Eviction never pulls a connection from under its user: an evicted tenant's idle
//!   connections are closed, and busy ones are closed when their user hands them back.
//!   [`Cache::evict_and_wait`] additionally waits for those users, for deletion.
//! - Closing a WAL database checkpoints it (tens of microseconds and an fsync), so evicted
//!   connections are closed on a background thread, off the request path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::session::TenantConnection;
use crate::tenant_id::TenantId;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the state consistent between statements, so a panic
    // elsewhere while holding the lock does not make the data unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters for metrics and stats.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    ready: bool,
    /// Set once the slot left the cache: connections handed back are closed, not pooled.
    closed: bool,
    idle: Vec<TenantConnection>,
    in_use: usize,
}

/// One tenant's connections.
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: Mutex::new(SlotState::default()),
            changed: Condvar::new(),
        }
    }
}

struct Entry {
    slot: Arc<Slot>,
    tick: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<TenantId, Entry>,
    by_age: BTreeMap<u64, TenantId>,
    tick: u64,
    /// Slots evicted while connections may still be leased from them. Held weakly (a lease
    /// keeps its slot alive), so deletion can wait for those users too.
    retired: Vec<(TenantId, Weak<Slot>)>,
    /// Tenants whose files are being moved (deletion): nobody may open them meanwhile.
    fenced: HashSet<TenantId>,
}

impl Index {
    fn touch(&mut self, id: &TenantId) -> Option<Arc<Slot>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(id)?;
        self.by_age.remove(&entry.tick);
        entry.tick = tick;
        self.by_age.insert(tick, id.clone());
        Some(Arc::clone(&entry.slot))
    }

    fn insert(&mut self, id: &TenantId, slot: Arc<Slot>) {
        self.tick += 1;
        self.by_age.insert(self.tick, id.clone());
        self.entries.insert(
            id.clone(),
            Entry {
                slot,
                tick: self.tick,
            },
        );
    }

    fn remove(&mut self, id: &TenantId) -> Option<Arc<Slot>> {
        let entry = self.entries.remove(id)?;
        self.by_age.remove(&entry.tick);
        Some(entry.slot)
    }

    fn retire(&mut self, id: TenantId, slot: &Arc<Slot>) {
        self.retired.retain(|(_, s)| s.strong_count() > 0);
        self.retired.push((id, Arc::downgrade(slot)));
    }

    /// Removes `id` from the cache; returns its slot and every evicted slot of it that still
    /// has users.
    fn remove_all(&mut self, id: &TenantId) -> Vec<Arc<Slot>> {
        let mut slots: Vec<Arc<Slot>> = self
            .retired
            .iter()
            .filter(|(t, _)| t == id)
            .filter_map(|(_, s)| s.upgrade())
            .collect();
        slots.extend(self.remove(id));
        slots
    }
}

enum CloserJob {
    Close(Box<TenantConnection>),
    /// Answered once every connection queued before it is closed.
    Flush(Sender<()>),
}

/// A counting gate: at most `limit` holders at once.
struct Gate {
    held: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

impl Gate {
    fn enter(&self) -> GateTicket<'_> {
        let mut held = lock(&self.held);
        while *held >= self.limit {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += 1;
        GateTicket(self)
    }
}

struct GateTicket<'a>(&'a Gate);

impl Drop for GateTicket<'_> {
    fn drop(&mut self) {
        *lock(&self.0.held) -= 1;
        self.0.freed.notify_one();
    }
}

pub struct Cache {
    index: Mutex<Index>,
    /// Cold opens run at most one per core at once. An open is mostly system calls (and, for a
    /// tenant never opened before, file creation); a burst of them would otherwise take every
    /// core and stall the requests of tenants that are already open.
    opening: Gate,
    capacity: usize,
    idle_per_tenant: usize,
    closer: Mutex<Option<Sender<CloserJob>>>,
    closer_thread: Mutex<Option<JoinHandle<()>>>,
    pub stats: CacheStats,
}

/// A connection checked out of the cache. Handing it back (dropping it) returns it to its
/// tenant's idle list, or closes it if the tenant left the cache or user SQL changed the
/// connection's own state.
pub struct Lease {
    conn: Option<TenantConnection>,
    slot: Arc<Slot>,
    cache: Arc<Cache>,
}

impl Cache {
    pub fn new(capacity: usize, idle_per_tenant: usize) -> Arc<Cache> {
        let (tx, rx) = mpsc::channel::<CloserJob>();
        let thread = std::thread::Builder::new()
            .name("tenantdb-closer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        CloserJob::Close(conn) => drop(conn),
                        CloserJob::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok();
        Arc::new(Cache {
            index: Mutex::new(Index::default()),
            opening: Gate {
                held: Mutex::new(0),
                freed: Condvar::new(),
                limit: std::thread::available_parallelism().map_or(2, |n| n.get()),
            },
            capacity: capacity.max(1),
            idle_per_tenant: idle_per_tenant.max(1),
            closer: Mutex::new(Some(tx)),
            closer_thread: Mutex::new(thread),
            stats: CacheStats::default(),
        })
    }

    /// Checks out a connection to `id`. `open` makes a new connection; it runs outside every
    /// lock, and for a tenant not in the cache only one caller at a time runs it.
    pub fn checkout(
        self: &Arc<Self>,
        id: &TenantId,
        open: impl Fn(bool) -> Result<TenantConnection>,
    ) -> Result<Lease> {
        loop {
            let (slot, opener) = {
                let mut index = lock(&self.index);
                if index.fenced.contains(id) {
                    return Err(Error::TenantDeleted(id.to_string()));
                }
                match index.touch(id) {
                    Some(slot) => (slot, false),
                    None => {
                        let slot = Arc::new(Slot::new());
                        index.insert(id, Arc::clone(&slot));
                        (slot, true)
                    }
                }
            };
            if opener {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                match self.open_first(id, slot, &open)? {
                    Some(lease) => return Ok(lease),
                    // Evicted (or fenced) while opening: start over.
                    None => continue,
                }
            }
            let mut state = lock(&slot.state);
            while !state.ready && !state.closed {
                state = slot.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.closed {
                // The opener failed or the tenant was evicted meanwhile: start over.
                continue;
            }
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            state.in_use += 1;
            let pooled = state.idle.pop();
            drop(state);
            let conn = match pooled {
                Some(conn) => conn,
                None => match open(false) {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.release(&slot, None);
                        return Err(e);
                    }
                },
            };
            return Ok(Lease {
                conn: Some(conn),
                slot,
                cache: Arc::clone(self),
            });
        }
    }

    /// A connection to `id` only if one sits idle in the cache: it never opens a database and
    /// never waits, so an async server may call it on an executor thread.
    pub fn checkout_idle(self: &Arc<Self>, id: &TenantId) -> Option<Lease> {
        let slot = {
            let mut index = lock(&self.index);
            if index.fenced.contains(id) {
                return None;
            }
            index.touch(id)?
        };
        let mut state = lock(&slot.state);
        if !state.ready || state.closed {
            return None;
        }
        let conn = state.idle.pop()?;
        state.in_use += 1;
        drop(state);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            conn: Some(conn),
            slot,
            cache: Arc::clone(self),
        })
    }

    fn open_first(
        self: &Arc<Self>,
        id: &TenantId,
        slot: Arc<Slot>,
        open: &impl Fn(bool) -> Result<TenantConnection>,
    ) -> Result<Option<Lease>> {
        let opened = {
            let _ticket = self.opening.enter();
            open(true)
        };
        match opened {
            Ok(conn) => {
                let mut state = lock(&slot.state);
                if state.closed {
                    drop(state);
                    self.close(conn);
                    return Ok(None);
                }
                state.ready = true;
                state.in_use += 1;
                drop(state);
                slot.changed.notify_all();
                self.enforce_capacity();
                Ok(Some(Lease {
                    conn: Some(conn),
                    slot,
                    cache: Arc::clone(self),
                }))
            }
            Err(e) => {
                let mut index = lock(&self.index);
                if index
                    .entries
                    .get(id)
                    .is_some_and(|e| Arc::ptr_eq(&e.slot, &slot))
                {
                    index.remove(id);
                }
                drop(index);
                lock(&slot.state).closed = true;
                slot.changed.notify_all();
                Err(e)
            }
        }
    }

    fn enforce_capacity(&self) {
        let mut evicted = Vec::new();
        {
            let mut index = lock(&self.index);
            while index.entries.len() > self.capacity {
                let Some((_, oldest)) = index.by_age.pop_first() else {
                    break;
                };
                if let Some(entry) = index.entries.remove(&oldest) {
                    index.retire(oldest, &entry.slot);
                    evicted.push(entry.slot);
                }
            }
        }
        for slot in evicted {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.close_slot(&slot);
        }
    }

    fn close_slot(&self, slot: &Slot) {
        let idle = {
            let mut state = lock(&slot.state);
            state.closed = true;
            std::mem::take(&mut state.idle)
        };
        slot.changed.notify_all();
        for conn in idle {
            self.close(conn);
        }
    }

    fn close(&self, conn: TenantConnection) {
        // Without a closer thread (it failed to start, or shutdown began) close right here.
        if let Some(tx) = &*lock(&self.closer)
            && let Err(mpsc::SendError(job)) = tx.send(CloserJob::Close(Box::new(conn)))
        {
            drop(job);
        }
    }

    fn release(&self, slot: &Slot, conn: Option<TenantConnection>) {
        let mut state = lock(&slot.state);
        state.in_use = state.in_use.saturating_sub(1);
        let to_close = match conn {
            Some(conn)
                if !state.closed
                    && !conn.guard().tainted()
                    && conn.is_autocommit()
                    && state.idle.len() < self.idle_per_tenant =>
            {
                state.idle.push(conn);
                None
            }
            other => other,
        };
        // Only an eviction waits for connections to come back, and it closes the slot first.
        // Notifying a condition variable is a system call even with nobody waiting: skip it on
        // the path every request takes.
        let evicting = state.closed;
        drop(state);
        if evicting {
            slot.changed.notify_all();
        }
        if let Some(conn) = to_close {
            self.close(conn);
        }
    }

    /// Removes `id` from the cache and waits until every connection to it is closed (including
    /// connections leased from before an eviction), so its files can be moved. Fails with [`Error::Busy`] if users keep connections past `timeout`.
    pub fn evict_and_wait(&self, id: &TenantId, timeout: Duration) -> Result<()> {
        let slots = lock(&self.index).remove_all(id);
        if slots.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        for slot in &slots {
            self.close_slot(slot);
            let mut state = lock(&slot.state);
            while state.in_use > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Busy(id.to_string()));
                }
                state = slot
                    .changed
                    .wait_timeout(state, left)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        // Evicted connections close on the closer thread; wait for it to have drained them.
        self.flush_closer();
        Ok(())
    }

    /// Blocks until every connection sent to the closer thread so far is closed.
    fn flush_closer(&self) {
        let (tx, rx) = mpsc::channel::<()>();
        let sent = match &*lock(&self.closer) {
            Some(closer) => closer.send(CloserJob::Flush(tx)).is_ok(),
            None => false,
        };
        if sent {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }

    /// Keeps `id` from being opened until the returned fence is dropped; callers that move a
    /// tenant's files take it before [`Cache::evict_and_wait`].
    pub fn fence(self: &Arc<Self>, id: &TenantId) -> Fence {
        lock(&self.index).fenced.insert(id.clone());
        Fence {
            cache: Arc::clone(self),
            id: id.clone(),
        }
    }

    /// Number of tenants currently held open.
    pub fn len(&self) -> usize {
        lock(&self.index).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every idle connection and stops the closer thread. Connections still leased are
    /// closed when handed back.
    pub fn shutdown(&self) {
        let slots: Vec<_> = {
            let mut index = lock(&self.index);
            index.by_age.clear();
            let entries: Vec<_> = index.entries.drain().collect();
            for (id, entry) in &entries {
                index.retire(id.clone(), &entry.slot);
            }
            entries.into_iter().map(|(_, e)| e.slot).collect()
        };
        for slot in slots {
            self.close_slot(&slot);
        }
        lock(&self.closer).take();
        if let Some(thread) = lock(&self.closer_thread).take() {
            let _ = thread.join();
        }
    }
}

/// See [`Cache::fence`].
pub struct Fence {
    cache: Arc<Cache>,
    id: TenantId,
}

impl Drop for Fence {
    fn drop(&mut self) {
        lock(&self.cache.index).fenced.remove(&self.id);
    }
}

impl Lease {
    /// Keeps this connection out of the pool when handed back (for example after a statement
    /// was interrupted mid-transaction and the connection's state is uncertain).
    pub fn discard(mut self) {
        let conn = self.conn.take();
        self.cache.release(&self.slot, None);
        drop(conn);
    }
}

impl Deref for Lease {
    type Target = TenantConnection;
    fn deref(&self) -> &TenantConnection {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut TenantConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.cache.release(&self.slot, Some(conn));
        }
    }
}
