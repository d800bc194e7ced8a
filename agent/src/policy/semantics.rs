//! Kubernetes NetworkPolicy semantics read directly off the model, one question at a time:
//! may this packet leave (or enter) this workload? It answers with the policies that
//! isolate the workload and the rule that allows the packet, for `stagewall check
//! --explain`, and it is the reference the compiler's output is tested against.

use std::net::IpAddr;

use super::model::{Direction, NamedPort, NetworkPolicy, Peer, PolicySet, Rule, Workload};

/// The answer for one side (the sender's egress or the receiver's ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side<'a> {
    /// No policy selects the workload in this direction.
    NotIsolated,
    /// Traffic of a workload to itself (its own address) never leaves it.
    SelfTraffic,
    /// From this node (one of `PolicySet::node_addresses` that no workload has): ingress
    /// always lets the node in (kubelet's probes).
    FromNode,
    /// Allowed by this rule (index into the policy's rules of the direction).
    Allowed {
        isolated_by: Vec<&'a NetworkPolicy>,
        policy: &'a NetworkPolicy,
        rule: usize,
    },
    /// Isolated, and no rule of these policies allows it.
    Denied { isolated_by: Vec<&'a NetworkPolicy> },
}

impl Side<'_> {
    pub fn allowed(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

/// The workload that owns an address, if the inventory knows it.
pub fn owner(set: &PolicySet, addr: IpAddr) -> Option<&Workload> {
    set.workloads.iter().find(|w| w.addresses.contains(&addr))
}

/// Does `local`'s policy allow a packet in `direction` with `remote` at the other end?
/// `port` is the destination port (the remote's for egress, the local one's for ingress).
/// The remote is known by its address alone (`decide_named` with no names).
pub fn decide<'a>(
    set: &'a PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
) -> Side<'a> {
    decide_named(set, local, direction, remote, protocol, port, &[])
}

/// `decide`, where `names` are the names this workload's own DNS answers gave for the
/// remote address (possibly none): a `Domain` peer of an egress rule matches when one of
/// them matches its pattern. Names never match ingress: a name says where a workload
/// meant to go, not who calls it.
pub fn decide_named<'a>(
    set: &'a PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
    names: &[String],
) -> Side<'a> {
    if local.addresses.contains(&remote) {
        return Side::SelfTraffic;
    }
    let isolated_by = set.isolating(local, direction);
    if isolated_by.is_empty() {
        return Side::NotIsolated;
    }
    if direction == Direction::Ingress
        && set.node_addresses.contains(&remote)
        && owner(set, remote).is_none()
    {
        return Side::FromNode;
    }
    // Named ports resolve against the destination's declared ports.
    let destination_ports: &[NamedPort] = match direction {
        Direction::Ingress => &local.ports,
        Direction::Egress => owner(set, remote).map_or(&[], |w| &w.ports),
    };
    let names = match direction {
        Direction::Egress => names,
        Direction::Ingress => &[],
    };
    let ports_match = |rule: &Rule, declared: &[NamedPort]| {
        rule.ports.is_empty()
            || rule
                .ports
                .iter()
                .any(|s| s.matches(protocol, port, declared))
    };
    for p in &isolated_by {
        for (index, rule) in p.rules(direction).iter().enumerate() {
            // A name stands for no workload, so it declares no named ports (the compiler
            // gives a name identity none either).
            if (address_matches(set, p, rule, remote) && ports_match(rule, destination_ports))
                || (name_matches(rule, names) && ports_match(rule, &[]))
            {
                return Side::Allowed {
                    isolated_by: isolated_by.clone(),
                    policy: p,
                    rule: index,
                };
            }
        }
    }
    Side::Denied { isolated_by }
}

/// Does a peer of `rule` other than a name hold `remote` (every peer, for no peers)?
fn address_matches(set: &PolicySet, policy: &NetworkPolicy, rule: &Rule, remote: IpAddr) -> bool {
    rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(&remote) && !except.iter().any(|e| e.contains(&remote))
            }
            Peer::Workloads {
                namespace_selector,
                pod_selector,
            } => owner(set, remote).is_some_and(|w| {
                let namespace_ok = match namespace_selector {
                    None => w.name.namespace == policy.name.namespace,
                    Some(s) => s.matches(&set.namespace_labels(&w.name.namespace)),
                };
                namespace_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&w.labels))
            }),
            Peer::Domain(_) => false,
        })
}

/// Does a name peer of `rule` match one of `names`?
fn name_matches(rule: &Rule, names: &[String]) -> bool {
    rule.peers.iter().any(|peer| match peer {
        Peer::Domain(pattern) => names.iter().any(|n| pattern.matches(n)),
        _ => false,
    })
}
