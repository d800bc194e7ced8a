//! `stagewall check DIR --explain --from X --to Y --port P`: which policies select each
//! side of a connection and which rule allows it, or why it is denied. Read directly off
//! the tiers (policy::tiers: ClusterNetworkPolicies around the NetworkPolicy semantics),
//! not off the compiled maps.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use crate::policy::{
    model::{
        Action, ClusterPeer, Direction, LabelSelector, NetworkPolicy, Peer, PolicySet, PortMatch,
        Protocol, Requirement, Rule, Workload,
    },
    semantics::{self, Side},
    tiers::{self, DecidedBy, RuleRef},
};

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is neither an address nor namespace/name")]
    NotAParty(String),
    #[error("no Workload {0} in the policies")]
    NoSuchWorkload(String),
    #[error(
        "{0:?} is not a workload of the inventory; expected a workload (namespace/name) as the source of a connection to a name"
    )]
    NameNeedsWorkload(String),
    #[error("the two sides have no addresses of one family in common")]
    NoCommonFamily,
    #[error(transparent)]
    Format(#[from] fmt::Error),
}

/// An answer: the text, and the verdict it ends with (none where it could not be given).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    pub text: String,
    pub verdict: Option<ExplainedVerdict>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExplainedVerdict {
    Allowed,
    Denied,
}

impl ExplainedVerdict {
    pub fn of(allowed: bool) -> ExplainedVerdict {
        if allowed {
            ExplainedVerdict::Allowed
        } else {
            ExplainedVerdict::Denied
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            ExplainedVerdict::Allowed => "allowed",
            ExplainedVerdict::Denied => "denied",
        }
    }
}

/// One end of the question: a workload of the inventory (`namespace/name`) or an address.
pub enum Party<'a> {
    Workload(&'a Workload),
    Address(IpAddr),
}

/// The party `spec` names: an address (the workload that owns it, if any) or a workload
/// by `namespace/name`.
pub fn party<'a>(set: &'a PolicySet, spec: &str) -> Result<Party<'a>, ExplainError> {
    if let Ok(addr) = spec.parse::<IpAddr>() {
        return Ok(match semantics::owner(set, addr) {
            Some(w) => Party::Workload(w),
            None => Party::Address(addr),
        });
    }
    if !spec.contains('/') {
        return Err(ExplainError::NotAParty(spec.to_string()));
    }
    set.workload(spec)
        .map(Party::Workload)
        .ok_or_else(|| ExplainError::NoSuchWorkload(spec.to_string()))
}

/// The addresses the question is about: the given ones, or the first pair of one family
/// (IPv4 first) of the workloads.
fn addresses(from: &Party, to: &Party) -> Result<(IpAddr, IpAddr), ExplainError> {
    let candidates = |p: &Party| match p {
        Party::Workload(w) => w.addresses.clone(),
        Party::Address(a) => vec![*a],
    };
    let (froms, tos) = (candidates(from), candidates(to));
    for v4 in [true, false] {
        let f = froms.iter().find(|a| a.is_ipv4() == v4);
        let t = tos.iter().find(|a| a.is_ipv4() == v4);
        if let (Some(f), Some(t)) = (f, t) {
            return Ok((*f, *t));
        }
    }
    Err(ExplainError::NoCommonFamily)
}

/// A workload by name; an address by the Node that has it, if one does.
fn name(set: &PolicySet, p: &Party) -> String {
    match p {
        Party::Workload(w) => w.name.to_string(),
        Party::Address(a) => match set.nodes.iter().find(|n| n.addresses.contains(a)) {
            Some(node) => format!("node {}", node.name),
            None => a.to_string(),
        },
    }
}

