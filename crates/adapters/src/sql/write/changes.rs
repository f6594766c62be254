//! What a commit's changes say to write, as rows: each event of a product,
//! each read-model change and each message becomes a row of its [`Kind`],
//! whose writer reads the columns it needs by name.

use domain::events::{
    AllocationCancelled, BackorderFilled, BackorderWithdrawn, Deallocated, HoldBroken,
    HoldConverted, HoldReleased, LineCancelled, Shipped, StockMoved,
};
use domain::{Event, Note, Sku};
use serde::Serialize;
use service_layer::ports::{OutboxMessage, Outgoing, ViewChange};

use super::Kind;
use crate::sql::rows::{eta_to_db, time_to_db};

/// One row of a run: the columns its kind's writer reads, by name (the
/// writers' column names), the others `None`. A writer reads rows as
/// parameters of a VALUES list or as one JSON array (see [`Columns`]).
#[derive(Debug, Default, Serialize)]
pub(in crate::sql) struct Row<'a> {
    /// Its place in the run: writers that insert order by it, so that ids
    /// follow the order things happened in.
    pub(in crate::sql) n: i64,
    pub(in crate::sql) sku: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) orderid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) batchref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) qty: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) eta: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) hold_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) expires_at: Option<i64>,
    /// What an ended hold part, or a closed line, became.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) state: Option<&'static str>,
    /// A movement's columns (`StockMoved`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) delta: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) qty_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) source: Option<String>,
    /// An outbox message's channel and destination, and a stock message's
    /// figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) channel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) destination: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) available: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) threshold: Option<i64>,
    /// A product's stock level (`StockLevelChanged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) level: Option<&'static str>,
    /// A SKU's settings (`SettingsChanged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) backorder_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) low_stock_threshold: Option<i64>,
    /// An incoming message's key (`DeliveriesRecorded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(in crate::sql) delivery: Option<&'a str>,
}

impl<'a> Row<'a> {
    pub(super) fn of(sku: &'a str) -> Self {
        Self {
            sku,
            ..Self::default()
        }
    }
}

/// A column's value, borrowed from its row.
#[derive(Debug, Clone, Copy)]
pub(in crate::sql) enum Value<'r> {
    Text(Option<&'r str>),
    BigInt(Option<i64>),
}

/// Rows whose columns a writer reads by name: as a JSON array of objects
/// (serde, field names) or one value at a time ([`Columns::value`]).
pub(in crate::sql) trait Columns: Serialize {
    /// The value of `column`, or `None` if the row has no such column.
    fn value(&self, column: &str) -> Option<Value<'_>>;
}

impl Columns for Row<'_> {
    fn value(&self, column: &str) -> Option<Value<'_>> {
        use Value::{BigInt, Text};
        Some(match column {
            "n" => BigInt(Some(self.n)),
            "sku" => Text(Some(self.sku)),
            "reference" => Text(self.reference),
            "orderid" => Text(self.orderid),
            "batchref" => Text(self.batchref),
            "qty" => BigInt(self.qty),
            "eta" => Text(self.eta.as_deref()),
            "message_id" => Text(self.message_id.as_deref()),
            "created_at" => BigInt(self.created_at),
            "hold_id" => Text(self.hold_id),
            "expires_at" => BigInt(self.expires_at),
            "state" => Text(self.state),
            "number" => BigInt(self.number),
            "at" => BigInt(self.at),
            "delta" => BigInt(self.delta),
            "qty_after" => BigInt(self.qty_after),
            "reason" => Text(self.reason),
            "note" => Text(self.note),
            "source" => Text(self.source.as_deref()),
            "channel" => Text(self.channel),
            "destination" => Text(self.destination),
            "available" => BigInt(self.available),
            "threshold" => BigInt(self.threshold),
            "level" => Text(self.level),
            "backorder_limit" => BigInt(self.backorder_limit),
            "low_stock_threshold" => BigInt(self.low_stock_threshold),
            "delivery" => Text(self.delivery),
            _ => return None,
        })
    }
}

