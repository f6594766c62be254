//! Fresh databases for a run, and what is done to them outside the measured
//! phases: creating and dropping them, bringing their schema up with the
//! service's own migrations, creating the raw phases' batches, and checking
//! at the end that each holds exactly the allocations it was sent.
//!
//! PostgreSQL: `--database-url` names a server and a database to connect to
//! for `CREATE DATABASE` / `DROP DATABASE`; every phase gets its own new
//! database on that server, named `load_harness_<run>_<phase>`, dropped at
//! the end (`WITH (FORCE)`, so even a connection left open cannot keep it).
//! SQLite: every phase gets its own file in a temporary directory that is
//! removed at the end.

use std::path::PathBuf;
use std::time::Duration;

use adapters::redact_url;
use adapters::sql::{PoolSettings, SqlStore};
use anyhow::{Context, bail};
use reqwest::Url;
use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

use crate::workload::{BATCHES_PER_SKU, BatchSpec};

/// Which database server the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// One fresh database.
#[derive(Debug, Clone)]
pub struct Database {
    /// The URL the service and sqlx open it with.
    pub url: String,
    /// The file, for SQLite.
    pub sqlite_path: Option<PathBuf>,
    /// The database's name, for PostgreSQL.
    pub name: Option<String>,
}

/// The databases of one run; [`Databases::drop_all`] removes them.
#[derive(Debug)]
pub struct Databases {
    pub backend: Backend,
    /// PostgreSQL: the URL to connect to for CREATE/DROP DATABASE.
    admin_url: String,
    /// PostgreSQL: the databases created so far.
    created: Vec<String>,
    /// SQLite: where the files live.
    directory: Option<TempDir>,
    tag: String,
}

impl Databases {
    /// Understands `--database-url` and, for PostgreSQL, checks that the
    /// server answers (a clear error now rather than in the middle of a run).
    pub async fn open(url: &str, tag: &str) -> anyhow::Result<Self> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => {
                let conn = admin_connection(url).await?;
                let _ = conn.close().await;
                Ok(Self {
                    backend: Backend::Postgres,
                    admin_url: url.to_owned(),
                    created: Vec::new(),
                    directory: None,
                    tag: tag.to_owned(),
                })
            }
            "sqlite" => {
                let rest = url["sqlite:".len()..].trim_start_matches('/');
                if !rest.is_empty() {
                    bail!(
                        "--database-url {url}: the harness uses fresh temporary SQLite files; \
                         pass just `sqlite:` (a path would be ignored)"
                    );
                }
                let directory = tempfile::Builder::new()
                    .prefix("load_harness_")
                    .tempdir()
                    .context("cannot create a temporary directory for the SQLite files")?;
                Ok(Self {
                    backend: Backend::Sqlite,
                    admin_url: String::new(),
                    created: Vec::new(),
                    directory: Some(directory),
                    tag: tag.to_owned(),
                })
            }
            _ => bail!(
                "unsupported --database-url {}: expected postgres://USER@HOST:PORT/DB or sqlite:",
                redact_url(url)
            ),
        }
    }

    /// A new, empty database for the phase called `label`.
    pub async fn create(&mut self, label: &str) -> anyhow::Result<Database> {
        match self.backend {
            Backend::Postgres => {
                let name = format!("load_harness_{}_{label}", self.tag)
                    .to_ascii_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                let mut conn = admin_connection(&self.admin_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("cannot create database {name}"))?;
                let _ = conn.close().await;
                self.created.push(name.clone());
                let mut url = Url::parse(&self.admin_url).context("invalid --database-url")?;
                url.set_path(&format!("/{name}"));
                Ok(Database {
                    url: url.to_string(),
                    sqlite_path: None,
                    name: Some(name),
                })
            }
            Backend::Sqlite => {
                let directory = self
                    .directory
                    .as_ref()
                    .context("the temporary directory is gone")?;
                let path = directory.path().join(format!("{label}.db"));
                let url = format!("sqlite://{}", path.display());
                Ok(Database {
                    url,
                    sqlite_path: Some(path),
                    name: None,
                })
            }
        }
    }

    /// The URL to connect to for server-wide queries (PostgreSQL only).
    pub fn admin_url(&self) -> Option<&str> {
        (self.backend == Backend::Postgres).then_some(self.admin_url.as_str())
    }

    /// Drops every database this run created; reports (and does not stop
    /// at) failures, naming what is left behind.
    pub async fn drop_all(&mut self) {
        if !self.created.is_empty() {
            match admin_connection(&self.admin_url).await {
                Ok(mut conn) => {
                    for name in self.created.drain(..) {
                        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut conn)
                            .await
                        {
                            eprintln!("warning: cannot drop database {name}: {error}");
                        }
                    }
                    let _ = conn.close().await;
                }
                Err(error) => {
                    eprintln!(
                        "warning: cannot drop databases {}: {error:#}",
                        self.created.join(", ")
                    );
                }
            }
        }
        if let Some(directory) = self.directory.take() {
            let path = directory.path().to_owned();
            if let Err(error) = directory.close() {
                eprintln!("warning: cannot remove {}: {error}", path.display());
            }
        }
    }
}

