//! `stagewall advise`: least-privilege NetworkPolicies learnt from flow records. For each
//! group of local workloads with the same labels, one policy that allows exactly the
//! traffic they were seen to have (allowed, or would-be denied in audit mode): peers by
//! labels where the inventory knows them as workloads, by the name the workload's DNS
//! answers gave the address for (egress through the agent's DNS proxy: a `fqdn` peer, so
//! the rule follows the name's addresses as they change), by address (/32, /128)
//! otherwise; destination ports as seen. Flows that were dropped in enforce mode never happened and
//! are not allowed.
//!
//! A direction is isolated only where it was recorded (the records say which workloads'
//! directions the recording covered): a covered direction without a record had no
//! traffic and gets no rule, a direction not covered is left alone.
//!
//! Advice never widens what was seen, and says in comments what it left out:
//! - traffic without a port (ICMP, other protocols, non-first IP fragments of TCP, UDP or
//!   SCTP): NetworkPolicy can allow it only with a rule without ports, which allows every
//!   protocol and port of the peer, so no rule is written for it;
//! - a peer no identity knows, seen in one flow once (a scan, a one-off download): its
//!   rule is written commented out, for a person to decide;
//! - a record whose workload is not a valid namespace/name: skipped;
//! - a flow an Admin-tier ClusterNetworkPolicy of the inventory denies (seen as would-drop
//!   in audit mode): no NetworkPolicy can open it, so none is advised; a comment names
//!   the rule.
//!
//! The YAML itself is written by `write`, every string quoted by `yaml`.

mod write;
mod yaml;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    events::IpProtocol,
    policy::{
        model::{Action, Direction, Labels, PolicySet, Protocol, Tier},
        names, semantics,
        tiers::{self, DecidedBy},
    },
    rollout::flow_records::{FlowRecord, RecordsFile},
};

/// The other end of an advised rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AdvisedPeer {
    /// Workloads with these labels in this namespace.
    Workloads {
        namespace: String,
        labels: Labels,
    },
    /// A destination by the name the workload looked it up by.
    Name(String),
    Address(IpAddr),
}

