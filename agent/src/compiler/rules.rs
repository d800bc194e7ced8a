//! A NetworkPolicy rule as POLICY entries: the identities its peers select (a name, its
//! pattern's identity), crossed with its ports as prefixes, named ports resolved against
//! the destination.

use std::collections::{BTreeSet, HashMap};

use stagewall_common::IDENTITY_ANY;

use super::{Block, EntrySet, Identities, PortPrefix, port_prefixes};
use crate::policy::model::{
    Direction, NamedPort, NetworkPolicy, Peer, PolicySet, PortMatch, Rule, Workload,
};

/// Where a rule applies: its policy, the local workload and the direction.
pub(super) struct RuleTarget<'a> {
    pub(super) policy: &'a NetworkPolicy,
    pub(super) local: &'a Workload,
    pub(super) direction: Direction,
}

/// The identities each peer selects, by (policy namespace, peer): large policies name
/// the same CIDRs and selectors over and over, and selecting walks every identity.
pub(super) type PeerCache<'a> = HashMap<(&'a str, &'a Peer), Vec<u32>>;

/// Selections of more identities than this are not cached.
const PEER_CACHE_MAX_IDENTITIES: usize = 256;

/// Adds the entries of one rule to `entries`.
pub(super) fn rule_entries<'a>(
    set: &PolicySet,
    identities: &Identities,
    target: &RuleTarget<'a>,
    rule: &'a Rule,
    cache: &mut PeerCache<'a>,
    entries: &mut EntrySet,
) {
    // The union of what the peers select, never their concatenation: 16,000 ipBlocks
    // around the same pods each select nearly every identity.
    let mut union: BTreeSet<u32> = BTreeSet::new();
    if rule.peers.is_empty() {
        union.insert(IDENTITY_ANY);
    }
    // A rule's ipBlocks are selected together (one pass per distinct CIDR).
    let blocks: Vec<Block> = rule
        .peers
        .iter()
        .filter_map(|peer| match peer {
            Peer::IpBlock { cidr, except } => Some(Block::new(*cidr, except)),
            Peer::Workloads { .. } | Peer::Domain(_) => None,
        })
        .collect();
    if !blocks.is_empty() {
        union.extend(identities.select_blocks(&blocks));
    }
    for peer in &rule.peers {
        match peer {
            Peer::IpBlock { .. } => continue,
            // A name is its pattern's identity, for egress only (names never match
            // ingress); it declares no named ports, so a named port gives it no entry.
            Peer::Domain(pattern) => {
                if target.direction == Direction::Egress {
                    union.insert(pattern.identity());
                }
                continue;
            }
            Peer::Workloads { .. } => {}
        }
        let key = (target.policy.name.namespace.as_str(), peer);
        if let Some(selected) = cache.get(&key) {
            union.extend(selected.iter().copied());
            continue;
        }
        let selected = peer_identities(set, identities, target.policy, peer);
        union.extend(selected.iter().copied());
        // Small selections are kept for the next rule naming the same peer; a large one
        // is cheaper to select again than to keep thousands of times over.
        if selected.len() <= PEER_CACHE_MAX_IDENTITIES {
            cache.insert(key, selected);
        }
    }
    let peers: Vec<u32> = union.into_iter().collect();
    if rule.ports.is_empty() {
        for identity in peers {
            entries.insert((identity, None, None));
        }
        return;
    }
    for spec in &rule.ports {
        let protocol = spec.protocol.number();
        match &spec.port {
            PortMatch::All => {
                for &identity in &peers {
                    entries.insert((identity, Some(protocol), None));
                }
            }
            PortMatch::Range(lo, hi) => {
                for &identity in &peers {
                    for prefix in port_prefixes(*lo, *hi) {
                        entries.insert((identity, Some(protocol), Some(prefix)));
                    }
                }
            }
            PortMatch::Named(name) => {
                // Resolved against the destination: the local workload for ingress, each
                // peer for egress ("any peer" becomes every workload that declares it).
                let resolve = |ports: &[NamedPort]| {
                    ports
                        .iter()
                        .find(|p| &p.name == name && p.protocol == spec.protocol)
                        .map(|p| PortPrefix {
                            value: p.port,
                            bits: 16,
                        })
                };
                match target.direction {
                    Direction::Ingress => {
                        if let Some(prefix) = resolve(&target.local.ports) {
                            for &identity in &peers {
                                entries.insert((identity, Some(protocol), Some(prefix)));
                            }
                        }
                    }
                    Direction::Egress => {
                        let candidates: Vec<u32> = if peers == [IDENTITY_ANY] {
                            identities.select_workloads(|_, _| true)
                        } else {
                            peers.clone()
                        };
                        for identity in candidates {
                            if let Some(prefix) = resolve(identities.named_ports(identity)) {
                                entries.insert((identity, Some(protocol), Some(prefix)));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn peer_identities(
    set: &PolicySet,
    identities: &Identities,
    policy: &NetworkPolicy,
    peer: &Peer,
) -> Vec<u32> {
    match peer {
        Peer::IpBlock { cidr, except } => identities.select_block(&Block::new(*cidr, except)),
        Peer::Domain(_) => Vec::new(),
        Peer::Workloads {
            namespace_selector,
            pod_selector,
        } => identities.select_workloads(|namespace, labels| {
            let namespace_ok = match namespace_selector {
                None => namespace == policy.name.namespace,
                Some(sel) => sel.matches(&set.namespace_labels(namespace)),
            };
            namespace_ok && pod_selector.as_ref().is_none_or(|sel| sel.matches(labels))
        }),
    }
}
