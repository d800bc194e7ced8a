//! The policy model, the YAML sources that feed it, pipelines expanded into policies, and
//! the semantics read directly (and explained, for `stagewall check --explain`).

pub mod documents;
pub mod explain;
pub mod model;
pub mod parse;
pub mod pipeline;
pub mod semantics;
