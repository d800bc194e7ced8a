//! One object never overflows the node's kernel maps for everyone: when the desired state
//! needs more entries than a map holds, the newest objects (by creationTimestamp, then
//! kind, namespace and name) are left out until the rest fits, each reported like any
//! object left out. So which policy wins is fixed and documented: the older ones, which
//! were in force first; a new object can never push an old one out.

use std::collections::BTreeSet;

use super::{Cluster, Key};
use crate::{
    compiler::{self, CompileError, EndpointIds},
    policy::{
        error::{PolicyError, PolicyErrors},
        model::PolicySet,
    },
};

/// Kinds an object of which may be left out for capacity: those that add policy.
/// Namespaces only label; leaving one out would change what other objects select.
const LEFT_OUT_FOR_CAPACITY: [&str; 3] = ["networkpolicies", "pipelines", "workloads"];

impl Cluster {
    /// `set` if the kernel maps hold it; else the set without the fewest newest objects
    /// that makes it fit (`rebuild` builds the set without the objects it is given, None
    /// when its checks fail), with an error for each left out. If nothing left out makes
    /// it fit (this node's pods alone overflow), the whole state is refused.
    pub(super) fn fit(
        &self,
        set: PolicySet,
        mut refused: Vec<PolicyError>,
        left_out: &BTreeSet<Key>,
        rebuild: impl Fn(&BTreeSet<Key>) -> Option<PolicySet>,
    ) -> Result<(PolicySet, Vec<PolicyError>), PolicyErrors> {
        let Err(overflow) = fits(&set) else {
            return Ok((set, refused));
        };
        // Newest first.
        let mut candidates: Vec<&Key> = self
            .documents
            .keys()
            .filter(|k| LEFT_OUT_FOR_CAPACITY.contains(&k.0.as_str()) && !left_out.contains(*k))
            .collect();
        candidates.sort_by_key(|k| std::cmp::Reverse((self.created.get(*k), *k)));
        let without = |n: usize| {
            let mut more = left_out.clone();
            more.extend(candidates[..n].iter().map(|k| (*k).clone()));
            rebuild(&more).filter(|set| fits(set).is_ok())
        };
        // Leaving out more never needs more entries: the fewest that fit, by bisection
        // (a handful of compiles, not one per object).
        let (mut lo, mut hi) = (0, candidates.len());
        let Some(mut best) = without(hi) else {
            return Err(PolicyErrors(vec![PolicyError {
                file: "kubernetes".into(),
                line: 0,
                message: format!("{overflow}, even without any policy object"),
            }]));
        };
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            match without(mid) {
                Some(set) => {
                    hi = mid;
                    best = set;
                }
                None => lo = mid,
            }
        }
        for key in &candidates[..hi] {
            refused.push(PolicyError {
                file: super::key_path(key),
                line: 0,
                message: format!(
                    "left out: with it the kernel maps overflow ({overflow}); the newest objects are left out first, the older ones stay in force"
                ),
            });
        }
        Ok((best, refused))
    }
}

/// Whether the kernel maps hold `set` (its compile's only failure is a map overflow).
fn fits(set: &PolicySet) -> Result<(), CompileError> {
    compiler::compile(set, &EndpointIds::default()).map(drop)
}
