//! The tiers read directly off the model, for one side of a connection (the sender's
//! egress or the receiver's ingress), first match wins:
//!
//! 1. Admin tier: the ClusterNetworkPolicies of tier Admin whose subject holds the
//!    workload, lowest priority first (ties by name), each one's rules in the order
//!    written. Accept allows, Deny denies, Pass skips the rest of the tier.
//! 2. NetworkPolicy tier: if a NetworkPolicy isolates the workload in this direction,
//!    their union decides (policy::semantics).
//! 3. Baseline tier: as the Admin tier; Pass there leaves it undecided.
//! 4. Nothing decided: allowed.
//!
//! It names what decided (tier, policy, rule, action) for `stagewall check --explain`,
//! and is the reference the compiler's tiers are to be tested against.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    model::{
        Action, ClusterNetworkPolicy, ClusterPeer, ClusterRule, Direction, NamedPort, PolicySet,
        Tier, Workload,
    },
    semantics::{self, Side},
};

/// A rule of a ClusterNetworkPolicy, for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef<'a> {
    pub policy: &'a ClusterNetworkPolicy,
    pub direction: Direction,
    /// Index into the policy's rules of the direction.
    pub index: usize,
}

impl<'a> RuleRef<'a> {
    pub fn rule(&self) -> &'a ClusterRule {
        &self.policy.rules(self.direction)[self.index]
    }

    pub fn action(&self) -> Action {
        self.rule().action
    }

    /// The rule's name, or `#N` (from 1) for a rule without one.
    pub fn name(&self) -> String {
        match &self.rule().name {
            Some(name) => format!("{name:?}"),
            None => format!("#{}", self.index + 1),
        }
    }
}

/// Who decided one side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy<'a> {
    /// Traffic of a workload to itself never leaves it: no tier applies.
    SelfTraffic,
    /// An Accept or Deny rule of the Admin or the Baseline tier (the policy's tier).
    Cluster(RuleRef<'a>),
    /// The NetworkPolicies that isolate the workload (Allowed, Denied or FromNode).
    NetworkPolicy(Side<'a>),
    /// No tier decided: allowed, as Kubernetes allows by default.
    Default,
}

/// The answer for one side, and the Pass rules read on the way to it (at most one per
/// tier), so an explanation can say why a tier did not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub passed: Vec<RuleRef<'a>>,
    pub by: DecidedBy<'a>,
}

impl Decision<'_> {
    pub fn allowed(&self) -> bool {
        match &self.by {
            DecidedBy::SelfTraffic | DecidedBy::Default => true,
            DecidedBy::Cluster(rule) => rule.action() == Action::Accept,
            DecidedBy::NetworkPolicy(side) => side.allowed(),
        }
    }
}

/// The ClusterNetworkPolicies of `tier` in the order they are read.
pub fn ordered(set: &PolicySet, tier: Tier) -> Vec<&ClusterNetworkPolicy> {
    let mut policies: Vec<&ClusterNetworkPolicy> = set
        .cluster_policies
        .iter()
        .filter(|p| p.tier == tier)
        .collect();
    policies.sort_by(|a, b| a.precedence(b));
    policies
}

/// Does `local`'s side of a packet in `direction`, with `remote` at the other end, pass?
/// `port` is the destination port (the remote's for egress, the local one's for ingress).
/// The remote is known by its address alone (`decide_named` with no names).
pub fn decide<'a>(
    set: &'a PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
) -> Decision<'a> {
    decide_named(set, local, direction, remote, protocol, port, &[])
}

/// `decide`, where `names` are the names this workload's own DNS answers gave for the
/// remote address: a `domainNames` peer (egress, Accept rules only) matches when one of
/// them matches one of its patterns, and the first rule that matches, by address or by
/// name, decides as ever.
pub fn decide_named<'a>(
    set: &'a PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
    names: &[String],
) -> Decision<'a> {
    let names = match direction {
        Direction::Egress => names,
        Direction::Ingress => &[],
    };
    let mut passed = Vec::new();
    if local.addresses.contains(&remote) {
        return Decision {
            passed,
            by: DecidedBy::SelfTraffic,
        };
    }
    let packet = Packet {
        set,
        local,
        direction,
        remote,
        protocol,
        port,
        names,
    };
    if let Some(rule) = packet.first_match(Tier::Admin) {
        if rule.action() != Action::Pass {
            return Decision {
                passed,
                by: DecidedBy::Cluster(rule),
            };
        }
        passed.push(rule);
    }
    let side = semantics::decide_named(set, local, direction, remote, protocol, port, names);
    if side != Side::NotIsolated {
        return Decision {
            passed,
            by: DecidedBy::NetworkPolicy(side),
        };
    }
    if let Some(rule) = packet.first_match(Tier::Baseline) {
        if rule.action() != Action::Pass {
            return Decision {
                passed,
                by: DecidedBy::Cluster(rule),
            };
        }
        passed.push(rule);
    }
    Decision {
        passed,
        by: DecidedBy::Default,
    }
}

