//! Redis Streams end to end (docs/contract.md section 8), on a
//! `redis-server` of each test's own (streams are keys, and the shared
//! Redis is every test's): entries handled once per deployment however many
//! instances run, kept while no consumer runs, taken over from a consumer
//! that died, and a poison entry set aside in the dead-letter stream while
//! the rest go on. Outgoing messages go to streams as well as channels.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use test_support::process::free_port;
use test_support::redis::{RedisServer, redis_server_program};
use test_support::{TestDatabase, on_database, per_backend, unique};

use crate::helpers::{BOUND, Process, RunningApp};

per_backend!(mod three_instances on [postgres] via with_streams {
    three_instances_handle_every_entry_exactly_once,
});

per_backend!(mod one_instance on [sqlite] via with_streams {
    entries_added_while_no_consumer_runs_are_handled_once_one_starts,
    a_poison_entry_is_set_aside_with_its_reason_and_the_rest_go_on,
    outgoing_messages_go_to_streams_as_well_as_channels,
    with_no_streams_only_the_books_channels_are_used,
    consume_and_relay_serve_probes_and_metrics,
});

per_backend!(mod dead_consumers on [postgres] via with_streams {
    a_dead_consumers_pending_entries_are_taken_over,
});

/// Runners for `per_backend!`: a fresh database and a Redis of the test's
/// own; skipped (a failure under `CI=true`) when `redis-server` cannot run.
mod with_streams {
    use std::future::Future;

    use super::*;

    pub async fn sqlite<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase, Streams) -> F) {
        if let Some(streams) = Streams::start().await {
            on_database::sqlite(|db| test(db, streams)).await;
        }
    }

    pub async fn postgres<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase, Streams) -> F) {
        if let Some(streams) = Streams::start().await {
            on_database::postgres(|db| test(db, streams)).await;
        }
    }
}

/// A Redis of the test's own, as the systems around the service see it.
pub struct Streams {
    server: RedisServer,
    connection: MultiplexedConnection,
}

