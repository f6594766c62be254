//! Whole orders on every backend: all lines or none, written in one
//! commit, read back line by line, and never half allocated however many
//! orders (and instances) race for the same stock.

use domain::commands::AllocateOrder;
use domain::{Allocation, BatchRef, DomainError, OrderId, OrderLines, Sku};
use futures::future::join_all;
use service_layer::handlers::AllocatedLine;
use service_layer::ports::{LineStatus, OrderLineView, Outbox, PartView, ReadModel};
use service_layer::{Error, Store};
use test_support::per_backend;

use crate::backends::{one_store, two_instances};
use crate::helpers::*;
use crate::watched::bounded;

per_backend!(mod every_backend on [memory, sqlite, postgres] via one_store {
    an_order_is_written_whole_and_read_back_line_by_line,
    a_short_order_writes_nothing,
    a_split_line_is_stored_part_by_part_and_a_part_moves_alone,
    parts_of_one_line_joining_on_one_batch_in_one_commit_are_summed,
});

per_backend!(mod across_instances on [memory, postgres] via two_instances {
    orders_racing_on_two_instances_are_never_half_allocated,
});

fn order(orderid: &OrderId, lines: &[(&Sku, u32)]) -> AllocateOrder {
    let lines = lines
        .iter()
        .map(|(sku, units)| ((*sku).clone(), qty(*units)));
    AllocateOrder {
        orderid: orderid.clone(),
        lines: OrderLines::new(lines.collect()).expect("valid lines"),
        split: false,
        hold_id: None,
    }
}

fn part(batch: &BatchRef, units: u64) -> PartView {
    PartView {
        batchref: batch.clone(),
        qty: units,
    }
}

async fn place<S: Store>(
    bus: &Bus<S>,
    orderid: &OrderId,
    lines: &[(&Sku, u32)],
) -> Result<Vec<AllocatedLine>, Error> {
    bus.bus.handle(order(orderid, lines)).await
}

async fn an_order_is_written_whole_and_read_back_line_by_line<S: Store + ReadModel + Outbox>(
    store: S,
) {
    let bus = bus(&store);
    let [a, b, c] = three_skus();
    let (batch_a, batch_b, batch_c) = (batchref("a"), batchref("b"), batchref("c"));
    bus.add_batch(&batch_a, &a, 10, None).await;
    bus.add_batch(&batch_b, &b, 10, None).await;
    bus.add_batch(&batch_c, &c, 10, None).await;
    let o = orderid("o");

    let answer = place(&bus, &o, &[(&c, 3), (&a, 1), (&b, 2)]).await;
    let skus: Vec<Sku> = answer
        .expect("allocated")
        .into_iter()
        .map(|line| line.sku)
        .collect();
    assert_eq!(skus, [c.clone(), a.clone(), b.clone()], "as listed");

    let line = |sku: &Sku, units: u64, batch: &BatchRef| OrderLineView {
        sku: sku.clone(),
        qty: units,
        status: LineStatus::Allocated,
        parts: vec![PartView {
            batchref: batch.clone(),
            qty: units,
        }],
    };
    assert_eq!(
        store.order(&o).await.expect("query"),
        [
            line(&a, 1, &batch_a),
            line(&b, 2, &batch_b),
            line(&c, 3, &batch_c)
        ]
    );
    assert_eq!(outbox_of(&store).await.len(), 3);
    assert_eq!(store.order(&orderid("other")).await.expect("query"), []);

    // Sent again: the same answer, nothing written twice.
    place(&bus, &o, &[(&c, 3), (&a, 1), (&b, 2)])
        .await
        .expect("again");
    assert_eq!(allocated_totals(&batch_views(&store, &c).await), [3]);
    // The three messages are claimed above: any new one would show.
    assert_eq!(outbox_of(&store).await, [], "no message written twice");
}

async fn a_short_order_writes_nothing<S: Store + ReadModel + Outbox>(store: S) {
    let bus = bus(&store);
    let [a, b, _] = three_skus();
    bus.add_batch(&batchref("a"), &a, 10, None).await;
    bus.add_batch(&batchref("b"), &b, 1, None).await;
    let o = orderid("o");

    let refused = place(&bus, &o, &[(&a, 5), (&b, 2)]).await;
    let Err(Error::Rejected(DomainError::OrderShort { short, .. })) = refused else {
        panic!("refused whole: {refused:?}");
    };
    assert_eq!(short.len(), 1);
    assert_eq!((&short[0].sku, short[0].available), (&b, 1));
    assert_eq!(allocated_totals(&batch_views(&store, &a).await), [0]);
    assert_eq!(store.order(&o).await.expect("query"), []);
    assert!(outbox_of(&store).await.is_empty());
}

