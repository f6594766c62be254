//! The one place where errors become HTTP responses: a status and a JSON
//! `{"message"}`. Internal details are logged, never shown to the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::{DomainError, ValueError};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Why the request was refused, for people.
    pub message: String,
}

/// The body of a 409 for an order refused whole: why, and every line short
/// of stock when that is the reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShortBody {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short: Option<Vec<ShortLine>>,
}

/// A line no batch can take whole, and the most one batch could give it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShortLine {
    pub sku: String,
    pub requested: u32,
    pub available: u64,
}

/// Everything an HTTP handler can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// What the request needs has ended for good (an expired hold).
    #[error("{0}")]
    Gone(String),
    /// An order or a hold refused whole (409), with its short lines.
    #[error("{message}")]
    Short {
        message: String,
        short: Vec<ShortLine>,
    },
    /// A rejected body: the status axum chose (400, 413, 415) and why.
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("{0}")]
    Unavailable(String),
    /// The database's failure, not the request's: worth retrying (it may be
    /// restarting, and every command is safe to send again). The details
    /// go to the log only.
    #[error("storage unavailable; try again later")]
    Storage(#[source] service_layer::StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::Short { .. } => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::Body { status, .. } => *status,
            Self::Unavailable(_) | Self::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(source) => tracing::error!(error = %source, "request failed"),
            Self::Unavailable(reason) => tracing::warn!(%reason, "request failed"),
            Self::Storage(source) => tracing::error!(error = %source, "storage failed"),
            // Not `message`: that is the name of the log line's own text.
            _ => tracing::debug!(%status, reason = %self, "request refused"),
        }
        if let Self::Short { message, short } = self {
            let short = Some(short);
            return (status, Json(ShortBody { message, short })).into_response();
        }
        let body = ErrorBody {
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<ValueError> for ApiError {
    fn from(error: ValueError) -> Self {
        Self::BadRequest(error.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Well-formed JSON of the wrong shape is a 422 in axum; the book's
        // clients expect 400 for any invalid body.
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            status => status,
        };
        Self::Body {
            status,
            message: rejection.body_text(),
        }
    }
}

impl From<service_layer::Error> for ApiError {
    fn from(error: service_layer::Error) -> Self {
        use service_layer::Error;
        match error {
            Error::InvalidSku(_) => Self::BadRequest(error.to_string()),
            Error::UnknownHold(_) | Error::UnknownOrder(_) | Error::UnknownProduct(_) => {
                Self::NotFound(error.to_string())
            }
            Error::HoldGone(_) => Self::Gone(error.to_string()),
            Error::Rejected(rejection) => match rejection {
                DomainError::BatchExists { .. }
                | DomainError::AlreadyAllocated { .. }
                | DomainError::AlreadyBackordered { .. }
                | DomainError::HoldMismatch { .. }
                | DomainError::NotArrived { .. }
                | DomainError::AlreadyShipped { .. }
                | DomainError::LineCancelled { .. }
                | DomainError::QuantityNotAsExpected { .. } => {
                    Self::Conflict(rejection.to_string())
                }
                DomainError::AdjustmentOutOfRange { .. } => Self::BadRequest(rejection.to_string()),
                DomainError::UnknownBatch { .. } | DomainError::NotAllocated { .. } => {
                    Self::NotFound(rejection.to_string())
                }
                DomainError::OrderShort { ref short, .. }
                | DomainError::HoldShort { ref short } => Self::Short {
                    message: rejection.to_string(),
                    short: short
                        .iter()
                        .map(|line| ShortLine {
                            sku: line.sku.to_string(),
                            requested: line.requested.get(),
                            available: line.available,
                        })
                        .collect(),
                },
                DomainError::LinesNotLoaded { .. } | DomainError::NoPlace { .. } => {
                    Self::Internal(Box::new(rejection))
                }
            },
            Error::Contention { .. } => Self::Unavailable(format!("{error}; try again later")),
            // Only ever answered to a caller that has gone: said for completeness.
            Error::CallerLeft => Self::Unavailable(error.to_string()),
            // Only for messages that may be delivered again, never a request.
            Error::AlreadyDelivered => Self::Conflict(error.to_string()),
            Error::Store(store) => store.into(),
        }
    }
}

impl From<service_layer::StoreError> for ApiError {
    fn from(error: service_layer::StoreError) -> Self {
        Self::Storage(error)
    }
}