impl Streams {
    async fn start() -> Option<Self> {
        let program = redis_server_program()?;
        let server = RedisServer::start(&program, free_port()).await;
        let client = redis::Client::open(server.url()).expect("a valid URL");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test's Redis");
        Some(Self { server, connection })
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Adds an entry with these fields to `stream`; its id.
    async fn add_fields(&self, stream: &str, fields: &[(&str, &str)]) -> String {
        self.connection
            .clone()
            .xadd(stream, "*", fields)
            .await
            .expect("XADD")
    }

    async fn add(&self, stream: &str, payload: &Value) -> String {
        self.add_fields(stream, &[("payload", &payload.to_string())])
            .await
    }

    /// Creates the service's consumer group on `stream` (and the stream),
    /// reading from its start, as the service would: for a test that plays
    /// one of its consumers first.
    async fn create_group(&self, stream: &str) {
        let _: () = self
            .connection
            .clone()
            .xgroup_create_mkstream(stream, "allocation", "0")
            .await
            .expect("XGROUP CREATE");
    }

    /// How many entries of `stream` the group has delivered and not had
    /// acknowledged.
    async fn pending(&self, stream: &str) -> usize {
        let reply: redis::streams::StreamPendingReply = self
            .connection
            .clone()
            .xpending(stream, "allocation")
            .await
            .expect("XPENDING");
        reply.count()
    }

    /// Every entry of `stream`, as field maps.
    async fn entries(&self, stream: &str) -> Vec<HashMap<String, String>> {
        let reply: redis::streams::StreamRangeReply = self
            .connection
            .clone()
            .xrange_all(stream)
            .await
            .expect("XRANGE");
        reply
            .ids
            .iter()
            .map(|entry| {
                entry
                    .map
                    .keys()
                    .map(|field| (field.clone(), entry.get(field).unwrap_or_default()))
                    .collect()
            })
            .collect()
    }

    /// Polls until `stream` has no entry pending in the group.
    async fn wait_until_none_pending(&self, stream: &str) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while self.pending(stream).await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} entries of {stream} still pending after {BOUND:?}",
                self.pending(stream).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An instance serving HTTP and consuming the test's Redis, once it reads
/// the streams; it takes over entries left unacknowledged for `claim_idle`
/// seconds. Tests that count handlings give it a minute: an entry whose
/// command ran longer than that (a loaded machine) would be taken over,
/// and counted a second time, as a duplicate.
async fn instance(
    db: &TestDatabase,
    streams: &Streams,
    claim_idle: &str,
    more: &[&str],
) -> RunningApp {
    let url = streams.url();
    let mut settings = vec!["--redis-url", url.as_str(), "--claim-idle", claim_idle];
    settings.extend_from_slice(more);
    let app = RunningApp::start_with(db, &settings).await;
    app.log().wait_for("consuming Redis streams", 1).await;
    app
}

/// Adds batches through an instance that reads no stream, so that no entry
/// can be handled before they exist.
async fn add_batches(db: &TestDatabase, batches: &[(&str, &str, u32)]) {
    let app = RunningApp::start(db).await;
    for (reference, sku, qty) in batches {
        app.add_batch(reference, sku, *qty, None).await;
    }
    let (status, _) = app.process.terminate(BOUND).await;
    assert!(status.success());
}

/// The sum of the series of `name` whose labels include all of `labels`,
/// in a Prometheus text page.
fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| {
            let series = line.strip_prefix(name);
            series.is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels.iter().all(|l| line.contains(l))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(app: &RunningApp) -> String {
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    app.metrics_page().await
}

/// The entries each instance handled or was refused, per its metrics.
async fn handled_by(apps: &[RunningApp]) -> Vec<f64> {
    let mut counts = Vec::new();
    for app in apps {
        let page = scrape(app).await;
        let done = metric(
            &page,
            "allocation_stream_entries_total",
            &["outcome=\"handled\""],
        ) + metric(
            &page,
            "allocation_stream_entries_total",
            &["outcome=\"refused\""],
        );
        counts.push(done);
    }
    counts
}

fn allocate(orderid: &str, sku: &str, qty: u32) -> Value {
    json!({ "orderid": orderid, "sku": sku, "qty": qty })
}

/// Three instances on one database consume 300 entries: 240 allocations
/// with stock to spare, 30 for a SKU with one unit (29 out of stock), and
/// 30 changes of one batch's quantity, each to a value none of the others
/// has. Each entry is handled by exactly one instance: the instances'
/// counts sum to 300; every line is allocated; one out-of-stock
/// notification per out-of-stock allocation, across the three logs; and
/// one ledger movement per change (a change run twice would add one).
async fn three_instances_handle_every_entry_exactly_once(db: TestDatabase, streams: Streams) {
    let (plenty, scarce, batch) = (unique("sku"), unique("sku"), unique("b"));
    add_batches(
        &db,
        &[
            (&unique("b"), &plenty, 1_000),
            (&unique("b"), &scarce, 1),
            (&batch, &unique("sku"), 500),
        ],
    )
    .await;
    let apps = join_all((0..3).map(|_| instance(&db, &streams, "60", &[]))).await;

    let orders: Vec<String> = (0..240).map(|_| unique("order")).collect();
    let mut adds = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        adds.push(("allocate", allocate(order, &plenty, 1)));
        if n % 8 == 0 {
            adds.push(("allocate", allocate(&unique("order"), &scarce, 1)));
            let qty = 100 + n as u32; // distinct, and above what is allocated
            adds.push((
                "change_batch_quantity",
                json!({ "batchref": batch, "qty": qty }),
            ));
        }
    }
    assert_eq!(adds.len(), 300);
    for (stream, payload) in &adds {
        streams.add(stream, payload).await;
    }
    streams.wait_until_none_pending("allocate").await;
    streams
        .wait_until_none_pending("change_batch_quantity")
        .await;

    // Acknowledged only after the commit, so everything is in by now.
    let counts = handled_by(&apps).await;
    assert_eq!(
        counts.iter().sum::<f64>(),
        300.0,
        "per instance: {counts:?}"
    );
    for order in &orders {
        let (status, lines) = apps[1].get(&format!("/allocations/{order}")).await;
        assert_eq!(status, 200, "{order}: {lines}");
    }
    // The notifications relays log them after the commits: poll.
    let notified = format!("Out of stock for {scarce}");
    let out_of_stock = || -> usize { apps.iter().map(|app| app.log().count(&notified)).sum() };
    let deadline = tokio::time::Instant::now() + BOUND;
    while out_of_stock() < 29 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        out_of_stock(),
        29,
        "one notification per out-of-stock allocation"
    );
    let (status, movements) = apps[2].get(&format!("/batches/{batch}/movements")).await;
    assert_eq!(status, 200);
    let changed = movements
        .as_array()
        .expect("a list")
        .iter()
        .filter(|m| m["reason"] == "changed")
        .count();
    assert_eq!(changed, 30, "one movement per change: {movements}");

    // Every entry changed something (an out-of-stock one its email), so
    // each commit recorded its entry, once: a redelivery would be known.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(db.url())
        .await
        .expect("the database");
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&mut conn)
        .await
        .expect("count the deliveries");
    assert_eq!(recorded, 300);
}

