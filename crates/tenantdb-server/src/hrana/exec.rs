//! Running Hrana stream requests on a tenant's guarded connection. Blocking: callers run this
//! on the blocking pool, never on the async executor.

use std::collections::HashMap;

use tenantdb::session::{ColumnInfo, RowSink, value_size};
use tenantdb::{Args, TenantConnection};

use super::proto::{
    Batch, BatchCond, BatchResult, Col, CursorEntry, DescribeCol, DescribeParam, DescribeResult,
    Error, Stmt, StmtResult, StreamRequest, StreamResponse, Value,
};

/// Stored SQL texts per stream: enough for any client's statement cache, small enough that a
/// client cannot park megabytes on the server.
pub const MAX_STORED_SQL: usize = 1024;

/// What one stream keeps between requests besides its connection.
#[derive(Debug, Default)]
pub struct StreamState {
    sqls: HashMap<i32, String>,
}

/// What a request asks of the stream itself.
pub enum Next {
    Continue,
    Close,
}

/// Turns a library error into a Hrana error; internal details stay in the server's log.
pub fn hrana_error(e: tenantdb::Error) -> Error {
    use tenantdb::Error as E;
    let (message, code) = match e {
        E::Sql { message, code } => (message, code),
        E::Guard(_) => (e.to_string(), "SQLITE_AUTH".to_string()),
        E::StatementTimeout(_) => (e.to_string(), "SQLITE_INTERRUPT".to_string()),
        E::ResponseTooLarge(_) => (e.to_string(), "RESPONSE_TOO_LARGE".to_string()),
        E::Busy(_) => (e.to_string(), "SQLITE_BUSY".to_string()),
        // Only ever seen by the server's quick path, which discards the results and runs the
        // work again; not worth a log line.
        E::NotQuick => (e.to_string(), "NOT_QUICK".to_string()),
        other => {
            tracing::error!(error = %other, "internal error while running a statement");
            ("internal error".to_string(), "INTERNAL".to_string())
        }
    };
    Error {
        message,
        code: Some(code),
    }
}

fn protocol_error(message: impl Into<String>) -> Error {
    Error {
        message: message.into(),
        code: Some("PROTOCOL_ERROR".to_string()),
    }
}

/// Counts the bytes of rows a whole HTTP response carries, against the response size limit.
pub struct Budget {
    used: usize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget { used: 0, max }
    }

    fn spend(&mut self, row: &[tenantdb::Value]) -> tenantdb::Result<()> {
        self.used += row.iter().map(value_size).sum::<usize>();
        if self.used > self.max {
            return Err(tenantdb::Error::ResponseTooLarge(self.max));
        }
        Ok(())
    }
}

impl StreamState {
    fn sql<'a>(&'a self, sql: &'a Option<String>, sql_id: Option<i32>) -> Result<&'a str, Error> {
        match (sql, sql_id) {
            (Some(sql), None) => Ok(sql),
            (None, Some(id)) => self
                .sqls
                .get(&id)
                .map(String::as_str)
                .ok_or_else(|| protocol_error(format!("no SQL text is stored under id {id}"))),
            (Some(_), Some(_)) => Err(protocol_error("give either `sql` or `sql_id`, not both")),
            (None, None) => Err(protocol_error("a statement needs `sql` or `sql_id`")),
        }
    }

    /// Runs one pipeline request.
    pub fn handle(
        &mut self,
        conn: &mut TenantConnection,
        request: &StreamRequest,
        budget: &mut Budget,
    ) -> (Result<StreamResponse, Error>, Next) {
        let response = match request {
            StreamRequest::Close => return (Ok(StreamResponse::Close), Next::Close),
            StreamRequest::Execute { stmt } => self
                .execute(conn, stmt, budget)
                .map(|result| StreamResponse::Execute { result }),
            StreamRequest::Batch { batch } => Ok(StreamResponse::Batch {
                result: self.batch(conn, batch, budget),
            }),
            StreamRequest::Sequence { sql, sql_id } => self
                .sql(sql, *sql_id)
                .and_then(|sql| conn.execute_script(sql).map_err(hrana_error))
                .map(|_| StreamResponse::Sequence),
            StreamRequest::Describe { sql, sql_id } => self
                .sql(sql, *sql_id)
                .and_then(|sql| conn.describe(sql).map_err(hrana_error))
                .map(|d| StreamResponse::Describe {
                    result: DescribeResult {
                        params: d
                            .params
                            .into_iter()
                            .map(|name| DescribeParam { name })
                            .collect(),
                        cols: d
                            .columns
                            .into_iter()
                            .map(|c| DescribeCol {
                                name: c.name,
                                decltype: c.decltype,
                            })
                            .collect(),
                        is_explain: d.is_explain,
                        is_readonly: d.is_readonly,
                    },
                }),
            StreamRequest::StoreSql { sql_id, sql } => self.store(*sql_id, sql),
            StreamRequest::CloseSql { sql_id } => {
                self.sqls.remove(sql_id);
                Ok(StreamResponse::CloseSql)
            }
            StreamRequest::GetAutocommit => Ok(StreamResponse::GetAutocommit {
                is_autocommit: conn.is_autocommit(),
            }),
        };
        (response, Next::Continue)
    }

