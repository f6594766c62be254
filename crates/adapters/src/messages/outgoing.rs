//! Outgoing messages are domain events told to other systems:
//! [`encode_line_allocated`].

use domain::events::Allocated;
use serde::Serialize;
use uuid::Uuid;

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
    // Serializing a struct of strings and an integer cannot fail: serde_json
    // errors only for non-string map keys or a failing custom `Serialize`.
    serde_json::to_string(&message).expect("a struct of strings and integers serializes")
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
    fn line_allocated_carries_the_allocation_and_the_message_id() {
        let message_id = Uuid::from_u128(0x0b5c_1d00_0000_4000_8000_0000_0000_0001);
        let payload = encode_line_allocated(&allocated(), message_id);
        assert_eq!(
            payload,
            r#"{"orderid":"order-1","sku":"BLUE-\"VASE\"","qty":10,"batchref":"batch-1","message_id":"0b5c1d00-0000-4000-8000-000000000001"}"#
        );
    }
}
