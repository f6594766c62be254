//! How the bus runs commands: callers that leave, version conflicts and
//! their retries, and groups sharing one unit of work.

use super::*;

/// A caller that goes away (a client hanging up, a request timeout) once
/// its command has begun stops waiting, but the command still runs to its
/// end, and a shutdown waits for it.
#[tokio::test]
async fn a_command_whose_caller_left_once_it_began_still_commits() {
    use futures::FutureExt;

    let (app, _) = app_with_conflicts(0).await;
    let mut handling = Box::pin(app.bus.handle(allocate("o1", "LAMP", 2)));
    assert!(
        (&mut handling).now_or_never().is_none(),
        "begun: its store yields between load and commit"
    );
    drop(handling);
    app.bus.finish_running_commands().await;
    assert_eq!(app.allocated_to("LAMP", "b1").await, 2);
    assert_eq!(
        app.store
            .allocations(&orderid("o1"))
            .await
            .expect("query")
            .len(),
        1,
        "the read model committed with it"
    );
}

/// Commands whose callers left while they waited for their turn (behind a
/// command on the same product) never begin: under overload, work nobody
/// waits for any more is not done.
#[tokio::test]
async fn a_command_whose_caller_left_before_it_began_never_runs() {
    use futures::FutureExt;

    let (app, _) = app_with_conflicts(0).await;
    let mut first = Box::pin(app.bus.handle(allocate("o1", "LAMP", 2)));
    assert!((&mut first).now_or_never().is_none(), "begun, holding LAMP");
    for waiting in [
        Command::Allocate(allocate("o2", "LAMP", 3)),
        Command::CreateBatch(create_batch("b2", "LAMP", 5, None)),
    ] {
        let mut handling = Box::pin(app.bus.dispatch(waiting));
        assert!((&mut handling).now_or_never().is_none(), "waits for LAMP");
        drop(handling);
    }
    assert_eq!(
        first.await.expect("allocated"),
        Allocation::Batch(batchref("b1"))
    );
    app.bus.finish_running_commands().await;
    assert_eq!(app.allocated_to("LAMP", "b1").await, 2, "only o1");
    let batches = app
        .store
        .batches(&sku("LAMP"), chrono::Utc::now())
        .await
        .expect("query");
    assert_eq!(batches.len(), 1, "b2 was never created: {batches:?}");
}

mod retries {
    use super::*;
    use crate::memory::RecordingNotifications;
    use crate::relay::{NotificationPublisher, OutboxRelay, RelaySettings};

