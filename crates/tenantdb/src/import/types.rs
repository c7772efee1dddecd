//! Would a source value arrive unchanged in the tenant's column? SQLite converts values on the
//! way into a column by the column's type affinity (and STRICT tables refuse some outright), so
//! a source column declared `TEXT` copied into a tenant column declared `INTEGER` turns `'42'`
//! into `42`. The import checks this before writing anything (see `plan`).

use rusqlite::types::ValueRef;

/// SQLite's type affinity of a declared column type (section 3.1 of "Datatypes In SQLite").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

pub(crate) fn affinity(declared: &str) -> Affinity {
    let upper = declared.to_ascii_uppercase();
    if upper.contains("INT") {
        Affinity::Integer
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        Affinity::Text
    } else if upper.contains("BLOB") || upper.trim().is_empty() {
        Affinity::Blob
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// What a column does to the values written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColumnType {
    pub affinity: Affinity,
    /// STRICT tables (and a rowid alias, `INTEGER PRIMARY KEY`) refuse values that do not end up
    /// of the declared class; `ANY` in a STRICT table accepts anything unchanged.
    pub strict: Option<Affinity>,
}

impl ColumnType {
    pub(crate) fn new(declared: &str, strict_table: bool, rowid_alias: bool) -> ColumnType {
        if rowid_alias {
            return ColumnType {
                affinity: Affinity::Integer,
                strict: Some(Affinity::Integer),
            };
        }
        if strict_table {
            let upper = declared.trim().to_ascii_uppercase();
            let class = match upper.as_str() {
                "INT" | "INTEGER" => Some(Affinity::Integer),
                "REAL" => Some(Affinity::Real),
                "TEXT" => Some(Affinity::Text),
                "BLOB" => Some(Affinity::Blob),
                _ => None, // ANY
            };
            return ColumnType {
                affinity: class.unwrap_or(Affinity::Blob),
                strict: class,
            };
        }
        ColumnType {
            affinity: affinity(declared),
            strict: None,
        }
    }

    /// True when every value a `source` column can hold arrives unchanged and accepted here, so
    /// no data needs to be looked at.
    pub(crate) fn accepts_all_of(&self, source: &ColumnType) -> bool {
        if let Some(class) = self.strict {
            return source.strict == Some(class);
        }
        let (to, from) = (self.affinity, source.affinity);
        to == Affinity::Blob
            || to == from
            || matches!(
                (to, from),
                (Affinity::Integer, Affinity::Numeric) | (Affinity::Numeric, Affinity::Integer)
            )
    }

    /// What happens to `value` written into a column of this type.
    pub(crate) fn fate(&self, value: ValueRef<'_>) -> Fate {
        if matches!(value, ValueRef::Null) {
            return Fate::Same;
        }
        let converted = convert(self.affinity, value);
        let Some(class) = self.strict else {
            return if converted == Class::of(value) {
                Fate::Same
            } else {
                Fate::Changed
            };
        };
        let wanted = match class {
            Affinity::Integer => Class::Integer,
            Affinity::Real => Class::Real,
            Affinity::Text => Class::Text,
            Affinity::Blob | Affinity::Numeric => Class::Blob,
        };
        if converted != wanted {
            Fate::Refused
        } else if converted == Class::of(value) {
            Fate::Same
        } else {
            Fate::Changed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Same,
    Changed,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Null,
    Integer,
    Real,
    Text,
    Blob,
}

impl Class {
    fn of(value: ValueRef<'_>) -> Class {
        match value {
            ValueRef::Null => Class::Null,
            ValueRef::Integer(_) => Class::Integer,
            ValueRef::Real(_) => Class::Real,
            ValueRef::Text(_) => Class::Text,
            ValueRef::Blob(_) => Class::Blob,
        }
    }
}

/// The storage class `value` has after `affinity` is applied to it.
fn convert(affinity: Affinity, value: ValueRef<'_>) -> Class {
    let class = Class::of(value);
    match (affinity, value) {
        (Affinity::Blob, _) | (_, ValueRef::Null | ValueRef::Blob(_)) => class,
        (Affinity::Text, ValueRef::Integer(_) | ValueRef::Real(_)) => Class::Text,
        (Affinity::Text, _) => class,
        (Affinity::Real, ValueRef::Integer(_)) => Class::Real,
        (Affinity::Real, ValueRef::Text(t)) => match numeric_text(t) {
            Some(_) => Class::Real,
            None => Class::Text,
        },
        (Affinity::Real, _) => class,
        (Affinity::Integer | Affinity::Numeric, ValueRef::Real(f)) => {
            if integral(f) {
                Class::Integer
            } else {
                Class::Real
            }
        }
        (Affinity::Integer | Affinity::Numeric, ValueRef::Text(t)) => match numeric_text(t) {
            Some(f) if integral(f) => Class::Integer,
            Some(_) => Class::Real,
            None => Class::Text,
        },
        (Affinity::Integer | Affinity::Numeric, _) => class,
    }
}

fn integral(f: f64) -> bool {
    // SQLite turns a REAL into an INTEGER only when the conversion round-trips exactly.
    f.fract() == 0.0 && f > -9.223_372_036_854_775e18 && f < 9.223_372_036_854_775e18
}

/// The number a text spells out, as SQLite reads it when applying numeric affinity: optional
/// surrounding whitespace, a sign, digits with an optional fraction, an optional exponent.
fn numeric_text(text: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(text).ok()?;
    let s = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    let bytes = s.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let mut digits = 0;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
        digits += 1;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(affinity("INTEGER"), Affinity::Integer);
        assert_eq!(affinity("BIGINT"), Affinity::Integer);
        assert_eq!(affinity("VARCHAR(20)"), Affinity::Text);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(affinity("BOOLEAN"), Affinity::Numeric);
        assert_eq!(affinity("DATETIME"), Affinity::Numeric);
    }

    #[test]
    fn fates_match_what_sqlite_does() {
        let int = ColumnType::new("INTEGER", false, false);
        let text = ColumnType::new("TEXT", false, false);
        let real = ColumnType::new("REAL", false, false);
        let strict_int = ColumnType::new("INTEGER", true, false);
        assert_eq!(int.fate(ValueRef::Text(b"42")), Fate::Changed);
        assert_eq!(int.fate(ValueRef::Text(b" 4.5e1 ")), Fate::Changed);
        assert_eq!(int.fate(ValueRef::Text(b"abc")), Fate::Same);
        assert_eq!(int.fate(ValueRef::Text(b"0x10")), Fate::Same);
        assert_eq!(int.fate(ValueRef::Real(3.0)), Fate::Changed);
        assert_eq!(int.fate(ValueRef::Real(3.5)), Fate::Same);
        assert_eq!(text.fate(ValueRef::Integer(1)), Fate::Changed);
        assert_eq!(text.fate(ValueRef::Text(b"1")), Fate::Same);
        assert_eq!(real.fate(ValueRef::Integer(1)), Fate::Changed);
        assert_eq!(strict_int.fate(ValueRef::Text(b"abc")), Fate::Refused);
        assert_eq!(strict_int.fate(ValueRef::Integer(7)), Fate::Same);
        assert_eq!(strict_int.fate(ValueRef::Null), Fate::Same);
        assert!(int.accepts_all_of(&ColumnType::new("BOOLEAN", false, false)));
        assert!(!int.accepts_all_of(&text));
        assert!(ColumnType::new("", false, false).accepts_all_of(&text));
    }

    #[test]
    fn numeric_text_is_strict_about_shape() {
        for ok in ["1", "-1", "+2.5", ".5", "5.", "1e3", " 7 ", "1E-2"] {
            assert!(numeric_text(ok.as_bytes()).is_some(), "{ok}");
        }
        for no in ["", "e3", "1e", "abc", "1 2", "inf", "NaN", "0x1", "."] {
            assert!(numeric_text(no.as_bytes()).is_none(), "{no}");
        }
    }
}
