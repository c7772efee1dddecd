//! Integration tests of the library: a real data directory in a temp dir, real SQLite files,
//! real threads. Each test builds its own fleet; the helpers below keep the tests about
//! behaviour rather than setup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tenantdb::{
    Args, Config, Error, Fleet, GuardConfig, MigrateOptions, MigrateReport, NoProgress,
    StatementResult, TenantId, TenantState, Value,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const TODOS: &str =
    "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0);";
const UNIQUE_TITLE: &str = "CREATE UNIQUE INDEX todos_title ON todos(title);";

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn config(tmp: &TempDir) -> Config {
    Config::new(tmp.path().join("data"))
}

fn open(tmp: &TempDir) -> Fleet {
    Fleet::open(config(tmp)).unwrap()
}

/// A migrations directory inside `tmp` holding exactly `files`.
fn migrations(tmp: &TempDir, files: &[(&str, &str)]) -> PathBuf {
    let dir = tmp.path().join("migrations");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap();
    }
    dir
}

fn options(dry_run: bool) -> MigrateOptions {
    MigrateOptions { dry_run, jobs: 4 }
}

fn migrate(fleet: &Fleet, dir: &Path) -> tenantdb::Result<MigrateReport> {
    fleet.migrate(dir, &options(false), &NoProgress, "test")
}

/// A fleet whose tenants have a `todos` table (migration 0001).
fn fleet_with_todos(tmp: &TempDir, config: Config) -> Fleet {
    let fleet = Fleet::open(config).unwrap();
    let dir = migrations(tmp, &[("0001_todos.sql", TODOS)]);
    migrate(&fleet, &dir).unwrap();
    fleet
}

fn exec(fleet: &Fleet, id: &TenantId, sql: &str) -> tenantdb::Result<StatementResult> {
    fleet.connect(id)?.execute(sql, &Args::default())
}

fn insert_todo(fleet: &Fleet, id: &TenantId, title: &str) {
    let args = Args {
        positional: vec![Value::Text(title.into())],
        ..Args::default()
    };
    fleet
        .connect(id)
        .unwrap()
        .execute("INSERT INTO todos(title) VALUES (?)", &args)
        .unwrap();
}

/// An unguarded connection straight to a tenant's file (never creates it).
fn raw(fleet: &Fleet, id: &TenantId) -> Connection {
    raw_path(&fleet.layout().tenant_db(id))
}

fn raw_path(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap()
}

