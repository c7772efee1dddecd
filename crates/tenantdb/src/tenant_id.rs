//! Tenant ids become file names, so they are validated once, here, and carried as a type that
//! cannot hold anything else.

use std::fmt;

/// The rule every tenant id obeys, as shown to users in error messages.
pub const TENANT_ID_RULE: &str =
    "1 to 128 ASCII letters, digits, '_' or '-', starting with a letter or digit";

const MAX_LEN: usize = 128;

/// A validated tenant id: `^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`. Such an id has no dot, slash,
/// percent sign or space, so it can never name a path outside its shard directory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id {shown}: {reason}; a tenant id is {TENANT_ID_RULE}")]
pub struct InvalidTenantId {
    shown: String,
    reason: &'static str,
}

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let id = id.into();
        match problem(&id) {
            None => Ok(TenantId(id)),
            Some(reason) => Err(InvalidTenantId {
                shown: shown(&id),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn problem(id: &str) -> Option<&'static str> {
    let bytes = id.as_bytes();
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    if bytes.is_empty() {
        Some("it is empty")
    } else if bytes.len() > MAX_LEN {
        Some("it is longer than 128 characters")
    } else if !bytes[0].is_ascii_alphanumeric() {
        Some("it does not start with a letter or digit")
    } else if !bytes.iter().all(allowed) {
        Some("it contains a character other than letters, digits, '_' and '-'")
    } else {
        None
    }
}

/// Quotes an id for an error message without echoing control characters or megabytes of input.
fn shown(id: &str) -> String {
    let mut quoted: String = format!("{:?}", id.chars().take(40).collect::<String>());
    if id.chars().count() > 40 {
        quoted.push_str("...");
    }
    quoted
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_provider_ids() {
        for id in ["user_2abcDEF123", "a", "A-b_c", "0", &"x".repeat(128)] {
            assert!(TenantId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_paths_and_odd_characters() {
        let long = "x".repeat(129);
        for id in [
            "../x", "a/b", "..", ".hidden", "%2e%2e", "a b", "", &long, "é", "a\\b", "a.db", "_x",
            "-x", "a\0b", "a\nb",
        ] {
            let err = TenantId::new(id).unwrap_err().to_string();
            assert!(err.contains("a tenant id is 1 to 128"), "{id}: {err}");
        }
    }
}