/// What one advised rule allows of a peer.
#[derive(Default)]
struct Allowed {
    /// (protocol, port) seen, port never 0.
    ports: BTreeSet<(Protocol, u16)>,
    /// Traffic seen that no port of a rule can name ("icmp", "tcp without a port"): not
    /// advised, said in a comment.
    portless: BTreeSet<String>,
    /// A peer outside every known identity, seen in one flow once: the rule is written
    /// commented out.
    seen_once: bool,
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

/// What advise learnt, before it is written.
#[derive(Default)]
struct Learnt {
    groups: BTreeMap<(String, Labels), Advice>,
    /// Valid names the inventory lacks.
    unknown: BTreeSet<String>,
    /// Workload names that are not a valid namespace/name, with why.
    invalid: BTreeMap<String, String>,
    /// Flows an Admin-tier rule denies, as comment lines.
    admin_denied: BTreeSet<String>,
}

impl Learnt {
    /// The advice of a workload's label group, with the workload in it; None for a name
    /// that is not valid or that the inventory lacks (each noted).
    fn advice_of(&mut self, inventory: &PolicySet, workload: &str) -> Option<&mut Advice> {
        if let Err(why) = names::object_name(workload) {
            self.invalid.insert(workload.to_string(), why);
            return None;
        }
        let Some(w) = inventory.workload(workload) else {
            self.unknown.insert(workload.to_string());
            return None;
        };
        let advice = self
            .groups
            .entry((w.name.namespace.clone(), w.labels.clone()))
            .or_default();
        advice.workloads.insert(workload.to_string());
        Some(advice)
    }
}

/// Events that went through: allowed, or would-be denied in audit mode.
fn passed_events(r: &FlowRecord) -> u64 {
    r.allowed.saturating_add(r.would_drop)
}

/// Addresses outside every known identity seen in one record with one event, whichever
/// workload saw them.
fn seen_once(records: &RecordsFile, inventory: &PolicySet) -> BTreeSet<IpAddr> {
    let mut seen: BTreeMap<IpAddr, (usize, u64)> = BTreeMap::new();
    for r in records.records.iter().filter(|r| r.passed()) {
        let (flows, events) = seen.entry(r.key.peer_address).or_default();
        *flows += 1;
        *events = events.saturating_add(passed_events(r));
    }
    seen.into_iter()
        .filter(|(addr, seen)| *seen == (1, 1) && semantics::owner(inventory, *addr).is_none())
        .map(|(addr, _)| addr)
        .collect()
}

/// The advised policies as YAML documents, for the workloads of `inventory` (a policy
/// directory's Workload documents) that the records cover.
/// Fails only if writing to a String does (never, in practice).
pub fn advise(records: &RecordsFile, inventory: &PolicySet) -> Result<String, std::fmt::Error> {
    let mut learnt = Learnt::default();
    for covered in &records.covered {
        if let Some(advice) = learnt.advice_of(inventory, &covered.workload) {
            advice.rules(covered.direction);
        }
    }
    let once = seen_once(records, inventory);
    for r in records.records.iter().filter(|r| r.passed()) {
        if let Some(denied) = admin_denied(inventory, r) {
            learnt.admin_denied.insert(denied);
            continue;
        }
        let Some(advice) = learnt.advice_of(inventory, &r.key.workload) else {
            continue;
        };
        advice.records += 1;
        let rules = advice.rules(r.key.direction);
        let peer = peer(inventory, r);
        let by_name = matches!(peer, AdvisedPeer::Name(_));
        let allowed = rules.entry(peer).or_default();
        // A name is what the workload asked for: never a one-off address.
        allowed.seen_once = !by_name && once.contains(&r.key.peer_address);
        match (port_protocol(r.key.protocol), r.key.port) {
            // Port 0 is no port a packet is sent to: the kernel reports it for packets
            // whose ports it could not read (a non-first fragment).
            (Some(p), Some(port)) if port != 0 => {
                allowed.ports.insert((p, port));
            }
            (Some(_), _) => {
                allowed
                    .portless
                    .insert(format!("{} without a port", r.key.protocol));
            }
            (None, _) => {
                allowed.portless.insert(r.key.protocol.to_string());
            }
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "# Least-privilege NetworkPolicies advised by stagewall from {} flow records.",
        records.records.len()
    )?;
    // The reason names the workload as it was written, escaped.
    for why in learnt.invalid.values() {
        writeln!(out, "# Skipped records: {}", yaml::in_comment(why))?;
    }
    for denied in &learnt.admin_denied {
        writeln!(out, "# {}", yaml::in_comment(denied))?;
    }
    for name in &learnt.unknown {
        writeln!(
            out,
            "# {name}: in the records but not in the inventory; no policy advised"
        )?;
    }
    let mut names = BTreeSet::new();
    for ((namespace, labels), advice) in &learnt.groups {
        if labels.is_empty() {
            writeln!(
                out,
                "# {}: no labels to select by; no policy advised",
                yaml::in_comment(&join(&advice.workloads))
            )?;
            continue;
        }
        let first = advice
            .workloads
            .iter()
            .next()
            .expect("a group has workloads");
        let base = policy_name(first.rsplit('/').next().unwrap_or(first));
        let mut name = base.clone();
        for n in 2.. {
            if names.insert((namespace.clone(), name.clone())) {
                break;
            }
            name = format!("{base}-{n}");
        }
        write::policy(&mut out, &name, namespace, labels, advice)?;
    }
    Ok(out)
}

/// The record's flow, if an Admin-tier ClusterNetworkPolicy of the inventory denies it:
/// what the comment says of it.
fn admin_denied(inventory: &PolicySet, r: &FlowRecord) -> Option<String> {
    let workload = inventory.workload(&r.key.workload)?;
    let decision = tiers::decide(
        inventory,
        workload,
        r.key.direction,
        r.key.peer_address,
        r.key.protocol.number().unwrap_or(0),
        r.key.port.unwrap_or(0),
    );
    let DecidedBy::Cluster(rule) = decision.by else {
        return None;
    };
    if rule.policy.tier != Tier::Admin || rule.action() != Action::Deny {
        return None;
    }
    let port = r.key.port.map(|p| format!("/{p}")).unwrap_or_default();
    Some(format!(
        "{} {} {} {}{port}: denied by ClusterNetworkPolicy {} (Admin tier) rule {}, which no NetworkPolicy can open; not advised",
        r.key.workload,
        r.key.direction,
        r.key.peer_address,
        r.key.protocol,
        rule.policy.name,
        rule.name()
    ))
}

/// `advised-<workload>`, short enough for a name (253) with a `-N` suffix after it.
fn policy_name(workload: &str) -> String {
    let mut name = format!("advised-{workload}");
    name.truncate(245);
    name.trim_end_matches(['-', '.']).to_string()
}

/// The NetworkPolicy protocols; others have no ports in a policy.
fn port_protocol(protocol: IpProtocol) -> Option<Protocol> {
    let number = protocol.number()?;
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.number() == number)
}

fn peer(inventory: &PolicySet, r: &FlowRecord) -> AdvisedPeer {
    let addr = r.key.peer_address;
    match semantics::owner(inventory, addr) {
        Some(w) if !w.labels.is_empty() => AdvisedPeer::Workloads {
            namespace: w.name.namespace.clone(),
            labels: w.labels.clone(),
        },
        _ => match &r.name {
            Some(name) if r.key.direction == Direction::Egress => AdvisedPeer::Name(name.clone()),
            _ => AdvisedPeer::Address(addr),
        },
    }
}

fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
