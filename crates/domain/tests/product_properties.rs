//! Property tests of the Product aggregate: random sequences of commands,
//! each compared step by step (reply, events, state) with a deliberately
//! plain reference model of the rules in docs/contract.md section 1.
//!
//! Two ways of holding the product are checked: one aggregate kept in memory
//! with every line loaded, and a product restored for each command with only
//! the lines that command needs, as the repositories load it.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{Days, NaiveDate};
use domain::events::{
    Allocated, AllocationCancelled, BatchCreated, BatchQuantityChanged, Deallocated, OutOfStock,
    StockMoved,
};
use domain::{
    Adjustment, AdjustmentReason, Batch, BatchRef, Change, DomainError, Event, Movement, OrderId,
    OrderLine, Product, Quantity, Reason, Sku,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Few batches and orders and small quantities, so that references and
/// orders recur (idempotent and conflicting repeats), ETAs tie, and batches
/// run out and get shrunk below what they hold.
const BATCHES: usize = 5;
const ORDERS: usize = 10;
const MAX_BATCH_QTY: u32 = 30;
const MAX_LINE_QTY: u32 = 12;
const ETA_DAYS: u64 = 4;

fn sku() -> Sku {
    Sku::parse("PROP-LAMP").expect("a valid sku")
}

fn batchref(index: usize) -> BatchRef {
    BatchRef::parse(&format!("batch-{index}")).expect("a valid reference")
}

fn orderid(index: usize) -> OrderId {
    OrderId::parse(&format!("order-{index}")).expect("a valid order id")
}

fn quantity(units: u32) -> Quantity {
    Quantity::parse(units.into(), "qty").expect("a valid quantity")
}

fn eta(days_later: Option<u64>) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(2026, 11, 25).expect("a valid date");
    days_later.map(|days| first + Days::new(days))
}

/// A command as the test generates it: small indices instead of values.
#[derive(Debug, Clone)]
enum Step {
    AddBatch {
        batch: usize,
        qty: u32,
        /// Days after a fixed date; `None` is warehouse stock.
        eta: Option<u64>,
    },
    Allocate {
        order: usize,
        qty: u32,
    },
    Deallocate {
        order: usize,
    },
    ChangeBatchQuantity {
        batch: usize,
        qty: u32,
    },
    /// An operator's adjustment: by `delta`, or to `qty` when `delta` is 0.
    Adjust {
        batch: usize,
        delta: i64,
        qty: u32,
        /// The quantity the operator saw, when they give one.
        expected: Option<u32>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..BATCHES, 1..=MAX_BATCH_QTY, proptest::option::of(0..ETA_DAYS))
            .prop_map(|(batch, qty, eta)| Step::AddBatch { batch, qty, eta }),
        4 => (0..ORDERS, 1..=MAX_LINE_QTY).prop_map(|(order, qty)| Step::Allocate { order, qty }),
        1 => (0..ORDERS).prop_map(|order| Step::Deallocate { order }),
        2 => (0..BATCHES, 1..=MAX_BATCH_QTY)
            .prop_map(|(batch, qty)| Step::ChangeBatchQuantity { batch, qty }),
        2 => (
            0..BATCHES,
            -(MAX_BATCH_QTY as i64)..=(MAX_BATCH_QTY as i64),
            0..=MAX_BATCH_QTY,
            proptest::option::of(0..=MAX_BATCH_QTY),
        )
            .prop_map(|(batch, delta, qty, expected)| Step::Adjust { batch, delta, qty, expected }),
    ]
}

/// A command on the product, in domain values.
#[derive(Debug, Clone)]
enum Command {
    AddBatch(BatchRef, Quantity, Option<NaiveDate>),
    Allocate(OrderLine),
    Deallocate(OrderId),
    ChangeBatchQuantity(BatchRef, Quantity),
    Adjust(BatchRef, Adjustment),
}