fn user_version(conn: &Connection) -> u32 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn applied_versions(conn: &Connection) -> Vec<u32> {
    let mut stmt = conn
        .prepare("SELECT version FROM _tenantdb_migrations ORDER BY version")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn has_object(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

/// Everything a test may want to prove unchanged about a tenant database.
#[derive(Debug, PartialEq)]
struct Snapshot {
    user_version: u32,
    schema: Vec<(String, String, Option<String>)>,
    todos: Option<Vec<(i64, Option<String>, i64)>>,
    ledger: Vec<(u32, String, String)>,
}

fn snapshot(path: &Path) -> Snapshot {
    let conn = raw_path(path);
    let schema = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let todos = conn
        .prepare("SELECT id, title, done FROM todos ORDER BY id")
        .ok()
        .map(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        });
    let ledger = conn
        .prepare("SELECT version, name, sha256 FROM _tenantdb_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    Snapshot {
        user_version: user_version(&conn),
        schema,
        todos,
        ledger,
    }
}

/// Every file below `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn file_names(dir: &Path) -> Vec<String> {
    files_under(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn ints(result: &StatementResult) -> Vec<i64> {
    result
        .rows
        .iter()
        .map(|row| match row[0] {
            Value::Integer(i) => i,
            ref other => panic!("expected an integer, got {other:?}"),
        })
        .collect()
}

fn sql_code(result: tenantdb::Result<StatementResult>) -> String {
    match result {
        Err(Error::Sql { code, .. }) => code,
        other => panic!("expected Error::Sql, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Provisioning
// ---------------------------------------------------------------------------------------------

#[test]
fn create_tenant_copies_the_template_into_its_shard() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_2abcDEF");

    let record = fleet.create_tenant(&id, "test").unwrap();
    assert_eq!(record.state, TenantState::Active);
    assert_eq!(record.schema_version, 1);

    let shard = hex::encode(&Sha256::digest(b"user_2abcDEF")[..1]);
    let expected = tmp
        .path()
        .join("data/tenants")
        .join(&shard)
        .join("user_2abcDEF.db");
    assert_eq!(fleet.layout().tenant_db(&id), expected);
    assert!(expected.is_file());
    let conn = raw_path(&expected);
    assert_eq!(user_version(&conn), 1);
    assert_eq!(applied_versions(&conn), vec![1]);
    assert!(has_object(&conn, "todos"));
    drop(conn);

    assert!(matches!(
        fleet.create_tenant(&id, "test"),
        Err(Error::TenantExists(ref t)) if t == "user_2abcDEF"
    ));
    let info = fleet.tenant(&id).unwrap();
    assert_eq!(info.record.schema_version, 1);
    assert!(info.size_bytes > 0);
    // No staging copies are left behind.
    let names = file_names(&fleet.layout().tenants_dir());
    assert_eq!(names, vec!["user_2abcDEF.db".to_string()]);
}

#[test]
fn ensure_tenant_is_idempotent() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_1");

    let (first, created) = fleet.ensure_tenant(&id, "test").unwrap();
    assert!(created);
    insert_todo(&fleet, &id, "keep me");
    let (second, created) = fleet.ensure_tenant(&id, "test").unwrap();
    assert!(!created);
    assert_eq!(first.created_at, second.created_at);
    assert_eq!(second.state, TenantState::Active);
    // The second call did not replace the file: the row is still there.
    let count = ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap());
    assert_eq!(count, vec![1]);
    assert_eq!(fleet.list_tenants(None, 100).unwrap().len(), 1);
}

#[test]
fn concurrent_ensure_tenant_creates_exactly_one_tenant() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_race");
    let barrier = Barrier::new(20);

    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    fleet.ensure_tenant(&id, "test")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut created = 0;
    for outcome in outcomes {
        let (record, was_created) = outcome.unwrap();
        assert_eq!(record.id, id);
        assert_eq!(record.state, TenantState::Active);
        created += usize::from(was_created);
    }
    assert_eq!(created, 1);
    let all = fleet.catalog().all_tenants().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(
        file_names(&fleet.layout().tenants_dir()),
        vec!["user_race.db".to_string()]
    );
    let creates = fleet
        .catalog()
        .admin_audit(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "tenant.create")
        .count();
    assert_eq!(creates, 1);
}

#[test]
fn invalid_tenant_ids_are_refused_before_any_file_is_touched() {
    let tmp = TempDir::new().unwrap();
    let fleet = open(&tmp);
    let before = files_under(tmp.path());
    let long = "a".repeat(129);
    for bad in [
        "../x", "a/b", "..", ".hidden", "%2e%2e", "a b", "", &long, "é",
    ] {
        let err = TenantId::new(bad).unwrap_err();
        assert!(
            err.to_string().contains(tenantdb::TENANT_ID_RULE),
            "{bad:?}: {err}"
        );
        assert!(bad.parse::<TenantId>().is_err());
    }
    // The longest valid id is fine, and is one file name inside its shard.
    let longest = tid(&"a".repeat(128));
    let path = fleet.layout().tenant_db(&longest);
    assert_eq!(
        path.parent().unwrap().parent().unwrap(),
        fleet.layout().tenants_dir()
    );
    assert_eq!(files_under(tmp.path()), before);
}

// ---------------------------------------------------------------------------------------------
// 2. Deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_moves_to_trash_leaves_a_tombstone_and_restore_brings_rows_back() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_del");
    fleet.create_tenant(&id, "test").unwrap();
    for title in ["a", "b", "c"] {
        insert_todo(&fleet, &id, title);
    }
    fleet.record_activity(&id, 3);
    fleet.flush_activity().unwrap();
    let rows_before = snapshot(&fleet.layout().tenant_db(&id)).todos;
    assert_eq!(rows_before.as_ref().map(Vec::len), Some(3));

    fleet.delete_tenant(&id, false, "test").unwrap();
    assert!(!fleet.layout().tenant_db(&id).exists());
    let trash = file_names(&fleet.layout().trash_dir());
    assert_eq!(trash.len(), 1, "{trash:?}");
    let (trashed_id, _) = tenantdb::layout::Layout::parse_trashed(&trash[0]).unwrap();
    assert_eq!(trashed_id, id);

    // The id is a tombstone: not re-created by ensure, not served.
    assert!(matches!(
        fleet.ensure_tenant(&id, "test"),
        Err(Error::TenantDeleted(_))
    ));
    assert!(matches!(fleet.connect(&id), Err(Error::TenantDeleted(_))));
    assert!(matches!(fleet.tenant(&id), Err(Error::TenantNotFound(_))));
    assert!(!fleet.layout().tenant_db(&id).exists());
    assert!(fleet.list_tenants(None, 10).unwrap().is_empty());

    let restored = fleet.restore_tenant(&id, "test").unwrap();
    assert_eq!(restored.state, TenantState::Active);
    assert_eq!(restored.schema_version, 1);
    assert_eq!(snapshot(&fleet.layout().tenant_db(&id)).todos, rows_before);
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![3]
    );
    assert!(file_names(&fleet.layout().trash_dir()).is_empty());

    // Purging removes the data for good.
    fleet.delete_tenant(&id, true, "test").unwrap();
    assert!(file_names(&fleet.layout().trash_dir()).is_empty());
    assert!(!fleet.layout().tenant_db(&id).exists());
    let record = fleet.catalog().tenant(&id).unwrap().unwrap();
    assert_eq!(record.state, TenantState::Purged);
    assert!(matches!(
        fleet.ensure_tenant(&id, "test"),
        Err(Error::TenantDeleted(_))
    ));
    assert!(matches!(
        fleet.restore_tenant(&id, "test"),
        Err(Error::NothingToRestore(_))
    ));

    // An operator may create the id anew: an empty tenant with none of the old one's history.
    let before = fleet.catalog().tenant(&id).unwrap().unwrap();
    assert!(before.last_active_at.is_some(), "{before:?}");
    let recreated = fleet.create_tenant(&id, "test").unwrap();
    assert_eq!(recreated.state, TenantState::Active);
    assert_eq!(recreated.last_active_at, None);
    assert_eq!(recreated.deleted_at, None);
    assert!(recreated.created_at >= before.deleted_at.unwrap());
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![0]
    );
}

#[test]
fn purge_expired_purges_only_deleted_tenants_past_retention() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let (gone1, gone2, live) = (tid("gone1"), tid("gone2"), tid("live"));
    for id in [&gone1, &gone2, &live] {
        fleet.create_tenant(id, "test").unwrap();
    }
    fleet.delete_tenant(&gone1, false, "test").unwrap();
    fleet.delete_tenant(&gone2, false, "test").unwrap();
    assert_eq!(file_names(&fleet.layout().trash_dir()).len(), 2);

    // Deleted a moment ago: still within an hour's retention.
    let purged = fleet
        .purge_expired(Duration::from_secs(3600), "test")
        .unwrap();
    assert!(purged.is_empty());
    assert_eq!(file_names(&fleet.layout().trash_dir()).len(), 2);

    let mut purged = fleet.purge_expired(Duration::ZERO, "test").unwrap();
    purged.sort();
    assert_eq!(purged, vec![gone1.clone(), gone2.clone()]);
    assert!(file_names(&fleet.layout().trash_dir()).is_empty());
    for id in [&gone1, &gone2] {
        let record = fleet.catalog().tenant(id).unwrap().unwrap();
        assert_eq!(record.state, TenantState::Purged);
    }
    assert_eq!(
        fleet.tenant(&live).unwrap().record.state,
        TenantState::Active
    );
    assert!(fleet.layout().tenant_db(&live).exists());
}

/// Holds `lease` in another thread for `hold`, writes through it, then hands it back; returns
/// the flag that is set just before the hand-back.
fn hold_lease_then_drop(
    mut lease: tenantdb::Lease,
    hold: Duration,
) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let released = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&released);
    let handle = std::thread::spawn(move || {
        std::thread::sleep(hold);
        lease
            .execute(
                "INSERT INTO todos(title) VALUES ('written while deleting')",
                &Args::default(),
            )
            .unwrap();
        flag.store(true, Ordering::SeqCst);
        drop(lease);
    });
    (handle, released)
}

