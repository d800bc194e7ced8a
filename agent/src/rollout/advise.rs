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
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        events::IpProtocol::{Icmp, Sctp, Tcp, Udp},
        policy::{
            model::{
                Direction::{Egress, Ingress},
                Mode,
            },
            parse::parse_into,
            pipeline,
        },
        rollout::flow_records::{CoveredDirection, FlowRecord, RecordKey},
        rollout::simulate::simulate,
    };

    /// Two namespaces; trainers share a label set, the registry sits in another namespace.
    const INVENTORY: &str = r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: trainer-0, namespace: ml, labels: {stage: training}}
spec: {cgroup: /t0, addresses: [10.1.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: trainer-1, namespace: ml, labels: {stage: training}}
spec: {cgroup: /t1, addresses: [10.1.0.2]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: serving, namespace: ml, labels: {stage: serving}}
spec: {cgroup: /s, addresses: [10.1.0.3, "fd00::3"]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: registry, namespace: shared, labels: {app: registry}}
spec: {addresses: [10.2.0.1]}
"#;
    const WORKLOADS: [&str; 3] = ["ml/trainer-0", "ml/trainer-1", "ml/serving"];
    const PEERS: [&str; 7] = [
        "10.1.0.1",
        "10.1.0.2",
        "10.1.0.3",
        "fd00::3",
        "10.2.0.1",
        "192.0.2.7",
        "2001:db8::9",
    ];

    fn inventory() -> PolicySet {
        let mut set = PolicySet::default();
        parse_into(Path::new("inventory.yaml"), INVENTORY, &mut set).unwrap();
        set
    }

    fn record(
        workload: &str,
        direction: Direction,
        peer: &str,
        protocol: IpProtocol,
        port: Option<u16>,
    ) -> FlowRecord {
        FlowRecord {
            key: RecordKey {
                workload: workload.into(),
                direction,
                protocol,
                port,
                peer_address: peer.parse().unwrap(),
            },
            stage: None,
            peer: peer.into(),
            allowed: 1,
            would_drop: 0,
            dropped: 0,
            first_seen: 0,
            last_seen: 0,
        }
    }

    fn all_covered() -> Vec<CoveredDirection> {
        WORKLOADS
            .iter()
            .flat_map(|w| {
                [Ingress, Egress].map(|direction| CoveredDirection {
                    workload: w.to_string(),
                    direction,
                    stage: None,
                    since: 0,
                })
            })
            .collect()
    }

    fn file(records: Vec<FlowRecord>, covered: Vec<CoveredDirection>) -> RecordsFile {
        RecordsFile {
            version: 1,
            agent_mode: Mode::Audit,
            evicted: 0,
            covered,
            records,
        }
    }

    /// The inventory with the advised policies, as `stagewall run` would load them.
    fn with_advice(yaml: &str) -> PolicySet {
        let mut set = inventory();
        parse_into(Path::new("advised.yaml"), yaml, &mut set)
            .unwrap_or_else(|e| panic!("advised policies do not parse: {e}\n{yaml}"));
        pipeline::expand(&mut set).unwrap();
        crate::compiler::compile(&set, &Default::default()).unwrap();
        set
    }

    #[test]
    fn advice_selects_peers_by_labels_or_address_and_allows_only_what_was_seen() {
        let mut dropped = record("ml/serving", Ingress, "192.0.2.66", Tcp, Some(22));
        dropped.allowed = 0;
        dropped.dropped = 3;
        let mut would_drop = record("ml/trainer-0", Egress, "10.2.0.1", Tcp, Some(5000));
        would_drop.allowed = 0;
        would_drop.would_drop = 2;
        let records = file(
            vec![
                record("ml/trainer-0", Egress, "10.1.0.3", Tcp, Some(8500)),
                record("ml/trainer-1", Egress, "10.1.0.3", Tcp, Some(8501)),
                record("ml/serving", Ingress, "10.1.0.1", Tcp, Some(8500)),
                record("ml/serving", Ingress, "10.1.0.2", Tcp, Some(8501)),
                record("ml/serving", Egress, "192.0.2.7", Icmp, None),
                would_drop,
                dropped,
            ],
            all_covered(),
        );
        let yaml = advise(&records, &inventory()).unwrap();
        assert!(yaml.contains("name: advised-trainer-0"), "{yaml}");
        assert!(
            !yaml.contains("advised-trainer-1"),
            "one policy per label set:\n{yaml}"
        );
        assert!(
            yaml.contains(
                r#"namespaceSelector: {matchLabels: {"kubernetes.io/metadata.name": "shared"}}"#
            ),
            "{yaml}"
        );
        assert!(
            yaml.contains(r#"ipBlock: {cidr: "192.0.2.7/32"}"#),
            "{yaml}"
        );
        assert!(
            !yaml.contains("192.0.2.66"),
            "a dropped flow is not advised:\n{yaml}"
        );
        let set = with_advice(&yaml);
        let simulated = simulate(&records, &set, Mode::Enforce);
        assert_eq!(simulated.newly_denied(), 0, "{}", simulated.text());
        // The would-drop flow is now allowed, the dropped one still dropped.
        let changes: Vec<_> = simulated.stages.iter().flat_map(|s| &s.changes).collect();
        assert_eq!(changes.len(), 1, "{}", simulated.text());
        assert_eq!(
            changes[0].change,
            crate::rollout::simulate::Change::NewlyAllowed
        );
        let serving = set.workload("ml/serving").unwrap();
        let decide = |dir, peer: &str, proto, port| {
            semantics::decide(&set, serving, dir, peer.parse().unwrap(), proto, port).allowed()
        };
        assert!(
            decide(Ingress, "10.1.0.1", 6, 8501),
            "trainers share a label set"
        );
        assert!(!decide(Ingress, "10.1.0.1", 6, 8502), "unseen port");
        assert!(!decide(Ingress, "192.0.2.66", 6, 22), "dropped before");
        assert!(
            decide(Egress, "192.0.2.7", 1, 0),
            "ICMP needs a rule without ports"
        );
        assert!(!decide(Egress, "192.0.2.8", 1, 0), "another address");
    }

    #[test]
    fn a_direction_not_covered_is_left_alone_a_silent_covered_one_is_closed() {
        let records = file(
            vec![record("ml/serving", Ingress, "10.1.0.1", Tcp, Some(8500))],
            vec![CoveredDirection {
                workload: "ml/trainer-0".into(),
                direction: Ingress,
                stage: None,
                since: 0,
            }],
        );
        let yaml = advise(&records, &inventory()).unwrap();
        let set = with_advice(&yaml);
        let is = |w: &str, d| !set.isolating(set.workload(w).unwrap(), d).is_empty();
        assert!(
            is("ml/serving", Ingress),
            "records make a direction covered"
        );
        assert!(!is("ml/serving", Egress), "never covered:\n{yaml}");
        assert!(is("ml/trainer-0", Ingress), "covered, silent:\n{yaml}");
        assert!(yaml.contains("ingress: []"), "{yaml}");
    }

    fn record_strategy() -> impl Strategy<Value = FlowRecord> {
        (
            0..WORKLOADS.len(),
            any::<bool>(),
            0..PEERS.len(),
            prop_oneof![Just(Tcp), Just(Udp), Just(Sctp), Just(Icmp)],
            1u16..100,
            any::<bool>(),
        )
            .prop_map(|(w, ingress, peer, protocol, port, would_drop)| {
                let direction = if ingress { Ingress } else { Egress };
                let port = (protocol != Icmp).then_some(8000 + port);
                let mut r = record(WORKLOADS[w], direction, PEERS[peer], protocol, port);
                if would_drop {
                    r.allowed = 0;
                    r.would_drop = 1;
                }
                r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever was seen, enforcing the advice on the same traffic drops nothing, and
        /// a port never seen stays closed.
        #[test]
        fn enforcing_the_advice_denies_none_of_the_recorded_flows(
            records in prop::collection::vec(record_strategy(), 0..40)
        ) {
            let records = file(records, all_covered());
            let yaml = advise(&records, &inventory()).unwrap();
            let set = with_advice(&yaml);
            let simulated = simulate(&records, &set, Mode::Enforce);
            prop_assert_eq!(simulated.newly_denied(), 0, "{}\n{}", simulated.text(), yaml);
            for w in WORKLOADS {
                let local = set.workload(w).unwrap();
                for d in [Ingress, Egress] {
                    prop_assert!(!semantics::decide(&set, local, d, "198.51.100.1".parse().unwrap(), 6, 9999).allowed());
                }
            }
        }
    }
}