impl From<&Step> for Command {
    fn from(step: &Step) -> Self {
        match *step {
            Step::AddBatch {
                batch,
                qty,
                eta: days,
            } => Self::AddBatch(batchref(batch), quantity(qty), eta(days)),
            Step::Allocate { order, qty } => Self::Allocate(OrderLine {
                orderid: orderid(order),
                sku: sku(),
                qty: quantity(qty),
            }),
            Step::Deallocate { order } => Self::Deallocate(orderid(order)),
            Step::ChangeBatchQuantity { batch, qty } => {
                Self::ChangeBatchQuantity(batchref(batch), quantity(qty))
            }
            Step::Adjust {
                batch,
                delta,
                qty,
                expected,
            } => Self::Adjust(
                batchref(batch),
                Adjustment {
                    change: if delta == 0 {
                        Change::To(qty.into())
                    } else {
                        Change::By(delta)
                    },
                    reason: AdjustmentReason::CycleCount,
                    note: None,
                    expected_qty: expected.map(u64::from),
                },
            ),
        }
    }
}

/// What a command did: the caller's answer and the events recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    reply: Reply,
    events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Done,
    AllocatedTo(Option<BatchRef>),
    /// The batches the line's parts were on.
    DeallocatedFrom(Vec<BatchRef>),
    Refused(DomainError),
}

impl Outcome {
    fn quiet(reply: Reply) -> Self {
        Self {
            reply,
            events: Vec::new(),
        }
    }

    fn refused(error: DomainError) -> Self {
        Self::quiet(Reply::Refused(error))
    }

    /// The follow-up commands the service runs after this one: the
    /// `Deallocated` handler allocates each bumped line again
    /// (`service_layer::handlers::reallocate`), in the order recorded.
    fn reallocations(&self) -> impl Iterator<Item = Command> + '_ {
        self.events.iter().filter_map(|event| match event {
            Event::Deallocated(bumped) => Some(Command::Allocate(OrderLine {
                orderid: bumped.orderid.clone(),
                sku: bumped.sku.clone(),
                qty: bumped.qty,
            })),
            _ => None,
        })
    }
}

/// The reference model: the rules written as plainly as possible, with
/// lists searched front to back and nothing shared with the real code.
#[derive(Debug, Clone, Default)]
struct Model {
    /// In creation order.
    batches: Vec<ModelBatch>,
    /// One more for every change: what numbers a movement.
    version: u64,
}

#[derive(Debug, Clone)]
struct ModelBatch {
    reference: BatchRef,
    eta: Option<NaiveDate>,
    purchased: u32,
    /// `(orderid, qty)`, in the order they were allocated.
    lines: Vec<(OrderId, u32)>,
}

impl ModelBatch {
    fn allocated(&self) -> u64 {
        self.lines.iter().map(|(_, qty)| u64::from(*qty)).sum()
    }

    fn can_take(&self, qty: u32) -> bool {
        self.allocated() + u64::from(qty) <= u64::from(self.purchased)
    }
}

impl Model {
    fn run(&mut self, command: &Command) -> Outcome {
        let mut outcome = match command {
            Command::AddBatch(reference, qty, eta) => self.add_batch(reference, qty.get(), *eta),
            Command::Allocate(line) => self.allocate(&line.orderid, line.qty.get()),
            Command::Deallocate(orderid) => self.deallocate(orderid),
            Command::ChangeBatchQuantity(reference, qty) => {
                self.change_batch_quantity(reference, qty.get(), Reason::Changed)
            }
            Command::Adjust(reference, adjustment) => self.adjust(reference, adjustment),
        };
        // Every change counts one version; a movement bears its own.
        for event in &mut outcome.events {
            if !matches!(event, Event::OutOfStock(_)) {
                self.version += 1;
            }
            if let Event::StockMoved(moved) = event {
                moved.movement.number = self.version;
            }
        }
        outcome
    }

    /// An operator's adjustment: refused before anything changes, then a
    /// quantity change with its reason, recorded even when it changes
    /// nothing.
    fn adjust(&mut self, reference: &BatchRef, adjustment: &Adjustment) -> Outcome {
        let Some(batch) = self.batches.iter().find(|b| &b.reference == reference) else {
            return Outcome::refused(DomainError::UnknownBatch {
                reference: reference.clone(),
            });
        };
        let current = i128::from(batch.purchased);
        if let Some(expected) = adjustment.expected_qty {
            if i128::from(expected) != current {
                return Outcome::refused(DomainError::QuantityNotAsExpected {
                    reference: reference.clone(),
                    expected,
                    actual: u64::from(batch.purchased),
                });
            }
        }
        let target = match adjustment.change {
            Change::By(delta) => current + i128::from(delta),
            Change::To(qty) => i128::from(qty),
        };
        let Some(qty) = u32::try_from(target).ok().filter(|q| *q <= Quantity::MAX) else {
            return Outcome::refused(DomainError::AdjustmentOutOfRange {
                reference: reference.clone(),
                result: target,
            });
        };
        let reason = Reason::Adjusted(adjustment.reason);
        if current == target {
            return Outcome {
                reply: Reply::Done,
                events: vec![moved(reference, 0, qty, reason, None)],
            };
        }
        self.change_batch_quantity(reference, qty, reason)
    }