#[test]
fn delete_waits_for_a_leased_connection() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_busy");
    fleet.create_tenant(&id, "test").unwrap();
    let lease = fleet.connect(&id).unwrap();
    let (handle, released) = hold_lease_then_drop(lease, Duration::from_millis(300));

    let started = Instant::now();
    fleet.delete_tenant(&id, false, "test").unwrap();
    assert!(
        released.load(Ordering::SeqCst),
        "delete finished while a connection was still leased"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    handle.join().unwrap();

    // The write made under the lease went to trash with the tenant.
    fleet.restore_tenant(&id, "test").unwrap();
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
}

#[test]
fn delete_waits_for_a_lease_whose_tenant_was_evicted_from_the_cache() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(
        &tmp,
        Config {
            cache_capacity: 1,
            ..config(&tmp)
        },
    );
    let (id, other) = (tid("user_busy"), tid("user_other"));
    fleet.create_tenant(&id, "test").unwrap();
    fleet.create_tenant(&other, "test").unwrap();
    let lease = fleet.connect(&id).unwrap();
    // Touching another tenant pushes `id` out of the cache while its lease is still held.
    exec(&fleet, &other, "SELECT 1").unwrap();
    assert_eq!(fleet.cache().len(), 1);
    let (handle, released) = hold_lease_then_drop(lease, Duration::from_millis(300));

    fleet.delete_tenant(&id, false, "test").unwrap();
    assert!(
        released.load(Ordering::SeqCst),
        "delete finished while an evicted connection was still leased"
    );
    handle.join().unwrap();
    fleet.restore_tenant(&id, "test").unwrap();
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Reconcile
// ---------------------------------------------------------------------------------------------

