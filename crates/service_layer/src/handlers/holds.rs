//! Checkout holds (beyond the book): placing, extending and releasing
//! them, and finding the live hold an order converts.
//!
//! A hold spans products, as an order does, and is handled the same way:
//! every product it names is loaded in SKU order, in one unit of work, and
//! nothing changes until every line has its place.

use chrono::{DateTime, Utc};
use domain::commands::{ExtendHold, PlaceHold, ReleaseHold};
use domain::{DomainError, HoldId, Sku};

use super::{AllocatedLine, CommandHandler};
use crate::error::Error;
use crate::ports::{StoreError, StoreTransaction};
use crate::unit_of_work::UnitOfWork;

/// A hold placed: until when, and where each line's units are set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedHold {
    pub expires_at: DateTime<Utc>,
    /// In the order the client listed them.
    pub lines: Vec<AllocatedLine>,
}

impl CommandHandler for PlaceHold {
    type Reply = PlacedHold;
    const NAME: &'static str = "PlaceHold";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        self.lines.iter().map(|(sku, _)| sku)
    }

    /// All or nothing, like an order: every line's place is found before
    /// any is taken, products loaded in SKU order.
    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<PlacedHold, Error> {
        let expires_at = expiry(uow.now(), self.ttl);
        let mut places = Vec::with_capacity(self.lines.len());
        let mut short = Vec::new();
        for (sku, qty) in self.lines.sorted_by_sku() {
            let product = uow
                .products()
                .get(sku)
                .await?
                .ok_or_else(|| Error::InvalidSku(sku.clone()))?;
            match product.hold_placement(*qty) {
                Ok(part) => places.push((sku.clone(), part)),
                Err(shortage) => short.push(shortage),
            }
        }
        if !short.is_empty() {
            return Err(DomainError::HoldShort { short }.into());
        }
        let mut lines = Vec::with_capacity(places.len());
        for (sku, qty) in self.lines.iter() {
            let Some(at) = places.iter().position(|(placed, _)| placed == sku) else {
                continue; // unreachable: every line was placed above
            };
            let (_, part) = places.swap_remove(at);
            let product = uow
                .products()
                .get(sku)
                .await?
                .ok_or_else(|| Error::InvalidSku(sku.clone()))?;
            product.hold(&self.hold_id, part.clone(), expires_at)?;
            lines.push(AllocatedLine {
                sku: sku.clone(),
                qty: *qty,
                parts: vec![part],
            });
        }
        Ok(PlacedHold { expires_at, lines })
    }
}

impl CommandHandler for ExtendHold {
    /// The new expiry.
    type Reply = DateTime<Utc>;
    const NAME: &'static str = "ExtendHold";

    /// Only a live hold is extended; extending it bumps every product it
    /// holds, so that a command that read the hold as expired meanwhile
    /// fails its version check and runs again.
    async fn handle<T: StoreTransaction>(
        &self,
        uow: &mut UnitOfWork<T>,
    ) -> Result<DateTime<Utc>, Error> {
        let expires_at = expiry(uow.now(), self.ttl);
        match load_hold(uow, &self.hold_id).await? {
            HoldFound::Never => Err(Error::UnknownHold(self.hold_id.clone())),
            HoldFound::Ended(_) => Err(Error::HoldGone(self.hold_id.clone())),
            HoldFound::Live(skus) => {
                for sku in &skus {
                    if let Some(product) = uow.products().get(sku).await? {
                        product.extend_hold(&self.hold_id, expires_at);
                    }
                }
                Ok(expires_at)
            }
        }
    }
}

impl CommandHandler for ReleaseHold {
    type Reply = ();
    const NAME: &'static str = "ReleaseHold";

    /// Releasing a hold that has ended (expired ones included) changes
    /// nothing more than it has to: its parts still set aside are freed,
    /// once.
    async fn handle<T: StoreTransaction>(&self, uow: &mut UnitOfWork<T>) -> Result<(), Error> {
        let skus = match load_hold(uow, &self.hold_id).await? {
            HoldFound::Never => return Err(Error::UnknownHold(self.hold_id.clone())),
            HoldFound::Live(skus) | HoldFound::Ended(skus) => skus,
        };
        for sku in &skus {
            if let Some(product) = uow.products().get(sku).await? {
                product.release_hold(&self.hold_id);
            }
        }
        Ok(())
    }
}

/// What became of a hold, with the SKUs it was placed on (their products
/// loaded with its parts).
pub(super) enum HoldFound {
    Never,
    /// Every part still set aside and unexpired.
    Live(Vec<Sku>),
    /// Expired, released (wholly or by a shrinking batch) or converted.
    Ended(Vec<Sku>),
}

/// Loads every product `hold_id` was placed on, in SKU order, with the
/// hold's parts, and says whether it is live.
pub(super) async fn load_hold<T: StoreTransaction>(
    uow: &mut UnitOfWork<T>,
    hold_id: &HoldId,
) -> Result<HoldFound, StoreError> {
    let skus = uow.products().skus_of_hold(hold_id).await?;
    if skus.is_empty() {
        return Ok(HoldFound::Never);
    }
    let mut live = true;
    for sku in &skus {
        let parts = match uow.products().get_for_hold(sku, hold_id).await? {
            Some(product) => product.held_parts(hold_id),
            None => Vec::new(),
        };
        // A product with no part left was released or converted.
        live &= !parts.is_empty() && parts.iter().all(|(_, part)| part.live);
    }
    Ok(if live {
        HoldFound::Live(skus)
    } else {
        HoldFound::Ended(skus)
    })
}

/// The hold an order converts, if it is live and holds exactly the
/// order's SKUs; `None` when it ended (the order is then placed as if it
/// named no hold). Its quantities are checked line by line by the model.
pub(super) async fn hold_to_convert<T: StoreTransaction>(
    uow: &mut UnitOfWork<T>,
    hold_id: &HoldId,
    order_skus: &[&Sku],
) -> Result<Option<HoldId>, Error> {
    match load_hold(uow, hold_id).await? {
        HoldFound::Never => Err(Error::UnknownHold(hold_id.clone())),
        HoldFound::Ended(_) => Ok(None),
        HoldFound::Live(skus) => {
            let differing = skus
                .iter()
                .find(|sku| !order_skus.contains(sku))
                .or_else(|| order_skus.iter().copied().find(|sku| !skus.contains(sku)));
            match differing {
                Some(sku) => Err(DomainError::HoldMismatch {
                    hold_id: hold_id.clone(),
                    sku: sku.clone(),
                }
                .into()),
                None => Ok(Some(hold_id.clone())),
            }
        }
    }
}

/// The longest a hold lives from its placing or its last extension. The
/// SQL stores rely on it to keep the sum of live holds cheap to plan.
pub const MAX_HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// `ttl` (at most [`MAX_HOLD_TTL`]) from `now`, to the millisecond (what
/// the stores keep).
fn expiry(now: DateTime<Utc>, ttl: std::time::Duration) -> DateTime<Utc> {
    let expires_at = chrono::Duration::from_std(ttl.min(MAX_HOLD_TTL))
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    DateTime::from_timestamp_millis(expires_at.timestamp_millis()).unwrap_or(expires_at)
}