    fn add_batch(&mut self, reference: &BatchRef, qty: u32, eta: Option<NaiveDate>) -> Outcome {
        if let Some(existing) = self.batches.iter().find(|b| &b.reference == reference) {
            return if existing.purchased == qty && existing.eta == eta {
                Outcome::quiet(Reply::Done)
            } else {
                Outcome::refused(DomainError::BatchExists {
                    reference: reference.clone(),
                })
            };
        }
        self.batches.push(ModelBatch {
            reference: reference.clone(),
            eta,
            purchased: qty,
            lines: Vec::new(),
        });
        Outcome {
            reply: Reply::Done,
            events: vec![
                Event::BatchCreated(BatchCreated {
                    sku: sku(),
                    reference: reference.clone(),
                    qty: quantity(qty),
                    eta,
                }),
                moved(reference, qty.into(), qty, Reason::Received, None),
            ],
        }
    }

    fn allocate(&mut self, orderid: &OrderId, qty: u32) -> Outcome {
        for batch in &self.batches {
            if let Some((_, existing)) = batch.lines.iter().find(|(o, _)| o == orderid) {
                return if *existing == qty {
                    Outcome::quiet(Reply::AllocatedTo(Some(batch.reference.clone())))
                } else {
                    Outcome::refused(DomainError::AlreadyAllocated {
                        orderid: orderid.clone(),
                        sku: sku(),
                        allocated: u64::from(*existing),
                    })
                };
            }
        }
        // Warehouse stock in creation order, then shipments by ETA; the sort
        // is stable, so equal ETAs stay in creation order.
        let mut shipments: Vec<usize> = (0..self.batches.len())
            .filter(|&i| self.batches[i].eta.is_some())
            .collect();
        shipments.sort_by_key(|&i| self.batches[i].eta);
        let warehouse = (0..self.batches.len()).filter(|&i| self.batches[i].eta.is_none());
        let preferred: Vec<usize> = warehouse.chain(shipments).collect();
        let Some(chosen) = preferred
            .into_iter()
            .find(|&i| self.batches[i].can_take(qty))
        else {
            return Outcome {
                reply: Reply::AllocatedTo(None),
                events: vec![Event::OutOfStock(OutOfStock { sku: sku() })],
            };
        };
        let batch = &mut self.batches[chosen];
        batch.lines.push((orderid.clone(), qty));
        Outcome {
            reply: Reply::AllocatedTo(Some(batch.reference.clone())),
            events: vec![Event::Allocated(Allocated {
                orderid: orderid.clone(),
                sku: sku(),
                qty: quantity(qty),
                batchref: batch.reference.clone(),
            })],
        }
    }

    fn deallocate(&mut self, orderid: &OrderId) -> Outcome {
        for batch in &mut self.batches {
            if let Some(position) = batch.lines.iter().position(|(o, _)| o == orderid) {
                let (_, qty) = batch.lines.remove(position);
                return Outcome {
                    reply: Reply::DeallocatedFrom(vec![batch.reference.clone()]),
                    events: vec![Event::AllocationCancelled(AllocationCancelled {
                        orderid: orderid.clone(),
                        sku: sku(),
                        qty: quantity(qty),
                        batchref: batch.reference.clone(),
                    })],
                };
            }
        }
        Outcome::refused(DomainError::NotAllocated {
            orderid: orderid.clone(),
            sku: sku(),
        })
    }