fn set_age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn open_adopts_orphan_files_and_removes_stale_staging() {
    let tmp = TempDir::new().unwrap();
    let orphan = tid("user_orphan");
    let (orphan_path, stale, fresh) = {
        let fleet = fleet_with_todos(&tmp, config(&tmp));
        let layout = fleet.layout().clone();
        drop(fleet);
        // A creation that crashed after its copy landed but before the catalog row.
        let orphan_path = layout.tenant_db(&orphan);
        std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
        std::fs::copy(layout.template(), &orphan_path).unwrap();
        // A creation that crashed mid-copy, long ago; and one that may still be running.
        let ghost = tid("user_ghost");
        let stale = layout.tenant_staging(&ghost, 7);
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"half a copy").unwrap();
        set_age(&stale, Duration::from_secs(2 * 3600));
        let fresh = layout.tenant_staging(&tid("user_busy"), 8);
        std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
        std::fs::write(&fresh, b"being copied").unwrap();
        (orphan_path, stale, fresh)
    };

    let fleet = open(&tmp);
    let report = fleet.reconciled();
    assert_eq!(report.adopted, vec![orphan.clone()]);
    assert_eq!(report.removed_staging, vec![stale.clone()]);
    assert!(report.missing.is_empty());
    assert!(!stale.exists());
    assert!(
        fresh.exists(),
        "a young staging file may belong to a running creation"
    );
    assert!(orphan_path.exists());

    let record = fleet.tenant(&orphan).unwrap().record;
    assert_eq!(record.schema_version, 1);
    insert_todo(&fleet, &orphan, "adopted");
    assert_eq!(
        ints(&exec(&fleet, &orphan, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
    // Adopted once: the next reconcile is clean apart from the young staging file.
    let again = fleet.reconcile().unwrap();
    assert!(again.adopted.is_empty());
    assert!(again.removed_staging.is_empty());
}

#[test]
fn open_reports_missing_files_and_connect_refuses_them() {
    let tmp = TempDir::new().unwrap();
    let (lost, kept) = (tid("user_lost"), tid("user_kept"));
    {
        let fleet = fleet_with_todos(&tmp, config(&tmp));
        fleet.create_tenant(&lost, "test").unwrap();
        fleet.create_tenant(&kept, "test").unwrap();
        std::fs::remove_file(fleet.layout().tenant_db(&lost)).unwrap();
    }
    let fleet = open(&tmp);
    assert_eq!(fleet.reconciled().missing, vec![lost.clone()]);
    assert!(fleet.reconciled().adopted.is_empty());
    assert!(matches!(
        fleet.connect(&lost),
        Err(Error::TenantFileMissing(ref t)) if t == "user_lost"
    ));
    // Connecting never creates an empty database in place of the lost one.
    assert!(!fleet.layout().tenant_db(&lost).exists());
    assert!(exec(&fleet, &kept, "SELECT count(*) FROM todos").is_ok());
}

// ---------------------------------------------------------------------------------------------
// 4. Migrations
// ---------------------------------------------------------------------------------------------

/// Checks that a tenant's file, its own ledger and the catalog agree on its version.
fn assert_consistent(fleet: &Fleet, id: &TenantId, expected: u32) {
    let conn = raw(fleet, id);
    let version = user_version(&conn);
    assert_eq!(version, expected, "{id}: user_version");
    assert_eq!(
        applied_versions(&conn),
        (1..=expected).collect::<Vec<_>>(),
        "{id}: _tenantdb_migrations"
    );
    let record = fleet.catalog().tenant(id).unwrap().unwrap();
    assert_eq!(record.schema_version, expected, "{id}: catalog");
}

#[test]
fn fleet_migration_isolates_failing_tenants() {
    let tmp = TempDir::new().unwrap();
    let fleet = open(&tmp);
    let ids: Vec<TenantId> = (0..30).map(|i| tid(&format!("user_{i:02}"))).collect();
    for id in &ids {
        fleet.create_tenant(id, "test").unwrap();
        assert_eq!(user_version(&raw(&fleet, id)), 0);
    }

    let dir = migrations(&tmp, &[("0001_todos.sql", TODOS)]);
    let report = migrate(&fleet, &dir).unwrap();
    assert_eq!(report.registered, vec![1]);
    assert_eq!((report.tenants, report.migrated), (30, 30));
    assert!(report.failed.is_empty());
    for id in &ids {
        assert_consistent(&fleet, id, 1);
    }

    // Three tenants hold duplicate titles, which the next migration's unique index forbids.
    let bad: BTreeSet<TenantId> = [3, 7, 11].iter().map(|&i| ids[i].clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        let conn = raw(&fleet, id);
        conn.execute("INSERT INTO todos(title) VALUES (?1)", [format!("t{i}")])
            .unwrap();
        if bad.contains(id) {
            conn.execute("INSERT INTO todos(title) VALUES (?1)", [format!("t{i}")])
                .unwrap();
        }
    }
    let dir = migrations(
        &tmp,
        &[
            ("0001_todos.sql", TODOS),
            ("0002_unique_title.sql", UNIQUE_TITLE),
        ],
    );

    // A dry run reports what would happen and changes nothing.
    let before: Vec<Snapshot> = ids
        .iter()
        .map(|id| snapshot(&fleet.layout().tenant_db(id)))
        .collect();
    let dry = fleet
        .migrate(&dir, &options(true), &NoProgress, "test")
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.migrated, 27);
    let dry_failed: BTreeSet<TenantId> = dry.failed.iter().map(|f| f.tenant.clone()).collect();
    assert_eq!(dry_failed, bad);
    let after: Vec<Snapshot> = ids
        .iter()
        .map(|id| snapshot(&fleet.layout().tenant_db(id)))
        .collect();
    assert_eq!(before, after);
    assert_eq!(fleet.latest_version(), 1);
    let status = fleet.migration_status(None).unwrap();
    assert_eq!(status.latest, 1);
    assert!(status.failures.is_empty());
    assert_eq!(status.tenants_by_version.get(&1), Some(&30));
    let pending = fleet.migration_status(Some(&dir)).unwrap();
    assert_eq!(pending.pending, vec!["0002_unique_title.sql".to_string()]);
    assert!(pending.problem.is_none());

    let report = migrate(&fleet, &dir).unwrap();
    assert_eq!(report.schema_version, 2);
    assert_eq!(report.registered, vec![2]);
    assert_eq!(report.migrated, 27);
    let failed: BTreeSet<TenantId> = report.failed.iter().map(|f| f.tenant.clone()).collect();
    assert_eq!(failed, bad);

    let status = fleet.migration_status(None).unwrap();
    assert_eq!(status.latest, 2);
    let failures: BTreeSet<TenantId> = status.failures.iter().map(|f| f.tenant.clone()).collect();
    assert_eq!(failures, bad);
    for f in &status.failures {
        assert_eq!(f.version, 2);
        assert!(f.error.contains("0002_unique_title.sql"), "{}", f.error);
        assert!(f.error.contains("UNIQUE"), "{}", f.error);
    }
    assert_eq!(status.tenants_by_version.get(&1), Some(&3));
    assert_eq!(status.tenants_by_version.get(&2), Some(&27));
    for (i, id) in ids.iter().enumerate() {
        let expected = if bad.contains(id) { 1 } else { 2 };
        assert_consistent(&fleet, id, expected);
        let conn = raw(&fleet, id);
        assert_eq!(has_object(&conn, "todos_title"), expected == 2, "{id}");
        // A failed migration left nothing behind: the rows are all still there.
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            rows,
            if bad.contains(id) { 2 } else { 1 },
            "row count of tenant {i}"
        );
    }

    // Tenants created now start at the latest version.
    let newcomer = tid("user_new");
    assert_eq!(
        fleet
            .create_tenant(&newcomer, "test")
            .unwrap()
            .schema_version,
        2
    );
    assert_consistent(&fleet, &newcomer, 2);
    assert!(has_object(&raw(&fleet, &newcomer), "todos_title"));

    // Fixing one tenant's data and running again resumes it; the others stay failed.
    let fixed = &ids[3];
    raw(&fleet, fixed)
        .execute(
            "DELETE FROM todos WHERE id = (SELECT max(id) FROM todos)",
            [],
        )
        .unwrap();
    let report = migrate(&fleet, &dir).unwrap();
    assert!(report.registered.is_empty());
    assert_eq!(report.migrated, 1);
    assert_eq!(report.failed.len(), 2);
    assert_consistent(&fleet, fixed, 2);
    let failures: Vec<TenantId> = fleet
        .migration_status(None)
        .unwrap()
        .failures
        .into_iter()
        .map(|f| f.tenant)
        .collect();
    assert_eq!(failures, vec![ids[7].clone(), ids[11].clone()]);
}

