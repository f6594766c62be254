//! Whole orders through the bus: all lines or none, across products.

use domain::commands::AllocateOrder;
use domain::{OrderLines, Part, Shortage};
use futures::future::join_all;

use super::*;
use crate::handlers::AllocatedLine;

fn order(order: &str, lines: &[(&str, u32)]) -> AllocateOrder {
    let lines = lines
        .iter()
        .map(|(product, units)| (sku(product), qty(*units)))
        .collect();
    AllocateOrder {
        orderid: orderid(order),
        lines: OrderLines::new(lines).expect("valid lines"),
        split: false,
        hold_id: None,
    }
}

fn line(product: &str, units: u32, reference: &str) -> AllocatedLine {
    AllocatedLine {
        sku: sku(product),
        qty: qty(units),
        parts: vec![Part {
            batchref: batchref(reference),
            qty: qty(units),
        }],
    }
}

/// A shop with a sofa (2 in the warehouse, 5 due tomorrow) and chairs.
async fn shop() -> App {
    let app = app();
    app.add_batch("sofa-due", "SOFA", 5, Some(tomorrow())).await;
    app.add_batch("sofa-home", "SOFA", 2, None).await;
    app.add_batch("chairs", "CHAIR", 10, None).await;
    app.add_batch("lamps", "LAMP", 1, None).await;
    app
}

#[tokio::test]
async fn allocates_every_line_and_answers_in_the_order_they_were_listed() {
    let app = shop().await;
    let answer = app
        .bus
        .handle(order("o1", &[("SOFA", 1), ("CHAIR", 2), ("LAMP", 1)]))
        .await
        .expect("allocated");
    assert_eq!(
        answer,
        [
            line("SOFA", 1, "sofa-home"),
            line("CHAIR", 2, "chairs"),
            line("LAMP", 1, "lamps")
        ]
    );
    assert_eq!(
        app.view_of("o1").await,
        [
            ("CHAIR".into(), "chairs".into()),
            ("LAMP".into(), "lamps".into()),
            ("SOFA".into(), "sofa-home".into())
        ]
    );
    assert_eq!(app.allocated_to("CHAIR", "chairs").await, 2);
    assert_eq!(outbox_of(&app.store).len(), 3, "one message per line");
}

#[tokio::test]
async fn one_short_line_refuses_the_whole_order_and_names_what_is_available() {
    let app = shop().await;
    let refused = app
        .bus
        .handle(order("o1", &[("CHAIR", 2), ("SOFA", 6), ("LAMP", 2)]))
        .await;
    let Err(Error::Rejected(DomainError::OrderShort { orderid: o, short })) = refused else {
        panic!("refused whole: {refused:?}");
    };
    assert_eq!(o, orderid("o1"));
    assert_eq!(
        short,
        [
            Shortage {
                sku: sku("LAMP"),
                requested: qty(2),
                available: 1
            },
            Shortage {
                sku: sku("SOFA"),
                requested: qty(6),
                available: 5
            },
        ]
    );
    assert_eq!(app.allocated_to("CHAIR", "chairs").await, 0);
    assert!(app.view_of("o1").await.is_empty());
    assert!(outbox_of(&app.store).is_empty());
    assert!(
        app.emails().is_empty(),
        "an order refused whole sends no out-of-stock email"
    );
}

#[tokio::test]
async fn a_split_line_is_allocated_and_announced_part_by_part() {
    let app = shop().await;
    let split = AllocateOrder {
        split: true,
        ..order("o1", &[("SOFA", 6), ("CHAIR", 1)])
    };
    let answer = app.bus.handle(split).await.expect("allocated");
    let part = |reference: &str, units: u32| Part {
        batchref: batchref(reference),
        qty: qty(units),
    };
    assert_eq!(answer[0].parts, [part("sofa-home", 2), part("sofa-due", 4)]);
    assert_eq!(answer[1], line("CHAIR", 1, "chairs"));
    assert_eq!(
        app.view_of("o1").await,
        [
            ("CHAIR".into(), "chairs".into()),
            ("SOFA".into(), "sofa-due".into()),
            ("SOFA".into(), "sofa-home".into())
        ]
    );
    // Products are written in no particular order; each one's in order.
    let mut messages = outbox_of(&app.store);
    messages.sort();
    assert_eq!(
        messages,
        [
            ("o1".into(), "chairs".into()),
            ("o1".into(), "sofa-due".into()),
            ("o1".into(), "sofa-home".into())
        ],
        "one message per part"
    );

    // Short even split: all batches together have 1 sofa left.
    let refused = app
        .bus
        .handle(AllocateOrder {
            split: true,
            ..order("o2", &[("SOFA", 2)])
        })
        .await;
    let Err(Error::Rejected(DomainError::OrderShort { short, .. })) = refused else {
        panic!("refused whole: {refused:?}");
    };
    assert_eq!(short[0].available, 1);
    assert!(app.emails().is_empty());
}

#[tokio::test]
async fn an_unknown_sku_refuses_the_order() {
    let app = shop().await;
    let refused = app
        .bus
        .handle(order("o1", &[("CHAIR", 1), ("TABLE", 1)]))
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidSku(s)) if *s == sku("TABLE")),
        "{refused:?}"
    );
    assert_eq!(app.allocated_to("CHAIR", "chairs").await, 0);
}

#[tokio::test]
async fn the_same_order_again_gets_the_same_answer_and_changes_nothing() {
    let app = shop().await;
    let lines = [("SOFA", 2), ("CHAIR", 1)];
    let first = app.bus.handle(order("o1", &lines)).await.expect("first");
    let again = app.bus.handle(order("o1", &lines)).await.expect("again");
    assert_eq!(first, again);
    assert_eq!(app.allocated_to("SOFA", "sofa-home").await, 2);
    assert_eq!(outbox_of(&app.store).len(), 2);

    let changed = app
        .bus
        .handle(order("o1", &[("SOFA", 2), ("CHAIR", 3)]))
        .await;
    assert!(
        matches!(
            changed,
            Err(Error::Rejected(DomainError::AlreadyAllocated { .. }))
        ),
        "{changed:?}"
    );
    assert_eq!(app.allocated_to("CHAIR", "chairs").await, 1);
}

#[tokio::test]
async fn a_line_allocated_on_its_own_counts_as_the_orders() {
    let app = shop().await;
    assert_eq!(app.allocate("o1", "LAMP", 1).await, Some(batchref("lamps")));
    let answer = app
        .bus
        .handle(order("o1", &[("LAMP", 1), ("CHAIR", 1)]))
        .await
        .expect("allocated");
    assert_eq!(answer[0], line("LAMP", 1, "lamps"));
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 1);
}

#[tokio::test]
async fn of_twenty_orders_for_the_last_lamp_exactly_one_gets_it() {
    let app = shop().await;
    let orders = (0..20).map(|i| {
        let bus = Arc::clone(&app.bus);
        tokio::spawn(async move {
            bus.handle(order(&format!("o{i}"), &[("CHAIR", 1), ("LAMP", 1)]))
                .await
        })
    });
    let answers: Vec<_> = join_all(orders)
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran"))
        .collect();
    let allocated = answers.iter().filter(|answer| answer.is_ok()).count();
    let short = answers
        .iter()
        .filter(|answer| matches!(answer, Err(Error::Rejected(DomainError::OrderShort { .. }))))
        .count();
    assert_eq!((allocated, short), (1, 19), "{answers:?}");
    assert_eq!(app.allocated_to("LAMP", "lamps").await, 1);
    assert_eq!(
        app.allocated_to("CHAIR", "chairs").await,
        1,
        "no refused order left a chair behind"
    );
}
