//! Whole orders end to end (docs/contract.md section 6.1), on the built
//! binary over HTTP, against SQLite and PostgreSQL.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::json;
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    an_order_is_allocated_whole_and_shows_line_by_line,
    an_order_short_on_one_line_is_refused_whole,
    of_twenty_orders_for_the_last_unit_exactly_one_is_accepted,
    bad_orders_are_refused_and_change_nothing,
    a_split_line_spreads_over_batches_and_shows_each_part,
});

async fn an_order_is_allocated_whole_and_shows_line_by_line(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (sofa, chair) = (unique("sofa"), unique("chair"));
    let (sofas, chairs) = (unique("sofas"), unique("chairs"));
    app.add_batch(&sofas, &sofa, 2, None).await;
    app.add_batch(&chairs, &chair, 10, Some("2031-01-01")).await;
    let orderid = unique("order");
    let body = json!({ "lines": [{ "sku": sofa, "qty": 1 }, { "sku": chair, "qty": 2 }] });

    let (status, answer) = app
        .post(&format!("/orders/{orderid}/allocate"), &body)
        .await;
    let expected = json!({
        "orderid": orderid,
        "lines": [
            { "sku": sofa, "qty": 1, "status": "allocated",
              "allocations": [{ "batchref": sofas, "qty": 1 }] },
            { "sku": chair, "qty": 2, "status": "allocated",
              "allocations": [{ "batchref": chairs, "qty": 2 }] },
        ]
    });
    assert_eq!((status, &answer), (202, &expected));

    // Sent again: the same answer, nothing allocated twice.
    let again = app
        .post(&format!("/orders/{orderid}/allocate"), &body)
        .await;
    assert_eq!(again, (202, expected));
    let (_, batches) = app.get(&format!("/products/{chair}/batches")).await;
    assert_eq!(batches["batches"][0]["allocated"], 2);

    let (status, order) = app.get(&format!("/orders/{orderid}")).await;
    assert_eq!(status, 200);
    let mut lines = vec![
        json!({ "sku": sofa, "qty": 1, "status": "allocated",
                "allocations": [{ "batchref": sofas, "qty": 1 }] }),
        json!({ "sku": chair, "qty": 2, "status": "allocated",
                "allocations": [{ "batchref": chairs, "qty": 2 }] }),
    ];
    lines.sort_by(|a, b| a["sku"].as_str().cmp(&b["sku"].as_str()));
    assert_eq!(order, json!({ "orderid": orderid, "lines": lines }));
    let (status, view) = app.get(&format!("/allocations/{orderid}")).await;
    assert_eq!(status, 200);
    assert_eq!(view.as_array().map(Vec::len), Some(2));

    // Another quantity for a line the order holds: refused.
    let changed = json!({ "lines": [{ "sku": sofa, "qty": 2 }] });
    let (status, _) = app
        .post(&format!("/orders/{orderid}/allocate"), &changed)
        .await;
    assert_eq!(status, 409);
    let (status, _) = app.get(&format!("/orders/{}", unique("nobody"))).await;
    assert_eq!(status, 404);
}

async fn an_order_short_on_one_line_is_refused_whole(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let skus = [unique("a"), unique("b"), unique("c")];
    app.add_batch(&unique("a"), &skus[0], 10, None).await;
    app.add_batch(&unique("b"), &skus[1], 3, None).await;
    app.add_batch(&unique("b-due"), &skus[1], 4, Some("2031-01-01"))
        .await;
    app.add_batch(&unique("c"), &skus[2], 10, None).await;
    let orderid = unique("order");
    let body = json!({ "lines": [
        { "sku": skus[0], "qty": 5 }, { "sku": skus[1], "qty": 5 }, { "sku": skus[2], "qty": 5 },
    ]});

    let (status, answer) = app
        .post(&format!("/orders/{orderid}/allocate"), &body)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        answer["short"],
        json!([{ "sku": skus[1], "requested": 5, "available": 4 }])
    );
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains(&skus[1]))
    );
    for sku in &skus {
        let (_, batches) = app.get(&format!("/products/{sku}/batches")).await;
        let allocated: Vec<_> = batches["batches"]
            .as_array()
            .expect("batches")
            .iter()
            .map(|batch| batch["allocated"].clone())
            .collect();
        assert!(allocated.iter().all(|units| units == 0), "{sku}: {batches}");
    }
    let (status, _) = app.get(&format!("/orders/{orderid}")).await;
    assert_eq!(status, 404);
}