#[test]
fn invalid_and_drifted_migrations_touch_no_tenant() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let ids: Vec<TenantId> = (0..5).map(|i| tid(&format!("user_{i}"))).collect();
    for id in &ids {
        fleet.create_tenant(id, "test").unwrap();
        insert_todo(&fleet, id, "hello");
    }
    let paths: Vec<PathBuf> = ids.iter().map(|id| fleet.layout().tenant_db(id)).collect();
    let snapshots = || paths.iter().map(|p| snapshot(p)).collect::<Vec<_>>();
    let before = snapshots();
    const ADD_DUE: &str = "ALTER TABLE todos ADD COLUMN due INTEGER;";

    // A syntax error is refused before any tenant changes, whatever comes before it.
    let dir = migrations(
        &tmp,
        &[
            ("0001_todos.sql", TODOS),
            ("0002_due.sql", ADD_DUE),
            ("0003_broken.sql", "CREATE TABLE oops(;"),
        ],
    );
    let err = migrate(&fleet, &dir).unwrap_err();
    assert!(matches!(err, Error::InvalidMigration(_)), "{err:?}");
    assert!(err.to_string().contains("0003_broken.sql"), "{err}");
    assert_eq!(snapshots(), before);
    assert_eq!(fleet.latest_version(), 1);
    assert_eq!(fleet.catalog().ledger().unwrap().len(), 1);
    let dry = fleet.migrate(&dir, &options(true), &NoProgress, "test");
    assert!(matches!(dry, Err(Error::InvalidMigration(_))), "{dry:?}");
    assert_eq!(snapshots(), before);

    // An applied migration that was edited, next to a pending one.
    let dir = migrations(
        &tmp,
        &[
            (
                "0001_todos.sql",
                "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT);",
            ),
            ("0002_due.sql", ADD_DUE),
        ],
    );
    let err = migrate(&fleet, &dir).unwrap_err();
    match &err {
        Error::MigrationDrift { version, name, .. } => {
            assert_eq!((*version, name.as_str()), (1, "0001_todos.sql"));
        }
        other => panic!("expected MigrationDrift, got {other:?}"),
    }
    assert!(err.to_string().contains("0001_todos.sql"), "{err}");
    assert_eq!(snapshots(), before);
    assert_eq!(fleet.latest_version(), 1);
    let status = fleet.migration_status(Some(&dir)).unwrap();
    assert!(status.problem.unwrap().contains("0001_todos.sql"));
    assert!(status.pending.is_empty());

    // The honest directory applies.
    let dir = migrations(
        &tmp,
        &[("0001_todos.sql", TODOS), ("0002_due.sql", ADD_DUE)],
    );
    migrate(&fleet, &dir).unwrap();
    for id in &ids {
        assert_consistent(&fleet, id, 2);
    }
    let before = snapshots();

    // An applied migration that disappeared: the last one, or one in the middle.
    const ADD_NOTE: &str = "ALTER TABLE todos ADD COLUMN note TEXT;";
    for (files, removed) in [
        (vec![("0001_todos.sql", TODOS)], (2, "0002_due.sql")),
        (
            vec![("0002_due.sql", ADD_DUE), ("0003_note.sql", ADD_NOTE)],
            (1, "0001_todos.sql"),
        ),
    ] {
        let dir = migrations(&tmp, &files);
        let err = migrate(&fleet, &dir).unwrap_err();
        match &err {
            Error::MigrationDrift { version, name, .. } => {
                assert_eq!((*version, name.as_str()), removed);
            }
            other => panic!("removing {removed:?}: expected MigrationDrift, got {other:?}"),
        }
        assert!(err.to_string().contains(removed.1), "{err}");
        assert_eq!(snapshots(), before);
        assert_eq!(fleet.latest_version(), 2);
    }
}

/// What a server does before it answers anyone: the new migrations are registered and the
/// template rebuilt, no tenant is touched, and from then on every tenant (new or opened) is at
/// the latest version.
#[test]
fn registering_migrations_touches_no_tenant_and_serves_the_new_schema_at_once() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let existing = tid("user_existing");
    fleet.create_tenant(&existing, "test").unwrap();
    insert_todo(&fleet, &existing, "a row");
    fleet.shutdown();
    let dir = migrations(
        &tmp,
        &[
            ("0001_todos.sql", TODOS),
            ("0002_unique_title.sql", UNIQUE_TITLE),
        ],
    );

    assert_eq!(fleet.register_migrations(&dir).unwrap(), vec![2]);
    assert_eq!(fleet.latest_version(), 2);
    assert_eq!(user_version(&raw(&fleet, &existing)), 1);
    assert_eq!(
        fleet
            .catalog()
            .tenant(&existing)
            .unwrap()
            .unwrap()
            .schema_version,
        1
    );
    // A tenant created now starts at 2; the existing one is migrated when opened.
    let new = tid("user_new");
    fleet.create_tenant(&new, "test").unwrap();
    assert_eq!(user_version(&raw(&fleet, &new)), 2);
    insert_todo(&fleet, &existing, "another row");
    assert_eq!(user_version(&raw(&fleet, &existing)), 2);
    // Registering again adds nothing; an edited migration is refused.
    assert_eq!(fleet.register_migrations(&dir).unwrap(), Vec::<u32>::new());
    std::fs::write(dir.join("0002_unique_title.sql"), "SELECT 1;").unwrap();
    assert!(matches!(
        fleet.register_migrations(&dir),
        Err(Error::MigrationDrift { version: 2, .. })
    ));
}

