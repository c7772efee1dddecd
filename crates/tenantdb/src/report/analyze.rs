//! Understanding a report before any tenant is opened: what the fleet's schema is, whether the
//! SQL is a single read, and which tables and columns it reads.
//!
//! The SQL is prepared (never run) against a schema-only database built from the template:
//! every template table, with `_tenant TEXT` added as its first column. SQLite's authorizer
//! then tells exactly which `(table, column)` pairs the statement reads, and refuses anything
//! that is not a read. No parsing of SQL on our side, so quoting, comments, views and CTEs
//! cannot fool it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Batch, Connection, OpenFlags, Statement};

use crate::error::{Context, Error, Result};

/// The column every table of a report carries first: the tenant a row came from.
pub const TENANT_COLUMN: &str = "_tenant";

/// The table `--reduce` reads: the report's result.
pub const RESULT_TABLE: &str = "result";

/// Table-valued functions a report may use: they compute rows from their arguments and read
/// nothing else. (`pragma_*` and `dbstat` are not among them: they describe the scratch
/// database, not the tenants.)
const TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree", "jsonb_each", "jsonb_tree"];

/// Longest report SQL accepted.
const MAX_SQL_LENGTH: i32 = 1 << 20;

/// Progress-handler calls (of 1,000 VM steps each) allowed when the report runs on the empty
/// schema database to learn the shape of `result` for checking `--reduce`.
const SHAPE_PROBE_BUDGET: u32 = 1_000;

/// A column of a template table, as the report's scratch tables declare it: same declared type
/// (so the same affinity) and the same collation, so comparisons, sorting and grouping behave
/// exactly as on the tenant's own table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub decltype: String,
    pub collation: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub strict: bool,
}

impl TableDef {
    /// `CREATE TABLE` for this table as a report sees it: `_tenant` first, then `columns`
    /// (all of them, or the ones a report reads), without constraints (keys are unique per
    /// tenant, not across tenants).
    pub fn create_sql(&self, schema: &str, columns: &[&ColumnDef]) -> String {
        let mut sql = format!(
            "CREATE TABLE {}.{} ({} TEXT",
            quote(schema),
            quote(&self.name),
            quote(TENANT_COLUMN)
        );
        for c in columns {
            sql.push_str(", ");
            sql.push_str(&quote(&c.name));
            if !c.decltype.is_empty() {
                sql.push(' ');
                sql.push_str(&c.decltype);
            }
            sql.push_str(" COLLATE ");
            sql.push_str(&quote(&c.collation));
        }
        sql.push(')');
        if self.strict {
            sql.push_str(" STRICT");
        }
        sql
    }
}

/// The fleet's schema as reports see it: the template's tables and views.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub tables: Vec<TableDef>,
    /// `CREATE VIEW` statements, in creation order.
    pub views: Vec<String>,
    pub view_names: Vec<String>,
}

