//! Property test of the service layer: random commands (single lines and
//! whole orders of both products) on two products
//! through the message bus over the in-memory store, with the reallocation
//! handler running as in the service. After every command, nothing is
//! over-allocated, the write side, the read model and the outbox agree, and
//! every line that lost its batch and was not reallocated had nowhere to go.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Days, NaiveDate};
use domain::commands::{Allocate, AllocateOrder, ChangeBatchQuantity, CreateBatch, Deallocate};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{BatchRef, DomainError, OrderId, OrderLines, Sku};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use service_layer::memory::{MemoryStore, RecordingNotifications};
use service_layer::ports::ReadModel;
use service_layer::{Error, MessageBus, RetryPolicy};
use tokio::sync::Notify;

const SKUS: [&str; 2] = ["PROP-CHAIR", "PROP-TABLE"];
const BATCHES: usize = 6;
const ORDERS: usize = 8;

#[derive(Debug, Clone)]
enum Step {
    AddBatch {
        batch: usize,
        sku: usize,
        qty: u32,
        eta: Option<u64>,
    },
    Allocate {
        order: usize,
        sku: usize,
        qty: u32,
    },
    /// A whole order: one line of each SKU listed.
    AllocateOrder {
        order: usize,
        lines: Vec<(usize, u32)>,
    },
    Deallocate {
        order: usize,
        sku: usize,
    },
    ChangeBatchQuantity {
        batch: usize,
        qty: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let sku = 0..SKUS.len();
    prop_oneof![
        2 => (0..BATCHES, sku.clone(), 1..=30u32, proptest::option::of(0..4u64))
            .prop_map(|(batch, sku, qty, eta)| Step::AddBatch { batch, sku, qty, eta }),
        4 => (0..ORDERS, sku.clone(), 1..=12u32)
            .prop_map(|(order, sku, qty)| Step::Allocate { order, sku, qty }),
        2 => (0..ORDERS, proptest::sample::subsequence(vec![0, 1], 1..=2), 1..=12u32, 1..=12u32)
            .prop_map(|(order, skus, first, second)| Step::AllocateOrder {
                order,
                lines: skus.into_iter().zip([first, second]).collect(),
            }),
        1 => (0..ORDERS, sku).prop_map(|(order, sku)| Step::Deallocate { order, sku }),
        2 => (0..BATCHES, 1..=30u32).prop_map(|(batch, qty)| Step::ChangeBatchQuantity { batch, qty }),
    ]
}

fn batch_name(index: usize) -> BatchRef {
    batchref(&format!("batch-{index}"))
}

fn order_name(index: usize) -> OrderId {
    orderid(&format!("order-{index}"))
}

fn eta(days_later: Option<u64>) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(2026, 11, 25).expect("a valid date");
    days_later.map(|days| first + Days::new(days))
}

/// A line as the read model places it: `(orderid, sku)` on a batch.
type Placement = HashMap<(OrderId, Sku), BatchRef>;

struct App {
    bus: Arc<MessageBus<MemoryStore>>,
    store: MemoryStore,
    notifications: Arc<RecordingNotifications>,
    /// The quantity of each line as last allocated: the read model knows
    /// where a line is, not how much it holds.
    quantities: HashMap<(OrderId, Sku), u32>,
}

impl App {
    fn new() -> Self {
        let store = MemoryStore::new();
        let notifications = Arc::new(RecordingNotifications::new());
        let bus = Arc::new(MessageBus::new(
            store.clone(),
            notifications.clone(),
            Arc::new(Notify::new()),
            RetryPolicy::default(),
        ));
        Self {
            bus,
            store,
            notifications,
            quantities: HashMap::new(),
        }
    }

    /// Every line the read model shows allocated.
    async fn placement(&self) -> Placement {
        let mut placement = HashMap::new();
        for order in (0..ORDERS).map(order_name) {
            let rows = self.store.allocations(&order).await.expect("a query");
            for row in rows {
                placement.insert((order.clone(), row.sku), row.batchref);
            }
        }
        placement
    }

    /// Free units of the batches of `product` that could take `units`.
    async fn room_for(&self, product: &Sku, units: u32) -> Vec<BatchRef> {
        let batches = self.store.batches(product).await.expect("a query");
        batches
            .into_iter()
            .filter(|b| b.available() >= u64::from(units))
            .map(|b| b.reference)
            .collect()
    }

