//! The wire formats of the messages the service exchanges over Redis pub/sub
//! (docs/contract.md section 3; book chapter 11, "event-driven integration").
//!
//! Incoming messages are external commands: [`decode`] turns a channel name
//! and a raw payload into a [`domain::Command`], parsing every field through
//! the domain's value types, so the message bus only ever sees valid input.
//! Outgoing messages are domain events told to other systems:
//! [`encode_line_allocated`].
//!
//! This module is pure (no I/O): the Redis transport lives in
//! [`crate::redis`], and the JSON Schemas that document these payloads for
//! other teams live in `docs/messages/` (a unit test below keeps the two in
//! step).
//!
//! Errors never echo the payload's values (only field names and small
//! numbers): a malformed message is logged, and a multi-megabyte string
//! should not end up in the log with it.

use std::fmt;

use domain::commands::{Allocate, ChangeBatchQuantity};
use domain::events::Allocated;
use domain::{BatchRef, Command, OrderId, Quantity, Sku, ValueError};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Incoming: allocate an order line, `{"orderid", "sku", "qty"}`.
pub const ALLOCATE: &str = "allocate";
/// Incoming: set a batch's purchased quantity, `{"batchref", "qty"}`.
pub const CHANGE_BATCH_QUANTITY: &str = "change_batch_quantity";
/// Outgoing: a line was allocated (or reallocated),
/// `{"orderid", "sku", "qty", "batchref", "message_id"}`.
pub const LINE_ALLOCATED: &str = "line_allocated";

/// The channels the service subscribes to: every channel [`decode`] accepts.
pub const INCOMING: [&str; 2] = [ALLOCATE, CHANGE_BATCH_QUANTITY];

/// A message that could not be turned into a command, and why.
///
/// Its `Display` is one line naming the channel and the reason, meant for
/// the log line that records the skipped message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message on channel {channel:?} rejected: {reason}")]
pub struct DecodeError {
    /// The channel the message came on (as received, possibly unknown).
    pub channel: String,
    pub reason: DecodeReason,
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeReason {
    #[error("unknown channel (this service handles {ALLOCATE:?} and {CHANGE_BATCH_QUANTITY:?})")]
    UnknownChannel,
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// serde_json's description of the syntax error: a position, never the
    /// offending text.
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object, got {0}")]
    NotAnObject(JsonType),
    #[error("field {0:?} is missing")]
    MissingField(&'static str),
    #[error("field {field:?} must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: JsonType,
    },
    /// A number that is not a whole number (`2.5`, `1e3`): serde_json keeps
    /// those as floats, which the domain's quantities never are.
    #[error(
        "field {field:?} must be a whole number from 1 to {}, got {value}",
        Quantity::MAX
    )]
    NotWholeNumber { field: &'static str, value: String },
    /// The value has the right JSON type but the domain refuses it (empty or
    /// over-long identifier, quantity out of range).
    #[error(transparent)]
    Invalid(#[from] ValueError),
}

/// The kind of a JSON value, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn of(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(_) => Self::Bool,
            Value::Number(_) => Self::Number,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::Array,
            Value::Object(_) => Self::Object,
        }
    }
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

/// Turns a message received on `channel` into the command it asks for.
///
/// Fields the service does not know are ignored (senders may add their
/// own, e.g. a `message_id`); each known field must be present, of the
/// right JSON type, and a valid domain value.
pub fn decode(channel: &str, payload: &[u8]) -> Result<Command, DecodeError> {
    decode_inner(channel, payload).map_err(|reason| DecodeError {
        channel: channel.to_owned(),
        reason,
    })
}

