//! Property test of the service layer: random commands (single lines and
//! whole orders of both products, split or not, batches, adjustments and
//! backorder limits) on two products through the message bus over the
//! in-memory store, with the reallocation handler running as in the
//! service. After every command, nothing is over-allocated, the write
//! side, the read model and the outbox agree, every line (or part) that
//! lost its batch and was not reallocated had nowhere to go, no waiting
//! backorder fits a batch, lines that appeared were waiting, every
//! batch's ledger sums to its quantity, the availability figures are the
//! sums of what the batches and lines say, and the stock messages tell
//! each crossing to none and back once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Days, NaiveDate};
use domain::commands::{
    AdjustBatch, Allocate, AllocateOrder, ChangeBatchQuantity, ChangeSettings, CreateBatch,
    Deallocate,
};
use domain::events::StockMessage;
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{
    Adjustment, AdjustmentReason, Allocation, BatchRef, Change, DomainError, OrderId, OrderLines,
    Sku,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use service_layer::handlers::notification_of;
use service_layer::memory::MemoryStore;
use service_layer::ports::Notification;
use service_layer::ports::{AvailabilityView, LineStatus, Outgoing, ReadModel};
use service_layer::relay::Wakeups;
use service_layer::{Error, MessageBus, RetryPolicy};

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
        split: bool,
    },
    Deallocate {
        order: usize,
        sku: usize,
    },
    ChangeBatchQuantity {
        batch: usize,
        qty: u32,
    },
    /// By `delta`, or to `qty` when `delta` is 0; `expected` may be stale.
    Adjust {
        batch: usize,
        delta: i64,
        qty: u32,
        expected: Option<u32>,
    },
    SetLimit {
        sku: usize,
        limit: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let sku = 0..SKUS.len();
    prop_oneof![
        2 => (0..BATCHES, sku.clone(), 1..=30u32, proptest::option::of(0..4u64))
            .prop_map(|(batch, sku, qty, eta)| Step::AddBatch { batch, sku, qty, eta }),
        4 => (0..ORDERS, sku.clone(), 1..=12u32)
            .prop_map(|(order, sku, qty)| Step::Allocate { order, sku, qty }),
        2 => (0..ORDERS, proptest::sample::subsequence(vec![0, 1], 1..=2), 1..=40u32, 1..=40u32, any::<bool>())
            .prop_map(|(order, skus, first, second, split)| Step::AllocateOrder {
                order,
                lines: skus.into_iter().zip([first, second]).collect(),
                split,
            }),
        1 => (0..ORDERS, sku.clone()).prop_map(|(order, sku)| Step::Deallocate { order, sku }),
        2 => (0..BATCHES, 1..=30u32).prop_map(|(batch, qty)| Step::ChangeBatchQuantity { batch, qty }),
        2 => (0..BATCHES, -20..=20i64, 0..=30u32, proptest::option::of(0..=30u32))
            .prop_map(|(batch, delta, qty, expected)| Step::Adjust { batch, delta, qty, expected }),
        1 => (sku, 0..=40u64).prop_map(|(sku, limit)| Step::SetLimit { sku, limit }),
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

/// Where the read model places each allocated line `(orderid, sku)`: its
/// parts, `(batch, units)`, by batch.
type Placement = HashMap<(OrderId, Sku), Vec<(BatchRef, u64)>>;

/// The lines the order query shows waiting as backorders, and their units.
type Waiting = HashMap<(OrderId, Sku), u64>;

struct App {
    bus: Arc<MessageBus<MemoryStore>>,
    store: MemoryStore,
    /// Each SKU's backorder limit, as last set.
    limits: [u64; 2],
}

/// The units waiting for `product`.
fn waiting_for(waiting: &Waiting, product: &Sku) -> u64 {
    let of_product = waiting.iter().filter(|((_, s), _)| s == product);
    of_product.map(|(_, units)| units).sum()
}

fn total(parts: &[(BatchRef, u64)]) -> u64 {
    parts.iter().map(|(_, units)| units).sum()
}

fn batches_of(parts: &[(BatchRef, u64)]) -> Vec<&BatchRef> {
    parts.iter().map(|(batch, _)| batch).collect()
}

impl App {
    fn new() -> Self {
        let store = MemoryStore::new();
        let bus = Arc::new(MessageBus::new(
            store.clone(),
            Wakeups::new(),
            RetryPolicy::default(),
        ));
        Self {
            bus,
            store,
            limits: [0; 2],
        }
    }

    /// The emails the commands left in the outbox (no relay runs here).
    fn emails(&self) -> Vec<Notification> {
        let messages = self.store.unsent_messages();
        messages.iter().filter_map(notification_of).collect()
    }

    fn limit_of(&self, product: &Sku) -> u64 {
        let index = SKUS.iter().position(|name| sku(name) == *product);
        index.map_or(0, |index| self.limits[index])
    }

    /// Every line the order query shows waiting, with no parts.
    async fn waiting(&self) -> Result<Waiting, TestCaseError> {
        let mut waiting = HashMap::new();
        for order in (0..ORDERS).map(order_name) {
            for line in self.store.order(&order).await.expect("a query") {
                if line.status == LineStatus::Backordered {
                    prop_assert!(line.parts.is_empty(), "{:?} waits with parts", line);
                    waiting.insert((order.clone(), line.sku), line.qty);
                }
            }
        }
        Ok(waiting)
    }

    /// Lines other than `moved` kept their places, and every line placed
    /// now that was not before was waiting before.
    async fn check_new_lines_were_waiting(
        &self,
        before: &Placement,
        waiting_before: &Waiting,
        moved: impl Fn(&(OrderId, Sku), &[(BatchRef, u64)]) -> bool,
    ) -> Result<(), TestCaseError> {
        let after = self.placement().await?;
        for (line, parts) in before {
            if !moved(line, parts) {
                prop_assert_eq!(after.get(line), Some(parts), "{:?} moved", line);
            }
        }
        for (line, parts) in &after {
            if !before.contains_key(line) {
                prop_assert_eq!(
                    waiting_before.get(line).copied(),
                    Some(total(parts)),
                    "{:?} appeared without waiting",
                    line
                );
            }
        }
        Ok(())
    }

    /// Every line the read models show allocated: the order query's parts,
    /// which the `allocations` view must show on the same batches.
    async fn placement(&self) -> Result<Placement, TestCaseError> {
        let mut placement = HashMap::new();
        for order in (0..ORDERS).map(order_name) {
            let mut shown: Vec<(Sku, BatchRef)> = self
                .store
                .allocations(&order)
                .await
                .expect("a query")
                .into_iter()
                .map(|row| (row.sku, row.batchref))
                .collect();
            let mut lines = Vec::new();
            for line in self.store.order(&order).await.expect("a query") {
                if line.status != LineStatus::Allocated {
                    continue;
                }
                let mut parts: Vec<_> = line
                    .parts
                    .into_iter()
                    .map(|p| (p.batchref, p.qty))
                    .collect();
                parts.sort();
                prop_assert_eq!(line.qty, total(&parts));
                lines.extend(
                    parts
                        .iter()
                        .map(|(batch, _)| (line.sku.clone(), batch.clone())),
                );
                placement.insert((order.clone(), line.sku), parts);
            }
            shown.sort();
            lines.sort();
            prop_assert_eq!(shown, lines, "the view shows every part of {:?}", order);
        }
        Ok(placement)
    }

    /// The batches of `product` that could take `units` whole.
    async fn room_for(&self, product: &Sku, units: u64) -> Vec<BatchRef> {
        let batches = self
            .store
            .batches(product, chrono::Utc::now())
            .await
            .expect("a query");
        batches
            .into_iter()
            .filter(|b| b.available() >= units)
            .map(|b| b.reference)
            .collect()
    }

    /// What a line of `product` could get: from the best batch alone, or
    /// with `split` from all of them.
    async fn available_for(&self, product: &Sku, split: bool) -> u64 {
        let available = self
            .store
            .batches(product, chrono::Utc::now())
            .await
            .expect("a query")
            .into_iter()
            .map(|b| b.available());
        if split {
            available.sum()
        } else {
            available.max().unwrap_or(0)
        }
    }

    async fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let before = self.placement().await?;
        let waiting_before = self.waiting().await?;
        let unchanged = |_: &(OrderId, Sku), _: &[(BatchRef, u64)]| false;
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
                self.check_new_lines_were_waiting(&before, &waiting_before, unchanged)
                    .await?;
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
                let notified = self.emails().len();
                let reply = self.bus.handle(command).await;
                let after = self.placement().await?;
                match reply {
                    Ok(Allocation::Batch(batch)) => {
                        let parts = after.get(&line).map(Vec::as_slice).unwrap_or_default();
                        prop_assert!(batches_of(parts).contains(&&batch));
                        prop_assert_eq!(total(parts), u64::from(units));
                    }
                    Ok(Allocation::Backordered) => {
                        prop_assert_eq!(after.get(&line), None);
                        prop_assert_eq!(self.room_for(&line.1, units.into()).await, vec![]);
                        let waiting = self.waiting().await?;
                        prop_assert_eq!(waiting.get(&line), Some(&u64::from(units)));
                        // A line waiting already is answered so, whatever
                        // the limit has become since.
                        if !waiting_before.contains_key(&line) {
                            prop_assert!(waiting_for(&waiting, &line.1) <= self.limit_of(&line.1));
                        }
                        prop_assert_eq!(self.emails().len(), notified, "no email");
                    }
                    Ok(Allocation::OutOfStock) => {
                        prop_assert_eq!(after.get(&line), None);
                        prop_assert_eq!(self.room_for(&line.1, units.into()).await, vec![]);
                        prop_assert!(
                            waiting_for(&waiting_before, &line.1) + u64::from(units)
                                > self.limit_of(&line.1),
                            "refused within the backorder limit"
                        );
                        let sent = self.emails();
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
            Step::AllocateOrder {
                order,
                ref lines,
                split,
            } => {
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
                    split,
                    hold_id: None,
                };
                let mut available = HashMap::new();
                for (product, _) in &requested {
                    available.insert(product.clone(), self.available_for(product, split).await);
                }
                let notified = self.emails().len();
                let reply = self.bus.handle(command).await;
                let after = self.placement().await?;
                prop_assert_eq!(self.emails().len(), notified, "orders send no email");
                match reply {
                    Ok(allocated) => {
                        let waiting = self.waiting().await?;
                        for (line, (product, units)) in allocated.iter().zip(&requested) {
                            let key = (orderid.clone(), product.clone());
                            if line.is_backordered() {
                                prop_assert_eq!(waiting.get(&key), Some(&u64::from(*units)));
                                if !waiting_before.contains_key(&key) {
                                    prop_assert!(
                                        waiting_for(&waiting, product) <= self.limit_of(product)
                                    );
                                }
                                continue;
                            }
                            let mut parts: Vec<_> = line
                                .parts
                                .iter()
                                .map(|p| (p.batchref.clone(), u64::from(p.qty.get())))
                                .collect();
                            parts.sort();
                            prop_assert_eq!(after.get(&key), Some(&parts));
                            prop_assert_eq!(total(&parts), u64::from(*units));
                            // Sent again, a line is answered as first allocated.
                            if !split && !before.contains_key(&key) {
                                prop_assert_eq!(parts.len(), 1, "whole lines only");
                            }
                        }
                    }
                    Err(Error::Rejected(DomainError::OrderShort { short, .. })) => {
                        prop_assert_eq!(after, before, "all or nothing");
                        for line in short {
                            prop_assert_eq!(line.available, available[&line.sku]);
                            prop_assert!(line.available < u64::from(line.requested.get()));
                            prop_assert!(
                                waiting_for(&waiting_before, &line.sku)
                                    + u64::from(line.requested.get())
                                    > self.limit_of(&line.sku),
                                "refused within the backorder limit"
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
                let after = self.placement().await?;
                match reply {
                    Ok(parts) if parts.is_empty() => {
                        prop_assert!(waiting_before.contains_key(&line), "withdrawn");
                        prop_assert!(!self.waiting().await?.contains_key(&line));
                    }
                    Ok(parts) => {
                        let mut parts: Vec<_> = parts
                            .into_iter()
                            .map(|p| (p.batchref, u64::from(p.qty.get())))
                            .collect();
                        parts.sort();
                        prop_assert_eq!(before.get(&line), Some(&parts));
                        prop_assert_eq!(after.get(&line), None, "cancelled lines stay cancelled");
                    }
                    Err(error) => {
                        prop_assert_eq!(before.get(&line), None);
                        refused_only_by_the_domain(Err::<(), _>(error))?;
                    }
                }
                self.check_new_lines_were_waiting(&before, &waiting_before, |l, _| *l == line)
                    .await?;
            }
            Step::ChangeBatchQuantity { batch, qty: units } => {
                let command = ChangeBatchQuantity {
                    reference: batch_name(batch),
                    qty: qty(units),
                };
                refused_only_by_the_domain(self.bus.handle(command).await)?;
                self.check_only_its_lines_moved(&before, &waiting_before, &batch_name(batch))
                    .await?;
            }
            Step::Adjust {
                batch,
                delta,
                qty: units,
                expected,
            } => {
                let command = AdjustBatch {
                    reference: batch_name(batch),
                    adjustment: Adjustment {
                        change: if delta == 0 {
                            Change::To(units.into())
                        } else {
                            Change::By(delta)
                        },
                        reason: AdjustmentReason::CycleCount,
                        note: None,
                        expected_qty: expected.map(u64::from),
                    },
                };
                match self.bus.handle(command).await {
                    Ok(_) => {
                        self.check_only_its_lines_moved(
                            &before,
                            &waiting_before,
                            &batch_name(batch),
                        )
                        .await?
                    }
                    Err(error) => {
                        refused_only_by_the_domain(Err::<(), _>(error))?;
                        prop_assert_eq!(self.placement().await?, before, "refused whole");
                    }
                }
            }
            Step::SetLimit {
                sku: product,
                limit,
            } => {
                let command = ChangeSettings {
                    sku: sku(SKUS[product]),
                    backorder_limit: Some(limit),
                    low_stock_threshold: None,
                };
                match self.bus.handle(command).await {
                    Ok(settings) => {
                        prop_assert_eq!(settings.backorder_limit, limit);
                        self.limits[product] = limit;
                    }
                    Err(error) => prop_assert!(
                        matches!(error, Error::UnknownProduct(_)),
                        "unexpected error: {}",
                        error
                    ),
                }
                prop_assert_eq!(self.placement().await?, before);
                prop_assert_eq!(self.waiting().await?, waiting_before, "nothing withdrawn");
            }
        }
        self.check_consistency().await
    }

    /// After `changed` shrank or grew: only lines with a part on it moved.
    /// A part that left it and is nowhere now was tried on every batch of
    /// its product: none has room for it.
    async fn check_only_its_lines_moved(
        &self,
        before: &Placement,
        waiting_before: &Waiting,
        changed: &BatchRef,
    ) -> Result<(), TestCaseError> {
        let on_changed =
            |_: &(OrderId, Sku), parts: &[(BatchRef, u64)]| batches_of(parts).contains(&changed);
        self.check_new_lines_were_waiting(before, waiting_before, on_changed)
            .await?;
        let after = self.placement().await?;
        for (line, parts) in before {
            let now = after.get(line).map(Vec::as_slice).unwrap_or_default();
            if !batches_of(parts).contains(&changed) {
                prop_assert_eq!(now, parts.as_slice(), "only the changed batch's lines move");
                continue;
            }
            for (batch, units) in parts.iter().filter(|(batch, _)| batch != changed) {
                let kept = now.iter().find(|(b, _)| b == batch).map(|(_, u)| *u);
                prop_assert!(
                    kept >= Some(*units),
                    "{:?} lost its part on {:?}",
                    line,
                    batch
                );
            }
            let lost = total(parts) - total(now);
            if lost > 0 {
                prop_assert_eq!(
                    self.room_for(&line.1, lost).await,
                    vec![],
                    "{:?} was not reallocated",
                    line
                );
            }
        }
        Ok(())
    }

    /// Nothing over-allocated; each batch's total is what the read model's
    /// parts on it hold; every part was announced on its batch; each
    /// batch's movements, in increasing numbers, sum to its quantity; no
    /// waiting backorder fits a batch; and the availability figures are
    /// what the batches and the lines add up to.
    async fn check_consistency(&self) -> Result<(), TestCaseError> {
        let placement = self.placement().await?;
        let waiting = self.waiting().await?;
        let messages = self.store.unsent_messages();
        for product in SKUS.map(sku) {
            let batches = self
                .store
                .batches(&product, chrono::Utc::now())
                .await
                .expect("a query");
            for ((_, of), units) in &waiting {
                if *of == product {
                    prop_assert_eq!(self.room_for(of, *units).await, vec![], "it would fit");
                }
            }
            // Told of every crossing to none and back, once each: the
            // messages alternate, and the last says where the stock is.
            let crossings: Vec<bool> = messages
                .iter()
                .filter_map(|m| match &m.message {
                    Outgoing::Stock(news) if news.sku == product => match news.message {
                        StockMessage::Exhausted => Some(true),
                        StockMessage::BackInStock => Some(false),
                        StockMessage::Low => None,
                    },
                    _ => None,
                })
                .collect();
            prop_assert!(
                crossings.windows(2).all(|w| w[0] != w[1]),
                "{:?}",
                crossings
            );
            let available: u64 = batches.iter().map(|b| b.available()).sum();
            if !batches.is_empty() {
                prop_assert_eq!(
                    crossings.last().copied().unwrap_or(false),
                    available == 0,
                    "the last message about {:?} is not where its stock is",
                    product
                );
            }
            let backordered = self.store.backordered(&product).await.expect("a query");
            prop_assert_eq!(backordered, waiting_for(&waiting, &product));
            if let Some(figures) = AvailabilityView::of(&batches, backordered) {
                let in_lines: u64 = placement
                    .iter()
                    .filter(|((_, of), _)| *of == product)
                    .map(|(_, parts)| total(parts))
                    .sum();
                let purchased: u64 = batches.iter().map(|b| b.purchased).sum();
                let free: u64 = batches.iter().map(|b| b.purchased - b.allocated).sum();
                prop_assert_eq!(figures.allocated, in_lines);
                prop_assert_eq!(figures.on_hand + figures.incoming, purchased);
                prop_assert_eq!((figures.held, figures.available), (0, free));
                prop_assert_eq!(figures.backordered, waiting_for(&waiting, &product));
            }
            for batch in batches {
                prop_assert!(
                    batch.allocated <= batch.purchased,
                    "{:?} over-allocated",
                    batch
                );
                let on_batch: u64 = placement
                    .values()
                    .flatten()
                    .filter(|(placed, _)| *placed == batch.reference)
                    .map(|(_, units)| units)
                    .sum();
                prop_assert_eq!(batch.allocated, on_batch, "{:?}", batch.reference);
                let ledger = self
                    .store
                    .movements(&batch.reference)
                    .await
                    .expect("a query")
                    .expect("a known batch");
                let sum: i64 = ledger.iter().map(|m| m.delta).sum();
                prop_assert_eq!(u64::try_from(sum).ok(), Some(batch.purchased));
                prop_assert_eq!(ledger.last().map(|m| m.qty_after), Some(batch.purchased));
                prop_assert!(ledger.windows(2).all(|w| w[0].number < w[1].number));
            }
        }
        for ((order, product), parts) in &placement {
            for (batch, units) in parts {
                let last = messages
                    .iter()
                    .rev()
                    .filter_map(|m| m.line_allocated())
                    .find(|event| {
                        &event.orderid == order && &event.sku == product && &event.batchref == batch
                    });
                let announced = last.map(|event| u64::from(event.qty.get()));
                prop_assert!(
                    announced.is_some_and(|announced| announced <= *units),
                    "{:?} on {:?} announced as {:?}",
                    (order, product),
                    batch,
                    announced
                );
            }
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