/// Entries added before any consumer ever ran (the group does not exist
/// yet), and entries added while the only instance was stopped, are all
/// handled once one runs.
async fn entries_added_while_no_consumer_runs_are_handled_once_one_starts(
    db: TestDatabase,
    streams: Streams,
) {
    let sku = unique("sku");
    add_batches(&db, &[(&unique("b"), &sku, 100)]).await;
    let early = unique("order");
    streams.add("allocate", &allocate(&early, &sku, 1)).await;

    let app = instance(&db, &streams, "60", &[]).await;
    app.wait_for_allocations(&early).await;
    let (status, _) = app.process.terminate(BOUND).await;
    assert!(status.success());

    let while_down: Vec<String> = (0..20).map(|_| unique("order")).collect();
    for order in &while_down {
        streams.add("allocate", &allocate(order, &sku, 1)).await;
    }
    let app = instance(&db, &streams, "60", &[]).await;
    for order in &while_down {
        app.wait_for_allocations(order).await;
    }
    streams.wait_until_none_pending("allocate").await;
    let page = scrape(&app).await;
    let handled = metric(&page, "allocation_stream_entries_total", &["handled"]);
    assert_eq!(handled, 20.0, "each once, after the restart");
}

/// An entry that is not a command goes to `allocate.dead_letter` with its
/// reason, acknowledged; so does one delivered more often than
/// `--max-deliveries` (here pushed there by a consumer that keeps taking
/// it and dying); the entries after them are handled.
async fn a_poison_entry_is_set_aside_with_its_reason_and_the_rest_go_on(
    db: TestDatabase,
    streams: Streams,
) {
    let sku = unique("sku");
    add_batches(&db, &[(&unique("b"), &sku, 10)]).await;
    // A consumer of the group that takes an entry and never finishes it,
    // three times over (each claim is a delivery).
    let mut connection = streams.connection.clone();
    streams.create_group("allocate").await;
    let doomed = unique("order");
    let cursed = streams.add("allocate", &allocate(&doomed, &sku, 1)).await;
    let _: redis::streams::StreamReadReply = connection
        .xread_options(
            &["allocate"],
            &[">"],
            &redis::streams::StreamReadOptions::default().group("allocation", "doomed"),
        )
        .await
        .expect("XREADGROUP");
    for _ in 0..2 {
        let _: redis::streams::StreamClaimReply = connection
            .xclaim("allocate", "allocation", "doomed", 0, &[&cursed])
            .await
            .expect("XCLAIM");
    }
    streams
        .add_fields("allocate", &[("payload", "{not json")])
        .await;
    streams.add_fields("allocate", &[("other", "field")]).await;
    let after = unique("order");
    streams.add("allocate", &allocate(&after, &sku, 1)).await;

    let app = instance(&db, &streams, "1", &["--max-deliveries", "3"]).await;
    app.wait_for_allocations(&after).await;
    streams.wait_until_none_pending("allocate").await;

    let dead = streams.entries("allocate.dead_letter").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reason_of = |needle: &str| {
        dead.iter()
            .find(|e| e["reason"].contains(needle))
            .unwrap_or_else(|| panic!("a dead letter for {needle:?}: {dead:?}"))
    };
    assert_eq!(reason_of("delivered 4 times")["id"], cursed);
    assert_eq!(reason_of("not valid JSON")["payload"], "{not json");
    assert_eq!(reason_of("no \"payload\" field")["deliveries"], "1");
    let (status, _) = app.get(&format!("/allocations/{doomed}")).await;
    assert_eq!(status, 404, "a dead letter is not handled");
    let page = scrape(&app).await;
    assert_eq!(
        metric(&page, "allocation_stream_dead_letters_total", &["allocate"]),
        3.0
    );
}

