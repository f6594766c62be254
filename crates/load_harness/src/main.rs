//! `load`: the load harness (issue 3, "Performance").
//!
//! Measures `POST /allocate` on the service against the same allocation
//! written by hand with sqlx, in one run, on the same database server, and
//! prints requests/s, p50/p99 latency, failures and the ratio service/raw.
//!
//! This file holds the order of the run (set up, warm up, measure in
//! alternating slices, check, report) and the clean-up that runs whatever
//! happens: the service is killed and every database the run created is
//! dropped, on success, on error, on a panic and on Ctrl-C.
//!
//! - `args`: the command line;
//! - `workload`: the products, batches and order lines, and the load driver;
//! - `http`: the service side (`/add_batch`, `/allocate`, loopback check);
//! - `raw`: the hand-written SQL transactions;
//! - `service`: starting and stopping the `allocation` binary;
//! - `database`: fresh databases, migrations, seeding, final counts;
//! - `stats`, `cpu`, `report`, `plot`: the figures and how they are shown;
//! - `history_plot`: `--history-plot`, a chart of another benchmark's figures.

mod args;
mod cpu;
mod database;
mod history_plot;
mod http;
mod plot;
mod raw;
mod report;
mod service;
mod shapes;
mod stats;
mod streams;
mod workload;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use futures::FutureExt;

use crate::args::{Args, instance_counts, instance_log};
use crate::database::{Backend, Database, Databases};
use crate::http::HttpTarget;
use crate::raw::RawTarget;
use crate::report::{Consistency, Level, RawResult, Report, ServiceMeasure, Settings};
use crate::service::{ServiceProcess, ServiceSettings};
use crate::stats::Recorder;
use crate::workload::{BATCHES_PER_SKU, Limit, Phase, Target, Workload};

/// What has to be undone at the end, whatever happens.
#[derive(Debug, Default)]
struct Resources {
    services: Vec<ServiceProcess>,
    databases: Option<Databases>,
    raw_targets: Vec<Arc<Phase>>,
}

