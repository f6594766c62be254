//! CPU time spent per request, by who spent it: this harness (the client),
//! the service process, and the PostgreSQL backends serving the phase's
//! database. On a small machine shared by all three (and by whatever else
//! runs), throughput swings with the neighbours' load, while CPU per request
//! stays put: it is the steadier answer to "where does the time go".
//!
//! Linux only, from `/proc/<pid>/stat` (utime + stime, in clock ticks of
//! 1/100 s, the USER_HZ of every Linux ABI). The backends are the pids
//! `pg_stat_activity` lists for the phase's database, so a server on another
//! machine (no such pids here) or SQLite (the work happens inside the
//! client or the service, and is counted there) gives no database figure.
//! Work the server does for everyone (WAL writer, checkpointer) is not
//! counted.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection};

const TICK: Duration = Duration::from_millis(10);

/// CPU time used so far by the process `pid` (all its threads), if this
/// is Linux and the process exists.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// CPU time used so far by all of `pids` together; `None` when there are
/// none, or one cannot be read (a sum that silently lost a process would
/// make the instances look cheaper than they are).
fn processes_cpu(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| process_cpu(pid)).sum()
}

/// The most memory the process `pid` ever had resident (`VmHWM`, its peak
/// RSS), in bytes, if this is Linux and the process exists.
pub fn process_peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_peak_rss(&status)
}

/// `VmHWM:   12345 kB` from a `/proc/<pid>/status` text.
fn parse_peak_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid (4), ... utime is field 14, stime 15.
    let utime: u32 = fields.nth(11)?.parse().ok()?;
    let stime: u32 = fields.next()?.parse().ok()?;
    Some(TICK * utime + TICK * stime)
}

/// Where to look for the CPU time of one phase.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The service processes (one per instance), for an HTTP phase the
    /// harness started.
    pub service_pids: Vec<u32>,
    /// The phase's PostgreSQL database, whose backends are counted.
    pub database_name: Option<String>,
}

/// CPU time used so far, per source.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    client: Option<Duration>,
    service: Option<Duration>,
    backends: Option<HashMap<u32, Duration>>,
}

/// Takes samples; holds a connection to list a database's backends.
#[derive(Debug)]
pub struct Probe {
    admin: Option<PgConnection>,
}

impl Probe {
    /// `admin_url`: a PostgreSQL connection for `pg_stat_activity`, if the
    /// run is on PostgreSQL. Without one (or off Linux), only the process
    /// figures are taken.
    pub async fn new(admin_url: Option<&str>) -> Self {
        let admin = match admin_url {
            Some(url) if cfg!(target_os = "linux") => PgConnection::connect(url).await.ok(),
            _ => None,
        };
        Self { admin }
    }

    pub async fn sample(&mut self, sources: &Sources) -> Sample {
        let backends = match (&mut self.admin, &sources.database_name) {
            (Some(admin), Some(name)) => {
                let pids: Result<Vec<(i32,)>, _> =
                    sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                        .bind(name)
                        .fetch_all(&mut *admin)
                        .await;
                pids.ok().map(|pids| {
                    pids.into_iter()
                        .filter_map(|(pid,)| {
                            let pid = u32::try_from(pid).ok()?;
                            Some((pid, process_cpu(pid)?))
                        })
                        .collect::<HashMap<_, _>>()
                })
            }
            _ => None,
        };
        Sample {
            client: process_cpu(std::process::id()),
            service: processes_cpu(&sources.service_pids),
            // No backend readable here: the server is elsewhere.
            backends: backends.filter(|b| !b.is_empty()),
        }
    }

    pub async fn close(self) {
        if let Some(admin) = self.admin {
            let _ = admin.close().await;
        }
    }
}

/// CPU time a phase used, summed over its slices.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    client: Option<Duration>,
    service: Option<Duration>,
    database: Option<Duration>,
}

impl Usage {
    /// Adds what was used between `before` and `after`. A backend that
    /// appeared in between counts from zero; one that went away is lost
    /// (pools keep their connections, so this is rare).
    pub fn add(&mut self, before: &Sample, after: &Sample) {
        let delta = |b: Option<Duration>, a: Option<Duration>| Some(a?.saturating_sub(b?));
        add_to(&mut self.client, delta(before.client, after.client));
        add_to(&mut self.service, delta(before.service, after.service));
        if let Some(after_backends) = &after.backends {
            let used = after_backends
                .iter()
                .map(|(pid, now)| {
                    let then = before
                        .backends
                        .as_ref()
                        .and_then(|b| b.get(pid))
                        .copied()
                        .unwrap_or_default();
                    now.saturating_sub(then)
                })
                .sum();
            add_to(&mut self.database, Some(used));
        }
    }

    /// Microseconds of CPU per request.
    pub fn per_request(&self, requests: u64) -> CpuPerRequest {
        let per = |d: Option<Duration>| {
            d.filter(|_| requests > 0)
                .map(|d| d.as_secs_f64() * 1e6 / requests as f64)
        };
        let total = [self.client, self.service, self.database]
            .into_iter()
            .flatten()
            .reduce(|a, b| a + b);
        CpuPerRequest {
            client_us: per(self.client),
            service_us: per(self.service),
            database_us: per(self.database),
            total_us: per(total),
        }
    }
}

fn add_to(total: &mut Option<Duration>, more: Option<Duration>) {
    if let Some(more) = more {
        *total = Some(total.unwrap_or_default() + more);
    }
}

/// CPU microseconds per request, by who spent them (`None`: not measured).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuPerRequest {
    /// This harness: the HTTP client, or the raw phase's sqlx client (and,
    /// on SQLite, the database engine itself).
    pub client_us: Option<f64>,
    /// The service process (on SQLite, including the database engine).
    pub service_us: Option<f64>,
    /// The PostgreSQL backends of the phase's database.
    pub database_us: Option<f64>,
    pub total_us: Option<f64>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn peak_rss_is_read_from_vm_hwm() {
        let status =
            "Name:\tallocation\nVmPeak:\t  900000 kB\nVmHWM:\t   21504 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(parse_peak_rss(status), Some(21504 * 1024));
        assert_eq!(parse_peak_rss("Name:\tx\n"), None);
    }
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        let line = "11078 (cat (x) y) R 11076 11076 7387 0 -1 4194304 99 0 0 0 250 40 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(2900)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu(std::process::id()).is_some());
        }
    }

    #[test]
    fn service_cpu_is_summed_over_the_instances_or_not_given() {
        assert_eq!(processes_cpu(&[]), None);
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            let once = process_cpu(me).expect("this process is readable");
            let twice = processes_cpu(&[me, me]).expect("readable");
            assert!(twice >= once * 2);
            // pid 0 has no /proc entry: the sum is not given rather than short.
            assert_eq!(processes_cpu(&[me, 0]), None);
        }
    }

    #[test]
    fn usage_adds_deltas_and_counts_new_backends_from_zero() {
        let ms = Duration::from_millis;
        let before = Sample {
            client: Some(ms(100)),
            service: None,
            backends: Some(HashMap::from([(1, ms(50))])),
        };
        let after = Sample {
            client: Some(ms(300)),
            service: None,
            backends: Some(HashMap::from([(1, ms(150)), (2, ms(20))])),
        };
        let mut usage = Usage::default();
        usage.add(&before, &after);
        let cpu = usage.per_request(100);
        assert_eq!(cpu.client_us, Some(2000.0));
        assert_eq!(cpu.service_us, None);
        assert_eq!(cpu.database_us, Some(1200.0));
        assert_eq!(cpu.total_us, Some(3200.0));
    }
}
