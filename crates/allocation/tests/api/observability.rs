//! What the real binary tells operators: `GET /metrics` (scraped from a
//! process of its own, so that the counts are exactly those of the test's
//! requests: the recorder is process-wide), and its JSON log lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::TestDatabase;
use test_support::redis::shared_redis;

use crate::helpers::{BOUND, RunningApp, publish, unique};

/// One sample of the exposition: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped). Label
/// values here never hold commas or quotes, which keeps this short.
fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("key=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the series `name` whose labels include `labels`, if any.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

async fn scrape(app: &RunningApp) -> (String, Vec<Sample>) {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("text");
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test]
async fn requests_messages_and_the_outbox_backlog_are_counted() {
    let db = TestDatabase::sqlite();
    // Nothing listens there: publishing fails, so the outbox keeps what
    // the allocations wrote, as when Redis is down.
    let dead_redis = format!("redis://127.0.0.1:{}", test_support::process::free_port());
    let app = RunningApp::start_with(&db, &["--redis-url", &dead_redis]).await;
    let (sku, batch) = (unique("sku"), unique("batch"));
    let (first, second) = (unique("order"), unique("order"));
    app.add_batch(&batch, &sku, 10, None).await;
    let before_allocating = Instant::now();
    assert_eq!(app.allocate(&first, &sku, 1).await, Some(batch.clone()));
    assert_eq!(app.allocate(&second, &sku, 1).await, Some(batch));
    assert_eq!(app.get(&format!("/allocations/{first}")).await.0, 200);
    assert_eq!(app.get("/allocations/no-such-order").await.0, 404);
    let refused = json!({ "orderid": unique("order"), "sku": unique("unknown"), "qty": 1 });
    assert_eq!(app.post("/allocate", &refused).await.0, 400);

    let (text, samples) = scrape(&app).await;
    let requests = |method, route, status| {
        value(
            &samples,
            "allocation_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/add_batch", "201"), Some(1.0), "{text}");
    assert_eq!(requests("POST", "/allocate", "202"), Some(2.0), "{text}");
    assert_eq!(requests("POST", "/allocate", "400"), Some(1.0), "{text}");
    assert_eq!(
        requests("GET", "/allocations/{orderid}", "200"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("GET", "/allocations/{orderid}", "404"),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains(&first),
        "ids must not become labels:\n{text}"
    );
    let latency = &[
        ("method", "POST"),
        ("route", "/allocate"),
        ("status", "202"),
    ];
    assert_eq!(
        value(
            &samples,
            "allocation_http_request_duration_seconds_count",
            latency
        ),
        Some(2.0),
        "{text}"
    );
    let slowest_bucket = [latency.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        value(
            &samples,
            "allocation_http_request_duration_seconds_bucket",
            &slowest_bucket
        ),
        Some(2.0),
        "{text}"
    );

    let handled = |kind, name, outcome| {
        value(
            &samples,
            "allocation_messages_handled_total",
            &[("kind", kind), ("name", name), ("outcome", outcome)],
        )
    };
    assert_eq!(handled("command", "CreateBatch", "ok"), Some(1.0), "{text}");
    assert_eq!(handled("command", "Allocate", "ok"), Some(2.0), "{text}");
    assert_eq!(
        handled("command", "Allocate", "rejected"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(handled("event", "Allocated", "ok"), Some(2.0), "{text}");
    // One after the other, each command (the batch, three allocations) was
    // a group of one.
    let groups = |series| value(&samples, series, &[]);
    assert_eq!(
        groups("allocation_group_commit_size_count"),
        Some(4.0),
        "{text}"
    );
    let of_one = value(
        &samples,
        "allocation_group_commit_size_bucket",
        &[("le", "1")],
    );
    assert_eq!(of_one, Some(4.0), "{text}");

    assert_eq!(
        value(&samples, "allocation_outbox_messages", &[]),
        Some(2.0),
        "{text}"
    );
    let age = value(
        &samples,
        "allocation_outbox_oldest_message_age_seconds",
        &[],
    );
    // Stored in milliseconds: allow one more than measured here.
    let at_most = before_allocating.elapsed().as_secs_f64() + 0.001;
    assert!(
        age.is_some_and(|age| (0.0..=at_most).contains(&age)),
        "{text}"
    );
    assert_eq!(
        value(&samples, "allocation_redis_consumer_connected", &[]),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("# HELP allocation_http_requests_total"),
        "{text}"
    );
}

#[tokio::test]
async fn the_redis_consumer_reports_its_connection_and_messages() {
    let Some(redis_url) = shared_redis() else {
        return;
    };
    let db = TestDatabase::sqlite();
    let app = RunningApp::start_consuming(&db, &redis_url).await;
    publish(&redis_url, "allocate", "not json").await;

    // Other tests publish to the same channels: count at least ours.
    let deadline = Instant::now() + BOUND;
    loop {
        let (text, samples) = scrape(&app).await;
        let connected = value(&samples, "allocation_redis_consumer_connected", &[]);
        let malformed = value(
            &samples,
            "allocation_redis_messages_processed_total",
            &[("channel", "allocate"), ("outcome", "malformed")],
        );
        let received = value(
            &samples,
            "allocation_redis_messages_received_total",
            &[("channel", "allocate")],
        );
        if malformed.is_some_and(|n| n >= 1.0) {
            assert_eq!(connected, Some(1.0), "{text}");
            assert!(received >= malformed, "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no malformed message counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redis_message_is_logged_in_a_span_with_its_ids() {
    let Some(redis_url) = shared_redis() else {
        return;
    };
    let db = TestDatabase::sqlite();
    let app =
        RunningApp::start_with(&db, &["--redis-url", &redis_url, "--log-format", "json"]).await;
    app.log().wait_for("subscribed to Redis", 1).await;
    let batchref = unique("no-such-batch");
    let payload = json!({ "batchref": batchref, "qty": 5 }).to_string();
    publish(&redis_url, "change_batch_quantity", &payload).await;

    app.log().wait_for(&batchref, 1).await;
    let log = app.log().text();
    let refused: Value = log
        .lines()
        .filter(|line| line.contains(&batchref) && line.contains("message refused"))
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON 'message refused' line:\n{log}"));
    let span = &refused["span"];
    assert_eq!(span["name"], "message", "{refused}");
    assert_eq!(span["channel"], "change_batch_quantity", "{refused}");
    assert_eq!(span["batchref"], batchref.as_str(), "{refused}");
}