fn decode_inner(channel: &str, payload: &[u8]) -> Result<Command, DecodeReason> {
    // The channel first: a message on a channel we do not handle is not
    // worth parsing, and its reason should say so rather than "bad JSON".
    if !INCOMING.contains(&channel) {
        return Err(DecodeReason::UnknownChannel);
    }
    // serde_json checks UTF-8 itself, but only reports it as a generic
    // syntax error; checking first gives the operator the real reason.
    let text = std::str::from_utf8(payload).map_err(|_| DecodeReason::NotUtf8)?;
    // Through `Value` rather than a derived `Deserialize` struct: serde's
    // derive also accepts a JSON array as a struct (fields by position),
    // and its errors quote the offending values.
    let value: Value =
        serde_json::from_str(text).map_err(|error| DecodeReason::NotJson(error.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(DecodeReason::NotAnObject(JsonType::of(&value)));
    };
    if channel == ALLOCATE {
        Ok(Command::Allocate(Allocate {
            // The domain's own field names are this channel's: no renaming.
            orderid: OrderId::parse(string_field(&fields, "orderid")?)?,
            sku: Sku::parse(string_field(&fields, "sku")?)?,
            qty: quantity_field(&fields, "qty")?,
        }))
    } else {
        Ok(Command::ChangeBatchQuantity(ChangeBatchQuantity {
            // The domain calls a batch's identifier `ref`; on this channel
            // the field is `batchref`, and the error should name that.
            reference: BatchRef::parse(string_field(&fields, "batchref")?)
                .map_err(|error| renamed(error, "batchref"))?,
            qty: quantity_field(&fields, "qty")?,
        }))
    }
}

fn field<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a Value, DecodeReason> {
    fields.get(name).ok_or(DecodeReason::MissingField(name))
}

fn string_field<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, DecodeReason> {
    match field(fields, name)? {
        Value::String(text) => Ok(text),
        other => Err(DecodeReason::WrongType {
            field: name,
            expected: "a string",
            got: JsonType::of(other),
        }),
    }
}

fn quantity_field(
    fields: &Map<String, Value>,
    name: &'static str,
) -> Result<Quantity, DecodeReason> {
    let number = match field(fields, name)? {
        Value::Number(number) => number,
        // A quantity in a string ("3") is a type error, as on the HTTP API:
        // accepting it here would make the two entrypoints disagree.
        other => {
            return Err(DecodeReason::WrongType {
                field: name,
                expected: "an integer",
                got: JsonType::of(other),
            });
        }
    };
    // serde_json holds integers as i64 or u64 and everything else as f64;
    // the domain's range check then covers zero, negatives and huge values.
    let whole = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from));
    match whole {
        Some(value) => Ok(Quantity::parse(value, name)?),
        None => Err(DecodeReason::NotWholeNumber {
            field: name,
            value: number.to_string(),
        }),
    }
}

