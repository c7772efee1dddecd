//! A guarded connection to one tenant's database, and running user SQL on it.
//!
//! Everything user SQL does goes through [`TenantConnection::run`]: it arms the statement
//! timer, binds arguments, streams rows to a [`RowSink`], and turns SQLite's errors into the
//! ones a user should see.

use std::sync::Arc;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Statement};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::guard::{GuardConfig, GuardState};
use crate::tenant_id::TenantId;

/// A result column: its name and declared type, when the column comes straight from a table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    pub decltype: Option<String>,
}

/// What one statement produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementResult {
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<Value>>,
    pub rows_affected: u64,
    pub last_insert_rowid: Option<i64>,
}

/// How a statement ended, apart from its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub rows_affected: u64,
    pub last_insert_rowid: Option<i64>,
}

/// Arguments bound to a statement, by position (`?`, `?NNN`) or by name (`:a`, `@a`, `$a`).
/// A named argument given without its prefix is matched against `:`, `@` and `$`.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub positional: Vec<Value>,
    pub named: Vec<(String, Value)>,
}

/// Receives a statement's result as it is produced, so large results can stream.
pub trait RowSink {
    fn columns(&mut self, columns: &[ColumnInfo]) -> Result<()>;
    fn row(&mut self, row: Vec<Value>) -> Result<()>;
}

/// What parsing a statement tells without running it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    /// Parameter names (`:a`, `?2`), `None` for plain `?`.
    pub params: Vec<Option<String>>,
    pub columns: Vec<ColumnInfo>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

/// A tenant connection with the guard installed; user SQL only ever runs through one.
pub struct TenantConnection {
    conn: Connection,
    guard: Arc<GuardState>,
    limits: Arc<GuardConfig>,
    tenant: TenantId,
    /// Append every write to `_tenantdb_audit` (see [`crate::audit`]).
    audit: bool,
    /// Who the audit names for the statements that follow.
    actor: String,
    /// Writes run since [`TenantConnection::take_writes`] last asked (fleet analytics).
    writes: std::cell::Cell<u64>,
    /// Set by [`TenantConnection::quick_reads_only`].
    quick: Option<Quick>,
    /// Until when this connection declines the quick-read confinement, after a read outran it.
    slow_until: Option<std::time::Instant>,
}

/// How long a connection whose read outran the quick-read budget declines the confinement: a
/// tenant that runs heavy reads goes straight to where blocking is allowed instead of burning
/// the budget on every request first.
const QUICK_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// The confinement of [`TenantConnection::quick_reads_only`].
#[derive(Debug, Clone, Copy)]
struct Quick {
    budget: std::time::Duration,
    /// Something did not fit; every later statement is refused too, so the caller can rerun
    /// the whole unit of work from its start.
    refused: bool,
}

impl TenantConnection {
    pub(crate) fn new(
        conn: Connection,
        guard: Arc<GuardState>,
        limits: Arc<GuardConfig>,
        tenant: TenantId,
        audit: bool,
    ) -> Self {
        TenantConnection {
            conn,
            guard,
            limits,
            tenant,
            audit,
            actor: "admin:library".to_string(),
            writes: std::cell::Cell::new(0),
            quick: None,
            slow_until: None,
        }
    }

    /// Confines the statements that follow to reads in autocommit mode that finish within
    /// `budget`, or lifts the confinement (`None`). Anything else fails with
    /// [`Error::NotQuick`] before it changes anything, so work that was tried this way can be
    /// run again from its start. A server uses it to answer the common small read on the
    /// thread that received the request, avoiding two thread hand-offs, without ever letting a
    /// long statement hold that thread.
    ///
    /// Returns whether the confinement holds: a connection declines it for a while after one
    /// of its reads outran the budget, and the caller should then run its work elsewhere
    /// straight away.
    pub fn quick_reads_only(&mut self, budget: Option<std::time::Duration>) -> bool {
        let cooling = self
            .slow_until
            .is_some_and(|until| std::time::Instant::now() < until);
        let was_quick = self.quick.is_some();
        self.quick = match budget {
            Some(budget) if !cooling => Some(Quick {
                budget,
                refused: false,
            }),
            _ => None,
        };
        // Confined, a read that finds the database busy (rare in WAL: another connection is
        // recovering the log) is refused at once rather than sleeping in the busy handler,
        // where the budget cannot reach it. `sqlite3_busy_timeout` fails only on a closed
        // connection.
        if self.quick.is_some() {
            if self.conn.busy_timeout(std::time::Duration::ZERO).is_err() {
                self.quick = None;
            }
        } else if was_quick {
            let _ = self.conn.busy_timeout(crate::connection::BUSY_TIMEOUT);
        }
        self.quick.is_some()
    }