    #[tokio::test(start_paused = true)]
    async fn a_version_conflict_runs_the_command_again() {
        let (app, store) = app_with_conflicts(2).await;
        let batch = app
            .bus
            .handle(allocate("o1", "LAMP", 4))
            .await
            .expect("allocated in the end");
        assert_eq!(batch, Allocation::Batch(batchref("b1")));
        assert_eq!(store.commits_tried.load(Ordering::SeqCst), 3);
        assert_eq!(
            app.allocated_to("LAMP", "b1").await,
            4,
            "allocated exactly once"
        );
        assert_eq!(
            outbox_of(&app.store).len(),
            1,
            "events of failed attempts are dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn endless_conflicts_give_up_with_a_contention_error() {
        let (app, store) = app_with_conflicts(u32::MAX).await;
        let result = app.bus.handle(allocate("o1", "LAMP", 4)).await;
        let attempts = RetryPolicy::default().command_attempts;
        assert!(matches!(result, Err(Error::Contention { attempts: a }) if a == attempts));
        assert_eq!(store.commits_tried.load(Ordering::SeqCst), attempts);
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
    }

    #[tokio::test]
    async fn two_units_of_work_on_one_product_conflict_at_commit() {
        let app = app();
        app.add_batch("b1", "LAMP", 10, None).await;
        let mut first = UnitOfWork::begin(&app.store, chrono::Utc::now())
            .await
            .expect("begin");
        let mut second = UnitOfWork::begin(&app.store, chrono::Utc::now())
            .await
            .expect("begin");
        for (uow, order) in [(&mut first, "o1"), (&mut second, "o2")] {
            let product = uow
                .products()
                .get_for_order(&sku("LAMP"), &orderid(order))
                .await
                .expect("load")
                .expect("exists");
            let line = domain::OrderLine {
                orderid: orderid(order),
                sku: sku("LAMP"),
                qty: qty(1),
            };
            product.allocate(line).expect("allocates");
        }
        first.commit().await.expect("first commit wins");
        let lost = second.commit().await;
        assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
        assert_eq!(app.allocated_to("LAMP", "b1").await, 1);
    }

    #[tokio::test]
    async fn after_a_conflict_commands_on_the_product_lock_it_from_the_start() {
        let (app, store) = app_with_conflicts(1).await;
        app.bus
            .handle(allocate("o1", "LAMP", 1))
            .await
            .expect("allocated on the second attempt");
        assert_eq!(
            store.locking_begins.load(Ordering::SeqCst),
            1,
            "the retry locks the product"
        );
        app.bus
            .handle(allocate("o2", "LAMP", 1))
            .await
            .expect("allocated");
        assert_eq!(
            store.locking_begins.load(Ordering::SeqCst),
            2,
            "the next command on the contended product locks it at once"
        );
        assert_eq!(store.commits_tried.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn commands_on_one_product_queue_and_commit_together_instead_of_conflicting() {
        let (app, store) = app_with_conflicts(0).await;
        for n in 0..10 {
            app.allocate(&format!("o{n}"), "LAMP", 1).await;
        }
        let commits_before = store.commits_tried.load(Ordering::SeqCst);
        let deallocations = (0..10).map(|n| {
            app.bus.handle(Deallocate {
                orderid: orderid(&format!("o{n}")),
                sku: sku("LAMP"),
            })
        });
        for batch in futures::future::join_all(deallocations).await {
            assert_eq!(batch.expect("deallocated")[0].batchref, batchref("b1"));
        }
        assert_eq!(
            store.commits_tried.load(Ordering::SeqCst) - commits_before,
            2,
            "the first alone, the nine that queued behind it as one group; none conflicted"
        );
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
    }

    /// The unit of work that conflicted wrote nothing: its email is in the
    /// outbox once, from the attempt that committed.
    #[tokio::test]
    async fn an_out_of_stock_allocation_that_conflicted_leaves_one_email() {
        let (app, store) = app_with_conflicts(1).await;
        let result = app.bus.handle(allocate("o1", "LAMP", 50)).await;
        assert_eq!(result.expect("command succeeds"), Allocation::OutOfStock);
        assert_eq!(store.commits_tried.load(Ordering::SeqCst), 2);
        assert_eq!(app.emails().len(), 1);
    }

    /// Email goes out through the notifications relay, which keeps an email
    /// the server did not take and tries it again: it is sent once it
    /// works, with the id of its outbox message, and only then leaves the
    /// outbox.
    #[tokio::test]
    async fn an_email_that_failed_stays_in_the_outbox_until_it_is_sent() {
        let app = app();
        app.add_batch("b1", "LAMP", 1, None).await;
        let result = app.bus.handle(allocate("o1", "LAMP", 5)).await;
        assert_eq!(result.expect("command succeeds"), Allocation::OutOfStock);
        let waiting = app.store.unsent_messages();

        let notifications = Arc::new(RecordingNotifications::failing(2));
        let relay = OutboxRelay::new(
            app.store.clone(),
            Destination::Notifications,
            Arc::new(NotificationPublisher::new(notifications.clone())),
            app.outbox_written.of(Destination::Notifications),
            RelaySettings::default(),
        );
        for _ in 0..2 {
            assert!(relay.relay_pending().await.is_err(), "the server failed");
            assert_eq!(app.emails().len(), 1, "kept in the outbox");
        }
        assert_eq!(relay.relay_pending().await.expect("sent"), 1);
        let sent = notifications.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].id, waiting[0].message_id);
        assert_eq!(sent[0].subject, "Out of stock for LAMP");
        assert!(app.emails().is_empty(), "marked sent");
        assert_eq!(relay.relay_pending().await.expect("nothing left"), 0);
    }
}

/// Group commit (see `runner`): concurrent allocations share one unit
/// of work and one commit, and each still gets its own answer and events.
/// The store's loads yield, as a database round trip would, so commands sent
/// together queue behind the first one's group.
mod group_commit {
    use super::*;

    async fn allocate_together(
        app: &App<ConflictingStore>,
        lines: &[(&str, &str, u32)],
    ) -> Vec<Result<Allocation, Error>> {
        let commands = lines
            .iter()
            .map(|(order, product, units)| app.bus.handle(allocate(order, product, *units)));
        futures::future::join_all(commands).await
    }

