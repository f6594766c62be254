//! The wire formats of the messages the service exchanges over Redis pub/sub
//! (docs/contract.md section 3; book chapter 11, "event-driven integration").
//!
//! - `incoming`: [`decode`] turns an external command's channel and payload
//!   into a [`domain::Command`], or into a [`DecodeError`] (`decode_error`)
//!   that says why not;
//! - `outgoing`: [`encode`] tells other systems about a domain event, on
//!   its channel;
//! - `schemas` (tests only): keeps both in step with the JSON Schemas that
//!   document these payloads for other teams, in `docs/messages/`.
//!
//! This module is pure (no I/O): the Redis transport lives in
//! [`crate::redis`].
//!
//! Errors never echo the payload's values (only field names and small
//! numbers): a malformed message is logged, and a multi-megabyte string
//! should not end up in the log with it.

mod decode_error;
mod incoming;
mod outgoing;
#[cfg(test)]
mod schemas;

pub use decode_error::{DecodeError, DecodeReason, JsonType};
pub use incoming::decode;
pub use outgoing::{channel_of, encode, encode_line_allocated};

/// Incoming: allocate an order line, `{"orderid", "sku", "qty"}`.
pub const ALLOCATE: &str = "allocate";
/// Incoming: set a batch's purchased quantity, `{"batchref", "qty"}`.
pub const CHANGE_BATCH_QUANTITY: &str = "change_batch_quantity";
/// Outgoing: a line was allocated (or reallocated),
/// `{"orderid", "sku", "qty", "batchref", "message_id"}`.
pub const LINE_ALLOCATED: &str = "line_allocated";
/// Outgoing: nothing of a SKU is available any more, `{"sku", "message_id"}`.
pub const STOCK_EXHAUSTED: &str = "stock_exhausted";
/// Outgoing: a SKU has units available again after none,
/// `{"sku", "message_id"}`.
pub const BACK_IN_STOCK: &str = "back_in_stock";
/// Outgoing: a SKU's available units fell below its low-stock threshold,
/// `{"sku", "available", "threshold", "message_id"}`.
pub const LOW_STOCK: &str = "low_stock";

/// Not a Redis channel: what names the out-of-stock emails in the outbox
/// (`{"sku"}`), which the notifications relay sends by email.
pub const OUT_OF_STOCK: &str = "out_of_stock";

/// The channels the service subscribes to: every channel [`decode`] accepts.
pub const INCOMING: [&str; 2] = [ALLOCATE, CHANGE_BATCH_QUANTITY];
