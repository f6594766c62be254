//! Commands that came in a message which may be delivered again (a Redis
//! stream entry): the commit records the message's key, and a second
//! delivery after that commit is answered, not run again.

use super::*;

fn change_quantity_command(reference: &str, units: u32) -> Command {
    Command::ChangeBatchQuantity(change_quantity(reference, units))
}

async fn movements(app: &App, reference: &str) -> usize {
    let movements = app.store.movements(&batchref(reference)).await;
    movements.expect("a query").expect("a batch").len()
}

#[tokio::test]
async fn a_message_delivered_again_after_its_commit_is_not_run_again() {
    let app = app();
    app.add_batch("b1", "LAMP", 10, None).await;
    let first = change_quantity_command("b1", 20);
    app.bus
        .dispatch_delivered(first.clone(), Some("change_batch_quantity/1-0"))
        .await
        .expect("handled");
    // Meanwhile another change: running the first again would undo it.
    app.bus
        .dispatch_delivered(
            change_quantity_command("b1", 30),
            Some("change_batch_quantity/2-0"),
        )
        .await
        .expect("handled");

    let again = app
        .bus
        .dispatch_delivered(first, Some("change_batch_quantity/1-0"))
        .await;

    assert!(matches!(again, Err(Error::AlreadyDelivered)), "{again:?}");
    assert_eq!(
        movements(&app, "b1").await,
        3,
        "received, 20, 30: no fourth"
    );
    let batches = app.store.batches(&sku("LAMP"), app.bus.now()).await;
    assert_eq!(batches.expect("a query")[0].purchased, 30);
}

#[tokio::test]
async fn an_out_of_stock_message_delivered_again_sends_no_second_email() {
    let app = app();
    app.add_batch("b1", "LAMP", 1, None).await;
    let command = Command::Allocate(allocate("o1", "LAMP", 5));
    app.bus
        .dispatch_delivered(command.clone(), Some("allocate/7-0"))
        .await
        .expect("handled: out of stock");
    let again = app
        .bus
        .dispatch_delivered(command, Some("allocate/7-0"))
        .await;
    assert!(matches!(again, Err(Error::AlreadyDelivered)), "{again:?}");
    assert_eq!(app.emails().len(), 1);
}

#[tokio::test]
async fn messages_without_a_key_and_refused_ones_run_each_time() {
    let app = app();
    app.add_batch("b1", "LAMP", 1, None).await;
    let command = Command::Allocate(allocate("o1", "LAMP", 5));
    for _ in 0..2 {
        app.bus.dispatch(command.clone()).await.expect("handled");
    }
    assert_eq!(app.emails().len(), 2, "pub/sub: each message is an event");

    // Refused: nothing committed, so nothing recorded; it is refused again.
    let unknown = Command::Allocate(allocate("o2", "SOFA", 1));
    for _ in 0..2 {
        let refused = app
            .bus
            .dispatch_delivered(unknown.clone(), Some("allocate/8-0"))
            .await;
        assert!(matches!(refused, Err(Error::InvalidSku(_))), "{refused:?}");
    }
}
