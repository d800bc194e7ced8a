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
    rollout::simulate::{Change, simulate},
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
        name: None,
        allowed: 1,
        would_drop: 0,
        dropped: 0,
        first_seen: 0,
        last_seen: 0,
    }
}

/// A record of two events: not a one-off peer.
fn twice(mut r: FlowRecord) -> FlowRecord {
    r.allowed = 2;
    r
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
            twice(record("ml/serving", Egress, "192.0.2.9", Udp, Some(53))),
            would_drop,
            dropped,
        ],
        all_covered(),
    );
    let yaml = advise(&records, &inventory()).unwrap();
    assert!(yaml.contains("name: \"advised-trainer-0\""), "{yaml}");
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
        yaml.contains(r#"ipBlock: {cidr: "192.0.2.9/32"}"#),
        "{yaml}"
    );
    assert!(
        yaml.contains("icmp to 192.0.2.7 seen: not advised"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("192.0.2.66"),
        "a dropped flow is not advised:\n{yaml}"
    );
    let set = with_advice(&yaml);
    let simulated = simulate(&records, &set, Mode::Enforce);
    // The would-drop flow is now allowed, the dropped one still dropped; only the ICMP
    // flow, which no rule can name without allowing every protocol, is newly denied.
    let changes: Vec<_> = simulated
        .stages
        .iter()
        .flat_map(|s| &s.changes)
        .map(|c| (c.change, c.protocol))
        .collect();
    assert_eq!(
        changes,
        [(Change::NewlyDenied, Icmp), (Change::NewlyAllowed, Tcp)],
        "{}",
        simulated.text()
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
        !decide(Egress, "192.0.2.7", 1, 0),
        "ICMP needs a rule without ports, which would allow every protocol: not advised"
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

/// Advice leaves a peer no identity knows commented out when it was seen in one flow once.
fn left_for_a_person(records: &RecordsFile, peer: IpAddr) -> bool {
    let passed: Vec<_> = records
        .records
        .iter()
        .filter(|r| r.passed() && r.key.peer_address == peer)
        .collect();
    semantics::owner(&inventory(), peer).is_none()
        && passed.len() == 1
        && passed[0].allowed + passed[0].would_drop == 1
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
        let newly_denied: Vec<_> = simulated
            .stages
            .iter()
            .flat_map(|s| &s.changes)
            .filter(|c| c.change == Change::NewlyDenied)
            .collect();
        for c in newly_denied {
            prop_assert!(
                c.protocol == Icmp || left_for_a_person(&records, c.peer_address),
                "{}\n{}", simulated.text(), yaml
            );
        }
        for w in WORKLOADS {
            let local = set.workload(w).unwrap();
            for d in [Ingress, Egress] {
                prop_assert!(!semantics::decide(&set, local, d, "198.51.100.1".parse().unwrap(), 6, 9999).allowed());
            }
        }
    }
}

/// The policies a text parses to, by namespace/name: nothing but what advise meant.
fn policy_names(yaml: &str) -> Vec<String> {
    let mut set = PolicySet::default();
    parse_into(Path::new("advised.yaml"), yaml, &mut set)
        .unwrap_or_else(|e| panic!("advised policies do not parse: {e}\n{yaml}"));
    set.policies.iter().map(|p| p.name.to_string()).collect()
}

#[test]
fn a_record_without_a_port_never_widens_a_rule_to_every_protocol() {
    let records = file(
        vec![
            record("ml/trainer-0", Egress, "192.0.2.7", Tcp, Some(443)),
            record("ml/trainer-0", Egress, "192.0.2.7", Icmp, None),
            // A non-first IP fragment: TCP, but no port.
            record("ml/trainer-0", Egress, "192.0.2.7", Tcp, None),
            // A peer seen only without ports gets no rule at all.
            record("ml/trainer-0", Egress, "192.0.2.8", Icmp, None),
        ]
        .into_iter()
        .map(twice)
        .collect(),
        all_covered(),
    );
    let yaml = advise(&records, &inventory()).unwrap();
    let set = with_advice(&yaml);
    let trainer = set.workload("ml/trainer-0").unwrap();
    let decide = |peer: &str, proto, port| {
        semantics::decide(&set, trainer, Egress, peer.parse().unwrap(), proto, port).allowed()
    };
    assert!(decide("192.0.2.7", 6, 443), "the port seen:\n{yaml}");
    assert!(!decide("192.0.2.7", 17, 53), "another protocol:\n{yaml}");
    assert!(!decide("192.0.2.7", 6, 22), "another port:\n{yaml}");
    assert!(!decide("192.0.2.7", 1, 0), "ICMP cannot be named:\n{yaml}");
    assert!(
        !decide("192.0.2.8", 6, 80),
        "no rule for 192.0.2.8:\n{yaml}"
    );
    for seen in ["icmp to 192.0.2.7", "tcp without a port to 192.0.2.7"] {
        assert!(
            yaml.contains(seen),
            "the output says {seen:?} was left out:\n{yaml}"
        );
    }
}

#[test]
fn advice_never_has_port_zero() {
    let records = file(
        vec![
            twice(record("ml/trainer-0", Egress, "192.0.2.7", Tcp, Some(0))),
            twice(record("ml/trainer-0", Egress, "192.0.2.7", Udp, Some(53))),
        ],
        all_covered(),
    );
    let yaml = advise(&records, &inventory()).unwrap();
    assert!(!yaml.contains("port: 0"), "{yaml}");
    let set = with_advice(&yaml);
    let trainer = set.workload("ml/trainer-0").unwrap();
    assert!(
        !semantics::decide(&set, trainer, Egress, "192.0.2.7".parse().unwrap(), 6, 80).allowed(),
        "port 0 widened to every port:\n{yaml}"
    );
}

/// Names in the records are text an attacker may choose (a pod name, say): however they
/// are spelt, the output is the advised policies and nothing else.
#[test]
fn names_in_the_records_cannot_inject_yaml() {
    let injected = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: evil, namespace: ml}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}\n#";
    for line_break in ["\n", "\r", "\r\n", "\u{85}", "\u{2028}", "\u{2029}"] {
        let evil = format!("ml/x{line_break}---{line_break}{injected}").replace('\n', line_break);
        let mut records = vec![
            twice(record("ml/trainer-0", Egress, "10.1.0.3", Tcp, Some(8500))),
            twice(record(&evil, Egress, "10.1.0.3", Tcp, Some(8500))),
        ];
        records[1].key.direction = Ingress;
        let mut covered = all_covered();
        covered.push(CoveredDirection {
            workload: evil.clone(),
            direction: Egress,
            stage: None,
            since: 0,
        });
        let yaml = advise(&file(records, covered), &inventory()).unwrap();
        let mut names = policy_names(&yaml);
        names.sort();
        assert_eq!(
            names,
            ["ml/advised-serving", "ml/advised-trainer-0"],
            "{line_break:?}:\n{yaml}"
        );
        assert!(
            yaml.contains("not a valid namespace/name"),
            "the record is reported:\n{yaml}"
        );
    }
}

