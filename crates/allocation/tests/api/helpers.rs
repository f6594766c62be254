//! Test helpers: random identifiers, the in-process app, the real binary
//! started on a free port (zero-to-production's `spawn_app`, as a process)
//! against a test database (`test_support::TestDatabase`) with its log kept
//! to wait on, and Redis as another system sees it (publishing commands,
//! reading `line_allocated`).

use std::collections::HashSet;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::RedisPublisher;
use adapters::messages;
use allocation::bootstrap::{OutboundAdapters, bootstrap};
use allocation::entrypoints::http::{AppState, router};
use axum::Router;
use futures::StreamExt;
use serde_json::{Value, json};
use service_layer::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
use test_support::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

pub use test_support::unique;

/// The HTTP app over an in-memory store, and the store to inspect.
pub fn in_process_app() -> (Router, MemoryStore) {
    let store = MemoryStore::new();
    let outbound = OutboundAdapters {
        notifications: Arc::new(RecordingNotifications::new()),
        publisher: Arc::new(RecordingPublisher::new()),
    };
    let service = bootstrap(store.clone(), outbound);
    let app = router(AppState {
        bus: service.bus,
        read_model: store.clone(),
    });
    (app, store)
}

/// Far above what any step of these tests needs; a bound, not an expectation.
pub const BOUND: Duration = Duration::from_secs(30);

/// The environment the binary could read its settings from: cleared, so
/// that each test passes exactly the settings it means (under CI,
/// `DATABASE_URL` and `REDIS_URL` are set for the tests themselves).
pub const SETTINGS_FROM_ENV: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "SMTP_URL",
    "NOTIFY_EMAIL",
    "NOTIFY_FROM",
    "ALLOCATION_BIND",
    "LOG_FORMAT",
    "ALLOCATION_REQUEST_TIMEOUT",
    "ALLOCATION_API_TOKEN",
    "ALLOCATION_HEADER_READ_TIMEOUT",
    "ALLOCATION_KEEP_ALIVE_TIMEOUT",
    "ALLOCATION_MAX_CONNECTIONS",
    "ALLOCATION_NO_STREAMS",
    "ALLOCATION_CONSUMER_GROUP",
    "ALLOCATION_CONSUMER_NAME",
    "ALLOCATION_CLAIM_IDLE",
    "ALLOCATION_MAX_DELIVERIES",
];

/// What a process wrote to its log (stderr) so far, line by line, kept as
/// it is written so that a test can wait for a line.
#[derive(Debug, Clone)]
pub struct Log(watch::Sender<Vec<String>>);

impl Log {
    fn new() -> Self {
        Self(watch::Sender::new(Vec::new()))
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `at_least` lines contain `needle`.
    ///
    /// # Panics
    ///
    /// After [`BOUND`], showing the log.
    pub async fn wait_for(&self, needle: &str, at_least: usize) {
        let mut lines = self.0.subscribe();
        let found =
            lines.wait_for(|lines| lines.iter().filter(|l| l.contains(needle)).count() >= at_least);
        if !matches!(tokio::time::timeout(BOUND, found).await, Ok(Ok(_))) {
            panic!(
                "{at_least} log lines with {needle:?} not seen within {BOUND:?}; the log:\n{}",
                self.text()
            );
        }
    }

    pub fn text(&self) -> String {
        self.0.borrow().join("\n")
    }
}

/// A run of the real `allocation` binary, with its log kept; killed
/// (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: Log,
}

impl Process {
    /// Runs `allocation <args>`, with no settings from the environment.
    pub fn spawn(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_allocation"));
        command.args(args);
        for var in SETTINGS_FROM_ENV {
            command.env_remove(var);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Log::new();
        let keeper = log.clone();
        // Read to the end, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                keeper.0.send_modify(|lines| lines.push(line));
            }
        });
        Self { child, log }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it at once (SIGKILL), like a crash, and waits for it to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// Asks it to stop (SIGTERM) and waits at most `within` for it to exit:
    /// its exit status, and how long it took.
    ///
    /// # Panics
    ///
    /// When it is still running after `within` (it is killed then).
    pub async fn terminate(mut self, within: Duration) -> (ExitStatus, Duration) {
        let pid = self.child.id().expect("still running");
        let asked = Instant::now();
        test_support::process::signal(pid, "TERM");
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => (status.expect("wait for the process"), asked.elapsed()),
            Err(_) => panic!(
                "still running {within:?} after SIGTERM; the log:\n{}",
                self.log.text()
            ),
        }
    }
}

/// The real `allocation` binary, serving on a free port; killed on drop
/// (SIGKILL), so declare it after the database it uses: it goes first.
#[derive(Debug)]
pub struct RunningApp {
    pub address: String,
    pub client: reqwest::Client,
    pub process: Process,
}

