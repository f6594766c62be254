//! The allocation service's API tests, in one test binary: bad input
//! answered in-process against the in-memory store, and end-to-end runs of
//! the real binary over HTTP against a temporary SQLite file and, when
//! `DATABASE_URL` is a `postgres://` URL, a fresh PostgreSQL database; with
//! Redis (the shared one of `REDIS_URL`, or `redis-server`s of the tests'
//! own) for messages, and an SMTP sink for email.

mod backorders;
mod bad_input;
mod connections;
mod crash;
mod csv_mode;
mod delivery;
mod end_to_end;
mod external_events;
mod fuzz_inputs;
mod hang_ups;
mod helpers;
mod holds;
mod http_edge;
mod idempotency;
mod ledger;
mod maintenance;
mod notifications;
mod observability;
mod openapi;
mod orders;
mod outage;
mod races;
mod redis_flood;
mod shipping;
mod shutdown;
mod stock_messages;
mod streams;
