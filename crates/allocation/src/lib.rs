//! The allocation service's binary crate: configuration, bootstrap and the
//! entrypoints. It is kept thin: everything it does is parse, wire, and hand
//! over to the service layer. A library as well, so that tests can build the
//! HTTP app in-process.

pub mod bootstrap;
pub mod config;
pub mod entrypoints;
pub mod maintenance;
pub mod metrics;

use std::sync::Arc;

use adapters::messages;
use adapters::redis::StreamConsumer;
use anyhow::Context;
use service_layer::memory::MemoryStore;
use service_layer::ports::{IdempotencyKeys, Outbox, ReadModel};
use service_layer::{MessageBus, Store};
use tokio::sync::watch;
use tracing::info;

use crate::bootstrap::{OutboundAdapters, Service, bootstrap, open_sql_store};
use crate::config::{Cli, Command, DatabaseArgs, MessagingArgs, ServeArgs, StoreUrl, WorkerArgs};
use crate::entrypoints::http::{self, AppState};
use crate::entrypoints::redis::consume_channels;
use crate::entrypoints::streams::consume_streams;

/// Runs the command the user asked for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => with_store(&args.database.clone(), Serve(args)).await,
        Command::Consume(args) => {
            anyhow::ensure!(
                args.messaging.redis_url.is_some(),
                "consume needs a Redis to consume from: set --redis-url or REDIS_URL"
            );
            with_store(
                &args.database.clone(),
                ConsumeOrRelay {
                    args,
                    consume: true,
                },
            )
            .await
        }
        Command::Relay(args) => {
            with_store(
                &args.database.clone(),
                ConsumeOrRelay {
                    args,
                    consume: false,
                },
            )
            .await
        }
        Command::Migrate(database) => {
            let StoreUrl::Sql(url) = &database.database_url else {
                info!("memory:// keeps no schema; nothing to migrate");
                return Ok(());
            };
            // Opening the store migrates it.
            open_sql_store(url, database.pool_settings()).await?;
            info!(database = %url, "schema is up to date");
            Ok(())
        }
        Command::RebuildReadModel(args) => maintenance::rebuild_read_model(&args).await,
        Command::Check(args) => maintenance::check(&args).await,
        Command::AllocateFromCsv(args) => entrypoints::csv::allocate_from_csv(&args.folder).await,
    }
}

/// Something to run once the configured store is open: the store's type is
/// only known at run time, and the service is generic over it.
trait WithStore {
    async fn run<S: Store + Outbox + ReadModel + IdempotencyKeys>(
        self,
        store: S,
    ) -> anyhow::Result<()>;
}

async fn with_store(database: &DatabaseArgs, job: impl WithStore) -> anyhow::Result<()> {
    match &database.database_url {
        StoreUrl::Memory => job.run(MemoryStore::new()).await,
        StoreUrl::Sql(url) => {
            let store = open_sql_store(url, database.pool_settings()).await?;
            job.run(store).await
        }
    }
}

/// `allocation serve`: HTTP, the Redis consumer and the outbox relay.
struct Serve(ServeArgs);

impl WithStore for Serve {
    async fn run<S: Store + Outbox + ReadModel + IdempotencyKeys>(
        self,
        store: S,
    ) -> anyhow::Result<()> {
        let Serve(args) = self;
        let outbound = OutboundAdapters::start(&args.messaging)?;
        let service = bootstrap(store, outbound);
        let listener = http::server::bind(args.bind)
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        let address = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let app = http::router_with(
            AppState {
                bus: service.bus.clone(),
                read_model: service.store.clone(),
            },
            &args.http.settings(),
        );
        let upkeep = tokio::spawn(crate::metrics::upkeep_forever());
        let workers = Workers::start(&service, &args.messaging, true)?;
        info!(database = %args.database.database_url, "listening on http://{address}");
        let stop_intake = workers.stop_intake.clone();
        http::server::serve(listener, app, args.http.connection_limits(), async move {
            shutdown_signal().await;
            let _ = stop_intake.send(true);
        })
        .await;
        upkeep.abort();
        workers.finish().await?;
        info!("shut down cleanly");
        Ok(())
    }
}

/// `allocation consume` and `allocation relay`: message handling alone,
/// without HTTP; `consume` says whether the Redis consumer runs beside the
/// outbox relay.
struct ConsumeOrRelay {
    args: WorkerArgs,
    consume: bool,
}