    #[tokio::test]
    async fn concurrent_allocations_share_a_commit() {
        let (app, store) = app_with_conflicts(0).await;
        let before = store.commits_tried.load(Ordering::SeqCst);
        let orders: Vec<String> = (0..10).map(|n| format!("o{n}")).collect();
        let lines: Vec<_> = orders.iter().map(|o| (o.as_str(), "LAMP", 1)).collect();
        for answer in allocate_together(&app, &lines).await {
            assert_eq!(
                answer.expect("allocated"),
                Allocation::Batch(batchref("b1"))
            );
        }
        assert_eq!(
            store.commits_tried.load(Ordering::SeqCst) - before,
            2,
            "the first command alone, then the nine that queued behind it"
        );
        assert_eq!(app.allocated_to("LAMP", "b1").await, 10);
        assert_eq!(outbox_of(&app.store).len(), 10, "a message per allocation");
        assert_eq!(app.view_of("o9").await, [("LAMP".into(), "b1".into())]);
    }

    #[tokio::test]
    async fn a_refused_allocation_fails_alone() {
        let (app, _) = app_with_conflicts(0).await;
        app.allocate("o1", "LAMP", 1).await;
        let answers = allocate_together(
            &app,
            &[
                ("o0", "LAMP", 1),
                ("o1", "LAMP", 2),
                ("o2", "NO-SUCH-SKU", 1),
                ("o3", "LAMP", 1),
            ],
        )
        .await;
        assert!(
            matches!(answers[0], Ok(Allocation::Batch(_))),
            "{:?}",
            answers[0]
        );
        assert!(
            matches!(
                answers[1],
                Err(Error::Rejected(DomainError::AlreadyAllocated { .. }))
            ),
            "{:?}",
            answers[1]
        );
        assert!(
            matches!(answers[2], Err(Error::InvalidSku(_))),
            "{:?}",
            answers[2]
        );
        assert!(
            matches!(answers[3], Ok(Allocation::Batch(_))),
            "{:?}",
            answers[3]
        );
        assert_eq!(app.allocated_to("LAMP", "b1").await, 3, "o0, o1 once, o3");
    }

    #[tokio::test]
    async fn each_command_gets_its_own_events() {
        let (app, _) = app_with_conflicts(0).await;
        app.add_batch("c1", "CHAIR", 2, None).await;
        let answers = allocate_together(
            &app,
            &[
                ("o1", "CHAIR", 1),
                ("o2", "CHAIR", 1),
                ("o3", "CHAIR", 1),
                ("o4", "CHAIR", 1),
            ],
        )
        .await;
        let answers: Vec<_> = answers.into_iter().map(|a| a.expect("handled")).collect();
        assert_eq!(
            answers,
            [
                Allocation::Batch(batchref("c1")),
                Allocation::Batch(batchref("c1")),
                Allocation::OutOfStock,
                Allocation::OutOfStock
            ]
        );
        assert_eq!(
            app.emails().len(),
            2,
            "one out-of-stock notification per command that found no stock"
        );
    }

    #[tokio::test]
    async fn the_same_line_twice_in_a_group_is_allocated_once() {
        let (app, _) = app_with_conflicts(0).await;
        let answers = allocate_together(
            &app,
            &[("o0", "LAMP", 1), ("o1", "LAMP", 3), ("o1", "LAMP", 3)],
        )
        .await;
        for answer in answers {
            assert_eq!(
                answer.expect("allocated"),
                Allocation::Batch(batchref("b1"))
            );
        }
        assert_eq!(app.allocated_to("LAMP", "b1").await, 4);
        assert_eq!(outbox_of(&app.store).len(), 2);
    }

    #[tokio::test]
    async fn a_group_may_hold_several_products() {
        let (app, store) = app_with_conflicts(0).await;
        app.add_batch("t1", "TABLE", 10, None).await;
        let before = store.commits_tried.load(Ordering::SeqCst);
        let answers = allocate_together(
            &app,
            &[
                ("o0", "LAMP", 1),
                ("o1", "TABLE", 2),
                ("o2", "LAMP", 3),
                ("o3", "TABLE", 4),
            ],
        )
        .await;
        let answers: Vec<_> = answers.into_iter().map(|a| a.expect("handled")).collect();
        assert_eq!(
            answers,
            [
                Allocation::Batch(batchref("b1")),
                Allocation::Batch(batchref("t1")),
                Allocation::Batch(batchref("b1")),
                Allocation::Batch(batchref("t1"))
            ]
        );
        assert_eq!(store.commits_tried.load(Ordering::SeqCst) - before, 2);
        assert_eq!(app.allocated_to("LAMP", "b1").await, 4);
        assert_eq!(app.allocated_to("TABLE", "t1").await, 6);
    }

