//! Migrations (DESIGN section 6): numbered SQL files applied to every tenant, one transaction
//! per migration per tenant.
//!
//! The tenant file is the truth about its own version (`PRAGMA user_version`, written in the same
//! transaction as the migration), so a run killed at any point resumes by asking each tenant
//! where it is; the catalog's copy of the version is bookkeeping for status and reports.

use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{Connection, TransactionBehavior, params};
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::catalog::Migration;
use crate::error::{Context, Error, Result, io_error};
use crate::time::unix_now;

/// Tables the library keeps inside each tenant database. Created in every migration
/// transaction so tenants made by any earlier template get them too.
pub const TENANT_BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS _tenantdb_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at INTEGER NOT NULL
);";

/// Creates the library's tables in a tenant database if they are missing.
pub fn create_bookkeeping(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TENANT_BOOKKEEPING)?;
    conn.execute_batch(crate::audit::AUDIT_TABLE)
}

/// Loads `NNNN_name.sql` files from `dir`. Versions must run 1, 2, 3... without gaps or
/// repeats: an ambiguous order is refused rather than guessed.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>> {
    let migrations = read_dir(dir)?;
    check_sequence(&migrations)?;
    Ok(migrations)
}

/// Loads `dir` for applying on top of `ledger`: like [`load_dir`], but an applied migration
/// that was edited or removed is reported as such ([`Error::MigrationDrift`]) rather than as
/// the gap in the numbering that its removal leaves.
pub fn load_dir_against(dir: &Path, ledger: &[Migration]) -> Result<Vec<Migration>> {
    let migrations = read_dir(dir)?;
    check_drift(ledger, &migrations)?;
    check_sequence(&migrations)?;
    Ok(migrations)
}

/// Reads and parses the migration files in `dir`, in version order, without checking the
/// sequence.
fn read_dir(dir: &Path) -> Result<Vec<Migration>> {
    let entries = std::fs::read_dir(dir).map_err(io_error("reading migrations directory", dir))?;
    let mut migrations = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("reading migrations directory", dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let (digits, label) = stem.split_once('_').unwrap_or((stem, ""));
        let version: u32 = match digits.parse() {
            Ok(v) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => v,
            _ => {
                return Err(Error::InvalidMigration(format!(
                    "{name}: migration files are named NNNN_name.sql (a version number, '_', a name)"
                )));
            }
        };
        if label.is_empty() {
            return Err(Error::InvalidMigration(format!(
                "{name}: the file name needs a name after the version, as in 0001_create_todos.sql"
            )));
        }
        let path = entry.path();
        let sql = std::fs::read_to_string(&path).map_err(io_error("reading migration", &path))?;
        migrations.push(Migration {
            version,
            name: name.to_string(),
            sha256: checksum(&sql),
            sql,
            registered_at: 0,
        });
    }
    migrations.sort_by(|a, b| (a.version, &a.name).cmp(&(b.version, &b.name)));
    Ok(migrations)
}

fn check_sequence(migrations: &[Migration]) -> Result<()> {
    for (i, m) in migrations.iter().enumerate() {
        let expected = i as u32 + 1;
        if m.version != expected {
            let problem = if m.version < expected {
                format!("version {} appears twice", m.version)
            } else {
                format!("version {expected} is missing")
            };
            return Err(Error::InvalidMigration(format!(
                "{}: {problem}; versions must run 1, 2, 3... without gaps",
                m.name
            )));
        }
        check_sql(m)?;
    }
    Ok(())
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn check_sql(m: &Migration) -> Result<()> {
    if m.sql.trim().is_empty() {
        return Err(Error::InvalidMigration(format!(
            "{}: the file is empty",
            m.name
        )));
    }
    Ok(())
}

/// Applied migrations must not change. Compares the ledger with what is on disk and names the
/// first difference.
pub fn check_drift(ledger: &[Migration], on_disk: &[Migration]) -> Result<()> {
    for applied in ledger {
        let found = on_disk.iter().find(|m| m.version == applied.version);
        let problem = match found {
            None => "was removed from the migrations directory".to_string(),
            Some(m) if m.sha256 != applied.sha256 => format!(
                "was edited: {} now has sha256 {}, applied as {}",
                m.name, m.sha256, applied.sha256
            ),
            Some(m) if m.name != applied.name => format!("was renamed to {}", m.name),
            Some(_) => continue,
        };
        return Err(Error::MigrationDrift {
            version: applied.version,
            name: applied.name.clone(),
            problem,
        });
    }
    Ok(())
}

/// Why one tenant stopped short of the target version.
#[derive(Debug, Clone)]
pub struct TenantFailure {
    pub version: u32,
    pub error: String,
}

/// Brings one tenant database from its version to the last of `migrations`, one transaction per
/// migration. Returns the version reached and, if a migration failed, why (the failed migration
/// left nothing behind). With `dry_run`, all pending migrations run in one transaction that is
/// rolled back, so the database is untouched.
///
/// Migrations run without the guard, so triggers they set off run without it too; a trigger is
/// the tenant's own doing when users may change their schema (`allow_ddl`). While migrations
/// run, triggers may not write tenantdb's tables (`_tenantdb_*`): a trigger that would (to erase
/// the write audit, say) fails that tenant's migration, which is recorded and shown, instead of
/// doing so. The connection is left without an authorizer.
pub fn apply(
    conn: &mut Connection,
    migrations: &[Migration],
    dry_run: bool,
) -> Result<(u32, Option<TenantFailure>)> {
    let denied = crate::guard::keep_triggers_off_reserved_tables(conn)
        .context("protecting tenantdb's tables during migrations")?;
    let mut outcome = apply_unguarded(conn, migrations, dry_run);
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .context("ending migrations")?;
    if let Ok((_, Some(failure))) = &mut outcome
        && let Some(reason) = denied.lock().ok().and_then(|mut d| d.take())
    {
        failure.error = format!("{}: {reason}", failure.error);
    }
    outcome
}

fn apply_unguarded(
    conn: &mut Connection,
    migrations: &[Migration],
    dry_run: bool,
) -> Result<(u32, Option<TenantFailure>)> {
    let current = user_version(conn)?;
    if dry_run {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .context("starting a dry run")?;
        for m in migrations.iter().filter(|m| m.version > current) {
            if let Err(e) = run_one(&tx, m) {
                return Ok((current, Some(failure(m, e))));
            }
        }
        tx.rollback().context("ending a dry run")?;
        return Ok((current, None));
    }
    let mut reached = current;
    for m in migrations.iter().filter(|m| m.version > current) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a migration")?;
        // Another process may have migrated this tenant while we waited for the write lock.
        let now_at = user_version(&tx)?;
        if now_at >= m.version {
            reached = now_at;
            continue;
        }
        match run_one(&tx, m).and_then(|()| tx.commit().context("committing a migration")) {
            Ok(()) => reached = m.version,
            Err(e) => return Ok((reached, Some(failure(m, e)))),
        }
    }
    Ok((reached, None))
}