    /// Whether a statement was refused since [`TenantConnection::quick_reads_only`] confined
    /// this connection.
    pub fn quick_refused(&self) -> bool {
        self.quick.is_some_and(|q| q.refused)
    }

    /// Refuses what does not fit the quick-read confinement, remembering that it happened.
    fn refuse_quick(&mut self) -> Error {
        if let Some(quick) = &mut self.quick {
            quick.refused = true;
        }
        Error::NotQuick
    }

    /// Names who runs the statements that follow, for the write audit: the token's subject
    /// (`user:<sub>`) or `admin:<name>`. Connections are pooled, so callers set it per request.
    pub fn set_actor(&mut self, actor: impl Into<String>) {
        self.actor = actor.into();
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn guard(&self) -> &GuardState {
        &self.guard
    }

    pub fn limits(&self) -> &GuardConfig {
        &self.limits
    }

    pub fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// Runs one statement, streaming its rows into `sink` (`want_rows = false` discards them
    /// but still runs the statement to completion).
    pub fn run(
        &mut self,
        sql: &str,
        args: &Args,
        want_rows: bool,
        sink: &mut dyn RowSink,
    ) -> Result<Outcome> {
        if let Some(quick) = self.quick {
            return self.run_quick(quick, sql, args, want_rows, sink);
        }
        let _armed = self.guard.arm(self.limits.statement_timeout);
        let (sql, read_only_begin) = match read_only_begin(sql) {
            true => ("BEGIN DEFERRED", true),
            false => (sql, false),
        };
        if read_only_begin {
            // The authorizer judges a statement when it is prepared: statements cached before
            // the transaction turned read-only must be judged again.
            self.conn.flush_prepared_statement_cache();
        }
        let result = (|| {
            // Cached: preparing is most of the cost of a point query. Only user SQL goes
            // through this cache, so a cached statement was always authorized for users.
            let mut stmt = self
                .conn
                .prepare_cached(sql)
                .map_err(|e| self.user_error(e))?;
            bind(&mut stmt, args).map_err(|e| self.user_error(e))?;
            if self.audited(&stmt, sql) {
                let digest = crate::audit::args_digest(args);
                self.audited_step(&mut stmt, sql, digest.as_deref(), want_rows, sink)
            } else {
                step_all(&self.conn, &mut stmt, want_rows, sink).map_err(|e| self.lift(e))
            }
        })();
        if read_only_begin && result.is_ok() {
            self.guard.set_read_only(true);
        }
        if self.conn.is_autocommit() {
            self.guard.set_read_only(false);
        }
        result
    }

    /// [`TenantConnection::run`] under the quick-read confinement: a statement that would
    /// write or leave a transaction open is refused before it steps (`BEGIN` is read-only to
    /// SQLite, hence the autocommit check after it), and one that outruns the budget is
    /// interrupted; a read has no effect, so either way the caller can start over elsewhere.
    fn run_quick(
        &mut self,
        quick: Quick,
        sql: &str,
        args: &Args,
        want_rows: bool,
        sink: &mut dyn RowSink,
    ) -> Result<Outcome> {
        if quick.refused || !self.conn.is_autocommit() || read_only_begin(sql) {
            return Err(self.refuse_quick());
        }
        let armed = self.guard.arm(quick.budget);
        let result = (|| {
            let mut stmt = self
                .conn
                .prepare_cached(sql)
                .map_err(|e| self.user_error(e))?;
            if !stmt.readonly() {
                return Err(Error::NotQuick);
            }
            bind(&mut stmt, args).map_err(|e| self.user_error(e))?;
            step_all(&self.conn, &mut stmt, want_rows, sink).map_err(|e| self.lift(e))
        })();
        drop(armed);
        let left_open = !self.conn.is_autocommit();
        if left_open {
            let internal = crate::audit::internal();
            let _ = self
                .conn
                .prepare_cached(&internal.rollback)
                .and_then(|mut s| s.execute([]));
        }
        match result {
            Err(Error::StatementTimeout(_)) => {
                self.slow_until = Some(std::time::Instant::now() + QUICK_COOLDOWN);
                Err(self.refuse_quick())
            }
            Err(Error::NotQuick) => Err(self.refuse_quick()),
            Err(Error::Sql { code, .. }) if code.starts_with("SQLITE_BUSY") => {
                Err(self.refuse_quick())
            }
            _ if left_open => Err(self.refuse_quick()),
            other => other,
        }
    }

    /// Runs one statement and collects its result, within the response size limit.
    pub fn execute(&mut self, sql: &str, args: &Args) -> Result<StatementResult> {
        let mut sink = Collect::new(self.limits.max_response_bytes);
        let outcome = self.run(sql, args, true, &mut sink)?;
        Ok(StatementResult {
            columns: sink.columns,
            rows: sink.rows,
            rows_affected: outcome.rows_affected,
            last_insert_rowid: outcome.last_insert_rowid,
        })
    }

    /// Runs every statement in `sql` in order and returns each one's result; stops at the first
    /// failure. What ran before it stays applied unless the script opened a transaction.
    pub fn execute_script(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        if self.quick.is_some() {
            return Err(self.refuse_quick());
        }
        if read_only_begin(sql) {
            return Ok(vec![self.execute(sql, &Args::default())?]);
        }
        let _armed = self.guard.arm(self.limits.statement_timeout);
        let mut results = Vec::new();
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        loop {
            let next = batch.next().map_err(|e| self.user_error(e))?;
            let Some(mut stmt) = next else { break };
            let mut sink = Collect::new(self.limits.max_response_bytes);
            let text = stmt.expanded_sql().unwrap_or_default().trim().to_string();
            let outcome = if self.audited(&stmt, &text) {
                self.audited_step(&mut stmt, &text, None, true, &mut sink)?
            } else {
                step_all(&self.conn, &mut stmt, true, &mut sink).map_err(|e| self.lift(e))?
            };
            results.push(StatementResult {
                columns: sink.columns,
                rows: sink.rows,
                rows_affected: outcome.rows_affected,
                last_insert_rowid: outcome.last_insert_rowid,
            });
        }
        if self.conn.is_autocommit() {
            self.guard.set_read_only(false);
        }
        Ok(results)
    }

    /// Parses a statement and reports its parameters and columns without running it.
    pub fn describe(&mut self, sql: &str) -> Result<Description> {
        let _armed = self.guard.arm(self.limits.statement_timeout);
        let sql = if read_only_begin(sql) {
            "BEGIN DEFERRED"
        } else {
            sql
        };
        let stmt = self.conn.prepare(sql).map_err(|e| self.user_error(e))?;
        let params = (1..=stmt.parameter_count())
            .map(|i| stmt.parameter_name(i).map(str::to_string))
            .collect();
        Ok(Description {
            params,
            columns: columns(&stmt),
            is_explain: stmt.is_explain() > 0,
            is_readonly: stmt.readonly(),
        })
    }

    /// Writes run on this connection since the last call, and resets the count.
    pub fn take_writes(&self) -> u64 {
        self.writes.take()
    }

    /// Whether a statement writes and so must leave an audit entry. Transaction control and
    /// PRAGMAs are left out: they change no data (the guard lets user SQL set only
    /// `foreign_keys`, which must not run inside a transaction).
    fn audited(&self, stmt: &Statement<'_>, sql: &str) -> bool {
        // `BEGIN IMMEDIATE` and friends report themselves as writing; they change no data.
        // VACUUM cannot run in a transaction, and the guard refuses it anyway (it attaches).
        let control = [
            "VACUUM",
            "PRAGMA",
            "BEGIN",
            "COMMIT",
            "END",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
        ]
        .iter()
        .any(|w| first_word_is(sql, w));
        let writes = !stmt.readonly() && !control;
        if writes {
            self.writes.set(self.writes.get() + 1);
        }
        self.audit && writes
    }

    /// Runs a write and appends its audit entry in the same transaction: the user's own when
    /// one is open, else one made for this statement, so a write never commits without its
    /// entry and a failed write leaves none.
    fn audited_step(
        &self,
        stmt: &mut Statement<'_>,
        sql: &str,
        digest: Option<&str>,
        want_rows: bool,
        sink: &mut dyn RowSink,
    ) -> Result<Outcome> {
        let own_transaction = self.conn.is_autocommit();
        let internal = crate::audit::internal();
        let control = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]).map(|_| ()))
        };
        if own_transaction {
            control(&internal.begin).map_err(|e| self.user_error(e))?;
        }
        let result = step_all(&self.conn, stmt, want_rows, sink)
            .map_err(|e| self.lift(e))
            .and_then(|outcome| {
                let rows = i64::try_from(outcome.rows_affected).unwrap_or(i64::MAX);
                self.guard
                    .internal(|| crate::audit::append(&self.conn, &self.actor, sql, digest, rows))
                    .map_err(|source| Error::Sqlite {
                        context: "writing the audit entry".into(),
                        source,
                    })?;
                Ok(outcome)
            });
        // SQLite may already have rolled the transaction back itself (SQLITE_FULL, for one).
        if own_transaction && !self.conn.is_autocommit() {
            match &result {
                Ok(_) => {
                    if let Err(e) = control(&internal.commit) {
                        let _ = control(&internal.rollback);
                        return Err(self.user_error(e));
                    }
                }
                Err(_) => {
                    let _ = control(&internal.rollback);
                }
            }
        }
        result
    }

    fn lift(&self, e: Error) -> Error {
        match e {
            Error::Sqlite { source, .. } => self.user_error(source),
            other => other,
        }
    }

    /// Turns a SQLite error from user SQL into the error a user should see: the guard's reason
    /// for a refusal, a timeout, or SQLite's own message and code.
    pub fn user_error(&self, e: rusqlite::Error) -> Error {
        if let Some(reason) = self.guard.take_denial() {
            return Error::Guard(reason);
        }
        let interrupted = e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted);
        if interrupted && self.guard.timed_out() {
            return Error::StatementTimeout(self.limits.statement_timeout);
        }
        Error::from_user_sql(e)
    }
}

