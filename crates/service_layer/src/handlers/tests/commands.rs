//! Each command's handler, as the book tests them: through the bus.

use super::*;

mod add_batch {
    use super::*;

    #[tokio::test]
    async fn for_new_product() {
        let app = app();
        app.add_batch("b1", "CRUNCHY-ARMCHAIR", 100, None).await;
        let batches = app
            .store
            .batches(&sku("CRUNCHY-ARMCHAIR"), chrono::Utc::now())
            .await
            .expect("query");
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].purchased, 100);
    }

    #[tokio::test]
    async fn for_existing_product() {
        let app = app();
        app.add_batch("b1", "GARISH-RUG", 100, None).await;
        app.add_batch("b2", "GARISH-RUG", 99, None).await;
        let batches = app
            .store
            .batches(&sku("GARISH-RUG"), chrono::Utc::now())
            .await
            .expect("query");
        let refs: Vec<_> = batches.iter().map(|b| b.reference.to_string()).collect();
        assert_eq!(refs, ["b1", "b2"]);
    }

    #[tokio::test]
    async fn the_same_batch_twice_is_accepted_once() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        app.bus
            .handle(create_batch("b1", "LAMP", 10, None))
            .await
            .expect("idempotent");
        assert_eq!(
            app.store
                .batches(&sku("LAMP"), chrono::Utc::now())
                .await
                .expect("query")
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_reference_taken_by_another_sku_is_refused() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        let refused = app.bus.handle(create_batch("b1", "TABLE", 10, None)).await;
        assert!(
            matches!(
                refused,
                Err(Error::Rejected(DomainError::BatchExists { .. }))
            ),
            "{refused:?}"
        );
        assert!(
            app.store
                .batches(&sku("TABLE"), chrono::Utc::now())
                .await
                .expect("query")
                .is_empty()
        );
    }
}

mod allocate {
    use super::*;

    #[tokio::test]
    async fn allocates_and_updates_the_read_model() {
        let app = app();
        app.add_batch("batch1", "COMPLICATED-LAMP", 100, None).await;
        let batch = app
            .bus
            .handle(allocate("o1", "COMPLICATED-LAMP", 10))
            .await
            .expect("allocated");
        assert_eq!(batch, Allocation::Batch(batchref("batch1")));
        assert_eq!(app.allocated_to("COMPLICATED-LAMP", "batch1").await, 10);
        assert_eq!(
            app.view_of("o1").await,
            [("COMPLICATED-LAMP".into(), "batch1".into())]
        );
    }

    #[tokio::test]
    async fn errors_for_invalid_sku() {
        let app = app();
        app.add_batch("b1", "AREALSKU", 100, None).await;
        let result = app.bus.handle(allocate("o1", "NONEXISTENTSKU", 10)).await;
        assert!(matches!(&result, Err(Error::InvalidSku(s)) if s.as_str() == "NONEXISTENTSKU"));
        assert_eq!(
            result.map(drop).map_err(|e| e.to_string()),
            Err("Invalid sku NONEXISTENTSKU".to_string())
        );
    }

