//! Streaming a report's rows: the query runs on its own thread, which owns the scratch
//! database, and hands rows over in small chunks through a bounded channel. Memory stays at a
//! few chunks whatever the size of the result; dropping [`ReportRows`] interrupts the query and
//! removes the scratch database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};

use super::analyze::{self, Gate, Mode, Schema};
use super::gather::Scratch;
use super::{ReportOptions, ReportRequest, interrupted};
use crate::error::{Context, Error, Result};

/// Rows per chunk, and the bytes after which a chunk is sent early (large values).
const CHUNK_ROWS: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight between the query thread and the reader.
const CHANNEL_CHUNKS: usize = 4;

enum Message {
    Columns(Vec<String>),
    Rows(Vec<Vec<Value>>),
    Failed(Error),
    Done,
}

/// The rows of a report, in the order the SQL produced them. An iterator of
/// `Result<Vec<Value>>`: an error (the query failed, or was cancelled) ends it.
pub struct ReportRows {
    columns: Vec<String>,
    receiver: Option<Receiver<Message>>,
    buffer: std::vec::IntoIter<Vec<Value>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    finished: bool,
}

impl ReportRows {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}

impl Iterator for ReportRows {
    type Item = Result<Vec<Value>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffer.next() {
                return Some(Ok(row));
            }
            if self.finished {
                return None;
            }
            let received = self.receiver.as_ref().map(Receiver::recv);
            match received {
                Some(Ok(Message::Rows(rows))) => self.buffer = rows.into_iter(),
                Some(Ok(Message::Columns(_))) => {}
                Some(Ok(Message::Done)) | None => {
                    self.finished = true;
                    return None;
                }
                Some(Ok(Message::Failed(e))) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Some(Err(_)) => {
                    self.finished = true;
                    return Some(Err(Error::Config(
                        "the report's query thread stopped unexpectedly".into(),
                    )));
                }
            }
        }
    }
}

impl Drop for ReportRows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel ends the thread at its next send; the flag interrupts a query
        // still computing its first row.
        drop(self.receiver.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the report's query (and reduce) on the gathered scratch database; returns once the
/// first rows are read (or the query is done), or with the error that stopped it.
pub fn start(
    scratch: Scratch,
    schema: &Schema,
    request: &ReportRequest,
    options: &ReportOptions,
    cancel: Arc<AtomicBool>,
) -> Result<ReportRows> {
    let (sender, receiver) = sync_channel(CHANNEL_CHUNKS);
    let stop = Arc::new(AtomicBool::new(false));
    let job = Job {
        scratch,
        schema: schema.clone(),
        sql: request.sql.clone(),
        reduce: request.reduce.clone(),
        cache_kib: options.cache_kib.max(1024),
        cancel,
        stop: Arc::clone(&stop),
    };
    let thread = std::thread::Builder::new()
        .name("tenantdb-report".into())
        .spawn(move || job.run(&sender))
        .map_err(crate::error::io_error("starting a report thread", "report"))?;
    let mut rows = ReportRows {
        columns: Vec::new(),
        receiver: Some(receiver),
        buffer: Vec::new().into_iter(),
        stop,
        thread: Some(thread),
        finished: false,
    };
    let first = rows.receiver.as_ref().map(Receiver::recv);
    match first {
        Some(Ok(Message::Columns(columns))) => rows.columns = columns,
        Some(Ok(Message::Failed(e))) => return Err(e),
        _ => {
            return Err(Error::Config(
                "the report's query thread stopped unexpectedly".into(),
            ));
        }
    }
    // Wait for the first rows too: most errors of a query (an overflowing sum, a bad cast in
    // a sort key) happen before its first row, and are then the report's error rather than a
    // stream that breaks off.
    match rows.receiver.as_ref().map(Receiver::recv) {
        Some(Ok(Message::Rows(first))) => rows.buffer = first.into_iter(),
        Some(Ok(Message::Done)) => rows.finished = true,
        Some(Ok(Message::Failed(e))) => return Err(e),
        _ => {
            return Err(Error::Config(
                "the report's query thread stopped unexpectedly".into(),
            ));
        }
    }
    Ok(rows)
}

struct Job {
    scratch: Scratch,
    schema: Schema,
    sql: String,
    reduce: Option<String>,
    cache_kib: u32,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Job {
    fn run(self, sender: &SyncSender<Message>) {
        if let Err(e) = self.stream(sender) {
            let e = if self.cancel.load(Ordering::Relaxed) {
                interrupted()
            } else {
                e
            };
            let _ = sender.send(Message::Failed(e));
        }
        // `self.scratch` is dropped here, after the connection: the directory goes away.
    }

    fn stream(&self, sender: &SyncSender<Message>) -> Result<()> {
        let mut conn = self.scratch.open(self.cache_kib)?;
        // Nothing is attached any more; nothing may be.
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
            .context("setting a limit")?;
        let (cancel, stop) = (Arc::clone(&self.cancel), Arc::clone(&self.stop));
        conn.progress_handler(
            1000,
            Some(move || cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed)),
        )
        .context("installing a progress handler")?;
        let gate = Gate::new(&self.schema);
        gate.install(&mut conn)?;
        let (mode, sql, what) = match &self.reduce {
            None => (Mode::Report, self.sql.as_str(), "the report"),
            Some(reduce) => {
                gate.set_mode(Mode::Materialize);
                conn.execute_batch(&analyze::materialize_sql(&self.sql))
                    .map_err(|e| analyze::user_error(e, &gate, &self.sql))?;
                (Mode::Reduce, reduce.as_str(), "--reduce")
            }
        };
        let mut stmt = analyze::prepare_checked(&conn, &gate, mode, sql, what)?;
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        let width = columns.len();
        if sender.send(Message::Columns(columns)).is_err() {
            return Ok(());
        }
        let mut rows = stmt.query([]).map_err(Error::from_user_sql)?;
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(Error::from_user_sql)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let value = row.get_ref(i).map_err(Error::from_user_sql)?;
                bytes += match value {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
                    _ => 8,
                };
                values.push(owned(value));
            }
            chunk.push(values);
            if chunk.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                bytes = 0;
                if sender.send(Message::Rows(full)).is_err() {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() && sender.send(Message::Rows(chunk)).is_err() {
            return Ok(());
        }
        let _ = sender.send(Message::Done);
        Ok(())
    }
}

/// A value read from SQLite, owned. Text that is not UTF-8 (SQLite does not check) is kept
/// with replacement characters rather than failing the report.
fn owned(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}