/// A peer no identity knows, seen in one flow once, is not allowed silently: it may be a
/// scan or a one-off download, so the rule is written commented out for a person to
/// decide.
#[test]
fn a_world_peer_seen_once_is_left_commented_out() {
    let records = file(
        vec![
            record("ml/trainer-0", Egress, "198.51.100.9", Tcp, Some(443)),
            twice(record("ml/trainer-0", Egress, "192.0.2.7", Tcp, Some(443))),
        ],
        all_covered(),
    );
    let yaml = advise(&records, &inventory()).unwrap();
    let set = with_advice(&yaml);
    let trainer = set.workload("ml/trainer-0").unwrap();
    let decide = |peer: &str| {
        semantics::decide(&set, trainer, Egress, peer.parse().unwrap(), 6, 443).allowed()
    };
    assert!(decide("192.0.2.7"), "seen twice:\n{yaml}");
    assert!(!decide("198.51.100.9"), "seen once:\n{yaml}");
    assert!(
        yaml.contains("seen once")
            && yaml.contains("#        - ipBlock: {cidr: \"198.51.100.9/32\"}"),
        "left for a person, commented out:\n{yaml}"
    );
}

/// A direction whose only peer was seen once stays isolated, and deleting the '#' of the
/// commented-out rule gives a policy that allows it.
#[test]
fn a_rule_left_commented_out_is_allowed_by_uncommenting_it() {
    let records = file(
        vec![record("ml/serving", Ingress, "198.51.100.9", Udp, Some(53))],
        all_covered(),
    );
    let yaml = advise(&records, &inventory()).unwrap();
    let decide = |set: &PolicySet| {
        let serving = set.workload("ml/serving").unwrap();
        assert!(!set.isolating(serving, Ingress).is_empty(), "{yaml}");
        semantics::decide(
            set,
            serving,
            Ingress,
            "198.51.100.9".parse().unwrap(),
            17,
            53,
        )
        .allowed()
    };
    assert!(!decide(&with_advice(&yaml)), "{yaml}");
    let uncommented: String = yaml
        .lines()
        .map(|l| {
            l.strip_prefix("#    ")
                .map_or(l.to_string(), |rest| format!("    {rest}"))
        })
        .map(|l| l + "\n")
        .collect();
    assert!(decide(&with_advice(&uncommented)), "{uncommented}");
}

