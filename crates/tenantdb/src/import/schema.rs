//! Reading a database's tables, columns, foreign keys and unique keys through SQLite's own
//! pragmas, for the source and for the tenant template alike.

use rusqlite::Connection;

use crate::error::{Context, Result};
use crate::import::types::ColumnType;

#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub declared: String,
    pub not_null: bool,
    pub has_default: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: u32,
    /// Generated columns cannot be written.
    pub generated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Table,
    Virtual,
    Shadow,
}

#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub name: String,
    pub kind: Kind,
    pub columns: Vec<Column>,
    pub strict: bool,
    pub without_rowid: bool,
}

impl Table {
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The primary key's columns in key order (empty for a rowid table without one).
    pub(crate) fn primary_key(&self) -> Vec<&Column> {
        let mut pk: Vec<&Column> = self.columns.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        pk
    }

    /// `INTEGER PRIMARY KEY` in a rowid table: an alias of the rowid, integers only.
    pub(crate) fn is_rowid_alias(&self, column: &Column) -> bool {
        !self.without_rowid
            && column.pk == 1
            && self.columns.iter().filter(|c| c.pk > 0).count() == 1
            && column.declared.eq_ignore_ascii_case("INTEGER")
    }

    pub(crate) fn column_type(&self, column: &Column) -> ColumnType {
        ColumnType::new(&column.declared, self.strict, self.is_rowid_alias(column))
    }

    /// Tables the library or SQLite keep for themselves.
    pub(crate) fn is_internal(&self) -> bool {
        is_internal_name(&self.name)
    }
}

pub(crate) fn is_internal_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("sqlite_") || lower.starts_with("_tenantdb_")
}

/// A foreign key: `columns` of the child reference `parent_columns` of `parent`.
#[derive(Debug, Clone)]
pub(crate) struct ForeignKey {
    pub columns: Vec<String>,
    pub parent: String,
    /// Empty when the key names no columns (it then references the parent's primary key).
    pub parent_columns: Vec<String>,
}

/// Every table of the main schema (views are not tables and are left out).
pub(crate) fn tables(conn: &Connection) -> Result<Vec<Table>> {
    let listed: Vec<(String, String, bool, bool)> = {
        let mut stmt = conn
            .prepare(
                "SELECT name, type, wr, strict FROM pragma_table_list WHERE schema = 'main' \
                 AND type IN ('table', 'virtual', 'shadow') ORDER BY name",
            )
            .context("listing tables")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .context("listing tables")?;
        rows.collect::<rusqlite::Result<_>>()
            .context("listing tables")?
    };
    let mut tables = Vec::with_capacity(listed.len());
    for (name, kind, without_rowid, strict) in listed {
        let kind = match kind.as_str() {
            "virtual" => Kind::Virtual,
            "shadow" => Kind::Shadow,
            _ => Kind::Table,
        };
        let columns = if kind == Kind::Table {
            columns(conn, &name)?
        } else {
            Vec::new()
        };
        tables.push(Table {
            name,
            kind,
            columns,
            strict,
            without_rowid,
        });
    }
    Ok(tables)
}

fn columns(conn: &Connection, table: &str) -> Result<Vec<Column>> {
    let context = || format!("reading the columns of {table}");
    let mut stmt = conn
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk, hidden \
             FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )
        .with_context(context)?;
    let rows = stmt
        .query_map([table], |r| {
            let hidden: i64 = r.get(5)?;
            Ok(Column {
                name: r.get(0)?,
                declared: r.get(1)?,
                not_null: r.get(2)?,
                has_default: r.get(3)?,
                pk: r.get(4)?,
                generated: hidden == 2 || hidden == 3,
            })
        })
        .with_context(context)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .with_context(context)
}

/// The foreign keys declared on `table`, in declaration order.
pub(crate) fn foreign_keys(conn: &Connection, table: &str) -> Result<Vec<ForeignKey>> {
    let context = || format!("reading the foreign keys of {table}");
    let mut stmt = conn
        .prepare(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1, 'main') \
             ORDER BY id DESC, seq",
        )
        .with_context(context)?;
    let rows = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .with_context(context)?;
    let mut keys: Vec<(i64, ForeignKey)> = Vec::new();
    for row in rows {
        let (id, parent, from, to) = row.with_context(context)?;
        match keys.last_mut() {
            Some((last, key)) if *last == id => {
                key.columns.push(from);
                key.parent_columns.extend(to);
            }
            _ => keys.push((
                id,
                ForeignKey {
                    columns: vec![from],
                    parent,
                    parent_columns: to.into_iter().collect(),
                },
            )),
        }
    }
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// Column sets that identify at most one row of `table`: its primary key and every complete
/// (not partial) unique index on plain columns. Lower-cased.
pub(crate) fn unique_keys(conn: &Connection, table: &Table) -> Result<Vec<Vec<String>>> {
    let context = || format!("reading the indexes of {}", table.name);
    let mut keys = Vec::new();
    let pk: Vec<String> = table
        .primary_key()
        .iter()
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    if !pk.is_empty() {
        keys.push(pk);
    }
    let indexes: Vec<String> = {
        let mut stmt = conn
            .prepare(
                "SELECT name FROM pragma_index_list(?1, 'main') WHERE \"unique\" = 1 \
                 AND partial = 0",
            )
            .with_context(context)?;
        let rows = stmt
            .query_map([&table.name], |r| r.get(0))
            .with_context(context)?;
        rows.collect::<rusqlite::Result<_>>()
            .with_context(context)?
    };
    for index in indexes {
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_index_info(?1, 'main') ORDER BY seqno")
            .with_context(context)?;
        let names: Vec<Option<String>> = stmt
            .query_map([&index], |r| r.get(0))
            .with_context(context)?
            .collect::<rusqlite::Result<_>>()
            .with_context(context)?;
        // An expression index has no column name for its expression.
        if let Some(names) = names.into_iter().collect::<Option<Vec<String>>>() {
            keys.push(names.iter().map(|n| n.to_ascii_lowercase()).collect());
        }
    }
    Ok(keys)
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

trait WithContext<T> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> WithContext<T> for std::result::Result<T, rusqlite::Error> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| crate::Error::Sqlite {
            context: f(),
            source,
        })
    }
}
