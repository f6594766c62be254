//! Shared test helpers (filled in by the PostgreSQL test work).