fn first_word_is(sql: &str, word: &str) -> bool {
    sql.trim_start()
        .get(..word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// libSQL clients open read transactions with `BEGIN TRANSACTION READONLY`, which SQLite does
/// not parse; it runs as `BEGIN DEFERRED` with the guard refusing every write until it ends.
fn read_only_begin(sql: &str) -> bool {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    matches!(
        words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["BEGIN", "READONLY"] | ["BEGIN", "TRANSACTION", "READONLY"]
    )
}

fn bind(stmt: &mut Statement<'_>, args: &Args) -> rusqlite::Result<()> {
    let expected = stmt.parameter_count();
    if args.positional.len() > expected {
        return Err(rusqlite::Error::InvalidParameterCount(
            args.positional.len(),
            expected,
        ));
    }
    for (i, value) in args.positional.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, value)?;
    }
    for (name, value) in &args.named {
        let index = if name.starts_with([':', '@', '$', '?']) {
            stmt.parameter_index(name)?
        } else {
            [":", "@", "$"]
                .iter()
                .find_map(|p| stmt.parameter_index(&format!("{p}{name}")).ok().flatten())
        };
        match index {
            Some(i) => stmt.raw_bind_parameter(i, value)?,
            None => return Err(rusqlite::Error::InvalidParameterName(name.clone())),
        }
    }
    Ok(())
}