impl Schema {
    /// Reads the template. It is replaced by rename and never written in place, so it is opened
    /// `immutable`: no locks, and no `-wal`/`-shm` left behind.
    pub fn load(template: &Path) -> Result<Schema> {
        let uri = super::file_uri(template, "immutable=1")?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(uri, flags).context("opening the template")?;
        let mut names: Vec<(String, bool)> = conn
            .prepare(
                "SELECT name, strict FROM pragma_table_list WHERE schema = 'main' \
                 AND type IN ('table', 'virtual', 'shadow') ORDER BY name",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .context("reading the template's tables")?;
        names.retain(|(name, _)| !name.to_ascii_lowercase().starts_with("sqlite_"));
        let mut tables = Vec::with_capacity(names.len());
        for (name, strict) in names {
            // A virtual table whose module this build lacks cannot be described; reports
            // cannot read it anyway.
            let Ok(columns) = describe(&conn, &name) else {
                continue;
            };
            // A table with its own `_tenant` column cannot take the report's: reports do not
            // offer it (reading it fails as an unknown table).
            if columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(TENANT_COLUMN))
            {
                continue;
            }
            tables.push(TableDef {
                name,
                columns,
                strict,
            });
        }
        let views: Vec<(String, String)> = conn
            .prepare(
                "SELECT name, sql FROM sqlite_schema WHERE type = 'view' AND sql IS NOT NULL \
                 ORDER BY rowid",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .context("reading the template's views")?;
        Ok(Schema {
            tables,
            view_names: views.iter().map(|(name, _)| name.clone()).collect(),
            views: views.into_iter().map(|(_, sql)| sql).collect(),
        })
    }

    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

fn describe(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ColumnDef>> {
    let mut stmt = conn.prepare(
        "SELECT name, type FROM pragma_table_xinfo(?1, 'main') WHERE hidden <> 1 ORDER BY cid",
    )?;
    let raw: Vec<(String, String)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(raw
        .into_iter()
        .map(|(name, decltype)| {
            let collation = conn
                .column_metadata(Some("main"), table, name.as_str())
                .ok()
                .and_then(|(_, coll, ..)| coll)
                .and_then(|c| c.into_string().ok())
                .unwrap_or_else(|| "BINARY".to_string());
            ColumnDef {
                name,
                decltype,
                collation,
            }
        })
        .collect())
}

/// A tenant table a report reads, and which of its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRead {
    pub table: TableDef,
    /// The columns read, in the table's order; empty when only rows are counted.
    pub columns: Vec<ColumnDef>,
}

impl TableRead {
    /// The scratch table holding every tenant's rows of this table.
    pub fn create_sql(&self) -> String {
        let columns: Vec<&ColumnDef> = self.columns.iter().collect();
        self.table.create_sql("main", &columns)
    }
}

/// A checked report: what it reads and what it returns.
#[derive(Debug, Clone)]
pub struct Plan {
    pub reads: Vec<TableRead>,
    pub views: Vec<String>,
}

/// What a statement being checked may do, and what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The report itself: reads of tenant tables only.
    Report,
    /// `CREATE TEMP TABLE result AS <report>`: the report's reads plus creating `result`.
    Materialize,
    /// `--reduce`: reads of `result` only.
    Reduce,
    /// The library's own statements on a gated connection.
    Internal,
}

#[derive(Debug)]
struct AuthState {
    mode: Mode,
    reads: BTreeMap<String, BTreeSet<String>>,
    denial: Option<String>,
    /// Tables (lower-cased) with their column names (lower-cased), to tell a rowid from a
    /// column that happens to be called `rowid`.
    known: BTreeMap<String, BTreeSet<String>>,
    /// Template views (lower-cased): reading one reads its tables, which SQLite reports too.
    views: BTreeSet<String>,
}

/// The authorizer shared by the checking and the running of report SQL.
#[derive(Debug, Clone)]
pub struct Gate(Arc<Mutex<AuthState>>);

impl Gate {
    pub fn new(schema: &Schema) -> Gate {
        let known = schema
            .tables
            .iter()
            .map(|t| {
                (
                    t.name.to_ascii_lowercase(),
                    t.columns
                        .iter()
                        .map(|c| c.name.to_ascii_lowercase())
                        .collect(),
                )
            })
            .collect();
        Gate(Arc::new(Mutex::new(AuthState {
            mode: Mode::Report,
            reads: BTreeMap::new(),
            denial: None,
            known,
            views: schema
                .view_names
                .iter()
                .map(|v| v.to_ascii_lowercase())
                .collect(),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Switches what statements may do, forgetting earlier reads and refusals.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.state();
        state.mode = mode;
        state.denial = None;
        state.reads.clear();
    }

    fn take_reads(&self) -> BTreeMap<String, BTreeSet<String>> {
        std::mem::take(&mut self.state().reads)
    }

    fn take_denial(&self) -> Option<String> {
        self.state().denial.take()
    }

    /// Installs this gate as `conn`'s authorizer.
    pub fn install(&self, conn: &mut Connection) -> Result<()> {
        let gate = self.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| gate.authorize(&ctx)))
            .context("installing the report authorizer")
    }

    fn authorize(&self, ctx: &AuthContext<'_>) -> Authorization {
        let mut state = self.state();
        match decide(&mut state, ctx) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                state.denial.get_or_insert(reason);
                Authorization::Deny
            }
        }
    }
}

fn decide(state: &mut AuthState, ctx: &AuthContext<'_>) -> Result<(), String> {
    use AuthAction::*;
    if state.mode == Mode::Internal {
        return Ok(());
    }
    let db = ctx.database_name.unwrap_or("main");
    let is_result = |table: &str| table.eq_ignore_ascii_case(RESULT_TABLE);
    match ctx.action {
        Select | Recursive => Ok(()),
        Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Err("loading extensions is not allowed in a report".into())
        }
        Function { .. } => Ok(()),
        Read {
            table_name,
            column_name,
        } => read(state, db, table_name, column_name),
        CreateTempTable { table_name }
            if state.mode == Mode::Materialize && table_name.eq_ignore_ascii_case(RESULT_TABLE) =>
        {
            Ok(())
        }
        Insert { table_name } | Update { table_name, .. }
            if state.mode == Mode::Materialize
                && (is_result(table_name)
                    || table_name.eq_ignore_ascii_case("sqlite_temp_master")
                    || table_name.eq_ignore_ascii_case("sqlite_temp_schema")) =>
        {
            Ok(())
        }
        Insert { table_name } => Err(format!(
            "reports only read: INSERT INTO {table_name} is not allowed"
        )),
        Update { table_name, .. } => Err(format!(
            "reports only read: UPDATE {table_name} is not allowed"
        )),
        Delete { table_name } => Err(format!(
            "reports only read: DELETE FROM {table_name} is not allowed"
        )),
        CreateTable { table_name } | CreateTempTable { table_name } => Err(format!(
            "reports only read: CREATE TABLE {table_name} is not allowed"
        )),
        CreateIndex { index_name, .. } | CreateTempIndex { index_name, .. } => Err(format!(
            "reports only read: CREATE INDEX {index_name} is not allowed"
        )),
        CreateTrigger { trigger_name, .. } | CreateTempTrigger { trigger_name, .. } => Err(
            format!("reports only read: CREATE TRIGGER {trigger_name} is not allowed"),
        ),
        CreateView { view_name } | CreateTempView { view_name } => Err(format!(
            "reports only read: CREATE VIEW {view_name} is not allowed"
        )),
        CreateVtable { table_name, .. } => Err(format!(
            "reports only read: CREATE VIRTUAL TABLE {table_name} is not allowed"
        )),
        DropTable { table_name } | DropTempTable { table_name } => Err(format!(
            "reports only read: DROP TABLE {table_name} is not allowed"
        )),
        DropIndex { index_name, .. } | DropTempIndex { index_name, .. } => Err(format!(
            "reports only read: DROP INDEX {index_name} is not allowed"
        )),
        DropTrigger { trigger_name, .. } | DropTempTrigger { trigger_name, .. } => Err(format!(
            "reports only read: DROP TRIGGER {trigger_name} is not allowed"
        )),
        DropView { view_name } | DropTempView { view_name } => Err(format!(
            "reports only read: DROP VIEW {view_name} is not allowed"
        )),
        DropVtable { table_name, .. } => Err(format!(
            "reports only read: DROP TABLE {table_name} is not allowed"
        )),
        AlterTable { table_name, .. } => Err(format!(
            "reports only read: ALTER TABLE {table_name} is not allowed"
        )),
        Attach { .. } => Err("ATTACH is not allowed in a report".into()),
        Detach { .. } => Err("DETACH is not allowed in a report".into()),
        Pragma { pragma_name, .. } => Err(format!(
            "PRAGMA {pragma_name} is not allowed in a report; a report is one SELECT"
        )),
        Transaction { .. } | Savepoint { .. } => Err(
            "transaction control is not allowed in a report; each tenant is read in its own \
             snapshot"
                .into(),
        ),
        Analyze { .. } | Reindex { .. } => {
            Err("reports only read: ANALYZE and REINDEX are not allowed".into())
        }
        other => Err(format!("{other:?} is not allowed in a report")),
    }
}

