//! Where SQLite and PostgreSQL need different SQL or setup to do the same
//! thing. The writes differ most, and have a module per backend
//! (`write::sqlite`, `write::postgres`); the rest is here and beside the
//! statements it concerns (outbox claims, maintenance snapshots).

use super::queries;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// How a unit of work's transaction begins.
    ///
    /// SQLite: a plain (deferred) `BEGIN` takes the write lock only at the
    /// first write. If another connection committed since this one started
    /// reading, that upgrade fails at once with SQLITE_BUSY whatever the
    /// busy timeout (waiting cannot refresh a stale snapshot). `BEGIN
    /// IMMEDIATE` takes the write lock up front, where the busy timeout does
    /// wait, so write transactions queue instead of failing. Writers are thus
    /// serialised, and never hit a version conflict.
    ///
    /// PostgreSQL: a unit of work reads outside any transaction (see
    /// `Connection::Optimistic`); a commit that needs several statements,
    /// and a locking unit of work, run in READ COMMITTED, spelled out so that
    /// a server configured with another default does not change the
    /// behaviour. Concurrent writers to one product are caught by the
    /// version check at commit.
    ///
    /// Both go through `Pool::begin_with` (sqlx 0.8.4 and later, hence the
    /// workspace's version floor). Through `Any` it hands the statement to
    /// the backend's own transaction manager, which still tracks the
    /// transaction, so dropping it rolls back as usual.
    pub(super) fn begin_statement(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }

    /// `queries::PRODUCT_WITH_ORDER_LINES_*`: the JSON functions differ.
    pub(super) fn product_with_order_lines_statement(self) -> &'static str {
        match self {
            Self::Sqlite => queries::PRODUCT_WITH_ORDER_LINES_SQLITE,
            Self::Postgres => queries::PRODUCT_WITH_ORDER_LINES_POSTGRES,
        }
    }
}