    async fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let before = self.placement().await;
        match *step {
            Step::AddBatch {
                batch,
                sku: product,
                qty: units,
                eta: days,
            } => {
                let command = CreateBatch {
                    reference: batch_name(batch),
                    sku: sku(SKUS[product]),
                    qty: qty(units),
                    eta: eta(days),
                };
                refused_only_by_the_domain(self.bus.handle(command).await)?;
                prop_assert_eq!(self.placement().await, before);
            }
            Step::Allocate {
                order,
                sku: product,
                qty: units,
            } => {
                let line = (order_name(order), sku(SKUS[product]));
                let command = Allocate {
                    orderid: line.0.clone(),
                    sku: line.1.clone(),
                    qty: qty(units),
                };
                let notified = self.notifications.sent().len();
                let reply = self.bus.handle(command).await;
                let after = self.placement().await;
                match reply {
                    Ok(Some(batch)) => {
                        prop_assert_eq!(after.get(&line), Some(&batch));
                        self.quantities.insert(line, units);
                    }
                    Ok(None) => {
                        prop_assert_eq!(after.get(&line), None);
                        prop_assert_eq!(self.room_for(&line.1, units).await, vec![]);
                        let sent = self.notifications.sent();
                        prop_assert_eq!(sent.len(), notified + 1);
                        let warning = format!("Out of stock for {}", line.1);
                        prop_assert!(sent[notified].body.contains(&warning));
                    }
                    Err(error) => {
                        refused_only_by_the_domain(Err::<(), _>(error))?;
                        prop_assert_eq!(after, before);
                    }
                }
            }
            Step::AllocateOrder { order, ref lines } => {
                let orderid = order_name(order);
                let requested: Vec<(Sku, u32)> = lines
                    .iter()
                    .map(|(product, units)| (sku(SKUS[*product]), *units))
                    .collect();
                let command = AllocateOrder {
                    orderid: orderid.clone(),
                    lines: OrderLines::new(
                        requested
                            .iter()
                            .map(|(s, units)| (s.clone(), qty(*units)))
                            .collect(),
                    )
                    .expect("one line per SKU"),
                };
                let notified = self.notifications.sent().len();
                let reply = self.bus.handle(command).await;
                let after = self.placement().await;
                prop_assert_eq!(
                    self.notifications.sent().len(),
                    notified,
                    "orders send no email"
                );
                match reply {
                    Ok(allocated) => {
                        for (line, (product, units)) in allocated.iter().zip(&requested) {
                            let key = (orderid.clone(), product.clone());
                            prop_assert_eq!(after.get(&key), Some(&line.parts[0].batchref));
                            self.quantities.insert(key, *units);
                        }
                    }
                    Err(Error::Rejected(DomainError::OrderShort { short, .. })) => {
                        prop_assert_eq!(after, before, "all or nothing");
                        for line in short {
                            prop_assert_eq!(
                                self.room_for(&line.sku, line.requested.get()).await,
                                vec![]
                            );
                        }
                    }
                    Err(error) => {
                        refused_only_by_the_domain(Err::<(), _>(error))?;
                        prop_assert_eq!(after, before);
                    }
                }
            }
            Step::Deallocate {
                order,
                sku: product,
            } => {
                let line = (order_name(order), sku(SKUS[product]));
                let command = Deallocate {
                    orderid: line.0.clone(),
                    sku: line.1.clone(),
                };
                let reply = self.bus.handle(command).await;
                let after = self.placement().await;
                match reply {
                    Ok(batch) => {
                        prop_assert_eq!(before.get(&line), Some(&batch));
                        prop_assert_eq!(after.get(&line), None, "cancelled lines stay cancelled");
                    }
                    Err(error) => {
                        prop_assert_eq!(before.get(&line), None);
                        refused_only_by_the_domain(Err::<(), _>(error))?;
                    }
                }
                let mut expected = before;
                expected.remove(&line);
                prop_assert_eq!(after, expected);
            }
            Step::ChangeBatchQuantity { batch, qty: units } => {
                let command = ChangeBatchQuantity {
                    reference: batch_name(batch),
                    qty: qty(units),
                };
                refused_only_by_the_domain(self.bus.handle(command).await)?;
                // A line that left its batch and is nowhere now was tried
                // on every batch of its product: none has room for it.
                let after = self.placement().await;
                let changed = batch_name(batch);
                for (line, placed) in before.iter().filter(|(_, placed)| **placed != changed) {
                    prop_assert_eq!(
                        after.get(line),
                        Some(placed),
                        "only the changed batch's lines move"
                    );
                }
                for line in before.keys().filter(|line| !after.contains_key(*line)) {
                    let units = self.quantities[line];
                    prop_assert_eq!(
                        self.room_for(&line.1, units).await,
                        vec![],
                        "{:?} was not reallocated",
                        line
                    );
                }
            }
        }
        self.check_consistency().await
    }

    /// Nothing over-allocated; each batch's total is what the read model's
    /// lines on it hold; the outbox's last word on each line is where it is.
    async fn check_consistency(&self) -> Result<(), TestCaseError> {
        let placement = self.placement().await;
        let messages = self.store.unsent_messages();
        for product in SKUS.map(sku) {
            for batch in self.store.batches(&product).await.expect("a query") {
                prop_assert!(
                    batch.allocated <= batch.purchased,
                    "{:?} over-allocated",
                    batch
                );
                let on_batch: u64 = placement
                    .iter()
                    .filter(|(_, placed)| **placed == batch.reference)
                    .map(|(line, _)| u64::from(self.quantities[line]))
                    .sum();
                prop_assert_eq!(batch.allocated, on_batch, "{:?}", batch.reference);
            }
        }
        for ((order, product), batch) in &placement {
            let last = messages
                .iter()
                .rev()
                .find(|m| &m.event.orderid == order && &m.event.sku == product);
            let announced = last.map(|m| (&m.event.batchref, m.event.qty.get()));
            let units = self.quantities[&(order.clone(), product.clone())];
            prop_assert_eq!(announced, Some((batch, units)));
        }
        Ok(())
    }
}

/// Command errors here come from the rules (a refused command), never from
/// storage or contention: one writer, an in-memory store.
fn refused_only_by_the_domain<T>(reply: Result<T, Error>) -> Result<(), TestCaseError> {
    match reply {
        Ok(_) | Err(Error::Rejected(_) | Error::InvalidSku(_)) => Ok(()),
        Err(error) => Err(TestCaseError::fail(format!("unexpected error: {error}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_bus_keeps_write_side_read_model_and_outbox_in_step(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let mut app = App::new();
            for step in &steps {
                app.run(step).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
