//! The storage contract, written once and run against every backend: the
//! in-memory store (the reference), SQLite on a fresh temporary file, and
//! PostgreSQL on a fresh database when `DATABASE_URL` is a `postgres://` URL
//! (skipped otherwise, and a failure under `CI=true`: see `test_support`).
//!
//! - `loading`: what a stored product loads as, after the commands that
//!   change it;
//! - `commits`: all or nothing, version conflicts, duplicate keys, many
//!   commands at once;
//! - `change_sets`: commits of several products and several kinds of change;
//! - `orders`: whole orders, all lines or none, also racing on two
//!   instances;
//! - `holds`: checkout holds, counted only while live, and racing orders
//!   on two instances;
//! - `idempotency`: the answers kept for requests sent with a key;
//! - `ledger`: the stock ledger, adjustments, its check and its migration;
//! - `read_model`: the query side, written with the commits;
//! - `shipping`: shipped and cancelled lines, and the check on them;
//! - `concurrency`: a version conflict between two instances, forced and
//!   retried through the message bus; `under_load`: two instances under
//!   load; both watch commits through `watched`;
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
mod backorders;
mod change_sets;
mod commits;
mod concurrency;
mod deliveries;
mod helpers;
mod holds;
mod idempotency;
mod ledger;
mod loading;
mod maintenance;
mod orders;
mod outbox;
mod query_plans;
mod read_model;
mod shipping;
mod specific;
mod stock_levels;
mod under_load;
mod watched;
