//! The stock ledger through the bus: adjustments and the movements every
//! command leaves, stamped with the bus's time, and an adjustment that
//! bumps lines reallocating them as a quantity change does.

use domain::commands::AdjustBatch;
use domain::{Adjustment, AdjustmentReason, Change, Reason};

use super::*;
use crate::ports::MovementView;

fn adjust(reference: &str, change: Change, expected_qty: Option<u64>) -> AdjustBatch {
    AdjustBatch {
        reference: batchref(reference),
        adjustment: Adjustment {
            change,
            reason: AdjustmentReason::Lost,
            note: None,
            expected_qty,
        },
    }
}

async fn ledger(app: &App, reference: &str) -> Vec<MovementView> {
    app.store
        .movements(&batchref(reference))
        .await
        .expect("query")
        .expect("a known batch")
}

#[tokio::test]
async fn an_adjustment_answers_the_batch_after_it_and_its_movement_at_the_bus_time() {
    let app = app();
    app.add_batch("b1", "LAMP", 10, None).await;
    app.allocate("o1", "LAMP", 4).await;
    app.clock.advance(Duration::from_secs(60));
    let adjusted = app
        .bus
        .handle(adjust("b1", Change::By(-3), Some(10)))
        .await
        .expect("adjusted");
    assert_eq!(
        (adjusted.qty, adjusted.allocated, adjusted.available),
        (7, 4, 3)
    );
    assert_eq!(adjusted.at, app.bus.now());
    let movements = ledger(&app, "b1").await;
    assert_eq!(movements.len(), 2);
    assert_eq!(
        movements[1],
        MovementView::of(&adjusted.movement, adjusted.at)
    );
    assert_eq!(
        movements[1].reason,
        Reason::Adjusted(AdjustmentReason::Lost)
    );
    assert!(
        movements[0].at < movements[1].at,
        "the first a minute earlier"
    );
}

#[tokio::test]
async fn a_stale_adjustment_is_refused_and_commits_nothing() {
    let app = app();
    app.add_batch("b1", "LAMP", 10, None).await;
    let refused = app.bus.handle(adjust("b1", Change::To(3), Some(9))).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(DomainError::QuantityNotAsExpected { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(ledger(&app, "b1").await.len(), 1, "only its receipt");
    let unknown = app.bus.handle(adjust("nowhere", Change::By(1), None)).await;
    assert!(
        matches!(
            unknown,
            Err(Error::Rejected(DomainError::UnknownBatch { .. }))
        ),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn lines_an_adjustment_bumps_are_reallocated_and_published() {
    let app = app();
    app.add_batch("home", "LAMP", 10, None).await;
    app.add_batch("ship", "LAMP", 10, Some(tomorrow())).await;
    app.allocate("older", "LAMP", 5).await;
    app.allocate("newer", "LAMP", 5).await;
    app.bus
        .handle(adjust("home", Change::By(-5), None))
        .await
        .expect("adjusted");
    assert_eq!(app.view_of("older").await, [("LAMP".into(), "home".into())]);
    assert_eq!(app.view_of("newer").await, [("LAMP".into(), "ship".into())]);
    let published = outbox_of(&app.store);
    assert_eq!(
        published.last(),
        Some(&("newer".to_owned(), "ship".to_owned())),
        "the reallocation goes out as line_allocated: {published:?}"
    );
    assert_eq!(
        (
            app.allocated_to("LAMP", "home").await,
            app.allocated_to("LAMP", "ship").await
        ),
        (5, 5)
    );
}

#[tokio::test]
async fn commands_of_one_group_number_their_movements_apart() {
    let app = app();
    app.add_batch("b1", "LAMP", 10, None).await;
    let commands = (1..=5).map(|n| adjust("b1", Change::By(n), None));
    let answers = futures::future::join_all(commands.map(|c| app.bus.handle(c))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let movements = ledger(&app, "b1").await;
    let numbers: Vec<u64> = movements.iter().map(|m| m.number).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let sum: i64 = movements.iter().map(|m| m.delta).sum();
    assert_eq!(sum, 25);
    assert_eq!(movements.last().map(|m| m.qty_after), Some(25));
}

#[tokio::test]
async fn only_a_shrink_below_the_allocated_loads_the_batchs_lines() {
    let (app, store) = app_with_conflicts(0).await;
    app.allocate("o1", "LAMP", 6).await;
    let loads = || store.batch_line_loads.load(Ordering::SeqCst);
    app.bus
        .handle(adjust("b1", Change::By(5), None))
        .await
        .expect("grown");
    app.bus
        .handle(change_quantity("b1", 7))
        .await
        .expect("shrunk, above what is allocated");
    assert_eq!(loads(), 0, "the totals were enough");
    app.bus
        .handle(adjust("b1", Change::To(4), None))
        .await
        .expect("shrunk below");
    assert_eq!(loads(), 1, "the lines to take off were loaded");
    assert_eq!(app.allocated_to("LAMP", "b1").await, 0, "o1 had to go");
}

/// The lines read after the totals disagree with them (another instance
/// committed between the two reads): a lost race, run again, not a refusal.
#[tokio::test]
async fn lines_that_disagree_with_the_totals_read_before_them_are_a_conflict() {
    let (app, store) = app_with_conflicts(0).await;
    app.allocate("o1", "LAMP", 6).await;
    store.stale_batch_line_loads.store(1, Ordering::SeqCst);

    app.bus
        .handle(change_quantity("b1", 4))
        .await
        .expect("shrunk on the second attempt");

    assert_eq!(store.batch_line_loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        store.locking_begins.load(Ordering::SeqCst),
        1,
        "the retry locks"
    );
    assert_eq!(app.allocated_to("LAMP", "b1").await, 0, "o1 had to go");
}
