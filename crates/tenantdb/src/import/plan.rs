//! Planning an import: everything that can be known before a single row is written.
//!
//! The planner reads the source's schema and the tenant schema (the template, at the latest
//! migration), decides how every source table reaches a tenant, maps columns by name, checks
//! that values would arrive unchanged, counts every tenant's rows per table, and checks each
//! tenant id. Anything that would make the import wrong is a *problem*, and a plan with problems
//! is refused before anything is written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde::Serialize;

use crate::catalog::TenantState;
use crate::error::{Context, Error, Result};
use crate::fleet::Fleet;
use crate::import::cell::show;
use crate::import::schema::{self, ForeignKey, Kind, Table, quote};
use crate::import::source::{self, Source};
use crate::import::types::Fate;
use crate::import::write;
use crate::migrate;
use crate::tenant_id::{TENANT_ID_RULE, TenantId};

/// What to import and how (the command line's flags).
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The shared database. Opened read-only; never changed.
    pub source: PathBuf,
    /// The column that holds the tenant id (`user_id`).
    pub tenant_column: String,
    /// Tables split by a column of their own (`--table T=COLUMN`), for tables that have no
    /// tenant column and no foreign key to a table that does.
    pub tables: Vec<(String, String)>,
    /// Tables not written to tenants (`--skip-table T`), for example tables the tenant schema
    /// no longer has. They still connect the tables that follow them through foreign keys.
    pub skip_tables: Vec<String>,
    /// Leave out (and report) rows whose tenant value is NULL or not a valid tenant id, and
    /// rows that reach no tenant, instead of refusing the import.
    pub skip_invalid: bool,
    /// Tenants written (or verified) at once.
    pub jobs: usize,
}

impl ImportOptions {
    pub fn new(source: impl Into<PathBuf>, tenant_column: impl Into<String>) -> ImportOptions {
        ImportOptions {
            source: source.into(),
            tenant_column: tenant_column.into(),
            tables: Vec::new(),
            skip_tables: Vec::new(),
            skip_invalid: false,
            jobs: default_jobs(),
        }
    }
}

/// Writing a tenant waits on the disk (creating its file costs two fsyncs, closing it a
/// checkpoint) about as long as it uses a core, so two jobs per core keep both busy; more only
/// add contention (measured with `tenantdb-bench import` on 2 cores).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// How a source table's rows find their tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Route {
    /// The table has the tenant column.
    Column { column: String },
    /// Named with `--table T=COLUMN`.
    Named { column: String },
    /// The table the tenant column references (`todos.user_id REFERENCES users(id)`): each row
    /// belongs to the tenant its key names.
    Referenced { column: String, by: String },
    /// Reached through foreign keys: each row goes where its parent row goes.
    Follows {
        path: Vec<Hop>,
        root: String,
        column: String,
    },
}

/// One foreign key step: `table.columns` reference `parent.parent_columns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub table: String,
    pub columns: Vec<String>,
    pub parent: String,
    pub parent_columns: Vec<String>,
}

impl Route {
    /// A short description for reports: `by user_id`, `follows todos (todo_id -> todos.id)`.
    pub fn describe(&self) -> String {
        match self {
            Route::Column { column } => format!("split by {column}"),
            Route::Named { column } => format!("split by {column} (--table)"),
            Route::Referenced { column, by } => {
                format!("split by {column} (referenced by {by})")
            }
            Route::Follows { path, .. } => {
                let steps: Vec<String> = path
                    .iter()
                    .map(|h| {
                        format!(
                            "{}.{} -> {}.{}",
                            h.table,
                            h.columns.join(","),
                            h.parent,
                            h.parent_columns.join(",")
                        )
                    })
                    .collect();
                format!("follows its parent rows ({})", steps.join(", "))
            }
        }
    }
}

/// Rows of an imported table that reach no valid tenant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeftOut {
    /// The tenant value is NULL.
    pub null: u64,
    /// The tenant value is not a valid tenant id.
    pub invalid: u64,
    /// The row has no parent row to follow (a NULL or dangling foreign key).
    pub orphaned: u64,
    /// A few of the invalid values, with how many rows hold each.
    pub examples: Vec<String>,
}

impl LeftOut {
    pub fn total(&self) -> u64 {
        self.null + self.invalid + self.orphaned
    }
}