/// Consumers that died holding entries: one that read ten and stopped
/// before handling any, and a real instance killed (SIGKILL) mid-stream.
/// Another instance takes their entries over after `--claim-idle`, and
/// every entry is handled.
async fn a_dead_consumers_pending_entries_are_taken_over(db: TestDatabase, streams: Streams) {
    let sku = unique("sku");
    add_batches(&db, &[(&unique("b"), &sku, 1_000)]).await;
    let held: Vec<String> = (0..10).map(|_| unique("order")).collect();
    for order in &held {
        streams.add("allocate", &allocate(order, &sku, 1)).await;
    }
    let mut connection = streams.connection.clone();
    streams.create_group("allocate").await;
    let reply: redis::streams::StreamReadReply = connection
        .xread_options(
            &["allocate"],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("allocation", "reader-that-died")
                .count(10),
        )
        .await
        .expect("XREADGROUP");
    assert_eq!(reply.keys.iter().map(|k| k.ids.len()).sum::<usize>(), 10);

    // Slow to take over: the entries it leaves must be the survivor's.
    let killed = instance(&db, &streams, "3600", &[]).await;
    let rest: Vec<String> = (0..300).map(|_| unique("order")).collect();
    for order in &rest {
        streams.add("allocate", &allocate(order, &sku, 1)).await;
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    while handled_by(std::slice::from_ref(&killed)).await[0] < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first instance handles nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.kill().await;

    let survivor = instance(&db, &streams, "1", &[]).await;
    for order in held.iter().chain(&rest) {
        survivor.wait_for_allocations(order).await;
    }
    streams.wait_until_none_pending("allocate").await;
    let page = scrape(&survivor).await;
    let reclaimed = metric(&page, "allocation_stream_entries_reclaimed_total", &[]);
    assert!(
        reclaimed >= 10.0,
        "took over the dead reader's 10 entries: {reclaimed}"
    );
}

/// Each message relayed goes on its channel and on the stream of the same
/// name, its payload in field `payload`.
async fn outgoing_messages_go_to_streams_as_well_as_channels(db: TestDatabase, streams: Streams) {
    let app = instance(&db, &streams, "60", &[]).await;
    let (sku, order) = (unique("sku"), unique("order"));
    app.add_batch(&unique("b"), &sku, 10, None).await;
    app.allocate(&order, &sku, 2).await;
    let deadline = tokio::time::Instant::now() + BOUND;
    let entry = loop {
        let found = streams
            .entries("line_allocated")
            .await
            .into_iter()
            .find(|e| e["payload"].contains(&order));
        if let Some(entry) = found {
            break entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line_allocated entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let payload: Value = serde_json::from_str(&entry["payload"]).expect("JSON");
    assert_eq!(payload["orderid"], order.as_str());
    assert_eq!(payload["qty"], 2);
    assert!(payload["message_id"].is_string());
}

/// `--no-streams`: entries stay unread, and nothing is added to a stream;
/// the book's channels still work.
async fn with_no_streams_only_the_books_channels_are_used(db: TestDatabase, streams: Streams) {
    let url = streams.url();
    let app = RunningApp::start_with(&db, &["--redis-url", &url, "--no-streams"]).await;
    app.log().wait_for("subscribed to Redis", 1).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 10, None).await;
    let unread = unique("order");
    streams.add("allocate", &allocate(&unread, &sku, 1)).await;
    let by_channel = unique("order");
    crate::helpers::publish(
        &url,
        "allocate",
        &allocate(&by_channel, &sku, 1).to_string(),
    )
    .await;
    app.wait_for_allocations(&by_channel).await;
    let (status, _) = app.get(&format!("/allocations/{unread}")).await;
    assert_eq!(status, 404, "the stream is not read");
    assert!(
        streams
            .entries("line_allocated")
            .await
            .iter()
            .all(|e| !e["payload"].contains(&by_channel)),
        "nothing added to the line_allocated stream"
    );
    assert_eq!(app.log().count("consuming Redis streams"), 0);
}

/// `consume` and `relay` take no requests, but answer the probes and the
/// metrics scrape on their --bind address.
async fn consume_and_relay_serve_probes_and_metrics(db: TestDatabase, streams: Streams) {
    let url = streams.url();
    for kind in ["consume", "relay"] {
        let process = Process::spawn(&[
            kind,
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            db.url(),
            "--redis-url",
            &url,
        ]);
        let announced = "probes and metrics on http://";
        process.log().wait_for(announced, 1).await;
        let address = process
            .log()
            .text()
            .lines()
            .find_map(|line| line.split_once(announced))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .expect("an address")
            .to_owned();
        let client = reqwest::Client::new();
        for (path, status) in [
            ("/healthz", 200),
            ("/readyz", 200),
            ("/metrics", 200),
            ("/allocate", 404),
        ] {
            let answer = client
                .get(format!("http://{address}{path}"))
                .send()
                .await
                .expect("an answer");
            assert_eq!(answer.status().as_u16(), status, "{kind} {path}");
        }
        let page = client
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .expect("an answer")
            .text()
            .await
            .expect("a page");
        // Sampled from the database at each scrape.
        assert!(
            page.contains("allocation_outbox_messages 0"),
            "{kind}: {page}"
        );
        let (status, _) = process.terminate(BOUND).await;
        assert!(status.success(), "{kind} stops cleanly");
    }
}
