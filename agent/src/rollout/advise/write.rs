//! One advised policy as a YAML document: every string quoted (`yaml::quoted`), every
//! comment one printable line, rules for one-off peers commented out line by line (a
//! leading '#' to delete), traffic no port can name said in comments, never allowed.

use std::fmt::Write as _;

use super::{Advice, AdvisedPeer, Allowed, join, yaml};
use crate::policy::model::{Labels, NAMESPACE_NAME_LABEL};

/// `{"k": "v", ...}`.
fn flow_map(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}: {}", yaml::quoted(k), yaml::quoted(v)))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// The lines of a rule that allows `allowed` of `peer`; None when nothing of it can be
/// allowed without widening.
fn rule(
    peer_key: &str,
    peer: &AdvisedPeer,
    namespace: &str,
    allowed: &Allowed,
) -> Option<Vec<String>> {
    if allowed.ports.is_empty() {
        return None;
    }
    let mut lines = vec![format!("    - {peer_key}:")];
    match peer {
        AdvisedPeer::Workloads {
            namespace: peer_ns,
            labels,
        } if peer_ns == namespace => lines.push(format!(
            "        - podSelector: {{matchLabels: {}}}",
            flow_map(labels)
        )),
        AdvisedPeer::Workloads {
            namespace: peer_ns,
            labels,
        } => {
            let ns = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), peer_ns.clone())]);
            lines.push(format!(
                "        - namespaceSelector: {{matchLabels: {}}}",
                flow_map(&ns)
            ));
            lines.push(format!(
                "          podSelector: {{matchLabels: {}}}",
                flow_map(labels)
            ));
        }
        AdvisedPeer::Name(name) => {
            lines.push(format!("        - fqdn: {}", yaml::quoted(name)));
        }
        AdvisedPeer::Address(addr) => {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            lines.push(format!("        - ipBlock: {{cidr: \"{addr}/{bits}\"}}"));
        }
    }
    lines.push("      ports:".to_string());
    for (protocol, port) in &allowed.ports {
        lines.push(format!(
            "        - {{protocol: {}, port: {port}}}",
            protocol.name()
        ));
    }
    Some(lines)
}

/// How a peer is named in a comment.
fn peer_name(peer: &AdvisedPeer) -> String {
    match peer {
        AdvisedPeer::Workloads { namespace, labels } => {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("workloads {} in {namespace}", labels.join(","))
        }
        AdvisedPeer::Name(name) => name.clone(),
        AdvisedPeer::Address(addr) => addr.to_string(),
    }
}

pub(super) fn policy(
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
        yaml::in_comment(&join(&advice.workloads)),
        advice.records
    )?;
    writeln!(out, "apiVersion: networking.k8s.io/v1")?;
    writeln!(out, "kind: NetworkPolicy")?;
    writeln!(out, "metadata:")?;
    writeln!(out, "  name: {}", yaml::quoted(name))?;
    writeln!(out, "  namespace: {}", yaml::quoted(namespace))?;
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
    for (section, peer_key, arrow, rules) in [
        ("ingress", "from", "from", &advice.ingress),
        ("egress", "to", "to", &advice.egress),
    ] {
        let Some(rules) = rules else { continue };
        let mut active = Vec::new();
        let mut notes = Vec::new();
        let mut commented = Vec::new();
        for (peer, allowed) in rules {
            let name = yaml::in_comment(&peer_name(peer)).into_owned();
            for seen in &allowed.portless {
                notes.push(format!(
                    "  # {seen} {arrow} {name} seen: not advised (only a rule without ports allows it, and that allows every protocol and port of the peer)."
                ));
            }
            match rule(peer_key, peer, namespace, allowed) {
                Some(lines) if allowed.seen_once => {
                    commented.push(format!(
                        "  # {name} is outside every known identity and was seen once (one flow, one event): not advised. Delete the leading '#' of the lines below to allow it."
                    ));
                    commented.extend(lines.into_iter().map(|l| format!("#{l}")));
                }
                Some(lines) => active.extend(lines),
                None => {}
            }
        }
        if active.is_empty() && commented.is_empty() {
            if rules.is_empty() {
                writeln!(out, "  # No {section} traffic was seen: none is allowed.")?;
            }
            writeln!(out, "  {section}: []")?;
        } else {
            // With only commented-out rules below it, the section is empty (null): the
            // direction is isolated all the same, as policyTypes says.
            writeln!(out, "  {section}:")?;
            for line in active {
                writeln!(out, "{line}")?;
            }
        }
        for line in notes.iter().chain(&commented) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
