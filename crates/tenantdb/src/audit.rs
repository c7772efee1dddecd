//! The write audit (DESIGN section 9): every committed write made by user SQL appends an entry
//! to the tenant's own `_tenantdb_audit`, in the same transaction as the write, so a write that
//! rolls back leaves no entry and a committed one cannot lose its entry.
//!
//! Entries are hash-chained: each entry's hash covers its fields and the previous entry's
//! hash, so editing, deleting or inserting an entry behind the server's back breaks the chain
//! at that entry, and [`verify`] names it. User SQL can read the table but never write it (the
//! guard refuses writes to `_tenantdb_*` tables, including from triggers).
//!
//! Argument values are never stored, only a digest of them: the audit says that a statement
//! ran with some arguments without copying a user's data a second time.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::session::Args;

/// Created with the other bookkeeping tables in every tenant (see `migrate`).
pub const AUDIT_TABLE: &str = "CREATE TABLE IF NOT EXISTS _tenantdb_audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    statement TEXT NOT NULL,
    args_digest TEXT,
    rows_changed INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);";

/// The previous hash of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    pub statement: String,
    pub args_digest: Option<String>,
    pub rows_changed: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// The outcome of recomputing a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// The first entry whose stored hashes do not match what its fields and its predecessor
    /// give, and why.
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// SHA-256 over the arguments' types and bytes, or `None` when there are none.
pub fn args_digest(args: &Args) -> Option<String> {
    if args.positional.is_empty() && args.named.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    let mut value = |v: &rusqlite::types::Value| {
        use rusqlite::types::Value as V;
        match v {
            V::Null => h.update([0u8]),
            V::Integer(i) => {
                h.update([1u8]);
                h.update(i.to_be_bytes());
            }
            V::Real(f) => {
                h.update([2u8]);
                h.update(f.to_bits().to_be_bytes());
            }
            V::Text(t) => {
                h.update([3u8]);
                h.update((t.len() as u64).to_be_bytes());
                h.update(t.as_bytes());
            }
            V::Blob(b) => {
                h.update([4u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        }
    };
    for v in &args.positional {
        value(v);
    }
    for (name, v) in &args.named {
        value(&rusqlite::types::Value::Text(name.clone()));
        value(v);
    }
    Some(hex::encode(h.finalize()))
}

fn entry_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    statement: &str,
    digest: Option<&str>,
    rows: i64,
) -> String {
    let mut h = Sha256::new();
    for field in [prev.as_bytes(), actor.as_bytes(), statement.as_bytes()] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    h.update(rows.to_be_bytes());
    match digest {
        Some(d) => {
            h.update([1u8]);
            h.update(d.as_bytes());
        }
        None => h.update([0u8]),
    }
    hex::encode(h.finalize())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The library's own statements on user connections, tagged with a comment holding a random
/// per-process key. They are prepared once per connection and kept in the connection's
/// statement cache; the cache is keyed by SQL text, and user SQL cannot spell the key, so a
/// user's statement can never pick up one of these (which were authorized with the guard
/// lifted).
pub(crate) struct Internal {
    pub begin: String,
    pub commit: String,
    pub rollback: String,
    last: String,
    insert: String,
}

pub(crate) fn internal() -> &'static Internal {
    static INTERNAL: std::sync::OnceLock<Internal> = std::sync::OnceLock::new();
    INTERNAL.get_or_init(|| {
        let mut key = [0u8; 16];
        // A clock-and-address fallback is still unknown to users if the OS refuses randomness.
        let fallback = format!("{:?}{:p}", std::time::SystemTime::now(), &key);
        let key = match getrandom_fill(&mut key) {
            true => hex::encode(key),
            false => hex::encode(Sha256::digest(fallback.as_bytes())),
        };
        let tag = |sql: &str| format!("{sql} /* tenantdb {key} */");
        Internal {
            begin: tag("BEGIN IMMEDIATE"),
            commit: tag("COMMIT"),
            rollback: tag("ROLLBACK"),
            last: tag("SELECT seq, hash FROM _tenantdb_audit ORDER BY seq DESC LIMIT 1"),
            insert: tag(
                "INSERT INTO _tenantdb_audit (seq, at, actor, statement, args_digest, \
                 rows_changed, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            ),
        }
    })
}

fn getrandom_fill(buf: &mut [u8]) -> bool {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, buf))
        .is_ok()
}

/// Appends an entry. Must run inside the write's transaction, with the guard lifted.
pub(crate) fn append(
    conn: &Connection,
    actor: &str,
    statement: &str,
    digest: Option<&str>,
    rows_changed: i64,
) -> rusqlite::Result<()> {
    let sql = internal();
    let last: Option<(i64, String)> = conn
        .prepare_cached(&sql.last)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let at = now_ms();
    let hash = entry_hash(&prev, seq, at, actor, statement, digest, rows_changed);
    conn.prepare_cached(&sql.insert)?.execute(params![
        seq,
        at,
        actor,
        statement,
        digest,
        rows_changed,
        prev,
        hash
    ])?;
    Ok(())
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        statement: r.get(3)?,
        args_digest: r.get(4)?,
        rows_changed: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

const COLUMNS: &str = "seq, at, actor, statement, args_digest, rows_changed, prev_hash, hash";

/// Entries after `after`, oldest first.
pub fn read(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM _tenantdb_audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![after, limit], entry)?;
    rows.collect()
}

/// Recomputes the whole chain, streaming, and names the first entry that does not fit.
pub fn verify(conn: &Connection) -> rusqlite::Result<Verification> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM _tenantdb_audit ORDER BY seq"
    ))?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut entries = 0;
    while let Some(row) = rows.next()? {
        let e = entry(row)?;
        entries += 1;
        let broken = |reason: &str| {
            Some(Broken {
                seq: e.seq,
                reason: reason.to_string(),
            })
        };
        let problem = if e.seq != expected_seq {
            broken(&format!(
                "sequence jumps from {} to {} (entries removed or inserted)",
                expected_seq - 1,
                e.seq
            ))
        } else if e.prev_hash != prev {
            broken("its previous-hash does not match the entry before it")
        } else if e.hash
            != entry_hash(
                &e.prev_hash,
                e.seq,
                e.at,
                &e.actor,
                &e.statement,
                e.args_digest.as_deref(),
                e.rows_changed,
            )
        {
            broken("its hash does not match its contents (the entry was edited)")
        } else {
            None
        };
        if problem.is_some() {
            return Ok(Verification {
                entries,
                first_broken: problem,
            });
        }
        prev = e.hash;
        expected_seq += 1;
    }
    Ok(Verification {
        entries,
        first_broken: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(AUDIT_TABLE).unwrap();
        conn
    }

    #[test]
    fn chain_verifies_and_names_the_first_tampered_entry() {
        let conn = table();
        for i in 0..5 {
            append(&conn, "user:a", &format!("INSERT {i}"), None, 1).unwrap();
        }
        assert_eq!(verify(&conn).unwrap().first_broken, None);
        assert_eq!(verify(&conn).unwrap().entries, 5);
        conn.execute(
            "UPDATE _tenantdb_audit SET statement = 'x' WHERE seq = 3",
            [],
        )
        .unwrap();
        assert_eq!(verify(&conn).unwrap().first_broken.unwrap().seq, 3);
    }

    #[test]
    fn removed_entries_break_the_chain() {
        let conn = table();
        for i in 0..4 {
            append(&conn, "user:a", &format!("INSERT {i}"), None, 1).unwrap();
        }
        conn.execute("DELETE FROM _tenantdb_audit WHERE seq = 2", [])
            .unwrap();
        assert_eq!(verify(&conn).unwrap().first_broken.unwrap().seq, 3);
    }

    #[test]
    fn digests_depend_on_values_and_types() {
        use rusqlite::types::Value;
        let a = Args {
            positional: vec![Value::Integer(1)],
            named: vec![],
        };
        let b = Args {
            positional: vec![Value::Text("1".into())],
            named: vec![],
        };
        assert_ne!(args_digest(&a), args_digest(&b));
        assert_eq!(args_digest(&Args::default()), None);
    }
}