fn failure(m: &Migration, e: Error) -> TenantFailure {
    let error = match e {
        Error::Sqlite { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    TenantFailure {
        version: m.version,
        error: format!("{}: {error}", m.name),
    }
}

fn run_one(conn: &Connection, m: &Migration) -> Result<()> {
    create_bookkeeping(conn).context("creating bookkeeping tables")?;
    conn.execute_batch(&m.sql).context("running migration")?;
    conn.execute(
        "INSERT INTO _tenantdb_migrations (version, name, sha256, applied_at) VALUES (?1, ?2, ?3, ?4)",
        params![m.version, m.name, m.sha256, unix_now()],
    )
    .context("recording migration")?;
    conn.execute_batch(&format!("PRAGMA user_version = {}", m.version))
        .context("recording version")
}

pub fn user_version(conn: &Connection) -> Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .context("reading user_version")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: u32, name: &str, sql: &str) -> Migration {
        Migration {
            version,
            name: name.to_string(),
            sha256: checksum(sql),
            sql: sql.to_string(),
            registered_at: 0,
        }
    }

    #[test]
    fn a_tenants_trigger_cannot_write_tenantdb_tables_during_a_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        let first = migration(
            1,
            "0001_todos.sql",
            "CREATE TABLE todos (id INTEGER PRIMARY KEY, done INTEGER);",
        );
        assert_eq!(
            apply(&mut conn, std::slice::from_ref(&first), false)
                .unwrap()
                .0,
            1
        );
        conn.execute_batch(
            "INSERT INTO todos (done) VALUES (0);
             INSERT INTO _tenantdb_audit VALUES (1, 0, 'user:a', 'INSERT', NULL, 1, '0', 'h');
             CREATE TRIGGER wipe AFTER UPDATE ON todos BEGIN DELETE FROM _tenantdb_audit; END;",
        )
        .unwrap();
        let touch = migration(2, "0002_touch.sql", "UPDATE todos SET done = 1;");
        let (reached, failure) = apply(&mut conn, &[first.clone(), touch.clone()], false).unwrap();
        assert_eq!(reached, 1);
        let failure = failure.expect("the trigger's write is refused");
        assert_eq!(failure.version, 2);
        assert!(
            failure
                .error
                .contains("trigger wipe may not write _tenantdb_audit"),
            "{}",
            failure.error
        );
        let count = |conn: &Connection, sql: &str| -> i64 {
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        assert_eq!(count(&conn, "SELECT count(*) FROM _tenantdb_audit"), 1);
        assert_eq!(count(&conn, "SELECT done FROM todos"), 0);

        // The migration's own statements still write tenantdb's tables, and other triggers run.
        conn.execute_batch("DROP TRIGGER wipe; CREATE TABLE log (n); CREATE TRIGGER note AFTER UPDATE ON todos BEGIN INSERT INTO log VALUES (1); END;")
            .unwrap();
        let (reached, failure) = apply(&mut conn, &[first, touch], false).unwrap();
        assert_eq!((reached, failure.map(|f| f.error)), (2, None));
        assert_eq!(count(&conn, "SELECT count(*) FROM log"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM _tenantdb_migrations"), 2);
    }
}
