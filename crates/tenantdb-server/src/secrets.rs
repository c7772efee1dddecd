//! Development secrets: with no auth configured, `tenantdb serve` generates a JWT secret, an
//! admin token and a webhook secret once, keeps them in `<data-dir>/secrets.toml` (mode 0600),
//! and reuses them on every later start so minted tokens keep working.
//!
//! The file is a tiny TOML subset written and read here by hand: comment lines, blank lines and
//! `key = "value"` lines. The file is created under a temporary name with mode 0600 from the
//! first byte, synced, then linked into place, so it is never readable by others, never seen
//! half-written, and two servers starting at once agree on one set of secrets.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The file name inside the data directory.
pub const SECRETS_FILE: &str = "secrets.toml";

const JWT_SECRET: &str = "jwt_secret";
const ADMIN_TOKEN: &str = "admin_token";
const WEBHOOK_SECRET: &str = "webhook_secret";
const WEBHOOK_PREFIX: &str = "whsec_";

/// Generated development secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct DevSecrets {
    /// HS256 secret for user tokens: base64url of 32 random bytes.
    pub jwt_secret: String,
    /// The admin bearer token: base64url of 32 random bytes.
    pub admin_token: String,
    /// Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
    pub webhook_secret: String,
}

impl fmt::Debug for DevSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevSecrets")
            .field("jwt_secret", &"<redacted>")
            .field("admin_token", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {message}", .path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{} has no `{key}`", .path.display())]
    Missing { path: PathBuf, key: &'static str },
    #[error("cannot generate random secrets: {0}")]
    Random(String),
}

impl DevSecrets {
    /// Fresh random secrets.
    pub fn generate() -> Result<DevSecrets, SecretsError> {
        Ok(DevSecrets {
            jwt_secret: URL_SAFE_NO_PAD.encode(random::<32>()?),
            admin_token: URL_SAFE_NO_PAD.encode(random::<32>()?),
            webhook_secret: format!("{WEBHOOK_PREFIX}{}", STANDARD.encode(random::<24>()?)),
        })
    }

    /// See [`load_or_create`].
    pub fn load_or_create(data_dir: &Path) -> Result<DevSecrets, SecretsError> {
        load_or_create(data_dir)
    }

    /// See [`load`].
    pub fn load(data_dir: &Path) -> Result<Option<DevSecrets>, SecretsError> {
        load(data_dir)
    }

    fn to_file_text(&self) -> String {
        format!(
            "# tenantdb development secrets, generated because no authentication was configured.\n\
             # Keep this file private (mode 0600). For production set TENANTDB_JWT_SECRET (or a\n\
             # public key / JWKS), TENANTDB_ADMIN_TOKEN and TENANTDB_WEBHOOK_SECRET instead.\n\
             {JWT_SECRET} = \"{}\"\n\
             {ADMIN_TOKEN} = \"{}\"\n\
             {WEBHOOK_SECRET} = \"{}\"\n",
            self.jwt_secret, self.admin_token, self.webhook_secret
        )
    }
}

fn random<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(bytes)
}

/// The path of the secrets file in `data_dir`.
pub fn secrets_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRETS_FILE)
}

/// Reads `<data_dir>/secrets.toml`; `None` when it does not exist.
pub fn load(data_dir: &Path) -> Result<Option<DevSecrets>, SecretsError> {
    let path = secrets_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SecretsError::Read { path, source }),
    };
    if let Ok(meta) = fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} is readable by other users (mode {:o}); run `chmod 600` on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    parse(&text, &path).map(Some)
}

/// Reads `<data_dir>/secrets.toml`, or generates secrets and writes it (creating `data_dir` if
/// needed). When two processes race, both end up with the secrets of the one that wrote first.
pub fn load_or_create(data_dir: &Path) -> Result<DevSecrets, SecretsError> {
    if let Some(secrets) = load(data_dir)? {
        return Ok(secrets);
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsError::Write { path, source }
    };
    fs::create_dir_all(data_dir).map_err(write_err(data_dir))?;
    let secrets = DevSecrets::generate()?;
    let path = secrets_path(data_dir);
    let tmp = data_dir.join(format!(
        ".{SECRETS_FILE}.{}.{}.tmp",
        std::process::id(),
        hex::encode(random::<6>()?)
    ));
    let written = write_new_file(&tmp, secrets.to_file_text().as_bytes());
    let placed = written.and_then(|()| place(&tmp, &path));
    // The temporary name is gone after a rename and redundant after a link; either way, remove
    // it (ignoring "not found").
    let _ = fs::remove_file(&tmp);
    match placed {
        Ok(true) => {
            sync_dir(data_dir).map_err(write_err(data_dir))?;
            Ok(secrets)
        }
        // Someone else created the file first: theirs wins.
        Ok(false) => load(data_dir)?.ok_or_else(|| SecretsError::Read {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "disappeared after being created"),
        }),
        Err(source) => Err(SecretsError::Write { path, source }),
    }
}

