//! Configuration: parsed once, from flags with environment fallbacks (flags
//! win). Nothing else in the service reads the environment.

use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use adapters::redact_url;
use adapters::sql::{DatabaseUrl, PoolSettings, SUPPORTED_FORMS};
use clap::builder::{RangedU64ValueParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::entrypoints::http::server::ConnectionLimits;
use crate::entrypoints::http::{ApiTokens, HttpSettings};

/// Allocates customer order lines to batches of stock, and answers queries
/// about allocations (the "Architecture Patterns with Python" service).
#[derive(Debug, Parser)]
#[command(name = "allocation", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API, the Redis consumer (when --redis-url
    /// is set) and the outbox relay. Migrates the database schema first.
    Serve(ServeArgs),
    /// Run only the Redis consumer and the outbox relay, for deployments
    /// that scale message handling apart from the HTTP API. Serves
    /// /healthz, /readyz and /metrics on --bind (default 127.0.0.1:5006).
    Consume(WorkerArgs),
    /// Run only the outbox relay: publish committed messages (to Redis with
    /// --redis-url, else to the log). Serves /healthz, /readyz and /metrics
    /// on --bind (default 127.0.0.1:5007).
    Relay(WorkerArgs),
    /// Bring the database schema up to date, then exit. Safe to run twice.
    Migrate(DatabaseArgs),
    /// Rebuild the read model (what `GET /allocations/<orderid>` shows) from
    /// the allocations, and report what changed. Safe while the service runs.
    RebuildReadModel(MaintenanceArgs),
    /// Compare the read model with the allocations, and check the stock
    /// totals, in one snapshot; report the differences and the outbox
    /// backlog. Read-only. Exit code 0: consistent; 2: differences found;
    /// 1: could not check.
    Check(MaintenanceArgs),
    /// The book's CSV mode: allocate every line of FOLDER/orders.csv
    /// (orderid,sku,qty) to the batches of FOLDER/batches.csv
    /// (ref,sku,qty,eta; empty eta: in the warehouse), after the
    /// allocations already in FOLDER/allocations.csv if there is one, and
    /// write FOLDER/allocations.csv (orderid,sku,qty,batchref). No
    /// database. A malformed file stops it with the file, line and field,
    /// and nothing written.
    AllocateFromCsv(CsvArgs),
}

#[derive(Debug, Args)]
pub struct CsvArgs {
    /// The folder holding batches.csv, orders.csv and, if any,
    /// allocations.csv.
    pub folder: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub messaging: MessagingArgs,

    /// Address and port the HTTP API listens on (port 0 picks a free one).
    #[arg(
        long,
        env = "ALLOCATION_BIND",
        default_value = "127.0.0.1:5005",
        value_name = "ADDR:PORT"
    )]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// Limits and access control of the HTTP API.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Longest a request may take, in seconds; a slower one is answered 503
    /// (its command may still have taken effect).
    #[arg(long, env = "ALLOCATION_REQUEST_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    pub request_timeout: u64,

    /// Bearer token required on the write (POST) routes; several,
    /// comma-separated, are all accepted (to rotate tokens without
    /// downtime). Reads, probes, /metrics and /openapi.json stay open.
    /// Unset: no authentication.
    #[arg(
        long,
        env = "ALLOCATION_API_TOKEN",
        value_name = "TOKEN[,TOKEN...]",
        value_parser = SecretValueParser::<ApiTokens>::new(),
        hide_env_values = true
    )]
    pub api_token: Option<ApiTokens>,

    /// Longest a client may take to send a request's headers, in seconds
    /// from their first byte; a slower one is disconnected without an
    /// answer (it holds a connection, as slow-header attacks do).
    #[arg(long, env = "ALLOCATION_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    pub header_read_timeout: u64,

    /// How long a connection may wait for its next request (or, just
    /// opened, its first), in seconds, before it is closed. Above the idle
    /// timeout of the clients' pools, they close idle connections first,
    /// and no request races the service's close.
    #[arg(long, env = "ALLOCATION_KEEP_ALIVE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    pub keep_alive_timeout: u64,

    /// Most client connections served at once; more wait, unanswered, in
    /// the listen backlog until one closes. Each takes a file descriptor:
    /// keep it well below `ulimit -n` (often 1024), minus the database
    /// pool and some 50 for the rest.
    #[arg(long, env = "ALLOCATION_MAX_CONNECTIONS", default_value_t = 512, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000), value_name = "COUNT")]
    pub max_connections: usize,
}