    #[tokio::test]
    async fn puts_allocated_events_in_the_outbox_and_wakes_the_relay() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        app.allocate("o1", "LAMP", 3).await;
        assert_eq!(outbox_of(&app.store), [("o1".into(), "b1".into())]);
        let messages = app.store.unsent_messages();
        assert!(!messages[0].message_id.is_nil());
        // The relay is told, so it publishes now rather than at its next poll.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            app.outbox_written.of(Destination::Messages).notified(),
        )
        .await
        .expect("the relay was woken");
    }

    /// The email is an outbox message, committed with the command that
    /// found no stock (which changed no product), and the notifications
    /// relay is woken for it, not the messages one.
    #[tokio::test]
    async fn out_of_stock_puts_one_email_in_the_outbox_and_wakes_its_relay() {
        let app = app();
        app.add_batch("b1", "POPULAR-CURTAINS", 9, None).await;
        let batch = app
            .bus
            .handle(allocate("o1", "POPULAR-CURTAINS", 10))
            .await
            .expect("handled");
        assert_eq!(batch, Allocation::OutOfStock);
        let messages = app.store.unsent_messages();
        assert_eq!(messages.len(), 1, "exactly one row: the email");
        assert_eq!(
            messages[0].message.destination(),
            Destination::Notifications
        );
        let sent = app.emails();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].id, messages[0].message_id);
        assert_eq!(sent[0].subject, "Out of stock for POPULAR-CURTAINS");
        assert!(sent[0].body.contains("Out of stock for POPULAR-CURTAINS"));
        assert!(app.view_of("o1").await.is_empty());
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            app.outbox_written.of(Destination::Notifications).notified(),
        )
        .await
        .expect("the notifications relay was woken");
    }

    #[tokio::test]
    async fn the_same_line_twice_is_allocated_once() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        app.bus
            .handle(create_batch("b2", "LAMP", 10, Some(tomorrow())))
            .await
            .expect("created");
        let first = app
            .bus
            .handle(allocate("o1", "LAMP", 6))
            .await
            .expect("allocated");
        let again = app
            .bus
            .handle(allocate("o1", "LAMP", 6))
            .await
            .expect("idempotent");
        assert_eq!(first, again);
        assert_eq!(app.allocated_to("LAMP", "b1").await, 6);
        assert_eq!(app.allocated_to("LAMP", "b2").await, 0);
        assert_eq!(outbox_of(&app.store).len(), 1, "nothing new to publish");
    }

    #[tokio::test]
    async fn the_same_line_with_another_quantity_is_refused() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        app.allocate("o1", "LAMP", 6).await;
        let refused = app.bus.handle(allocate("o1", "LAMP", 2)).await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(DomainError::AlreadyAllocated { .. }))
        ));
        assert_eq!(app.allocated_to("LAMP", "b1").await, 6);
    }
}

mod deallocate {
    use super::*;

    #[tokio::test]
    async fn frees_stock_without_reallocating() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        app.add_batch("b2", "LAMP", 10, None).await;
        app.allocate("o1", "LAMP", 10).await;

        let from = app
            .bus
            .handle(Deallocate {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
            })
            .await
            .expect("deallocated");

        let from: Vec<_> = from.into_iter().map(|part| part.batchref).collect();
        assert_eq!(from, [batchref("b1")]);
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
        assert_eq!(app.allocated_to("LAMP", "b2").await, 0, "not reallocated");
        assert!(app.view_of("o1").await.is_empty());
        assert_eq!(outbox_of(&app.store).len(), 1, "only the first allocation");
    }

    #[tokio::test]
    async fn an_order_that_is_not_allocated_is_refused() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        let refused = app
            .bus
            .handle(Deallocate {
                orderid: orderid("o9"),
                sku: sku("LAMP"),
            })
            .await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(DomainError::NotAllocated { .. }))
        ));
    }
}

mod change_batch_quantity {
    use super::*;

    #[tokio::test]
    async fn changes_available_quantity() {
        let app = app();
        app.add_batch("batch1", "ADORABLE-SETTEE", 100, None).await;
        app.bus
            .handle(change_quantity("batch1", 50))
            .await
            .expect("changed");
        let batches = app
            .store
            .batches(&sku("ADORABLE-SETTEE"), chrono::Utc::now())
            .await
            .expect("query");
        assert_eq!(batches[0].available(), 50);
    }

