//! One Redis message through `adapters::messages::decode`: it never panics,
//! a refusal is one short line that names the channel and does not echo the
//! payload, and what it accepts is exactly what the payload says.
//!
//! Shared by the `redis_message` fuzz target and the adapters' stable tests
//! (`crates/adapters/tests/message_inputs.rs`).

use adapters::messages::{self, DecodeError};
use domain::Command;
use serde_json::{Value, json};

/// The longest reason a refusal may give: the decoder's own words, a field
/// name and a number fit; a payload value echoed back would not.
const MAX_REASON_CHARS: usize = 200;

/// A fuzz input as a message: the channel up to the first newline, the
/// payload after it.
pub fn split(input: &[u8]) -> (String, &[u8]) {
    let (channel, payload) = match input.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (&input[..newline], &input[newline + 1..]),
        None => (input, &[][..]),
    };
    (String::from_utf8_lossy(channel).into_owned(), payload)
}

/// The same message as a fuzz input: what [`split`] takes apart.
pub fn join(channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(channel.len() + 1 + payload.len());
    input.extend_from_slice(channel.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(payload);
    input
}

/// Decodes one fuzz input and checks the result; panics (a finding for
/// libFuzzer, a failure for a test) when the decoder misbehaves.
pub fn check(input: &[u8]) {
    let (channel, payload) = split(input);
    match messages::decode(&channel, payload) {
        Ok(command) => check_accepted(&channel, payload, &command),
        Err(error) => check_refused(&channel, &error),
    }
}

fn check_refused(channel: &str, error: &DecodeError) {
    let line = error.to_string();
    let prefix = format!("message on channel {channel:?} rejected: ");
    let reason = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("the refusal does not name the channel: {line}"));
    assert!(!line.contains('\n'), "the refusal is not one line: {line}");
    assert!(
        reason.chars().count() <= MAX_REASON_CHARS,
        "the reason is long enough to echo the payload: {reason}"
    );
}

fn check_accepted(channel: &str, payload: &[u8], command: &Command) {
    let fields: Value = serde_json::from_slice(payload)
        .unwrap_or_else(|error| panic!("accepted a payload that is not JSON ({error})"));
    let canonical = match command {
        Command::Allocate(allocate) => {
            assert_eq!(channel, messages::ALLOCATE, "{command:?}");
            assert_eq!(fields["orderid"], allocate.orderid.as_str());
            assert_eq!(fields["sku"], allocate.sku.as_str());
            assert_quantity(&fields["qty"], allocate.qty.get());
            json!({
                "orderid": allocate.orderid.as_str(),
                "sku": allocate.sku.as_str(),
                "qty": allocate.qty.get(),
            })
        }
        Command::ChangeBatchQuantity(change) => {
            assert_eq!(channel, messages::CHANGE_BATCH_QUANTITY, "{command:?}");
            assert_eq!(fields["batchref"], change.reference.as_str());
            assert_quantity(&fields["qty"], change.qty.get());
            json!({ "batchref": change.reference.as_str(), "qty": change.qty.get() })
        }
        other => panic!("no channel carries {other:?}"),
    };
    // What was understood, written plainly, is understood the same way.
    let again = messages::decode(channel, canonical.to_string().as_bytes());
    assert_eq!(again.as_ref(), Ok(command), "{canonical}");
}

/// The payload's `qty` is the quantity decoded, whether written `3` or
/// `3.0` (both whole numbers, as JSON Schema's `integer` has it).
fn assert_quantity(field: &Value, units: u32) {
    assert_eq!(
        field.as_f64(),
        Some(f64::from(units)),
        "qty {field} decoded as {units}"
    );
}
