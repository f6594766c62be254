//! Clients that hang up mid-request (a closed browser tab, a client timeout
//! of a few milliseconds) while others allocate, against the real binary:
//! every allocation answered 202 is committed, writes keep working, and no
//! database session is left inside a transaction.

use std::io::Write;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use socket2::SockRef;
use sqlx::{AnyConnection, Connection, Row};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{BOUND, RunningApp, assert_stored, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    every_acknowledged_allocation_survives_clients_that_hang_up,
});

/// How long the storm lasts; the bug it guards against showed within a
/// second or two.
const STORM: Duration = Duration::from_secs(3);
const RUDE_CLIENTS: usize = 8;
const POLITE_CLIENTS: usize = 4;

async fn every_acknowledged_allocation_survives_clients_that_hang_up(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (hot, quiet) = (unique("sku"), unique("sku"));
    app.add_batch(&unique("b"), &hot, 1_000_000_000, None).await;
    app.add_batch(&unique("b"), &quiet, 1_000_000_000, None)
        .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let until = Instant::now() + STORM;

    let rude = (0..RUDE_CLIENTS).map(|_| {
        let (host, hot, quiet) = (host.clone(), hot.clone(), quiet.clone());
        std::thread::spawn(move || hang_up_repeatedly(host, hot, quiet, until))
    });
    let polite = (0..POLITE_CLIENTS).map(|_| {
        let (app_address, client, sku) = (app.address.clone(), app.client.clone(), hot.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            while Instant::now() < until {
                let orderid = unique("order");
                let body = json!({ "orderid": orderid, "sku": sku, "qty": 1 });
                let response = client
                    .post(format!("{app_address}/allocate"))
                    .json(&body)
                    .send()
                    .await
                    .expect("the service answers polite clients");
                let status = response.status().as_u16();
                let answer: serde_json::Value = response.json().await.expect("a JSON answer");
                // 503 (try again) is honest under such load; 500 never is.
                assert!(matches!(status, 202 | 503), "{status} {answer}");
                if status == 202 {
                    let batchref = answer["batchref"].as_str().expect("stock left").to_owned();
                    acknowledged.push((orderid, batchref));
                }
            }
            acknowledged
        })
    });
    // Spawned now, not when awaited: the storm runs meanwhile.
    let (rude, polite): (Vec<_>, Vec<_>) = (rude.collect(), polite.collect());
    let mut acknowledged = Vec::new();
    for client in futures::future::join_all(polite).await {
        acknowledged.extend(client.expect("a polite client"));
    }
    let hang_ups: usize = rude
        .into_iter()
        .map(|client| client.join().expect("a rude client"))
        .sum();
    assert!(hang_ups > 100, "only {hang_ups} requests were cut off");
    assert!(!acknowledged.is_empty(), "no allocation was acknowledged");

    // Every 202 is in the database, and in the read model.
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(db.url()).await.expect("connect");
    assert_stored(
        &mut conn,
        acknowledged.iter().map(|(o, b)| (o.as_str(), b.as_str())),
    )
    .await;
    for (orderid, _) in &acknowledged {
        let (status, rows) = app.get(&format!("/allocations/{orderid}")).await;
        assert_eq!(status, 200, "{orderid}: {rows}");
    }

    // Writes keep working, on the product the storm hit and on another.
    for sku in [&hot, &quiet] {
        assert!(app.allocate(&unique("order"), sku, 1).await.is_some());
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    no_session_left_in_a_transaction(&db, &mut conn).await;
    eprintln!(
        "{}: {} allocations acknowledged and kept, {hang_ups} requests cut off",
        db.backend(),
        acknowledged.len()
    );
}

/// Sends `POST /allocate` of `sku` or `POST /add_batch` of `other_sku`, and
/// resets the connection (RST, not FIN) 0 to 2 ms
/// later without reading the answer, again and again until `until`; returns
/// how many requests it cut off. A thread of its own with blocking sockets:
/// its waits are exact to the microsecond, where the async timer's would
/// round up to whole milliseconds and miss the short windows that matter
/// (a transaction's `BEGIN` in flight).
fn hang_up_repeatedly(host: String, sku: String, other_sku: String, until: Instant) -> usize {
    let mut rng = rand::rng();
    let mut cut_off = 0;
    while Instant::now() < until {
        // Allocations, and batches: a batch commits in a transaction of its
        // own, where an allocation may commit in one statement.
        let (path, body) = if cut_off % 2 == 0 {
            (
                "allocate",
                json!({ "orderid": unique("gone"), "sku": sku, "qty": 1 }),
            )
        } else {
            let batch = json!({ "ref": unique("gone"), "sku": other_sku, "qty": 10, "eta": null });
            ("add_batch", batch)
        };
        let body = body.to_string();
        let request = format!(
            "POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(&host).expect("connect");
        stream
            .write_all(request.as_bytes())
            .expect("send a request");
        std::thread::sleep(Duration::from_micros(rng.random_range(0..=2_000)));
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
        cut_off += 1;
    }
    cut_off
}

/// PostgreSQL: no session of the service sits `idle in transaction` (it
/// would hold its locks, and what ran in it would never commit). SQLite: the
/// write lock is free, so another writer gets it at once.
async fn no_session_left_in_a_transaction(db: &TestDatabase, conn: &mut AnyConnection) {
    if db.backend() == "sqlite" {
        let mut writer = AnyConnection::connect(db.url()).await.expect("connect");
        sqlx::raw_sql("PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE; ROLLBACK;")
            .execute(&mut writer)
            .await
            .expect("the write lock is free");
        return;
    }
    let deadline = Instant::now() + BOUND;
    loop {
        let row = sqlx::query(
            "SELECT count(*) AS stuck FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("query pg_stat_activity");
        let stuck: i64 = row.get("stuck");
        if stuck == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stuck} session(s) still idle in transaction"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
