//! How values are stored: decoding columns into domain types, and the
//! encodings of dates and times the two databases share; and reading a
//! writing statement's answer to its end.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, Utc};
use domain::{Closed, Quantity};
use service_layer::ports::StoreError;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Executor, Row};

/// The database holds something this code cannot have written, or a commit
/// disagrees with what is stored.
#[derive(Debug, thiserror::Error)]
#[error("stored data does not match: {0}")]
pub(super) struct Mismatch(pub(super) String);

pub(super) fn mismatch(detail: String) -> StoreError {
    StoreError::backend(Mismatch(detail))
}

/// The first row `query` returns, read only once the database has answered
/// all of it. Through sqlx's `Any` driver, `fetch_one` and `fetch_optional`
/// return at the first row (its native PostgreSQL driver reads to the end,
/// since transact-rs/sqlx#2913). A statement run outside a transaction is
/// committed only after that row, when PostgreSQL processes the `Sync`
/// behind it, and what fails as it commits (a deferred constraint, the
/// commit's WAL write) comes after the row: a writing statement read that
/// way would be answered as done before it is.
pub(super) async fn first_row_once_done<'e>(
    query: Query<'_, Any, AnyArguments>,
    executor: impl Executor<'e, Database = Any>,
) -> Result<Option<AnyRow>, sqlx::Error> {
    Ok(query.fetch_all(executor).await?.into_iter().next())
}

pub(super) fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(StoreError::backend)
}

/// A stored identifier (SKU, reference, order id, message id), parsed.
pub(super) fn identifier<T, E: fmt::Display>(
    raw: &str,
    parse: fn(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(raw).map_err(|e| mismatch(format!("{raw:?}: {e}")))
}

pub(super) fn quantity_from_db(value: i64) -> Result<Quantity, StoreError> {
    Quantity::parse(i128::from(value), "qty").map_err(|e| mismatch(e.to_string()))
}

pub(super) fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| mismatch(format!("{column} is negative: {value}")))
}

pub(super) fn to_i64(value: u64, column: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| mismatch(format!("{column} is too large to store: {value}")))
}

/// Dates are stored as ISO 8601 text: the `Any` driver has no date type,
/// and text sorts and reads the same on both databases.
const ETA_FORMAT: &str = "%Y-%m-%d";

pub(super) fn eta_to_db(eta: NaiveDate) -> String {
    eta.format(ETA_FORMAT).to_string()
}

pub(super) fn eta_from_db(eta: Option<String>) -> Result<Option<NaiveDate>, StoreError> {
    eta.map(|text| {
        NaiveDate::parse_from_str(&text, ETA_FORMAT)
            .map_err(|e| mismatch(format!("eta {text:?}: {e}")))
    })
    .transpose()
}

/// Times (an outbox message's creation, a lease's end) are unix
/// milliseconds from the clock of the process, not of the database, so that
/// the same statements work on both; instances' clocks need only roughly
/// agree (a skew shortens or lengthens a lease, it never loses a message).
pub(super) fn unix_millis(time: SystemTime) -> i64 {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or_default();
    i64::try_from(millis).unwrap_or(i64::MAX)
}

/// A point in time as the holds table keeps it: unix milliseconds.
pub(super) fn time_to_db(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(super) fn time_from_db(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| mismatch(format!("{millis} is no time a hold can expire at")))
}

/// A line's `state`: `None` while allocated, else how it left its batch.
pub(super) fn closed_from_db(state: &str) -> Result<Option<Closed>, StoreError> {
    match state {
        "allocated" => Ok(None),
        "shipped" => Ok(Some(Closed::Shipped)),
        "cancelled" => Ok(Some(Closed::Cancelled)),
        other => Err(mismatch(format!("a line in state {other}"))),
    }
}