    #[tokio::test]
    async fn reallocates_if_necessary() {
        let app = app();
        app.add_batch("batch1", "INDIFFERENT-TABLE", 50, None).await;
        app.bus
            .handle(create_batch(
                "batch2",
                "INDIFFERENT-TABLE",
                50,
                Some(tomorrow()),
            ))
            .await
            .expect("created");
        app.allocate("order1", "INDIFFERENT-TABLE", 20).await;
        app.allocate("order2", "INDIFFERENT-TABLE", 20).await;
        assert_eq!(app.allocated_to("INDIFFERENT-TABLE", "batch1").await, 40);

        app.bus
            .handle(change_quantity("batch1", 25))
            .await
            .expect("changed");

        assert_eq!(app.allocated_to("INDIFFERENT-TABLE", "batch1").await, 20);
        assert_eq!(app.allocated_to("INDIFFERENT-TABLE", "batch2").await, 20);
        assert_eq!(
            app.view_of("order2").await,
            [("INDIFFERENT-TABLE".into(), "batch2".into())]
        );
        let last = outbox_of(&app.store).pop().expect("reallocation announced");
        assert_eq!(last, ("order2".into(), "batch2".into()));
    }

    /// Never allocated nowhere in between: a client that sent the line
    /// again at that moment had it allocated twice, by its request and by
    /// the book's follow-up `Allocate` (found by the two-instance load test).
    #[tokio::test]
    async fn a_bumped_line_moves_in_the_shrinks_own_commit() {
        let (app, store) = app_with_conflicts(0).await;
        app.bus
            .handle(create_batch("later", "LAMP", 10, Some(tomorrow())))
            .await
            .expect("created");
        app.allocate("o1", "LAMP", 8).await;
        let commits_before = store.commits_tried.load(Ordering::SeqCst);

        app.bus
            .handle(change_quantity("b1", 5))
            .await
            .expect("changed");

        assert_eq!(
            store.commits_tried.load(Ordering::SeqCst) - commits_before,
            1
        );
        assert_eq!(app.allocated_to("LAMP", "later").await, 8);
        assert_eq!(app.view_of("o1").await, [("LAMP".into(), "later".into())]);
    }

    #[tokio::test]
    async fn several_lines_bumped_by_one_change_are_all_reallocated() {
        let app = app();
        app.add_batch("wh", "SOFA", 30, None).await;
        app.bus
            .handle(create_batch("ship", "SOFA", 30, Some(tomorrow())))
            .await
            .expect("created");
        for order in ["o1", "o2", "o3"] {
            app.allocate(order, "SOFA", 10).await;
        }

        app.bus
            .handle(change_quantity("wh", 5))
            .await
            .expect("changed");

        assert_eq!(app.allocated_to("SOFA", "wh").await, 0);
        assert_eq!(app.allocated_to("SOFA", "ship").await, 30);
        for order in ["o1", "o2", "o3"] {
            assert_eq!(app.view_of(order).await, [("SOFA".into(), "ship".into())]);
        }
    }

    #[tokio::test]
    async fn a_bumped_line_with_nowhere_to_go_is_reported_out_of_stock() {
        let app = app();
        app.add_batch("only", "SOFA", 10, None).await;
        app.allocate("o1", "SOFA", 10).await;

        app.bus
            .handle(change_quantity("only", 5))
            .await
            .expect("changed");

        assert_eq!(app.allocated_to("SOFA", "only").await, 0);
        assert!(app.view_of("o1").await.is_empty());
        assert_eq!(app.emails().len(), 1);
    }

    #[tokio::test]
    async fn an_unknown_batch_is_refused() {
        let app = app();
        let refused = app.bus.handle(change_quantity("nope", 5)).await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(DomainError::UnknownBatch { .. }))
        ));
    }
}

mod dispatch {
    use super::*;

    #[tokio::test]
    async fn routes_commands_that_arrive_as_data() {
        let app = app();
        app.bus
            .dispatch(Command::CreateBatch(create_batch("b1", "LAMP", 10, None)))
            .await
            .expect("created");
        app.bus
            .dispatch(Command::Allocate(allocate("o1", "LAMP", 4)))
            .await
            .expect("allocated");
        app.bus
            .dispatch(Command::ChangeBatchQuantity(change_quantity("b1", 8)))
            .await
            .expect("changed");
        assert_eq!(app.allocated_to("LAMP", "b1").await, 4);
        app.bus
            .dispatch(Command::Deallocate(Deallocate {
                orderid: orderid("o1"),
                sku: sku("LAMP"),
            }))
            .await
            .expect("deallocated");
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
    }
}
