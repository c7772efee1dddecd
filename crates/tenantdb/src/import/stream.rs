//! The pass over the source that feeds tenants to parallel workers.
//!
//! One reader thread runs one query per imported table, each ordered by tenant value, and
//! merges them: it takes the smallest tenant value among the cursors, collects that tenant's
//! rows from every table (in table order), and hands them to whichever worker is free. The
//! source is therefore read once per table, in one read transaction, while tenants are written
//! (or verified) in parallel.
//!
//! Memory stays bounded: rows travel in batches of at most [`BATCH_ROWS`] rows or
//! [`BATCH_BYTES`] bytes, each tenant's channel holds at most [`BATCHES_IN_FLIGHT`] batches,
//! and at most twice as many tenants as workers wait to be picked up. A tenant with more rows
//! than that streams through its worker while the reader waits.
//!
//! A worker learns that it has all of a tenant's rows only from an explicit end marker; a
//! channel that closes without one (the reader failed or the run was stopped) means the tenant
//! is incomplete, and nothing of it may be committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use rusqlite::Rows;
use rusqlite::types::ValueRef;

use crate::error::{Context, Error, Result};
use crate::import::cell::Cell;
use crate::import::plan::ImportPlan;
use crate::tenant_id::TenantId;

const BATCH_ROWS: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

enum Msg {
    Rows(Vec<(usize, Vec<Cell>)>),
    End,
}

/// One tenant's rows, as they arrive from the reader.
pub(crate) struct TenantRows {
    pub id: TenantId,
    rx: Receiver<Msg>,
}

impl TenantRows {
    /// Calls `f(table index, values)` for each of the tenant's rows, tables in plan order.
    /// Returns true when every row arrived, false when the stream stopped short.
    pub(crate) fn for_each(self, mut f: impl FnMut(usize, &[Cell]) -> Result<()>) -> Result<bool> {
        for msg in self.rx.iter() {
            match msg {
                Msg::Rows(rows) => {
                    for (table, cells) in &rows {
                        f(*table, cells)?;
                    }
                }
                Msg::End => return Ok(true),
            }
        }
        Ok(false)
    }
}

/// Streams every tenant's rows to `work` on the plan's number of worker threads and hands
/// each result to `outcome` on the calling thread. A tenant for which `without_rows` gives a
/// result is not streamed: its rows are passed over and that result is used. Stops at the
/// first error from the reader or from `outcome`.
pub(crate) fn run<T: Send>(
    plan: &ImportPlan,
    without_rows: impl Fn(&TenantId) -> Option<T> + Sync,
    work: impl Fn(TenantRows) -> T + Sync,
    mut outcome: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let jobs = plan.jobs.max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<TenantRows>(jobs * 2);
    // Shared by the workers and dropped with the last of them, so a reader waiting to hand
    // over a tenant learns that nobody will take it.
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (out_tx, out_rx) = mpsc::channel::<T>();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = {
            let out_tx = out_tx.clone();
            let (stop, without_rows) = (&stop, &without_rows);
            scope.spawn(move || {
                let result = read(plan, without_rows, job_tx, &out_tx, stop);
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                result
            })
        };
        for _ in 0..jobs {
            let job_rx = Arc::clone(&job_rx);
            let out_tx = out_tx.clone();
            let (stop, work) = (&stop, &work);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(tenant) = next else { break };
                    if out_tx.send(work(tenant)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(out_tx);
        let mut result = Ok(());
        for item in out_rx {
            if result.is_ok()
                && let Err(e) = outcome(item)
            {
                stop.store(true, Ordering::Relaxed);
                result = Err(e);
            }
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Config("the source reader panicked".into())));
        result.and(read)
    })
}

struct Cursor<'s> {
    table: usize,
    width: usize,
    rows: Rows<'s>,
    head: Option<(Vec<u8>, Vec<Cell>)>,
    last_key: Vec<u8>,
}

