//! What the routes read from requests: JSON bodies refused with our JSON
//! errors, and the identifiers and quantities in them, documented with the
//! domain's own limits so that the OpenAPI document cannot drift from them.

use std::fmt;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request};
use domain::values::{IDENTIFIER_PATTERN, MAX_IDENTIFIER_LEN, whole_number};
use domain::{Quantity, ValueError};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::{ApiError, observe};

/// `axum::Json`, with its rejections rendered as our JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// The identifier of a route's path (`/orders/{orderid}`), parsed as the
/// domain parses it (`parse`, e.g. `OrderId::parse`) and, once valid,
/// recorded on the request's span as `field`.
pub fn path_id<T: AsRef<str>>(
    path: Result<Path<String>, PathRejection>,
    field: &'static str,
    parse: fn(&str) -> Result<T, ValueError>,
) -> Result<T, ApiError> {
    let Path(raw) = path?;
    let id = parse(&raw)?;
    observe::record_id(field, id.as_ref());
    Ok(id)
}

/// The schema of every identifier (SKU, order id, batch reference), in
/// bodies and in paths. A schema only: handlers take the strings and parse
/// them into domain values, whose refusals carry the domain's messages.
#[derive(Debug)]
pub struct Identifier;

impl PartialSchema for Identifier {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_IDENTIFIER_LEN))
            .pattern(Some(IDENTIFIER_PATTERN))
            .description(Some(format!(
                "1 to {MAX_IDENTIFIER_LEN} characters, none of them a control character"
            )))
            .into()
    }
}

impl ToSchema for Identifier {}

/// A quantity as a request states it: any JSON number without a fraction.
/// `3.0` counts as `3`, as it does for JSON Schema's `integer`, since a
/// client generated from the document may send either. The range is left
/// to the domain ([`Units::quantity`]), so that zero, negative and huge
/// quantities are refused with its message rather than the decoder's.
#[derive(Debug, Clone, Copy)]
pub struct Units(i128);

impl Units {
    /// The domain's quantity, named `qty` as in every body that holds one.
    pub fn quantity(self) -> Result<Quantity, ValueError> {
        Quantity::parse(self.0, "qty")
    }
}

impl PartialSchema for Units {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(Quantity::MAX))
            .description(Some(format!(
                "A number of units: a whole number from 1 to {}",
                Quantity::MAX
            )))
            .into()
    }
}

impl ToSchema for Units {}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let range = Some((1, Quantity::MAX.into()));
        deserializer.deserialize_any(WholeNumber(range)).map(Self)
    }
}

/// Any whole number, as [`Units`] reads it, for the fields whose range is
/// not a quantity's (an adjustment's delta, a counted quantity, which may
/// be 0): the route checks it, and its schema states it.
#[derive(Debug, Clone, Copy)]
pub struct Whole(pub i128);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeNumber(None)).map(Self)
    }
}

/// A count of units as a request states it (a batch's counted quantity, a
/// limit): 0 to [`Quantity::MAX`].
pub fn count(units: i128, field: &str) -> Result<u64, ApiError> {
    u64::try_from(units)
        .ok()
        .filter(|units| *units <= u64::from(Quantity::MAX))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{field} must be a whole number from 0 to {}; got {units}",
                Quantity::MAX
            ))
        })
}

/// Reads a whole number from whichever number type the JSON decoder
/// found; the range it names is only for the error message.
struct WholeNumber(Option<(i128, i128)>);

impl Visitor<'_> for WholeNumber {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((low, high)) => write!(f, "a whole number from {low} to {high}"),
            None => write!(f, "a whole number"),
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i128, E> {
        Ok(value.into())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i128, E> {
        Ok(value.into())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<i128, E> {
        match whole_number(value) {
            Some(units) => Ok(units),
            None => Err(E::invalid_value(Unexpected::Float(value), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(json: &str) -> Result<i128, String> {
        serde_json::from_str::<Units>(json)
            .map(|Units(units)| units)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn integers_and_integral_floats_are_whole_numbers() {
        assert_eq!(units("3"), Ok(3));
        assert_eq!(units("3.0"), Ok(3));
        assert_eq!(units("1e3"), Ok(1000));
        assert_eq!(units("-2.0"), Ok(-2));
        assert_eq!(units("18446744073709551615"), Ok(u64::MAX.into()));
    }

    #[test]
    fn fractions_huge_floats_and_strings_are_refused() {
        for json in ["2.5", "1e-3", "1e300", "-1e300", "\"3\"", "null", "true"] {
            let error = units(json).expect_err(json);
            assert!(
                error.contains("a whole number from 1 to"),
                "{json}: {error}"
            );
        }
    }

    #[test]
    fn the_range_is_the_domains() {
        let quantity = |json| serde_json::from_str::<Units>(json).expect(json).quantity();
        assert_eq!(quantity("7.0").map(Quantity::get), Ok(7));
        assert!(quantity("0").is_err());
        assert!(quantity("1e30").is_err());
        assert!(quantity("1000000001").is_err());
    }
}