#[test]
fn a_tenant_behind_the_latest_version_is_migrated_when_opened() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let (lagging, current) = (tid("user_lagging"), tid("user_current"));
    fleet.create_tenant(&lagging, "test").unwrap();
    fleet.create_tenant(&current, "test").unwrap();
    insert_todo(&fleet, &lagging, "old row");
    fleet.shutdown();

    // While migration 0002 rolls out, the lagging tenant's file is elsewhere (a restore from
    // backup, a copy in flight), so the rollout cannot reach it.
    let path = fleet.layout().tenant_db(&lagging);
    let aside = tmp.path().join("aside.db");
    std::fs::rename(&path, &aside).unwrap();
    let dir = migrations(
        &tmp,
        &[
            ("0001_todos.sql", TODOS),
            ("0002_unique_title.sql", UNIQUE_TITLE),
        ],
    );
    let report = migrate(&fleet, &dir).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].tenant, lagging);
    assert_consistent(&fleet, &current, 2);
    drop(fleet);
    std::fs::rename(&aside, &path).unwrap();
    assert_eq!(user_version(&raw_path(&path)), 1);

    let fleet = open(&tmp);
    assert_eq!(fleet.latest_version(), 2);
    assert_eq!(
        fleet
            .catalog()
            .tenant(&lagging)
            .unwrap()
            .unwrap()
            .schema_version,
        1
    );
    // The first request sees the latest schema: the unique index is already in force.
    let mut lease = fleet.connect(&lagging).unwrap();
    let duplicate = lease.execute(
        "INSERT INTO todos(title) VALUES ('old row')",
        &Args::default(),
    );
    assert_eq!(sql_code(duplicate), "SQLITE_CONSTRAINT_UNIQUE");
    drop(lease);
    assert_consistent(&fleet, &lagging, 2);
    assert!(fleet.migration_status(None).unwrap().failures.is_empty());
    assert_eq!(
        ints(&exec(&fleet, &lagging, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Guard
// ---------------------------------------------------------------------------------------------

/// A fleet with one tenant holding two todos behind a unique index on title.
fn guarded_tenant(tmp: &TempDir, guard: GuardConfig) -> (Fleet, TenantId) {
    let fleet = Fleet::open(Config {
        guard,
        ..config(tmp)
    })
    .unwrap();
    let dir = migrations(
        tmp,
        &[
            ("0001_todos.sql", TODOS),
            ("0002_unique_title.sql", UNIQUE_TITLE),
        ],
    );
    migrate(&fleet, &dir).unwrap();
    let id = tid("user_guarded");
    fleet.create_tenant(&id, "test").unwrap();
    insert_todo(&fleet, &id, "first");
    insert_todo(&fleet, &id, "second");
    (fleet, id)
}

#[test]
fn guard_refuses_what_user_sql_must_not_do() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(&tmp, GuardConfig::default());
    let path = fleet.layout().tenant_db(&id);
    let before = snapshot(&path);
    let escape = tmp.path().join("escape.db");
    let attached = tmp.path().join("attached.db");
    let forbidden = [
        format!("ATTACH DATABASE '{}' AS other", attached.display()),
        format!("VACUUM INTO '{}'", escape.display()),
        "PRAGMA writable_schema=1".to_string(),
        "SELECT load_extension('x')".to_string(),
        "INSERT INTO _tenantdb_migrations VALUES (99, 'x', 'x', 0)".to_string(),
        "DELETE FROM _tenantdb_migrations".to_string(),
        "UPDATE _tenantdb_migrations SET version = 5".to_string(),
        "CREATE TABLE t(x)".to_string(),
        "DROP TABLE todos".to_string(),
        "SELECT 1; DROP TABLE todos".to_string(),
        "DROP INDEX todos_title".to_string(),
        "ALTER TABLE todos ADD COLUMN x".to_string(),
        "CREATE VIEW v AS SELECT 1".to_string(),
        "CREATE TRIGGER tr AFTER INSERT ON todos BEGIN SELECT 1; END".to_string(),
        "UPDATE sqlite_master SET sql = 'x' WHERE name = 'todos'".to_string(),
        "DELETE FROM sqlite_master".to_string(),
        "PRAGMA database_list".to_string(),
        "SELECT file FROM pragma_database_list".to_string(),
        "PRAGMA user_version = 7".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
    ];
    for sql in &forbidden {
        let refused =
            |r: &tenantdb::Result<_>| matches!(r, Err(Error::Guard(_) | Error::Sql { .. }));
        let single = exec(&fleet, &id, sql).map(|_| ());
        assert!(refused(&single), "{sql}: {single:?}");
        // Hidden after a harmless statement in a script.
        let script = fleet
            .connect(&id)
            .unwrap()
            .execute_script(&format!("SELECT 1; {sql};"))
            .map(|_| ());
        assert!(refused(&script), "script with {sql}: {script:?}");
    }
    assert!(matches!(
        exec(&fleet, &id, "CREATE TABLE t(x)"),
        Err(Error::Guard(ref reason)) if reason.contains("migrations")
    ));
    assert_eq!(snapshot(&path), before);
    assert!(!escape.exists());
    assert!(!attached.exists());
    // Nothing changed the user's rows either.
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![2]
    );
}

#[test]
fn guard_allows_reads_temp_objects_and_foreign_keys() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(&tmp, GuardConfig::default());
    let ledger = exec(
        &fleet,
        &id,
        "SELECT version FROM _tenantdb_migrations ORDER BY 1",
    )
    .unwrap();
    assert_eq!(ints(&ledger), vec![1, 2]);
    let columns = exec(&fleet, &id, "PRAGMA table_info(todos)").unwrap();
    let names: Vec<&Value> = columns.rows.iter().map(|r| &r[1]).collect();
    assert_eq!(
        names,
        vec![
            &Value::Text("id".into()),
            &Value::Text("title".into()),
            &Value::Text("done".into())
        ]
    );
    assert_eq!(
        ints(&exec(&fleet, &id, "PRAGMA user_version").unwrap()),
        vec![2]
    );

    {
        let mut lease = fleet.connect(&id).unwrap();
        let results = lease
            .execute_script(
                "CREATE TEMP TABLE scratch(x); INSERT INTO scratch VALUES (1), (2);
                 SELECT sum(x) FROM scratch; PRAGMA foreign_keys = OFF; PRAGMA foreign_keys;",
            )
            .unwrap();
        assert_eq!(ints(&results[2]), vec![3]);
        assert_eq!(ints(&results[4]), vec![0]);
        assert!(lease.guard().tainted());
    }
    // A connection whose state user SQL changed is not handed to the next request (this
    // build of SQLite enforces foreign keys by default).
    let mut lease = fleet.connect(&id).unwrap();
    assert_eq!(
        ints(
            &lease
                .execute("PRAGMA foreign_keys", &Args::default())
                .unwrap()
        ),
        vec![1]
    );
    assert!(
        lease
            .execute("PRAGMA foreign_keys = ON", &Args::default())
            .is_ok()
    );
    assert!(
        lease
            .execute("SELECT * FROM scratch", &Args::default())
            .is_err()
    );
    // The persistent schema did not gain the temp table.
    assert!(!has_object(&raw(&fleet, &id), "scratch"));
}

#[test]
fn guard_interrupts_runaway_statements() {
    let tmp = TempDir::new().unwrap();
    let timeout = Duration::from_millis(200);
    let (fleet, id) = guarded_tenant(
        &tmp,
        GuardConfig {
            statement_timeout: timeout,
            ..GuardConfig::default()
        },
    );
    let runaway =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";
    // Run it on another thread so that a guard which fails to interrupt fails this test
    // instead of hanging it.
    let mut lease = fleet.connect(&id).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = lease.execute(runaway, &Args::default());
        let _ = tx.send((result, started.elapsed(), lease));
    });
    let (result, took, mut lease) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the runaway statement was not interrupted");
    assert!(
        matches!(result, Err(Error::StatementTimeout(d)) if d == timeout),
        "{result:?}"
    );
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The same connection, and the tenant, keep working.
    assert_eq!(
        ints(
            &lease
                .execute("SELECT count(*) FROM todos", &Args::default())
                .unwrap()
        ),
        vec![2]
    );
    drop(lease);
    insert_todo(&fleet, &id, "after the timeout");
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![3]
    );
    // A script is timed as well.
    let script = fleet.connect(&id).unwrap().execute_script(runaway);
    assert!(
        matches!(script, Err(Error::StatementTimeout(_))),
        "{script:?}"
    );
}

