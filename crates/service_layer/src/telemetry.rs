//! The bus's metrics (through the `metrics` facade): their names, which the
//! binary describes and exports, and the counting of handled messages under
//! keys built at compile time.

use domain::Event;
use metrics::{Key, Level, Metadata};

/// The metrics the bus records (through the `metrics` facade); the binary
/// describes and exports them.
pub mod metric_names {
    pub const MESSAGES_HANDLED: &str = "allocation_messages_handled_total";
    pub const CONFLICT_RETRIES: &str = "allocation_version_conflict_retries_total";
    pub const EVENT_HANDLER_RETRIES: &str = "allocation_event_handler_retries_total";
    pub const EVENT_HANDLER_GIVE_UPS: &str = "allocation_event_handler_give_ups_total";
    pub const GROUP_COMMIT_SIZE: &str = "allocation_group_commit_size";
}

/// The key of `allocation_messages_handled_total` for one kind (`command`,
/// `event`), name and outcome (`ok`, `rejected`, `failed`, `abandoned`), built at compile
/// time: `metrics::counter!` with labels known only at run time builds and
/// hashes a vector of labels per call, which cost the in-memory bus an
/// eighth of its time per command.
macro_rules! handled_key {
    ($kind:literal, $name:expr, $outcome:literal) => {
        const {
            &::metrics::Key::from_static_parts(
                $crate::telemetry::metric_names::MESSAGES_HANDLED,
                const {
                    &[
                        ::metrics::Label::from_static_parts("kind", $kind),
                        ::metrics::Label::from_static_parts("name", $name),
                        ::metrics::Label::from_static_parts("outcome", $outcome),
                    ]
                },
            )
        }
    };
}
pub(crate) use handled_key;

/// What `metrics::counter!` and the like would register the bus's metrics
/// with, for those registered by hand with keys built at compile time.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Counts a handled message in `allocation_messages_handled_total`, under
/// a key from [`handled_key!`].
pub(crate) fn count_handled(key: &'static Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// The key for an event's outcome (`ok` or `failed`): the variant's name is
/// the event's name, as [`Event::name`] gives it.
pub(crate) fn event_handled_key(event: &Event, succeeded: bool) -> &'static Key {
    macro_rules! by_variant {
        ($($variant:ident),*) => {
            match (event, succeeded) {
                $(
                    (Event::$variant(_), true) => handled_key!("event", stringify!($variant), "ok"),
                    (Event::$variant(_), false) => {
                        handled_key!("event", stringify!($variant), "failed")
                    }
                )*
            }
        };
    }
    by_variant!(
        BatchCreated,
        Allocated,
        Deallocated,
        AllocationCancelled,
        BatchQuantityChanged,
        StockMoved,
        Shipped,
        LineCancelled,
        OutOfStock,
        Held,
        HoldExtended,
        HoldReleased,
        HoldBroken,
        HoldConverted,
        Backordered,
        BackorderFilled,
        BackorderWithdrawn,
        SettingsChanged,
        StockLevelChanged
    )
}

/// Records the size of a group commit in `allocation_group_commit_size`.
pub(crate) fn record_group_size(commands: usize) {
    static GROUP_SIZE: Key = Key::from_static_name(metric_names::GROUP_COMMIT_SIZE);
    metrics::with_recorder(|recorder| recorder.register_histogram(&GROUP_SIZE, &METADATA))
        .record(commands as f64);
}

#[cfg(test)]
mod tests {
    use domain::events::{
        Allocated, AllocationCancelled, BatchCreated, BatchQuantityChanged, Deallocated, OutOfStock,
    };
    use domain::fixtures::{batchref, orderid, qty, sku};

    use super::*;

    /// The compile-time keys name each event as `Event::name` does, so the
    /// counts line up with the logs.
    #[test]
    fn event_keys_carry_the_event_name_and_outcome() {
        let (orderid, sku, qty, batchref) = (orderid("o1"), sku("LAMP"), qty(1), batchref("b1"));
        let events = [
            Event::BatchCreated(BatchCreated {
                sku: sku.clone(),
                reference: batchref.clone(),
                qty,
                eta: None,
            }),
            Event::Allocated(Allocated {
                orderid: orderid.clone(),
                sku: sku.clone(),
                qty,
                batchref: batchref.clone(),
            }),
            Event::Deallocated(Deallocated {
                orderid: orderid.clone(),
                sku: sku.clone(),
                qty,
                batchref: batchref.clone(),
            }),
            Event::AllocationCancelled(AllocationCancelled {
                orderid,
                sku: sku.clone(),
                qty,
                batchref: batchref.clone(),
            }),
            Event::BatchQuantityChanged(BatchQuantityChanged {
                sku: sku.clone(),
                reference: batchref,
                qty: qty.get().into(),
            }),
            Event::OutOfStock(OutOfStock { sku }),
        ];
        for event in &events {
            for (succeeded, outcome) in [(true, "ok"), (false, "failed")] {
                let key = event_handled_key(event, succeeded);
                let labels: Vec<(&str, &str)> =
                    key.labels().map(|l| (l.key(), l.value())).collect();
                assert_eq!(key.name(), metric_names::MESSAGES_HANDLED);
                assert_eq!(
                    labels,
                    [
                        ("kind", "event"),
                        ("name", event.name()),
                        ("outcome", outcome)
                    ]
                );
            }
        }
    }
}
