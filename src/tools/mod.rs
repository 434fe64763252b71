//! What the integrator commands are made of, beside Singapay's rules rather than among
//! them: the callback simulator behind `send`, the signature explainer behind `verify`, and
//! the local stand-in for Singapay's REST API behind `sandbox`.

pub mod explain;
pub mod sandbox;
pub mod simulate;