async fn admin_connection(url: &str) -> anyhow::Result<PgConnection> {
    let connect = PgConnection::connect(url);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => bail!(
            "cannot connect to PostgreSQL at {}: {error}",
            redact_url(url)
        ),
        Err(_) => bail!(
            "cannot connect to PostgreSQL at {}: no answer within 10s",
            redact_url(url)
        ),
    }
}

/// Brings the schema up with the service's own migrations (the `adapters`
/// crate, the code `allocation serve` runs at start).
pub async fn migrate(database: &Database) -> anyhow::Result<()> {
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
    };
    SqlStore::connect(&database.url, settings)
        .await
        .with_context(|| format!("cannot migrate {}", redact_url(&database.url)))?;
    Ok(())
}

pub async fn any_pool(url: &str) -> anyhow::Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .with_context(|| format!("cannot open {}", redact_url(url)))
}

/// Creates the products and batches as the service's `/add_batch` would
/// have: same rows, same creation order, same version numbers (one commit
/// per batch).
pub async fn seed(database: &Database, batches: &[BatchSpec]) -> anyhow::Result<()> {
    let pool = any_pool(&database.url).await?;
    let mut transaction = pool.begin().await?;
    let mut last_sku: Option<&str> = None;
    for batch in batches {
        if last_sku != Some(batch.sku.as_str()) {
            sqlx::query("INSERT INTO products (sku, version_number) VALUES ($1, $2)")
                .bind(&batch.sku)
                .bind(i64::try_from(BATCHES_PER_SKU).unwrap_or(0))
                .execute(&mut *transaction)
                .await
                .context("cannot create the products")?;
            last_sku = Some(batch.sku.as_str());
        }
        sqlx::query(
            "INSERT INTO batches (reference, sku, quantity_in, eta) VALUES ($1, $2, $3, $4)",
        )
        .bind(&batch.reference)
        .bind(&batch.sku)
        .bind(batch.qty)
        .bind(batch.eta)
        .execute(&mut *transaction)
        .await
        .context("cannot create the batches")?;
    }
    transaction.commit().await?;
    pool.close().await;
    Ok(())
}

/// What a database holds at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Contents {
    pub allocations: i64,
    pub view_rows: i64,
    pub allocated_qty_in_lines: i64,
    pub allocated_qty_in_batches: i64,
    /// Messages not yet published: all of them for a raw phase (nothing
    /// relays them), what the relay has not caught up with for the service.
    pub outbox_rows: i64,
    /// Batches with more units allocated than purchased (oversold): 0.
    pub over_allocated_batches: i64,
    /// Batches whose `allocated_quantity` is not the sum of their
    /// allocations' units (a lost or doubled update): 0.
    pub batches_off_their_lines: i64,
    /// Allocations without the read-model row naming their batch: 0.
    pub allocations_missing_from_view: i64,
}

pub async fn contents(database: &Database) -> anyhow::Result<Contents> {
    let pool = any_pool(&database.url).await?;
    let row: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM allocations), \
                (SELECT COUNT(*) FROM allocations_view), \
                (SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM allocations), \
                (SELECT CAST(COALESCE(SUM(allocated_quantity), 0) AS BIGINT) FROM batches), \
                (SELECT COUNT(*) FROM outbox), \
                (SELECT COUNT(*) FROM batches WHERE allocated_quantity > quantity_in - quantity_out), \
                (SELECT COUNT(*) FROM batches b WHERE b.allocated_quantity <> \
                    (SELECT COALESCE(SUM(a.qty), 0) FROM allocations a WHERE a.batch_id = b.id)), \
                (SELECT COUNT(*) FROM allocations a JOIN batches b ON b.id = a.batch_id \
                    WHERE NOT EXISTS (SELECT 1 FROM allocations_view v \
                        WHERE v.orderid = a.orderid AND v.sku = a.sku AND v.batchref = b.reference))",
    )
    .fetch_one(&pool)
    .await
    .with_context(|| {
        format!(
            "cannot count the allocations in {}",
            redact_url(&database.url)
        )
    })?;
    pool.close().await;
    Ok(Contents {
        allocations: row.0,
        view_rows: row.1,
        allocated_qty_in_lines: row.2,
        allocated_qty_in_batches: row.3,
        outbox_rows: row.4,
        over_allocated_batches: row.5,
        batches_off_their_lines: row.6,
        allocations_missing_from_view: row.7,
    })
}
