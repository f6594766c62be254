//! The harness's command line: its flags, and how the `--instances` and
//! `--service-log` values turn into the processes and files of a run.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::raw::RawVariant;

/// Load harness for the allocation service: drives `POST /allocate` at a
/// fixed concurrency, runs the minimal equivalent SQL transaction directly
/// with sqlx on the same database server at the same concurrency, and
/// compares them (requests/s, p50 and p99 latency, non-2xx answers, and the
/// ratio service/raw).
///
/// By default it starts the service itself (the `allocation` binary next to
/// this one, so build it first: `cargo build --release -p allocation`) on a
/// fresh database, and gives every raw phase a fresh database of its own
/// with the same schema (the service's migrations) and the same batches, so
/// that all phases start from equal states. Phases are measured in
/// alternating slices, after a warm-up. Every database the run creates is
/// dropped at the end, and the service is stopped, even on error or Ctrl-C.
///
/// Example:
///   cargo build --release -p allocation
///   cargo run --release -p load_harness -- --database-url postgres://root@127.0.0.1:5432/test --concurrency 8,32 --requests 20000
#[derive(Debug, Parser)]
#[command(name = "load", version, verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("drawing").args(["plot", "history_plot"]).multiple(true)))]
pub struct Args {
    /// Database server to run on. `postgres://USER[:PASSWORD]@HOST:PORT/DB`:
    /// the harness connects to DB only to create (and at the end drop) fresh
    /// databases named `load_harness_<run>_<phase>` on that server, so the
    /// user needs CREATEDB. `sqlite:`: fresh files in a temporary directory.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Concurrent clients (HTTP) and concurrent transactions (raw SQL): one
    /// value or a comma-separated list, each measured in turn, e.g. `8,32`.
    #[arg(long, value_delimiter = ',', default_value = "8", value_name = "N[,N...]",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: Vec<u32>,

    /// Measured requests per phase and concurrency level (warm-up not
    /// included). Ignored when --duration is given.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,

    /// Measure each phase for this many seconds per concurrency level
    /// instead of a number of requests.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub duration: Option<f64>,

    /// Requests per phase sent before measuring each concurrency level:
    /// opens the connections, fills caches and prepared statements.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub warmup: u64,

    /// Each phase's measurement is split into this many slices, run
    /// alternately (service, raw, raw, service, ...), so that drift in the
    /// machine's state (other load, the database's background work, table
    /// growth) weighs on both alike.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Products the lines are spread over (uniformly); each has one
    /// warehouse batch and two shipments, with stock that never runs out.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub skus: u32,

    /// Service instances sharing one database (PostgreSQL only), one
    /// service phase per value, e.g. `1,2,3`: each value gets a fresh
    /// database of its own and that many `allocation serve` processes on
    /// it, and the clients send each request to the next instance in turn.
    /// Shows how throughput scales out, and the version conflicts the
    /// instances cause each other (from their `/metrics`).
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "N[,N...]",
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub instances: Vec<u32>,

    /// Database connections: the raw phases' pool size, and the service's
    /// `--database-max-connections` when the harness starts it (the
    /// service's own default is 10), per instance.
    #[arg(long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_connections: u32,

    /// The service binary to start. Default: `allocation` in the directory
    /// of this executable (target/<profile>/).
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub binary: Option<PathBuf>,

    /// Load a service that is already running instead of starting one:
    /// `http://HOST:PORT`, loopback addresses only. Its batches are created
    /// under new SKUs; its database and pool size are whatever it was
    /// started with, so compare with care.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// `RUST_LOG` for the service the harness starts. `info` is the
    /// service's default (one log line per allocation); try `warn` to see
    /// what logging costs.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub service_log_level: String,

    /// Write the started service's log to this file (default: discarded).
    #[arg(long, value_name = "FILE")]
    pub service_log: Option<PathBuf>,

