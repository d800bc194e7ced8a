//! `stagewall check --explain --from W --to pypi.org --port P`: when the destination is a
//! domain name, not an address, which rules allow that name for the workload's egress
//! and on which ports: what the addresses its DNS answers give would be allowed for.
//! Read off the model in the order policy::tiers reads it, then decided for one address
//! no address rule singles out (policy::tiers::decide_named), since the address behind a
//! name can still meet a rule by address first.

use std::{fmt::Write as _, net::IpAddr};

use super::{
    explain::{ExplainError, ExplainedVerdict, Explanation, Party, party},
    model::{
        ClusterPeer, ClusterPort, Direction, DomainPattern, Peer, PolicySet, PortMatch, PortSpec,
        Protocol, Tier, Workload,
    },
    semantics::Side,
    tiers::{self, DecidedBy},
};

/// Whether `to` names a domain (an exact name, as DNS asks for it) rather than an
/// address or a workload.
pub fn is_name(to: &str) -> bool {
    to.parse::<IpAddr>().is_err()
        && !to.contains('/')
        && DomainPattern::parse(to).is_ok_and(|p| !p.is_wildcard())
}

/// Addresses to decide the name's verdict for: documentation and shared ranges, which
/// policies seldom name; the first that no prefix of a rule (other than a /0), workload
/// or node holds stands for "an address only the name singles out".
const PROBES: [&str; 5] = [
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "100.64.0.1",
    "2001:db8::1",
];

/// The answer: the rules that allow `name` for `from`'s egress, tier by tier, and the
/// verdict for `protocol` `port` to an address DNS gave for it.
pub fn explain_name(
    set: &PolicySet,
    from: &str,
    name: &str,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let Party::Workload(w) = party(set, from)? else {
        return Err(ExplainError::NameNeedsWorkload(from.to_string()));
    };
    let mut out = String::new();
    writeln!(
        out,
        "from {} to the name {name} (the addresses its DNS answers give), {} port {port}",
        w.name,
        protocol.name()
    )?;
    let mut found = 0;
    for tier in [Tier::Admin, Tier::Baseline] {
        if tier == Tier::Baseline {
            found += network_policy_lines(set, w, name, &mut out)?;
        }
        for p in tiers::ordered(set, tier) {
            if !set.cluster_policies_of(w, Direction::Egress).contains(&p) {
                continue;
            }
            for (index, rule) in p.egress.iter().enumerate() {
                let patterns = rule.peers.iter().flat_map(|peer| match peer {
                    ClusterPeer::Domains(ds) => ds.as_slice(),
                    _ => &[],
                });
                let Some(pattern) = patterns.into_iter().find(|d| d.matches(name)) else {
                    continue;
                };
                found += 1;
                let rule_name = rule
                    .name
                    .as_ref()
                    .map_or_else(|| format!("#{}", index + 1), |n| format!("{n:?}"));
                let audit = if p.mode == Some(super::model::Mode::Audit) {
                    " (audit: reports only)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "  {tier} tier: ClusterNetworkPolicy {} (priority {}) egress rule {rule_name} ({}) at {}:{}{audit} allows {pattern} on {}",
                    p.name,
                    p.priority,
                    rule.action,
                    p.origin.file.display(),
                    rule.line,
                    cluster_ports(&rule.protocols)
                )?;
            }
        }
    }
    if found == 0 {
        writeln!(out, "  no rule that holds {} names {name}", w.name)?;
    }
    let Some(remote) = PROBES
        .iter()
        .map(|a| a.parse::<IpAddr>().expect("valid probe"))
        .find(|a| !singled_out(set, *a))
    else {
        return Ok(Explanation {
            text: out,
            verdict: None,
        });
    };
    let names = [name.to_string()];
    let decision = tiers::decide_named(
        set,
        w,
        Direction::Egress,
        remote,
        protocol.number(),
        port,
        &names,
    );
    let by = match &decision.by {
        DecidedBy::SelfTraffic => "traffic to itself".to_string(),
        DecidedBy::Default => "no rule decides".to_string(),
        DecidedBy::Cluster(r) => format!(
            "ClusterNetworkPolicy {} egress rule {} ({})",
            r.policy.name,
            r.name(),
            r.action()
        ),
        DecidedBy::NetworkPolicy(Side::Allowed { policy, rule, .. }) => {
            format!("{} egress rule {}", policy.name, rule + 1)
        }
        DecidedBy::NetworkPolicy(Side::Denied { .. }) => {
            "its NetworkPolicies, which isolate it and allow no such name or address".to_string()
        }
        DecidedBy::NetworkPolicy(_) => "no NetworkPolicy isolates it".to_string(),
    };
    let verdict = ExplainedVerdict::of(decision.allowed());
    writeln!(
        out,
        "verdict: {} ({by}), for an address DNS gave for {name} that no address rule names (such as {remote}); an address rule read first still decides for its addresses",
        verdict.word()
    )?;
    Ok(Explanation {
        text: out,
        verdict: Some(verdict),
    })
}

