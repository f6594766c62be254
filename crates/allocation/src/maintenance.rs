//! The operators' commands `rebuild-read-model` and `check`: run the
//! store's maintenance on the configured database and print a report, for
//! people or (with `--json`) for scripts.

use std::fmt::{self, Display};
use std::io::Write;
use std::process::ExitCode;

use adapters::sql::SqlStore;
use adapters::sql::maintenance::{ConsistencyReport, Findings, RebuildReport};
use anyhow::Context;
use serde::Serialize;
use tracing::info;

use crate::bootstrap::open_sql_store;
use crate::config::{MaintenanceArgs, StoreUrl};

/// `check`'s exit code when it found differences; a failure to check at
/// all exits 1, as every command's failure does.
pub const EXIT_INCONSISTENT: u8 = 2;

/// The error `check` ends with when it found differences: its report is
/// already printed, and [`exit_code`] maps it to [`EXIT_INCONSISTENT`].
#[derive(Debug, thiserror::Error)]
pub struct Inconsistent {
    pub read_model: u64,
    pub write_model: u64,
}

impl Display for Inconsistent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not consistent:")?;
        if self.read_model > 0 {
            write!(
                f,
                " {} read-model difference(s), which `allocation rebuild-read-model` repairs;",
                self.read_model
            )?;
        }
        if self.write_model > 0 {
            write!(
                f,
                " {} write-model violation(s), which need a person;",
                self.write_model
            )?;
        }
        write!(f, " see the report")
    }
}

/// The process exit code for a command that failed with `error`.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.is::<Inconsistent>() {
        ExitCode::from(EXIT_INCONSISTENT)
    } else {
        ExitCode::FAILURE
    }
}

/// `allocation rebuild-read-model`.
pub async fn rebuild_read_model(args: &MaintenanceArgs) -> anyhow::Result<()> {
    let Some(store) = open_persistent_store(args, "rebuild").await? else {
        return Ok(());
    };
    let report = store
        .rebuild_read_model()
        .await
        .context("cannot rebuild the read model")?;
    if args.json {
        print_json(&report)?;
    } else {
        print(format_args!("{}\n", RebuildSummary(&report)))?;
    }
    Ok(())
}

/// `allocation check`: fails with [`Inconsistent`] when it found
/// differences, after printing them.
pub async fn check(args: &MaintenanceArgs) -> anyhow::Result<()> {
    let Some(store) = open_persistent_store(args, "check").await? else {
        return Ok(());
    };
    // Holds count as they do for the service at this moment.
    let report = store
        .check_consistency(chrono::Utc::now())
        .await
        .context("cannot check the database")?;
    if args.json {
        print_json(&report)?;
    } else {
        print(format_args!("{}", CheckReport(&report)))?;
    }
    if report.is_consistent() {
        Ok(())
    } else {
        Err(Inconsistent {
            read_model: report.read_model_differences(),
            write_model: report.write_model_violations(),
        }
        .into())
    }
}

/// The SQL store to maintain, or `None` on `memory://`: it lives and dies
/// with one process, and a maintenance command would only ever see the
/// empty store it just made.
async fn open_persistent_store(
    args: &MaintenanceArgs,
    what: &str,
) -> anyhow::Result<Option<SqlStore>> {
    match &args.database.database_url {
        StoreUrl::Memory => {
            info!("memory:// keeps nothing between runs; nothing to {what}");
            Ok(None)
        }
        StoreUrl::Sql(url) => Ok(Some(
            open_sql_store(url, args.database.pool_settings()).await?,
        )),
    }
}

fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("cannot render the report")?;
    print(format_args!("{json}\n"))
}

/// Writes to stdout, failing (rather than panicking, as `println!` does)
/// when stdout is gone, e.g. piped into `head`.
fn print(text: fmt::Arguments<'_>) -> anyhow::Result<()> {
    std::io::stdout()
        .lock()
        .write_fmt(text)
        .context("cannot write the report to stdout")
}

struct RebuildSummary<'a>(&'a RebuildReport);