/// One side of one packet, as the tiers see it.
struct Packet<'a, 'w> {
    set: &'a PolicySet,
    local: &'w Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
    /// What the workload's DNS answers named the remote address (none for ingress).
    names: &'w [String],
}

impl<'a> Packet<'a, '_> {
    /// The first rule of `tier` that matches, of the policies whose subject holds the
    /// workload, read in order.
    fn first_match(&self, tier: Tier) -> Option<RuleRef<'a>> {
        let local_namespace = self.set.namespace_labels(&self.local.name.namespace);
        let remote = semantics::owner(self.set, self.remote);
        // Named ports resolve against the destination's declared ports.
        let destination_ports: &[NamedPort] = match self.direction {
            Direction::Ingress => &self.local.ports,
            Direction::Egress => remote.map_or(&[], |w| &w.ports),
        };
        let remote_namespace = remote.map(|w| self.set.namespace_labels(&w.name.namespace));
        ordered(self.set, tier)
            .into_iter()
            .filter(|p| p.subject.matches(&local_namespace, &self.local.labels))
            .find_map(|policy| {
                let index = policy.rules(self.direction).iter().position(|rule| {
                    let by_address = rule.peers.iter().any(|peer| match peer {
                        ClusterPeer::Networks(cidrs) => {
                            cidrs.iter().any(|c| c.contains(&self.remote))
                        }
                        ClusterPeer::Nodes(selector) => self.set.nodes.iter().any(|n| {
                            n.addresses.contains(&self.remote) && selector.matches(&n.labels)
                        }),
                        ClusterPeer::Workloads(selector) => remote
                            .zip(remote_namespace.as_ref())
                            .is_some_and(|(w, ns)| selector.matches(ns, &w.labels)),
                        ClusterPeer::Domains(_) => false,
                    });
                    let by_name = rule.peers.iter().any(|peer| match peer {
                        ClusterPeer::Domains(patterns) => patterns
                            .iter()
                            .any(|d| self.names.iter().any(|n| d.matches(n))),
                        _ => false,
                    });
                    // A name declares no named ports (the parser refuses them beside
                    // domainNames anyway).
                    let ports = |declared: &[NamedPort]| {
                        rule.protocols.is_empty()
                            || rule
                                .protocols
                                .iter()
                                .any(|p| p.matches(self.protocol, self.port, declared))
                    };
                    (by_address && ports(destination_ports)) || (by_name && ports(&[]))
                })?;
                Some(RuleRef {
                    policy,
                    direction: self.direction,
                    index,
                })
            })
    }
}

/// Policies of one tier that share a priority: the API leaves their order to the
/// implementation (here: by name), so each group is worth a warning.
pub fn priority_ties(set: &PolicySet) -> Vec<String> {
    let mut groups: BTreeMap<(Tier, u16), Vec<&ClusterNetworkPolicy>> = BTreeMap::new();
    for p in &set.cluster_policies {
        groups.entry((p.tier, p.priority)).or_default().push(p);
    }
    groups
        .into_iter()
        .filter(|(_, policies)| policies.len() > 1)
        .map(|((tier, priority), mut policies)| {
            policies.sort_by(|a, b| a.precedence(b));
            let names: Vec<String> = policies
                .iter()
                .map(|p| format!("{} ({})", p.name, p.origin))
                .collect();
            format!(
                "ClusterNetworkPolicies {} share {tier} priority {priority}; they are read in name order, {} first; expected distinct priorities where their rules may match the same connection",
                names.join(", "),
                policies[0].name
            )
        })
        .collect()
}

/// Rules whose `nodes` peer selects no Node of the inventory (none declared, or labels
/// that no node has): such a peer matches nothing, which is worth a warning, not an error
/// (a node may join later).
pub fn empty_nodes_peers(set: &PolicySet) -> Vec<String> {
    let mut warnings = Vec::new();
    for p in &set.cluster_policies {
        for direction in [Direction::Ingress, Direction::Egress] {
            for (index, rule) in p.rules(direction).iter().enumerate() {
                let empty = rule.peers.iter().any(|peer| {
                    matches!(peer, ClusterPeer::Nodes(s) if set.node_peer_addresses(s).is_empty())
                });
                if empty {
                    let rule = RuleRef {
                        policy: p,
                        direction,
                        index,
                    };
                    warnings.push(format!(
                        "ClusterNetworkPolicy {} {} rule {} ({}:{}) has a nodes peer that selects no Node address; expected Node objects (or documents) whose labels match",
                        p.name,
                        direction.name(),
                        rule.name(),
                        p.origin.file.display(),
                        rule.rule().line
                    ));
                }
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests;
