//! The policy model, the YAML sources that feed it, and its semantics read directly.
pub mod model;
pub mod parse;
pub mod semantics;
