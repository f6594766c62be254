//! Graceful shutdown (CONTRACT.md section 5): SIGTERM stops the built
//! binary promptly, with success and a last word in its log.

use std::time::Duration;

use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::RunningApp;

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    sigterm_stops_an_idle_service_cleanly,
});

async fn sigterm_stops_an_idle_service_cleanly(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let log = app.log().clone();

    let (status, took) = app.process.terminate(Duration::from_secs(10)).await;

    assert!(status.success(), "{status}; the log:\n{}", log.text());
    // The last lines may still be on their way through the pipe.
    log.wait_for("shut down cleanly", 1).await;
    println!("{}: exited {took:?} after SIGTERM", db.backend());
}
