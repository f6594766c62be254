//! Why an incoming message was refused: [`DecodeError`] and its
//! [`DecodeReason`], worded for the log line that records the skipped
//! message, never echoing the payload's values.

use std::fmt;

use domain::{Quantity, ValueError};
use serde_json::Value;

use super::{ALLOCATE, CHANGE_BATCH_QUANTITY};

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
    /// A number that is not a whole number (`2.5`): the domain's quantities
    /// never have a fraction.
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
    pub(super) fn of(value: &Value) -> Self {
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