/// The answer, one line for each side and the verdict.
pub fn explain(
    set: &PolicySet,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let (from, to) = (party(set, from)?, party(set, to)?);
    let (src, dst) = addresses(&from, &to)?;
    let mut out = String::new();
    writeln!(
        out,
        "from {} ({src}) to {} ({dst}), {} port {port}",
        name(set, &from),
        name(set, &to),
        protocol.name()
    )?;
    let mut allowed = true;
    for (party, direction, remote) in [
        (&from, Direction::Egress, dst),
        (&to, Direction::Ingress, src),
    ] {
        let label = match direction {
            Direction::Egress => "egress of",
            Direction::Ingress => "ingress of",
        };
        let Party::Workload(w) = party else {
            writeln!(
                out,
                "  {label} {}: not a workload of the inventory, no policy applies",
                name(set, party)
            )?;
            continue;
        };
        let note = if w.attachment.is_none() {
            " (enforced on its own host, not this one)"
        } else {
            ""
        };
        let decision = tiers::decide(set, w, direction, remote, protocol.number(), port);
        allowed &= decision.allowed();
        // Pass rules read on the way: why a tier did not decide.
        let passed: String = decision
            .passed
            .iter()
            .map(|r| format!(" (passed on by {})", describe_cluster_rule(r)))
            .collect();
        let side = match decision.by {
            DecidedBy::SelfTraffic => Side::SelfTraffic,
            DecidedBy::NetworkPolicy(side) => side,
            DecidedBy::Default => Side::NotIsolated,
            DecidedBy::Cluster(rule) => {
                let verdict = if rule.action() == Action::Accept {
                    "allowed"
                } else {
                    "DENIED"
                };
                writeln!(
                    out,
                    "  {label} {}{note}: {verdict} by {}{}{passed}",
                    w.name,
                    describe_cluster_rule(&rule),
                    nodes_note(set, &rule, remote),
                )?;
                continue;
            }
        };
        match side {
            Side::NotIsolated if set.cluster_policies.is_empty() => writeln!(
                out,
                "  {label} {}{note}: allowed, no policy selects it for {}",
                w.name,
                direction.name()
            )?,
            Side::NotIsolated => writeln!(
                out,
                "  {label} {}{note}: allowed, no NetworkPolicy selects it for {} and no ClusterNetworkPolicy rule decides{passed}",
                w.name,
                direction.name()
            )?,
            Side::SelfTraffic => writeln!(
                out,
                "  {label} {}: allowed, traffic to itself never leaves it",
                w.name
            )?,
            Side::FromNode => writeln!(
                out,
                "  {label} {}: allowed, its node may always connect to it{passed}",
                w.name
            )?,
            Side::Allowed {
                isolated_by,
                policy,
                rule,
            } => writeln!(
                out,
                "  {label} {}{note}: allowed by {} {} rule {} at {}:{} ({}); isolated by {}{passed}",
                w.name,
                policy.name,
                direction.name(),
                rule + 1,
                policy.origin.file.display(),
                policy.rules(direction)[rule].line,
                describe_rule(&policy.rules(direction)[rule], direction),
                names(&isolated_by)
            )?,
            Side::Denied { isolated_by } => writeln!(
                out,
                "  {label} {}{note}: DENIED: isolated by {}, and no {} rule of theirs allows {} port {port} {} {}{passed}",
                w.name,
                names(&isolated_by),
                direction.name(),
                protocol.name(),
                if direction == Direction::Egress {
                    "to"
                } else {
                    "from"
                },
                remote
            )?,
        }
    }
    let verdict = ExplainedVerdict::of(allowed);
    writeln!(out, "verdict: {}", verdict.word())?;
    Ok(Explanation {
        text: out,
        verdict: Some(verdict),
    })
}

/// `ClusterNetworkPolicy NAME (Admin tier, priority P) egress rule "R" (Deny) at FILE:LINE`.
fn describe_cluster_rule(rule: &RuleRef) -> String {
    let p = rule.policy;
    format!(
        "ClusterNetworkPolicy {} ({} tier, priority {}) {} rule {} ({}) at {}:{}",
        p.name,
        p.tier,
        p.priority,
        rule.direction.name(),
        rule.name(),
        rule.action(),
        p.origin.file.display(),
        rule.rule().line
    )
}

/// For a rule that holds `remote` by a nodes peer: which node it is and by what labels,
/// since neither the rule's line nor the address says so.
fn nodes_note(set: &PolicySet, rule: &RuleRef, remote: IpAddr) -> String {
    rule.rule()
        .peers
        .iter()
        .find_map(|peer| {
            let ClusterPeer::Nodes(selector) = peer else {
                return None;
            };
            let node = set
                .nodes
                .iter()
                .find(|n| n.addresses.contains(&remote) && selector.matches(&n.labels))?;
            Some(format!(
                ": {remote} is an address of node {}, which its nodes peer {{{}}} selects",
                node.name,
                describe_selector(selector)
            ))
        })
        .unwrap_or_default()
}

/// `k=v,key exists,zone in (a,b)`, or `all` for the empty selector.
fn describe_selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(s.match_expressions.iter().map(|r| match r {
        Requirement::In(k, v) => format!("{k} in ({})", v.join(",")),
        Requirement::NotIn(k, v) => format!("{k} not in ({})", v.join(",")),
        Requirement::Exists(k) => format!("{k} exists"),
        Requirement::DoesNotExist(k) => format!("{k} does not exist"),
    }));
    if parts.is_empty() {
        "all".to_string()
    } else {
        parts.join(",")
    }
}