/// A line split over two batches is two rows, read back as two parts and
/// announced as two messages. When one batch shrinks, only its part moves:
/// here onto the other batch, where it joins the line's part there.
async fn a_split_line_is_stored_part_by_part_and_a_part_moves_alone<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let sku = sku();
    let (home, ship) = (batchref("home"), batchref("ship"));
    bus.add_batch(&home, &sku, 10, None).await;
    bus.add_batch(&ship, &sku, 12, Some(date(2031, 1, 1))).await;
    let o = orderid("o");

    let split = AllocateOrder {
        split: true,
        ..order(&o, &[(&sku, 15)])
    };
    let answer = bus.bus.handle(split).await.expect("allocated");
    let parts: Vec<_> = answer[0]
        .parts
        .iter()
        .map(|p| (p.batchref.clone(), p.qty.get()))
        .collect();
    assert_eq!(parts, [(home.clone(), 10), (ship.clone(), 5)]);
    let line = |parts: Vec<PartView>| OrderLineView {
        sku: sku.clone(),
        qty: parts.iter().map(|p| p.qty).sum(),
        status: LineStatus::Allocated,
        parts,
    };
    assert_eq!(
        store.order(&o).await.expect("query"),
        [line(vec![part(&home, 10), part(&ship, 5)])]
    );
    assert_eq!(
        allocations(&store, &o).await,
        [view(&sku, &home), view(&sku, &ship)]
    );
    assert_eq!(
        outbox_of(&store).await,
        [(o.clone(), home.clone()), (o.clone(), ship.clone())]
    );
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), [10, 5]);

    // The shipment grows to 20, the warehouse keeps 4: the line's 10 there
    // leave it, and the shipment, with 15 free, takes them beside the 5 it
    // holds.
    for (batch, units) in [(&ship, 20), (&home, 4)] {
        bus.bus
            .handle(domain::commands::ChangeBatchQuantity {
                reference: batch.clone(),
                qty: qty(units),
            })
            .await
            .expect("changed");
    }
    assert_eq!(
        store.order(&o).await.expect("query"),
        [line(vec![part(&ship, 15)])]
    );
    assert_eq!(allocations(&store, &o).await, [view(&sku, &ship)]);
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), [0, 15]);
    assert_eq!(outbox_of(&store).await, [(o.clone(), ship.clone())]);

    // Deallocating frees the whole line.
    bus.deallocate(&o, &sku).await.expect("deallocated");
    assert_eq!(store.order(&o).await.expect("query"), []);
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), [0, 0]);
}

/// Two parts of one line reallocated to the same batch in one unit of work
/// (a group of shrinks) join in the model: the commit writes one row
/// of their sum, on every backend.
async fn parts_of_one_line_joining_on_one_batch_in_one_commit_are_summed<
    S: Store + ReadModel + Outbox,
>(
    store: S,
) {
    let bus = bus(&store);
    let sku = sku();
    let home = batchref("home");
    bus.add_batch(&home, &sku, 10, None).await;
    let o = orderid("o");

    let mut product = load_product(&store, &sku, service_layer::ports::Lines::OfOrder(&o)).await;
    let stored = product.version();
    for units in [2, 3] {
        assert_eq!(
            product.reallocate(line(&o, &sku, units)),
            Allocation::Batch(home.clone())
        );
    }
    commit(&store, changes_of(&mut product, Some(stored)))
        .await
        .expect("committed");
    let line = OrderLineView {
        sku: sku.clone(),
        qty: 5,
        status: LineStatus::Allocated,
        parts: vec![part(&home, 5)],
    };
    assert_eq!(store.order(&o).await.expect("query"), [line]);
    assert_eq!(allocations(&store, &o).await, [view(&sku, &home)]);
    assert_eq!(allocated_totals(&batch_views(&store, &sku).await), [5]);
}

/// Two instances each send orders of two or three of the same three SKUs,
/// listed in different orders, for more units than there are: whatever
/// wins, no batch is over-allocated, every order is allocated whole or
/// not at all, and none deadlocks.
async fn orders_racing_on_two_instances_are_never_half_allocated<S: Store + ReadModel + Outbox>(
    one: S,
    two: S,
) {
    let (bus_one, bus_two) = (bus(&one), bus(&two));
    let skus = three_skus();
    for sku in &skus {
        bus_one.add_batch(&batchref("stock"), sku, 12, None).await;
    }
    let [a, b, c] = &skus;
    let shapes: [&[(&Sku, u32)]; 4] = [
        &[(a, 1), (b, 1)],
        &[(c, 1), (b, 1), (a, 1)],
        &[(b, 2), (c, 1)],
        &[(c, 1), (a, 2)],
    ];
    let orders: Vec<(OrderId, usize)> = (0..40)
        .map(|i| (orderid("race"), i % shapes.len()))
        .collect();
    let attempts = orders.iter().enumerate().map(|(i, (o, shape))| {
        let bus = if i % 2 == 0 { &bus_one } else { &bus_two };
        place(bus, o, shapes[*shape])
    });
    let answers = bounded("racing orders", join_all(attempts)).await;

    for ((o, shape), answer) in orders.iter().zip(&answers) {
        let lines = one.order(o).await.expect("query");
        match answer {
            Ok(_) => assert_eq!(lines.len(), shapes[*shape].len(), "{o} whole"),
            Err(Error::Rejected(DomainError::OrderShort { .. })) => {
                assert_eq!(lines, [], "{o} refused, so nothing allocated")
            }
            Err(other) => panic!("{o}: {other:?}"),
        }
    }
    let won = answers.iter().filter(|answer| answer.is_ok()).count();
    assert!(won > 0, "some orders got stock");
    for sku in &skus {
        let views = batch_views(&one, sku).await;
        assert!(
            views.iter().all(|v| v.allocated <= v.purchased),
            "{views:?}"
        );
    }
}