    fn store(&mut self, sql_id: i32, sql: &str) -> Result<StreamResponse, Error> {
        if self.sqls.contains_key(&sql_id) {
            return Err(protocol_error(format!(
                "SQL text id {sql_id} is already in use"
            )));
        }
        if self.sqls.len() >= MAX_STORED_SQL {
            return Err(protocol_error(format!(
                "too many stored SQL texts: a stream keeps at most {MAX_STORED_SQL}; close some \
                 with close_sql"
            )));
        }
        self.sqls.insert(sql_id, sql.to_string());
        Ok(StreamResponse::StoreSql)
    }

    pub fn execute(
        &self,
        conn: &mut TenantConnection,
        stmt: &Stmt,
        budget: &mut Budget,
    ) -> Result<StmtResult, Error> {
        let mut collect = CollectStep::new(budget);
        let outcome = self.run_stmt(conn, stmt, &mut collect)?;
        Ok(StmtResult {
            cols: collect.cols,
            rows: collect.rows,
            affected_row_count: outcome.rows_affected,
            last_insert_rowid: outcome.last_insert_rowid,
        })
    }

    fn run_stmt(
        &self,
        conn: &mut TenantConnection,
        stmt: &Stmt,
        sink: &mut dyn RowSink,
    ) -> Result<tenantdb::session::Outcome, Error> {
        let sql = self.sql(&stmt.sql, stmt.sql_id)?;
        let args = Args {
            positional: stmt.args.iter().map(|v| v.0.clone()).collect(),
            named: stmt
                .named_args
                .iter()
                .map(|a| (a.name.clone(), a.value.0.clone()))
                .collect(),
        };
        conn.run(sql, &args, stmt.want_rows.unwrap_or(true), sink)
            .map_err(hrana_error)
    }

    /// Runs a batch and collects every step's result.
    pub fn batch(
        &self,
        conn: &mut TenantConnection,
        batch: &Batch,
        budget: &mut Budget,
    ) -> BatchResult {
        let mut results: Vec<Option<StmtResult>> = Vec::with_capacity(batch.steps.len());
        let mut errors: Vec<Option<Error>> = Vec::with_capacity(batch.steps.len());
        for step in &batch.steps {
            let outcomes = Outcomes {
                results: &results,
                errors: &errors,
            };
            let run = match &step.condition {
                None => Ok(true),
                Some(cond) => outcomes.eval(cond, conn.is_autocommit()),
            };
            match run {
                Ok(false) => {
                    results.push(None);
                    errors.push(None);
                }
                Ok(true) => match self.execute(conn, &step.stmt, budget) {
                    Ok(r) => {
                        results.push(Some(r));
                        errors.push(None);
                    }
                    Err(e) => {
                        results.push(None);
                        errors.push(Some(e));
                    }
                },
                Err(e) => {
                    results.push(None);
                    errors.push(Some(e));
                }
            }
        }
        BatchResult {
            step_results: results,
            step_errors: errors,
        }
    }

    /// Runs a batch, handing cursor entries to `emit` as rows are produced. `emit` returns
    /// false when the reader went away, which stops the batch.
    pub fn cursor(
        &self,
        conn: &mut TenantConnection,
        batch: &Batch,
        budget: &mut Budget,
        emit: &mut dyn FnMut(CursorEntry) -> bool,
    ) {
        let mut ran: Vec<Option<bool>> = Vec::with_capacity(batch.steps.len());
        for (index, step) in batch.steps.iter().enumerate() {
            let index = index as u32;
            let run = match &step.condition {
                None => Ok(true),
                Some(cond) => eval_flags(cond, &ran, conn.is_autocommit()),
            };
            match run {
                Ok(false) => ran.push(None),
                Ok(true) => {
                    let mut sink = EmitStep {
                        step: index,
                        began: false,
                        emit: &mut *emit,
                        budget: &mut *budget,
                        gone: false,
                    };
                    let outcome = self.run_stmt(conn, &step.stmt, &mut sink);
                    if sink.gone {
                        return;
                    }
                    let entry = match outcome {
                        Ok(o) => {
                            ran.push(Some(true));
                            CursorEntry::StepEnd {
                                affected_row_count: o.rows_affected,
                                last_insert_rowid: o.last_insert_rowid,
                            }
                        }
                        Err(error) => {
                            ran.push(Some(false));
                            CursorEntry::StepError { step: index, error }
                        }
                    };
                    if !emit(entry) {
                        return;
                    }
                }
                Err(error) => {
                    if !emit(CursorEntry::Error { error }) {
                        return;
                    }
                    return;
                }
            }
        }
    }
}