/// What an event says to write, if anything: the one place events meet
/// writers. `at` is when it happens (unix milliseconds).
pub(super) fn change_of<'a>(sku: &'a Sku, event: &'a Event, at: i64) -> Option<(Kind, Row<'a>)> {
    let row = Row::of(sku.as_str());
    let change = match event {
        Event::BatchCreated(e) => (
            Kind::BatchesCreated,
            Row {
                reference: Some(e.reference.as_str()),
                qty: Some(e.qty.get().into()),
                eta: e.eta.map(eta_to_db),
                ..row
            },
        ),
        Event::Allocated(e) => (
            Kind::LinesAllocated,
            Row {
                orderid: Some(e.orderid.as_str()),
                batchref: Some(e.batchref.as_str()),
                qty: Some(e.qty.get().into()),
                ..row
            },
        ),
        // The stored line on that batch says how much to give back.
        Event::Deallocated(Deallocated {
            orderid, batchref, ..
        })
        | Event::AllocationCancelled(AllocationCancelled {
            orderid, batchref, ..
        }) => (
            Kind::LinesRemoved,
            Row {
                orderid: Some(orderid.as_str()),
                batchref: Some(batchref.as_str()),
                ..row
            },
        ),
        Event::BatchQuantityChanged(e) => (
            Kind::BatchQuantitiesChanged,
            Row {
                reference: Some(e.reference.as_str()),
                qty: Some(quantity(e.qty)),
                ..row
            },
        ),
        Event::StockMoved(StockMoved {
            reference,
            movement,
            ..
        }) => (
            Kind::StockMoved,
            Row {
                reference: Some(reference.as_str()),
                number: Some(quantity(movement.number)),
                at: Some(at),
                delta: Some(movement.delta),
                qty_after: Some(quantity(movement.qty_after)),
                reason: Some(movement.reason.as_str()),
                note: movement.note.as_ref().map(Note::as_str),
                source: movement.source(),
                ..row
            },
        ),
        Event::Held(e) => (
            Kind::HoldPartsPlaced,
            Row {
                hold_id: Some(e.hold_id.as_str()),
                batchref: Some(e.batchref.as_str()),
                qty: Some(e.qty.get().into()),
                expires_at: Some(time_to_db(e.expires_at)),
                ..row
            },
        ),
        Event::HoldExtended(e) => (
            Kind::HoldPartsExtended,
            Row {
                hold_id: Some(e.hold_id.as_str()),
                expires_at: Some(time_to_db(e.expires_at)),
                ..row
            },
        ),
        Event::HoldReleased(HoldReleased {
            hold_id, batchref, ..
        })
        | Event::HoldBroken(HoldBroken {
            hold_id, batchref, ..
        }) => (
            Kind::HoldPartsEnded,
            Row {
                hold_id: Some(hold_id.as_str()),
                batchref: Some(batchref.as_str()),
                state: Some("released"),
                ..row
            },
        ),
        Event::HoldConverted(HoldConverted {
            hold_id, batchref, ..
        }) => (
            Kind::HoldPartsEnded,
            Row {
                hold_id: Some(hold_id.as_str()),
                batchref: Some(batchref.as_str()),
                state: Some("converted"),
                ..row
            },
        ),
        Event::Shipped(Shipped {
            orderid, batchref, ..
        }) => (
            Kind::LinesClosed,
            Row {
                orderid: Some(orderid.as_str()),
                batchref: Some(batchref.as_str()),
                state: Some("shipped"),
                ..row
            },
        ),
        Event::LineCancelled(LineCancelled {
            orderid, batchref, ..
        }) => (
            Kind::LinesClosed,
            Row {
                orderid: Some(orderid.as_str()),
                batchref: Some(batchref.as_str()),
                state: Some("cancelled"),
                ..row
            },
        ),
        Event::Backordered(e) => (
            Kind::BackordersPlaced,
            Row {
                orderid: Some(e.orderid.as_str()),
                qty: Some(e.qty.get().into()),
                number: Some(quantity(e.number)),
                ..row
            },
        ),
        Event::BackorderFilled(BackorderFilled { orderid, .. })
        | Event::BackorderWithdrawn(BackorderWithdrawn {
            orderid,
            cancelled: false,
            ..
        }) => (
            Kind::BackordersEnded,
            Row {
                orderid: Some(orderid.as_str()),
                state: Some("removed"),
                ..row
            },
        ),
        Event::BackorderWithdrawn(BackorderWithdrawn {
            orderid,
            cancelled: true,
            ..
        }) => (
            Kind::BackordersEnded,
            Row {
                orderid: Some(orderid.as_str()),
                state: Some("cancelled"),
                ..row
            },
        ),
        Event::SettingsChanged(e) => (
            Kind::SettingsChanged,
            Row {
                backorder_limit: Some(quantity(e.settings.backorder_limit)),
                low_stock_threshold: Some(quantity(e.settings.low_stock_threshold)),
                ..row
            },
        ),
        Event::StockLevelChanged(e) => (
            Kind::StockLevelsChanged,
            Row {
                level: Some(e.to.as_str()),
                ..row
            },
        ),
        Event::OutOfStock(_) => return None,
    };
    Some(change)
}

/// A count of units or a version number as a BIGINT: both stay far below
/// `i64::MAX` (quantities are at most a billion).
fn quantity(units: u64) -> i64 {
    i64::try_from(units).unwrap_or(i64::MAX)
}

pub(super) fn change_of_view(view: &ViewChange) -> (Kind, Row<'_>) {
    match view {
        ViewChange::Allocated {
            orderid,
            sku,
            batchref,
        } => (
            Kind::ViewRowsSet,
            Row {
                orderid: Some(orderid.as_str()),
                batchref: Some(batchref.as_str()),
                ..Row::of(sku.as_str())
            },
        ),
        ViewChange::Deallocated {
            orderid,
            sku,
            batchref,
        } => (
            Kind::ViewRowsRemoved,
            Row {
                orderid: Some(orderid.as_str()),
                batchref: Some(batchref.as_str()),
                ..Row::of(sku.as_str())
            },
        ),
    }
}

pub(super) fn message_row(message: &OutboxMessage, created_at: i64) -> Row<'_> {
    let row = Row {
        message_id: Some(message.message_id.to_string()),
        channel: Some(crate::messages::channel_of(&message.message)),
        destination: Some(message.message.destination().as_str()),
        created_at: Some(created_at),
        ..Row::of(message.message.sku().as_str())
    };
    match &message.message {
        Outgoing::LineAllocated(event) => Row {
            orderid: Some(event.orderid.as_str()),
            batchref: Some(event.batchref.as_str()),
            qty: Some(event.qty.get().into()),
            ..row
        },
        Outgoing::Stock(news) => Row {
            available: Some(quantity(news.available)),
            threshold: Some(quantity(news.threshold)),
            ..row
        },
        Outgoing::OutOfStock(_) => row,
    }
}
