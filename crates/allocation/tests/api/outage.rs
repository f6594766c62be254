//! The database fails (stops, or hangs) under load: every answer meanwhile
//! is either a 202 that was committed or a 503 JSON to retry, never a 500
//! and never a hang;
//! `/readyz` says 503 while writes cannot succeed; and the service recovers
//! by itself once the database is back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection};
use test_support::TestDatabase;
use test_support::postgres::PostgresServer;
use tokio::sync::watch;

use crate::helpers::{BOUND, RunningApp, assert_stored, unique};

/// The service's request timeout in these tests: no answer may take longer
/// (plus a margin for a loaded machine).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
const CLIENTS: usize = 4;

/// PostgreSQL stopped at once (every connection cut) in the middle of a
/// stream of allocations, then started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_stopped_and_restarted_under_load_answers_503_then_recovers() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    outage_under_load(&server, PostgresServer::stop, PostgresServer::start_again).await;
}

/// PostgreSQL frozen in the middle of a stream of allocations, as a
/// database host that stops answering is: connections stay open, and
/// queries, commits, and the pings sqlx sends as it takes connections back,
/// wait on them with no answer and no error. Then it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_hangs_under_load_answers_503_in_time_then_recovers() {
    if !cfg!(target_os = "linux") {
        test_support::notice(
            "skipped: freezing a PostgreSQL server finds its processes in /proc (Linux only)",
        );
        return;
    }
    let Some(server) = PostgresServer::start() else {
        return;
    };
    outage_under_load(&server, PostgresServer::freeze, PostgresServer::thaw).await;
}

/// Allocations from [`CLIENTS`] clients while `begin` takes the database
/// away and `end` brings it back: every answer a 202 that was committed or
/// a 503 JSON in time, `/readyz` 503 during the outage, and allocations
/// succeeding again after it.
async fn outage_under_load(
    server: &PostgresServer,
    begin: impl FnOnce(&PostgresServer),
    end: impl FnOnce(&PostgresServer),
) {
    let db = TestDatabase::create_postgres(&server.url()).await;
    let app = RunningApp::start_with(
        &db,
        &["--request-timeout", "4", "--database-acquire-timeout", "1"],
    )
    .await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 1_000_000_000, None).await;
    let (stop_clients, clients_stopped) = watch::channel(false);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(allocate_until(
                app_handle(&app),
                sku.clone(),
                clients_stopped.clone(),
            ))
        })
        .collect();

    wait_for_answers(&app, &sku, 20).await;
    begin(server);
    wait_for_readiness(&app, 503).await;
    every_route_answers_503_json(&app, &sku).await;
    end(server);
    wait_for_readiness(&app, 200).await;
    let after_outage = Instant::now();
    let (_, product) = app.get(&format!("/products/{sku}/batches")).await;
    let allocated = product["batches"][0]["allocated"].as_u64().unwrap_or(0);
    wait_for_answers(&app, &sku, allocated + 20).await;
    let _ = stop_clients.send(true);

    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("a client"));
    }
    let unavailable = answers.iter().filter(|a| a.status == 503).count();
    assert!(unavailable > 0, "no request met the outage");
    assert!(
        answers
            .iter()
            .any(|a| a.status == 202 && a.sent_at > after_outage),
        "no allocation succeeded after the outage"
    );
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(db.url()).await.expect("connect");
    let accepted = answers.iter().filter(|a| a.status == 202);
    let acknowledged = accepted.map(|a| (a.orderid.as_str(), a.batchref.as_deref().unwrap_or("")));
    assert_stored(&mut conn, acknowledged).await;
    eprintln!(
        "{} answers: {} accepted, {unavailable} unavailable",
        answers.len(),
        answers.len() - unavailable
    );
}