/// One source table that is imported.
#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub table: String,
    pub route: Route,
    /// Left out with `--skip-table`.
    pub skipped: bool,
    /// The table it is written to in the tenant schema.
    pub tenant_table: Option<String>,
    /// Source columns copied (by name) into the tenant table.
    pub columns: Vec<String>,
    /// Source columns the tenant table does not have: not copied.
    pub dropped: Vec<String>,
    /// Tenant columns the source does not have: they get their defaults.
    pub defaulted: Vec<String>,
    /// Rows that go to tenants.
    pub rows: u64,
    pub left_out: LeftOut,
    #[serde(skip)]
    pub(crate) target_columns: Vec<String>,
    #[serde(skip)]
    pub(crate) order_by: Vec<String>,
    #[serde(skip)]
    pub(crate) text_key: bool,
}

impl TablePlan {
    /// The `FROM` clause that reaches a tenant value, and the expression of that value.
    pub(crate) fn source_and_key(&self) -> (String, String) {
        let mut from = format!("{} AS a0", quote(&self.table));
        let key = match &self.route {
            Route::Column { column }
            | Route::Named { column }
            | Route::Referenced { column, .. } => format!("a0.{}", quote(column)),
            Route::Follows { path, column, .. } => {
                for (i, hop) in path.iter().enumerate() {
                    let on: Vec<String> = hop
                        .columns
                        .iter()
                        .zip(&hop.parent_columns)
                        .map(|(c, p)| format!("a{i}.{} = a{}.{}", quote(c), i + 1, quote(p)))
                        .collect();
                    from.push_str(&format!(
                        " JOIN {} AS a{} ON {}",
                        quote(&hop.parent),
                        i + 1,
                        on.join(" AND ")
                    ));
                }
                format!("a{}.{}", path.len(), quote(column))
            }
        };
        (from, key)
    }

    /// Every row of the table that can reach a tenant, as (tenant value as text, the copied
    /// columns...), ordered by tenant value in byte order (then by primary key).
    pub(crate) fn stream_sql(&self) -> String {
        let (from, key) = self.source_and_key();
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("a0.{}", quote(c)))
            .collect();
        // A text column is already ordered by its value (and may have an index that gives the
        // order for free); anything else is ordered by its text form, like the tenant ids.
        let mut order = vec![if self.text_key {
            format!("{key} COLLATE BINARY")
        } else {
            format!("CAST({key} AS TEXT) COLLATE BINARY")
        }];
        order.extend(self.order_by.iter().map(|c| format!("a0.{}", quote(c))));
        format!(
            "SELECT CAST({key} AS TEXT), {} FROM {from} WHERE typeof({key}) IN ('integer', \
             'text') ORDER BY {}",
            columns.join(", "),
            order.join(", ")
        )
    }

    /// Reads the tenant's copy of the table: the copied columns, by their tenant names.
    pub(crate) fn tenant_sql(&self) -> Option<String> {
        let table = self.tenant_table.as_ref()?;
        let columns: Vec<String> = self.target_columns.iter().map(|c| quote(c)).collect();
        Some(format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            quote(table)
        ))
    }

    pub(crate) fn written(&self) -> bool {
        !self.skipped && self.tenant_table.is_some()
    }
}

/// A source table the import leaves alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftAlone {
    pub table: String,
    pub reason: String,
}

/// What happens to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantAction {
    /// Not in the fleet: created at the latest schema version, then imported.
    Create,
    /// In the fleet and not yet imported from this source.
    Import,
    /// Already holds this import (a rerun skips it).
    Done,
    /// Deleted (or its id retired): reported, never written or re-created.
    Deleted,
    /// Cannot be imported (see `reason`): reported as a failure.
    Blocked,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantPlan {
    pub id: TenantId,
    pub action: TenantAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows per table, in the order of the plan's `tables`.
    pub rows: Vec<u64>,
}

