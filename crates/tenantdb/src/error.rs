use std::path::PathBuf;

use crate::tenant_id::InvalidTenantId;

/// Everything the library can refuse or fail at. Callers (the CLI, the server) map these onto
/// exit codes and HTTP statuses, so each variant names one situation a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidTenantId(#[from] InvalidTenantId),

    #[error("tenant {0} does not exist")]
    TenantNotFound(String),

    #[error("tenant {0} already exists")]
    TenantExists(String),

    #[error("tenant {0} was deleted; restore it explicitly to bring it back")]
    TenantDeleted(String),

    #[error("tenant {0} has no deleted copy in trash to restore")]
    NothingToRestore(String),

    #[error("refused by the guard: {0}")]
    Guard(String),

    /// SQLite refused or failed a user's statement; `code` is the extended result code's name
    /// (`SQLITE_CONSTRAINT_UNIQUE`), as libSQL clients expect it.
    #[error("{message}")]
    Sql { message: String, code: String },

    #[error("statement interrupted: it ran longer than the limit of {0:?}")]
    StatementTimeout(std::time::Duration),

    #[error("the result is larger than the response limit of {0} bytes")]
    ResponseTooLarge(usize),

    #[error("tenant {0} is busy: its connections were not released in time")]
    Busy(String),

    /// A connection confined to quick reads ([`crate::TenantConnection::quick_reads_only`])
    /// met a write, a transaction or a read that outran its budget. Nothing was changed: the
    /// caller runs the same work again where blocking is allowed. Never meant for users.
    #[error("not a quick read: run it again without the quick-read budget")]
    NotQuick,

    #[error("tenant {0}'s database file is missing from the data directory")]
    TenantFileMissing(String),

    #[error("invalid migration: {0}")]
    InvalidMigration(String),

    #[error(
        "applied migration {version} ({name}) {problem}; applied migrations must never change \
         (add a new migration instead)"
    )]
    MigrationDrift {
        version: u32,
        name: String,
        problem: String,
    },

    #[error("{0}")]
    Config(String),

    /// Another process serves the data directory (see [`crate::serving`]).
    #[error(
        "a tenantdb server is running on {0}: while it runs, delete and restore tenants through \
         it (the admin API), so it can close their connections first"
    )]
    ServedElsewhere(PathBuf),

    #[error("{context}: {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{context} ({path}): {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies an error raised by SQL a user sent.
    pub fn from_user_sql(e: rusqlite::Error) -> Error {
        match &e {
            rusqlite::Error::SqliteFailure(ffi, message) => Error::Sql {
                message: message.clone().unwrap_or_else(|| ffi.to_string()),
                code: crate::sqlite_codes::name(ffi.extended_code).to_string(),
            },
            rusqlite::Error::MultipleStatement => Error::Sql {
                message: "only one statement is allowed here; send several as a batch".into(),
                code: "SQLITE_MISUSE".into(),
            },
            rusqlite::Error::InvalidParameterName(name) => Error::Sql {
                message: format!("no parameter named {name}"),
                code: "SQLITE_RANGE".into(),
            },
            _ => Error::Sql {
                message: e.to_string(),
                code: "SQLITE_ERROR".into(),
            },
        }
    }
}

/// Attaches a human context to low-level errors without a closure at every call site.
pub(crate) trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, rusqlite::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Sqlite {
            context: context.into(),
            source,
        })
    }
}

pub(crate) fn io_error(
    context: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let (context, path) = (context.into(), path.into());
    move |source| Error::Io {
        context,
        path,
        source,
    }
}
