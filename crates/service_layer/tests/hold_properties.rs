//! Property test of checkout holds and whole orders through the message
//! bus over the in-memory store: random holds, extensions, releases,
//! conversions, single allocations, shipments, cancellations and batch
//! changes of two products, with time moving on between them. After every
//! step no batch has more allocated
//! and held than it has; what each batch holds is exactly what the live
//! holds say; and each command's answer agrees with what the test knows of
//! the holds (live, expired, ended, unknown).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::commands::{
    Allocate, AllocateOrder, CancelOrder, ChangeBatchQuantity, CreateBatch, ExtendHold, PlaceHold,
    ReleaseHold, ShipOrder,
};
use domain::fixtures::{batchref, orderid, qty, sku};
use domain::{Allocation, BatchRef, DomainError, HoldId, OrderLines, Sku};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use service_layer::memory::{ManualClock, MemoryStore};
use service_layer::ports::{HoldState, LineStatus, ReadModel};
use service_layer::relay::Wakeups;
use service_layer::{Error, MessageBus, RetryPolicy};

const SKUS: [&str; 2] = ["HOLD-CHAIR", "HOLD-TABLE"];
const BATCHES: usize = 4;
const HOLDS: usize = 6;
const ORDERS: usize = 6;

#[derive(Debug, Clone)]
enum Step {
    AddBatch {
        batch: usize,
        sku: usize,
        qty: u32,
        eta: bool,
    },
    Hold {
        lines: Vec<(usize, u32)>,
        ttl: u64,
    },
    Extend {
        hold: usize,
        ttl: u64,
    },
    Release {
        hold: usize,
    },
    /// An order of a hold's lines (or, `other`, of one unit more) that
    /// converts it.
    Convert {
        hold: usize,
        order: usize,
        other: bool,
    },
    Allocate {
        order: usize,
        sku: usize,
        qty: u32,
    },
    ChangeBatchQuantity {
        batch: usize,
        qty: u32,
    },
    Ship {
        order: usize,
    },
    Cancel {
        order: usize,
    },
    Wait {
        seconds: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let sku = 0..SKUS.len();
    let lines = (
        proptest::sample::subsequence(vec![0, 1], 1..=2),
        1..=15u32,
        1..=15u32,
    )
        .prop_map(|(skus, first, second)| skus.into_iter().zip([first, second]).collect());
    prop_oneof![
        2 => (0..BATCHES, sku.clone(), 1..=30u32, proptest::bool::weighted(0.3))
            .prop_map(|(batch, sku, qty, eta)| Step::AddBatch { batch, sku, qty, eta }),
        4 => (lines, 1..=120u64).prop_map(|(lines, ttl)| Step::Hold { lines, ttl }),
        1 => (0..HOLDS, 1..=120u64).prop_map(|(hold, ttl)| Step::Extend { hold, ttl }),
        1 => (0..HOLDS).prop_map(|hold| Step::Release { hold }),
        2 => (0..HOLDS, 0..ORDERS, proptest::bool::weighted(0.2))
            .prop_map(|(hold, order, other)| Step::Convert { hold, order, other }),
        2 => (0..ORDERS, sku, 1..=10u32)
            .prop_map(|(order, sku, qty)| Step::Allocate { order, sku, qty }),
        1 => (0..BATCHES, 1..=30u32).prop_map(|(batch, qty)| Step::ChangeBatchQuantity { batch, qty }),
        1 => (0..ORDERS).prop_map(|order| Step::Ship { order }),
        1 => (0..ORDERS).prop_map(|order| Step::Cancel { order }),
        2 => (1..=90u64).prop_map(|seconds| Step::Wait { seconds }),
    ]
}

/// What the test knows of a hold it placed.
#[derive(Debug, Clone)]
struct Known {
    id: HoldId,
    lines: Vec<(Sku, u32)>,
    expires_at: DateTime<Utc>,
}

struct App {
    bus: Arc<MessageBus<MemoryStore>>,
    store: MemoryStore,
    clock: Arc<ManualClock>,
    /// Holds placed, in order; steps name them by index (modulo).
    holds: Vec<Known>,
    next_hold: usize,
}

impl App {
    fn new() -> Self {
        let store = MemoryStore::new();
        let start = DateTime::from_timestamp(1_796_000_000, 0).expect("a time");
        let clock = Arc::new(ManualClock::new(start));
        let bus = MessageBus::new(store.clone(), Wakeups::new(), RetryPolicy::default());
        Self {
            bus: Arc::new(bus.with_clock(clock.clone())),
            store,
            clock,
            holds: Vec::new(),
            next_hold: 0,
        }
    }

    fn known(&self, index: usize) -> Option<Known> {
        (!self.holds.is_empty()).then(|| self.holds[index % self.holds.len()].clone())
    }

