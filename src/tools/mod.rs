//! What the integrator commands are made of, beside Singapay's rules rather than among
//! them: the callback simulator behind `send` and the signature explainer behind `verify`.

pub mod explain;
pub mod simulate;