#[test]
fn guard_enforces_the_size_quota() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(
        &tmp,
        GuardConfig {
            max_database_bytes: 64 * 1024,
            ..GuardConfig::default()
        },
    );
    let big = exec(
        &fleet,
        &id,
        "INSERT INTO todos(title) VALUES (CAST(randomblob(200000) AS TEXT))",
    );
    assert_eq!(sql_code(big), "SQLITE_FULL");
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![2]
    );
    // Small writes still fit.
    insert_todo(&fleet, &id, "small");
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![3]
    );
}

#[test]
fn guard_limits_the_response_size() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(
        &tmp,
        GuardConfig {
            max_response_bytes: 4096,
            ..GuardConfig::default()
        },
    );
    let one_big = exec(&fleet, &id, "SELECT randomblob(10000)");
    assert!(
        matches!(one_big, Err(Error::ResponseTooLarge(4096))),
        "{one_big:?}"
    );
    let many_small = exec(
        &fleet,
        &id,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 1000) \
         SELECT x, 'some text' FROM c",
    );
    assert!(
        matches!(many_small, Err(Error::ResponseTooLarge(_))),
        "{many_small:?}"
    );
    assert_eq!(
        exec(&fleet, &id, "SELECT randomblob(1000)")
            .unwrap()
            .rows
            .len(),
        1
    );
}

#[test]
fn sql_errors_carry_sqlite_codes() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(&tmp, GuardConfig::default());
    let cases = [
        (
            "INSERT INTO todos(title) VALUES ('first')",
            "SQLITE_CONSTRAINT_UNIQUE",
        ),
        (
            "INSERT INTO todos(id, title) VALUES (1, 'x')",
            "SQLITE_CONSTRAINT_PRIMARYKEY",
        ),
        (
            "INSERT INTO todos(title, done) VALUES ('y', NULL)",
            "SQLITE_CONSTRAINT_NOTNULL",
        ),
        ("SELECT * FROM no_such_table", "SQLITE_ERROR"),
        ("SELEC 1", "SQLITE_ERROR"),
    ];
    for (sql, code) in cases {
        assert_eq!(sql_code(exec(&fleet, &id, sql)), code, "{sql}");
    }
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![2]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Cache
// ---------------------------------------------------------------------------------------------

#[test]
fn cache_holds_at_most_its_capacity() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(
        &tmp,
        Config {
            cache_capacity: 5,
            ..config(&tmp)
        },
    );
    let ids: Vec<TenantId> = (0..20).map(|i| tid(&format!("user_{i}"))).collect();
    for id in &ids {
        fleet.create_tenant(id, "test").unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        insert_todo(&fleet, id, &format!("todo {i}"));
        assert!(fleet.cache().len() <= 5, "{} open", fleet.cache().len());
    }
    assert_eq!(fleet.cache().len(), 5);
    let stats = &fleet.cache().stats;
    assert_eq!(stats.misses.load(Ordering::Relaxed), 20);
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 15);
    // Evicted tenants reopen with their data.
    for id in &ids {
        assert_eq!(
            ints(&exec(&fleet, id, "SELECT count(*) FROM todos").unwrap()),
            vec![1]
        );
        assert!(fleet.cache().len() <= 5);
    }
}

#[test]
fn concurrent_connects_to_a_cold_tenant_open_it_once() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_cold");
    fleet.create_tenant(&id, "test").unwrap();
    insert_todo(&fleet, &id, "x");
    fleet.shutdown();
    drop(fleet);

    let fleet = open(&tmp);
    let barrier = Barrier::new(16);
    let counts: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut lease = fleet.connect(&id).unwrap();
                    ints(
                        &lease
                            .execute("SELECT count(*) FROM todos", &Args::default())
                            .unwrap(),
                    )[0]
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(counts, vec![1; 16]);
    let stats = &fleet.cache().stats;
    assert_eq!(stats.misses.load(Ordering::Relaxed), 1);
    assert_eq!(stats.hits.load(Ordering::Relaxed), 15);
    assert_eq!(fleet.cache().len(), 1);
}

#[test]
fn guard_allows_ddl_when_configured_but_never_on_reserved_tables() {
    let tmp = TempDir::new().unwrap();
    let (fleet, id) = guarded_tenant(
        &tmp,
        GuardConfig {
            allow_ddl: true,
            ..GuardConfig::default()
        },
    );
    let ledger_before = snapshot(&fleet.layout().tenant_db(&id)).ledger;
    for sql in [
        "CREATE TABLE notes(body TEXT)",
        "CREATE INDEX notes_body ON notes(body)",
        "ALTER TABLE notes ADD COLUMN at INTEGER",
        "INSERT INTO notes VALUES ('n', 1)",
        "CREATE VIEW note_bodies AS SELECT body FROM notes",
    ] {
        exec(&fleet, &id, sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let conn = raw(&fleet, &id);
    assert!(has_object(&conn, "notes"));
    assert!(has_object(&conn, "notes_body"));
    assert!(has_object(&conn, "note_bodies"));

    for sql in [
        "CREATE TABLE _tenantdb_mine(x)",
        "CREATE TABLE sqlite_mine(x)",
        "DROP TABLE _tenantdb_migrations",
        "ALTER TABLE _tenantdb_migrations ADD COLUMN y",
        "CREATE INDEX by_name ON _tenantdb_migrations(name)",
        "INSERT INTO _tenantdb_migrations VALUES (99, 'x', 'x', 0)",
        "UPDATE sqlite_master SET sql = 'CREATE TABLE notes(x)' WHERE name = 'notes'",
        "DELETE FROM sqlite_master WHERE name = 'notes'",
        "PRAGMA writable_schema = 1",
    ] {
        let result = exec(&fleet, &id, sql);
        assert!(
            matches!(result, Err(Error::Guard(_) | Error::Sql { .. })),
            "{sql}: {result:?}"
        );
    }
    // A trigger cannot write where its author may not: its body is checked as user SQL.
    exec(
        &fleet,
        &id,
        "CREATE TRIGGER sneaky AFTER INSERT ON notes BEGIN \
         DELETE FROM _tenantdb_migrations; END",
    )
    .unwrap();
    let fired = exec(&fleet, &id, "INSERT INTO notes VALUES ('m', 2)");
    assert!(matches!(fired, Err(Error::Guard(_))), "{fired:?}");
    assert_eq!(
        snapshot(&fleet.layout().tenant_db(&id)).ledger,
        ledger_before
    );

    // A read-only transaction refuses DDL even when DDL is allowed.
    let mut lease = fleet.connect(&id).unwrap();
    lease.guard().set_read_only(true);
    let ddl = lease.execute("DROP TABLE notes", &Args::default());
    assert!(
        matches!(ddl, Err(Error::Guard(ref r)) if r.contains("read-only")),
        "{ddl:?}"
    );
    lease.guard().set_read_only(false);
    lease.discard();

    exec(&fleet, &id, "DROP VIEW note_bodies").unwrap();
    exec(&fleet, &id, "DROP TABLE notes").unwrap();
    assert!(!has_object(&conn, "notes"));
    assert!(!has_object(&conn, "sneaky"));
}

#[test]
fn concurrent_deletes_of_one_tenant_settle_as_one() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("user_twice");
    fleet.create_tenant(&id, "test").unwrap();
    insert_todo(&fleet, &id, "kept in trash");
    let start = std::sync::Barrier::new(8);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    fleet.delete_tenant(&id, false, "test")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let deleted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(deleted, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| matches!(e, Error::TenantNotFound(_))),
        "{outcomes:?}"
    );
    assert_eq!(file_names(&fleet.layout().trash_dir()).len(), 1);
    fleet.restore_tenant(&id, "test").unwrap();
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
}