fn read(state: &mut AuthState, db: &str, table: &str, column: &str) -> Result<(), String> {
    let lower = table.to_ascii_lowercase();
    match state.mode {
        Mode::Reduce => {
            // SQLite names `main` for a count(*) of the temp table, so only the name is
            // checked; unqualified, `result` is always the temp table (temp comes first).
            if lower == RESULT_TABLE {
                Ok(())
            } else {
                Err(format!(
                    "--reduce reads only the table {RESULT_TABLE} (the report's result), not \
                     {table}"
                ))
            }
        }
        Mode::Report | Mode::Materialize | Mode::Internal => {
            if state.mode == Mode::Materialize
                && (lower == RESULT_TABLE
                    || lower == "sqlite_temp_master"
                    || lower == "sqlite_temp_schema")
            {
                return Ok(());
            }
            if db == "main" && state.views.contains(&lower) {
                return Ok(());
            }
            if TABLE_FUNCTIONS.contains(&lower.as_str()) {
                return Ok(());
            }
            let Some(columns) = state.known.get(&lower) else {
                return Err(format!(
                    "{table} cannot be read by a report: reports read the tenants' own tables"
                ));
            };
            if db != "main" {
                return Err(format!("{db}.{table} cannot be read by a report"));
            }
            let lower_col = column.to_ascii_lowercase();
            if lower_col == "rowid" && !columns.contains("rowid") {
                return Err(format!(
                    "reports cannot read the rowid of {table}: rowids are per tenant; select \
                     the table's key columns instead"
                ));
            }
            state
                .reads
                .entry(table.to_string())
                .or_default()
                .insert(column.to_string());
            Ok(())
        }
    }
}

