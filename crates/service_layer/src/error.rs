//! Why a command failed: what the bus answers its caller, and what the
//! entrypoints map to HTTP statuses.

use domain::{DomainError, HoldId, OrderId, Sku};

use crate::ports::StoreError;

/// Why a command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The command names a SKU the service has no batches for.
    #[error("Invalid sku {0}")]
    InvalidSku(Sku),
    /// The command is about a product the service does not know (where a
    /// product, not an order line, is what is asked for).
    #[error("Unknown sku {0}")]
    UnknownProduct(Sku),
    /// The command names an order with no line at all.
    #[error("Unknown order {0}")]
    UnknownOrder(OrderId),
    /// The command names a checkout hold that was never placed.
    #[error("Unknown hold {0}")]
    UnknownHold(HoldId),
    /// The command needs a live hold, and this one expired, was released
    /// or became an order.
    #[error("Hold {0} is no longer active")]
    HoldGone(HoldId),
    /// The domain model refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Every attempt hit a version conflict: the product is too contended.
    #[error(
        "gave up after {attempts} attempts: concurrent changes to the same product kept conflicting"
    )]
    Contention { attempts: u32 },
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Its caller went away before the command began, so it never did (see
    /// `MessageBus::handle`). Nobody is left to read this.
    #[error("the caller left before the command began; nothing was done")]
    CallerLeft,
    /// The incoming message that carried the command was handled before
    /// (it is a redelivery): nothing was done again.
    #[error("this message was handled before; nothing was done again")]
    AlreadyDelivered,
}

impl Error {
    /// Whether trying the same command again might succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Contention { .. } | Self::Store(_) | Self::CallerLeft
        )
    }
}
