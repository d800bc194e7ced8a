//! What the cluster view keeps of each object it parsed, for the status the agent writes
//! back (status.rs): which object and generation, and why the parser refused it. Its own
//! module so that the view and the status writer both use it without importing each other.

use crate::policy::error::PolicyErrors;

/// An object of `Cluster::documents`' kinds as last seen (kept by the cluster view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// metadata.uid and .generation: which object, and which version of its spec, a
    /// status speaks of.
    pub uid: String,
    pub generation: i64,
    /// Why the parser refused this version (its previous one, if any, stays).
    pub refused: Option<PolicyErrors>,
}
