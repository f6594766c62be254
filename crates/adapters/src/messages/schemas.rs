//! Tests of the agreement between the codecs of `messages` and `docs/messages/*.schema.json`:
//! each schema's examples decode (and stop decoding when any required
//! field is removed), and each encoded outgoing message has exactly its
//! schema's required fields, each of the declared JSON type. Not a full
//! JSON Schema validator: enough to notice when one side changes alone.

use domain::events::{Allocated, StockMessage};
use domain::{BatchRef, OrderId, Quantity, Sku};
use serde_json::{Map, Value};
use service_layer::ports::{OutboxMessage, Outgoing, StockNews};
use uuid::Uuid;

use super::{
    ALLOCATE, CHANGE_BATCH_QUANTITY, LINE_ALLOCATED, decode, encode, encode_line_allocated,
};

const ALLOCATE_SCHEMA: &str = include_str!("../../../../docs/messages/allocate.schema.json");
const CHANGE_BATCH_QUANTITY_SCHEMA: &str =
    include_str!("../../../../docs/messages/change_batch_quantity.schema.json");
const LINE_ALLOCATED_SCHEMA: &str =
    include_str!("../../../../docs/messages/line_allocated.schema.json");
const STOCK_EXHAUSTED_SCHEMA: &str =
    include_str!("../../../../docs/messages/stock_exhausted.schema.json");
const BACK_IN_STOCK_SCHEMA: &str =
    include_str!("../../../../docs/messages/back_in_stock.schema.json");
const LOW_STOCK_SCHEMA: &str = include_str!("../../../../docs/messages/low_stock.schema.json");

/// Any allocation: the schema constrains field names and types only.
fn allocated() -> Allocated {
    Allocated {
        orderid: OrderId::parse("order-1").expect("valid"),
        sku: Sku::parse("BLUE-VASE").expect("valid"),
        qty: Quantity::parse(10, "qty").expect("valid"),
        batchref: BatchRef::parse("batch-1").expect("valid"),
    }
}

fn schema(text: &str) -> Value {
    serde_json::from_str(text).expect("the schema file is JSON")
}

fn required(schema: &Value) -> Vec<String> {
    schema["required"]
        .as_array()
        .expect("the schema lists required fields")
        .iter()
        .map(|name| name.as_str().expect("field names are strings").to_owned())
        .collect()
}

fn json_type_matches(declared: &str, value: &Value) -> bool {
    match declared {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("the test does not know JSON type {other:?}"),
    }
}

fn check_incoming(channel: &str, text: &str) {
    let schema = schema(text);
    assert_eq!(
        schema["title"], channel,
        "the schema's title is its channel"
    );
    let required = required(&schema);
    let examples = schema["examples"]
        .as_array()
        .expect("the schema has examples");
    assert!(!examples.is_empty());
    for example in examples {
        let payload = example.to_string();
        assert!(
            decode(channel, payload.as_bytes()).is_ok(),
            "{channel} example {payload}"
        );
        for name in &required {
            let mut without = example.clone();
            without
                .as_object_mut()
                .expect("examples are objects")
                .remove(name);
            assert!(
                decode(channel, without.to_string().as_bytes()).is_err(),
                "{channel} accepted an example without required field {name}"
            );
        }
    }
    // Every field the decoder reads is required by the schema: a
    // field dropped from `required` would make this example decode.
    let minimal: Map<String, Value> = examples[0]
        .as_object()
        .expect("examples are objects")
        .iter()
        .filter(|(name, _)| required.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    assert!(
        decode(channel, Value::Object(minimal).to_string().as_bytes()).is_ok(),
        "{channel}: the decoder needs a field the schema does not require"
    );
}

#[test]
fn incoming_examples_agree_with_the_decoder() {
    check_incoming(ALLOCATE, ALLOCATE_SCHEMA);
    check_incoming(CHANGE_BATCH_QUANTITY, CHANGE_BATCH_QUANTITY_SCHEMA);
}

/// Checks that `payload`, as the encoder wrote it, has exactly the required
/// fields of `text`'s schema, each of the declared JSON type, and that the
/// schema's examples have the same fields.
fn check_outgoing(channel: &str, text: &str, payload: &str) {
    let schema = schema(text);
    assert_eq!(
        schema["title"], channel,
        "the schema's title is its channel"
    );
    let mut required = required(&schema);
    let encoded: Value = serde_json::from_str(payload).expect("the encoder writes JSON");
    let encoded = encoded.as_object().expect("an object");
    let mut written: Vec<String> = encoded.keys().cloned().collect();
    required.sort();
    written.sort();
    assert_eq!(written, required, "{channel}");
    for (name, value) in encoded {
        let declared = schema["properties"][name]["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{channel}: the schema declares the type of {name}"));
        assert!(
            json_type_matches(declared, value),
            "{channel}: {name}: {value} is not {declared}"
        );
    }
    // The schema's own example is a payload this service could send.
    for example in schema["examples"].as_array().expect("examples") {
        let mut keys: Vec<&String> = example.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, required.iter().collect::<Vec<_>>(), "{channel}");
    }
}

#[test]
fn encoded_line_allocated_has_exactly_the_required_fields() {
    let payload = encode_line_allocated(&allocated(), Uuid::nil());
    check_outgoing(LINE_ALLOCATED, LINE_ALLOCATED_SCHEMA, &payload);
}

#[test]
fn encoded_stock_messages_have_exactly_the_required_fields() {
    for (message, text) in [
        (StockMessage::Exhausted, STOCK_EXHAUSTED_SCHEMA),
        (StockMessage::BackInStock, BACK_IN_STOCK_SCHEMA),
        (StockMessage::Low, LOW_STOCK_SCHEMA),
    ] {
        let news = OutboxMessage {
            message_id: Uuid::nil(),
            message: Outgoing::Stock(StockNews {
                message,
                sku: allocated().sku,
                available: 2,
                threshold: 5,
            }),
        };
        let (channel, payload) = encode(&news);
        check_outgoing(channel, text, &payload);
    }
}
