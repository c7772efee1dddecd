//! The guard (DESIGN section 7): what SQL from a user may do to their own database.
//!
//! Every connection that user SQL can reach goes through [`install`]. The rules are enforced by
//! SQLite itself (authorizer, limits, defensive mode, progress handler), so no parsing of user
//! SQL on our side can be fooled by quoting, comments or triggers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;

use crate::error::{Context, Result};

/// Limits applied to user SQL. The defaults suit a web application's per-user database; each is
/// a setting because some applications legitimately need more.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Let user SQL create, alter and drop persistent tables, indexes, views and triggers. Off by
    /// default: the schema belongs to migrations, so every tenant stays at a known version.
    pub allow_ddl: bool,
    /// The largest a tenant's database may grow, enforced through `max_page_count`.
    pub max_database_bytes: u64,
    /// How long one statement may run before it is interrupted.
    pub statement_timeout: Duration,
    /// Longest SQL text accepted.
    pub max_sql_length: usize,
    /// Largest string or blob a statement may produce or store.
    pub max_value_bytes: usize,
    pub max_columns: usize,
    pub max_expr_depth: usize,
    pub max_variables: usize,
    /// Total bytes of rows one statement may return; beyond it the statement fails rather than
    /// filling the server's memory.
    pub max_response_bytes: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            allow_ddl: false,
            max_database_bytes: 1 << 30,
            statement_timeout: Duration::from_secs(5),
            max_sql_length: 1 << 20,
            max_value_bytes: 16 << 20,
            max_columns: 500,
            max_expr_depth: 200,
            max_variables: 10_000,
            max_response_bytes: 32 << 20,
        }
    }
}