/// The quick-read confinement a server uses to answer small reads without a thread hand-off:
/// reads run, everything else is refused before it changes anything, and the refusal sticks
/// so the caller reruns its whole unit of work elsewhere.
#[test]
fn quick_reads_run_and_everything_else_is_refused_untouched() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("quinn");
    fleet.create_tenant(&id, "test").unwrap();
    insert_todo(&fleet, &id, "milk");
    let count = |fleet: &Fleet| ints(&exec(fleet, &id, "SELECT count(*) FROM todos").unwrap());

    let mut conn = fleet.connect(&id).unwrap();
    assert!(conn.quick_reads_only(Some(Duration::from_millis(50))));
    let read = conn
        .execute("SELECT title FROM todos", &Args::default())
        .unwrap();
    assert_eq!(read.rows, vec![vec![Value::Text("milk".into())]]);
    assert!(!conn.quick_refused());

    // A write is refused before it steps, and so is everything after it.
    let write = conn.execute("INSERT INTO todos(title) VALUES ('eggs')", &Args::default());
    assert!(matches!(write, Err(Error::NotQuick)), "{write:?}");
    assert!(conn.quick_refused());
    let after = conn.execute("SELECT 1", &Args::default());
    assert!(matches!(after, Err(Error::NotQuick)), "{after:?}");

    // `BEGIN` reads as read-only to SQLite; it is rolled back and refused.
    conn.quick_reads_only(Some(Duration::from_millis(50)));
    for sql in ["BEGIN", "BEGIN TRANSACTION READONLY", "SAVEPOINT s"] {
        let begun = conn.execute(sql, &Args::default());
        assert!(matches!(begun, Err(Error::NotQuick)), "{sql}: {begun:?}");
        assert!(conn.is_autocommit(), "{sql} left a transaction open");
        conn.quick_reads_only(Some(Duration::from_millis(50)));
    }

    // A script is refused whole.
    let script = conn.execute_script("SELECT 1; SELECT 2");
    assert!(matches!(script, Err(Error::NotQuick)), "{script:?}");

    // A read that outruns the budget is interrupted and refused, not reported as a timeout,
    // and the connection then declines the confinement for a while.
    assert!(conn.quick_reads_only(Some(Duration::from_millis(50))));
    let long = conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        &Args::default(),
    );
    assert!(matches!(long, Err(Error::NotQuick)), "{long:?}");
    assert!(!conn.quick_reads_only(Some(Duration::from_millis(50))));
    assert!(!conn.quick_refused());
    // Lifted, the connection waits for a busy database again (the confinement waits for
    // nothing): a write behind another connection's open write transaction runs once it ends.
    let holder = raw(&fleet, &id);
    holder
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO todos(title) VALUES ('held');")
        .unwrap();
    conn.quick_reads_only(None);
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let wrote = conn.execute("INSERT INTO todos(title) VALUES ('eggs')", &Args::default());
        (wrote.map(|r| r.rows_affected), started.elapsed(), conn)
    });
    std::thread::sleep(Duration::from_millis(300));
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    let (wrote, waited, conn) = writer.join().unwrap();
    assert_eq!(wrote.unwrap(), 1, "the write waited for the lock and ran");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    drop(conn);
    assert_eq!(count(&fleet), vec![2]);
    let audit = fleet.tenant_audit(&id, 0, 100).unwrap();
    assert_eq!(audit.len(), 2, "one entry per write that ran: {audit:?}");
}

/// SQLite quietly opens a file read-only when the read-write open fails, and in a race with
/// the file's creation (lazy provisioning) the read-only retry can succeed where the first try
/// missed. A tenant is never served by such a connection: the open is refused, and works again
/// once the file can be written. `chattr +i` stands in for the race: not even root may write.
#[test]
fn a_tenant_file_that_cannot_be_opened_read_write_is_refused_not_served_read_only() {
    let tmp = TempDir::new().unwrap();
    let fleet = fleet_with_todos(&tmp, config(&tmp));
    let id = tid("frozen");
    fleet.create_tenant(&id, "test").unwrap();
    let path = fleet.layout().tenant_db(&id);
    let chattr = |flag: &str| {
        let status = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&path)
            .status()
            .expect("chattr runs");
        assert!(status.success(), "chattr {flag} (needs ext4 and root)");
    };
    chattr("+i");
    let opened = fleet.connect(&id).map(|_| ());
    chattr("-i");
    let err = opened.expect_err("a read-only connection was handed out");
    assert!(err.to_string().contains("read-only"), "{err}");
    insert_todo(&fleet, &id, "thawed");
    assert_eq!(
        ints(&exec(&fleet, &id, "SELECT count(*) FROM todos").unwrap()),
        vec![1]
    );
}
