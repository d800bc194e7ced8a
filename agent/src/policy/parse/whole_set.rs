//! The checks of the set as a whole, once every document is parsed: pipelines expanded,
//! then duplicate names, one address or attachment claimed by two workloads, and cgroups
//! nested in another workload's cgroup.

use std::{collections::HashMap, net::IpAddr};

use crate::policy::{
    error::{PolicyError, PolicyErrors},
    model::{Attachment, Origin, PolicySet, Workload},
    pipeline,
};

/// The last step of loading, from files or from the API server: expands the pipelines
/// and checks the whole set (names, addresses, attachments).
pub fn complete(set: &mut PolicySet) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    if let Err(mut e) = pipeline::expand(set) {
        errors.append(&mut e);
    }
    if let Err(mut e) = validate_set(set) {
        errors.append(&mut e.0);
    }
    errors
}

/// Checks across documents: duplicate names, one address or attachment claimed by two
/// workloads, and cgroups nested in another workload's cgroup.
pub fn validate_set(set: &PolicySet) -> Result<(), PolicyErrors> {
    let mut errors = Vec::new();
    let mut err = |origin: &Origin, message: String| {
        errors.push(PolicyError {
            file: origin.file.clone(),
            line: origin.line,
            message,
        })
    };
    let workloads = set
        .workloads
        .iter()
        .map(|w| (w.name.to_string(), &w.origin));
    let policies = set.policies.iter().map(|p| (p.name.to_string(), &p.origin));
    let namespaces = set.namespaces.iter().map(|n| (n.name.clone(), &n.origin));
    let cluster_policies = set
        .cluster_policies
        .iter()
        .map(|p| (p.name.clone(), &p.origin));
    let nodes = set.nodes.iter().map(|n| (n.name.clone(), &n.origin));
    for (kind, named) in [
        ("Workload", workloads.collect::<Vec<_>>()),
        ("NetworkPolicy", policies.collect()),
        ("Namespace", namespaces.collect()),
        ("ClusterNetworkPolicy", cluster_policies.collect()),
        ("Node", nodes.collect()),
    ] {
        let mut first: HashMap<&str, &Origin> = HashMap::new();
        for (name, origin) in &named {
            if let Some(first) = first.insert(name, origin) {
                err(
                    origin,
                    format!(
                        "duplicate {kind} {name}; first defined at {first}; expected each name once"
                    ),
                );
            }
        }
    }
    let mut addresses: HashMap<IpAddr, &Workload> = HashMap::new();
    let mut attachments: HashMap<&Attachment, &Workload> = HashMap::new();
    for w in &set.workloads {
        for a in &w.addresses {
            if let Some(other) = addresses.insert(*a, w)
                && other.name != w.name
            {
                err(
                    &w.origin,
                    format!(
                        "address {a} of {} is also the address of {} ({}); expected each address to belong to one workload",
                        w.name, other.name, other.origin
                    ),
                );
            }
        }
        if let Some(att) = &w.attachment
            && let Some(other) = attachments.insert(att, w)
        {
            err(
                &w.origin,
                format!(
                    "{} is attached to the same {att:?} as {} ({}); expected one workload per cgroup or interface",
                    w.name, other.name, other.origin
                ),
            );
        }
    }
    let cgroups: Vec<(&str, &Workload)> = set
        .workloads
        .iter()
        .filter_map(|w| match &w.attachment {
            Some(Attachment::Cgroup(path)) => Some((path.trim_end_matches('/'), w)),
            _ => None,
        })
        .collect();
    // Each cgroup's ancestors looked up by path (linear in the paths' depth; comparing
    // every pair took 10 s at 10,000 workloads).
    let mut by_path: HashMap<&str, Vec<&Workload>> = HashMap::new();
    for (path, w) in &cgroups {
        by_path.entry(path).or_default().push(w);
    }
    for (path, w) in &cgroups {
        let mut outer = *path;
        while let Some((parent, _)) = outer.rsplit_once('/') {
            outer = parent;
            for o in by_path.get(outer).into_iter().flatten() {
                err(
                    &w.origin,
                    format!(
                        "cgroup {path} of {} is inside cgroup {outer} of {} ({}); expected workload cgroups not to nest, so each packet belongs to one workload",
                        w.name, o.name, o.origin
                    ),
                );
            }
        }
    }
    PolicyErrors::result(errors, ())
}
