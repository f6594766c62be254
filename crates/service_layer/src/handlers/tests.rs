//! The book's handler tests (chapters 5, 9, 10), driven through the message
//! bus with in-memory fakes, plus retries, idempotency and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{BatchRef, Command, DomainError, Sku};

use crate::memory::{MemoryStore, MemoryTransaction, RecordingNotifications};
use crate::ports::OutboxMessage;
use crate::ports::{AllocationView, ReadModel};
use crate::ports::{ChangeSet, Lines, Store, StoreError, StoreTransaction};
use crate::{Error, MessageBus, RetryPolicy};
use tokio::sync::Notify;

fn tomorrow() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 26).expect("valid date")
}

fn create_batch(reference: &str, product: &str, units: u32, eta: Option<NaiveDate>) -> CreateBatch {
    CreateBatch {
        reference: batchref(reference),
        sku: sku(product),
        qty: qty(units),
        eta,
    }
}
fn allocate(order: &str, product: &str, units: u32) -> Allocate {
    Allocate {
        orderid: orderid(order),
        sku: sku(product),
        qty: qty(units),
    }
}
fn change_quantity(reference: &str, units: u32) -> ChangeBatchQuantity {
    ChangeBatchQuantity {
        reference: batchref(reference),
        qty: qty(units),
    }
}

/// A bus over fakes, with the fakes kept at hand for assertions.
struct App<S = MemoryStore> {
    bus: Arc<MessageBus<S>>,
    store: MemoryStore,
    notifications: Arc<RecordingNotifications>,
    outbox_written: Arc<Notify>,
}

fn app() -> App {
    app_with(RecordingNotifications::new())
}

fn app_with(notifications: RecordingNotifications) -> App {
    let store = MemoryStore::new();
    wire(store.clone(), store, notifications)
}

fn wire<S: Store>(
    bus_store: S,
    store: MemoryStore,
    notifications: RecordingNotifications,
) -> App<S> {
    let notifications = Arc::new(notifications);
    let outbox_written = Arc::new(Notify::new());
    let bus = Arc::new(MessageBus::new(
        bus_store,
        notifications.clone(),
        outbox_written.clone(),
        RetryPolicy::default(),
    ));
    App {
        bus,
        store,
        notifications,
        outbox_written,
    }
}

/// `(orderid, batchref)` of each message waiting in the outbox.
fn outbox_of(store: &MemoryStore) -> Vec<(String, String)> {
    store
        .unsent_messages()
        .into_iter()
        .map(|OutboxMessage { event, .. }| (event.orderid.to_string(), event.batchref.to_string()))
        .collect()
}

impl<S: Store> App<S> {
    async fn add_batch(&self, reference: &str, product: &str, units: u32, eta: Option<NaiveDate>) {
        let command = create_batch(reference, product, units, eta);
        self.bus.handle(command).await.expect("batch created");
    }

    async fn allocate(&self, order: &str, product: &str, units: u32) -> Option<BatchRef> {
        let command = allocate(order, product, units);
        self.bus.handle(command).await.expect("line handled")
    }

    async fn allocated_to(&self, product: &str, reference: &str) -> u64 {
        let batches = self.store.batches(&sku(product)).await.expect("query");
        batches
            .iter()
            .find(|b| b.reference == batchref(reference))
            .map(|b| b.allocated)
            .expect("batch exists")
    }

    async fn view_of(&self, order: &str) -> Vec<(String, String)> {
        let rows = self
            .store
            .allocations(&orderid(order))
            .await
            .expect("query");
        rows.into_iter()
            .map(|AllocationView { sku, batchref }| (sku.to_string(), batchref.to_string()))
            .collect()
    }
}

mod add_batch {
    use super::*;

    #[tokio::test]
    async fn for_new_product() {
        let app = app();
        app.add_batch("b1", "CRUNCHY-ARMCHAIR", 100, None).await;
        let batches = app
            .store
            .batches(&sku("CRUNCHY-ARMCHAIR"))
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
        let batches = app.store.batches(&sku("GARISH-RUG")).await.expect("query");
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
            app.store.batches(&sku("LAMP")).await.expect("query").len(),
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
                .batches(&sku("TABLE"))
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
        assert_eq!(batch, Some(batchref("batch1")));
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
            app.outbox_written.notified(),
        )
        .await
        .expect("the relay was woken");
    }

    #[tokio::test]
    async fn sends_email_on_out_of_stock() {
        let app = app();
        app.add_batch("b1", "POPULAR-CURTAINS", 9, None).await;
        let batch = app
            .bus
            .handle(allocate("o1", "POPULAR-CURTAINS", 10))
            .await
            .expect("handled");
        assert_eq!(batch, None);
        let sent = app.notifications.sent();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].body.contains("Out of stock for POPULAR-CURTAINS"));
        assert!(app.view_of("o1").await.is_empty());
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

        assert_eq!(from, batchref("b1"));
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
            .batches(&sku("ADORABLE-SETTEE"))
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
        assert_eq!(app.notifications.sent().len(), 1);
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

/// A store whose first `conflicts` commits fail as if another instance had
/// changed the product in between; the conflicting commits write nothing.
#[derive(Debug, Clone)]
struct ConflictingStore {
    inner: MemoryStore,
    conflicts_left: Arc<AtomicU32>,
    commits_tried: Arc<AtomicU32>,
    /// Units of work started with `begin_locking`.
    locking_begins: Arc<AtomicU32>,
}