impl HttpArgs {
    pub fn settings(&self) -> HttpSettings {
        HttpSettings {
            request_timeout: Duration::from_secs(self.request_timeout),
            api_tokens: self.api_token.clone(),
        }
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout),
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub messaging: MessagingArgs,

    /// Address and port of the probes and metrics (/healthz, /readyz,
    /// /metrics): 127.0.0.1:5006 for `consume`, 127.0.0.1:5007 for `relay`
    /// unless set (port 0 picks a free one).
    #[arg(long, env = "ALLOCATION_BIND", value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print the report as JSON (on stdout), for scripts and monitoring.
    #[arg(long)]
    pub json: bool,
}

/// How the service exchanges messages with other systems besides its
/// database: Redis for commands in and events out, SMTP for out-of-stock
/// emails. Its `Debug` hides the passwords of the URLs.
#[derive(Clone, Args)]
pub struct MessagingArgs {
    /// Redis for messages: consume `allocate` and `change_batch_quantity`,
    /// publish `line_allocated`. Without it, messages are only logged.
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "redis://HOST:PORT",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// SMTP server for out-of-stock emails, e.g. `smtp://127.0.0.1:1025`.
    /// Without it, notifications are only logged.
    #[arg(
        long,
        env = "SMTP_URL",
        value_name = "smtp://HOST:PORT",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,

    /// Who receives out-of-stock emails.
    #[arg(long, env = "NOTIFY_EMAIL", default_value = adapters::email::DEFAULT_RECIPIENT, value_name = "ADDRESS")]
    pub notify_email: String,

    /// The sender of out-of-stock emails.
    #[arg(long, env = "NOTIFY_FROM", default_value = adapters::email::DEFAULT_SENDER, value_name = "ADDRESS")]
    pub notify_from: String,

    #[command(flatten)]
    pub streams: StreamArgs,
}

/// Redis Streams, beside the book's pub/sub channels: incoming commands
/// handled once per deployment (not once per instance) and kept while no
/// consumer runs; outgoing messages kept for readers that were away.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Use the book's pub/sub channels only: consume no stream, and add
    /// outgoing messages to no stream.
    #[arg(long, env = "ALLOCATION_NO_STREAMS")]
    pub no_streams: bool,

    /// The consumer group through which every instance reads the incoming
    /// streams: each entry goes to one instance of the group. Created if
    /// missing, reading from the start of each stream.
    #[arg(
        long,
        env = "ALLOCATION_CONSUMER_GROUP",
        default_value = "allocation",
        value_name = "NAME"
    )]
    pub consumer_group: String,

    /// This process's name in the group; unique per running process.
    /// Default: the host name and process id.
    #[arg(long, env = "ALLOCATION_CONSUMER_NAME", value_name = "NAME")]
    pub consumer_name: Option<String>,

    /// How long an entry may stay unacknowledged (its consumer died, or
    /// keeps failing on it) before another consumer takes it over. Longer
    /// than a command can take.
    #[arg(long, env = "ALLOCATION_CLAIM_IDLE", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), value_name = "SECONDS")]
    pub claim_idle: u64,

    /// Deliveries of an entry after which it goes to the dead-letter stream
    /// (`<stream>.dead_letter`) with its reason, instead of being handled
    /// again.
    #[arg(long, env = "ALLOCATION_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000), value_name = "COUNT")]
    pub max_deliveries: u64,
}