/// Everything the import will do, decided before writing.
#[derive(Debug, Clone, Serialize)]
pub struct ImportPlan {
    pub source: PathBuf,
    pub source_sha256: String,
    pub tenant_column: String,
    /// The tenant schema version the columns were mapped onto.
    pub schema_version: u32,
    pub skip_invalid: bool,
    pub tables: Vec<TablePlan>,
    pub left_alone: Vec<LeftAlone>,
    /// Reasons the import is refused; empty when it may run.
    pub problems: Vec<String>,
    /// Things worth knowing that do not stop the import (dropped columns, rows left out).
    pub notes: Vec<String>,
    /// Rows that go to tenants.
    pub rows: u64,
    /// Rows left out because they reach no valid tenant (only with `skip_invalid`).
    pub rows_left_out: u64,
    pub tenants: Vec<TenantPlan>,
    #[serde(skip)]
    pub(crate) source_file: Source,
    #[serde(skip)]
    pub(crate) jobs: usize,
}

impl ImportPlan {
    pub fn is_refused(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The planned tenant with this id.
    pub fn tenant(&self, id: &TenantId) -> Option<&TenantPlan> {
        self.tenants
            .binary_search_by(|t| t.id.cmp(id))
            .ok()
            .map(|i| &self.tenants[i])
    }

    /// How many tenants take each action.
    pub fn count(&self, action: TenantAction) -> usize {
        self.tenants.iter().filter(|t| t.action == action).count()
    }

    pub(crate) fn refuse_if_problems(&self) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the import of {} was refused before anything was written:\n  - {}",
            self.source.display(),
            self.problems.join("\n  - ")
        )))
    }
}

pub(crate) fn build(fleet: &Fleet, options: &ImportOptions) -> Result<ImportPlan> {
    if options.tenant_column.trim().is_empty() {
        return Err(Error::Config(
            "the tenant column is empty; name the column that holds the tenant id, as in \
             --tenant-column user_id"
                .into(),
        ));
    }
    if options.jobs == 0 {
        return Err(Error::Config("jobs must be at least 1".into()));
    }
    let source = Source::inspect(&options.source)?;
    let conn = source.open()?;
    let source_tables = schema::tables(&conn)?;

    let template = source::open_template(&fleet.layout().template())?;
    let schema_version = migrate::user_version(&template)?;
    let tenant_tables: Vec<Table> = schema::tables(&template)?
        .into_iter()
        .filter(|t| !t.is_internal() && t.kind == Kind::Table)
        .collect();
    drop(template);
    if tenant_tables.is_empty() {
        return Err(Error::Config(format!(
            "the tenant schema (version {schema_version}) has no tables: write it as migrations \
             and apply them with `tenantdb migrate --migrations DIR` before importing"
        )));
    }

    let mut plan = ImportPlan {
        source: source.path.clone(),
        source_sha256: source.sha256.clone(),
        tenant_column: options.tenant_column.clone(),
        schema_version,
        skip_invalid: options.skip_invalid,
        tables: Vec::new(),
        left_alone: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
        rows: 0,
        rows_left_out: 0,
        tenants: Vec::new(),
        source_file: source,
        jobs: options.jobs,
    };
    let routes = classify(&conn, &source_tables, options, &mut plan)?;
    for (index, route) in routes {
        let table = &source_tables[index];
        let skipped = options
            .skip_tables
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&table.name));
        let mut table_plan = TablePlan {
            table: table.name.clone(),
            route,
            skipped,
            tenant_table: None,
            columns: Vec::new(),
            dropped: Vec::new(),
            defaulted: Vec::new(),
            rows: 0,
            left_out: LeftOut::default(),
            target_columns: Vec::new(),
            order_by: table.primary_key().iter().map(|c| c.name.clone()).collect(),
            text_key: false,
        };
        if !skipped {
            map_columns(&conn, table, &tenant_tables, &mut table_plan, &mut plan)?;
        }
        if let Route::Column { column }
        | Route::Named { column }
        | Route::Referenced { column, .. } = &table_plan.route
        {
            table_plan.text_key = table.column(column).is_some_and(|c| {
                table.column_type(c).affinity == crate::import::types::Affinity::Text
            });
        }
        plan.tables.push(table_plan);
    }
    for skip in &options.skip_tables {
        if !plan
            .tables
            .iter()
            .any(|t| t.table.eq_ignore_ascii_case(skip))
        {
            if source_tables
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(skip))
            {
                plan.notes.push(format!(
                    "--skip-table {skip}: {skip} is not imported in any case"
                ));
            } else {
                plan.problems.push(format!(
                    "--skip-table {skip}: the source has no table {skip}"
                ));
            }
        }
    }

    let tenants = count_rows(&conn, &mut plan)?;
    plan.tenants = decide_actions(fleet, &plan, tenants)?;
    Ok(plan)
}