impl RunningApp {
    /// Starts the binary against `database`: a fresh one, or one an earlier
    /// process used.
    pub async fn start(database: &TestDatabase) -> Self {
        Self::start_with(database, &[]).await
    }

    /// Starts the binary against `database` with `settings` added, e.g.
    /// `["--redis-url", url]`.
    pub async fn start_with(database: &TestDatabase, settings: &[&str]) -> Self {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--database-url"];
        args.push(database.url());
        args.extend_from_slice(settings);
        let mut process = Process::spawn(&args);
        let announced = "listening on ";
        let started = tokio::select! {
            () = process.log.wait_for(announced, 1) => true,
            _ = process.child.wait() => false,
        };
        assert!(
            started,
            "the service exited at start:\n{}",
            process.log.text()
        );
        let address = process
            .log
            .0
            .borrow()
            .iter()
            .find_map(|line| line.split_once(announced))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .expect("an address after 'listening on'")
            .to_owned();
        let client = reqwest::Client::builder()
            .timeout(BOUND)
            .build()
            .expect("an HTTP client");
        Self {
            address,
            client,
            process,
        }
    }

    /// Starts the binary against `database` with the Redis at `redis_url`,
    /// and waits until its consumer is subscribed: a message published
    /// before then would be lost to it.
    pub async fn start_consuming(database: &TestDatabase, redis_url: &str) -> Self {
        let app = Self::start_with(database, &["--redis-url", redis_url]).await;
        app.log().wait_for("subscribed to Redis", 1).await;
        app
    }

    /// Kills the process at once (SIGKILL), like a crash, and waits for it
    /// to be gone.
    pub async fn kill(self) {
        self.process.kill().await;
    }

    /// `POST /allocate` of one line, which must be accepted (202); the
    /// batch it went to, if any.
    pub async fn allocate(&self, orderid: &str, sku: &str, qty: u32) -> Option<String> {
        let body = json!({ "orderid": orderid, "sku": sku, "qty": qty });
        let (status, answer) = self.post("/allocate", &body).await;
        assert_eq!(status, 202, "{answer}");
        answer["batchref"].as_str().map(str::to_owned)
    }

