#![forbid(unsafe_code)]
//! singapay-webhooks: a receiver for Singapay payment-gateway callbacks that verifies each
//! one, stores it exactly once in Postgres, and queues every real state change.

pub mod cli;
pub mod config;
pub mod embedded_pg;
pub mod http;
pub mod intake;
pub mod reconcile;
pub mod singapay;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tools;

/// The consumer API in Rust (`claim`, `ack`, `nack`), for services that consume the queue.
pub use store::queue;
