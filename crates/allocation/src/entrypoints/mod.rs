//! Entrypoints: the thin edges where the outside world talks to the service
//! (HTTP, Redis channels and streams, CSV files).
//! Each parses its input into commands, hands them to the message bus (or
//! asks the read model), and renders the answer.

pub mod csv;
pub mod http;
pub mod redis;
pub mod streams;
