//! The stock ledger and availability end to end (docs/contract.md
//! sections 7.1 and 7.3), on the built binary over HTTP and Redis, against
//! SQLite and PostgreSQL: adjustments, two stocktakers racing on one count,
//! a reduction that moves lines, `allocation check` finding a quantity
//! changed behind the ledger's back, and availability after each change.

use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, publish, unique, with_redis};
use crate::maintenance::check;

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    adjustments_are_movements_and_bad_ones_change_nothing,
    two_stocktakers_on_one_count_exactly_one_wins,
    a_reduction_below_the_allocated_moves_the_newest_lines,
    check_finds_a_quantity_changed_behind_the_ledgers_back,
    availability_is_exact_after_each_change,
});

per_backend!(mod over_redis on [sqlite, postgres] via with_redis {
    a_change_of_quantity_over_redis_is_a_changed_movement,
});

async fn movements(app: &RunningApp, batch: &str) -> Vec<(i64, i64, String)> {
    let (status, body) = app.get(&format!("/batches/{batch}/movements")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            let delta = m["delta"].as_i64().expect("delta");
            let after = m["qty_after"].as_i64().expect("qty_after");
            (
                delta,
                after,
                m["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn adjust(batch: &str) -> String {
    format!("/batches/{batch}/adjust")
}

async fn adjustments_are_movements_and_bad_ones_change_nothing(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, batch) = (unique("lamp"), unique("lamps"));
    app.add_batch(&batch, &sku, 10, None).await;
    assert!(app.allocate(&unique("order"), &sku, 4).await.is_some());

    let body = json!({ "delta": -3, "reason": "damaged", "note": "forklift", "expected_qty": 10 });
    let (status, adjusted) = app.post(&adjust(&batch), &body).await;
    assert_eq!(status, 200, "{adjusted}");
    assert_eq!(
        (
            &adjusted["ref"],
            &adjusted["qty"],
            &adjusted["allocated"],
            &adjusted["available"]
        ),
        (&json!(batch), &json!(7), &json!(4), &json!(3))
    );
    let movement = &adjusted["movement"];
    assert_eq!(
        (
            &movement["delta"],
            &movement["qty_after"],
            &movement["reason"],
            &movement["note"]
        ),
        (&json!(-3), &json!(7), &json!("damaged"), &json!("forklift"))
    );
    assert!(
        movement["id"].is_u64() && movement["at"].is_string(),
        "{movement}"
    );
    let (_, listed) = app.get(&format!("/batches/{batch}/movements")).await;
    assert_eq!(listed[1], *movement, "the answer is the ledger's entry");

    let counted = json!({ "set_to": 7, "reason": "cycle_count" });
    assert_eq!(app.post(&adjust(&batch), &counted).await.0, 200);
    let expected = vec![
        (10, 10, "received".to_owned()),
        (-3, 7, "damaged".to_owned()),
        (0, 7, "cycle_count".to_owned()),
    ];
    assert_eq!(movements(&app, &batch).await, expected);

    let refused: [(Value, u16); 10] = [
        (json!({ "delta": -8, "reason": "lost" }), 400),
        (json!({ "delta": 0, "reason": "lost" }), 400),
        (json!({ "delta": 1, "set_to": 3, "reason": "found" }), 400),
        (json!({ "reason": "found" }), 400),
        (json!({ "set_to": -1, "reason": "found" }), 400),
        (json!({ "delta": 1, "reason": "received" }), 400),
        (
            json!({ "delta": 1, "reason": "found", "note": "x".repeat(1001) }),
            400,
        ),
        (json!({ "delta": 1.5, "reason": "found" }), 400),
        (
            json!({ "delta": 1, "reason": "found", "expected_qty": 6 }),
            409,
        ),
        (
            json!({ "delta": 1, "reason": "found", "expected_qty": -1 }),
            400,
        ),
    ];
    for (body, expected_status) in refused {
        let (status, answer) = app.post(&adjust(&batch), &body).await;
        assert_eq!(status, expected_status, "{body}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    assert_eq!(movements(&app, &batch).await, expected, "nothing moved");

    let unknown = unique("nowhere");
    assert_eq!(
        app.get(&format!("/batches/{unknown}/movements")).await.0,
        404
    );
    let found = json!({ "delta": 1, "reason": "found" });
    assert_eq!(app.post(&adjust(&unknown), &found).await.0, 404);
}

async fn two_stocktakers_on_one_count_exactly_one_wins(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, batch) = (unique("lamp"), unique("lamps"));
    app.add_batch(&batch, &sku, 10, None).await;
    for round in 0..5 {
        let seen = 10 - round;
        let first = json!({ "set_to": seen - 1, "reason": "cycle_count", "expected_qty": seen });
        let second = json!({ "delta": -2, "reason": "lost", "expected_qty": seen });
        let path = adjust(&batch);
        let (a, b) = tokio::join!(app.post(&path, &first), app.post(&path, &second));
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: {a:?} {b:?}");
        // Whoever lost saw nothing of the other's change: set it right.
        let (_, now) = app.get(&format!("/products/{sku}/batches")).await;
        let left = now["batches"][0]["purchased"].as_i64().expect("qty");
        let back = json!({ "set_to": seen - 1, "reason": "correction", "expected_qty": left });
        assert_eq!(app.post(&adjust(&batch), &back).await.0, 200);
    }
    let ledger = movements(&app, &batch).await;
    let sum: i64 = ledger.iter().map(|(delta, _, _)| delta).sum();
    assert_eq!(sum, 5, "received 10, then five rounds of one unit each");
    assert_eq!(ledger.len(), 1 + 5 * 2);
}

async fn a_reduction_below_the_allocated_moves_the_newest_lines(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, home, ship) = (unique("lamp"), unique("home"), unique("ship"));
    app.add_batch(&home, &sku, 10, None).await;
    app.add_batch(&ship, &sku, 10, Some("2027-01-04")).await;
    let (older, newer) = (unique("older"), unique("newer"));
    assert_eq!(app.allocate(&older, &sku, 4).await.as_deref(), Some(&*home));
    assert_eq!(app.allocate(&newer, &sku, 4).await.as_deref(), Some(&*home));

    let body = json!({ "delta": -5, "reason": "damaged" });
    let (status, adjusted) = app.post(&adjust(&home), &body).await;
    assert_eq!(status, 200, "{adjusted}");
    assert_eq!(
        (&adjusted["qty"], &adjusted["allocated"]),
        (&json!(5), &json!(4))
    );
    let on = |rows: Value| rows[0]["batchref"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        on(app.wait_for_allocations(&older).await),
        home,
        "the older stays"
    );
    // Reallocated before the answer: the bus handles a command's events
    // before it replies.
    assert_eq!(
        on(app.wait_for_allocations(&newer).await),
        ship,
        "the newer moves"
    );
}

async fn check_finds_a_quantity_changed_behind_the_ledgers_back(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, batch) = (unique("lamp"), unique("lamps"));
    app.add_batch(&batch, &sku, 10, None).await;
    let body = json!({ "delta": 2, "reason": "found" });
    assert_eq!(app.post(&adjust(&batch), &body).await.0, 200);
    let (code, report) = check(db.url()).await;
    assert_eq!(code, Some(0), "{report}");

    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(db.url()).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE batches SET quantity_out = quantity_out + 3 WHERE reference = '{batch}'"
    )))
    .execute(&mut conn)
    .await
    .expect("tampered");
    let (code, report) = check(db.url()).await;
    assert_eq!(code, Some(2), "{report}");
    let drift = &report["ledger_drift"];
    assert_eq!(drift["count"], 1, "{report}");
    assert_eq!(
        (
            &drift["examples"][0]["quantity"],
            &drift["examples"][0]["ledger_total"]
        ),
        (&json!(9), &json!(12))
    );
}

