//! Values as they travel from the source to a tenant, and the checksum that proves they arrived.
//!
//! [`Cell`] keeps text as the exact bytes SQLite stored: a shared database written by an old
//! app may hold text that is not valid UTF-8, and copying it must neither fail nor change it.

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use sha2::{Digest, Sha256};

/// One value read from the source, owned so it can cross to a writer thread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Cell {
    pub(crate) fn from_ref(value: ValueRef<'_>) -> Cell {
        match value {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }

    pub(crate) fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(*i),
            Cell::Real(f) => ValueRef::Real(*f),
            Cell::Text(t) => ValueRef::Text(t),
            Cell::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// Roughly what the value costs in memory, for bounding the rows in flight.
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<Cell>()
            + match self {
                Cell::Text(b) | Cell::Blob(b) => b.len(),
                _ => 0,
            }
    }
}

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_value_ref()))
    }
}

/// Row count and content checksum of one table's rows in one tenant.
///
/// The checksum does not depend on row order: it is the sum, modulo 2^256, of the sha256 of
/// each row's values (each value encoded with its storage class, so `1`, `1.0` and `'1'`
/// differ). Source and tenant can therefore be read in whatever order is cheapest, a missing,
/// extra or duplicated row changes both the count and the sum, and a changed value changes the
/// sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    sum: [u64; 4],
}

impl TableDigest {
    pub(crate) fn add<'a>(&mut self, values: impl IntoIterator<Item = ValueRef<'a>>) {
        let mut hasher = Sha256::new();
        for value in values {
            encode(&mut hasher, value);
        }
        let digest = hasher.finalize();
        let mut carry = 0u64;
        for (limb, bytes) in self.sum.iter_mut().zip(digest.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            let (partial, c1) = limb.overflowing_add(u64::from_le_bytes(word));
            let (total, c2) = partial.overflowing_add(carry);
            *limb = total;
            carry = u64::from(c1) + u64::from(c2);
        }
        self.rows += 1;
    }

    /// The checksum as 64 hex digits.
    pub fn checksum(&self) -> String {
        self.sum
            .iter()
            .rev()
            .map(|limb| format!("{limb:016x}"))
            .collect()
    }
}

fn encode(hasher: &mut Sha256, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => hasher.update([0u8]),
        ValueRef::Integer(i) => {
            hasher.update([1u8]);
            hasher.update(i.to_be_bytes());
        }
        ValueRef::Real(f) => {
            hasher.update([2u8]);
            hasher.update(f.to_bits().to_be_bytes());
        }
        ValueRef::Text(t) => {
            hasher.update([3u8]);
            hasher.update((t.len() as u64).to_be_bytes());
            hasher.update(t);
        }
        ValueRef::Blob(b) => {
            hasher.update([4u8]);
            hasher.update((b.len() as u64).to_be_bytes());
            hasher.update(b);
        }
    }
}

/// A value as shown in a report: quoted, short, and free of control characters.
pub(crate) fn show(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => {
            let text = String::from_utf8_lossy(t);
            let mut shown = format!("{:?}", text.chars().take(40).collect::<String>());
            if text.chars().count() > 40 {
                shown.push_str("...");
            }
            shown
        }
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}{}'", if b.len() > 16 { "..." } else { "" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(rows: &[Vec<Cell>]) -> TableDigest {
        let mut d = TableDigest::default();
        for row in rows {
            d.add(row.iter().map(Cell::as_value_ref));
        }
        d
    }

    #[test]
    fn checksum_ignores_order_but_not_content_or_duplicates() {
        let a = vec![Cell::Integer(1), Cell::Text(b"a".to_vec())];
        let b = vec![Cell::Integer(2), Cell::Null];
        let one = digest(&[a.clone(), b.clone()]);
        assert_eq!(one, digest(&[b.clone(), a.clone()]));
        assert_ne!(one, digest(&[a.clone(), a.clone()]));
        assert_ne!(one.checksum(), digest(std::slice::from_ref(&a)).checksum());
        let typed = vec![Cell::Real(1.0), Cell::Text(b"a".to_vec())];
        assert_ne!(digest(std::slice::from_ref(&a)), digest(&[typed]));
        let text = vec![Cell::Text(b"1".to_vec()), Cell::Text(b"a".to_vec())];
        assert_ne!(digest(&[a]).checksum(), digest(&[text]).checksum());
        assert_eq!(one.checksum().len(), 64);
    }

    #[test]
    fn shows_values_briefly() {
        assert_eq!(show(ValueRef::Text(b"a b")), "\"a b\"");
        assert_eq!(show(ValueRef::Real(4.5)), "4.5");
        assert_eq!(show(ValueRef::Null), "NULL");
        assert!(show(ValueRef::Text("x".repeat(100).as_bytes())).ends_with("..."));
        assert_eq!(show(ValueRef::Blob(&[1, 255])), "x'01ff'");
    }
}
