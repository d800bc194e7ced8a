//! `stagewall advise`: least-privilege NetworkPolicies learnt from flow records. For each
//! group of local workloads with the same labels, one policy that allows exactly the
//! traffic they were seen to have (allowed, or would-be denied in audit mode): peers by
//! labels where the inventory knows them as workloads, by address (/32, /128) otherwise,
//! destination ports as seen. Flows that were dropped in enforce mode never happened and
//! are not allowed.
//!
//! A direction is isolated only where it was recorded (the records say which workloads'
//! directions the recording covered): a covered direction without a record had no
//! traffic and gets no rule, a direction not covered is left alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    events::IpProtocol,
    policy::{
        model::{Direction, Labels, PolicySet, Protocol},
        semantics,
    },
    rollout::flow_records::RecordsFile,
};

/// The other end of an advised rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AdvisedPeer {
    /// Workloads with these labels in this namespace.
    Workloads {
        namespace: String,
        labels: Labels,
    },
    Address(IpAddr),
}

/// What one advised rule allows of a peer.
#[derive(Default)]
struct Allowed {
    /// (protocol, port) seen.
    ports: BTreeSet<(Protocol, u16)>,
    /// Traffic of a protocol NetworkPolicy ports cannot name (ICMP, say): only a rule
    /// without ports allows it, which allows every protocol of the peer.
    portless: BTreeSet<IpProtocol>,
}

/// One advised policy: the workloads with one label set, and their rules.
#[derive(Default)]
struct Advice {
    workloads: BTreeSet<String>,
    records: usize,
    ingress: Option<BTreeMap<AdvisedPeer, Allowed>>,
    egress: Option<BTreeMap<AdvisedPeer, Allowed>>,
}

impl Advice {
    /// The rules of a direction: recorded, so isolated.
    fn rules(&mut self, direction: Direction) -> &mut BTreeMap<AdvisedPeer, Allowed> {
        match direction {
            Direction::Ingress => self.ingress.get_or_insert_default(),
            Direction::Egress => self.egress.get_or_insert_default(),
        }
    }
}

/// The advice of a workload's label group, with the workload in it; None for a workload
/// the inventory lacks (noted in `unknown`).
fn advice_of<'a>(
    groups: &'a mut BTreeMap<(String, Labels), Advice>,
    unknown: &mut BTreeSet<String>,
    inventory: &PolicySet,
    workload: &str,
) -> Option<&'a mut Advice> {
    let Some(w) = inventory.workload(workload) else {
        unknown.insert(workload.to_string());
        return None;
    };
    let advice = groups
        .entry((w.name.namespace.clone(), w.labels.clone()))
        .or_default();
    advice.workloads.insert(workload.to_string());
    Some(advice)
}

/// The advised policies as YAML documents, for the workloads of `inventory` (a policy
/// directory's Workload documents) that the records cover.
/// Fails only if writing to a String does (never, in practice).
pub fn advise(records: &RecordsFile, inventory: &PolicySet) -> Result<String, std::fmt::Error> {
    let mut groups: BTreeMap<(String, Labels), Advice> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for covered in &records.covered {
        if let Some(advice) = advice_of(&mut groups, &mut unknown, inventory, &covered.workload) {
            advice.rules(covered.direction);
        }
    }
    for r in records.records.iter().filter(|r| r.passed()) {
        let Some(advice) = advice_of(&mut groups, &mut unknown, inventory, &r.key.workload) else {
            continue;
        };
        advice.records += 1;
        let rules = advice.rules(r.key.direction);
        let allowed = rules
            .entry(peer(inventory, r.key.peer_address))
            .or_default();
        match (port_protocol(r.key.protocol), r.key.port) {
            (Some(p), Some(port)) => {
                allowed.ports.insert((p, port));
            }
            _ => {
                allowed.portless.insert(r.key.protocol);
            }
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "# Least-privilege NetworkPolicies advised by stagewall from {} flow records.",
        records.records.len()
    )?;
    for name in &unknown {
        writeln!(
            out,
            "# {name}: in the records but not in the inventory; no policy advised"
        )?;
    }
    let mut names = BTreeSet::new();
    for ((namespace, labels), advice) in &groups {
        if labels.is_empty() {
            writeln!(
                out,
                "# {}: no labels to select by; no policy advised",
                join(&advice.workloads)
            )?;
            continue;
        }
        let first = advice
            .workloads
            .iter()
            .next()
            .expect("a group has workloads");
        let base = format!("advised-{}", first.rsplit('/').next().unwrap_or(first));
        let mut name = base.clone();
        for n in 2.. {
            if names.insert((namespace.clone(), name.clone())) {
                break;
            }
            name = format!("{base}-{n}");
        }
        write_policy(&mut out, &name, namespace, labels, advice)?;
    }
    Ok(out)
}

/// The NetworkPolicy protocols; others have no ports in a policy.
fn port_protocol(protocol: IpProtocol) -> Option<Protocol> {
    let number = protocol.number()?;
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.number() == number)
}

