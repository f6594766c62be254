//! The storage contract, written once and run against every backend: the
//! in-memory store (the reference), SQLite on a fresh temporary file, and
//! PostgreSQL on a fresh database when `DATABASE_URL` is a `postgres://` URL
//! (skipped otherwise, and a failure under `CI=true`: see `test_support`).
//!
//! - `scenarios`: what every backend must do, one test per backend each;
//! - `concurrency`: a version conflict between two instances, forced and
//!   retried through the message bus, and two instances under load;
//! - `outbox`: what commits write to the outbox, how relays claim, release
//!   and mark it sent, and two relays draining one outbox at once;
//! - `maintenance`: the consistency check and the read-model rebuild, on
//!   damaged tables and during concurrent commands;
//! - `query_plans`: the lookups a request makes are index lookups;
//! - `specific`: what only SQLite or only PostgreSQL has to show.
//!
//! SKUs, references and order ids are random, so tests never see each
//! other's data even where they share a database.

mod backends;
mod concurrency;
mod helpers;
mod maintenance;
mod outbox;
mod query_plans;
mod scenarios;
mod specific;
