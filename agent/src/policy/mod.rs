//! The policy model and the YAML sources that feed it.
pub mod model;
pub mod parse;
