//! advise's tests: the advice parses, compiles, and allows exactly what was seen.

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