impl Display for RebuildSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RebuildReport {
            products,
            added,
            changed,
            removed,
        } = self.0;
        write!(
            f,
            "read model rebuilt over {products} product(s): {added} row(s) added, \
             {changed} changed, {removed} removed"
        )?;
        if self.0.changes() == 0 {
            write!(f, " (it was already right)")?;
        }
        Ok(())
    }
}

struct CheckReport<'a>(&'a ConsistencyReport);

impl Display for CheckReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.0;
        let totals = &report.totals;
        writeln!(
            f,
            "checked in one snapshot: {} products, {} batches, {} allocated lines, \
             {} read-model rows",
            totals.products, totals.batches, totals.allocations, totals.view_rows
        )?;
        writeln!(f, "read model (allocations_view) against the allocations:")?;
        section(
            f,
            "allocated lines it does not show",
            &report.missing_rows,
            |r| {
                format!(
                    "order {} sku {}: should show batch {}",
                    r.orderid, r.sku, r.batchref
                )
            },
        )?;
        section(f, "rows of no allocated line", &report.extra_rows, |r| {
            format!(
                "order {} sku {}: shows batch {}",
                r.orderid, r.sku, r.batchref
            )
        })?;
        section(
            f,
            "rows showing the wrong batch",
            &report.wrong_batch,
            |r| {
                format!(
                    "order {} sku {}: shows batch {}, allocated on {}",
                    r.orderid, r.sku, r.shown, r.allocated
                )
            },
        )?;
        writeln!(f, "write model:")?;
        section(
            f,
            "batches whose allocated quantity is not the total of their lines",
            &report.allocated_totals,
            |b| {
                format!(
                    "batch {} (sku {}): allocated_quantity {}, lines total {}",
                    b.batchref, b.sku, b.allocated_quantity, b.lines_total
                )
            },
        )?;
        section(
            f,
            "batches allocated and held beyond their quantity",
            &report.over_allocated,
            |b| {
                format!(
                    "batch {} (sku {}): {} allocated and {} held of {}",
                    b.batchref, b.sku, b.allocated_quantity, b.held_quantity, b.quantity
                )
            },
        )?;
        section(
            f,
            "order lines allocated more than once",
            &report.duplicate_lines,
            |l| format!("order {} sku {}: {} lines", l.orderid, l.sku, l.lines),
        )?;
        section(
            f,
            "lines on a batch of another SKU",
            &report.lines_on_foreign_batches,
            |l| {
                format!(
                    "order {} sku {}: on batch {} of sku {}",
                    l.orderid, l.sku, l.batchref, l.batch_sku
                )
            },
        )?;
        section(
            f,
            "batches whose quantity is not the sum of their stock movements",
            &report.ledger_drift,
            |b| {
                format!(
                    "batch {} (sku {}): quantity {}, movements sum to {}",
                    b.batchref, b.sku, b.quantity, b.ledger_total
                )
            },
        )?;
        let outbox = &report.outbox;
        match outbox.oldest_age() {
            Some(age) => writeln!(
                f,
                "outbox: {} message(s) waiting to be published, the oldest for {:.1} s",
                outbox.messages,
                age.as_secs_f64()
            )?,
            None => writeln!(f, "outbox: empty")?,
        }
        if report.is_consistent() {
            writeln!(f, "consistent")?;
        }
        Ok(())
    }
}

/// One line per kind of finding, then its examples indented below it.
fn section<T>(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    findings: &Findings<T>,
    describe: impl Fn(&T) -> String,
) -> fmt::Result {
    let mark = if findings.count == 0 { "ok  " } else { "FAIL" };
    writeln!(f, "  {mark} {title}: {}", findings.count)?;
    for example in &findings.examples {
        writeln!(f, "         {}", describe(example))?;
    }
    let unlisted = findings
        .count
        .saturating_sub(findings.examples.len() as u64);
    if unlisted > 0 {
        writeln!(f, "         ... and {unlisted} more")?;
    }
    Ok(())
}