/// Decides each source table's route. Returns (index into `tables`, route) for every table that
/// is imported, in source order; records the others in `plan.left_alone`.
fn classify(
    conn: &Connection,
    tables: &[Table],
    options: &ImportOptions,
    plan: &mut ImportPlan,
) -> Result<Vec<(usize, Route)>> {
    let by_name: HashMap<String, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.to_ascii_lowercase(), i))
        .collect();
    let eligible = |t: &Table| t.kind == Kind::Table && !t.is_internal();
    let mut routes: Vec<Option<Route>> = vec![None; tables.len()];

    for (name, column) in &options.tables {
        let Some(&i) = by_name.get(&name.to_ascii_lowercase()) else {
            plan.problems.push(format!(
                "--table {name}={column}: the source has no table {name}"
            ));
            continue;
        };
        let table = &tables[i];
        if !eligible(table) {
            plan.problems.push(format!(
                "--table {name}={column}: {} cannot be imported (a virtual or internal table)",
                table.name
            ));
            continue;
        }
        match table.column(column) {
            Some(c) => {
                routes[i] = Some(Route::Named {
                    column: c.name.clone(),
                })
            }
            None => plan.problems.push(format!(
                "--table {name}={column}: table {} has no column {column} (it has: {})",
                table.name,
                column_names(table)
            )),
        }
    }

    for (i, table) in tables.iter().enumerate() {
        if routes[i].is_none()
            && eligible(table)
            && let Some(c) = table.column(&options.tenant_column)
        {
            routes[i] = Some(Route::Column {
                column: c.name.clone(),
            });
        }
    }
    if routes.iter().all(Option::is_none) {
        let names: Vec<&str> = tables
            .iter()
            .filter(|t| eligible(t))
            .map(|t| t.name.as_str())
            .collect();
        return Err(Error::Config(format!(
            "no table in {} has a column {} (its tables: {}); pass the column that holds the \
             tenant id with --tenant-column, or name tables with --table T=COLUMN",
            plan.source.display(),
            options.tenant_column,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }

    let mut foreign_keys: Vec<Vec<ForeignKey>> = Vec::with_capacity(tables.len());
    for table in tables {
        foreign_keys.push(if eligible(table) {
            schema::foreign_keys(conn, &table.name)?
        } else {
            Vec::new()
        });
    }
    let resolve = |fk: &ForeignKey| -> Option<(usize, Vec<String>)> {
        let &p = by_name.get(&fk.parent.to_ascii_lowercase())?;
        let parent = &tables[p];
        let columns: Vec<String> = if fk.parent_columns.is_empty() {
            parent
                .primary_key()
                .iter()
                .map(|c| c.name.clone())
                .collect()
        } else {
            fk.parent_columns
                .iter()
                .map(|n| parent.column(n).map(|c| c.name.clone()))
                .collect::<Option<_>>()?
        };
        (columns.len() == fk.columns.len() && !columns.is_empty()).then_some((p, columns))
    };

    // The table the tenant column references is split by the referenced column.
    for i in 0..tables.len() {
        let Some(Route::Column { column }) = &routes[i] else {
            continue;
        };
        let column = column.clone();
        for fk in &foreign_keys[i] {
            if fk.columns.len() != 1 || !fk.columns[0].eq_ignore_ascii_case(&column) {
                continue;
            }
            if let Some((p, parent_columns)) = resolve(fk)
                && routes[p].is_none()
                && eligible(&tables[p])
            {
                routes[p] = Some(Route::Referenced {
                    column: parent_columns[0].clone(),
                    by: format!("{}.{}", tables[i].name, column),
                });
            }
        }
    }

    // Tables that reach an imported table through a foreign key follow their parent rows,
    // level by level, so each takes the shortest path; a direct split parent is preferred.
    let mut unique_cache: HashMap<usize, Vec<Vec<String>>> = HashMap::new();
    let mut not_unique: HashMap<usize, String> = HashMap::new();
    loop {
        let mut found: Vec<(usize, Route)> = Vec::new();
        for i in 0..tables.len() {
            if routes[i].is_some() || !eligible(&tables[i]) {
                continue;
            }
            let mut best: Option<(usize, Route)> = None;
            for fk in &foreign_keys[i] {
                let Some((p, parent_columns)) = resolve(fk) else {
                    continue;
                };
                if p == i {
                    continue;
                }
                let Some(parent_route) = &routes[p] else {
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = unique_cache.entry(p) {
                    slot.insert(schema::unique_keys(conn, &tables[p])?);
                }
                let mut wanted: Vec<String> = parent_columns
                    .iter()
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                wanted.sort();
                let unique = unique_cache.get(&p).is_some_and(|keys| {
                    keys.iter().any(|k| {
                        let mut k = k.clone();
                        k.sort();
                        k == wanted
                    })
                });
                if !unique {
                    not_unique.insert(
                        i,
                        format!(
                            "its foreign key {} -> {}({}) does not name a unique key of {}, so \
                             a row could have several parents",
                            fk.columns.join(","),
                            tables[p].name,
                            parent_columns.join(","),
                            tables[p].name
                        ),
                    );
                    continue;
                }
                let hop = Hop {
                    table: tables[i].name.clone(),
                    columns: fk
                        .columns
                        .iter()
                        .map(|n| {
                            tables[i]
                                .column(n)
                                .map_or_else(|| n.clone(), |c| c.name.clone())
                        })
                        .collect(),
                    parent: tables[p].name.clone(),
                    parent_columns,
                };
                let (rank, route) = match parent_route {
                    Route::Column { column } | Route::Named { column } => (
                        0,
                        Route::Follows {
                            path: vec![hop],
                            root: tables[p].name.clone(),
                            column: column.clone(),
                        },
                    ),
                    Route::Referenced { column, .. } => (
                        1,
                        Route::Follows {
                            path: vec![hop],
                            root: tables[p].name.clone(),
                            column: column.clone(),
                        },
                    ),
                    Route::Follows { path, root, column } => {
                        let mut full = vec![hop];
                        full.extend(path.iter().cloned());
                        (
                            1 + full.len(),
                            Route::Follows {
                                path: full,
                                root: root.clone(),
                                column: column.clone(),
                            },
                        )
                    }
                };
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((rank, route));
                }
            }
            if let Some((_, route)) = best {
                found.push((i, route));
            }
        }
        if found.is_empty() {
            break;
        }
        for (i, route) in found {
            routes[i] = Some(route);
        }
    }

    let mut imported = Vec::new();
    for (i, route) in routes.into_iter().enumerate() {
        let table = &tables[i];
        if table.name.to_ascii_lowercase().starts_with("sqlite_") {
            continue; // SQLite's own: sqlite_schema, sqlite_sequence, sqlite_stat1
        }
        match route {
            Some(route) => imported.push((i, route)),
            None => {
                let reason = match table.kind {
                    Kind::Virtual => "a virtual table: not copied".to_string(),
                    Kind::Shadow => "holds a virtual table's data: not copied".to_string(),
                    Kind::Table if table.is_internal() => "kept by tenantdb itself".to_string(),
                    Kind::Table => match not_unique.remove(&i) {
                        Some(why) => format!(
                            "{why}; split it by a column of its own with --table {}=COLUMN",
                            table.name
                        ),
                        None => format!(
                            "no {} column and no foreign key to an imported table (shared by \
                             all tenants?); split it by a column of its own with --table \
                             {}=COLUMN",
                            options.tenant_column, table.name
                        ),
                    },
                };
                plan.left_alone.push(LeftAlone {
                    table: table.name.clone(),
                    reason,
                });
            }
        }
    }
    // Parents before the rows that follow them, so each tenant is written top-down.
    imported.sort_by_key(|(i, route)| {
        let rank = match route {
            Route::Referenced { .. } => 0,
            Route::Column { .. } | Route::Named { .. } => 1,
            Route::Follows { path, .. } => 1 + path.len(),
        };
        (rank, *i)
    });
    Ok(imported)
}

fn column_names(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maps a source table's columns onto its tenant table by name and checks that the values
/// would arrive unchanged.
fn map_columns(
    conn: &Connection,
    source: &Table,
    tenant_tables: &[Table],
    table_plan: &mut TablePlan,
    plan: &mut ImportPlan,
) -> Result<()> {
    let Some(target) = tenant_tables
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(&source.name))
    else {
        plan.problems.push(format!(
            "table {} ({}) is not in the tenant schema (version {}): add it in a migration, or \
             leave it out with --skip-table {}",
            source.name,
            table_plan.route.describe(),
            plan.schema_version,
            source.name
        ));
        return Ok(());
    };
    table_plan.tenant_table = Some(target.name.clone());
    let mut checks: Vec<(usize, usize)> = Vec::new(); // (source column, target column)
    for (s, column) in source.columns.iter().enumerate() {
        let Some(t) = target
            .columns
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(&column.name))
        else {
            table_plan.dropped.push(column.name.clone());
            continue;
        };
        let tc = &target.columns[t];
        if tc.generated {
            table_plan.dropped.push(column.name.clone());
            plan.notes.push(format!(
                "{}.{}: generated in the tenant table, so it is computed there, not copied",
                source.name, column.name
            ));
            continue;
        }
        table_plan.columns.push(column.name.clone());
        table_plan.target_columns.push(tc.name.clone());
        let (st, tt) = (source.column_type(column), target.column_type(tc));
        if !tt.accepts_all_of(&st) || (tc.not_null && !column.not_null) {
            checks.push((s, t));
        } else if !column.declared.eq_ignore_ascii_case(&tc.declared) {
            plan.notes.push(format!(
                "{}.{}: declared {} in the source and {} in the tenant schema; every value \
                 arrives unchanged",
                source.name,
                column.name,
                shown_type(&column.declared),
                shown_type(&tc.declared)
            ));
        }
    }
    if !table_plan.dropped.is_empty() {
        plan.notes.push(format!(
            "{}: not copied (the tenant table has no such column): {}",
            source.name,
            table_plan.dropped.join(", ")
        ));
    }
    for tc in &target.columns {
        if tc.generated
            || table_plan
                .target_columns
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&tc.name))
        {
            continue;
        }
        if tc.not_null && !tc.has_default && !target.is_rowid_alias(tc) {
            plan.problems.push(format!(
                "tenant table {}: column {} is NOT NULL without a default, and the source \
                 table has no such column to fill it",
                target.name, tc.name
            ));
        } else {
            table_plan.defaulted.push(tc.name.clone());
        }
    }
    if !table_plan.defaulted.is_empty() {
        plan.notes.push(format!(
            "{}: tenant columns the source lacks get their defaults: {}",
            target.name,
            table_plan.defaulted.join(", ")
        ));
    }
    if table_plan.columns.is_empty() {
        plan.problems.push(format!(
            "table {}: no column of the source table is in the tenant table {}",
            source.name, target.name
        ));
        return Ok(());
    }
    if !checks.is_empty() {
        check_values(conn, source, target, &checks, plan)?;
    }
    Ok(())
}

