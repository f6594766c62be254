//! The allocation service's API tests, in one test binary: bad input
//! answered in-process against the in-memory store, and end-to-end runs of
//! the real binary over HTTP against a temporary SQLite file and, when
//! `DATABASE_URL` is a `postgres://` URL, a fresh PostgreSQL database.

mod bad_input;
mod end_to_end;
mod helpers;
