#![forbid(unsafe_code)]
//! singapay-webhooks: a receiver for Singapay payment-gateway callbacks that verifies each
//! one, stores it exactly once in Postgres, and queues every real state change.

pub mod singapay;