async fn of_twenty_orders_for_the_last_unit_exactly_one_is_accepted(db: TestDatabase) {
    let app = Arc::new(RunningApp::start(&db).await);
    let (plenty, last) = (unique("plenty"), unique("last"));
    app.add_batch(&unique("plenty"), &plenty, 100, None).await;
    app.add_batch(&unique("last"), &last, 1, None).await;

    let orders = (0..20).map(|_| {
        let app = app.clone();
        let body = json!({ "lines": [{ "sku": plenty, "qty": 1 }, { "sku": last, "qty": 1 }] });
        async move {
            app.post(&format!("/orders/{}/allocate", unique("order")), &body)
                .await
        }
    });
    let answers = join_all(orders).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 202).count(),
            statuses.iter().filter(|s| **s == 409).count()
        ),
        (1, 19),
        "{answers:?}"
    );
    let (_, batches) = app.get(&format!("/products/{plenty}/batches")).await;
    assert_eq!(batches["batches"][0]["allocated"], 1, "no half orders");
}

async fn bad_orders_are_refused_and_change_nothing(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    app.add_batch(&unique("b"), &sku, 10, None).await;
    let orderid = unique("order");
    let path = format!("/orders/{orderid}/allocate");
    let line = json!({ "sku": sku, "qty": 1 });
    let unknown = unique("unknown");
    let cases = [
        (json!({ "lines": [] }), "from 1 to 100 lines"),
        (
            json!({ "lines": vec![line.clone(); 101] }),
            "from 1 to 100 lines",
        ),
        (json!({ "lines": [line, line] }), "at most once"),
        (json!({ "lines": [{ "sku": sku, "qty": 0 }] }), "qty"),
        (
            json!({ "lines": [{ "sku": unknown, "qty": 1 }] }),
            "Invalid sku",
        ),
        (json!({ "lines": [line], "split": "yes" }), ""),
        (json!({ "lines": "many" }), ""),
    ];
    for (body, reason) in cases {
        let (status, answer) = app.post(&path, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let (_, batches) = app.get(&format!("/products/{sku}/batches")).await;
    assert_eq!(batches["batches"][0]["allocated"], 0);
    // Explicit defaults are what the contract's clients send.
    let (status, _) = app
        .post(
            &path,
            &json!({ "lines": [line], "split": false, "hold_id": null }),
        )
        .await;
    assert_eq!(status, 202);
}

/// A line no batch can take whole: refused without `split`, naming what
/// the best batch has; spread over the batches with it, warehouse first,
/// each part shown by both queries and freed by one deallocation.
async fn a_split_line_spreads_over_batches_and_shows_each_part(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sofa = unique("sofa");
    let (shipment, warehouse) = (unique("ship"), unique("home"));
    app.add_batch(&shipment, &sofa, 5, Some("2031-01-01")).await;
    app.add_batch(&warehouse, &sofa, 3, None).await;
    let orderid = unique("order");
    let path = format!("/orders/{orderid}/allocate");
    let line = json!([{ "sku": sofa, "qty": 6 }]);

    let (status, answer) = app.post(&path, &json!({ "lines": line })).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        answer["short"],
        json!([{ "sku": sofa, "requested": 6, "available": 5 }])
    );
    let too_many = json!({ "lines": [{ "sku": sofa, "qty": 9 }], "split": true });
    let (status, answer) = app.post(&path, &too_many).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["short"][0]["available"], 8, "all batches together");

    let (status, answer) = app
        .post(&path, &json!({ "lines": line, "split": true }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let parts = json!([
        { "batchref": warehouse, "qty": 3 },
        { "batchref": shipment, "qty": 3 },
    ]);
    assert_eq!(answer["lines"][0]["allocations"], parts);

    let (_, order) = app.get(&format!("/orders/{orderid}")).await;
    let line = &order["lines"][0];
    assert_eq!(
        (&line["qty"], &line["status"]),
        (&json!(6), &json!("allocated"))
    );
    // By batch, in the order the batches were created.
    let shown: Vec<&str> = line["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|part| part["batchref"].as_str())
        .collect();
    assert_eq!(shown, [shipment.as_str(), warehouse.as_str()]);
    let (_, view) = app.get(&format!("/allocations/{orderid}")).await;
    assert_eq!(view.as_array().map(Vec::len), Some(2), "{view}");

    let (status, freed) = app
        .post("/deallocate", &json!({ "orderid": orderid, "sku": sofa }))
        .await;
    assert_eq!(status, 200, "{freed}");
    assert_eq!(freed["allocations"].as_array().map(Vec::len), Some(2));
    let (_, batches) = app.get(&format!("/products/{sofa}/batches")).await;
    let allocated: Vec<&serde_json::Value> = batches["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|batch| &batch["allocated"])
        .collect();
    assert_eq!(allocated, [&json!(0), &json!(0)]);
}
