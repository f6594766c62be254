//! Test helpers: random identifiers, the in-process app, and the real binary
//! started on a free port (zero-to-production's `spawn_app`, as a process)
//! against a test database (`test_support::TestDatabase`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use allocation::bootstrap::{Outside, bootstrap};
use allocation::entrypoints::http::{AppState, router};
use axum::Router;
use serde_json::{Value, json};
use service_layer::memory::{MemoryStore, RecordingNotifications, RecordingPublisher};
use test_support::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use test_support::unique;

/// The HTTP app over an in-memory store, and the store to inspect.
pub fn in_process_app() -> (Router, MemoryStore) {
    let store = MemoryStore::new();
    let outside = Outside {
        notifications: Arc::new(RecordingNotifications::new()),
        publisher: Arc::new(RecordingPublisher::new()),
    };
    let service = bootstrap(store.clone(), outside);
    let app = router(AppState {
        bus: service.bus,
        read_model: store.clone(),
    });
    (app, store)
}

/// The real `allocation` binary, serving on a free port; killed on drop
/// (SIGKILL), so declare it after the database it uses: it goes first.
pub struct RunningApp {
    pub address: String,
    pub client: reqwest::Client,
    process: Child,
}

impl RunningApp {
    /// Starts the binary against `database`: a fresh one, or one an earlier
    /// process used.
    pub async fn start(database: &TestDatabase) -> Self {
        let url = database.url();
        let mut process = Command::new(env!("CARGO_BIN_EXE_allocation"))
            .args(["serve", "--bind", "127.0.0.1:0", "--database-url", url])
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
            process,
        }
    }

    /// Kills the process at once (SIGKILL), like a crash, and waits for it
    /// to be gone.
    pub async fn kill(mut self) {
        self.process.kill().await.expect("kill");
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
