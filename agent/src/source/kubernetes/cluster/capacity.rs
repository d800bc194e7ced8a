//! One object never overflows the node's kernel maps for everyone: when the desired state
//! needs more entries than a map holds, objects are admitted by rank — Workloads (the
//! inventory, as pods are), then ClusterNetworkPolicies, then the namespaces' policies —
//! and within a rank oldest first (by creationTimestamp, then kind, namespace and name);
//! one that would overflow the maps is left out, reported like any object left out, and
//! the younger ones after it still get their turn. So which policy wins is fixed and
//! documented: a namespace's policy never pushes a guardrail out (left out, a guardrail
//! would open what it denies), a guardrail never pushes the inventory out (a huge one is
//! itself left out, found at once, not after the workloads one by one), those in force
//! first within a rank, and one huge object never blocks the small ones after it.

use std::collections::BTreeSet;

use super::{Cluster, Key};
use crate::{
    compiler::{self, CompileError, EndpointIds},
    policy::{
        error::{PolicyError, PolicyErrors},
        model::PolicySet,
    },
};

/// Kinds an object of which may be left out for capacity: those that add policy
/// (a ClusterNetworkPolicy its tier rules and entries). Namespaces only label; leaving one
/// out would change what other objects select.
const LEFT_OUT_FOR_CAPACITY: [&str; 4] = [
    "networkpolicies",
    "clusternetworkpolicies",
    "pipelines",
    "workloads",
];

/// The order kinds are admitted in when the maps would overflow: the inventory, the
/// guardrails, the namespaces' policies.
fn admission_rank(kind: &str) -> u8 {
    match kind {
        "workloads" => 0,
        "clusternetworkpolicies" => 1,
        _ => 2,
    }
}

impl Cluster {
    /// `set` if the kernel maps hold it; else the set without the objects that overflow
    /// them, admitted oldest first (`rebuild` builds the set without the objects it is
    /// given, None when its checks fail), with an error for each left out. If the node's
    /// pods and namespaces alone overflow the maps, the whole state is refused.
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
        // By rank, then oldest first.
        let mut candidates: Vec<&Key> = self
            .documents
            .keys()
            .filter(|k| LEFT_OUT_FOR_CAPACITY.contains(&k.0.as_str()) && !left_out.contains(*k))
            .collect();
        candidates.sort_by_key(|k| (admission_rank(&k.0), self.created.get(*k), *k));
        let mut skipped: BTreeSet<Key> = BTreeSet::new();
        // The set with the first `admitted` candidates (less those skipped), if it fits.
        let with_first = |admitted: usize, skipped: &BTreeSet<Key>| {
            let mut out = left_out.clone();
            out.extend(skipped.iter().cloned());
            out.extend(candidates[admitted..].iter().map(|k| (*k).clone()));
            rebuild(&out).filter(|set| fits(set).is_ok())
        };
        if with_first(0, &skipped).is_none() {
            return Err(PolicyErrors(vec![PolicyError {
                file: "kubernetes".into(),
                line: 0,
                message: format!("{overflow}, even without any policy object"),
            }]));
        }
        // Invariant: the first `fitting` candidates (less those skipped) fit. Each round
        // finds, by bisection, the first candidate that makes the set overflow and skips
        // it: a few compiles per object left out, not one per object.
        let mut fitting = 0;
        let best = loop {
            if let Some(set) = with_first(candidates.len(), &skipped) {
                break set;
            }
            let (mut lo, mut hi) = (fitting, candidates.len());
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if with_first(mid, &skipped).is_some() {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let culprit = candidates[hi - 1];
            refused.push(PolicyError {
                file: super::key_path(culprit),
                line: 0,
                message: format!(
                    "left out: with it the kernel maps overflow ({overflow}); objects are admitted oldest first, so the ones in force before it stay"
                ),
            });
            skipped.insert(culprit.clone());
            fitting = hi;
        };
        Ok((best, refused))
    }
}

/// Whether the kernel maps hold `set` (its compile's only failure is a map overflow).
fn fits(set: &PolicySet) -> Result<(), CompileError> {
    compiler::compile(set, &EndpointIds::default()).map(drop)
}
