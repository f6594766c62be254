//! Two instances of the built binary on one PostgreSQL, racing whole
//! orders and checkout holds (some converted, some released) for more
//! units than there are. Afterwards no batch has more allocated and held
//! than it has, every order is whole or absent, every hold whole or
//! refused, and `allocation check` finds nothing wrong.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, unique};
use crate::maintenance::check;

per_backend!(mod on_postgres on [postgres] via on_database {
    orders_and_holds_racing_on_two_instances_never_over_commit,
});

async fn orders_and_holds_racing_on_two_instances_never_over_commit(db: TestDatabase) {
    let one = Arc::new(RunningApp::start(&db).await);
    let two = Arc::new(RunningApp::start(&db).await);
    let skus: Vec<String> = ["a", "b", "c"].iter().map(|n| unique(n)).collect();
    for sku in &skus {
        one.add_batch(&unique("stock"), sku, 12, None).await;
    }
    let shapes = [
        json!([{ "sku": skus[0], "qty": 1 }, { "sku": skus[1], "qty": 1 }]),
        json!([{ "sku": skus[2], "qty": 2 }, { "sku": skus[0], "qty": 1 }]),
        json!([{ "sku": skus[1], "qty": 1 }, { "sku": skus[2], "qty": 1 }]),
    ];
    let attempts = (0..30).map(|i| {
        let app = Arc::clone(if i % 2 == 0 { &one } else { &two });
        let lines = shapes[i % shapes.len()].clone();
        async move {
            let (held, hold) = app.post("/holds", &json!({ "lines": lines })).await;
            let orderid = unique("race");
            let mut order = json!({ "lines": lines });
            match i % 3 {
                // Converts its hold.
                0 if held == 201 => order["hold_id"] = hold["hold_id"].clone(),
                // Gives it back first.
                1 if held == 201 => {
                    let id = hold["hold_id"].as_str().unwrap_or_default();
                    assert_eq!(app.delete(&format!("/holds/{id}")).await, 204);
                }
                _ => {}
            }
            let path = format!("/orders/{orderid}/allocate");
            let (ordered, _) = app.post(&path, &order).await;
            (held, hold, orderid, ordered)
        }
    });
    let outcomes = join_all(attempts).await;

    for (held, hold, orderid, ordered) in &outcomes {
        match held {
            201 => {
                let id = hold["hold_id"].as_str().unwrap_or_default();
                let (status, shown) = one.get(&format!("/holds/{id}")).await;
                assert_eq!(status, 200);
                assert_eq!(shown["lines"].as_array().map(Vec::len), Some(2), "{shown}");
            }
            409 => assert!(hold["short"].is_array(), "{hold}"),
            other => panic!("hold answered {other}: {hold}"),
        }
        let (status, order) = two.get(&format!("/orders/{orderid}")).await;
        match ordered {
            202 => assert_eq!(order["lines"].as_array().map(Vec::len), Some(2), "{order}"),
            409 => assert_eq!(status, 404, "refused, so nothing allocated: {order}"),
            other => panic!("order answered {other}"),
        }
    }
    assert!(outcomes.iter().any(|(_, _, _, ordered)| *ordered == 202));
    for sku in &skus {
        let (_, product) = one.get(&format!("/products/{sku}/batches")).await;
        for batch in product["batches"].as_array().into_iter().flatten() {
            let number = |key: &str| batch[key].as_u64().unwrap_or(u64::MAX);
            assert!(
                number("allocated") + number("held") <= number("purchased"),
                "over-committed: {batch}"
            );
        }
    }
    let (code, report): (Option<i32>, Value) = check(db.url()).await;
    assert_eq!(code, Some(0), "{report:#}");
}