    /// The change alone: reallocating what it bumped is up to the caller,
    /// as in the service, where a separate command does it.
    fn change_batch_quantity(&mut self, reference: &BatchRef, qty: u32, reason: Reason) -> Outcome {
        let Some(batch) = self.batches.iter_mut().find(|b| &b.reference == reference) else {
            return Outcome::refused(DomainError::UnknownBatch {
                reference: reference.clone(),
            });
        };
        if batch.purchased == qty {
            return Outcome::quiet(Reply::Done);
        }
        let delta = i64::from(qty) - i64::from(batch.purchased);
        batch.purchased = qty;
        let mut events = Vec::new();
        // The most recently allocated lines go first, until it fits.
        while batch.allocated() > u64::from(qty) {
            let (orderid, units) = batch.lines.pop().expect("something is allocated");
            events.push(Event::Deallocated(Deallocated {
                orderid,
                sku: sku(),
                qty: quantity(units),
                batchref: reference.clone(),
            }));
        }
        events.push(Event::BatchQuantityChanged(BatchQuantityChanged {
            sku: sku(),
            reference: reference.clone(),
            qty: qty.into(),
        }));
        events.push(moved(reference, delta, qty, reason, None));
        Outcome {
            reply: Reply::Done,
            events,
        }
    }

    /// The product as a repository restores it from storage (this model):
    /// every batch with its totals, in creation order, plus only the lines
    /// `command` needs.
    fn restore(&self, version: u64, command: &Command) -> Product {
        let batches = self
            .batches
            .iter()
            .map(|b| {
                Batch::restore(
                    b.reference.clone(),
                    sku(),
                    b.eta,
                    b.purchased.into(),
                    b.allocated(),
                    0,
                )
            })
            .collect();
        let mut product = Product::restore(sku(), version, batches);
        let as_line = |(orderid, qty): &(OrderId, u32)| OrderLine {
            orderid: orderid.clone(),
            sku: sku(),
            qty: quantity(*qty),
        };
        match command {
            Command::AddBatch(..) => {}
            Command::Allocate(OrderLine { orderid, .. }) | Command::Deallocate(orderid) => {
                for batch in &self.batches {
                    let of_order = batch.lines.iter().filter(|(o, _)| o == orderid);
                    product.load_lines(&batch.reference, of_order.map(as_line));
                }
            }
            Command::ChangeBatchQuantity(reference, _) | Command::Adjust(reference, _) => {
                if let Some(batch) = self.batches.iter().find(|b| &b.reference == reference) {
                    product.load_lines(reference, batch.lines.iter().map(as_line));
                }
            }
        }
        product
    }

    /// Per batch, in creation order: reference, ETA, purchased, allocated.
    fn totals(&self) -> Vec<(BatchRef, Option<NaiveDate>, u64, u64)> {
        let batches = self.batches.iter();
        batches
            .map(|b| {
                (
                    b.reference.clone(),
                    b.eta,
                    b.purchased.into(),
                    b.allocated(),
                )
            })
            .collect()
    }

    /// Per batch, in creation order: its lines, oldest first.
    fn lines(&self) -> Vec<Vec<(OrderId, u32)>> {
        self.batches.iter().map(|b| b.lines.clone()).collect()
    }
}

/// A ledger entry as the model writes it; [`Model::run`] numbers it.
fn moved(
    reference: &BatchRef,
    delta: i64,
    qty_after: u32,
    reason: Reason,
    order: Option<OrderId>,
) -> Event {
    Event::StockMoved(StockMoved {
        sku: sku(),
        reference: reference.clone(),
        movement: Movement {
            number: 0,
            delta,
            qty_after: qty_after.into(),
            reason,
            note: None,
            order,
        },
    })
}

fn totals(product: &Product) -> Vec<(BatchRef, Option<NaiveDate>, u64, u64)> {
    let batches = product.batches().iter();
    batches
        .map(|b| {
            let purchased = b.purchased_quantity();
            (
                b.reference().clone(),
                b.eta(),
                purchased,
                b.allocated_quantity(),
            )
        })
        .collect()
}

fn loaded_lines(product: &Product) -> Vec<Vec<(OrderId, u32)>> {
    let batches = product.batches().iter();
    batches
        .map(|b| {
            let lines = b.loaded_lines().iter();
            lines.map(|l| (l.orderid.clone(), l.qty.get())).collect()
        })
        .collect()
}