/// A connection holding the schema only: every template table with `_tenant` first, every
/// template view. Reports are checked against it before any tenant is opened.
pub fn schema_connection(schema: &Schema) -> Result<Connection> {
    let conn = Connection::open_in_memory().context("creating the report schema")?;
    harden(&conn)?;
    let mut ddl = String::new();
    for t in &schema.tables {
        let columns: Vec<&ColumnDef> = t.columns.iter().collect();
        ddl.push_str(&t.create_sql("main", &columns));
        ddl.push_str(";\n");
    }
    conn.execute_batch(&ddl)
        .context("creating the report schema")?;
    create_views(&conn, &schema.views);
    Ok(conn)
}

/// Creates views from their template SQL. A view over a table this database lacks is created
/// anyway (SQLite resolves views when they are used); one that fails is left out, and a report
/// naming it gets "no such table".
pub fn create_views(conn: &Connection, views: &[String]) {
    for sql in views {
        if let Err(e) = conn.execute_batch(sql) {
            tracing::debug!(error = %e, view = %sql, "a template view is not available to reports");
        }
    }
}

/// The settings every report connection gets: defensive mode, no trusted schema, a bound on SQL
/// length.
pub fn harden(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .context("enabling defensive mode")?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .context("disabling trusted_schema")?;
    // A double-quoted name that is no column is an error, not a string: a tenant lacking a
    // column must fail to prepare its copy, not copy the column's name.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)
        .context("disabling double-quoted strings")?;
    // Detaching a tenant must never checkpoint its write-ahead log into its file: a report
    // reads, it does not write (a read-only file could not be written anyway; this says so).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .context("disabling checkpoints on close")?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH)
        .context("setting a limit")?;
    Ok(())
}