/// SQLite's write lock held by someone else (a stuck writer, an operator's
/// open transaction): writes answer 503 once the busy timeout runs out,
/// `/readyz` says 503 although reads still work, and both recover when the
/// lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_lock_held_elsewhere_answers_503_and_readyz_says_so() {
    let db = TestDatabase::sqlite();
    let app = RunningApp::start_with(&db, &["--request-timeout", "8"]).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 10, None).await;
    sqlx::any::install_default_drivers();
    let mut holder = AnyConnection::connect(db.url()).await.expect("connect");
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .expect("take the write lock");

    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body = json!({ "orderid": unique("order"), "sku": sku, "qty": 1 });
    let (status, answer) = app.post("/allocate", &body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["message"].is_string(), "{answer}");

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("release the lock");
    wait_for_readiness(&app, 200).await;
    assert!(app.allocate(&unique("order"), &sku, 1).await.is_some());
}

/// Every route that touches the database answers 503 JSON while it is
/// down, within the request timeout.
async fn every_route_answers_503_json(app: &RunningApp, sku: &str) {
    let order = unique("order");
    let posts = [
        (
            "/add_batch",
            json!({ "ref": unique("b"), "sku": sku, "qty": 5, "eta": null }),
        ),
        (
            "/allocate",
            json!({ "orderid": order, "sku": sku, "qty": 1 }),
        ),
        ("/deallocate", json!({ "orderid": order, "sku": sku })),
        (
            "/change_batch_quantity",
            json!({ "batchref": unique("b"), "qty": 5 }),
        ),
    ];
    for (path, body) in posts {
        let sent_at = Instant::now();
        let (status, answer) = app.post(path, &body).await;
        assert_eq!(status, 503, "POST {path}: {answer}");
        assert!(answer["message"].is_string(), "POST {path}: {answer}");
        assert!(sent_at.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2));
    }
    for path in [
        format!("/allocations/{order}"),
        format!("/products/{sku}/batches"),
    ] {
        let (status, answer) = app.get(&path).await;
        assert_eq!(status, 503, "GET {path}: {answer}");
        assert!(answer["message"].is_string(), "GET {path}: {answer}");
    }
}

/// What a client needs of the running app: its address and HTTP client.
#[derive(Clone)]
struct AppHandle {
    address: String,
    client: reqwest::Client,
}

fn app_handle(app: &RunningApp) -> AppHandle {
    AppHandle {
        address: app.address.clone(),
        client: app.client.clone(),
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    orderid: String,
    batchref: Option<String>,
    sent_at: Instant,
}

/// Allocates one line after another until told to stop, checking each
/// answer as it comes: 202 with a batch, or 503 with a message, in time.
async fn allocate_until(
    app: AppHandle,
    sku: String,
    mut stop: watch::Receiver<bool>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    while !*stop.borrow_and_update() {
        let orderid = unique("order");
        let body = json!({ "orderid": orderid, "sku": sku, "qty": 1 });
        let sent_at = Instant::now();
        let response = app
            .client
            .post(format!("{}/allocate", app.address))
            .json(&body)
            .send()
            .await
            .expect("the service answers");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("every answer is JSON");
        let took = sent_at.elapsed();
        assert!(
            took < REQUEST_TIMEOUT + Duration::from_secs(2),
            "an answer took {took:?}"
        );
        match status {
            202 => assert!(answer["batchref"].is_string(), "{answer}"),
            503 => assert!(answer["message"].is_string(), "{answer}"),
            _ => panic!("{status} {answer}"),
        }
        answers.push(Answer {
            status,
            orderid,
            batchref: answer["batchref"].as_str().map(str::to_owned),
            sent_at,
        });
        if status == 503 {
            // As a well-behaved client does: back off a little.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    answers
}

/// Waits until `count` lines of `sku` are allocated.
async fn wait_for_answers(app: &RunningApp, sku: &str, count: u64) {
    let deadline = Instant::now() + BOUND;
    loop {
        let (status, product) = app.get(&format!("/products/{sku}/batches")).await;
        if status == 200 && product["batches"][0]["allocated"].as_u64() >= Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} allocations not made in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /readyz` until it answers `status`.
async fn wait_for_readiness(app: &RunningApp, status: u16) {
    let deadline = Instant::now() + BOUND;
    loop {
        let (now, body) = app.get("/readyz").await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {now} {body}, not {status}; the log:\n{}",
            app.log().text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
