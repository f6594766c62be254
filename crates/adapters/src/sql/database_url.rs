//! Reading a `DATABASE_URL`: which backend it names, how to open it, and how
//! to show it to an operator without its password. The one parser of
//! database URLs: [`SqlStore::connect`](super::SqlStore::connect) reads its
//! URL with it, and the binary's configuration validates `--database-url`
//! with it when the arguments are read.

use std::fmt;
use std::str::FromStr;

use super::{Dialect, SqlError};
use crate::redact::redact_url;

/// The forms of URL [`DatabaseUrl::parse`] accepts, for messages.
pub const SUPPORTED_FORMS: &str = "sqlite://PATH or sqlite:PATH (created if missing), \
     sqlite::memory:, or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE";

/// A database URL, understood. Its `Display` and `Debug` show it without
/// its password, so that it can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// As given, password included: for the database driver only.
    given: String,
    pub(super) dialect: Dialect,
    /// What sqlx is given: for SQLite, with `mode=rwc` added unless the
    /// operator chose a mode, so that a missing file is created.
    pub(super) connect: String,
    /// Safe to log and to put in error messages.
    pub(super) redacted: String,
    /// A SQLite database that lives only as long as its connection.
    pub(super) in_memory: bool,
}

/// A URL whose scheme is neither SQLite's nor PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported database URL {url}: expected {SUPPORTED_FORMS}")]
pub struct UnsupportedDatabaseUrl {
    /// The URL refused, without its password.
    pub url: String,
}

impl From<UnsupportedDatabaseUrl> for SqlError {
    fn from(refused: UnsupportedDatabaseUrl) -> Self {
        SqlError::UnsupportedUrl { url: refused.url }
    }
}

impl DatabaseUrl {
    /// Reads `url`: `sqlite:` or `sqlite://` followed by a path (or
    /// `:memory:`), or `postgres://`/`postgresql://` (schemes in any case).
    /// The path and the rest are the driver's to judge when it connects.
    pub fn parse(url: &str) -> Result<Self, UnsupportedDatabaseUrl> {
        let redacted = redact_url(url);
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        let dialect = match scheme.as_deref() {
            Some("sqlite") => Dialect::Sqlite,
            Some("postgres" | "postgresql") => Dialect::Postgres,
            _ => return Err(UnsupportedDatabaseUrl { url: redacted }),
        };
        let (mut connect, mut in_memory) = (url.to_owned(), false);
        if dialect == Dialect::Sqlite {
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let mode = query.split('&').find_map(|pair| pair.strip_prefix("mode="));
            in_memory = path.ends_with(":memory:") || mode == Some("memory");
            if mode.is_none() && !in_memory {
                if !url.contains('?') {
                    connect.push('?');
                } else if !(url.ends_with('?') || url.ends_with('&')) {
                    connect.push('&');
                }
                connect.push_str("mode=rwc");
            }
        }
        Ok(Self {
            given: url.to_owned(),
            dialect,
            connect,
            redacted,
            in_memory,
        })
    }

    /// The URL as given, password included: for
    /// [`SqlStore::connect`](super::SqlStore::connect) only, never a log.
    pub fn expose(&self) -> &str {
        &self.given
    }
}

impl FromStr for DatabaseUrl {
    type Err = UnsupportedDatabaseUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::parse(url)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("url", &self.redacted)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> DatabaseUrl {
        DatabaseUrl::parse(url).expect("a supported URL")
    }

    #[test]
    fn sqlite_files_are_created_unless_a_mode_is_given() {
        assert_eq!(
            parse("sqlite://data/a.db").connect,
            "sqlite://data/a.db?mode=rwc"
        );
        assert_eq!(parse("sqlite:a.db").connect, "sqlite:a.db?mode=rwc");
        assert_eq!(
            parse("sqlite:///tmp/a.db?cache=private").connect,
            "sqlite:///tmp/a.db?cache=private&mode=rwc"
        );
        assert_eq!(
            parse("sqlite://a.db?mode=ro").connect,
            "sqlite://a.db?mode=ro"
        );
        assert!(!parse("sqlite://a.db").in_memory);
    }

    #[test]
    fn in_memory_sqlite_is_recognised() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
        ] {
            let parsed = parse(url);
            assert!(parsed.in_memory, "{url}");
            assert_eq!(parsed.connect, url);
        }
    }

    #[test]
    fn dialect_comes_from_the_scheme() {
        assert_eq!(parse("sqlite://a.db").dialect, Dialect::Sqlite);
        assert_eq!(parse("postgres://h/db").dialect, Dialect::Postgres);
        assert_eq!(parse("PostgreSQL://h/db").dialect, Dialect::Postgres);
        assert_eq!(parse("postgres://h/db").connect, "postgres://h/db");
    }

    #[test]
    fn every_documented_form_is_accepted() {
        for (url, dialect) in [
            ("sqlite://allocation.db", Dialect::Sqlite),
            ("sqlite:allocation.db", Dialect::Sqlite),
            ("sqlite:///var/lib/allocation/a.db", Dialect::Sqlite),
            ("sqlite::memory:", Dialect::Sqlite),
            ("SQLite://a.db", Dialect::Sqlite),
            (
                "postgres://app:secret@db:5432/allocation",
                Dialect::Postgres,
            ),
            ("postgresql://db/allocation", Dialect::Postgres),
        ] {
            let parsed = parse(url);
            assert_eq!(parsed.dialect, dialect, "{url}");
            assert_eq!(parsed.expose(), url, "the driver gets the URL as given");
        }
    }

    #[test]
    fn unsupported_urls_are_refused_without_their_password() {
        let error = DatabaseUrl::parse("mysql://me:hunter2@h/db").expect_err("unsupported");
        assert_eq!(error.url, "mysql://me:***@h/db");
        let message = error.to_string();
        assert!(message.contains("mysql://me:***@h/db"), "{message}");
        assert!(message.contains("postgres://"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        for refused in ["a.db", "", "sqlite", "memory://", "http://h/db", "://h/db"] {
            assert!(DatabaseUrl::parse(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn it_shows_without_its_password() {
        let url = parse("postgres://me:hunter2@db/app?password=hunter2");
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.starts_with("postgres://me:***@db/app?password=***"),
            "{shown}"
        );
    }

    #[test]
    fn a_refusal_becomes_the_stores_unsupported_url_error() {
        let refused = DatabaseUrl::parse("mysql://h/db").expect_err("unsupported");
        assert!(matches!(
            SqlError::from(refused),
            SqlError::UnsupportedUrl { url } if url == "mysql://h/db"
        ));
    }
}