    /// Raw SQL variants to measure, comma-separated: `minimal` (the fewest
    /// round trips, native driver, doing what the service's allocation
    /// does: the baseline of the ratio), `book` (the same without holds,
    /// backorders and stock levels, the book's allocation alone),
    /// `service-sql` (the service's own statements, native driver),
    /// `service-sql-any` (the same through sqlx's Any driver, as the
    /// service runs them). The last two show where the service's time goes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "minimal",
        value_name = "VARIANT[,...]"
    )]
    pub raw: Vec<RawVariant>,

    /// Compare shapes of request on one service instead of the service
    /// with raw SQL, e.g. `allocate,order3,hold-convert`: `allocate` (one
    /// line, the book's route), `order3` (a whole order of three lines, of
    /// three products), `hold-convert` (a checkout hold of one line, then
    /// the order converting it), `healthz` (`GET /healthz`: the HTTP hop
    /// alone, no database). Reports each one's requests and lines per
    /// second, its ratio to the first and its CPU time per request,
    /// measured in alternating slices.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SHAPE[,...]",
        conflicts_with = "url"
    )]
    pub shapes: Vec<crate::http::Shape>,

    /// Worker threads of each service the harness starts
    /// (`TOKIO_WORKER_THREADS`). Default: tokio's, one per core. With
    /// several instances on few cores, fewer threads per instance means
    /// fewer threads contending for the cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub service_worker_threads: Option<u32>,

    /// Also measure consuming Redis Streams: the services start with Redis
    /// (database 10 + their instance count on this server, flushed first),
    /// and after the HTTP phases the harness adds --requests `allocate`
    /// entries to each phase's stream and times until every one is
    /// acknowledged: entries/s, and its ratio to the same instances'
    /// requests/s at each concurrency.
    #[arg(long, value_name = "redis://HOST:PORT", conflicts_with = "url")]
    pub redis_url: Option<String>,

    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also draw throughput and p99 latency against concurrency, one line
    /// per phase, as a PNG image in this file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,

    /// The TrueType font for the plot's text. Default: the first of a few
    /// usual paths (DejaVu Sans, Liberation Sans) that exists.
    #[arg(long, value_name = "FILE.ttf", requires = "drawing")]
    pub plot_font: Option<PathBuf>,

    /// Instead of a load run: draw the allocation-history benchmark's
    /// figures (latency against a SKU's prior allocations, per backend) as
    /// a PNG image in this file. Run `cargo bench -p allocation --bench
    /// allocation_history` first.
    #[arg(long, value_name = "FILE.png")]
    pub history_plot: Option<PathBuf>,

    /// Where `--history-plot` finds criterion's results.
    #[arg(long, value_name = "DIR", default_value = "target/criterion")]
    pub criterion_dir: PathBuf,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 => Ok(seconds),
        _ => Err(format!(
            "expected seconds between 0 and 86400, got {text:?}"
        )),
    }
}

/// `--instances` as measured: each count once, fewest first (the
/// reference the others are compared with).
pub fn instance_counts(given: &[u32]) -> Vec<u32> {
    let mut counts = given.to_vec();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Where instance `instance` (from 0) of the phase with `count` instances
/// writes its log: `--service-log` itself when the run starts a single
/// process, else that path with `.<count>x<instance>` appended, one file
/// per process.
pub fn instance_log(path: &Path, counts: &[u32], count: u32, instance: u32) -> PathBuf {
    if counts == [1] {
        return path.to_owned();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{count}x{instance}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn concurrency_takes_a_list() {
        let args = Args::try_parse_from([
            "load",
            "--concurrency",
            "8,32",
            "--raw",
            "minimal,service-sql-any",
        ])
        .expect("parses");
        assert_eq!(args.concurrency, vec![8, 32]);
        assert_eq!(
            args.raw,
            vec![RawVariant::Minimal, RawVariant::ServiceSqlAny]
        );
        assert!(Args::try_parse_from(["load", "--concurrency", "0"]).is_err());
        assert!(
            Args::try_parse_from(["load", "--url", "http://127.0.0.1:1", "--binary", "x"]).is_err()
        );
        assert!(Args::try_parse_from(["load", "--duration", "-1"]).is_err());
    }

    #[test]
    fn instances_take_a_list_measured_fewest_first_once_each() {
        let default = Args::try_parse_from(["load"]).expect("parses");
        assert_eq!(instance_counts(&default.instances), vec![1]);
        let args = Args::try_parse_from(["load", "--instances", "3,1,2,3"]).expect("parses");
        assert_eq!(instance_counts(&args.instances), vec![1, 2, 3]);
        assert!(Args::try_parse_from(["load", "--instances", "0"]).is_err());
        assert!(Args::try_parse_from(["load", "--instances", "17"]).is_err());
        assert!(Args::try_parse_from(["load", "--plot-font", "f.ttf"]).is_err());
        let history = ["load", "--history-plot", "h.png", "--plot-font", "f.ttf"];
        assert!(Args::try_parse_from(history).is_ok());
    }

    #[test]
    fn each_instance_logs_to_a_file_of_its_own() {
        let path = Path::new("/tmp/service.log");
        assert_eq!(instance_log(path, &[1], 1, 0), path);
        assert_eq!(
            instance_log(path, &[1, 2], 2, 1),
            PathBuf::from("/tmp/service.log.2x1")
        );
        assert_eq!(
            instance_log(path, &[1, 2], 1, 0),
            PathBuf::from("/tmp/service.log.1x0")
        );
    }
}