    /// Polls `GET /allocations/<orderid>` until the order has allocations
    /// (for commands that arrive another way than HTTP), and returns them.
    ///
    /// # Panics
    ///
    /// When it has none after [`BOUND`].
    pub async fn wait_for_allocations(&self, orderid: &str) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let (status, body) = self.get(&format!("/allocations/{orderid}")).await;
            if status == 200 {
                return body;
            }
            assert_eq!(status, 404, "{body}");
            assert!(
                Instant::now() < deadline,
                "order {orderid} not allocated within {BOUND:?}; the log:\n{}",
                self.log().text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> &Log {
        self.process.log()
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .put(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent");
        read(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent");
        read(response).await
    }

    /// A `POST` with an `Idempotency-Key`: status, body, and whether the
    /// answer was given again.
    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> (u16, Value, bool) {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let (status, body) = read(response).await;
        (status, body, replayed)
    }

    /// `GET /metrics`: the Prometheus page as text.
    pub async fn metrics_page(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics page")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent");
        read(response).await
    }

    /// A `DELETE`, whose success has no body: its status only.
    pub async fn delete(&self, path: &str) -> u16 {
        let response = self
            .client
            .delete(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent");
        response.status().as_u16()
    }

    pub async fn add_batch(&self, reference: &str, sku: &str, qty: u32, eta: Option<&str>) {
        let body = json!({ "ref": reference, "sku": sku, "qty": qty, "eta": eta });
        let (status, answer) = self.post("/add_batch", &body).await;
        assert_eq!(status, 201, "{answer}");
    }
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("every answer is JSON");
    (status, body)
}

/// Runners for `per_backend!` whose tests take a fresh database and the
/// shared Redis's URL: skipped (a failure under `CI=true`) unless
/// `REDIS_URL` is set, and on PostgreSQL unless `DATABASE_URL` is too.
pub mod with_redis {
    use std::future::Future;

    use test_support::redis::shared_redis;
    use test_support::{TestDatabase, on_database};

    pub async fn sqlite<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase, String) -> F) {
        if let Some(redis) = shared_redis() {
            on_database::sqlite(|db| test(db, redis)).await;
        }
    }

    pub async fn postgres<F: Future<Output = ()>>(test: impl FnOnce(TestDatabase, String) -> F) {
        if let Some(redis) = shared_redis() {
            on_database::postgres(|db| test(db, redis)).await;
        }
    }
}

/// Sends `payload` on `channel` of the Redis at `url`, as another system
/// would.
pub async fn publish(url: &str, channel: &str, payload: &str) {
    RedisPublisher::connect(url, false)
        .expect("a valid Redis URL")
        .publish_raw(channel, payload)
        .await
        .expect("Redis takes the message");
}

/// The `line_allocated` messages of a Redis, parsed, from the moment of
/// subscribing (pub/sub keeps nothing for later subscribers). The shared
/// Redis carries other tests' messages too: the readers take only those
/// about the SKUs they are given.
#[derive(Debug)]
pub struct LineAllocated {
    received: mpsc::UnboundedReceiver<Value>,
}

impl LineAllocated {
    /// Subscribes, and returns once Redis confirmed the subscription.
    pub async fn subscribe(url: &str) -> Self {
        let mut subscription = adapters::subscribe(url, &[messages::LINE_ALLOCATED])
            .await
            .expect("subscribed to line_allocated");
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let parsed = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&message.payload).into_owned())
                });
                if sender.send(parsed).is_err() {
                    break;
                }
            }
        });
        Self { received }
    }

    /// The next message about one of `skus`.
    ///
    /// # Panics
    ///
    /// When none arrives within [`BOUND`].
    pub async fn next_for(&mut self, skus: &[&str]) -> Value {
        self.next_within(skus, BOUND)
            .await
            .unwrap_or_else(|| panic!("no line_allocated for {skus:?} within {BOUND:?}"))
    }

    /// The next `count` messages about `skus`, in the order they arrived.
    pub async fn take_for(&mut self, skus: &[&str], count: usize) -> Vec<Value> {
        let mut taken = Vec::with_capacity(count);
        while taken.len() < count {
            let next = self.next_within(skus, BOUND).await;
            taken.push(next.unwrap_or_else(|| {
                panic!(
                    "{} of {count} line_allocated for {skus:?} within {BOUND:?}: {taken:#?}",
                    taken.len()
                )
            }));
        }
        taken
    }

    /// The next `count` distinct messages about `skus`, in the order they
    /// first arrived: a message that arrives again (delivery is at least
    /// once; same `message_id`) is dropped.
    pub async fn take_distinct_for(&mut self, skus: &[&str], count: usize) -> Vec<Value> {
        let mut seen = HashSet::new();
        let mut taken = Vec::with_capacity(count);
        while taken.len() < count {
            let message = self.next_within(skus, BOUND).await.unwrap_or_else(|| {
                panic!(
                    "{} of {count} line_allocated for {skus:?} within {BOUND:?}: {taken:#?}",
                    taken.len()
                )
            });
            if seen.insert(message["message_id"].to_string()) {
                taken.push(message);
            }
        }
        taken
    }

    /// The next message about `skus` within `wait`, if any: to show that
    /// no more came.
    pub async fn next_within(&mut self, skus: &[&str], wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .ok()?
                .expect("the subscription is still running");
            if skus.iter().any(|sku| message["sku"] == *sku) {
                return Some(message);
            }
        }
    }
}

/// Checks that `message` announces `orderid`'s line of `qty` of `sku` on
/// `batchref` (extra fields are allowed), and returns its `message_id`,
/// which must be a non-empty string.
pub fn check_line_allocated(
    message: &Value,
    orderid: &str,
    sku: &str,
    qty: u32,
    batchref: &str,
) -> String {
    let fields = ["orderid", "sku", "qty", "batchref"].map(|field| &message[field]);
    assert_eq!(
        fields,
        [&json!(orderid), &json!(sku), &json!(qty), &json!(batchref)],
        "{message}"
    );
    let id = message["message_id"].as_str().unwrap_or_default();
    assert!(!id.trim().is_empty(), "no message_id: {message}");
    id.to_owned()
}

/// Asserts that every `(orderid, batchref)` the service acknowledged (202)
/// is in its database's `allocations` table on that batch: read directly,
/// not through the service, which could answer from a transaction that
/// never committed.
pub async fn assert_stored<'a>(
    conn: &mut sqlx::AnyConnection,
    acknowledged: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    use sqlx::Row;

    for (orderid, batchref) in acknowledged {
        let row = sqlx::query(
            "SELECT b.reference FROM allocations a JOIN batches b ON b.id = a.batch_id \
             WHERE a.orderid = $1",
        )
        .bind(orderid)
        .fetch_optional(&mut *conn)
        .await
        .expect("query the allocations");
        let stored: Option<String> = row.map(|row| row.get("reference"));
        assert_eq!(
            stored.as_deref(),
            Some(batchref),
            "acknowledged {orderid} was lost"
        );
    }
}