impl ConflictingStore {
    fn new(inner: MemoryStore, conflicts: u32) -> Self {
        Self {
            inner,
            conflicts_left: Arc::new(AtomicU32::new(conflicts)),
            commits_tried: Arc::default(),
            locking_begins: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct ConflictingTransaction {
    inner: MemoryTransaction,
    store: ConflictingStore,
}

impl Store for ConflictingStore {
    type Transaction = ConflictingTransaction;

    async fn begin(&self) -> Result<ConflictingTransaction, StoreError> {
        Ok(ConflictingTransaction {
            inner: self.inner.begin().await?,
            store: self.clone(),
        })
    }
    async fn begin_locking(&self) -> Result<ConflictingTransaction, StoreError> {
        self.locking_begins.fetch_add(1, Ordering::SeqCst);
        self.begin().await
    }
}

impl StoreTransaction for ConflictingTransaction {
    async fn load(
        &mut self,
        sku: &Sku,
        lines: Lines<'_>,
    ) -> Result<Option<domain::Product>, StoreError> {
        let product = self.inner.load(sku, lines).await;
        // Let other commands run between read and commit, as a database
        // round trip would.
        tokio::task::yield_now().await;
        product
    }

    async fn sku_of_batch(&mut self, reference: &BatchRef) -> Result<Option<Sku>, StoreError> {
        self.inner.sku_of_batch(reference).await
    }

    async fn commit(self, changes: ChangeSet) -> Result<(), StoreError> {
        self.store.commits_tried.fetch_add(1, Ordering::SeqCst);
        let conflict = self
            .store
            .conflicts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        match changes.products.first() {
            Some(change) if conflict => Err(StoreError::Conflict {
                sku: change.sku.clone(),
            }),
            _ => self.inner.commit(changes).await,
        }
    }
}

/// A bus over a [`ConflictingStore`] whose first `conflicts` commits fail,
/// with batch `b1` of 10 `LAMP`s.
async fn app_with_conflicts(conflicts: u32) -> (App<ConflictingStore>, ConflictingStore) {
    let setup = app();
    setup.add_batch("b1", "LAMP", 10, None).await;
    let store = setup.store;
    let conflicting = ConflictingStore::new(store.clone(), conflicts);
    let app = wire(conflicting.clone(), store, RecordingNotifications::new());
    (app, conflicting)
}

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
    assert_eq!(first.await.expect("allocated"), Some(batchref("b1")));
    app.bus.finish_running_commands().await;
    assert_eq!(app.allocated_to("LAMP", "b1").await, 2, "only o1");
    let batches = app.store.batches(&sku("LAMP")).await.expect("query");
    assert_eq!(batches.len(), 1, "b2 was never created: {batches:?}");
}

mod retries {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_version_conflict_runs_the_command_again() {
        let (app, store) = app_with_conflicts(2).await;
        let batch = app
            .bus
            .handle(allocate("o1", "LAMP", 4))
            .await
            .expect("allocated in the end");
        assert_eq!(batch, Some(batchref("b1")));
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
        let mut first = UnitOfWork::begin(&app.store).await.expect("begin");
        let mut second = UnitOfWork::begin(&app.store).await.expect("begin");
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
    async fn commands_on_one_product_take_turns_instead_of_conflicting() {
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
            assert_eq!(batch.expect("deallocated"), batchref("b1"));
        }
        assert_eq!(
            store.commits_tried.load(Ordering::SeqCst) - commits_before,
            10,
            "one commit per command: none conflicted"
        );
        assert_eq!(app.allocated_to("LAMP", "b1").await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_event_handler_is_retried_and_never_fails_the_command() {
        let app = app_with(RecordingNotifications::failing(2));
        app.add_batch("b1", "LAMP", 1, None).await;
        let result = app.bus.handle(allocate("o1", "LAMP", 5)).await;
        assert_eq!(result.expect("command succeeds"), None);
        assert_eq!(
            app.notifications.sent().len(),
            1,
            "sent on the third attempt"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_handler_that_keeps_failing_is_given_up_on() {
        let started = tokio::time::Instant::now();
        let app = app_with(RecordingNotifications::failing(u32::MAX));
        app.add_batch("b1", "LAMP", 2, None).await;
        let batch = app
            .bus
            .handle(allocate("o1", "LAMP", 5))
            .await
            .expect("command succeeds");
        assert_eq!(batch, None, "out of stock");
        assert!(app.notifications.sent().is_empty());
        // Two waits between three attempts: 100 ms, then 200 ms.
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}

/// Group commit (see `group_commit`): concurrent allocations share one unit
/// of work and one commit, and each still gets its own answer and events.
/// The store's loads yield, as a database round trip would, so commands sent
/// together queue behind the first one's group.
mod group_commit {
    use super::*;

    async fn allocate_together(
        app: &App<ConflictingStore>,
        lines: &[(&str, &str, u32)],
    ) -> Vec<Result<Option<BatchRef>, Error>> {
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
            assert_eq!(answer.expect("allocated"), Some(batchref("b1")));
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
        assert!(matches!(answers[0], Ok(Some(_))), "{:?}", answers[0]);
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
        assert!(matches!(answers[3], Ok(Some(_))), "{:?}", answers[3]);
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
            [Some(batchref("c1")), Some(batchref("c1")), None, None]
        );
        assert_eq!(
            app.notifications.sent().len(),
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
            assert_eq!(answer.expect("allocated"), Some(batchref("b1")));
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
                Some(batchref("b1")),
                Some(batchref("t1")),
                Some(batchref("b1")),
                Some(batchref("t1"))
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
        assert_eq!(deallocated.expect("deallocated"), batchref("b1"));
        for answer in allocated {
            assert_eq!(answer.expect("allocated"), Some(batchref("b1")));
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
            assert_eq!(answer.expect("allocated"), Some(batchref("b1")));
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
}
