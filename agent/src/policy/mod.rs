//! The policy model, the YAML sources that feed it, pipelines expanded into policies, and
//! the semantics read directly (and explained, for `stagewall check --explain`).
//!
//! From the bottom up: `model` (what a policy set is) -> `error` (what is wrong with the
//! input, by file and line), `names` (Kubernetes names checked where they come from
//! outside the parser) -> `pipeline` (Pipelines expanded into NetworkPolicies) ->
//! `parse` (YAML to the model, checked as a whole) and, beside it, `semantics` (may this
//! packet pass the NetworkPolicies?) -> `tiers` (and the ClusterNetworkPolicies around
//! them?) -> `explain` (`stagewall check --explain`) and `explain_name` (the same, to a
//! domain name).

pub mod error;
pub mod explain;
pub mod explain_name;
pub mod model;
pub mod names;
pub mod parse;
pub mod pipeline;
pub mod semantics;
pub mod tiers;
