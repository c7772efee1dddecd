//! A guarded connection to one tenant's database, and running user SQL on it.

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

/// Arguments bound to a statement, by position (`?`, `?NNN`) or by name (`:a`, `@a`, `$a`).
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub positional: Vec<Value>,
    pub named: Vec<(String, Value)>,
}

/// A tenant connection with the guard installed; user SQL only ever runs through one.
pub struct TenantConnection {
    conn: Connection,
    guard: Arc<GuardState>,
    limits: Arc<GuardConfig>,
    tenant: TenantId,
}

impl TenantConnection {
    pub(crate) fn new(
        conn: Connection,
        guard: Arc<GuardState>,
        limits: Arc<GuardConfig>,
        tenant: TenantId,
    ) -> Self {
        TenantConnection {
            conn,
            guard,
            limits,
            tenant,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn guard(&self) -> &GuardState {
        &self.guard
    }

    /// The underlying SQLite connection, still guarded: protocol layers use it to prepare and
    /// step statements themselves.
    pub fn sqlite(&self) -> &Connection {
        &self.conn
    }

    pub fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// Runs one statement with the statement time limit and the response size limit.
    pub fn execute(&mut self, sql: &str, args: &Args) -> Result<StatementResult> {
        let _armed = self.guard.arm(self.limits.statement_timeout);
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.user_error(e))?;
        bind(&mut stmt, args).map_err(|e| self.user_error(e))?;
        collect(&self.conn, &mut stmt, self.limits.max_response_bytes).map_err(|e| self.lift(e))
    }

    /// Runs every statement in `sql` in order and returns each one's result; stops at the first
    /// failure. What ran before it stays applied unless the script opened a transaction.
    pub fn execute_script(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        let _armed = self.guard.arm(self.limits.statement_timeout);
        let mut results = Vec::new();
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        loop {
            let next = batch.next();
            match next {
                Ok(Some(mut stmt)) => {
                    let result = collect(&self.conn, &mut stmt, self.limits.max_response_bytes)
                        .map_err(|e| self.lift(e))?;
                    results.push(result);
                }
                Ok(None) => return Ok(results),
                Err(e) => return Err(self.user_error(e)),
            }
        }
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

fn bind(stmt: &mut Statement<'_>, args: &Args) -> rusqlite::Result<()> {
    for (i, value) in args.positional.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, value)?;
    }
    for (name, value) in &args.named {
        let index = match stmt.parameter_index(name)? {
            Some(i) => Some(i),
            None if !name.starts_with([':', '@', '$']) => [":", "@", "$"]
                .iter()
                .find_map(|p| stmt.parameter_index(&format!("{p}{name}")).ok().flatten()),
            None => None,
        };
        if let Some(i) = index {
            stmt.raw_bind_parameter(i, value)?;
        }
    }
    Ok(())
}

fn collect(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    max_bytes: usize,
) -> std::result::Result<StatementResult, Error> {
    let columns: Vec<ColumnInfo> = stmt
        .columns()
        .map(|c| ColumnInfo {
            name: c.name().to_string(),
            decltype: c.decl_type().map(str::to_string),
        })
        .collect();
    let width = columns.len();
    let readonly = stmt.readonly();
    let changes_before = conn.total_changes();
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut raw = stmt.raw_query();
    while let Some(row) = raw.next().map_err(sqlite)? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            let value = row.get_ref(i).map_err(sqlite)?;
            bytes += value_size(value);
            values.push(owned(value));
        }
        if bytes > max_bytes {
            return Err(Error::ResponseTooLarge(max_bytes));
        }
        rows.push(values);
    }
    drop(raw);
    // `changes()` keeps the count of the last INSERT/UPDATE/DELETE, even across DDL and
    // transaction statements; only a statement that changed rows reports it.
    let (rows_affected, last_insert_rowid) = if readonly {
        (0, None)
    } else if conn.total_changes() == changes_before {
        (0, Some(conn.last_insert_rowid()))
    } else {
        (conn.changes(), Some(conn.last_insert_rowid()))
    };
    Ok(StatementResult {
        columns,
        rows,
        rows_affected,
        last_insert_rowid,
    })
}

fn sqlite(source: rusqlite::Error) -> Error {
    Error::Sqlite {
        context: "running a statement".into(),
        source,
    }
}

fn value_size(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Null | ValueRef::Integer(_) | ValueRef::Real(_) => 8,
        ValueRef::Text(t) | ValueRef::Blob(t) => t.len() + 8,
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
