//! Shipping and cancelling whole orders (beyond the book): every product of
//! the order in one unit of work, in SKU order, refused before anything
//! changes.

use domain::commands::{CancelOrder, ShipOrder};
use domain::{Product, Sku};

use super::CommandHandler;
use crate::error::Error;
use crate::ports::StoreTransaction;
use crate::unit_of_work::UnitOfWork;

impl CommandHandler for ShipOrder {
    type Reply = ();
    const NAME: &'static str = "ShipOrder";

    fn products(&self) -> impl Iterator<Item = &Sku> + Send {
        self.skus.iter()
    }

    fn order(&self) -> Option<&domain::OrderId> {
        Some(&self.orderid)
    }

    /// Every line asked for must be able to ship (allocated, or shipped
    /// already, and arrived) before any ships.
    async fn handle<T: StoreTransaction>(&self, uow: &mut UnitOfWork<T>) -> Result<(), Error> {
        let of_order = uow.products().skus_of_order(&self.orderid).await?;
        if of_order.is_empty() {
            return Err(Error::UnknownOrder(self.orderid.clone()));
        }
        let mut skus = if self.skus.is_empty() {
            of_order
        } else {
            self.skus.clone()
        };
        skus.sort();
        skus.dedup();
        let mut shipments = Vec::with_capacity(skus.len());
        for sku in &skus {
            let product = order_product(uow, sku, &self.orderid).await?;
            if self.skus.is_empty() && product.backorder_of(&self.orderid).is_some() {
                continue; // "every allocated line": a waiting one has nothing to ship
            }
            shipments.push((sku, product.shipment(&self.orderid)?));
        }
        for (sku, shipment) in shipments {
            order_product(uow, sku, &self.orderid).await?.ship(shipment);
        }
        Ok(())
    }
}

impl CommandHandler for CancelOrder {
    type Reply = ();
    const NAME: &'static str = "CancelOrder";

    fn order(&self) -> Option<&domain::OrderId> {
        Some(&self.orderid)
    }

    /// Cancelling frees what is allocated and nothing else: shipped lines
    /// stay shipped, and cancelling again finds nothing to free.
    async fn handle<T: StoreTransaction>(&self, uow: &mut UnitOfWork<T>) -> Result<(), Error> {
        let skus = uow.products().skus_of_order(&self.orderid).await?;
        if skus.is_empty() {
            return Err(Error::UnknownOrder(self.orderid.clone()));
        }
        for sku in &skus {
            order_product(uow, sku, &self.orderid)
                .await?
                .cancel(&self.orderid);
        }
        Ok(())
    }
}

/// The product of `sku` with `orderid`'s lines loaded.
async fn order_product<'u, T: StoreTransaction>(
    uow: &'u mut UnitOfWork<T>,
    sku: &Sku,
    orderid: &domain::OrderId,
) -> Result<&'u mut Product, Error> {
    uow.products()
        .get_for_order(sku, orderid)
        .await?
        .ok_or_else(|| Error::InvalidSku(sku.clone()))
}