fn peer(inventory: &PolicySet, addr: IpAddr) -> AdvisedPeer {
    match semantics::owner(inventory, addr) {
        Some(w) if !w.labels.is_empty() => AdvisedPeer::Workloads {
            namespace: w.name.namespace.clone(),
            labels: w.labels.clone(),
        },
        _ => AdvisedPeer::Address(addr),
    }
}

fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// `{"k": "v", ...}`: label keys and values are validated names, quoted all the same.
fn flow_map(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn write_policy(
    out: &mut String,
    name: &str,
    namespace: &str,
    labels: &Labels,
    advice: &Advice,
) -> std::fmt::Result {
    writeln!(out, "---")?;
    writeln!(
        out,
        "# For {} ({} flow records).",
        join(&advice.workloads),
        advice.records
    )?;
    writeln!(out, "apiVersion: networking.k8s.io/v1")?;
    writeln!(out, "kind: NetworkPolicy")?;
    writeln!(out, "metadata:")?;
    writeln!(out, "  name: {name}")?;
    writeln!(out, "  namespace: {namespace}")?;
    writeln!(out, "spec:")?;
    writeln!(out, "  podSelector: {{matchLabels: {}}}", flow_map(labels))?;
    let mut types = Vec::new();
    if advice.ingress.is_some() {
        types.push("Ingress");
    }
    if advice.egress.is_some() {
        types.push("Egress");
    }
    writeln!(out, "  policyTypes: [{}]", types.join(", "))?;
    for (section, peer_key, rules) in [
        ("ingress", "from", &advice.ingress),
        ("egress", "to", &advice.egress),
    ] {
        let Some(rules) = rules else { continue };
        if rules.is_empty() {
            writeln!(out, "  # No {section} traffic was seen: none is allowed.")?;
            writeln!(out, "  {section}: []")?;
            continue;
        }
        writeln!(out, "  {section}:")?;
        for (peer, allowed) in rules {
            writeln!(out, "    - {peer_key}:")?;
            match peer {
                AdvisedPeer::Workloads {
                    namespace: peer_ns,
                    labels,
                } if peer_ns == namespace => writeln!(
                    out,
                    "        - podSelector: {{matchLabels: {}}}",
                    flow_map(labels)
                )?,
                AdvisedPeer::Workloads {
                    namespace: peer_ns,
                    labels,
                } => {
                    let ns = Labels::from([(
                        crate::policy::model::NAMESPACE_NAME_LABEL.to_string(),
                        peer_ns.clone(),
                    )]);
                    writeln!(
                        out,
                        "        - namespaceSelector: {{matchLabels: {}}}",
                        flow_map(&ns)
                    )?;
                    writeln!(
                        out,
                        "          podSelector: {{matchLabels: {}}}",
                        flow_map(labels)
                    )?;
                }
                AdvisedPeer::Address(addr) => {
                    let bits = if addr.is_ipv4() { 32 } else { 128 };
                    writeln!(out, "        - ipBlock: {{cidr: \"{addr}/{bits}\"}}")?;
                }
            }
            if !allowed.portless.is_empty() {
                // A rule without ports: the only way NetworkPolicy allows these.
                let seen: Vec<String> = allowed.portless.iter().map(|p| p.to_string()).collect();
                writeln!(
                    out,
                    "      # {} seen, which NetworkPolicy ports cannot name: every protocol of this peer is allowed.",
                    seen.join(", ")
                )?;
                continue;
            }
            writeln!(out, "      ports:")?;
            for (protocol, port) in &allowed.ports {
                writeln!(
                    out,
                    "        - {{protocol: {}, port: {port}}}",
                    protocol.name()
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
