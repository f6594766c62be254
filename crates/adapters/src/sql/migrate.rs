//! The schema: the migrations this build embeds, one set per backend, and
//! how they are applied safely by several processes starting at once.

use sqlx::migrate::{MigrateError, Migrator};

use super::{Dialect, SqlError, SqlStore};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

impl SqlStore {
    /// Applies the migrations this build embeds that the database lacks.
    /// Safe to run again, and from several processes at once: PostgreSQL
    /// takes an advisory lock; on SQLite the whole run is one `BEGIN
    /// IMMEDIATE` transaction (sqlx does not lock SQLite), so a second
    /// process waits and then finds nothing to do.
    pub async fn migrate(&self) -> Result<(), SqlError> {
        let result = match self.dialect {
            Dialect::Sqlite => self.migrate_sqlite().await,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await,
        };
        result.map_err(|cause| SqlError::Migrate {
            url: self.url.to_string(),
            cause,
        })
    }

    async fn migrate_sqlite(&self) -> Result<(), MigrateError> {
        let mut transaction = self
            .pool
            .begin_with(Dialect::Sqlite.begin_statement())
            .await?;
        // Each migration's own transaction becomes a savepoint inside this one.
        SQLITE_MIGRATIONS.run(&mut *transaction).await?;
        transaction.commit().await?;
        Ok(())
    }
}
