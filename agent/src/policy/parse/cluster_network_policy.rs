//! ClusterNetworkPolicy documents (`policy.networking.k8s.io/v1alpha2`): tier, priority,
//! subject, and the ingress and egress rules with their action, peers and protocols,
//! checked as the API's schema checks them (its limits included: 25 rules per direction,
//! 25 peers and 25 protocols per rule, 25 CIDRs per networks peer, names of at most 100
//! characters), each error with its line and what was expected.

use serde_saphyr::Spanned;

use super::{
    parser::DocumentParser,
    raw::{
        RawDestinationPort, RawNamespacedPod, RawPeer, RawProtocol, RawRule, RawSpec, RawSubject,
    },
};
use crate::policy::model::{
    Action, ClusterNetworkPolicy, ClusterPeer, ClusterPort, ClusterRule, ClusterSelector,
    LabelSelector, Mode, PRIORITY_MAX, PRIORITY_MIN, Protocol, Tier,
};

/// The API's limits (its schema's maxItems and maxLength).
pub const MAX_CLUSTER_RULES: usize = 25;
pub const MAX_CLUSTER_PEERS: usize = 25;
pub const MAX_CLUSTER_PROTOCOLS: usize = 25;
pub const MAX_CLUSTER_NETWORKS: usize = 25;
pub const MAX_CLUSTER_DOMAINS: usize = 25;
pub const MAX_RULE_NAME: usize = 100;
/// A CIDR is at most this long (`isCIDR` strings in the API's schema).
const MAX_CIDR_TEXT: usize = 43;

const KIND: &str = "ClusterNetworkPolicy";

