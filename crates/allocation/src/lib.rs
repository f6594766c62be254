//! The allocation service's binary crate: configuration, bootstrap and the
//! entrypoints. It is kept thin: everything it does is parse, wire, and hand
//! over to the service layer. A library as well, so that tests can build the
//! HTTP app in-process.

pub mod bootstrap;
pub mod config;
pub mod entrypoints;

use std::sync::Arc;

use anyhow::Context;
use service_layer::Store;
use service_layer::memory::MemoryStore;
use service_layer::ports::ReadModel;
use tokio::net::TcpListener;
use tracing::info;

use crate::bootstrap::{Outside, bootstrap, open_sql_store};
use crate::config::{Backend, Cli, Command, ServeArgs};
use crate::entrypoints::http::{self, AppState};

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => match args.database.database_url.backend() {
            Backend::Memory => serve(MemoryStore::new(), &args).await,
            Backend::Sqlite | Backend::Postgres => {
                let store = open_sql_store(&args.database).await?;
                serve(store, &args).await
            }
        },
        Command::Migrate(database) => {
            if database.database_url.backend() == Backend::Memory {
                info!("memory:// keeps no schema; nothing to migrate");
                return Ok(());
            }
            // Opening the store migrates it.
            open_sql_store(&database).await?;
            info!(database = %database.database_url, "schema is up to date");
            Ok(())
        }
    }
}

/// Serves the HTTP API until SIGTERM or SIGINT, then finishes the requests
/// in flight and returns.
async fn serve<S: Store + ReadModel>(store: S, args: &ServeArgs) -> anyhow::Result<()> {
    let bus = Arc::new(bootstrap(store.clone(), Outside::default()));
    let app = http::router(AppState {
        bus,
        read_model: store,
    });
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    info!(database = %args.database.database_url, "listening on http://{address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    info!("shut down cleanly");
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    {
        let interrupt = async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut sigterm) => {
                    sigterm.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = interrupt => info!("SIGINT received, shutting down"),
            () = terminate => info!("SIGTERM received, shutting down"),
        }
    }
}