fn columns(stmt: &Statement<'_>) -> Vec<ColumnInfo> {
    stmt.columns()
        .map(|c| ColumnInfo {
            name: c.name().to_string(),
            decltype: c.decl_type().map(str::to_string),
        })
        .collect()
}

fn step_all(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    want_rows: bool,
    sink: &mut dyn RowSink,
) -> Result<Outcome> {
    let cols = columns(stmt);
    let width = cols.len();
    sink.columns(&cols)?;
    let readonly = stmt.readonly();
    let changes_before = conn.total_changes();
    let mut raw = stmt.raw_query();
    while let Some(row) = raw.next().map_err(sqlite)? {
        if !want_rows {
            continue;
        }
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(owned(row.get_ref(i).map_err(sqlite)?));
        }
        sink.row(values)?;
    }
    drop(raw);
    // `changes()` keeps the count of the last INSERT/UPDATE/DELETE, even across DDL and
    // transaction statements; only a statement that changed rows reports it.
    let rows_affected = if readonly || conn.total_changes() == changes_before {
        0
    } else {
        conn.changes()
    };
    Ok(Outcome {
        rows_affected,
        last_insert_rowid: (!readonly).then(|| conn.last_insert_rowid()),
    })
}

/// Collects a result in memory, refusing past `max_bytes`.
pub struct Collect {
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<Value>>,
    bytes: usize,
    max_bytes: usize,
}

impl Collect {
    pub fn new(max_bytes: usize) -> Self {
        Collect {
            columns: Vec::new(),
            rows: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }
}

impl RowSink for Collect {
    fn columns(&mut self, columns: &[ColumnInfo]) -> Result<()> {
        self.columns = columns.to_vec();
        Ok(())
    }

    fn row(&mut self, row: Vec<Value>) -> Result<()> {
        self.bytes += row.iter().map(value_size).sum::<usize>();
        if self.bytes > self.max_bytes {
            return Err(Error::ResponseTooLarge(self.max_bytes));
        }
        self.rows.push(row);
        Ok(())
    }
}

fn sqlite(source: rusqlite::Error) -> Error {
    Error::Sqlite {
        context: "running a statement".into(),
        source,
    }
}

/// Approximate bytes a value takes in a response, for the response size limit.
pub fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(t) => t.len() + 8,
        Value::Blob(b) => b.len() + 8,
    }
}

fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_read_only_begin() {
        for sql in [
            "BEGIN TRANSACTION READONLY",
            "begin readonly;",
            "  Begin  Transaction  ReadOnly ; ",
        ] {
            assert!(read_only_begin(sql), "{sql}");
        }
        for sql in ["BEGIN", "BEGIN TRANSACTION", "SELECT 'BEGIN READONLY'"] {
            assert!(!read_only_begin(sql), "{sql}");
        }
    }
}