fn names(policies: &[&NetworkPolicy]) -> String {
    policies
        .iter()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_rule(rule: &Rule, direction: Direction) -> String {
    let peers = if rule.peers.is_empty() {
        "any peer".to_string()
    } else {
        rule.peers
            .iter()
            .map(describe_peer)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let ports = if rule.ports.is_empty() {
        "any protocol and port".to_string()
    } else {
        rule.ports
            .iter()
            .map(|p| match &p.port {
                PortMatch::All => format!("{} any port", p.protocol.name()),
                PortMatch::Range(lo, hi) if lo == hi => format!("{} {lo}", p.protocol.name()),
                PortMatch::Range(lo, hi) => format!("{} {lo}-{hi}", p.protocol.name()),
                PortMatch::Named(n) => format!("{} port named {n}", p.protocol.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dir = if direction == Direction::Egress {
        "to"
    } else {
        "from"
    };
    format!("{dir} {peers}; {ports}")
}

fn describe_peer(peer: &Peer) -> String {
    let selector = describe_selector;
    match peer {
        Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::IpBlock { cidr, except } => format!(
            "ipBlock {cidr} except {}",
            except
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Peer::Workloads {
            namespace_selector,
            pod_selector,
        } => {
            let mut parts = Vec::new();
            if let Some(n) = namespace_selector {
                parts.push(format!("namespaces {{{}}}", selector(n)));
            }
            if let Some(p) = pod_selector {
                parts.push(format!("workloads {{{}}}", selector(p)));
            }
            parts.join(" and ")
        }
        Peer::Domain(pattern) => format!("fqdn {pattern}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse::parse_into;

    const SET: &str = "apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {tenant: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {tenant: b}}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: x, namespace: a}
spec: {cgroup: /x, addresses: [10.0.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: y, namespace: b}
spec: {cgroup: /y, addresses: [10.0.0.2]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenants}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {tenant: a}}}
  egress:
    - {name: metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
    - {name: same-tenant, action: Pass, to: [{namespaces: {matchLabels: {tenant: a}}}]}
  ingress:
    - {name: other-tenants, action: Deny, from: [{namespaces: {matchExpressions: [{key: tenant, operator: NotIn, values: [a]}]}}]}
";

    fn explained(from: &str, to: &str) -> String {
        let mut set = PolicySet::default();
        parse_into(Path::new("e.yaml"), SET, &mut set).unwrap();
        explain(&set, from, to, Protocol::Tcp, 80).unwrap().text
    }

    #[test]
    fn the_cluster_rule_that_decides_is_named_with_its_tier_and_line() {
        let out = explained("b/y", "a/x");
        assert!(out.contains("egress of b/y: allowed, no NetworkPolicy selects it for egress and no ClusterNetworkPolicy rule decides"), "{out}");
        assert!(out.contains("ingress of a/x: DENIED by ClusterNetworkPolicy tenants (Admin tier, priority 10) ingress rule \"other-tenants\" (Deny) at e.yaml:30"), "{out}");
        assert!(out.ends_with("verdict: denied\n"), "{out}");
        let out = explained("a/x", "169.254.169.254");
        assert!(out.contains("egress of a/x: DENIED by ClusterNetworkPolicy tenants (Admin tier, priority 10) egress rule \"metadata\" (Deny) at e.yaml:27"), "{out}");
    }

    #[test]
    fn a_nodes_peer_names_the_node_and_the_labels_it_selects_by() {
        let nodes = "
---
apiVersion: v1
kind: Node
metadata: {name: cp-1, labels: {node-role.kubernetes.io/control-plane: ''}}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status: {addresses: [{type: InternalIP, address: 10.0.9.2}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: control-plane}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
    - name: api
      action: Deny
      to: [{nodes: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]}}]
";
        let mut set = PolicySet::default();
        parse_into(Path::new("e.yaml"), &format!("{SET}{nodes}"), &mut set).unwrap();
        let out = explain(&set, "b/y", "10.0.9.1", Protocol::Tcp, 6443)
            .unwrap()
            .text;
        assert!(
            out.starts_with("from b/y (10.0.0.2) to node cp-1 (10.0.9.1), TCP port 6443"),
            "{out}"
        );
        assert!(out.contains("egress of b/y: DENIED by ClusterNetworkPolicy control-plane (Admin tier, priority 5) egress rule \"api\" (Deny) at e.yaml:51: 10.0.9.1 is an address of node cp-1, which its nodes peer {node-role.kubernetes.io/control-plane exists} selects"), "{out}");
        assert!(
            out.contains("ingress of node cp-1: not a workload of the inventory"),
            "{out}"
        );
        let out = explain(&set, "b/y", "10.0.9.2", Protocol::Tcp, 6443)
            .unwrap()
            .text;
        assert!(out.ends_with("verdict: allowed\n"), "{out}");
    }

    #[test]
    fn a_pass_is_named_beside_the_tier_that_decided() {
        let out = explained("a/x", "a/x");
        assert!(out.contains("traffic to itself"), "{out}");
        let mut set = PolicySet::default();
        let other = SET.replace("addresses: [10.0.0.2]", "addresses: [10.0.0.2]}\n---\napiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {name: z, namespace: a}\nspec: {cgroup: /z, addresses: [10.0.0.3]");
        parse_into(Path::new("e.yaml"), &other, &mut set).unwrap();
        let out = explain(&set, "a/x", "a/z", Protocol::Tcp, 80).unwrap().text;
        assert!(out.contains("egress of a/x: allowed, no NetworkPolicy selects it for egress and no ClusterNetworkPolicy rule decides (passed on by ClusterNetworkPolicy tenants (Admin tier, priority 10) egress rule \"same-tenant\" (Pass) at e.yaml:33)"), "{out}");
        assert!(out.ends_with("verdict: allowed\n"), "{out}");
    }
}