    #[tokio::test]
    async fn groups_take_turns_with_other_commands_on_their_product() {
        let (app, store) = app_with_conflicts(0).await;
        app.allocate("o0", "LAMP", 1).await;
        let deallocation = app.bus.handle(Deallocate {
            orderid: orderid("o0"),
            sku: sku("LAMP"),
        });
        let allocations = allocate_together(&app, &[("o1", "LAMP", 1), ("o2", "LAMP", 1)]);
        let (deallocated, allocated) = futures::join!(deallocation, allocations);
        assert_eq!(
            deallocated.expect("deallocated")[0].batchref,
            batchref("b1")
        );
        for answer in allocated {
            assert_eq!(
                answer.expect("allocated"),
                Allocation::Batch(batchref("b1"))
            );
        }
        assert_eq!(
            store.locking_begins.load(Ordering::SeqCst),
            0,
            "no version conflict, hence no locking retry"
        );
        assert_eq!(app.allocated_to("LAMP", "b1").await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_runs_the_whole_group_again() {
        let (app, store) = app_with_conflicts(1).await;
        let answers = allocate_together(
            &app,
            &[("o0", "LAMP", 1), ("o1", "LAMP", 1), ("o2", "LAMP", 1)],
        )
        .await;
        for answer in answers {
            assert_eq!(
                answer.expect("allocated"),
                Allocation::Batch(batchref("b1"))
            );
        }
        assert_eq!(app.allocated_to("LAMP", "b1").await, 3, "each exactly once");
        assert_eq!(outbox_of(&app.store).len(), 3);
        assert!(
            store.locking_begins.load(Ordering::SeqCst) >= 1,
            "the retry locks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn endless_conflicts_fail_every_command_of_the_group() {
        let (app, _) = app_with_conflicts(u32::MAX).await;
        let answers = allocate_together(
            &app,
            &[("o0", "LAMP", 1), ("o1", "LAMP", 1), ("o2", "LAMP", 1)],
        )
        .await;
        for answer in answers {
            assert!(
                matches!(answer, Err(Error::Contention { .. })),
                "{answer:?}"
            );
        }
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
        assert!(outbox_of(&app.store).is_empty());
    }

    /// Every kind of command takes the same path: the runner groups batch
    /// changes as it groups allocations, and each sees the changes of those
    /// before it in the group.
    #[tokio::test]
    async fn shrinking_one_batch_twice_in_a_group_sees_the_first_shrink() {
        let (app, _) = app_with_conflicts(0).await;
        for order in ["o1", "o2", "o3"] {
            app.allocate(order, "LAMP", 3).await;
        }
        // The first runs alone (takes o3 off); the other two queue behind
        // it and run as one group: the second must see that the first took
        // o2 off, not the stored lines again.
        let shrinks = [8, 5, 2].map(|units| app.bus.handle(change_quantity("b1", units)));
        for answer in futures::future::join_all(shrinks).await {
            answer.expect("changed");
        }
        let batches = app
            .store
            .batches(&sku("LAMP"), chrono::Utc::now())
            .await
            .expect("query");
        assert_eq!((batches[0].purchased, batches[0].allocated), (2, 0));
        for order in ["o1", "o2", "o3"] {
            assert_eq!(app.view_of(order).await, [], "{order} is nowhere");
        }
    }

    #[tokio::test]
    async fn a_refused_batch_fails_alone_in_its_group() {
        let (app, store) = app_with_conflicts(0).await;
        let before = store.commits_tried.load(Ordering::SeqCst);
        let batches = [
            create_batch("b2", "LAMP", 5, None),
            create_batch("b1", "LAMP", 99, None), // b1 exists, with 10
            create_batch("t1", "TABLE", 5, None),
            create_batch("b3", "LAMP", 5, None),
        ]
        .map(|command| app.bus.handle(command));
        let answers = futures::future::join_all(batches).await;
        assert!(
            matches!(
                answers[1],
                Err(Error::Rejected(DomainError::BatchExists { .. }))
            ),
            "{:?}",
            answers[1]
        );
        for n in [0, 2, 3] {
            assert!(answers[n].is_ok(), "{:?}", answers[n]);
        }
        assert_eq!(
            store.commits_tried.load(Ordering::SeqCst) - before,
            2,
            "the first alone, the other three as one group"
        );
        let lamp = app
            .store
            .batches(&sku("LAMP"), chrono::Utc::now())
            .await
            .expect("query");
        let references: Vec<_> = lamp.iter().map(|b| b.reference.as_str()).collect();
        assert_eq!(references, ["b1", "b2", "b3"]);
        assert_eq!(lamp[0].purchased, 10, "b1 untouched");
        assert_eq!(
            app.store
                .batches(&sku("TABLE"), chrono::Utc::now())
                .await
                .expect("query")
                .len(),
            1
        );
    }
}