fn shown_type(declared: &str) -> &str {
    if declared.trim().is_empty() {
        "without a type"
    } else {
        declared
    }
}

/// Reads the columns whose types or NOT NULL constraints differ and counts the values that
/// would change or be refused on the way in.
fn check_values(
    conn: &Connection,
    source: &Table,
    target: &Table,
    checks: &[(usize, usize)],
    plan: &mut ImportPlan,
) -> Result<()> {
    struct Tally {
        changed: u64,
        refused: u64,
        nulls: u64,
        example: Option<String>,
    }
    let mut tallies: Vec<Tally> = checks
        .iter()
        .map(|_| Tally {
            changed: 0,
            refused: 0,
            nulls: 0,
            example: None,
        })
        .collect();
    let types: Vec<_> = checks
        .iter()
        .map(|&(_, t)| {
            (
                target.column_type(&target.columns[t]),
                target.columns[t].not_null,
            )
        })
        .collect();
    let columns: Vec<String> = checks
        .iter()
        .map(|&(s, _)| quote(&source.columns[s].name))
        .collect();
    let sql = format!("SELECT {} FROM {}", columns.join(", "), quote(&source.name));
    let context = format!("checking the values of {}", source.name);
    let mut stmt = conn.prepare(&sql).context(context.clone())?;
    let mut rows = stmt.query([]).context(context.clone())?;
    while let Some(row) = rows.next().context(context.clone())? {
        for (i, ((ty, not_null), tally)) in types.iter().zip(tallies.iter_mut()).enumerate() {
            let value = row.get_ref(i).context(context.clone())?;
            if matches!(value, ValueRef::Null) {
                if *not_null {
                    tally.nulls += 1;
                }
                continue;
            }
            match ty.fate(value) {
                Fate::Same => continue,
                Fate::Changed => tally.changed += 1,
                Fate::Refused => tally.refused += 1,
            }
            if tally.example.is_none() {
                tally.example = Some(show(value));
            }
        }
    }
    for (&(s, t), tally) in checks.iter().zip(&tallies) {
        let (sc, tc) = (&source.columns[s], &target.columns[t]);
        let types = format!(
            "declared {} in the source, {} in the tenant schema",
            shown_type(&sc.declared),
            shown_type(&tc.declared)
        );
        let example = tally
            .example
            .as_ref()
            .map(|e| format!(", e.g. {e}"))
            .unwrap_or_default();
        if tally.changed > 0 {
            plan.problems.push(format!(
                "{}.{}: {} change type on the way in ({types}{example}); make the \
                 tenant column's type match in a migration",
                source.name,
                sc.name,
                values_would(tally.changed)
            ));
        }
        if tally.refused > 0 {
            plan.problems.push(format!(
                "{}.{}: {} be refused by the tenant table ({types}{example})",
                source.name,
                sc.name,
                values_would(tally.refused)
            ));
        }
        if tally.nulls > 0 {
            plan.problems.push(format!(
                "{}.{}: {} NULL, but the tenant column is NOT NULL",
                source.name,
                sc.name,
                if tally.nulls == 1 {
                    "1 row is".to_string()
                } else {
                    format!("{} rows are", tally.nulls)
                }
            ));
        }
        if tally.changed == 0
            && tally.refused == 0
            && !sc.declared.eq_ignore_ascii_case(&tc.declared)
        {
            plan.notes.push(format!(
                "{}.{}: {types}; no stored value changes on the way in",
                source.name, sc.name
            ));
        }
    }
    Ok(())
}