/// The same refusal, naming the message's field instead of the domain's.
fn renamed(error: ValueError, field: &'static str) -> DecodeReason {
    DecodeReason::Invalid(match error {
        ValueError::Empty { .. } => ValueError::Empty { field },
        ValueError::TooLong { .. } => ValueError::TooLong { field },
        ValueError::ControlCharacter { .. } => ValueError::ControlCharacter { field },
        ValueError::QuantityOutOfRange { value, .. } => {
            ValueError::QuantityOutOfRange { field, value }
        }
    })
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
    // Serializing a struct of strings and an integer cannot fail: serde_json
    // errors only for non-string map keys or a failing custom `Serialize`.
    serde_json::to_string(&message).expect("a struct of strings and integers serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(channel: &str, payload: &[u8]) -> DecodeError {
        match decode(channel, payload) {
            Ok(command) => panic!("{channel} {payload:?} was accepted as {command:?}"),
            Err(error) => error,
        }
    }

    fn reason(channel: &str, payload: &str) -> DecodeReason {
        rejected(channel, payload.as_bytes()).reason
    }

    #[test]
    fn an_allocate_message_becomes_the_allocate_command() {
        let command = decode(
            ALLOCATE,
            br#"{"orderid": "order1", "sku": "RED-CHAIR", "qty": 3}"#,
        );
        assert_eq!(
            command,
            Ok(Command::Allocate(Allocate {
                orderid: OrderId::parse("order1").expect("valid"),
                sku: Sku::parse("RED-CHAIR").expect("valid"),
                qty: Quantity::parse(3, "qty").expect("valid"),
            }))
        );
    }

    #[test]
    fn a_change_batch_quantity_message_becomes_its_command() {
        let command = decode(
            CHANGE_BATCH_QUANTITY,
            br#"{"batchref": "batch1", "qty": 1000000000}"#,
        );
        assert_eq!(
            command,
            Ok(Command::ChangeBatchQuantity(ChangeBatchQuantity {
                reference: BatchRef::parse("batch1").expect("valid"),
                qty: Quantity::parse(1_000_000_000, "qty").expect("valid"),
            }))
        );
    }

    #[test]
    fn extra_fields_are_ignored() {
        let command = decode(
            CHANGE_BATCH_QUANTITY,
            br#"{"batchref": "b1", "qty": 5, "message_id": "m-1", "note": {"any": [1]}}"#,
        );
        assert!(command.is_ok(), "{command:?}");
    }

    #[test]
    fn unknown_channels_are_rejected_before_the_payload_is_read() {
        let error = rejected("line_allocated", b"not even json");
        assert_eq!(error.reason, DecodeReason::UnknownChannel);
        assert_eq!(
            error.to_string(),
            "message on channel \"line_allocated\" rejected: unknown channel \
             (this service handles \"allocate\" and \"change_batch_quantity\")"
        );
    }

    #[test]
    fn payloads_that_are_not_a_json_object_are_rejected() {
        assert_eq!(
            rejected(ALLOCATE, b"{\"orderid\": \"o\xff\"}").reason,
            DecodeReason::NotUtf8
        );
        assert!(matches!(reason(ALLOCATE, ""), DecodeReason::NotJson(_)));
        assert!(matches!(
            reason(ALLOCATE, "{\"orderid\": "),
            DecodeReason::NotJson(_)
        ));
        assert!(matches!(
            reason(ALLOCATE, "{} trailing"),
            DecodeReason::NotJson(_)
        ));
        // An array with the fields in order is what serde's derived structs
        // would accept: it must not be.
        assert_eq!(
            reason(ALLOCATE, r#"["o1", "sku", 3]"#),
            DecodeReason::NotAnObject(JsonType::Array)
        );
        assert_eq!(
            reason(ALLOCATE, "null"),
            DecodeReason::NotAnObject(JsonType::Null)
        );
        assert_eq!(
            reason(ALLOCATE, "7"),
            DecodeReason::NotAnObject(JsonType::Number)
        );
        assert_eq!(
            reason(CHANGE_BATCH_QUANTITY, r#""text""#),
            DecodeReason::NotAnObject(JsonType::String)
        );
    }

    #[test]
    fn missing_fields_and_wrong_types_name_the_field() {
        assert_eq!(
            reason(ALLOCATE, r#"{"orderid": "o1", "qty": 3}"#),
            DecodeReason::MissingField("sku")
        );
        assert_eq!(
            reason(CHANGE_BATCH_QUANTITY, r#"{"ref": "b1", "qty": 3}"#),
            DecodeReason::MissingField("batchref")
        );
        assert_eq!(
            reason(ALLOCATE, r#"{"orderid": 12, "sku": "s", "qty": 3}"#),
            DecodeReason::WrongType {
                field: "orderid",
                expected: "a string",
                got: JsonType::Number
            }
        );
        assert_eq!(
            reason(ALLOCATE, r#"{"orderid": "o1", "sku": null, "qty": 3}"#),
            DecodeReason::WrongType {
                field: "sku",
                expected: "a string",
                got: JsonType::Null
            }
        );
        assert_eq!(
            reason(CHANGE_BATCH_QUANTITY, r#"{"batchref": "b1", "qty": "3"}"#),
            DecodeReason::WrongType {
                field: "qty",
                expected: "an integer",
                got: JsonType::String
            }
        );
    }

    #[test]
    fn quantities_must_be_whole_positive_and_bounded() {
        let qty = |raw: &str| {
            reason(
                CHANGE_BATCH_QUANTITY,
                &format!(r#"{{"batchref": "b", "qty": {raw}}}"#),
            )
        };
        for (raw, value) in [
            ("0", 0),
            ("-4", -4),
            ("1000000001", 1_000_000_001),
            ("18446744073709551615", i128::from(u64::MAX)),
        ] {
            assert_eq!(
                qty(raw),
                DecodeReason::Invalid(ValueError::QuantityOutOfRange {
                    field: "qty",
                    value
                }),
                "{raw}"
            );
        }
        for raw in ["2.5", "3.0", "1e3", "-0.5"] {
            assert!(
                matches!(qty(raw), DecodeReason::NotWholeNumber { field: "qty", .. }),
                "{raw}"
            );
        }
    }

    #[test]
    fn identifiers_are_parsed_by_the_domain_and_named_as_on_the_wire() {
        assert_eq!(
            reason(CHANGE_BATCH_QUANTITY, r#"{"batchref": "", "qty": 3}"#),
            DecodeReason::Invalid(ValueError::Empty { field: "batchref" })
        );
        let long = "x".repeat(domain::values::MAX_IDENTIFIER_LEN + 1);
        assert_eq!(
            reason(
                ALLOCATE,
                &format!(r#"{{"orderid": "{long}", "sku": "s", "qty": 3}}"#)
            ),
            DecodeReason::Invalid(ValueError::TooLong { field: "orderid" })
        );
        assert_eq!(
            reason(
                ALLOCATE,
                r#"{"orderid": "o1", "sku": "a\u0000b", "qty": 3}"#
            ),
            DecodeReason::Invalid(ValueError::ControlCharacter { field: "sku" })
        );
    }

    #[test]
    fn every_error_is_one_line_naming_the_channel_without_echoing_values() {
        let secret = "S3CRET-VALUE";
        for (channel, payload) in [
            (
                ALLOCATE,
                format!(r#"{{"orderid": 1, "sku": "{secret}", "qty": 3}}"#),
            ),
            (
                ALLOCATE,
                format!(r#"{{"orderid": "{secret}", "sku": "s", "qty": 0.5}}"#),
            ),
            (ALLOCATE, format!(r#"["{secret}"]"#)),
            (ALLOCATE, format!(r#"{{"orderid": "{secret}\u0001"}}"#)),
            (
                CHANGE_BATCH_QUANTITY,
                format!(r#"{{"batchref": "{secret}", "qty": "{secret}"}}"#),
            ),
            (CHANGE_BATCH_QUANTITY, format!(r#"{{"batchref": "{secret}"#)),
        ] {
            let message = rejected(channel, payload.as_bytes()).to_string();
            assert!(
                message.starts_with(&format!("message on channel \"{channel}\" rejected: ")),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
            assert!(!message.contains(secret), "{message}");
        }
    }

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

    /// Agreement between this module and `docs/messages/*.schema.json`:
    /// each schema's examples decode (and stop decoding when any required
    /// field is removed), and the encoded `line_allocated` has exactly the
    /// schema's required fields, each of the declared JSON type. Not a full
    /// JSON Schema validator: enough to notice when one side changes alone.
    mod schemas {
        use super::*;

        const ALLOCATE_SCHEMA: &str = include_str!("../../../docs/messages/allocate.schema.json");
        const CHANGE_BATCH_QUANTITY_SCHEMA: &str =
            include_str!("../../../docs/messages/change_batch_quantity.schema.json");
        const LINE_ALLOCATED_SCHEMA: &str =
            include_str!("../../../docs/messages/line_allocated.schema.json");

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

        #[test]
        fn encoded_line_allocated_has_exactly_the_required_fields() {
            let schema = schema(LINE_ALLOCATED_SCHEMA);
            assert_eq!(schema["title"], LINE_ALLOCATED);
            let mut required = required(&schema);
            let encoded: Value =
                serde_json::from_str(&encode_line_allocated(&allocated(), Uuid::nil()))
                    .expect("the encoder writes JSON");
            let encoded = encoded.as_object().expect("an object");
            let mut written: Vec<String> = encoded.keys().cloned().collect();
            required.sort();
            written.sort();
            assert_eq!(written, required);
            for (name, value) in encoded {
                let declared = schema["properties"][name]["type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("the schema declares the type of {name}"));
                assert!(
                    json_type_matches(declared, value),
                    "{name}: {value} is not {declared}"
                );
            }
            // The schema's own example is a payload this service could send.
            for example in schema["examples"].as_array().expect("examples") {
                let mut keys: Vec<&String> = example.as_object().expect("object").keys().collect();
                keys.sort();
                assert_eq!(keys, required.iter().collect::<Vec<_>>());
            }
        }
    }
}
