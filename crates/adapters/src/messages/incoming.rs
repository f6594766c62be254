//! Incoming messages are external commands: [`decode`] turns a channel
//! name and a raw payload into a [`domain::Command`], parsing every field
//! through the domain's value types, so the message bus only ever sees
//! valid input.

use domain::commands::{Allocate, ChangeBatchQuantity};
use domain::values::whole_number;
use domain::{BatchRef, Command, OrderId, Quantity, Sku, ValueError};
use serde_json::{Map, Value};

use super::decode_error::{DecodeError, DecodeReason, JsonType};
use super::{ALLOCATE, INCOMING};

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
    // serde_json holds integers as i64 or u64 and everything else as f64
    // (`3.0` is a whole number too, as on the HTTP API); the domain's range
    // check then covers zero, negatives and huge values.
    let whole = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
        .or_else(|| number.as_f64().and_then(whole_number));
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
        ValueError::NoteTooLong { .. } => ValueError::NoteTooLong { field },
        ValueError::QuantityOutOfRange { value, .. } => {
            ValueError::QuantityOutOfRange { field, value }
        }
        // Not about one field: no message of this service carries an order.
        other @ (ValueError::LineCount { .. } | ValueError::RepeatedSku { .. }) => other,
    })
}

#[cfg(test)]
mod tests {
    use crate::messages::CHANGE_BATCH_QUANTITY;

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
        for raw in ["2.5", "-0.5", "1e-3"] {
            assert!(
                matches!(qty(raw), DecodeReason::NotWholeNumber { field: "qty", .. }),
                "{raw}"
            );
        }
        for (raw, units) in [("3.0", 3), ("1e3", 1000)] {
            let message = format!(r#"{{"batchref": "b", "qty": {raw}}}"#);
            let decoded = decode(CHANGE_BATCH_QUANTITY, message.as_bytes());
            assert!(
                matches!(&decoded, Ok(Command::ChangeBatchQuantity(c)) if c.qty.get() == units),
                "{raw} is the whole number {units}: {decoded:?}"
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
}