impl StreamArgs {
    /// The consumer's settings, or `None` with --no-streams.
    pub fn settings(&self) -> Option<adapters::redis::StreamSettings> {
        if self.no_streams {
            return None;
        }
        let consumer = self.consumer_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|host| host.trim().to_owned())
                .filter(|host| !host.is_empty())
                .unwrap_or_else(|| "allocation".to_owned());
            format!("{host}-{}", std::process::id())
        });
        let mut settings = adapters::redis::StreamSettings::new(&self.consumer_group, consumer);
        settings.claim_idle = Duration::from_secs(self.claim_idle);
        settings.max_deliveries = self.max_deliveries;
        Some(settings)
    }
}

impl fmt::Debug for MessagingArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |url: &Option<String>| url.as_deref().map(redact_url);
        f.debug_struct("MessagingArgs")
            .field("redis_url", &redacted(&self.redis_url))
            .field("smtp_url", &redacted(&self.smtp_url))
            .field("notify_email", &self.notify_email)
            .field("notify_from", &self.notify_from)
            .field("streams", &self.streams)
            .finish()
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Where products and allocations are stored: `sqlite://PATH` (the file
    /// is created if missing), `postgres://USER:PASSWORD@HOST:PORT/DB`, or
    /// `memory://` (nothing kept after exit). `sqlite:PATH`,
    /// `sqlite::memory:` and `postgresql://` work too.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://allocation.db",
        value_name = "URL",
        value_parser = SecretValueParser::<StoreUrl>::new(),
        hide_env_values = true
    )]
    pub database_url: StoreUrl,

    /// Most database connections the service opens at once.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// How long a request waits for a free database connection, in seconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600), value_name = "SECONDS")]
    pub database_acquire_timeout: u64,
}

impl DatabaseArgs {
    /// The SQL store's connection pool, as configured.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.database_max_connections,
            acquire_timeout: Duration::from_secs(self.database_acquire_timeout),
        }
    }
}