/// PRAGMAs user SQL may run to read state. `database_list` is absent on purpose: it prints the
/// file path, and the data directory's layout is none of a user's business.
const READ_ONLY_PRAGMAS: &[&str] = &[
    "application_id",
    "auto_vacuum",
    "cache_size",
    "collation_list",
    "compile_options",
    "data_version",
    "encoding",
    "foreign_key_check",
    "foreign_key_list",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "journal_mode",
    "max_page_count",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "quick_check",
    "schema_version",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// PRAGMAs that take an argument to *read* (`PRAGMA table_info(t)`), as opposed to setting.
const PRAGMAS_WITH_ARGUMENT: &[&str] = &[
    "foreign_key_check",
    "foreign_key_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
];

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// State shared between a guarded connection and the callbacks SQLite runs on it.
#[derive(Debug, Default)]
pub struct GuardState {
    /// Set while the library itself runs bookkeeping statements (audit rows) on the connection.
    internal: AtomicBool,
    /// Set while a read-only transaction is open: every write is denied.
    read_only: AtomicBool,
    /// Set when user SQL changed per-connection state (temp objects, `foreign_keys`): such a
    /// connection is closed after use instead of being handed to another request.
    tainted: AtomicBool,
    /// Nanoseconds since [`epoch`] after which the running statement is interrupted; 0 = none.
    deadline: AtomicU64,
    /// Set when the progress handler interrupted a statement, to tell a timeout from other errors.
    timed_out: AtomicBool,
    /// Why the authorizer last refused something (SQLite itself only says "not authorized").
    denial: Mutex<Option<String>>,
    allow_ddl: bool,
}

impl GuardState {
    pub fn tainted(&self) -> bool {
        self.tainted.load(Ordering::Relaxed)
    }

    pub fn set_read_only(&self, on: bool) {
        self.read_only.store(on, Ordering::Relaxed);
    }

    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Runs `f` with the guard lifted for the library's own statements.
    pub fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        let before = self.internal.swap(true, Ordering::SeqCst);
        let out = f();
        self.internal.store(before, Ordering::SeqCst);
        out
    }

    /// Arms the statement timer; the returned value disarms it when dropped.
    pub fn arm(&self, timeout: Duration) -> Armed<'_> {
        let at = epoch().elapsed() + timeout;
        self.timed_out.store(false, Ordering::Relaxed);
        if let Ok(mut denial) = self.denial.lock() {
            *denial = None;
        }
        self.deadline
            .store(at.as_nanos().max(1) as u64, Ordering::Relaxed);
        Armed(self)
    }

    /// Whether the last armed period ended with the progress handler interrupting a statement.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        if deadline != 0 && epoch().elapsed().as_nanos() as u64 > deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// The reason for the last refusal, taken once to build the user's error message.
    pub fn take_denial(&self) -> Option<String> {
        self.denial.lock().ok()?.take()
    }

    fn authorize(&self, ctx: &AuthContext<'_>) -> Authorization {
        if self.internal.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match self.decide(ctx) {
            Decision::Allow => Authorization::Allow,
            Decision::Taint => {
                self.tainted.store(true, Ordering::Relaxed);
                Authorization::Allow
            }
            Decision::Deny(reason) => {
                if let Ok(mut denial) = self.denial.lock() {
                    denial.get_or_insert(reason);
                }
                Authorization::Deny
            }
        }
    }

    fn decide(&self, ctx: &AuthContext<'_>) -> Decision {
        use AuthAction::*;
        let temp = ctx.database_name == Some("temp");
        let read_only = self.read_only();
        let ddl = |what: String, object: &str| {
            if is_reserved(object) {
                Decision::Deny(format!("{what}: {object} belongs to tenantdb or SQLite"))
            } else if !self.allow_ddl {
                Decision::Deny(format!(
                    "{what}: the schema is changed by migrations, not by user SQL"
                ))
            } else if read_only {
                Decision::Deny(format!("{what}: the transaction is read-only"))
            } else {
                Decision::Allow
            }
        };
        match ctx.action {
            Select | Read { .. } | Recursive | Transaction { .. } | Savepoint { .. } => {
                Decision::Allow
            }
            Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
                Decision::Deny("loading extensions is not allowed".into())
            }
            Function { .. } => Decision::Allow,
            // SQLite asks to write its schema table for every CREATE/DROP, just before (or
            // after) it asks about the DDL itself, which decides below. User SQL cannot write
            // the schema table directly: SQLite refuses that unless `writable_schema` is on,
            // which this guard denies and defensive mode neutralizes.
            Insert { table_name } | Delete { table_name } | Update { table_name, .. }
                if is_schema_table(table_name) =>
            {
                Decision::Allow
            }
            Insert { table_name } | Delete { table_name } | Update { table_name, .. } => {
                if is_reserved(table_name) && !temp {
                    Decision::Deny(format!(
                        "writing to {table_name} is not allowed: it belongs to tenantdb or SQLite"
                    ))
                } else if temp {
                    Decision::Taint
                } else if read_only {
                    Decision::Deny(format!(
                        "writing to {table_name}: the transaction is read-only"
                    ))
                } else {
                    Decision::Allow
                }
            }
            CreateTempTable { .. }
            | CreateTempIndex { .. }
            | CreateTempTrigger { .. }
            | CreateTempView { .. }
            | DropTempTable { .. }
            | DropTempIndex { .. }
            | DropTempTrigger { .. }
            | DropTempView { .. } => Decision::Taint,
            CreateTable { table_name } => ddl(format!("CREATE TABLE {table_name}"), table_name),
            DropTable { table_name } => ddl(format!("DROP TABLE {table_name}"), table_name),
            CreateIndex {
                index_name,
                table_name,
            } => ddl(format!("CREATE INDEX {index_name}"), table_name),
            DropIndex {
                index_name,
                table_name,
            } => ddl(format!("DROP INDEX {index_name}"), table_name),
            CreateTrigger {
                trigger_name,
                table_name,
            } => ddl(format!("CREATE TRIGGER {trigger_name}"), table_name),
            DropTrigger {
                trigger_name,
                table_name,
            } => ddl(format!("DROP TRIGGER {trigger_name}"), table_name),
            AlterTable { table_name, .. } => ddl(format!("ALTER TABLE {table_name}"), table_name),
            CreateView { view_name } => ddl(format!("CREATE VIEW {view_name}"), view_name),
            DropView { view_name } => ddl(format!("DROP VIEW {view_name}"), view_name),
            CreateVtable { .. } | DropVtable { .. } if temp => Decision::Taint,
            CreateVtable { table_name, .. } => {
                ddl(format!("CREATE VIRTUAL TABLE {table_name}"), table_name)
            }
            DropVtable { table_name, .. } => ddl(format!("DROP TABLE {table_name}"), table_name),
            Analyze { .. } | Reindex { .. } if read_only => {
                Decision::Deny("the transaction is read-only".into())
            }
            Analyze { .. } | Reindex { .. } => Decision::Allow,
            Pragma {
                pragma_name,
                pragma_value,
            } => pragma(pragma_name, pragma_value),
            Attach { .. } => Decision::Deny(
                "ATTACH is not allowed: a user's SQL reaches only their own database".into(),
            ),
            Detach { .. } => Decision::Deny("DETACH is not allowed".into()),
            other => Decision::Deny(format!("{other:?} is not allowed")),
        }
    }
}

