//! Shipping and cancelling end to end (docs/contract.md section 6.3), on
//! the built binary over HTTP, against SQLite and PostgreSQL.

use serde_json::{Value, json};
use test_support::{TestDatabase, on_database, per_backend};

use crate::helpers::{RunningApp, unique};

per_backend!(mod every_backend on [sqlite, postgres] via on_database {
    ship_then_cancel_then_cancel_again,
    what_has_not_arrived_does_not_ship,
});

fn statuses(order: &Value) -> Vec<(String, String)> {
    order["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|line| {
            let text = |key: &str| line[key].as_str().unwrap_or_default().to_owned();
            (text("sku"), text("status"))
        })
        .collect()
}

async fn stock(app: &RunningApp, sku: &str) -> (Value, Value) {
    let (_, body) = app.get(&format!("/products/{sku}/batches")).await;
    let batch = &body["batches"][0];
    (batch["purchased"].clone(), batch["allocated"].clone())
}

async fn ship_then_cancel_then_cancel_again(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let (lamp, sofa) = (unique("a-lamp"), unique("b-sofa"));
    app.add_batch(&unique("lamps"), &lamp, 10, None).await;
    app.add_batch(&unique("sofas"), &sofa, 5, None).await;
    let orderid = unique("order");
    let lines = json!([{ "sku": lamp, "qty": 4 }, { "sku": sofa, "qty": 1 }]);
    let (status, _) = app
        .post(
            &format!("/orders/{orderid}/allocate"),
            &json!({ "lines": lines }),
        )
        .await;
    assert_eq!(status, 202);

    let ship = format!("/orders/{orderid}/ship");
    let (status, shipped) = app.post(&ship, &json!({ "skus": [lamp] })).await;
    assert_eq!(status, 200, "{shipped}");
    let expected = vec![
        (lamp.clone(), "shipped".to_owned()),
        (sofa.clone(), "allocated".to_owned()),
    ];
    assert_eq!(statuses(&shipped), expected);
    assert_eq!(stock(&app, &lamp).await, (json!(6), json!(0)));
    assert_eq!(
        app.post(&ship, &json!({ "skus": [lamp] })).await,
        (200, shipped)
    );
    assert_eq!(
        stock(&app, &lamp).await,
        (json!(6), json!(0)),
        "shipped once"
    );

    let deallocate = json!({ "orderid": orderid, "sku": lamp });
    assert_eq!(app.post("/deallocate", &deallocate).await.0, 409);

    let cancel = format!("/orders/{orderid}/cancel");
    let (status, cancelled) = app.post(&cancel, &json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    let expected = vec![
        (lamp.clone(), "shipped".to_owned()),
        (sofa.clone(), "cancelled".to_owned()),
    ];
    assert_eq!(statuses(&cancelled), expected);
    assert_eq!(stock(&app, &sofa).await, (json!(5), json!(0)));
    assert_eq!(
        app.post(&cancel, &json!({})).await,
        (200, cancelled.clone())
    );
    assert_eq!(stock(&app, &sofa).await, (json!(5), json!(0)), "freed once");
    let (_, order) = app.get(&format!("/orders/{orderid}")).await;
    assert_eq!(order, cancelled);

    let unknown = unique("nobody");
    assert_eq!(
        app.post(&format!("/orders/{unknown}/cancel"), &json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        app.post(&format!("/orders/{unknown}/ship"), &json!({}))
            .await
            .0,
        404
    );
}

async fn what_has_not_arrived_does_not_ship(db: TestDatabase) {
    let app = RunningApp::start(&db).await;
    let sku = unique("sku");
    app.add_batch(&unique("due"), &sku, 10, Some("2031-01-01"))
        .await;
    let orderid = unique("order");
    assert!(app.allocate(&orderid, &sku, 2).await.is_some());
    let (status, refused) = app
        .post(&format!("/orders/{orderid}/ship"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not arrived")),
        "{refused}"
    );
    assert_eq!(stock(&app, &sku).await, (json!(10), json!(2)));
}