impl DocumentParser<'_> {
    pub(super) fn cluster_network_policy(
        &mut self,
        name: String,
        spec: Spanned<RawSpec>,
        mode: Option<Mode>,
        line: u32,
    ) -> Option<ClusterNetworkPolicy> {
        let spec_line = self.line(&spec);
        let spec = spec.value;
        if !self.only_fields(
            &spec,
            spec_line,
            KIND,
            &["tier", "priority", "subject", "ingress", "egress"],
        ) {
            return None;
        }
        let tier = match &spec.tier {
            None => {
                self.error(
                    spec_line,
                    format!("{KIND} spec has no tier; expected tier: Admin or Baseline"),
                );
                return None;
            }
            Some(t) => match t.value.as_str() {
                "Admin" => Tier::Admin,
                "Baseline" => Tier::Baseline,
                other => {
                    self.error(
                        self.line(t),
                        format!("tier {other:?} is invalid; expected Admin or Baseline"),
                    );
                    return None;
                }
            },
        };
        let priority = match &spec.priority {
            None => {
                self.error(spec_line, format!("{KIND} spec has no priority; expected a number from {PRIORITY_MIN} to {PRIORITY_MAX} (lower is read first)"));
                return None;
            }
            Some(p) if (PRIORITY_MIN as i64..=PRIORITY_MAX as i64).contains(&p.value) => {
                p.value as u16
            }
            Some(p) => {
                self.error(self.line(p), format!("priority {} is out of range; expected {PRIORITY_MIN} to {PRIORITY_MAX} (lower is read first)", p.value));
                return None;
            }
        };
        let Some(subject) = &spec.subject else {
            self.error(
                spec_line,
                format!("{KIND} spec has no subject; expected subject.namespaces or subject.pods"),
            );
            return None;
        };
        let subject = self.subject(subject)?;
        let ingress =
            self.cluster_rules(spec.ingress.as_deref().unwrap_or_default(), true, spec_line)?;
        let egress =
            self.cluster_rules(spec.egress.as_deref().unwrap_or_default(), false, spec_line)?;
        Some(ClusterNetworkPolicy {
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
            mode,
            origin: self.origin(line),
        })
    }

    fn subject(&mut self, raw: &Spanned<RawSubject>) -> Option<ClusterSelector> {
        let line = self.line(raw);
        match (&raw.value.namespaces, &raw.value.pods) {
            (Some(n), None) => Some(ClusterSelector::Namespaces(self.selector(n)?)),
            (None, Some(p)) => self.namespaced_pod(p),
            (None, None) => {
                self.error(
                    line,
                    "subject is empty; expected exactly one of namespaces or pods",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(
                    line,
                    "subject has both namespaces and pods; expected exactly one of them",
                );
                None
            }
        }
    }

    fn namespaced_pod(&mut self, raw: &Spanned<RawNamespacedPod>) -> Option<ClusterSelector> {
        let Some(pods) = &raw.value.pod_selector else {
            self.error(self.line(raw), "pods has no podSelector; expected podSelector ({} selects every workload) and, optionally, namespaceSelector");
            return None;
        };
        let pods = self.selector(pods)?;
        let namespaces = match &raw.value.namespace_selector {
            Some(n) => self.selector(n)?,
            None => LabelSelector::default(),
        };
        Some(ClusterSelector::Pods { namespaces, pods })
    }

    fn cluster_rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        ingress: bool,
        spec_line: u32,
    ) -> Option<Vec<ClusterRule>> {
        let direction = if ingress { "ingress" } else { "egress" };
        if raw.len() > MAX_CLUSTER_RULES {
            self.error(
                spec_line,
                format!(
                    "{KIND} has {} {direction} rules; expected at most {MAX_CLUSTER_RULES}",
                    raw.len()
                ),
            );
            return None;
        }
        raw.iter().map(|r| self.cluster_rule(r, ingress)).collect()
    }

    fn cluster_rule(&mut self, raw: &Spanned<RawRule>, ingress: bool) -> Option<ClusterRule> {
        let line = self.line(raw);
        let r = &raw.value;
        let (direction, field, wrong) = if ingress {
            ("ingress", "from", "to")
        } else {
            ("egress", "to", "from")
        };
        let (peers, wrong_peers) = if ingress {
            (&r.from, &r.to)
        } else {
            (&r.to, &r.from)
        };
        if r.ports.is_some() {
            self.error(line, format!("{KIND} rule has 'ports'; expected 'protocols' (e.g. - tcp: {{destinationPort: {{number: 443}}}})"));
            return None;
        }
        if wrong_peers.is_some() {
            self.error(
                line,
                format!("{direction} rule has '{wrong}'; expected '{field}'"),
            );
            return None;
        }
        let name = match &r.name {
            Some(n) if n.value.chars().count() > MAX_RULE_NAME => {
                self.error(
                    self.line(n),
                    format!(
                        "rule name is {} characters long; expected at most {MAX_RULE_NAME}",
                        n.value.chars().count()
                    ),
                );
                return None;
            }
            Some(n) => Some(n.value.clone()),
            None => None,
        };
        let action = match &r.action {
            None => {
                self.error(
                    line,
                    format!(
                        "{direction} rule has no action; expected action: Accept, Deny or Pass"
                    ),
                );
                return None;
            }
            Some(a) => match a.value.as_str() {
                "Accept" => Action::Accept,
                "Deny" => Action::Deny,
                "Pass" => Action::Pass,
                other => {
                    self.error(
                        self.line(a),
                        format!("action {other:?} is invalid; expected Accept, Deny or Pass"),
                    );
                    return None;
                }
            },
        };
        let raw_peers = peers.as_deref().unwrap_or_default();
        if raw_peers.is_empty() {
            self.error(line, format!("{direction} rule has no '{field}' peers; expected from 1 to {MAX_CLUSTER_PEERS}"));
            return None;
        }
        if raw_peers.len() > MAX_CLUSTER_PEERS {
            self.error(
                line,
                format!(
                    "{direction} rule has {} '{field}' peers; expected at most {MAX_CLUSTER_PEERS}",
                    raw_peers.len()
                ),
            );
            return None;
        }
        let peers = raw_peers
            .iter()
            .map(|p| self.cluster_peer(p, ingress))
            .collect::<Option<Vec<_>>>()?;
        let raw_protocols = r.protocols.as_deref().unwrap_or_default();
        if r.protocols.is_some() && !(1..=MAX_CLUSTER_PROTOCOLS).contains(&raw_protocols.len()) {
            self.error(line, format!("rule has {} protocols; expected from 1 to {MAX_CLUSTER_PROTOCOLS} (leave protocols out for every protocol and port)", raw_protocols.len()));
            return None;
        }
        let protocols = raw_protocols
            .iter()
            .map(|p| self.cluster_port(p))
            .collect::<Option<Vec<_>>>()?;
        // The API's rule: a named port is a workload's; networks, nodes and names have
        // none.
        if protocols.iter().any(|p| matches!(p, ClusterPort::Named(_)))
            && let Some(peer) = peers.iter().find_map(|p| match p {
                ClusterPeer::Networks(_) => Some("networks"),
                ClusterPeer::Nodes(_) => Some("nodes"),
                ClusterPeer::Domains(_) => Some("domainNames"),
                ClusterPeer::Workloads(_) => None,
            })
        {
            self.error(line, format!("rule has a {peer} peer and a destinationNamedPort; expected numbered ports with {peer}, which have no named ports"));
            return None;
        }
        // The API's rule ("DomainNames is only supported for Accept rules"): a name
        // learnt from DNS may let a connection through, never be the reason to refuse
        // or pass one (the address behind it is what those rules name).
        if action != Action::Accept && peers.iter().any(|p| matches!(p, ClusterPeer::Domains(_))) {
            self.error(line, format!("{direction} rule with action {action} has a domainNames peer; expected action Accept, the only action domainNames supports"));
            return None;
        }
        Some(ClusterRule {
            name,
            action,
            peers,
            protocols,
            line,
        })
    }

    fn cluster_peer(&mut self, raw: &Spanned<RawPeer>, ingress: bool) -> Option<ClusterPeer> {
        let line = self.line(raw);
        let p = &raw.value;
        let expected = if ingress {
            "exactly one of namespaces or pods"
        } else {
            "exactly one of namespaces, pods, networks, nodes or domainNames"
        };
        let foreign = p.network_policy_fields();
        if !foreign.is_empty() {
            self.error(
                line,
                format!(
                    "{KIND} peer has {}, which belong to a NetworkPolicy peer; expected {expected}",
                    foreign.join(", ")
                ),
            );
            return None;
        }
        let fields = p.cluster_fields();
        if fields.len() != 1 {
            let found = if fields.is_empty() {
                "peer is empty".to_string()
            } else {
                format!("peer has {}", fields.join(" and "))
            };
            self.error(line, format!("{found}; expected {expected}"));
            return None;
        }
        if ingress && (p.networks.is_some() || p.nodes.is_some() || p.domain_names.is_some()) {
            self.error(
                line,
                format!(
                    "{} is an egress peer; expected namespaces or pods in an ingress rule",
                    fields[0]
                ),
            );
            return None;
        }
        if let Some(names) = &p.domain_names {
            if !(1..=MAX_CLUSTER_DOMAINS).contains(&names.len()) {
                self.error(
                    line,
                    format!(
                        "domainNames has {} names; expected from 1 to {MAX_CLUSTER_DOMAINS}",
                        names.len()
                    ),
                );
                return None;
            }
            let patterns = names
                .iter()
                .map(|n| self.domain(n, "domainNames"))
                .collect::<Option<Vec<_>>>()?;
            return Some(ClusterPeer::Domains(patterns));
        }
        if let Some(n) = &p.nodes {
            return Some(ClusterPeer::Nodes(self.selector(n)?));
        }
        if let Some(n) = &p.namespaces {
            return Some(ClusterPeer::Workloads(ClusterSelector::Namespaces(
                self.selector(n)?,
            )));
        }
        if let Some(pods) = &p.pods {
            return Some(ClusterPeer::Workloads(self.namespaced_pod(pods)?));
        }
        let networks = p.networks.as_deref().unwrap_or_default();
        if !(1..=MAX_CLUSTER_NETWORKS).contains(&networks.len()) {
            self.error(
                line,
                format!(
                    "networks has {} CIDRs; expected from 1 to {MAX_CLUSTER_NETWORKS}",
                    networks.len()
                ),
            );
            return None;
        }
        let mut cidrs = Vec::new();
        for n in networks {
            if n.value.len() > MAX_CIDR_TEXT {
                self.error(
                    self.line(n),
                    format!(
                        "CIDR {:?} is {} characters long; expected at most {MAX_CIDR_TEXT}",
                        n.value,
                        n.value.len()
                    ),
                );
                return None;
            }
            cidrs.push(self.cidr(n)?);
        }
        Some(ClusterPeer::Networks(cidrs))
    }

    fn cluster_port(&mut self, raw: &Spanned<RawProtocol>) -> Option<ClusterPort> {
        let line = self.line(raw);
        let p = &raw.value;
        let numbered = [
            ("tcp", Protocol::Tcp, &p.tcp),
            ("udp", Protocol::Udp, &p.udp),
            ("sctp", Protocol::Sctp, &p.sctp),
        ];
        let mut given: Vec<&str> = numbered
            .iter()
            .filter(|(_, _, ports)| ports.is_some())
            .map(|(field, _, _)| *field)
            .collect();
        if p.destination_named_port.is_some() {
            given.push("destinationNamedPort");
        }
        let expected = "exactly one of tcp, udp, sctp or destinationNamedPort";
        if given.len() != 1 {
            let found = if given.is_empty() {
                "protocols entry is empty".to_string()
            } else {
                format!("protocols entry has {}", given.join(" and "))
            };
            self.error(
                line,
                format!("{found}; expected {expected} (one entry each)"),
            );
            return None;
        }
        if let Some(name) = &p.destination_named_port {
            return Some(ClusterPort::Named(
                self.port_name(&name.value, self.line(name))?,
            ));
        }
        let (field, protocol, ports) = numbered
            .into_iter()
            .find_map(|(field, protocol, ports)| Some((field, protocol, ports.as_ref()?)))?;
        let Some(port) = &ports.value.destination_port else {
            self.error(self.line(ports), format!("{field} has no destinationPort; expected destinationPort: {{number: N}} or {{range: {{start: A, end: B}}}} (leave protocols out for every port)"));
            return None;
        };
        let (first, last) = self.destination_port(port)?;
        Some(ClusterPort::Ports {
            protocol,
            first,
            last,
        })
    }

    fn destination_port(&mut self, raw: &Spanned<RawDestinationPort>) -> Option<(u16, u16)> {
        let line = self.line(raw);
        match (&raw.value.number, &raw.value.range) {
            (Some(n), None) => {
                let n = self.port_number(n.value, self.line(n), "destinationPort number")?;
                Some((n, n))
            }
            (None, Some(range)) => {
                let range_line = self.line(range);
                let (Some(start), Some(end)) = (&range.value.start, &range.value.end) else {
                    self.error(
                        range_line,
                        "range needs start and end; expected {start: A, end: B} with A < B",
                    );
                    return None;
                };
                let first = self.port_number(start.value, self.line(start), "range start")?;
                let last = self.port_number(end.value, self.line(end), "range end")?;
                if first >= last {
                    self.error(range_line, format!("range start {first} is not below end {last}; expected start < end (use number for one port)"));
                    return None;
                }
                Some((first, last))
            }
            (None, None) => {
                self.error(
                    line,
                    "destinationPort is empty; expected exactly one of number or range",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(
                    line,
                    "destinationPort has both number and range; expected exactly one of them",
                );
                None
            }
        }
    }
}