    async fn state(&self, hold: &HoldId) -> Option<HoldState> {
        let view = self.store.hold(hold).await.expect("a query");
        view.map(|view| view.state)
    }

    /// Live: not ended, and not yet at its expiry.
    async fn is_live(&self, hold: &Known) -> bool {
        self.state(&hold.id).await == Some(HoldState::Active) && hold.expires_at > self.bus.now()
    }

    async fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step.clone() {
            Step::AddBatch {
                batch,
                sku: s,
                qty: units,
                eta,
            } => {
                // Some on a ship: their lines cannot ship.
                let due = chrono::NaiveDate::from_ymd_opt(2031, 1, 1);
                let command = CreateBatch {
                    reference: batchref(&format!("batch-{batch}")),
                    sku: sku(SKUS[s]),
                    qty: qty(units),
                    eta: due.filter(|_| eta),
                };
                allowed(self.bus.handle(command).await)?;
            }
            Step::Hold { lines, ttl } => {
                let id = HoldId::parse(&format!("hold-{}", self.next_hold)).expect("id");
                self.next_hold += 1;
                let lines: Vec<(Sku, u32)> = lines
                    .iter()
                    .map(|(s, units)| (sku(SKUS[*s]), *units))
                    .collect();
                let command = PlaceHold {
                    hold_id: id.clone(),
                    lines: order_lines(&lines),
                    ttl: Duration::from_secs(ttl),
                };
                match self.bus.handle(command).await {
                    Ok(placed) => {
                        prop_assert_eq!(
                            placed.expires_at,
                            self.bus.now() + Duration::from_secs(ttl)
                        );
                        self.holds.push(Known {
                            id,
                            lines,
                            expires_at: placed.expires_at,
                        });
                    }
                    Err(Error::Rejected(DomainError::HoldShort { short })) => {
                        prop_assert_eq!(self.state(&id).await, None, "refused whole");
                        for line in short {
                            prop_assert_eq!(line.available, self.best_batch(&line.sku).await);
                        }
                    }
                    other => allowed(other)?,
                }
            }
            Step::Extend { hold, ttl } => {
                let Some(known) = self.known(hold) else {
                    return self.check().await;
                };
                let live = self.is_live(&known).await;
                let command = ExtendHold {
                    hold_id: known.id.clone(),
                    ttl: Duration::from_secs(ttl),
                };
                match self.bus.handle(command).await {
                    Ok(expires_at) => {
                        prop_assert!(live, "extended {:?}, which had ended", known.id);
                        if let Some(k) = self.holds.iter_mut().find(|k| k.id == known.id) {
                            k.expires_at = expires_at;
                        }
                    }
                    Err(Error::HoldGone(_)) => prop_assert!(!live, "{:?} was live", known.id),
                    other => return Err(TestCaseError::fail(format!("extend: {other:?}"))),
                }
            }
            Step::Release { hold } => {
                let Some(known) = self.known(hold) else {
                    return self.check().await;
                };
                let before = self.state(&known.id).await;
                let command = ReleaseHold {
                    hold_id: known.id.clone(),
                };
                prop_assert!(self.bus.handle(command).await.is_ok());
                let after = self.state(&known.id).await;
                let expected = match before {
                    Some(HoldState::Converted) => Some(HoldState::Converted),
                    _ => Some(HoldState::Released),
                };
                prop_assert_eq!(after, expected);
            }
            Step::Convert { hold, order, other } => {
                let Some(known) = self.known(hold) else {
                    return self.check().await;
                };
                let live = self.is_live(&known).await;
                let before = self.state(&known.id).await;
                let mut lines = known.lines.clone();
                if other {
                    lines[0].1 += 1;
                }
                let command = AllocateOrder {
                    orderid: orderid(&format!("order-{order}")),
                    lines: order_lines(&lines),
                    split: false,
                    hold_id: Some(known.id.clone()),
                };
                let reply = self.bus.handle(command).await;
                match (&reply, live) {
                    (Ok(_), true) => {
                        prop_assert!(!other, "converted other lines than held");
                        prop_assert_eq!(self.state(&known.id).await, Some(HoldState::Converted));
                    }
                    (Err(Error::Rejected(DomainError::HoldMismatch { .. })), true) => {
                        prop_assert!(other, "the lines were the hold's");
                    }
                    // A live hold's order may hold the lines already.
                    (Err(Error::Rejected(DomainError::AlreadyAllocated { .. })), true) => {}
                    (_, true) => return Err(TestCaseError::fail(format!("{reply:?}"))),
                    // Ended: placed as if it named no hold.
                    (_, false) => {
                        let mismatch = matches!(
                            reply,
                            Err(Error::Rejected(DomainError::HoldMismatch { .. }))
                        );
                        prop_assert!(!mismatch, "an ended hold is ignored");
                        allowed(reply)?;
                        prop_assert_eq!(self.state(&known.id).await, before, "untouched");
                    }
                }
            }
            Step::Allocate {
                order,
                sku: s,
                qty: units,
            } => {
                let command = Allocate {
                    orderid: orderid(&format!("order-{order}")),
                    sku: sku(SKUS[s]),
                    qty: qty(units),
                };
                let product = sku(SKUS[s]);
                match self.bus.handle(command).await {
                    Ok(Allocation::OutOfStock) => {
                        prop_assert!(self.best_batch(&product).await < u64::from(units))
                    }
                    other => allowed(other)?,
                }
            }
            Step::ChangeBatchQuantity { batch, qty: units } => {
                let command = ChangeBatchQuantity {
                    reference: batchref(&format!("batch-{batch}")),
                    qty: qty(units),
                };
                allowed(self.bus.handle(command).await)?;
            }
            Step::Ship { order } => {
                let orderid = orderid(&format!("order-{order}"));
                let before = self.store.order(&orderid).await.expect("a query");
                let command = ShipOrder {
                    orderid: orderid.clone(),
                    skus: Vec::new(),
                };
                let reply = self.bus.handle(command).await;
                let after = self.store.order(&orderid).await.expect("a query");
                match reply {
                    Ok(()) => {
                        for (was, now) in before.iter().zip(&after) {
                            let expected = match was.status {
                                LineStatus::Allocated => LineStatus::Shipped,
                                other => other,
                            };
                            prop_assert_eq!(now.status, expected);
                        }
                    }
                    Err(_) => prop_assert_eq!(after, before, "refused whole"),
                }
            }
            Step::Cancel { order } => {
                let orderid = orderid(&format!("order-{order}"));
                let before = self.store.order(&orderid).await.expect("a query");
                let command = CancelOrder {
                    orderid: orderid.clone(),
                };
                let reply = self.bus.handle(command).await;
                let after = self.store.order(&orderid).await.expect("a query");
                prop_assert_eq!(reply.is_ok(), !before.is_empty());
                for (was, now) in before.iter().zip(&after) {
                    let expected = match was.status {
                        LineStatus::Shipped => LineStatus::Shipped,
                        _ => LineStatus::Cancelled,
                    };
                    prop_assert_eq!(now.status, expected);
                }
            }
            Step::Wait { seconds } => self.clock.advance(Duration::from_secs(seconds)),
        }
        self.check().await
    }