struct Outcomes<'a> {
    results: &'a [Option<StmtResult>],
    errors: &'a [Option<Error>],
}

impl Outcomes<'_> {
    fn eval(&self, cond: &BatchCond, autocommit: bool) -> Result<bool, Error> {
        let flags: Vec<Option<bool>> = self
            .results
            .iter()
            .zip(self.errors)
            .map(|(r, e)| match (r, e) {
                (Some(_), _) => Some(true),
                (None, Some(_)) => Some(false),
                (None, None) => None,
            })
            .collect();
        eval_flags(cond, &flags, autocommit)
    }
}

/// Evaluates a batch condition over what earlier steps did: `Some(true)` succeeded,
/// `Some(false)` failed, `None` skipped. A condition naming a step that has not run yet is a
/// protocol error, not a silent false.
fn eval_flags(cond: &BatchCond, ran: &[Option<bool>], autocommit: bool) -> Result<bool, Error> {
    let step = |s: u32| {
        ran.get(s as usize).copied().ok_or_else(|| {
            protocol_error(format!(
                "a batch condition refers to step {s}, which does not come before it"
            ))
        })
    };
    Ok(match cond {
        BatchCond::Ok { step: s } => step(*s)? == Some(true),
        BatchCond::Error { step: s } => step(*s)? == Some(false),
        BatchCond::Not { cond } => !eval_flags(cond, ran, autocommit)?,
        BatchCond::And { conds } => {
            let mut all = true;
            for c in conds {
                all &= eval_flags(c, ran, autocommit)?;
            }
            all
        }
        BatchCond::Or { conds } => {
            let mut any = false;
            for c in conds {
                any |= eval_flags(c, ran, autocommit)?;
            }
            any
        }
        BatchCond::IsAutocommit => autocommit,
    })
}

fn cols(columns: &[ColumnInfo]) -> Vec<Col> {
    columns
        .iter()
        .map(|c| Col {
            name: Some(c.name.clone()),
            decltype: c.decltype.clone(),
        })
        .collect()
}

struct CollectStep<'a> {
    cols: Vec<Col>,
    rows: Vec<Vec<Value>>,
    budget: &'a mut Budget,
}

impl<'a> CollectStep<'a> {
    fn new(budget: &'a mut Budget) -> Self {
        CollectStep {
            cols: Vec::new(),
            rows: Vec::new(),
            budget,
        }
    }
}

impl RowSink for CollectStep<'_> {
    fn columns(&mut self, columns: &[ColumnInfo]) -> tenantdb::Result<()> {
        self.cols = cols(columns);
        Ok(())
    }

    fn row(&mut self, row: Vec<tenantdb::Value>) -> tenantdb::Result<()> {
        self.budget.spend(&row)?;
        self.rows.push(row.into_iter().map(Value).collect());
        Ok(())
    }
}

struct EmitStep<'a> {
    step: u32,
    began: bool,
    emit: &'a mut dyn FnMut(CursorEntry) -> bool,
    budget: &'a mut Budget,
    gone: bool,
}

impl EmitStep<'_> {
    fn send(&mut self, entry: CursorEntry) -> tenantdb::Result<()> {
        if (self.emit)(entry) {
            Ok(())
        } else {
            // The reader is gone: stop the statement; the error is never shown to anyone.
            self.gone = true;
            Err(tenantdb::Error::Busy("cursor reader went away".into()))
        }
    }
}

impl RowSink for EmitStep<'_> {
    fn columns(&mut self, columns: &[ColumnInfo]) -> tenantdb::Result<()> {
        self.began = true;
        let entry = CursorEntry::StepBegin {
            step: self.step,
            cols: cols(columns),
        };
        self.send(entry)
    }

    fn row(&mut self, row: Vec<tenantdb::Value>) -> tenantdb::Result<()> {
        self.budget.spend(&row)?;
        let entry = CursorEntry::Row {
            row: row.into_iter().map(Value).collect(),
        };
        self.send(entry)
    }
}
