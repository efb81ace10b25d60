//! prediction-inbox: receives Replicate's signed prediction webhooks, keeps each prediction's
//! latest state in Postgres, and serves it back through a Replicate-shaped read API.
//!
//! One delivery goes `http` → `verify` → `ingest` → `store`; one read goes `http` → `store`, and a
//! waiting read is woken through `waiters` when a commit announces its prediction.
//! `domain` holds the value types they share; `config`, `telemetry` and `startup` assemble it.

pub mod archive;
pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod reconcile;
pub mod replicate;
pub mod retention;
pub mod sample;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod verify;
pub mod waiters;