impl Resources {
    async fn clean_up(&mut self) {
        for service in self.services.drain(..) {
            service.stop().await;
        }
        for phase in self.raw_targets.drain(..) {
            if let Target::Raw(target) = &phase.target {
                target.close().await;
            }
        }
        if let Some(mut databases) = self.databases.take() {
            databases.drop_all().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut resources = Resources::default();
    let outcome = {
        let run = AssertUnwindSafe(run(&args, &mut resources)).catch_unwind();
        tokio::select! {
            finished = run => finished.unwrap_or_else(|_| Err(anyhow!("the harness panicked"))),
            () = allocation::shutdown_signal() => Err(anyhow!("interrupted")),
        }
    };
    resources.clean_up().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, resources: &mut Resources) -> anyhow::Result<()> {
    if let Some(path) = &args.history_plot {
        plot::register_font(args.plot_font.as_deref())?;
        let charts = history_plot::charts(history_plot::read(&args.criterion_dir)?);
        let title = "Allocating through the message bus against a SKU's history (cargo bench)";
        plot::draw_charts(path, title, &charts)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    if args.raw.is_empty() {
        bail!("--raw needs at least one variant");
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build of the harness; measure with `cargo run --release -p load_harness`"
        );
    }
    let instance_counts = instance_counts(&args.instances);
    if args.url.is_some() && instance_counts != [1] {
        bail!(
            "--instances needs the harness to start the service; with --url it loads the one instance given"
        );
    }
    // Fail fast, before creating anything, when the binary is missing, the
    // target is not local, or the plot could not be written.
    if args.plot.is_some() {
        plot::register_font(args.plot_font.as_deref())?;
    }
    let binary = match &args.url {
        Some(_) => None,
        None => Some(service::find_binary(args.binary.as_deref())?),
    };
    if let (Some(binary), None) = (&binary, &args.binary) {
        service::warn_if_stale(binary);
    }
    let external = match &args.url {
        Some(url) => Some(http::ensure_loopback(url).await?),
        None => None,
    };
    let tag = run_tag();
    let databases = resources
        .databases
        .insert(Databases::open(&args.database_url, &tag).await?);
    let backend = databases.backend;
    if backend == Backend::Sqlite && instance_counts.iter().any(|&count| count > 1) {
        bail!(
            "--instances above 1 needs PostgreSQL: SQLite serves one instance (one writer, \
             and the service's locks live in its process); pass --database-url postgres://..."
        );
    }
    let workload = Arc::new(Workload::new(tag.clone(), args.skus));
    if !args.shapes.is_empty() {
        let Some(binary) = &binary else {
            bail!("--shapes needs the harness to start the service");
        };
        return shapes::run(args, resources, binary, &workload).await;
    }
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);

    // The service: for each instance count, a fresh database with that many
    // processes on it (or the one service given by --url).
    let mut service_phases: Vec<(u32, Option<Database>, Arc<Phase>)> = Vec::new();
    for &count in &instance_counts {
        let (http, database, pids) = match (&external, &binary) {
            (Some(base), _) => (
                HttpTarget::new(vec![base.clone()], max_concurrency as usize)?,
                None,
                Vec::new(),
            ),
            (None, Some(binary)) => {
                let label = match count {
                    1 => "service".to_owned(),
                    _ => format!("service{count}"),
                };
                let database = databases.create(&label).await?;
                let redis_url = match &args.redis_url {
                    Some(base) => {
                        let url = streams::url_for(base, count)?;
                        streams::clear(&url).await?;
                        Some(url)
                    }
                    None => None,
                };
                let settings = ServiceSettings {
                    binary: binary.clone(),
                    max_connections: args.max_connections,
                    log_level: args.service_log_level.clone(),
                    log_file: None,
                    worker_threads: args.service_worker_threads,
                    redis_url,
                };
                let processes = match count {
                    1 => String::new(),
                    _ => format!("{count} x "),
                };
                eprintln!(
                    "starting {processes}{} on a fresh {} database",
                    binary.display(),
                    backend.name()
                );
                let mut bases = Vec::new();
                let mut pids = Vec::new();
                // One after the other: the first migrates the schema, the
                // others find it done.
                for instance in 0..count {
                    let settings = ServiceSettings {
                        log_file: args
                            .service_log
                            .as_deref()
                            .map(|path| instance_log(path, &instance_counts, count, instance)),
                        ..settings.clone()
                    };
                    let process = ServiceProcess::start(&settings, &database.url).await?;
                    bases.push(
                        reqwest::Url::parse(&format!("http://{}/", process.address))
                            .context("the service reported an invalid address")?,
                    );
                    pids.extend(process.pid());
                    resources.services.push(process);
                }
                let http = HttpTarget::new(bases, max_concurrency as usize)?;
                (http, Some(database), pids)
            }
            (None, None) => bail!("neither --url nor a service binary"),
        };
        if !http.is_alive().await {
            bail!(
                "the service at {} does not answer GET /healthz",
                http.bases()
                    .iter()
                    .map(reqwest::Url::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        eprintln!(
            "creating {} batches of {} products through POST /add_batch",
            args.skus as usize * BATCHES_PER_SKU,
            args.skus
        );
        http.add_batches(workload.batches()).await?;
        let sources = cpu::Sources {
            service_pids: pids,
            database_name: database.as_ref().and_then(|d| d.name.clone()),
        };
        let phase = Arc::new(Phase::new(
            report::service_label(count),
            Target::Http(http),
            sources,
        ));
        service_phases.push((count, database, phase));
    }

    // Each raw variant: its own fresh database, same schema, same batches.
    let mut raw_databases = Vec::new();
    for &variant in &args.raw {
        let database = databases.create(variant.slug()).await?;
        database::migrate(&database).await?;
        database::seed(&database, &workload.batches()).await?;
        let target = RawTarget::connect(variant, backend, &database, args.max_connections).await?;
        let sources = cpu::Sources {
            service_pids: Vec::new(),
            database_name: database.name.clone(),
        };
        let phase = Arc::new(Phase::new(variant.label(), Target::Raw(target), sources));
        resources.raw_targets.push(phase.clone());
        raw_databases.push((variant, database, phase));
    }

    let limit = |rounds: u32, round: u32| match args.duration {
        Some(seconds) => Limit::Duration(Duration::from_secs_f64(seconds / f64::from(rounds))),
        None => {
            // The remainder goes to the last slice.
            let share = args.requests / u64::from(rounds);
            let extra = if round + 1 == rounds {
                args.requests % u64::from(rounds)
            } else {
                0
            };
            Limit::Requests(share + extra)
        }
    };

    let mut phases: Vec<Arc<Phase>> = service_phases
        .iter()
        .map(|(_, _, phase)| phase.clone())
        .collect();
    phases.extend(raw_databases.iter().map(|(_, _, phase)| phase.clone()));
    let mut probe = cpu::Probe::new(databases.admin_url()).await;
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        if args.warmup > 0 {
            for phase in &phases {
                eprintln!("c={concurrency:<4} warm-up  {}", phase.name);
                workload::drive(phase, &workload, concurrency, Limit::Requests(args.warmup))
                    .await?;
                check_service(resources)?;
            }
        }
        let mut recorders: Vec<Recorder> = phases.iter().map(|_| Recorder::default()).collect();
        let mut usages: Vec<cpu::Usage> = phases.iter().map(|_| cpu::Usage::default()).collect();
        let mut conflict_retries: Vec<Option<u64>> = phases.iter().map(|_| Some(0)).collect();
        for round in 0..args.rounds {
            // Rotate the order each round: nobody always goes first.
            let count = phases.len();
            for offset in 0..count {
                let index = (offset + round as usize) % count;
                let phase = &phases[index];
                eprintln!(
                    "c={concurrency:<4} slice {}/{} {}",
                    round + 1,
                    args.rounds,
                    phase.name
                );
                // Scraped outside the CPU samples: not part of the load.
                let retries_before = scrape_conflict_retries(phase).await;
                let before = probe.sample(&phase.cpu_sources).await;
                let recorded =
                    workload::drive(phase, &workload, concurrency, limit(args.rounds, round))
                        .await?;
                let after = probe.sample(&phase.cpu_sources).await;
                let retries_after = scrape_conflict_retries(phase).await;
                usages[index].add(&before, &after);
                conflict_retries[index] =
                    match (conflict_retries[index], retries_before, retries_after) {
                        (Some(total), Some(before), Some(after)) => {
                            Some(total + after.saturating_sub(before))
                        }
                        _ => None,
                    };
                recorders[index].merge(recorded);
                check_service(resources)?;
            }
        }
        let mut summaries = recorders
            .into_iter()
            .zip(&usages)
            .map(|(recorder, usage)| recorder.summary_with_cpu(usage));
        let service = service_phases
            .iter()
            .zip(summaries.by_ref())
            .zip(&conflict_retries)
            .map(|(((count, _, _), summary), &retries)| ServiceMeasure {
                instances: *count,
                summary,
                conflict_retries: retries,
            })
            .collect();
        let raw = raw_databases
            .iter()
            .zip(summaries)
            .map(|((variant, _, phase), summary)| RawResult {
                variant: *variant,
                summary,
                conflicts: match &phase.target {
                    Target::Raw(target) => target.conflicts.swap(0, Ordering::Relaxed),
                    Target::Http(_) => 0,
                },
            })
            .collect();
        let level = Level::new(concurrency, service, raw);
        let failures = level.failures();
        if failures > 0 {
            eprintln!("c={concurrency:<4} warning: {failures} requests did not allocate");
        }
        if let Some(ratio) = level.ratio {
            eprintln!("c={concurrency:<4} service/raw = {ratio:.2}");
        }
        if let Some(extra) = level.extra_cpu_us {
            eprintln!(
                "c={concurrency:<4} the service path spends {extra:.0} µs more CPU per request \
                 than the raw transaction"
            );
        }
        levels.push(level);
    }

    probe.close().await;

    // Each database must hold exactly what its phase answered.
    let mut consistency = Vec::new();
    // (name, database, phase, whether every message is still in the outbox)
    let mut checked: Vec<(String, &Database, &Arc<Phase>, bool)> = Vec::new();
    for (count, database, phase) in &service_phases {
        if let Some(database) = database {
            checked.push((report::service_name(*count), database, phase, false));
        }
    }
    for (variant, database, phase) in &raw_databases {
        checked.push((variant.label().to_owned(), database, phase, true));
    }
    for (name, database, phase, unrelayed) in checked {
        let contents = database::contents(database).await?;
        consistency.push(Consistency::judge(
            name,
            phase.allocated_total.load(Ordering::Relaxed),
            phase.allocated_qty_total.load(Ordering::Relaxed),
            contents,
            unrelayed,
        ));
    }

    let report = Report {
        backend,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        finished_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        settings: Settings {
            started_service: binary.is_some(),
            service_binary: binary.as_ref().map(|b| b.display().to_string()),
            service_url: service_phases
                .first()
                .map(|(_, _, phase)| service_phase_url(phase))
                .unwrap_or_default(),
            service_log_level: binary.as_ref().map(|_| args.service_log_level.clone()),
            requests_per_phase: args.duration.is_none().then_some(args.requests),
            duration_per_phase_s: args.duration,
            warmup_requests: args.warmup,
            rounds: args.rounds,
            skus: args.skus,
            batches_per_sku: BATCHES_PER_SKU,
            max_connections: args.max_connections,
            instances: instance_counts.clone(),
            raw_variants: args.raw.clone(),
            debug_build: cfg!(debug_assertions),
        },
        levels,
        consistency,
        service_peak_rss_bytes: resources
            .services
            .iter()
            .filter_map(ServiceProcess::pid)
            .filter_map(cpu::process_peak_rss)
            .max(),
    };
    report.print();
    if let Some(base) = &args.redis_url {
        consume_streams(args, base, &workload, &report.levels).await?;
    }
    println!(
        "\n{} cores shared by the harness, the service and the database server: \
         the figures compare code paths on one machine, not capacity.",
        report.cpus
    );
    if let Some(path) = &args.output {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    if report.consistency.iter().any(|check| !check.ok) {
        bail!("a database does not hold exactly the allocations that were answered");
    }
    Ok(())
}

/// The Redis Streams phase, after the HTTP phases (whose databases the
/// consistency check has read by then): --requests entries per instance
/// count, and their rate against the same instances' HTTP rate.
async fn consume_streams(
    args: &Args,
    base: &str,
    workload: &Workload,
    levels: &[report::Level],
) -> anyhow::Result<()> {
    println!(
        "\nRedis Streams: {} `allocate` entries per instance count",
        args.requests
    );
    for (index, &count) in instance_counts(&args.instances).iter().enumerate() {
        let url = streams::url_for(base, count)?;
        // Lines no HTTP phase used.
        let first = (1 << 40) + u64::from(count) * args.requests;
        let took = streams::consume(&url, workload, first, args.requests).await?;
        let rate = args.requests as f64 / took.as_secs_f64();
        let ratios: Vec<String> = levels
            .iter()
            .filter_map(|level| {
                let http = level.service.get(index)?.summary.per_second;
                Some(format!(
                    "{:.2} of c={}'s {http:.0}/s",
                    rate / http,
                    level.concurrency
                ))
            })
            .collect();
        println!(
            "  {}: {rate:.0} entries/s ({:.2} s); {}",
            report::service_name(count),
            took.as_secs_f64(),
            ratios.join(", ")
        );
    }
    Ok(())
}

fn service_phase_url(phase: &Phase) -> String {
    match &phase.target {
        Target::Http(http) => http.base().to_string(),
        Target::Raw(_) => String::new(),
    }
}

/// Fails when a service process the harness started has died.
fn check_service(resources: &mut Resources) -> anyhow::Result<()> {
    if resources.services.iter_mut().any(|s| !s.is_running()) {
        bail!("the service exited during the run (see --service-log)");
    }
    Ok(())
}

/// The conflicts an HTTP phase's instances have retried so far.
async fn scrape_conflict_retries(phase: &Phase) -> Option<u64> {
    match &phase.target {
        Target::Http(http) => http.conflict_retries().await,
        Target::Raw(_) => None,
    }
}

/// A short id for this run's database names, SKUs and order ids.
fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("{:x}", mixed & 0xffff_ffff_ffff)
}