impl Cursor<'_> {
    fn advance(&mut self, name: &str) -> Result<()> {
        let context = || format!("reading {name} from the source");
        self.head = match self.rows.next().context(context())? {
            None => None,
            Some(row) => {
                let key = match row.get_ref(0).context(context())? {
                    ValueRef::Text(t) => t.to_vec(),
                    ValueRef::Integer(i) => i.to_string().into_bytes(),
                    _ => Vec::new(),
                };
                let mut cells = Vec::with_capacity(self.width);
                for i in 1..=self.width {
                    cells.push(Cell::from_ref(row.get_ref(i).context(context())?));
                }
                if key < self.last_key {
                    return Err(Error::Config(format!(
                        "the source returned {name} out of tenant order; was it changed during \
                         the import?"
                    )));
                }
                self.last_key.clone_from(&key);
                Some((key, cells))
            }
        };
        Ok(())
    }

    fn at(&self, key: &[u8]) -> bool {
        self.head.as_ref().is_some_and(|(k, _)| k == key)
    }
}

struct Batch {
    rows: Vec<(usize, Vec<Cell>)>,
    bytes: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            rows: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, table: usize, cells: Vec<Cell>) {
        self.bytes += cells.iter().map(Cell::size).sum::<usize>();
        self.rows.push((table, cells));
    }

    fn full(&self) -> bool {
        self.rows.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }

    fn take(&mut self) -> Msg {
        self.bytes = 0;
        Msg::Rows(std::mem::take(&mut self.rows))
    }
}

fn read<T>(
    plan: &ImportPlan,
    without_rows: &(impl Fn(&TenantId) -> Option<T> + Sync),
    jobs: SyncSender<TenantRows>,
    out: &Sender<T>,
    stop: &AtomicBool,
) -> Result<()> {
    plan.source_file.check_unchanged()?;
    let conn = plan.source_file.open()?;
    let tables: Vec<usize> = (0..plan.tables.len())
        .filter(|&t| plan.tables[t].written())
        .collect();
    let mut statements = Vec::with_capacity(tables.len());
    for &t in &tables {
        let sql = plan.tables[t].stream_sql();
        statements.push(
            conn.prepare(&sql)
                .context(format!("reading {} from the source", plan.tables[t].table))?,
        );
    }
    let mut cursors = Vec::with_capacity(tables.len());
    for (statement, &t) in statements.iter_mut().zip(&tables) {
        let name = &plan.tables[t].table;
        let rows = statement
            .query([])
            .context(format!("reading {name} from the source"))?;
        let mut cursor = Cursor {
            table: t,
            width: plan.tables[t].columns.len(),
            rows,
            head: None,
            last_key: Vec::new(),
        };
        cursor.advance(name)?;
        cursors.push(cursor);
    }
    while !stop.load(Ordering::Relaxed) {
        let Some(key) = cursors
            .iter()
            .filter_map(|c| c.head.as_ref().map(|(k, _)| k))
            .min()
            .cloned()
        else {
            break;
        };
        let id = std::str::from_utf8(&key)
            .ok()
            .and_then(|s| TenantId::new(s).ok());
        let (id, skipped) = match id {
            // Rows with an invalid tenant value were counted (and refused, or left out with
            // --skip-invalid) by the plan.
            None => (None, None),
            Some(id) => {
                let skipped = without_rows(&id);
                (Some(id), skipped)
            }
        };
        let sender = match (id, skipped) {
            (Some(id), None) => {
                let (tx, rx) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
                if jobs.send(TenantRows { id, rx }).is_err() {
                    return Ok(()); // the workers stopped
                }
                Some(tx)
            }
            (_, Some(result)) => {
                if out.send(result).is_err() {
                    return Ok(());
                }
                None
            }
            (None, None) => None,
        };
        let mut open = sender.is_some();
        let mut batch = Batch::new();
        for cursor in &mut cursors {
            while cursor.at(&key) {
                if let (true, Some(tx), Some((_, cells))) =
                    (open, sender.as_ref(), cursor.head.take())
                {
                    batch.push(cursor.table, cells);
                    if batch.full() {
                        open = tx.send(batch.take()).is_ok();
                    }
                }
                cursor.advance(&plan.tables[cursor.table].table)?;
            }
        }
        if let (true, Some(tx)) = (open, sender) {
            if !batch.rows.is_empty() && tx.send(batch.take()).is_err() {
                continue;
            }
            let _ = tx.send(Msg::End);
        }
    }
    Ok(())
}