enum Decision {
    Allow,
    Taint,
    Deny(String),
}

fn pragma(name: &str, value: Option<&str>) -> Decision {
    let name = name.to_ascii_lowercase();
    if name == "foreign_keys" && value.is_some() {
        return Decision::Taint;
    }
    let known = READ_ONLY_PRAGMAS.contains(&name.as_str());
    if known && (value.is_none() || PRAGMAS_WITH_ARGUMENT.contains(&name.as_str())) {
        Decision::Allow
    } else if known {
        Decision::Deny(format!("PRAGMA {name} may be read but not set"))
    } else {
        Decision::Deny(format!("PRAGMA {name} is not allowed"))
    }
}

/// Tables the library owns inside every tenant database, and SQLite's own.
/// For the library's own unguarded writes into a tenant (migrations, imports): a trigger they
/// set off is the tenant's own doing when users may change their schema (`allow_ddl`), and must
/// still not write tenantdb's tables (to erase the write audit, say). Installs an authorizer
/// that refuses exactly that and returns where the first refusal's reason is kept, for the
/// error the caller reports. Remove it with `conn.authorizer(None)` when done.
pub(crate) fn keep_triggers_off_reserved_tables(
    conn: &mut Connection,
) -> rusqlite::Result<Arc<Mutex<Option<String>>>> {
    let denied: Arc<Mutex<Option<String>>> = Arc::default();
    let record = Arc::clone(&denied);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let table = match ctx.action {
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. } => table_name,
            _ => return Authorization::Allow,
        };
        match ctx.accessor {
            Some(trigger) if is_reserved(table) && !table.starts_with("sqlite_") => {
                if let Ok(mut denied) = record.lock() {
                    denied.get_or_insert_with(|| {
                        format!(
                            "trigger {trigger} may not write {table}, which only tenantdb writes"
                        )
                    });
                }
                Authorization::Deny
            }
            _ => Authorization::Allow,
        }
    }))?;
    Ok(denied)
}

pub fn is_reserved(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower.starts_with("_tenantdb_") || lower.starts_with("sqlite_")
}

/// SQLite's schema table under its current and legacy names, main and temp.
fn is_schema_table(table: &str) -> bool {
    [
        "sqlite_schema",
        "sqlite_master",
        "sqlite_temp_schema",
        "sqlite_temp_master",
    ]
    .iter()
    .any(|name| table.eq_ignore_ascii_case(name))
}

/// Disarms the statement timer when dropped.
pub struct Armed<'a>(&'a GuardState);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.deadline.store(0, Ordering::Relaxed);
    }
}

/// Hardens `conn` for user SQL and returns the state its callbacks share.
pub fn install(conn: &mut Connection, config: &GuardConfig) -> Result<Arc<GuardState>> {
    let state = Arc::new(GuardState {
        allow_ddl: config.allow_ddl,
        ..GuardState::default()
    });
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .context("enabling defensive mode")?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .context("disabling trusted_schema")?;
    let clamp = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, clamp(config.max_sql_length)),
        (Limit::SQLITE_LIMIT_LENGTH, clamp(config.max_value_bytes)),
        (Limit::SQLITE_LIMIT_COLUMN, clamp(config.max_columns)),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, clamp(config.max_expr_depth)),
        (
            Limit::SQLITE_LIMIT_VARIABLE_NUMBER,
            clamp(config.max_variables),
        ),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 32),
    ] {
        conn.set_limit(limit, value).context("setting a limit")?;
    }
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .context("reading page_size")?;
    let max_pages = (config.max_database_bytes / page_size.max(512) as u64).max(1);
    conn.execute_batch(&format!("PRAGMA max_page_count = {max_pages}"))
        .context("setting the size quota")?;
    let auth = Arc::clone(&state);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| auth.authorize(&ctx)))
        .context("installing the authorizer")?;
    let progress = Arc::clone(&state);
    conn.progress_handler(1000, Some(move || progress.expired()))
        .context("installing the statement timer")?;
    Ok(state)
}