/// The NetworkPolicy tier's lines: the egress rules of the policies that isolate `w`
/// whose fqdn peer matches `name`. Returns how many.
fn network_policy_lines(
    set: &PolicySet,
    w: &Workload,
    name: &str,
    out: &mut String,
) -> Result<usize, ExplainError> {
    let mut found = 0;
    for p in set.isolating(w, Direction::Egress) {
        for (index, rule) in p.egress.iter().enumerate() {
            let pattern = rule.peers.iter().find_map(|peer| match peer {
                Peer::Domain(d) if d.matches(name) => Some(d),
                _ => None,
            });
            if let Some(pattern) = pattern {
                found += 1;
                writeln!(
                    out,
                    "  NetworkPolicy tier: {} egress rule {} at {}:{} allows {pattern} on {}",
                    p.name,
                    index + 1,
                    p.origin.file.display(),
                    rule.line,
                    ports(&rule.ports)
                )?;
            }
        }
    }
    Ok(found)
}

/// Does a rule's prefix (other than a /0), a workload or a node hold `addr`?
fn singled_out(set: &PolicySet, addr: IpAddr) -> bool {
    let in_rules = set
        .policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.peers)
        .any(|peer| matches!(peer, Peer::IpBlock { cidr, .. } if cidr.prefix_len() > 0 && cidr.contains(&addr)));
    let in_cluster = set
        .cluster_policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress))
        .flat_map(|r| &r.peers)
        .any(|peer| match peer {
            ClusterPeer::Networks(cidrs) => cidrs
                .iter()
                .any(|c| c.prefix_len() > 0 && c.contains(&addr)),
            _ => false,
        });
    in_rules
        || in_cluster
        || set.workloads.iter().any(|w| w.addresses.contains(&addr))
        || set.nodes.iter().any(|n| n.addresses.contains(&addr))
        || set.node_addresses.contains(&addr)
}

fn ports(specs: &[PortSpec]) -> String {
    if specs.is_empty() {
        return "any protocol and port".to_string();
    }
    specs
        .iter()
        .map(|p| match &p.port {
            PortMatch::All => format!("{} any port", p.protocol.name()),
            PortMatch::Range(lo, hi) if lo == hi => format!("{} {lo}", p.protocol.name()),
            PortMatch::Range(lo, hi) => format!("{} {lo}-{hi}", p.protocol.name()),
            // A name has no named ports: such a port never matches it.
            PortMatch::Named(n) => {
                format!("{} port named {n} (never, for a name)", p.protocol.name())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cluster_ports(protocols: &[ClusterPort]) -> String {
    if protocols.is_empty() {
        return "any protocol and port".to_string();
    }
    protocols
        .iter()
        .map(|p| match p {
            ClusterPort::Ports {
                protocol,
                first,
                last,
            } if first == last => format!("{} {first}", protocol.name()),
            ClusterPort::Ports {
                protocol,
                first,
                last,
            } => format!("{} {first}-{last}", protocol.name()),
            ClusterPort::Named(n) => format!("port named {n} (never, for a name)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse::parse_into;

    const SET: &str = "apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: x, namespace: a}
spec: {cgroup: /x, addresses: [10.0.0.1]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-dns, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - ports: [{protocol: UDP, port: 53}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: registries}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
    - {name: metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
    - {name: python, action: Accept, to: [{domainNames: ['*.pythonhosted.org', pypi.org]}], protocols: [{tcp: {destinationPort: {number: 443}}}]}
";

    #[test]
    fn a_name_is_explained_by_the_rules_that_allow_it_and_their_ports() {
        assert!(is_name("pypi.org") && is_name("PyPI.org."));
        assert!(!is_name("10.0.0.1") && !is_name("a/x") && !is_name("*.pypi.org"));
        let mut set = PolicySet::default();
        parse_into(Path::new("e.yaml"), SET, &mut set).unwrap();
        let out = explain_name(&set, "a/x", "files.pythonhosted.org", Protocol::Tcp, 443)
            .unwrap()
            .text;
        assert!(
            out.starts_with("from a/x to the name files.pythonhosted.org"),
            "{out}"
        );
        assert!(out.contains("Admin tier: ClusterNetworkPolicy registries (priority 10) egress rule \"python\" (Accept) at e.yaml:24 allows *.pythonhosted.org on TCP 443"), "{out}");
        assert!(
            out.contains(
                "verdict: allowed (ClusterNetworkPolicy registries egress rule \"python\" (Accept))"
            ),
            "{out}"
        );
        // Another port: the NetworkPolicy that isolates x decides.
        let out = explain_name(&set, "a/x", "pypi.org", Protocol::Tcp, 80)
            .unwrap()
            .text;
        assert!(out.contains("verdict: denied"), "{out}");
        let out = explain_name(&set, "a/x", "example.org", Protocol::Tcp, 443)
            .unwrap()
            .text;
        assert!(
            out.contains("no rule that holds a/x names example.org"),
            "{out}"
        );
        assert!(explain_name(&set, "10.9.9.9", "pypi.org", Protocol::Tcp, 443).is_err());
    }
}
