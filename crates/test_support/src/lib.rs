//! Shared test plumbing, so that every test binary (and the benchmarks)
//! treats outside services and throwaway databases the same way:
//!
//! - [`require_service`]: the CI rule for tests that need a service named by
//!   an environment variable: run when it is set, fail loudly when `CI=true`
//!   and it is not, otherwise skip with a visible notice;
//! - [`TestDatabase`]: a fresh database for one test, SQLite in a temporary
//!   directory or PostgreSQL created under a random name from `DATABASE_URL`
//!   and dropped with the value;
//! - [`per_backend!`]: one `#[tokio::test]` per test per backend, so that a
//!   test body is written once;
//! - [`unique`]: identifiers no other test (or earlier run) uses;
//! - [`redis`]: the shared Redis of `REDIS_URL`, and `redis-server`
//!   processes of a test's own (to stop and restart at will);
//! - [`smtp`]: an SMTP sink that records what it is sent;
//! - [`postgres`]: PostgreSQL servers of a test's own, to stop and restart;
//! - [`process`]: signals for child processes, and free ports.

pub mod postgres;
pub mod process;
pub mod redis;
pub mod smtp;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor, PgConnection};

/// The URL schemes of PostgreSQL, for [`require_service`] and [`service_url`].
pub const POSTGRES: &[&str] = &["postgres", "postgresql"];

/// The environment variable that names the PostgreSQL server tests may use.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// The URL schemes of Redis, for [`require_service`] and [`service_url`].
pub const REDIS: &[&str] = &["redis", "rediss"];

/// The environment variable that names the Redis server tests may share.
pub const REDIS_URL: &str = "REDIS_URL";

/// A random number, different on every call and in every process (std's
/// hasher keys are random per process and per `RandomState`).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// `prefix` and a random suffix: a name that no other test, and no earlier
/// run against a shared database, uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", random_u64())
}

/// The value of `var` if it is a URL with one of `schemes` (compared without
/// case), with no CI rule.
fn service_url(var: &str, schemes: &[&str]) -> Option<String> {
    let url = std::env::var(var).ok()?;
    let scheme = url.split_once("://")?.0;
    schemes
        .iter()
        .any(|wanted| scheme.eq_ignore_ascii_case(wanted))
        .then_some(url)
}

/// The URL of a service a test needs, from `var`, if it has one of `schemes`.
///
/// Otherwise: with `CI=true` it panics (CI must run every test, and a test
/// that silently skips there proves nothing); elsewhere it writes a skip
/// notice and returns `None`, and the caller returns early. The notice goes
/// straight to stderr, past libtest's capture, so that a skipped test does
/// not pass unnoticed. The variable's value is never shown: it may hold a
/// password.
pub fn require_service(var: &str, schemes: &[&str]) -> Option<String> {
    if let Some(url) = service_url(var, schemes) {
        return Some(url);
    }
    let wanted = schemes.first().map_or("a", |scheme| scheme);
    let state = match std::env::var(var) {
        Ok(_) => format!("{var} is not a {wanted}:// URL"),
        Err(_) => format!("{var} is not set"),
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: CI=true but {state}: tests that need {wanted} must run in CI, not skip \
             (export {var}={wanted}://..., as .ci/run does)"
        );
    }
    notice(&format!(
        "skipped {test}: {state} (set {var}={wanted}://... to run it)"
    ));
    None
}

/// The shared PostgreSQL server's URL (`DATABASE_URL`), under the CI rule
/// of [`require_service`]: for a test that makes its own databases there.
pub fn shared_postgres() -> Option<String> {
    require_service(DATABASE_URL, POSTGRES)
}

/// Writes `text` straight to stderr, past libtest's capture (which takes
/// `eprintln!`), so that a skipped test does not pass unnoticed. Best
/// effort: a notice that cannot be written is no reason to fail.
pub fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A database that exists for one test, or one benchmark, and no longer.
///
/// SQLite: a file in a fresh temporary directory, created by whoever opens
/// it first; the directory goes with the value. PostgreSQL: a database with
/// a random name on the server `DATABASE_URL` names, dropped with the value
/// (`WITH (FORCE)`, so connections still open do not keep it alive).
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sqlite {
        _dir: tempfile::TempDir,
    },
    Postgres {
        /// `DATABASE_URL`: where to connect to create and drop the database.
        admin_url: String,
        name: String,
    },
}