/// Checks a report (and its reduce) against `schema`; nothing is opened but an in-memory
/// database.
pub fn analyze(schema: &Schema, sql: &str, reduce: Option<&str>) -> Result<Plan> {
    let mut conn = schema_connection(schema)?;
    let gate = Gate::new(schema);
    gate.install(&mut conn)?;
    let columns = check_statement(&conn, &gate, Mode::Report, sql, "the report")?;
    let reads = gate.take_reads();
    let reads = reads
        .into_iter()
        .filter_map(|(table, cols)| {
            let def = schema.table(&table)?.clone();
            let columns = def
                .columns
                .iter()
                .filter(|c| cols.iter().any(|r| r.eq_ignore_ascii_case(&c.name)))
                .cloned()
                .collect();
            Some(TableRead {
                table: def,
                columns,
            })
        })
        .collect();
    if let Some(reduce) = reduce {
        shape_result(&mut conn, &gate, sql, &columns)?;
        check_statement(&conn, &gate, Mode::Reduce, reduce, "--reduce")?;
    }
    Ok(Plan {
        reads,
        views: schema.views.clone(),
    })
}

/// Creates `temp.result` in the schema database the way the run will (`CREATE TABLE AS` the
/// report, here over empty tables), so `--reduce` is checked against the same column names. A
/// report that keeps computing on empty tables (a large recursive CTE) is not waited for: its
/// column names are used instead.
fn shape_result(conn: &mut Connection, gate: &Gate, sql: &str, columns: &[String]) -> Result<()> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    conn.progress_handler(
        1000,
        Some(move || counter.fetch_add(1, Ordering::Relaxed) >= SHAPE_PROBE_BUDGET),
    )
    .context("installing a progress handler")?;
    gate.set_mode(Mode::Materialize);
    let probed = conn.execute_batch(&materialize_sql(sql));
    conn.progress_handler(0, None::<fn() -> bool>)
        .context("removing a progress handler")?;
    if probed.is_err() {
        gate.set_mode(Mode::Internal);
        let mut seen = BTreeSet::new();
        let names: Vec<String> = columns
            .iter()
            .map(|c| {
                let mut name = c.clone();
                let mut n = 0;
                while !seen.insert(name.to_ascii_lowercase()) {
                    n += 1;
                    name = format!("{c}:{n}");
                }
                quote(&name)
            })
            .collect();
        conn.execute_batch("DROP TABLE IF EXISTS temp.result")
            .context("preparing the reduce check")?;
        conn.execute_batch(&format!(
            "CREATE TEMP TABLE {RESULT_TABLE} ({})",
            names.join(", ")
        ))
        .context("preparing the reduce check")?;
    }
    Ok(())
}

/// `CREATE TEMP TABLE result AS <report>`: how the report's result is stored for `--reduce`.
/// The report is one checked statement, so appending it cannot add another.
pub fn materialize_sql(sql: &str) -> String {
    format!("CREATE TEMP TABLE {RESULT_TABLE} AS {sql}")
}

/// Prepares `sql` as a statement of kind `mode` and returns its column names, or the error a
/// user should see: syntax errors and unknown names pointed at in the SQL, refusals explained.
pub fn check_statement(
    conn: &Connection,
    gate: &Gate,
    mode: Mode,
    sql: &str,
    what: &str,
) -> Result<Vec<String>> {
    let stmt = prepare_checked(conn, gate, mode, sql, what)?;
    Ok(stmt.column_names().map(String::from).collect())
}

/// Prepares `sql` as a statement of kind `mode`: exactly one read-only statement that returns
/// rows.
pub fn prepare_checked<'c>(
    conn: &'c Connection,
    gate: &Gate,
    mode: Mode,
    sql: &str,
    what: &str,
) -> Result<Statement<'c>> {
    gate.set_mode(mode);
    let stmt = prepare_one(conn, gate, sql, what)?;
    if stmt.is_explain() != 0 {
        return Err(refused(format!("{what} must be a SELECT, not EXPLAIN")));
    }
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Err(refused(format!(
            "{what} must be a single SELECT (or WITH … SELECT, or VALUES)"
        )));
    }
    Ok(stmt)
}

