//! NetworkPolicy documents: the spec, its ingress and egress rules, and their peers
//! (selectors or ipBlocks) and ports, which Pipeline flows reuse.

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::{
    parser::DocumentParser,
    raw::{IntOrString, RawIpBlock, RawPeer, RawPort, RawRule, RawSpec},
};
use crate::policy::model::{
    Mode, NetworkPolicy, ObjectName, Peer, PortMatch, PortSpec, Protocol, Rule,
};

/// Per-object limits: one object never costs a node more than a share of its kernel maps
/// and of the agent's memory, whatever else the cluster holds. Each is far beyond what
/// people write (16,000 ipBlocks is a 0.9 MB object).
/// ipBlock peers in one NetworkPolicy.
pub const MAX_IP_BLOCKS_PER_OBJECT: usize = 20_000;
/// Distinct CIDRs (blocks and their exceptions) in one NetworkPolicy.
pub const MAX_CIDRS_PER_OBJECT: usize = 50_000;
/// Peers times port entries of one rule (each peer may allow each port: that many policy
/// entries at least).
pub const MAX_PEERS_TIMES_PORTS_PER_RULE: usize = 100_000;

impl DocumentParser<'_> {
    pub(super) fn network_policy(
        &mut self,
        name: ObjectName,
        spec: Spanned<RawSpec>,
        mode: Option<Mode>,
        line: u32,
    ) -> Option<NetworkPolicy> {
        let spec_line = self.line(&spec);
        let spec = spec.value;
        if !self.only_fields(
            &spec,
            spec_line,
            "NetworkPolicy",
            &["podSelector", "policyTypes", "ingress", "egress"],
        ) {
            return None;
        }
        let Some(pod_selector) = &spec.pod_selector else {
            self.error(spec_line, "NetworkPolicy spec has no podSelector; expected podSelector ({} selects every workload of the namespace)");
            return None;
        };
        let pod_selector = self.selector(pod_selector)?;
        let ingress = self.rules(spec.ingress.as_deref().unwrap_or_default(), true)?;
        let egress = self.rules(spec.egress.as_deref().unwrap_or_default(), false)?;
        let blocks = || {
            ingress
                .iter()
                .chain(&egress)
                .flat_map(|r| &r.peers)
                .filter_map(|p| match p {
                    Peer::IpBlock { cidr, except } => Some((cidr, except)),
                    Peer::Workloads { .. } | Peer::Domain(_) => None,
                })
        };
        let ip_blocks = blocks().count();
        if ip_blocks > MAX_IP_BLOCKS_PER_OBJECT {
            self.error(
                spec_line,
                format!("NetworkPolicy has {ip_blocks} ipBlock peers; expected at most {MAX_IP_BLOCKS_PER_OBJECT} in one object (use wider blocks, or split it)"),
            );
            return None;
        }
        let cidrs: std::collections::BTreeSet<&IpNet> = blocks()
            .flat_map(|(cidr, except)| std::iter::once(cidr).chain(except))
            .collect();
        if cidrs.len() > MAX_CIDRS_PER_OBJECT {
            self.error(
                spec_line,
                format!("NetworkPolicy names {} distinct CIDRs (ipBlocks and their exceptions); expected at most {MAX_CIDRS_PER_OBJECT} in one object", cidrs.len()),
            );
            return None;
        }
        let (ingress_isolates, egress_isolates) = match &spec.policy_types {
            Some(types) => {
                let mut ingress = false;
                let mut egress = false;
                for t in types {
                    match t.value.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => {
                            self.error(
                                self.line(t),
                                format!("unknown policyType {other:?}; expected Ingress or Egress"),
                            );
                            return None;
                        }
                    }
                }
                (ingress, egress)
            }
            // Kubernetes: Ingress always; Egress when the policy has an egress section.
            None => (true, spec.egress.is_some()),
        };
        Some(NetworkPolicy {
            name,
            pod_selector,
            ingress_isolates,
            egress_isolates,
            ingress,
            egress,
            mode,
            origin: self.origin(line),
        })
    }

    pub(super) fn rules(&mut self, raw: &[Spanned<RawRule>], ingress: bool) -> Option<Vec<Rule>> {
        let mut rules = Vec::new();
        for r in raw {
            let line = self.line(r);
            let (peers, wrong) = if ingress {
                (&r.value.from, &r.value.to)
            } else {
                (&r.value.to, &r.value.from)
            };
            if wrong.is_some() {
                let (field, expected) = if ingress {
                    ("to", "from")
                } else {
                    ("from", "to")
                };
                self.error(
                    line,
                    format!(
                        "{} rule has '{field}'; expected '{expected}'",
                        if ingress { "ingress" } else { "egress" }
                    ),
                );
                return None;
            }
            let foreign = r.value.cluster_fields();
            if !foreign.is_empty() {
                self.error(
                    line,
                    format!(
                        "NetworkPolicy rule has {}, which belong to a ClusterNetworkPolicy rule; expected '{}' and 'ports'",
                        foreign.join(", "),
                        if ingress { "from" } else { "to" }
                    ),
                );
                return None;
            }
            let mut rule = Rule {
                line,
                ..Rule::default()
            };
            for p in peers.iter().flatten() {
                if ingress && p.value.fqdn.is_some() {
                    let line = self.line(p);
                    self.error(line, "fqdn can only be an egress peer (to); expected podSelector, namespaceSelector or ipBlock in from");
                    return None;
                }
                rule.peers.push(self.peer(p)?);
            }
            for p in r.value.ports.iter().flatten() {
                rule.ports.push(self.port(p)?);
            }
            let cost = rule.peers.len().max(1) * rule.ports.len().max(1);
            if cost > MAX_PEERS_TIMES_PORTS_PER_RULE {
                self.error(
                    line,
                    format!(
                        "rule has {} peers and {} ports ({cost} combinations); expected at most {MAX_PEERS_TIMES_PORTS_PER_RULE} (use port ranges or wider peers, or split the rule)",
                        rule.peers.len(),
                        rule.ports.len()
                    ),
                );
                return None;
            }
            rules.push(rule);
        }
        Some(rules)
    }

    pub(super) fn peer(&mut self, raw: &Spanned<RawPeer>) -> Option<Peer> {
        let line = self.line(raw);
        let p = &raw.value;
        let foreign = p.cluster_fields();
        if !foreign.is_empty() {
            self.error(line, format!("peer has {}, which belong to a ClusterNetworkPolicy peer; expected podSelector, namespaceSelector or ipBlock", foreign.join(", ")));
            return None;
        }
        if let Some(name) = &p.fqdn {
            if p.ip_block.is_some() || p.pod_selector.is_some() || p.namespace_selector.is_some() {
                self.error(
                    line,
                    "peer has fqdn together with ipBlock or a selector; expected fqdn alone",
                );
                return None;
            }
            return self.domain(name, "fqdn").map(Peer::Domain);
        }
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (Some(block), None, None) => self.ip_block(block),
            (Some(_), _, _) => {
                self.error(line, "peer has ipBlock together with a selector; expected either ipBlock or podSelector/namespaceSelector");
                None
            }
            (None, None, None) => {
                self.error(
                    line,
                    "peer is empty; expected podSelector, namespaceSelector or ipBlock",
                );
                None
            }
            (None, pods, namespaces) => {
                let pod_selector = match pods {
                    Some(s) => Some(self.selector(s)?),
                    None => None,
                };
                let namespace_selector = match namespaces {
                    Some(s) => Some(self.selector(s)?),
                    None => None,
                };
                Some(Peer::Workloads {
                    namespace_selector,
                    pod_selector,
                })
            }
        }
    }

    pub(super) fn ip_block(&mut self, raw: &Spanned<RawIpBlock>) -> Option<Peer> {
        let cidr = self.cidr(&raw.value.cidr)?;
        let mut except = Vec::new();
        for e in raw.value.except.iter().flatten() {
            let net = self.cidr(e)?;
            let inside = match (cidr, net) {
                (IpNet::V4(c), IpNet::V4(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                (IpNet::V6(c), IpNet::V6(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                _ => false,
            };
            if !inside {
                self.error(self.line(e), format!("except {net} is not strictly inside cidr {cidr}; expected a smaller block of the same family within it"));
                return None;
            }
            except.push(net);
        }
        Some(Peer::IpBlock { cidr, except })
    }

    pub(super) fn cidr(&mut self, raw: &Spanned<String>) -> Option<IpNet> {
        match raw.value.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(self.line(raw), format!("invalid CIDR {:?}; expected an address and a prefix length such as 10.0.0.0/8 or fd00::/64", raw.value));
                None
            }
        }
    }

    pub(super) fn protocol(
        &mut self,
        raw: Option<&Spanned<String>>,
        line: u32,
    ) -> Option<Protocol> {
        match raw.map(|s| s.value.as_str()) {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(other) => {
                self.error(
                    line,
                    format!("unknown protocol {other:?}; expected TCP, UDP or SCTP"),
                );
                None
            }
        }
    }

    pub(super) fn port_number(&mut self, n: i64, line: u32, field: &str) -> Option<u16> {
        if (1..=65535).contains(&n) {
            Some(n as u16)
        } else {
            self.error(
                line,
                format!("{field} {n} is out of range; expected 1 to 65535"),
            );
            None
        }
    }

    pub(super) fn port_name(&mut self, name: &str, line: u32) -> Option<String> {
        // Kubernetes' IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', with a
        // letter, no '-' at either end or twice in a row.
        let valid = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.chars().any(|c| c.is_ascii_lowercase())
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !valid {
            self.error(line, format!("port name {name:?} is invalid; expected at most 15 lowercase letters, digits and '-', with at least one letter"));
            return None;
        }
        Some(name.to_string())
    }

    pub(super) fn port(&mut self, raw: &Spanned<RawPort>) -> Option<PortSpec> {
        let line = self.line(raw);
        let p = &raw.value;
        let protocol = self.protocol(p.protocol.as_ref(), line)?;
        let port = match (&p.port, &p.end_port) {
            (None, None) => PortMatch::All,
            (None, Some(e)) => {
                self.error(
                    self.line(e),
                    "endPort without port; expected port to be set with endPort",
                );
                return None;
            }
            (Some(s), end) => match (&s.value, end) {
                (IntOrString::Int(n), None) => {
                    let n = self.port_number(*n, self.line(s), "port")?;
                    PortMatch::Range(n, n)
                }
                (IntOrString::Int(n), Some(e)) => {
                    let n = self.port_number(*n, self.line(s), "port")?;
                    if e.value < n as i64 || e.value > 65535 {
                        self.error(
                            self.line(e),
                            format!(
                                "endPort {} is invalid; expected a number from port ({n}) to 65535",
                                e.value
                            ),
                        );
                        return None;
                    }
                    PortMatch::Range(n, e.value as u16)
                }
                (IntOrString::String(name), None) => {
                    PortMatch::Named(self.port_name(name, self.line(s))?)
                }
                (IntOrString::String(name), Some(e)) => {
                    self.error(
                        self.line(e),
                        format!("endPort with the named port {name:?}; expected a numeric port with endPort"),
                    );
                    return None;
                }
            },
        };
        Some(PortSpec { protocol, port })
    }
}
