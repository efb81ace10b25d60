//! The API as the contract states it, over real HTTP against the router in this process, on
//! SQLite and on a real PostgreSQL: one binary, a module per route or concern. Tests that depend on
//! what is process-wide live in binaries of their own: `tests/binary` (the real binary in processes
//! it starts, kills and floods), `tests/metrics.rs` (the metrics recorder whose counters it reads)
//! and `tests/metrics_upkeep.rs` (a counting global allocator).

mod archive;
mod clients;
mod forgery;
mod gateway;
mod group_commit;
mod hardening;
mod latest_state;
mod migrations;
mod openapi;
mod operations;
mod ordering_property;
mod outage;
mod predictions;
mod reconcile;
mod retention;
mod schemathesis;
mod waiting;
mod webhooks;
