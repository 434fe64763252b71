//! Reconciliation: asking Singapay about transactions whose callbacks were ambiguous or
//! never came.

pub mod client;
