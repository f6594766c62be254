//! Value types that cannot hold invalid values ("parse, don't validate").
//!
//! Identifiers are cheap to clone (`Arc<str>`): they are copied into events,
//! the identity map and the read model on every command.

use std::fmt;
use std::sync::Arc;

/// The longest identifier the service accepts (docs/contract.md section 2).
pub const MAX_IDENTIFIER_LEN: usize = 255;

/// The characters an identifier may hold, as a JSON Schema (ECMA-262)
/// pattern: anything but the control characters that `char::is_control`
/// refuses (U+0000 to U+001F, U+007F to U+009F). The OpenAPI document
/// states it beside the length limits, so that a client generated from the
/// document sends what the service accepts.
pub const IDENTIFIER_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Why a value from the outside world was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} must be at most {MAX_IDENTIFIER_LEN} characters long")]
    TooLong { field: &'static str },
    #[error("{field} must not contain control characters")]
    ControlCharacter { field: &'static str },
    #[error(
        "{field} must be a whole number from 1 to {}, got {value}",
        Quantity::MAX
    )]
    QuantityOutOfRange { field: &'static str, value: i128 },
    #[error("an order must have from 1 to {} lines, got {count}", OrderLines::MAX)]
    LineCount { count: usize },
    #[error("an order names each sku at most once; {sku} appears twice")]
    RepeatedSku { sku: Sku },
    #[error("{field} must be at most {} characters long", Note::MAX_LEN)]
    NoteTooLong { field: &'static str },
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name of this identifier in messages and errors.
            pub const FIELD: &'static str = $field;

            /// Accepts 1 to 255 characters, none of them control characters.
            pub fn parse(raw: &str) -> Result<Self, ValueError> {
                parse_identifier(raw, $field).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// A stock-keeping unit, e.g. `RED-CHAIR`: the identity of a [`crate::Product`].
    Sku,
    "sku"
);
identifier!(
    /// A customer order's identifier.
    OrderId,
    "orderid"
);
identifier!(
    /// A batch's reference, unique across all products.
    BatchRef,
    "ref"
);
identifier!(
    /// A checkout hold's identifier, given by the service when it is placed.
    HoldId,
    "hold_id"
);

fn parse_identifier(raw: &str, field: &'static str) -> Result<Arc<str>, ValueError> {
    if raw.is_empty() {
        return Err(ValueError::Empty { field });
    }
    if raw.chars().count() > MAX_IDENTIFIER_LEN {
        return Err(ValueError::TooLong { field });
    }
    if raw.chars().any(char::is_control) {
        return Err(ValueError::ControlCharacter { field });
    }
    Ok(Arc::from(raw))
}

/// Free text an operator attaches to a stock movement ("water damage,
/// aisle 4"): up to [`Note::MAX_LEN`] characters, lines and tabs allowed,
/// no other control characters (PostgreSQL's text cannot hold a NUL).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Note(Arc<str>);

impl Note {
    pub const MAX_LEN: usize = 1_000;

    pub fn parse(raw: &str, field: &'static str) -> Result<Self, ValueError> {
        if raw.chars().count() > Self::MAX_LEN {
            return Err(ValueError::NoteTooLong { field });
        }
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(ValueError::ControlCharacter { field });
        }
        Ok(Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A positive number of units, small enough that sums of many never overflow.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    /// A billion units: far beyond any real batch, far below where sums of
    /// thousands of batches could overflow a 64-bit column.
    pub const MAX: u32 = 1_000_000_000;

    /// Accepts 1 to [`Quantity::MAX`]; `field` names the value in the error.
    pub fn parse(value: i128, field: &'static str) -> Result<Self, ValueError> {
        match u32::try_from(value) {
            Ok(units) if (1..=Self::MAX).contains(&units) => Ok(Self(units)),
            _ => Err(ValueError::QuantityOutOfRange { field, value }),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The sum, if it is still a quantity (at most [`Quantity::MAX`]).
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        Some(self.0.checked_add(other.0)?)
            .filter(|units| *units <= Self::MAX)
            .map(Self)
    }
}

/// What a whole order asks for: 1 to [`OrderLines::MAX`] lines, each of a
/// different SKU, in the order the client listed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLines(Vec<(Sku, Quantity)>);

impl OrderLines {
    /// Enough for any basket; bounds the products one unit of work holds.
    pub const MAX: usize = 100;

    pub fn new(lines: Vec<(Sku, Quantity)>) -> Result<Self, ValueError> {
        if !(1..=Self::MAX).contains(&lines.len()) {
            return Err(ValueError::LineCount { count: lines.len() });
        }
        let mut skus: Vec<&Sku> = lines.iter().map(|(sku, _)| sku).collect();
        skus.sort_unstable();
        if let Some(pair) = skus.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ValueError::RepeatedSku {
                sku: pair[0].clone(),
            });
        }
        Ok(Self(lines))
    }

    /// The lines, in the order the client listed them.
    pub fn iter(&self) -> impl Iterator<Item = &(Sku, Quantity)> {
        self.0.iter()
    }

    /// The lines sorted by SKU: the order in which a unit of work loads
    /// (and, when locking, locks) products, the same for every command.
    pub fn sorted_by_sku(&self) -> Vec<&(Sku, Quantity)> {
        let mut lines: Vec<&(Sku, Quantity)> = self.0.iter().collect();
        lines.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        lines
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: an order has at least one line.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The whole number a JSON number written as a float holds (`3.0`, `1e3`),
/// if it holds one: JSON Schema's `integer` accepts those, and so do both
/// entrypoints. `None` for a fraction, or beyond `i128` (which the
/// quantity's range refuses anyway).
pub fn whole_number(value: f64) -> Option<i128> {
    // Below 2^127 in magnitude, a float without a fraction converts exactly.
    const BOUND: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    (value.fract() == 0.0 && value.abs() < BOUND).then_some(value as i128)
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern's ranges are exactly the characters `parse` refuses.
    #[test]
    fn the_identifier_pattern_names_the_control_characters() {
        let control: Vec<u32> = (0..=0x10FFFF)
            .filter_map(char::from_u32)
            .filter(|c| c.is_control())
            .map(u32::from)
            .collect();
        // The `\uXXXX` escapes of the pattern, in pairs: its ranges.
        let bounds: Vec<u32> = IDENTIFIER_PATTERN
            .split("\\u")
            .skip(1)
            .map(|rest| u32::from_str_radix(&rest[..4], 16).expect("four hex digits"))
            .collect();
        let in_pattern: Vec<u32> = bounds
            .chunks(2)
            .flat_map(|range| range[0]..=range[1])
            .collect();
        assert_eq!(control, in_pattern);
        assert!(OrderId::parse("order\u{9f}").is_err());
        assert!(OrderId::parse("order\u{a0}").is_ok());
    }

    #[test]
    fn identifiers_accept_ordinary_text_up_to_the_limit() {
        assert_eq!(
            Sku::parse("RED-CHAIR").map(|s| s.to_string()),
            Ok("RED-CHAIR".into())
        );
        let longest = "é".repeat(MAX_IDENTIFIER_LEN);
        assert!(OrderId::parse(&longest).is_ok());
    }

    #[test]
    fn identifiers_reject_empty_over_long_and_control_characters() {
        assert_eq!(Sku::parse(""), Err(ValueError::Empty { field: "sku" }));
        let too_long = "x".repeat(MAX_IDENTIFIER_LEN + 1);
        assert_eq!(
            BatchRef::parse(&too_long),
            Err(ValueError::TooLong { field: "ref" })
        );
        assert_eq!(
            OrderId::parse("order\n1"),
            Err(ValueError::ControlCharacter { field: "orderid" })
        );
    }

    fn line(sku: &str, qty: i128) -> (Sku, Quantity) {
        (
            Sku::parse(sku).expect("sku"),
            Quantity::parse(qty, "qty").expect("qty"),
        )
    }

    #[test]
    fn an_order_has_one_to_a_hundred_lines_of_different_skus() {
        let hundred: Vec<_> = (0..100).map(|i| line(&format!("SKU-{i}"), 1)).collect();
        assert_eq!(OrderLines::new(hundred.clone()).map(|l| l.len()), Ok(100));
        assert_eq!(
            OrderLines::new(Vec::new()),
            Err(ValueError::LineCount { count: 0 })
        );
        let mut too_many = hundred;
        too_many.push(line("SKU-100", 1));
        assert_eq!(
            OrderLines::new(too_many),
            Err(ValueError::LineCount { count: 101 })
        );
        assert_eq!(
            OrderLines::new(vec![line("LAMP", 1), line("DESK", 2), line("LAMP", 3)]),
            Err(ValueError::RepeatedSku {
                sku: Sku::parse("LAMP").expect("sku")
            })
        );
    }

    #[test]
    fn an_order_keeps_its_lines_in_order_and_lists_its_skus_sorted() {
        let lines = OrderLines::new(vec![line("LAMP", 1), line("DESK", 2)]).expect("lines");
        let listed: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
        assert_eq!(listed, ["LAMP", "DESK"]);
        let sorted: Vec<&str> = lines
            .sorted_by_sku()
            .iter()
            .map(|(sku, _)| sku.as_str())
            .collect();
        assert_eq!(sorted, ["DESK", "LAMP"]);
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert_eq!(Quantity::parse(1, "qty").map(Quantity::get), Ok(1));
        assert_eq!(
            Quantity::parse(i128::from(Quantity::MAX), "qty").map(Quantity::get),
            Ok(Quantity::MAX)
        );
        for bad in [0, -1, i128::from(Quantity::MAX) + 1, i128::from(u64::MAX)] {
            assert_eq!(
                Quantity::parse(bad, "qty"),
                Err(ValueError::QuantityOutOfRange {
                    field: "qty",
                    value: bad
                })
            );
        }
    }

    #[test]
    fn notes_take_lines_up_to_the_limit_and_no_other_control_characters() {
        let note = "water damage\n\taisle 4";
        assert_eq!(
            Note::parse(note, "note").map(|n| n.as_str().to_owned()),
            Ok(note.into())
        );
        assert!(Note::parse(&"é".repeat(Note::MAX_LEN), "note").is_ok());
        assert_eq!(
            Note::parse(&"x".repeat(Note::MAX_LEN + 1), "note"),
            Err(ValueError::NoteTooLong { field: "note" })
        );
        assert_eq!(
            Note::parse("nul\u{0}", "note"),
            Err(ValueError::ControlCharacter { field: "note" })
        );
    }
}
