//! The operators' commands `allocation check` and `allocation
//! rebuild-read-model`, run as an operator would: as separate processes
//! against the database of a running service.

use std::process::Stdio;

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{BOUND, RunningApp, SETTINGS_FROM_ENV, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    check_and_rebuild_work_beside_a_running_service,
});

/// What a command that ran to its end left behind.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `allocation <args>` to its end (within [`BOUND`]), with no
/// settings from the environment.
pub async fn run_allocation(args: &[&str]) -> Finished {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_allocation"));
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in SETTINGS_FROM_ENV {
        command.env_remove(var);
    }
    let output = tokio::time::timeout(BOUND, command.env("NO_COLOR", "1").output())
        .await
        .unwrap_or_else(|_| panic!("allocation {args:?} still running after {BOUND:?}"))
        .expect("the binary runs");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `allocation check --json` on `database_url`: its exit code and report.
pub async fn check(database_url: &str) -> (Option<i32>, Value) {
    let finished = run_allocation(&["check", "--json", "--database-url", database_url]).await;
    let report = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON report ({e}): {finished:#?}"));
    (finished.code, report)
}

async fn check_and_rebuild_work_beside_a_running_service(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, batch) = (unique("sku"), unique("b"));
    app.add_batch(&batch, &sku, 100, None).await;
    let orders: Vec<String> = (0..3).map(|_| unique("order")).collect();
    for order in &orders {
        assert_eq!(app.allocate(order, &sku, 2).await.as_deref(), Some(&*batch));
    }

    let consistent = run_allocation(&["check", "--database-url", db.url()]).await;
    assert_eq!(consistent.code, Some(0), "{consistent:#?}");
    assert!(
        consistent
            .stdout
            .contains("1 products, 1 batches, 3 allocated lines")
            && consistent.stdout.trim_end().ends_with("consistent"),
        "{}",
        consistent.stdout
    );

    // A row of the read model goes missing behind the service's back.
    let lost = &orders[1];
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(db.url()).await.expect("connect");
    sqlx::query("DELETE FROM allocations_view WHERE orderid = $1")
        .bind(lost)
        .execute(&mut conn)
        .await
        .expect("delete a row");
    let (status, _) = app.get(&format!("/allocations/{lost}")).await;
    assert_eq!(status, 404);

    let found = run_allocation(&["check", "--database-url", db.url()]).await;
    assert_eq!(found.code, Some(2), "{found:#?}");
    assert!(
        found.stdout.contains(&format!(
            "order {lost} sku {sku}: should show batch {batch}"
        )),
        "{}",
        found.stdout
    );
    assert!(
        found.stderr.contains("1 read-model difference(s)"),
        "{}",
        found.stderr
    );
    let (code, report) = check(db.url()).await;
    assert_eq!(code, Some(2));
    assert_eq!(
        report["missing_rows"],
        json!({ "count": 1, "examples": [{ "orderid": lost, "sku": sku, "batchref": batch }] })
    );

    let rebuilt = run_allocation(&["rebuild-read-model", "--database-url", db.url()]).await;
    assert_eq!(rebuilt.code, Some(0), "{rebuilt:#?}");
    assert!(
        rebuilt
            .stdout
            .contains("1 row(s) added, 0 changed, 0 removed"),
        "{}",
        rebuilt.stdout
    );
    let (status, body) = app.get(&format!("/allocations/{lost}")).await;
    assert_eq!(
        (status, body),
        (200, json!([{ "sku": sku, "batchref": batch }]))
    );
    let (code, report) = check(db.url()).await;
    assert_eq!(code, Some(0), "{report:#}");

    // The service kept working throughout.
    let later = unique("order");
    assert_eq!(
        app.allocate(&later, &sku, 1).await.as_deref(),
        Some(&*batch)
    );
}

#[tokio::test]
async fn on_memory_there_is_nothing_to_check_or_rebuild() {
    for command in ["check", "rebuild-read-model"] {
        let finished = run_allocation(&[command, "--database-url", "memory://"]).await;
        assert_eq!(finished.code, Some(0), "{finished:#?}");
        assert!(
            finished
                .stderr
                .contains("memory:// keeps nothing between runs"),
            "{finished:#?}"
        );
    }
}

#[tokio::test]
async fn a_check_that_cannot_reach_its_database_exits_1() {
    // Nothing listens on port 1: the connection is refused at once.
    let url = "postgres://root@127.0.0.1:1/nothing";
    let finished = run_allocation(&[
        "check",
        "--database-url",
        url,
        "--database-acquire-timeout",
        "1",
    ])
    .await;
    assert_eq!(finished.code, Some(1), "{finished:#?}");
    assert!(finished.stderr.starts_with("error:"), "{finished:#?}");
}

/// Exit code 2 means "differences found" and nothing else: an invalid
/// setting (which clap would answer with 2) exits 1 like any other failure.
#[tokio::test]
async fn an_invalid_setting_exits_1_not_2() {
    for args in [
        &["check", "--database-acquire-timeout", "soon"][..],
        &["check", "--no-such-flag"],
        &["serve", "--bind", "not-an-address"],
    ] {
        let finished = run_allocation(args).await;
        assert_eq!(finished.code, Some(1), "{args:?}: {finished:#?}");
        assert!(finished.stderr.starts_with("error:"), "{finished:#?}");
    }
    let help = run_allocation(&["check", "--help"]).await;
    assert_eq!(help.code, Some(0), "{help:#?}");
    assert!(help.stdout.contains("Usage"), "{help:#?}");
}
