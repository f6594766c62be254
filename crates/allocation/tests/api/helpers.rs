//! Test helpers: random identifiers, the in-process app, and the real binary
//! started on a free port (zero-to-production's `spawn_app`, as a process).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use allocation::bootstrap::{Outside, bootstrap};
use allocation::entrypoints::http::{AppState, router};
use axum::Router;
use serde_json::{Value, json};
use service_layer::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A name no other test (or earlier run on a shared database) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// The HTTP app over an in-memory store, and the store to inspect.
pub fn in_process_app() -> (Router, MemoryStore) {
    let store = MemoryStore::new();
    let outside = Outside {
        notifications: Arc::new(RecordingNotifications::new()),
        publisher: Arc::new(RecordingPublisher::new()),
    };
    let bus = Arc::new(bootstrap(store.clone(), outside));
    let app = router(AppState {
        bus,
        read_model: store.clone(),
    });
    (app, store)
}

/// The real `allocation` binary, serving on a free port; killed on drop.
pub struct RunningApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database: PathBuf,
    process: Child,
    _dir: Option<tempfile::TempDir>,
}

impl RunningApp {
    /// Starts the binary against a fresh SQLite file.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("allocation.db");
        let mut app = Self::start_on(database).await;
        app._dir = Some(dir);
        app
    }

    /// Starts the binary against an existing (or new) SQLite file.
    pub async fn start_on(database: PathBuf) -> Self {
        let url = format!("sqlite://{}", database.display());
        let mut process = Command::new(env!("CARGO_BIN_EXE_allocation"))
            .args(["serve", "--bind", "127.0.0.1:0", "--database-url", &url])
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let stderr = process.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    return rest.split_whitespace().next().map(str::to_owned);
                }
            }
            None
        })
        .await
        .expect("the service announces its address within 30 s")
        .expect("the service started");
        // Keep draining the log so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            address,
            client: reqwest::Client::new(),
            database,
            process,
            _dir: None,
        }
    }

    /// Kills the process at once, like a crash, and waits for it to be gone.
    pub async fn kill(mut self) -> Option<tempfile::TempDir> {
        self.process.kill().await.expect("kill");
        self._dir.take()
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

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent");
        read(response).await
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
