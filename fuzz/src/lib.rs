//! The checks the fuzz targets run, one module per decoder of outside input.
//! They live apart from the targets so that the service's stable tests run
//! them too (over `seeds/` and generated inputs), including these files by path.

pub mod http_request;
pub mod redis_message;