/// Counts every tenant's rows per table with one grouped scan of each imported table, and
/// tallies the rows that reach no valid tenant. Returns the tenants in id order.
fn count_rows(conn: &Connection, plan: &mut ImportPlan) -> Result<BTreeMap<TenantId, Vec<u64>>> {
    let table_count = plan.tables.len();
    let mut tenants: BTreeMap<TenantId, Vec<u64>> = BTreeMap::new();
    for t in 0..table_count {
        let table = &plan.tables[t];
        if !table.written() {
            continue;
        }
        let (from, key) = table.source_and_key();
        let context = format!("counting the rows of {}", table.table);
        let sql = format!(
            "SELECT typeof({key}), CAST({key} AS TEXT) COLLATE BINARY, count(*) FROM {from} \
             GROUP BY 1, 2"
        );
        let mut left_out = LeftOut::default();
        let mut rows_in = 0u64;
        let mut reached = 0u64;
        {
            let mut stmt = conn.prepare(&sql).context(context.clone())?;
            let mut rows = stmt.query([]).context(context.clone())?;
            while let Some(row) = rows.next().context(context.clone())? {
                let kind: String = row.get(0).context(context.clone())?;
                let count: i64 = row.get(2).context(context.clone())?;
                let count = count.max(0) as u64;
                reached += count;
                let value = row.get_ref(1).context(context.clone())?;
                let id = match (kind.as_str(), value) {
                    ("integer" | "text", ValueRef::Text(bytes)) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| TenantId::new(s).ok()),
                    _ => None,
                };
                match id {
                    Some(id) => {
                        tenants.entry(id).or_insert_with(|| vec![0; table_count])[t] += count;
                        rows_in += count;
                    }
                    None if kind == "null" => left_out.null += count,
                    None => {
                        left_out.invalid += count;
                        if left_out.examples.len() < 5 {
                            let shown = match kind.as_str() {
                                "blob" => "a blob".to_string(),
                                _ => show(value),
                            };
                            left_out.examples.push(format!(
                                "{shown} ({count} row{})",
                                if count == 1 { "" } else { "s" }
                            ));
                        }
                    }
                }
            }
        }
        if matches!(table.route, Route::Follows { .. }) {
            let total: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", quote(&table.table)),
                    [],
                    |r| r.get(0),
                )
                .context(context.clone())?;
            left_out.orphaned = (total.max(0) as u64).saturating_sub(reached);
        }
        let table = &mut plan.tables[t];
        table.rows = rows_in;
        if left_out.total() > 0 {
            let what = describe_left_out(table, &left_out, &plan.tenant_column);
            if plan.skip_invalid {
                plan.notes.push(format!(
                    "{what}; left out (--skip-invalid): {}",
                    rows(left_out.total())
                ));
            } else {
                plan.problems.push(format!(
                    "{what}; fix them in the source, or pass --skip-invalid to leave these rows \
                     out (they are then reported)"
                ));
            }
            plan.rows_left_out += left_out.total();
        }
        table.left_out = left_out;
    }
    plan.rows = plan.tables.iter().map(|t| t.rows).sum();
    Ok(tenants)
}

