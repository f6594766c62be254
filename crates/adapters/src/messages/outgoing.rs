//! Outgoing messages are domain events told to other systems: [`encode`]
//! gives an outbox message's channel and payload. The outbox also holds the
//! out-of-stock emails, on a channel of their own ([`OUT_OF_STOCK`]) that
//! names their rows; their relay sends them as email, never to Redis.

use domain::events::{Allocated, StockMessage};
use serde::Serialize;
use service_layer::ports::{OutboxMessage, Outgoing, StockNews};
use uuid::Uuid;

use super::{BACK_IN_STOCK, LINE_ALLOCATED, LOW_STOCK, OUT_OF_STOCK, STOCK_EXHAUSTED};

/// The channel `message` goes out on, and its payload. An out-of-stock
/// email has one too (`{"sku", "message_id"}`), for the log of a relay it
/// was misrouted to: its own relay emails it.
pub fn encode(message: &OutboxMessage) -> (&'static str, String) {
    let payload = match &message.message {
        Outgoing::LineAllocated(event) => encode_line_allocated(event, message.message_id),
        Outgoing::Stock(news) => encode_stock_news(news, message.message_id),
        Outgoing::OutOfStock(event) => to_json(&StockLevel {
            sku: event.sku.as_str(),
            message_id: &message.message_id.hyphenated().to_string(),
        }),
    };
    (channel_of(&message.message), payload)
}

/// The channel a message goes out on: what the outbox stores with it.
pub fn channel_of(message: &Outgoing) -> &'static str {
    match message {
        Outgoing::LineAllocated(_) => LINE_ALLOCATED,
        Outgoing::OutOfStock(_) => OUT_OF_STOCK,
        Outgoing::Stock(news) => match news.message {
            StockMessage::Exhausted => STOCK_EXHAUSTED,
            StockMessage::BackInStock => BACK_IN_STOCK,
            StockMessage::Low => LOW_STOCK,
        },
    }
}

/// `stock_exhausted` and `back_in_stock`: `{"sku", "message_id"}`.
#[derive(Serialize)]
struct StockLevel<'a> {
    sku: &'a str,
    message_id: &'a str,
}

/// `low_stock`: `{"sku", "available", "threshold", "message_id"}`.
#[derive(Serialize)]
struct LowStock<'a> {
    sku: &'a str,
    available: u64,
    threshold: u64,
    message_id: &'a str,
}

fn encode_stock_news(news: &StockNews, message_id: Uuid) -> String {
    let message_id = message_id.hyphenated().to_string();
    let (sku, message_id) = (news.sku.as_str(), message_id.as_str());
    match news.message {
        StockMessage::Exhausted | StockMessage::BackInStock => {
            to_json(&StockLevel { sku, message_id })
        }
        StockMessage::Low => to_json(&LowStock {
            sku,
            available: news.available,
            threshold: news.threshold,
            message_id,
        }),
    }
}

/// A payload as JSON. Serializing a struct of strings and integers cannot
/// fail: serde_json errors only for non-string map keys or a failing
/// custom `Serialize`.
fn to_json(payload: &impl Serialize) -> String {
    serde_json::to_string(payload).expect("a struct of strings and integers serializes")
}

/// The `line_allocated` payload, fields in the book's order.
#[derive(Serialize)]
struct LineAllocated<'a> {
    orderid: &'a str,
    sku: &'a str,
    qty: u32,
    batchref: &'a str,
    message_id: &'a str,
}

/// The `line_allocated` payload for `event`. `message_id` is unique per
/// message (the outbox row's id), so that consumers can drop the duplicates
/// an at-least-once relay may send; a re-send of the same outbox row must
/// reuse it.
pub fn encode_line_allocated(event: &Allocated, message_id: Uuid) -> String {
    let message_id = message_id.hyphenated().to_string();
    let message = LineAllocated {
        orderid: event.orderid.as_str(),
        sku: event.sku.as_str(),
        qty: event.qty.get(),
        batchref: event.batchref.as_str(),
        message_id: &message_id,
    };
    to_json(&message)
}

#[cfg(test)]
mod tests {
    use domain::{BatchRef, OrderId, Quantity, Sku};

    use super::*;

    fn allocated() -> Allocated {
        Allocated {
            orderid: OrderId::parse("order-1").expect("valid"),
            sku: Sku::parse("BLUE-\"VASE\"").expect("valid"),
            qty: Quantity::parse(10, "qty").expect("valid"),
            batchref: BatchRef::parse("batch-1").expect("valid"),
        }
    }

    #[test]
    fn stock_news_goes_out_on_its_channel() {
        let message_id = Uuid::from_u128(0x0b5c_1d00_0000_4000_8000_0000_0000_0002);
        let news = |message| OutboxMessage {
            message_id,
            message: Outgoing::Stock(StockNews {
                message,
                sku: Sku::parse("LAMP").expect("valid"),
                available: 2,
                threshold: 5,
            }),
        };
        let id = "0b5c1d00-0000-4000-8000-000000000002";
        assert_eq!(
            encode(&news(StockMessage::Exhausted)),
            (
                STOCK_EXHAUSTED,
                format!(r#"{{"sku":"LAMP","message_id":"{id}"}}"#)
            )
        );
        assert_eq!(
            encode(&news(StockMessage::BackInStock)),
            (
                BACK_IN_STOCK,
                format!(r#"{{"sku":"LAMP","message_id":"{id}"}}"#)
            )
        );
        assert_eq!(
            encode(&news(StockMessage::Low)),
            (
                LOW_STOCK,
                format!(r#"{{"sku":"LAMP","available":2,"threshold":5,"message_id":"{id}"}}"#)
            )
        );
    }

    #[test]
    fn line_allocated_carries_the_allocation_and_the_message_id() {
        let message_id = Uuid::from_u128(0x0b5c_1d00_0000_4000_8000_0000_0000_0001);
        let payload = encode_line_allocated(&allocated(), message_id);
        assert_eq!(
            payload,
            r#"{"orderid":"order-1","sku":"BLUE-\"VASE\"","qty":10,"batchref":"batch-1","message_id":"0b5c1d00-0000-4000-8000-000000000001"}"#
        );
    }
}