    /// The most units one batch of `product` has free.
    async fn best_batch(&self, product: &Sku) -> u64 {
        let batches = self
            .store
            .batches(product, self.bus.now())
            .await
            .expect("a query");
        batches.iter().map(|b| b.available()).max().unwrap_or(0)
    }

    /// No batch over-committed, and each batch holds exactly what the live
    /// holds' parts on it add up to.
    async fn check(&self) -> Result<(), TestCaseError> {
        let now = self.bus.now();
        let mut held: HashMap<BatchRef, u64> = HashMap::new();
        for known in &self.holds {
            let view = self.store.hold(&known.id).await.expect("a query");
            let Some(view) = view else {
                return Err(TestCaseError::fail(format!("{:?} vanished", known.id)));
            };
            prop_assert_eq!(view.expires_at, known.expires_at);
            if view.state == HoldState::Active && view.expires_at > now {
                for part in view.lines.iter().flat_map(|line| &line.parts) {
                    *held.entry(part.batchref.clone()).or_default() += part.qty;
                }
            }
        }
        for product in SKUS.map(sku) {
            for batch in self.store.batches(&product, now).await.expect("a query") {
                prop_assert!(
                    batch.allocated + batch.held <= batch.purchased,
                    "{:?} over-committed",
                    batch
                );
                let expected = held.get(&batch.reference).copied().unwrap_or(0);
                prop_assert_eq!(batch.held, expected, "{:?}", batch.reference);
            }
        }
        Ok(())
    }
}

fn order_lines(lines: &[(Sku, u32)]) -> OrderLines {
    OrderLines::new(
        lines
            .iter()
            .map(|(s, units)| (s.clone(), qty(*units)))
            .collect(),
    )
    .expect("one line per SKU")
}

/// A command may be refused by the rules, never fail otherwise: one
/// writer, an in-memory store.
fn allowed<T: std::fmt::Debug>(reply: Result<T, Error>) -> Result<(), TestCaseError> {
    match reply {
        Ok(_) | Err(Error::Rejected(_) | Error::InvalidSku(_)) => Ok(()),
        Err(error) => Err(TestCaseError::fail(format!("unexpected error: {error}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn holds_never_over_commit_and_count_exactly_while_live(
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