impl TestDatabase {
    /// A SQLite database file (not created yet) in a fresh temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self {
            url,
            kind: Kind::Sqlite { _dir: dir },
        }
    }

    /// A fresh, empty PostgreSQL database, or `None` (the test skips) when
    /// `DATABASE_URL` is not a `postgres://` URL and `CI` is not `true`.
    pub async fn postgres() -> Option<Self> {
        let admin_url = shared_postgres()?;
        Some(Self::create_postgres(&admin_url).await)
    }

    /// For a benchmark: a fresh, empty PostgreSQL database, or `None` with a
    /// notice when `DATABASE_URL` is not a `postgres://` URL. A benchmark is
    /// not a test: no CI rule applies.
    pub async fn postgres_for_benchmark(benchmark: &str) -> Option<Self> {
        let Some(admin_url) = service_url(DATABASE_URL, POSTGRES) else {
            notice(&format!(
                "{benchmark}: skipped on PostgreSQL: set DATABASE_URL=postgres://... to run it there"
            ));
            return None;
        };
        Some(Self::create_postgres(&admin_url).await)
    }

    /// A fresh, empty database on the PostgreSQL server of `admin_url`,
    /// which must let its user create databases.
    pub async fn create_postgres(admin_url: &str) -> Self {
        let name = format!("test_{:016x}", random_u64());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .expect("connect to the PostgreSQL server of DATABASE_URL");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create a test database");
        admin.close().await.expect("disconnect");
        Self {
            url: with_database(admin_url, &name),
            kind: Kind::Postgres {
                admin_url: admin_url.to_owned(),
                name,
            },
        }
    }

    /// The URL to open it with: `sqlite://...` or `postgres://...`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `"sqlite"` or `"postgres"`, for messages and benchmark names.
    pub fn backend(&self) -> &'static str {
        match self.kind {
            Kind::Sqlite { .. } => "sqlite",
            Kind::Postgres { .. } => "postgres",
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Kind::Postgres { admin_url, name } = &self.kind else {
            return; // The temporary directory removes itself.
        };
        if let Err(error) = drop_postgres_database(admin_url, name) {
            // Not a panic: this may run while a failed test unwinds.
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test database {name}: {error}"
            );
        }
    }
}

/// Drops database `name`. `Drop` cannot await, and the test's runtime may be
/// shutting down (or be a current-thread one, which `block_on` would stall):
/// so this runs on a thread of its own with a runtime of its own.
fn drop_postgres_database(
    admin_url: &str,
    name: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (admin_url, name) = (admin_url.to_owned(), name.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut admin = PgConnection::connect(&admin_url).await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await?;
            admin.close().await?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| "the thread dropping it panicked")?
}

/// `url` with its database name replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut result = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

/// Runners for [`per_backend!`] whose tests take a fresh [`TestDatabase`],
/// dropped when the test is done with it (a test that owns it may drop it
/// earlier, e.g. after stopping a process that uses it).
pub mod on_database {
    use std::future::Future;

    use super::TestDatabase;

    pub async fn sqlite<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase) -> F) {
        test(TestDatabase::sqlite()).await;
    }

    /// Skips (or fails under `CI=true`) unless `DATABASE_URL` is `postgres://`.
    pub async fn postgres<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase) -> F) {
        if let Some(db) = TestDatabase::postgres().await {
            test(db).await;
        }
    }
}

/// One `#[tokio::test]` per test and per backend, so that a test is written
/// once however many backends it runs on:
///
/// ```ignore
/// per_backend!(mod every_backend on [sqlite, postgres] via run {
///     a_test, another_test,
/// });
/// ```
///
/// gives `every_backend::sqlite::a_test`, `every_backend::postgres::a_test`
/// and so on, each of which awaits `run::sqlite(a_test)` (or
/// `run::postgres(a_test)`). `run` is a module beside the invocation with
/// one `async fn` per backend: it prepares the backend (or skips, see
/// [`require_service`]), calls the test with what the test takes, and
/// cleans up after it.
#[macro_export]
macro_rules! per_backend {
    (mod $module:ident on [$($backend:ident),* $(,)?] via $runner:ident $tests:tt) => {
        mod $module {
            $( $crate::per_backend!(@backend $backend $runner $tests); )*
        }
    };
    (@backend $backend:ident $runner:ident { $($test:ident),* $(,)? }) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::super::$runner::$backend(super::super::$test).await;
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://root@127.0.0.1:5432/test", "t_1"),
            "postgres://root@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t_1"),
            "postgres://u:p@h/t_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t_1"), "postgres://h/t_1");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("x"), unique("x"));
        assert!(unique("order").starts_with("order-"));
    }

    #[test]
    fn sqlite_databases_live_in_their_own_directory() {
        let (a, b) = (TestDatabase::sqlite(), TestDatabase::sqlite());
        assert_ne!(a.url(), b.url());
        assert!(a.url().starts_with("sqlite://"));
        assert_eq!(a.backend(), "sqlite");
    }
}