/// Runs `command` on `product` and returns what it did, checking that the
/// version moved exactly when the state did.
fn run(product: &mut Product, command: &Command) -> Result<Outcome, TestCaseError> {
    let version = product.version();
    let reply = match command.clone() {
        Command::AddBatch(reference, qty, eta) => {
            product.add_batch(reference, qty, eta).map(|()| Reply::Done)
        }
        Command::Allocate(line) => product
            .allocate(line)
            .map(|allocation| Reply::AllocatedTo(allocation.batchref())),
        Command::Deallocate(orderid) => product
            .deallocate(&orderid)
            .map(|parts| Reply::DeallocatedFrom(parts.into_iter().map(|p| p.batchref).collect())),
        Command::ChangeBatchQuantity(reference, qty) => product
            .change_batch_quantity(&reference, qty)
            .map(|()| Reply::Done),
        Command::Adjust(reference, adjustment) => product
            .adjust_batch(&reference, adjustment)
            .map(|_| Reply::Done),
    };
    let events = product.take_events();
    let changed = events.iter().any(|e| !matches!(e, Event::OutOfStock(_)));
    prop_assert!(product.version() >= version, "the version went back");
    prop_assert_eq!(
        product.version() > version,
        changed,
        "version moved without a change, or a change without the version"
    );
    Ok(Outcome {
        reply: reply.unwrap_or_else(Reply::Refused),
        events,
    })
}

/// The invariants, checked on the real product alone.
fn check_invariants(product: &Product, all_lines_loaded: bool) -> Result<(), TestCaseError> {
    let mut allocated_orders = HashSet::new();
    for batch in product.batches() {
        prop_assert!(
            batch.allocated_quantity() <= batch.purchased_quantity(),
            "batch {} over-allocated: {} of {}",
            batch.reference(),
            batch.allocated_quantity(),
            batch.purchased_quantity()
        );
        for line in batch.loaded_lines() {
            prop_assert!(
                allocated_orders.insert(line.orderid.clone()),
                "order {} allocated twice",
                line.orderid
            );
        }
        if all_lines_loaded {
            let lines_total: u64 = batch
                .loaded_lines()
                .iter()
                .map(|l| u64::from(l.qty.get()))
                .sum();
            prop_assert_eq!(batch.allocated_quantity(), lines_total);
        }
    }
    Ok(())
}

/// How the product under test is held between commands.
#[derive(Debug, Clone, Copy)]
enum Holding {
    /// One aggregate for the whole sequence, every line loaded.
    InMemory,
    /// Restored from the model for each command, with only the lines that
    /// command needs loaded, as the repositories do.
    RestoredPerCommand,
}

fn check_against_model(steps: &[Step], holding: Holding) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut kept = Product::new(sku());
    let mut stored_version = 0;
    // Each batch's ledger, summed from the product's own events.
    let mut ledger: HashMap<BatchRef, i64> = HashMap::new();
    for step in steps {
        // A step and the follow-ups it starts, breadth-first like the bus.
        let mut commands = VecDeque::from([Command::from(step)]);
        while let Some(command) = commands.pop_front() {
            let actual = match holding {
                Holding::InMemory => run(&mut kept, &command)?,
                Holding::RestoredPerCommand => {
                    let mut restored = model.restore(stored_version, &command);
                    let outcome = run(&mut restored, &command)?;
                    stored_version = restored.version();
                    kept = restored;
                    outcome
                }
            };
            let expected = model.run(&command);
            prop_assert_eq!(&actual, &expected, "{:?} in step {:?}", command, step);
            commands.extend(actual.reallocations());
            for event in &actual.events {
                if let Event::StockMoved(moved) = event {
                    *ledger.entry(moved.reference.clone()).or_default() += moved.movement.delta;
                }
            }
            for batch in kept.batches() {
                let summed = ledger.get(batch.reference()).copied().unwrap_or_default();
                prop_assert_eq!(
                    u64::try_from(summed).ok(),
                    Some(batch.purchased_quantity()),
                    "batch {}'s movements do not sum to its quantity",
                    batch.reference()
                );
            }

            check_invariants(&kept, matches!(holding, Holding::InMemory))?;
            prop_assert_eq!(totals(&kept), model.totals(), "after {:?}", command);
            if let Holding::InMemory = holding {
                prop_assert_eq!(loaded_lines(&kept), model.lines(), "after {:?}", command);
            }
        }
    }
    Ok(())
}

proptest! {
    // Five hundred sequences of up to 50 steps: well under a second each
    // in a debug build, and enough to hit repeats, ties and shrinks.
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_product_kept_in_memory_follows_the_model(steps in prop::collection::vec(step(), 1..50)) {
        check_against_model(&steps, Holding::InMemory)?;
    }

    #[test]
    fn a_product_restored_with_only_the_lines_a_command_needs_follows_the_model(
        steps in prop::collection::vec(step(), 1..50)
    ) {
        check_against_model(&steps, Holding::RestoredPerCommand)?;
    }
}
