//! `--shapes`: one service, several shapes of request (a single line, a
//! whole order, a hold then its conversion, a health probe), measured in
//! alternating slices on the same database, each reported with its ratio
//! to the first and its CPU time per request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};

use crate::args::Args;
use crate::cpu;
use crate::database::{self};
use crate::http::HttpTarget;
use crate::report::{Consistency, micros};
use crate::service::{ServiceProcess, ServiceSettings};
use crate::stats::{Recorder, Summary};
use crate::workload::{self, Limit, Phase, Target, Workload};
use crate::{Resources, check_service};

/// Lines numbered from here on for each further shape: far apart, so that
/// no two phases send the same order.
const LINES_PER_SHAPE: u64 = 1_000_000_000_000;

pub async fn run(
    args: &Args,
    resources: &mut Resources,
    binary: &Path,
    workload: &Arc<Workload>,
) -> anyhow::Result<()> {
    let databases = resources
        .databases
        .as_mut()
        .context("no database server opened")?;
    let database = databases.create("shapes").await?;
    let mut probe = cpu::Probe::new(databases.admin_url()).await;
    let settings = ServiceSettings {
        binary: binary.to_owned(),
        max_connections: args.max_connections,
        log_level: args.service_log_level.clone(),
        log_file: args.service_log.clone(),
        worker_threads: args.service_worker_threads,
        redis_url: None,
    };
    eprintln!("starting {} on a fresh database", binary.display());
    let process = ServiceProcess::start(&settings, &database.url).await?;
    let base = reqwest::Url::parse(&format!("http://{}/", process.address))
        .context("the service reported an invalid address")?;
    let pids: Vec<u32> = process.pid().into_iter().collect();
    resources.services.push(process);
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let http = HttpTarget::new(vec![base], max_concurrency as usize)?;
    if !http.is_alive().await {
        bail!("the service does not answer GET /healthz");
    }
    http.add_batches(workload.batches()).await?;
    let phases: Vec<Arc<Phase>> = args
        .shapes
        .iter()
        .enumerate()
        .map(|(index, &shape)| {
            let sources = cpu::Sources {
                service_pids: pids.clone(),
                database_name: database.name.clone(),
            };
            let target = Target::Http(http.with_shape(shape));
            let phase = Phase::new(shape.label(), target, sources);
            Arc::new(phase.numbered_from(index as u64 * LINES_PER_SHAPE))
        })
        .collect();

    for &concurrency in &args.concurrency {
        for phase in &phases {
            eprintln!("c={concurrency:<4} warm-up  {}", phase.name);
            workload::drive(phase, workload, concurrency, Limit::Requests(args.warmup)).await?;
            check_service(resources)?;
        }
        let mut recorders: Vec<Recorder> = phases.iter().map(|_| Recorder::default()).collect();
        let mut usages: Vec<cpu::Usage> = phases.iter().map(|_| cpu::Usage::default()).collect();
        let share = args.requests / u64::from(args.rounds);
        for round in 0..args.rounds {
            for offset in 0..phases.len() {
                let index = (offset + round as usize) % phases.len();
                let phase = &phases[index];
                eprintln!(
                    "c={concurrency:<4} slice {}/{} {}",
                    round + 1,
                    args.rounds,
                    phase.name
                );
                let before = probe.sample(&phase.cpu_sources).await;
                let recorded =
                    workload::drive(phase, workload, concurrency, Limit::Requests(share)).await?;
                let after = probe.sample(&phase.cpu_sources).await;
                usages[index].add(&before, &after);
                recorders[index].merge(recorded);
                check_service(resources)?;
            }
        }
        let summaries: Vec<Summary> = recorders
            .into_iter()
            .zip(&usages)
            .map(|(recorder, usage)| recorder.summary_with_cpu(usage))
            .collect();
        print_level(concurrency, &args.shapes, &summaries);
    }
    probe.close().await;

    let contents = database::contents(&database).await?;
    let lines: u64 = phases
        .iter()
        .map(|p| p.allocated_total.load(Ordering::Relaxed))
        .sum();
    let qty: u64 = phases
        .iter()
        .map(|p| p.allocated_qty_total.load(Ordering::Relaxed))
        .sum();
    let check = Consistency::judge("service".into(), lines, qty, contents, false);
    println!(
        "\ndatabase: {}",
        if check.ok {
            "holds exactly what was answered"
        } else {
            "MISMATCH"
        }
    );
    if !check.ok {
        bail!("the database does not hold exactly the allocations that were answered: {check:?}");
    }
    Ok(())
}

fn print_level(concurrency: u32, shapes: &[crate::http::Shape], summaries: &[Summary]) {
    println!("\nconcurrency {concurrency}");
    println!(
        "{:<20} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7}   CPU µs per request: {:>6} {:>7} {:>6}",
        "shape",
        "requests/s",
        "lines/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "ratio",
        "client",
        "service",
        "db"
    );
    let first = summaries.first().map_or(0.0, |s| s.per_second);
    for (shape, summary) in shapes.iter().zip(summaries) {
        let ratio = if first > 0.0 {
            summary.per_second / first
        } else {
            0.0
        };
        println!(
            "{:<20} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>7.2}                       {:>6} {:>7} {:>6}",
            shape.label(),
            summary.per_second,
            summary.per_second * shape.lines() as f64,
            summary.p50_ms,
            summary.p99_ms,
            summary.non_2xx + summary.failed + summary.not_allocated,
            ratio,
            micros(summary.cpu.client_us),
            micros(summary.cpu.service_us),
            micros(summary.cpu.database_us),
        );
    }
}
