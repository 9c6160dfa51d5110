//! Where the journal lives, from `--journal` / `COLLOQUY_JOURNAL`: a path or
//! `sqlite:PATH` is SQLite, `postgres://` or `postgresql://` is PostgreSQL,
//! and any other `scheme://` is refused.
//!
//! # Invariants
//! 1. A string with `scheme://` whose scheme is not a journal backend is an
//!    error naming the scheme, never a file name (issue 15: `postgres:` must
//!    not become a directory).
//! 2. A password is never taken from the URL (it would show in `ps`, shell
//!    history and logs): such a URL is refused with a hint to use
//!    `PGPASSWORD`. Every message shows the location through [`redact`].

use super::JournalError;
use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed journal location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (no password in it, invariant 2).
    Postgres(String),
}

impl JournalLocation {
    /// Parses `--journal` (invariants 1, 2).
    pub fn parse(s: &str) -> Result<Self, JournalError> {
        let refuse = |cause: String| JournalError::Location {
            location: redact(s),
            cause,
        };
        if let Some(rest) = s.strip_prefix("sqlite://") {
            return Ok(Self::Sqlite(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("sqlite:") {
            if rest.is_empty() {
                return Err(refuse("no file after sqlite: (fix: sqlite:PATH)".into()));
            }
            return Ok(Self::Sqlite(PathBuf::from(rest)));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let scheme_ok = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if scheme_ok {
                return match scheme.to_ascii_lowercase().as_str() {
                    "postgres" | "postgresql" => {
                        if userinfo(rest).is_some_and(|u| u.contains(':')) {
                            return Err(refuse(
                                "a password in the URL is refused (fix: drop it and set PGPASSWORD, or name a variable with --journal-password-env)".into(),
                            ));
                        }
                        Ok(Self::Postgres(s.to_string()))
                    }
                    other => Err(refuse(format!(
                        "unknown journal scheme {other:?} (fix: a file path, sqlite:PATH, or postgres://USER@HOST:PORT/DB)"
                    ))),
                };
            }
        }
        if s.is_empty() {
            return Err(refuse(
                "empty journal location (fix: a file path or postgres:// URL)".into(),
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(s)))
    }

    /// [`JournalLocation::parse`] of a path given as `PathBuf` (a non-UTF-8
    /// path is a file).
    pub fn parse_path(p: &Path) -> Result<Self, JournalError> {
        match p.to_str() {
            Some(s) => Self::parse(s),
            None => Ok(Self::Sqlite(p.to_path_buf())),
        }
    }
}

impl fmt::Display for JournalLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// The user-info part of a URL's authority (`user:pass` of
/// `scheme://user:pass@host/db`), if any.
fn userinfo(rest: &str) -> Option<&str> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map(|(u, _)| u)
}

/// `url` with any password replaced by `***` and query parameters that may
/// carry one (`password=`) dropped (invariant 2).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match userinfo(rest) {
        Some(u) if u.contains(':') => {
            let user = u.split(':').next().unwrap_or("");
            out.push_str(user);
            out.push_str(":***");
            out.push_str(&rest[u.len()..]);
        }
        _ => out.push_str(rest),
    }
    if let Some(q) = query {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.to_ascii_lowercase().starts_with("password"))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_the_backend_and_unknown_ones_are_errors() {
        assert_eq!(
            JournalLocation::parse("j.sqlite").expect("path"),
            JournalLocation::Sqlite("j.sqlite".into())
        );
        assert_eq!(
            JournalLocation::parse("sqlite:/tmp/x.db").expect("sqlite:"),
            JournalLocation::Sqlite("/tmp/x.db".into())
        );
        assert!(matches!(
            JournalLocation::parse("postgres://u@127.0.0.1:5432/db"),
            Ok(JournalLocation::Postgres(_))
        ));
        assert!(matches!(
            JournalLocation::parse("postgresql://u@h/db"),
            Ok(JournalLocation::Postgres(_))
        ));
        for bad in ["mysql://u@h/db", "redis://h", "mongodb://h/db"] {
            let err = JournalLocation::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("unknown journal scheme"), "{err}");
        }
        assert!(JournalLocation::parse("").is_err());
        assert!(JournalLocation::parse("sqlite:").is_err());
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_shown() {
        let err = JournalLocation::parse("postgres://u:s3cret@h:5432/db")
            .expect_err("password refused")
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("PGPASSWORD"), "{err}");
        assert_eq!(
            redact("postgres://u:s3cret@h/db?password=x&sslmode=disable"),
            "postgres://u:***@h/db?sslmode=disable"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