fn describe_left_out(table: &TablePlan, left: &LeftOut, tenant_column: &str) -> String {
    let key = match &table.route {
        Route::Column { column } | Route::Named { column } | Route::Referenced { column, .. } => {
            format!("{}.{column}", table.table)
        }
        Route::Follows { root, column, .. } => {
            format!("{} (through {root}.{column})", table.table)
        }
    };
    let mut parts = Vec::new();
    if left.invalid > 0 {
        parts.push(format!(
            "{} a {tenant_column} that is not a valid tenant id (a tenant id is \
             {TENANT_ID_RULE}; examples: {})",
            rows_have(left.invalid),
            left.examples.join(", ")
        ));
    }
    if left.null > 0 {
        parts.push(format!("{} a NULL tenant value", rows_have(left.null)));
    }
    if left.orphaned > 0 {
        parts.push(format!(
            "{} no parent row to follow (a NULL or dangling foreign key)",
            rows_have(left.orphaned)
        ));
    }
    format!("{key}: {}", parts.join("; "))
}

/// Looks each tenant up in the catalog and, for tenants that exist, in their own database:
/// whether it already holds this import, and whether it is at the schema version the columns
/// were mapped onto.
fn decide_actions(
    fleet: &Fleet,
    plan: &ImportPlan,
    tenants: BTreeMap<TenantId, Vec<u64>>,
) -> Result<Vec<TenantPlan>> {
    let mut planned = Vec::with_capacity(tenants.len());
    let mut existing = Vec::new();
    for (id, rows) in tenants {
        let action = match fleet.catalog().tenant(&id)? {
            None => TenantAction::Create,
            Some(r) if r.state == TenantState::Active => {
                existing.push(planned.len());
                TenantAction::Import
            }
            Some(_) => TenantAction::Deleted,
        };
        planned.push(TenantPlan {
            id,
            action,
            reason: None,
            rows,
        });
    }
    let next = AtomicUsize::new(0);
    let decided = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.min(existing.len()) {
            scope.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = existing.get(n) else { break };
                    let id = &planned[i].id;
                    let path = fleet.layout().tenant_db(id);
                    let state = write::open_read_only(&path)
                        .and_then(|conn| write::import_state(&conn, plan));
                    mine.push((i, state));
                }
                decided
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            });
        }
    });
    for (i, state) in decided.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let (action, reason) = match state {
            Ok(write::ImportState::Done) => (TenantAction::Done, None),
            Ok(write::ImportState::Ready) => (TenantAction::Import, None),
            Ok(write::ImportState::Blocked(reason)) => (TenantAction::Blocked, Some(reason)),
            Err(e) => (TenantAction::Blocked, Some(e.to_string())),
        };
        planned[i].action = action;
        planned[i].reason = reason;
    }
    Ok(planned)
}

fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

fn rows_have(n: u64) -> String {
    if n == 1 {
        "1 row has".into()
    } else {
        format!("{n} rows have")
    }
}

fn values_would(n: u64) -> String {
    if n == 1 {
        "1 value would".into()
    } else {
        format!("{n} values would")
    }
}