/// What `--database-url` names: a SQL database, read by the SQL adapter's
/// parser (the one place that knows which URLs it can open), or
/// `memory://`, the in-process store that only this binary offers. Its
/// `Display` and `Debug` hide the password, so that it can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: nothing kept after exit.
    Memory,
    Sql(DatabaseUrl),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if scheme.is_some_and(|scheme| scheme.eq_ignore_ascii_case("memory")) {
            return Ok(Self::Memory);
        }
        DatabaseUrl::parse(url).map(Self::Sql).map_err(|refused| {
            format!(
                "unsupported database URL {}: expected {SUPPORTED_FORMS}, \
                 or memory:// (nothing kept after exit)",
                refused.url
            )
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory://"),
            Self::Sql(url) => fmt::Display::fmt(url, f),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a flag's value without echoing it in errors, as clap would: it
/// may be a secret (a password in `--database-url`, an `--api-token`).
#[derive(Debug, Clone, Copy)]
struct SecretValueParser<T>(PhantomData<fn() -> T>);

impl<T> SecretValueParser<T> {
    const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> TypedValueParser for SecretValueParser<T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        _: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let flag = arg.and_then(clap::Arg::get_long).unwrap_or("value");
        let invalid = |message: &str| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid --{flag}: {message}\n"),
            )
        };
        let text = value.to_str().ok_or_else(|| invalid("not valid UTF-8"))?;
        text.parse().map_err(|message: String| invalid(&message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/alloc"),
            "postgres://app:***@db:5432/alloc"
        );
        assert_eq!(
            redact_url("postgres://app@db/alloc"),
            "postgres://app@db/alloc"
        );
        assert_eq!(
            redact_url("sqlite://allocation.db"),
            "sqlite://allocation.db"
        );
        let url: StoreUrl = "postgres://a:b@h/d".parse().expect("supported");
        assert_eq!(
            format!("{url} {url:?}"),
            "postgres://a:***@h/d postgres://a:***@h/d"
        );
    }

    #[test]
    fn memory_and_every_sql_form_parse() {
        for url in ["memory://", "MEMORY://"] {
            assert_eq!(url.parse::<StoreUrl>(), Ok(StoreUrl::Memory), "{url}");
        }
        for url in [
            "sqlite://x.db",
            "sqlite:x.db",
            "sqlite::memory:",
            "postgres://u:pw@h:5432/d",
            "postgresql://h/d",
        ] {
            let parsed = url.parse::<StoreUrl>();
            assert!(
                matches!(&parsed, Ok(StoreUrl::Sql(sql)) if sql.expose() == url),
                "{url}: {parsed:?}"
            );
        }
    }

    #[test]
    fn other_urls_are_refused_naming_every_form_without_the_password() {
        for url in ["mysql://u:pw@h/d", "memory:", "allocation.db", ""] {
            let refused = url.parse::<StoreUrl>().expect_err(url);
            assert!(
                refused.starts_with("unsupported database URL "),
                "{refused}"
            );
            for form in ["sqlite://PATH", "postgres://", "memory://"] {
                assert!(refused.contains(form), "{form} in {refused}");
            }
            assert!(!refused.contains("pw"), "{refused}");
        }
    }

    #[test]
    fn a_refused_database_url_stops_the_command_line() {
        let error = Cli::try_parse_from([
            "allocation",
            "migrate",
            "--database-url",
            "mysql://u:pw@h/d",
        ])
        .expect_err("unsupported")
        .to_string();
        assert!(
            error.starts_with(
                "error: invalid --database-url: unsupported database URL mysql://u:***@h/d"
            ),
            "{error}"
        );
        assert!(!error.contains("pw@"), "{error}");
    }

    #[test]
    fn debug_output_shows_no_password_and_no_token() {
        let cli = Cli::try_parse_from([
            "allocation",
            "serve",
            "--database-url",
            "postgres://app:db-secret@db/alloc",
            "--redis-url",
            "redis://:redis-secret@cache:6379",
            "--smtp-url",
            "smtp://mail:smtp-secret@mail:25",
            "--api-token",
            "token-secret-1,token-secret-2",
        ])
        .expect("valid settings");
        let shown = format!("{cli:?} {cli:#?}");
        for secret in ["db-secret", "redis-secret", "smtp-secret", "token-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redis://:***@cache:6379"), "{shown}");
    }

    #[test]
    fn http_settings_default_to_a_timeout_and_no_authentication() {
        let cli = Cli::try_parse_from(["allocation", "serve"]).expect("defaults");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let settings = args.http.settings();
        assert_eq!(settings.request_timeout, Duration::from_secs(10));
        assert!(settings.api_tokens.is_none());
        assert_eq!(
            args.http.connection_limits(),
            ConnectionLimits {
                max_connections: 512,
                header_read_timeout: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn connection_limits_out_of_range_are_refused() {
        for (flag, bad) in [
            ("--max-connections", "0"),
            ("--max-connections", "many"),
            ("--header-read-timeout", "0"),
            ("--keep-alive-timeout", "3601"),
        ] {
            let error = Cli::try_parse_from(["allocation", "serve", flag, bad])
                .expect_err(bad)
                .to_string();
            assert!(error.starts_with("error: invalid value"), "{error}");
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn a_bad_token_list_is_refused_without_echoing_it() {
        for bad in ["", "good-token,,other", "has space"] {
            let error = Cli::try_parse_from(["allocation", "serve", "--api-token", bad])
                .expect_err(bad)
                .to_string();
            assert!(error.starts_with("error: invalid --api-token"), "{error}");
            if !bad.is_empty() {
                assert!(!error.contains(bad), "{error}");
            }
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