impl WithStore for ConsumeOrRelay {
    async fn run<S: Store + Outbox + ReadModel + IdempotencyKeys>(
        self,
        store: S,
    ) -> anyhow::Result<()> {
        let outbound = OutboundAdapters::start(&self.args.messaging)?;
        let service = bootstrap(store, outbound);
        let workers = Workers::start(&service, &self.args.messaging, self.consume)?;
        // Probes and metrics only: this process takes no requests.
        let bind = self.args.bind.unwrap_or_else(|| {
            let port = if self.consume { 5006 } else { 5007 };
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        });
        let listener =
            http::server::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
        let address = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let probes = http::probes_router(AppState {
            bus: service.bus.clone(),
            read_model: service.store.clone(),
        });
        let upkeep = tokio::spawn(crate::metrics::upkeep_forever());
        info!(database = %self.args.database.database_url, "running; probes and metrics on http://{address}");
        let stop_intake = workers.stop_intake.clone();
        // Probes and scrapes: a few connections, at the usual time limits.
        let limits = http::server::ConnectionLimits {
            max_connections: 64,
            header_read_timeout: std::time::Duration::from_secs(10),
            keep_alive_timeout: std::time::Duration::from_secs(60),
        };
        http::server::serve(listener, probes, limits, async move {
            shutdown_signal().await;
            let _ = stop_intake.send(true);
        })
        .await;
        upkeep.abort();
        workers.finish().await?;
        info!("shut down cleanly");
        Ok(())
    }
}

/// The background tasks: the Redis consumer (optional) and the outbox
/// relays (messages to Redis or the log, emails to SMTP or the log).
///
/// Shutdown runs in two steps: first nothing new comes in (HTTP and the
/// consumer finish what they are handling, and the bus the commands whose
/// callers went away), then the relays send what those last commands wrote
/// and stop, each within its shutdown grace (a hung SMTP server must not
/// hold up the exit: what is not sent stays in the outbox).
struct Workers<S> {
    stop_intake: watch::Sender<bool>,
    stop_relay: watch::Sender<bool>,
    consumer: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    stream_consumer: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    bus: Arc<MessageBus<S>>,
}

impl<S: Store + Outbox> Workers<S> {
    /// With `consume` and a Redis URL, the consumers of the book's channels
    /// and (unless --no-streams) of the streams run too.
    fn start(
        service: &Service<S>,
        messaging: &MessagingArgs,
        consume: bool,
    ) -> anyhow::Result<Self> {
        let (stop_intake, intake_stopped) = watch::channel(false);
        let (stop_relay, relay_stopped) = watch::channel(false);
        let redis_url = messaging.redis_url.clone().filter(|_| consume);
        let stream_consumer = match (&redis_url, messaging.streams.settings()) {
            (Some(url), Some(settings)) => {
                let consumer = StreamConsumer::connect(url, &messages::INCOMING, settings)?;
                let bus = service.bus.clone();
                let stopped = stopped(intake_stopped.clone());
                Some(tokio::spawn(consume_streams(bus, consumer, stopped)))
            }
            _ => None,
        };
        let consumer = redis_url.map(|url| {
            let bus = service.bus.clone();
            tokio::spawn(async move { consume_channels(bus, &url, stopped(intake_stopped)).await })
        });
        let relays = service
            .relays()
            .into_iter()
            .map(|relay| {
                let stop = stopped(relay_stopped.clone());
                tokio::spawn(async move { relay.run(stop).await })
            })
            .collect();
        Ok(Self {
            stop_intake,
            stop_relay,
            consumer,
            stream_consumer,
            relays,
            bus: service.bus.clone(),
        })
    }

    async fn finish(self) -> anyhow::Result<()> {
        let _ = self.stop_intake.send(true);
        if let Some(consumer) = self.consumer {
            consumer.await.context("the Redis consumer panicked")??;
        }
        if let Some(consumer) = self.stream_consumer {
            consumer
                .await
                .context("the Redis streams consumer panicked")??;
        }
        self.bus.finish_running_commands().await;
        let _ = self.stop_relay.send(true);
        for relay in self.relays {
            relay.await.context("an outbox relay panicked")?;
        }
        Ok(())
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM, and logs which.
pub async fn shutdown_signal() {
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