/// Creates `path` (which must not exist) with mode 0600 from the start, writes and syncs it.
fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Puts the finished temporary file at `path` unless a file is already there. `Ok(false)` when
/// one was. A hard link is create-if-absent and atomic; a filesystem without hard links gets a
/// rename, which is atomic too but replaces a file created in the meantime.
fn place(tmp: &Path, path: &Path) -> io::Result<bool> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => fs::rename(tmp, path).map(|()| true),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Parses the file: `key = "value"` lines, `#` comments (whole-line or after the value), blank
/// lines. Values are basic (`"…"`) or literal (`'…'`) strings without escapes. Unknown keys are
/// ignored; a duplicate, empty or missing key, or any other line, is an error naming the line.
fn parse(text: &str, path: &Path) -> Result<DevSecrets, SecretsError> {
    let mut jwt_secret = None;
    let mut admin_token = None;
    let mut webhook_secret = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let malformed = |message: String| SecretsError::Malformed {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| malformed("expected `key = \"value\"`".to_owned()))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(malformed(format!("invalid key {key:?}")));
        }
        let value =
            parse_string(value.trim()).map_err(|why| malformed(format!("`{key}`: {why}")))?;
        let slot = match key {
            JWT_SECRET => &mut jwt_secret,
            ADMIN_TOKEN => &mut admin_token,
            WEBHOOK_SECRET => &mut webhook_secret,
            other => {
                tracing::warn!(
                    "{}:{line_no}: unknown key `{other}` ignored",
                    path.display()
                );
                continue;
            }
        };
        if value.is_empty() {
            return Err(malformed(format!("`{key}` is empty")));
        }
        if slot.is_some() {
            return Err(malformed(format!("`{key}` is set twice")));
        }
        *slot = Some(value.to_owned());
    }
    let missing = |key| SecretsError::Missing {
        path: path.to_path_buf(),
        key,
    };
    let webhook_secret = webhook_secret.ok_or_else(|| missing(WEBHOOK_SECRET))?;
    if !webhook_secret.starts_with(WEBHOOK_PREFIX) {
        return Err(SecretsError::Malformed {
            path: path.to_path_buf(),
            line: line_of(text, WEBHOOK_SECRET),
            message: format!("`{WEBHOOK_SECRET}` must start with `{WEBHOOK_PREFIX}`"),
        });
    }
    Ok(DevSecrets {
        jwt_secret: jwt_secret.ok_or_else(|| missing(JWT_SECRET))?,
        admin_token: admin_token.ok_or_else(|| missing(ADMIN_TOKEN))?,
        webhook_secret,
    })
}

/// A quoted value, optionally followed by a `#` comment.
fn parse_string(value: &str) -> Result<&str, String> {
    let quote = match value.chars().next() {
        Some(q @ ('"' | '\'')) => q,
        _ => return Err("the value must be a quoted string".to_owned()),
    };
    let rest = &value[1..];
    let end = rest
        .find(quote)
        .ok_or_else(|| "the string is not closed".to_owned())?;
    let inner = &rest[..end];
    let after = rest[end + 1..].trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err("unexpected text after the string".to_owned());
    }
    if quote == '"' && inner.contains('\\') {
        return Err("escape sequences are not supported".to_owned());
    }
    if inner.chars().any(char::is_control) {
        return Err("control characters are not allowed".to_owned());
    }
    Ok(inner)
}

fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_then_reloads_identical_secrets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);

        let created = load_or_create(dir.path()).unwrap();
        let path = secrets_path(dir.path());
        assert!(path.exists());
        assert_eq!(load_or_create(dir.path()).unwrap(), created);
        assert_eq!(load(dir.path()).unwrap(), Some(created.clone()));
        assert_eq!(DevSecrets::load(dir.path()).unwrap(), Some(created.clone()));
        assert_eq!(DevSecrets::load_or_create(dir.path()).unwrap(), created);

        // Nothing else was left behind in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SECRETS_FILE)]);
    }

    #[test]
    fn file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        assert_eq!(mode(&secrets_path(dir.path())), 0o600);
    }

    #[test]
    fn generated_secrets_have_the_documented_shapes() {
        let s = DevSecrets::generate().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&s.jwt_secret).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s.admin_token).unwrap().len(), 32);
        let b64 = s.webhook_secret.strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap().len(), 24);
        let other = DevSecrets::generate().unwrap();
        assert_ne!(s.jwt_secret, other.jwt_secret);
        assert_ne!(s.admin_token, other.admin_token);
        assert_ne!(s.jwt_secret, s.admin_token);
    }

    #[test]
    fn creates_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        load_or_create(&nested).unwrap();
        assert!(secrets_path(&nested).exists());
    }

    #[test]
    fn an_existing_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mine = DevSecrets::generate().unwrap();
        fs::write(secrets_path(dir.path()), mine.to_file_text()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), mine);
        // `place` never replaces a file that appeared in the meantime.
        let tmp = dir.path().join("tmp");
        fs::write(&tmp, "other").unwrap();
        assert!(!place(&tmp, &secrets_path(dir.path())).unwrap());
        assert_eq!(load(dir.path()).unwrap(), Some(mine));
    }

    #[test]
    fn concurrent_creators_agree() {
        let dir = tempfile::tempdir().unwrap();
        let results: Vec<DevSecrets> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create(dir.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = load(dir.path()).unwrap().unwrap();
        assert!(results.iter().all(|r| *r == on_disk));
    }

    #[test]
    fn parses_tolerantly() {
        let text = "\n# comment\n  # indented comment\n\
                    jwt_secret = \"abc\"   # trailing comment\n\
                    admin_token='def'\n\
                    \n\
                    future_key = \"ignored\"\n\
                    webhook_secret   =   \"whsec_Zm9v\"\n";
        let s = parse(text, Path::new("secrets.toml")).unwrap();
        assert_eq!(s.jwt_secret, "abc");
        assert_eq!(s.admin_token, "def");
        assert_eq!(s.webhook_secret, "whsec_Zm9v");
        // The written format round-trips.
        let g = DevSecrets::generate().unwrap();
        assert_eq!(parse(&g.to_file_text(), Path::new("x")).unwrap(), g);
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let good = "jwt_secret = \"a\"\nadmin_token = \"b\"\nwebhook_secret = \"whsec_c\"\n";
        let cases: &[(&str, usize, &str)] = &[
            ("jwt_secret \"a\"", 1, "expected"),
            ("jwt_secret = a", 1, "quoted"),
            ("jwt_secret = \"a", 1, "not closed"),
            ("jwt_secret = \"a\" b", 1, "after the string"),
            ("jwt_secret = \"a\\nb\"", 1, "escape"),
            ("jwt_secret = \"\"", 1, "empty"),
            ("bad key = \"a\"", 1, "invalid key"),
            ("[section]", 1, "expected"),
        ];
        for (first_line, line, hint) in cases {
            let text = format!("{first_line}\n{good}");
            let err = parse(&text, Path::new("/d/secrets.toml")).unwrap_err();
            match &err {
                SecretsError::Malformed {
                    line: l, message, ..
                } => {
                    assert_eq!(l, line, "{first_line}: {err}");
                    assert!(message.contains(hint), "{first_line}: {err}");
                }
                other => panic!("{first_line}: {other}"),
            }
            assert!(err.to_string().starts_with("/d/secrets.toml:1: "), "{err}");
        }
        let twice = format!("{good}jwt_secret = \"again\"\n");
        let err = parse(&twice, Path::new("s")).unwrap_err();
        assert!(
            matches!(err, SecretsError::Malformed { line: 4, ref message, .. } if message.contains("twice")),
            "{err}"
        );
        let missing = "jwt_secret = \"a\"\nwebhook_secret = \"whsec_c\"\n";
        assert!(matches!(
            parse(missing, Path::new("s")).unwrap_err(),
            SecretsError::Missing {
                key: "admin_token",
                ..
            }
        ));
        let no_prefix = "jwt_secret = \"a\"\nadmin_token = \"b\"\nwebhook_secret = \"c\"\n";
        assert!(matches!(
            parse(no_prefix, Path::new("s")).unwrap_err(),
            SecretsError::Malformed { line: 3, .. }
        ));
    }

    #[test]
    fn malformed_file_on_disk_is_an_error_not_a_regeneration() {
        let dir = tempfile::tempdir().unwrap();
        let path = secrets_path(dir.path());
        fs::write(&path, "jwt_secret = oops\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, SecretsError::Malformed { line: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("secrets.toml:1"), "{err}");
        // The broken file is left for the operator, not overwritten.
        assert_eq!(fs::read_to_string(&path).unwrap(), "jwt_secret = oops\n");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(secrets_path(dir.path())).unwrap();
        assert!(matches!(load(dir.path()), Err(SecretsError::Read { .. })));
    }

    #[test]
    fn debug_hides_the_secrets() {
        let s = DevSecrets::generate().unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.jwt_secret) && !shown.contains(&s.admin_token));
        assert!(!shown.contains(&s.webhook_secret));
    }
}