/// Prepares exactly one statement under the gate: several statements, or none, are refused.
pub fn prepare_one<'c>(
    conn: &'c Connection,
    gate: &Gate,
    sql: &str,
    what: &str,
) -> Result<Statement<'c>> {
    let mut batch = Batch::new(conn, sql);
    let first = match batch.next() {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return Err(refused(format!("{what} is empty"))),
        Err(e) => return Err(user_error(e, gate, sql)),
    };
    let reads = gate.take_reads();
    // Whatever follows must be nothing but whitespace and comments. The rest is only
    // prepared (under the same gate), never run.
    match batch.next() {
        Ok(None) => {}
        Ok(Some(_)) | Err(_) => {
            let _ = gate.take_denial();
            return Err(refused(format!(
                "{what} must be one statement; this has several"
            )));
        }
    }
    gate.state().reads = reads;
    Ok(first)
}

fn refused(message: String) -> Error {
    Error::Sql {
        message,
        code: "SQLITE_AUTH".into(),
    }
}

/// Turns SQLite's error for report SQL into the user's: the authorizer's reason for a
/// refusal, SQLite's message with the place in the SQL for everything else.
pub fn user_error(e: rusqlite::Error, gate: &Gate, sql: &str) -> Error {
    if let Some(reason) = gate.take_denial() {
        return refused(reason);
    }
    match e {
        rusqlite::Error::SqlInputError {
            error, msg, offset, ..
        } => Error::Sql {
            message: pointed(&msg, sql, offset),
            code: crate::sqlite_codes::name(error.extended_code).to_string(),
        },
        rusqlite::Error::SqliteFailure(error, Some(msg)) => {
            // SQLite does not say where an unknown table is; the first place the SQL names
            // it is a good guess.
            let offset = msg
                .strip_prefix("no such table: ")
                .and_then(|name| find_word(sql, name.rsplit('.').next().unwrap_or(name)));
            Error::Sql {
                message: match offset {
                    Some(at) => pointed(&msg, sql, i32::try_from(at).unwrap_or(-1)),
                    None => msg,
                },
                code: crate::sqlite_codes::name(error.extended_code).to_string(),
            }
        }
        other => Error::from_user_sql(other),
    }
}

/// Byte offset of the first occurrence of `word` in `sql` as a whole word, ignoring case.
fn find_word(sql: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let hay = sql.to_ascii_lowercase();
    let needle = word.to_ascii_lowercase();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = hay[from..].find(&needle) {
        let at = from + i;
        let end = at + needle.len();
        let before_ok = !hay[..at].chars().next_back().is_some_and(is_word);
        let after_ok = !hay[end..].chars().next().is_some_and(is_word);
        if before_ok && after_ok {
            return Some(at);
        }
        from = end;
    }
    None
}

/// `message` followed by the line of `sql` at byte `offset` and a caret under the spot.
pub fn pointed(message: &str, sql: &str, offset: i32) -> String {
    let Ok(offset) = usize::try_from(offset) else {
        return message.to_string();
    };
    if offset > sql.len() || !sql.is_char_boundary(offset) {
        return message.to_string();
    }
    let start = sql[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = sql[offset..].find('\n').map_or(sql.len(), |i| offset + i);
    let line_no = sql[..offset].matches('\n').count() + 1;
    let before: Vec<char> = sql[start..offset].chars().collect();
    let after: Vec<char> = sql[offset..end].chars().collect();
    // Long lines are shown as a window of about 100 characters around the spot.
    let keep_before = before.len().min(60);
    let shown_before: String = before[before.len() - keep_before..].iter().collect();
    let shown_after: String = after.iter().take(60).collect();
    let lead = if keep_before < before.len() {
        "…"
    } else {
        ""
    };
    let tail = if after.len() > 60 { "…" } else { "" };
    let caret_at = lead.chars().count() + keep_before;
    format!(
        "{message} (line {line_no}, column {}):\n  {lead}{shown_before}{shown_after}{tail}\n  {}^",
        before.len() + 1,
        " ".repeat(caret_at)
    )
}

/// Quotes an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