async fn a_change_of_quantity_over_redis_is_a_changed_movement(db: TestDatabase, redis: String) {
    let app = RunningApp::start_consuming(&db, &redis).await;
    let (sku, batch) = (unique("lamp"), unique("lamps"));
    app.add_batch(&batch, &sku, 10, None).await;
    let payload = json!({ "batchref": batch, "qty": 6 }).to_string();
    publish(&redis, "change_batch_quantity", &payload).await;
    let mut ledger = Vec::new();
    for _ in 0..250 {
        ledger = movements(&app, &batch).await;
        if ledger.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        ledger,
        [
            (10, 10, "received".to_owned()),
            (-4, 6, "changed".to_owned())
        ]
    );
}

async fn availability_is_exact_after_each_change(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sku, home, ship) = (unique("lamp"), unique("home"), unique("ship"));
    let path = format!("/products/{sku}/availability");
    assert_eq!(app.get(&path).await.0, 404, "no batches yet");
    app.add_batch(&home, &sku, 10, None).await;
    app.add_batch(&ship, &sku, 8, Some("2031-01-01")).await;
    let figures = |body: &Value| {
        let keys = [
            "on_hand",
            "incoming",
            "allocated",
            "held",
            "backordered",
            "available",
        ];
        keys.map(|key| body[key].as_u64().unwrap_or(u64::MAX))
    };
    let (status, body) = app.get(&path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(figures(&body), [10, 8, 0, 0, 0, 18]);
    assert_eq!(
        (&body["sku"], &body["next_eta"]),
        (&json!(sku), &json!("2031-01-01"))
    );

    assert!(app.allocate(&unique("order"), &sku, 6).await.is_some());
    let hold = json!({ "lines": [{ "sku": sku, "qty": 8 }] });
    assert_eq!(app.post("/holds", &hold).await.0, 201, "held at sea");
    let (_, body) = app.get(&path).await;
    assert_eq!(figures(&body), [10, 8, 6, 8, 0, 4]);
    assert_eq!(body["next_eta"], Value::Null, "nothing at sea is free");

    let lost = json!({ "delta": -4, "reason": "lost" });
    assert_eq!(app.post(&adjust(&home), &lost).await.0, 200);
    let (_, body) = app.get(&path).await;
    assert_eq!(figures(&body), [6, 8, 6, 8, 0, 0]);
}
