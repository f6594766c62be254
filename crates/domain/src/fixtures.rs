//! Shorthands for tests: values from literals that are known to be valid.
//! Compiled only for this crate's tests and for crates that enable the
//! `fixtures` feature in their dev-dependencies; they panic on bad input,
//! which is what a test wants.

use crate::values::{BatchRef, OrderId, Quantity, Sku};

pub fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("valid sku")
}

pub fn batchref(raw: &str) -> BatchRef {
    BatchRef::parse(raw).expect("valid ref")
}

pub fn orderid(raw: &str) -> OrderId {
    OrderId::parse(raw).expect("valid orderid")
}

pub fn qty(units: u32) -> Quantity {
    Quantity::parse(units.into(), "qty").expect("valid qty")
}
