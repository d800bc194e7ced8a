//! `stagewall check DIR --explain --from X --to Y --port P`: which policies select each
//! side of a connection and which rule allows it, or why it is denied. Read directly off
//! the NetworkPolicy semantics (policy::semantics), not off the compiled maps.

use std::{
    fmt::{self, Write as _},
    net::IpAddr,
};

use crate::policy::{
    model::{Direction, NetworkPolicy, Peer, PolicySet, PortMatch, Protocol, Rule, Workload},
    semantics::{self, Side},
};

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is neither an address nor namespace/name")]
    NotAParty(String),
    #[error("no Workload {0} in the policies")]
    NoSuchWorkload(String),
    #[error("the two sides have no addresses of one family in common")]
    NoCommonFamily,
    #[error(transparent)]
    Format(#[from] fmt::Error),
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

fn name(p: &Party) -> String {
    match p {
        Party::Workload(w) => w.name.to_string(),
        Party::Address(a) => a.to_string(),
    }
}

/// The answer, one line for each side and the verdict.
pub fn explain(
    set: &PolicySet,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> Result<String, ExplainError> {
    let (from, to) = (party(set, from)?, party(set, to)?);
    let (src, dst) = addresses(&from, &to)?;
    let mut out = String::new();
    writeln!(
        out,
        "from {} ({src}) to {} ({dst}), {} port {port}",
        name(&from),
        name(&to),
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
                name(party)
            )?;
            continue;
        };
        let note = if w.attachment.is_none() {
            " (enforced on its own host, not this one)"
        } else {
            ""
        };
        let side = semantics::decide(set, w, direction, remote, protocol.number(), port);
        allowed &= side.allowed();
        match side {
            Side::NotIsolated => writeln!(
                out,
                "  {label} {}{note}: allowed, no policy selects it for {}",
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
                "  {label} {}: allowed, its node may always connect to it",
                w.name
            )?,
            Side::Allowed {
                isolated_by,
                policy,
                rule,
            } => writeln!(
                out,
                "  {label} {}{note}: allowed by {} {} rule {} at {}:{} ({}); isolated by {}",
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
                "  {label} {}{note}: DENIED: isolated by {}, and no {} rule of theirs allows {} port {port} {} {}",
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
    writeln!(
        out,
        "verdict: {}",
        if allowed { "allowed" } else { "denied" }
    )?;
    Ok(out)
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
    let selector = |s: &crate::policy::model::LabelSelector| {
        let mut parts: Vec<String> = s
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(s.match_expressions.iter().map(|r| format!("{r:?}")));
        if parts.is_empty() {
            "all".to_string()
        } else {
            parts.join(",")
        }
    };
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
    }
}