/// A flow an Admin-tier Deny of the inventory denies (would-drop in audit mode) gets no
/// rule, since no NetworkPolicy could open it, and a comment names the rule; the rest of
/// the workload's flows are advised as before.
#[test]
fn a_flow_an_admin_deny_denies_is_named_not_advised() {
    let mut set = inventory();
    parse_into(
        Path::new("guardrails.yaml"),
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: cloud-metadata}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n  egress:\n  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}\n",
        &mut set,
    )
    .unwrap();
    let mut metadata = twice(record(
        "ml/trainer-0",
        Egress,
        "169.254.169.254",
        Tcp,
        Some(80),
    ));
    metadata.allowed = 0;
    metadata.would_drop = 2;
    let records = file(
        vec![
            metadata,
            twice(record("ml/trainer-0", Egress, "10.2.0.1", Tcp, Some(5000))),
        ],
        all_covered(),
    );
    let yaml = advise(&records, &set).unwrap();
    assert!(
        yaml.contains("# ml/trainer-0 egress 169.254.169.254 tcp/80: denied by ClusterNetworkPolicy cloud-metadata (Admin tier) rule \"no-metadata\", which no NetworkPolicy can open; not advised"),
        "{yaml}"
    );
    assert!(!yaml.contains("169.254.169.254/32"), "{yaml}");
    assert!(yaml.contains("5000"), "{yaml}");
}

/// Destinations the workload looked up by name (through the agent's DNS proxy) are
/// advised by name: one `fqdn` rule for every address the name gave, which follows the
/// name's addresses as they change; an address without a name stays an address.
#[test]
fn destinations_looked_up_by_name_are_advised_by_name() {
    let named = |peer: &str, name: &str| {
        let mut r = twice(record("ml/trainer-0", Egress, peer, Tcp, Some(443)));
        r.name = Some(name.into());
        r
    };
    let records = vec![
        named("151.101.0.223", "pypi.org"),
        named("151.101.64.223", "pypi.org"),
        named("2a04:4e42::223", "pypi.org"),
        twice(record("ml/trainer-0", Egress, "192.0.2.7", Tcp, Some(8080))),
    ];
    let yaml = advise(&file(records, all_covered()), &inventory()).unwrap();
    assert_eq!(yaml.matches("fqdn: \"pypi.org\"").count(), 1, "{yaml}");
    assert!(!yaml.contains("151.101."), "no address of the name: {yaml}");
    assert!(yaml.contains("192.0.2.7/32"), "{yaml}");
    let set = with_advice(&yaml);
    let trainer = set.workload("ml/trainer-0").unwrap();
    let names = ["pypi.org".to_string()];
    let decide = |peer: &str, port, names: &[String]| {
        semantics::decide_named(&set, trainer, Egress, peer.parse().unwrap(), 6, port, names)
            .allowed()
    };
    // A new address of the name is allowed once the workload's DNS gives it.
    assert!(decide("151.101.128.223", 443, &names));
    assert!(!decide("151.101.128.223", 443, &[]));
    assert!(!decide("151.101.0.223", 80, &names));
}
