//! Tier program tests: the kernel's lookups simulated over the compiled POLICY contents
//! (key bytes and prefix lengths as map_keys writes them) against policy::tiers, for
//! random ClusterNetworkPolicies with NetworkPolicies, and one hand-written case per way
//! flattening can go wrong.

use std::{collections::HashMap, net::IpAddr};

use proptest::prelude::*;
use stagewall_common::{
    ACTION_ACCEPT, ACTION_DENY, ACTION_PASS, FAMILY_V4, FAMILY_V6, IDENTITY_ANY, IDENTITY_ANY_V4,
    IDENTITY_ANY_V6, POLICY_ALLOW, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey,
    identity_any, policy_value_action, policy_value_rule,
};

use super::super::{
    tests::{
        ADDRS, DOMAINS, NODE_ADDRS, PROBE_ADDRS, ip, name, name_sets, origin, parse,
        selector_strategy, set_strategy,
    },
    *,
};
use crate::policy::{
    model::{
        Action, ClusterNetworkPolicy, ClusterPeer, ClusterPort, ClusterRule, ClusterSelector,
        LabelSelector, Labels, Node, Protocol, Tier,
    },
    semantics,
    tiers::{self, DecidedBy},
};

/// The POLICY map as the kernel holds it: (prefix length, key bytes) -> value, by
/// (policy id, identity) so a lookup reads only the entries that can match.
struct PolicyMap(HashMap<(u32, u32), Vec<MapEntry>>);

/// Prefix length, key bytes, value.
type MapEntry = (u32, [u8; 12], u32);

/// A tier entry as the flattening cases read it: protocol, (port, prefix bits), action.
type Flat = (Option<u8>, Option<(u16, u8)>, u32);

fn key_bytes(key: &PolicyKey) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..4].copy_from_slice(&key.policy_be.to_ne_bytes());
    bytes[4..8].copy_from_slice(&key.identity_be.to_ne_bytes());
    bytes[8] = key.direction;
    bytes[9] = key.protocol;
    bytes[10..].copy_from_slice(&key.port_be.to_ne_bytes());
    bytes
}

fn prefix_matches(len: u32, entry: &[u8; 12], probe: &[u8; 12]) -> bool {
    (0..len as usize).all(|bit| {
        let mask = 0x80 >> (bit % 8);
        entry[bit / 8] & mask == probe[bit / 8] & mask
    })
}

impl PolicyMap {
    /// Both kinds of entries in one map; no two share a key (the kernel keeps one value).
    fn of(c: &Compiled) -> PolicyMap {
        let mut keys = BTreeMap::new();
        let entries = c
            .policy
            .iter()
            .map(|e| (e, POLICY_ALLOW))
            .chain(c.tier_entries.iter().map(|(e, v)| (e, *v)));
        let mut map: HashMap<(u32, u32), Vec<MapEntry>> = HashMap::new();
        for (entry, value) in entries {
            let (len, key) = map_keys::policy_key(entry, 0);
            let bytes = key_bytes(&key);
            assert!(
                keys.insert((len, bytes), value).is_none(),
                "{entry:?} twice"
            );
            map.entry((entry.policy, entry.identity))
                .or_default()
                .push((len, bytes, value));
        }
        PolicyMap(map)
    }

    /// One LPM lookup of a full-length key.
    fn lookup(
        &self,
        policy: u32,
        identity: u32,
        direction: Direction,
        protocol: u8,
        port: u16,
    ) -> Option<u32> {
        let probe = key_bytes(&PolicyKey {
            policy_be: policy.to_be(),
            identity_be: identity.to_be(),
            direction: map_keys::direction_number(direction),
            protocol,
            port_be: port.to_be(),
        });
        self.0
            .get(&(policy, identity))?
            .iter()
            .filter(|(len, bytes, _)| prefix_matches(*len, bytes, &probe))
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, _, value)| *value)
    }
}

/// Who decided, in terms both sides can give.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    SelfTraffic,
    Cluster(String, Direction, usize, Action),
    NetworkPolicy(bool),
    Default,
}

/// The verdict and the Pass rules on the way, as policy::tiers gives them.
fn reference(
    set: &PolicySet,
    w: &Workload,
    d: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> (Verdict, Vec<String>) {
    reference_named(set, w, d, (remote, proto, port), &[])
}

/// `reference`, for a destination the workload's DNS answers gave `names` for.
fn reference_named(
    set: &PolicySet,
    w: &Workload,
    d: Direction,
    (remote, proto, port): (IpAddr, u8, u16),
    names: &[String],
) -> (Verdict, Vec<String>) {
    let decision = tiers::decide_named(set, w, d, remote, proto, port, names);
    let passed = decision
        .passed
        .iter()
        .map(|r| format!("{}/{}", r.policy.name, r.index))
        .collect();
    let verdict = match &decision.by {
        DecidedBy::SelfTraffic => Verdict::SelfTraffic,
        DecidedBy::Cluster(r) => {
            Verdict::Cluster(r.policy.name.clone(), r.direction, r.index, r.action())
        }
        DecidedBy::NetworkPolicy(side) => Verdict::NetworkPolicy(side.allowed()),
        DecidedBy::Default => Verdict::Default,
    };
    (verdict, passed)
}

/// The kernel's decision over the compiled contents: self traffic; the Admin tier (the
/// peer's identity, then the family's any-peer identity); the NetworkPolicy tier when
/// isolated (the node in; the peer's identity, then any peer); the Baseline tier.
/// Returns the lookups it made too.
fn kernel(
    c: &Compiled,
    map: &PolicyMap,
    ep: &Endpoint,
    d: Direction,
    remote: IpAddr,
    proto: u8,
    port: u16,
) -> (Verdict, Vec<String>, usize) {
    let (verdict, passed, lookups, _) = kernel_named(c, map, ep, d, (remote, proto, port), &[]);
    (verdict, passed, lookups)
}

/// `kernel`, for a destination the workload's DNS answers gave `names` for. Where the
/// endpoint has EP_NAME_RULES, a new egress flow also reads the name identities learnt
/// for the address (the proxy's `names.identities_for`, DNS_LEARNT): in each tier
/// program, one exact lookup per name identity beside the address lookups, and of all
/// the hits the smallest rule reference wins (compiler/tiers.rs); in the NetworkPolicy
/// program, one per name identity after the address lookups missed, any hit allowing.
/// Returns the address lookups and the name lookups apart.
fn kernel_named(
    c: &Compiled,
    map: &PolicyMap,
    ep: &Endpoint,
    d: Direction,
    (remote, proto, port): (IpAddr, u8, u16),
    names: &[String],
) -> (Verdict, Vec<String>, usize, usize) {
    let mut passed = Vec::new();
    let mut lookups = 0;
    let mut name_lookups = 0;
    if ep.addresses.contains(&remote) {
        return (Verdict::SelfTraffic, passed, lookups, name_lookups);
    }
    let identity = c.identities.lookup(remote);
    let family = if remote.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let learnt = if d == Direction::Egress && ep.flags & EP_NAME_RULES != 0 {
        super::super::tests::learnt_identities(c, ep, names)
    } else {
        Vec::new()
    };
    let mut tier = |tier: Tier, passed: &mut Vec<String>, lookups: &mut usize| {
        let id = ep.tiers.get(tier, d);
        if id == 0 {
            return None;
        }
        *lookups += 1;
        let by_address = map.lookup(id, identity, d, proto, port).or_else(|| {
            *lookups += 1;
            map.lookup(id, identity_any(family), d, proto, port)
        });
        let by_name = learnt.iter().filter_map(|&name| {
            name_lookups += 1;
            map.lookup(id, name, d, proto, port)
        });
        let value = by_address
            .into_iter()
            .chain(by_name.collect::<Vec<_>>())
            .min_by_key(|&v| policy_value_rule(v))?;
        let rule = &c.tier_rules[policy_value_rule(value) as usize - 1];
        assert_eq!(rule.tier, tier);
        assert_eq!(rule.direction, d);
        assert_eq!(action_number(rule.action), policy_value_action(value));
        if policy_value_action(value) == ACTION_PASS {
            passed.push(format!("{}/{}", rule.policy, rule.index));
            return None;
        }
        Some(Verdict::Cluster(
            rule.policy.clone(),
            d,
            rule.index,
            rule.action,
        ))
    };
    if let Some(v) = tier(Tier::Admin, &mut passed, &mut lookups) {
        return (v, passed, lookups, name_lookups);
    }
    let (flag, policy) = match d {
        Direction::Ingress => (EP_ISOLATED_INGRESS, ep.ingress_policy_id),
        Direction::Egress => (EP_ISOLATED_EGRESS, ep.egress_policy_id),
    };
    if ep.flags & flag != 0 {
        if d == Direction::Ingress && stagewall_common::is_node_identity(identity) {
            return (Verdict::NetworkPolicy(true), passed, lookups, name_lookups);
        }
        lookups += 2;
        let hit = map
            .lookup(policy, identity, d, proto, port)
            .or_else(|| map.lookup(policy, IDENTITY_ANY, d, proto, port))
            .or_else(|| {
                learnt.iter().find_map(|&name| {
                    name_lookups += 1;
                    map.lookup(policy, name, d, proto, port)
                })
            });
        if let Some(value) = hit {
            assert_eq!(value, POLICY_ALLOW);
        }
        return (
            Verdict::NetworkPolicy(hit.is_some()),
            passed,
            lookups,
            name_lookups,
        );
    }
    if let Some(v) = tier(Tier::Baseline, &mut passed, &mut lookups) {
        return (v, passed, lookups, name_lookups);
    }
    (Verdict::Default, passed, lookups, name_lookups)
}

// ---------------------------------------------------------------------------------------------
// Property: the kernel's lookups over the compiled tiers decide as policy::tiers.

const NETWORKS: [&str; 9] = [
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/16",
    "10.0.0.4/30",
    "10.0.0.6/32",
    "fd00::/64",
    "fd00::2/128",
    "8.8.8.0/24",
    "192.168.0.0/24",
];

fn namespace_selector_strategy() -> impl Strategy<Value = LabelSelector> {
    let labels = |k: &str, v: &str| LabelSelector {
        match_labels: Labels::from([(k.to_string(), v.to_string())]),
        match_expressions: vec![],
    };
    prop_oneof![
        Just(LabelSelector::default()),
        Just(labels("team", "x")),
        Just(labels("kubernetes.io/metadata.name", "b")),
        Just(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![crate::policy::model::Requirement::Exists("team".into())],
        }),
    ]
}

fn cluster_selector_strategy() -> impl Strategy<Value = ClusterSelector> {
    prop_oneof![
        namespace_selector_strategy().prop_map(ClusterSelector::Namespaces),
        (namespace_selector_strategy(), selector_strategy())
            .prop_map(|(namespaces, pods)| ClusterSelector::Pods { namespaces, pods }),
    ]
}

fn cluster_port_strategy() -> impl Strategy<Value = ClusterPort> {
    let ports = |protocol, first, last| ClusterPort::Ports {
        protocol,
        first,
        last,
    };
    prop_oneof![
        Just(ports(Protocol::Tcp, 80, 80)),
        Just(ports(Protocol::Tcp, 70, 90)),
        Just(ports(Protocol::Tcp, 8000, 8100)),
        Just(ports(Protocol::Udp, 53, 53)),
        Just(ports(Protocol::Udp, 1, 65535)),
        Just(ports(Protocol::Sctp, 80, 80)),
        Just(ClusterPort::Named("web".into())),
        Just(ClusterPort::Named("dns".into())),
    ]
}

/// Addresses a generated Node may have: a workload's, this node's own, inside and outside
/// the networks, IPv4 and IPv6, and one no other part of the set names.
const NODE_PEER_ADDRS: [&str; 6] = [
    "10.0.0.1",
    "10.0.7.7",
    "8.8.8.8",
    "fd00::2",
    "fd00::9",
    "172.16.0.1",
];

/// Node labels: the control plane's role label (empty value), a zone, or none.
const NODE_LABELS: [(&str, &str); 3] = [
    ("node-role.kubernetes.io/control-plane", ""),
    ("zone", "a"),
    ("zone", "b"),
];

fn node_selector_strategy() -> impl Strategy<Value = LabelSelector> {
    use crate::policy::model::Requirement;
    let role = || NODE_LABELS[0].0.to_string();
    prop_oneof![
        Just(LabelSelector::default()),
        Just(LabelSelector {
            match_labels: Labels::from([("zone".to_string(), "a".to_string())]),
            match_expressions: vec![],
        }),
        Just(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::Exists(role())],
        }),
        Just(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::DoesNotExist(role())],
        }),
        Just(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::NotIn("zone".into(), vec!["a".into()])],
        }),
    ]
}

/// Up to four Nodes, each with some of NODE_LABELS and of NODE_PEER_ADDRS (bits).
fn nodes_strategy() -> impl Strategy<Value = Vec<Node>> {
    prop::collection::vec((any::<u8>(), any::<u8>()), 0..4).prop_map(|nodes| {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, (labels, addresses))| Node {
                name: format!("n{i}"),
                labels: NODE_LABELS
                    .iter()
                    .enumerate()
                    // Never both zones.
                    .filter(|(b, _)| labels & (1 << b) != 0 && !(*b == 2 && labels & 2 != 0))
                    .map(|(_, (k, v))| (k.to_string(), v.to_string()))
                    .collect(),
                addresses: NODE_PEER_ADDRS
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| addresses & (1 << b) != 0)
                    .map(|(_, a)| ip(a))
                    .collect(),
                origin: origin(),
            })
            .collect()
    })
}

fn cluster_rule_strategy(egress: bool) -> impl Strategy<Value = ClusterRule> {
    let peer = prop_oneof![
        cluster_selector_strategy().prop_map(ClusterPeer::Workloads),
        prop::collection::vec(0..NETWORKS.len(), 1..3).prop_map(|n| ClusterPeer::Networks(
            n.into_iter()
                .map(|i| NETWORKS[i].parse().unwrap())
                .collect()
        )),
        node_selector_strategy().prop_map(ClusterPeer::Nodes),
        prop::collection::vec(0..DOMAINS.len(), 1..3).prop_map(|d| ClusterPeer::Domains(
            d.into_iter()
                .map(|i| crate::policy::model::DomainPattern::parse(DOMAINS[i]).unwrap())
                .collect()
        )),
    ]
    .prop_filter(
        "networks, nodes and domainNames are egress peers",
        move |p| egress || matches!(p, ClusterPeer::Workloads(_)),
    );
    let action = prop_oneof![Just(Action::Accept), Just(Action::Deny), Just(Action::Pass)];
    (
        action,
        prop::collection::vec(peer, 1..3),
        prop::collection::vec(cluster_port_strategy(), 0..3),
    )
        .prop_map(|(action, peers, mut protocols)| {
            // As the parser has it: domainNames only in Accept rules, never beside a
            // named port.
            let named = peers.iter().any(|p| matches!(p, ClusterPeer::Domains(_)));
            if named {
                protocols.retain(|p| !matches!(p, ClusterPort::Named(_)));
            }
            ClusterRule {
                name: None,
                action: if named { Action::Accept } else { action },
                peers,
                protocols,
                line: 1,
            }
        })
}

fn cluster_set_strategy() -> impl Strategy<Value = PolicySet> {
    let policy = (
        any::<bool>(),
        0..3u16,
        cluster_selector_strategy(),
        prop::collection::vec(cluster_rule_strategy(false), 0..3),
        prop::collection::vec(cluster_rule_strategy(true), 0..4),
    );
    let sets = (
        set_strategy(),
        prop::collection::vec(policy, 0..5),
        nodes_strategy(),
    );
    sets.prop_map(|(mut set, policies, nodes)| {
        set.nodes = nodes;
        for (i, (admin, priority, subject, ingress, egress)) in policies.into_iter().enumerate() {
            set.cluster_policies.push(ClusterNetworkPolicy {
                // Names out of order, so that equal priorities are read by name.
                name: format!("c{}", 9 - i),
                tier: if admin { Tier::Admin } else { Tier::Baseline },
                priority,
                subject,
                ingress,
                egress,
                mode: None,
                origin: origin(),
            });
        }
        set
    })
}

/// How many cases the property runs (the report quotes it).
const CASES: u32 = 300;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]
    #[test]
    fn the_kernels_tier_lookups_decide_as_policy_tiers(set in cluster_set_strategy()) {
        let c = compile(&set, &EndpointIds::new()).unwrap();
        let map = PolicyMap::of(&c);
        let remotes: Vec<IpAddr> = ADDRS.iter().chain(&PROBE_ADDRS).chain(&NODE_ADDRS).chain(&NODE_PEER_ADDRS).map(|a| ip(a)).collect();
        let name_sets = name_sets();
        for w in set.workloads.iter().filter(|w| w.attachment.is_some()) {
            let ep = c.endpoint(&w.name).unwrap();
            for d in [Direction::Ingress, Direction::Egress] {
                for &remote in &remotes {
                    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP] {
                        for port in [53u16, 80, 85, 8050, 9000] {
                            for names in &name_sets {
                                let probe = (remote, proto, port);
                                let (verdict, passed, lookups, name_lookups) = kernel_named(&c, &map, ep, d, probe, names);
                                // Two per tier, and the NetworkPolicy tier ends the walk where it applies: at
                                // most 4 POLICY lookups (after the one IPCACHE lookup); then one per learnt
                                // name identity in each program read.
                                prop_assert!(lookups <= 4);
                                prop_assert!(name_lookups <= 2 * stagewall_common::DNS_LEARNT_IDENTITIES);
                                prop_assert_eq!(
                                    (verdict, passed),
                                    reference_named(&set, w, d, probe, names),
                                    "{} {:?} {} {:?} proto {} port {}", w.name, d, remote, names, proto, port
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One case per flattening rule.

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ml, labels: {tenant: a}}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: train, namespace: ml, labels: {app: train}}
spec: {cgroup: /ml/train, addresses: [10.1.0.1, "fd00::1"]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: db, namespace: ml, labels: {app: db}}
spec: {cgroup: /ml/db, addresses: [10.1.0.2]}
"#;

/// An Admin ClusterNetworkPolicy whose subject is the train workload, with these egress
/// rules (flow-style YAML, one a line).
fn cnp(name: &str, priority: u16, egress: &[&str]) -> String {
    let rules: String = egress.iter().map(|r| format!("    - {r}\n")).collect();
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: Admin\n  priority: {priority}\n  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: train}}}}}}}}\n  egress:\n{rules}"
    )
}

/// The compiled policies of WORKLOADS and some ClusterNetworkPolicies.
struct Case {
    set: PolicySet,
    c: Compiled,
    map: PolicyMap,
}

impl Case {
    fn new(policies: &str) -> Case {
        let set = parse(&format!("{WORKLOADS}{policies}"));
        let c = compile(&set, &EndpointIds::new()).unwrap();
        let map = PolicyMap::of(&c);
        Case { set, c, map }
    }

    fn train(&self) -> &Endpoint {
        self.c.endpoint(&name("ml", "train")).unwrap()
    }

    /// The train workload's Admin egress entries under `identity`.
    fn entries(&self, identity: u32) -> Vec<Flat> {
        let id = self.train().tiers.admin_egress;
        self.c
            .tier_entries
            .iter()
            .filter(|(e, _)| e.policy == id && e.identity == identity)
            .map(|(e, v)| {
                let ports = e.ports.map(|p| (p.value, p.bits));
                (e.protocol, ports, policy_value_action(*v))
            })
            .collect()
    }

    /// The kernel's verdicts for train's egress (remote, protocol, port), each checked
    /// against policy::tiers as well.
    fn expect(&self, packets: &[(&str, u8, u16, Verdict)]) {
        let w = self.set.workloads.iter().find(|w| w.name.name == "train");
        for (remote, proto, port, expected) in packets {
            let (remote, d) = (ip(remote), Direction::Egress);
            let (verdict, passed, _) =
                kernel(&self.c, &self.map, self.train(), d, remote, *proto, *port);
            let packet = format!("{remote} {proto}/{port}");
            assert_eq!(&verdict, expected, "{packet}");
            let reference = reference(&self.set, w.unwrap(), d, remote, *proto, *port);
            assert_eq!((verdict, passed), reference, "{packet}");
        }
    }
}

fn by(policy: &str, index: usize, action: Action) -> Verdict {
    Verdict::Cluster(policy.into(), Direction::Egress, index, action)
}

#[test]
fn overlapping_port_ranges_claim_only_what_earlier_rules_left() {
    let case = Case::new(&cnp(
        "ports",
        1,
        &[
            "{action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}]}",
            "{action: Accept, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {range: {start: 85, end: 100}}}}]}",
        ],
    ));
    // A network of every IPv4 address: written once, under "any IPv4 peer".
    let any = case.entries(IDENTITY_ANY_V4);
    let count = |lo, hi| port_prefixes(lo, hi).len();
    assert_eq!(any.len(), count(80, 90) + count(91, 100), "{any:?}");
    assert!(any.iter().all(|(p, _, _)| *p == Some(PROTO_TCP)));
    assert!(case.entries(IDENTITY_ANY_V6).is_empty());
    case.expect(&[
        ("8.8.8.8", PROTO_TCP, 85, by("ports", 0, Action::Deny)),
        ("10.1.0.2", PROTO_TCP, 90, by("ports", 0, Action::Deny)),
        ("8.8.8.8", PROTO_TCP, 91, by("ports", 1, Action::Accept)),
        ("8.8.8.8", PROTO_TCP, 101, Verdict::Default),
        ("8.8.8.8", PROTO_UDP, 85, Verdict::Default),
        ("fd00::9", PROTO_TCP, 85, Verdict::Default),
    ]);
}

#[test]
fn an_any_protocol_rule_after_ported_rules_takes_the_rest() {
    let case = Case::new(&cnp(
        "rest",
        1,
        &[
            "{action: Accept, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {number: 443}}}, {udp: {destinationPort: {number: 53}}}]}",
            "{action: Deny, to: [{networks: [0.0.0.0/0]}]}",
            "{action: Accept, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {number: 80}}}]}",
        ],
    ));
    assert_eq!(
        case.entries(IDENTITY_ANY_V4),
        vec![
            (None, None, ACTION_DENY),
            (Some(PROTO_TCP), Some((443, 16)), ACTION_ACCEPT),
            (Some(PROTO_UDP), Some((53, 16)), ACTION_ACCEPT),
        ],
        "the rule after the any-protocol one is never written"
    );
    case.expect(&[
        ("8.8.8.8", PROTO_TCP, 443, by("rest", 0, Action::Accept)),
        ("8.8.8.8", PROTO_UDP, 53, by("rest", 0, Action::Accept)),
        ("8.8.8.8", PROTO_TCP, 80, by("rest", 1, Action::Deny)),
        ("8.8.8.8", PROTO_ICMP, 0, by("rest", 1, Action::Deny)),
    ]);
}

impl Case {
    /// `expect` for destinations the train workload's DNS answers gave `names` for.
    fn expect_named(&self, packets: &[(&str, &[&str], u16, Verdict)]) {
        let w = self.set.workloads.iter().find(|w| w.name.name == "train");
        for (remote, names, port, expected) in packets {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let (probe, d) = ((ip(remote), PROTO_TCP, *port), Direction::Egress);
            let (verdict, passed, _, _) =
                kernel_named(&self.c, &self.map, self.train(), d, probe, &names);
            let packet = format!("{remote} {names:?} tcp/{port}");
            assert_eq!(&verdict, expected, "{packet}");
            let reference = reference_named(&self.set, w.unwrap(), d, probe, &names);
            assert_eq!((verdict, passed), reference, "{packet}");
        }
    }
}

#[test]
fn a_name_accept_wins_only_where_no_earlier_rule_matches_the_address() {
    let pypi = crate::policy::model::DomainPattern::parse("pypi.org").unwrap();
    let hosted = crate::policy::model::DomainPattern::parse("*.pythonhosted.org").unwrap();
    let case = Case::new(&format!(
        "{}{}",
        cnp(
            "first",
            1,
            &[
                "{action: Pass, to: [{networks: [10.9.0.0/16]}]}",
                "{action: Accept, to: [{domainNames: [pypi.org, '*.pythonhosted.org']}], protocols: [{tcp: {destinationPort: {number: 443}}}]}",
                "{action: Deny, to: [{networks: [8.8.0.0/16]}]}",
            ],
        ),
        cnp(
            "then",
            2,
            &[
                "{action: Accept, to: [{domainNames: [pypi.org]}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 443}}}}]}",
                "{action: Deny, to: [{networks: [0.0.0.0/0]}]}",
            ],
        ),
    ));
    let train = case.train();
    assert_ne!(train.flags & EP_NAME_RULES, 0);
    assert!(case.c.names.has_name_rules(train.endpoint_id));
    // The name identities' partitions: each its own domainNames rules, in order.
    assert_eq!(
        case.entries(hosted.identity()),
        vec![(Some(PROTO_TCP), Some((443, 16)), ACTION_ACCEPT)]
    );
    let pypi_entries = case.entries(pypi.identity());
    // 443 is the first rule's; the second claims only what is left of 80-443.
    assert_eq!(
        pypi_entries.len(),
        1 + port_prefixes(80, 442).len(),
        "{pypi_entries:?}"
    );
    // References are monotone in precedence within the program: "first"'s rules, then
    // "then"'s, each in the order written.
    let rules = &case.c.tier_rules;
    let order = |r: &TierRule| (r.policy != "first", r.index);
    let refs: Vec<usize> = (0..rules.len()).collect();
    assert!(
        refs.windows(2)
            .all(|w| order(&rules[w[0]]) < order(&rules[w[1]])),
        "{rules:?}"
    );
    case.expect_named(&[
        // The address names no earlier rule: the name's Accept.
        (
            "8.1.0.1",
            &["pypi.org"],
            443,
            by("first", 1, Action::Accept),
        ),
        (
            "8.1.0.1",
            &["x.files.PythonHosted.org."],
            443,
            by("first", 1, Action::Accept),
        ),
        // A later rule of the same name, on another port.
        ("8.1.0.1", &["pypi.org"], 80, by("then", 0, Action::Accept)),
        // Not a name a rule holds, or none learnt: the address decides.
        (
            "8.1.0.1",
            &["pythonhosted.org"],
            443,
            by("then", 1, Action::Deny),
        ),
        ("8.1.0.1", &[], 443, by("then", 1, Action::Deny)),
        // The name's Accept comes before the Deny by address.
        (
            "8.8.8.8",
            &["pypi.org"],
            443,
            by("first", 1, Action::Accept),
        ),
        ("8.8.8.8", &["pypi.org"], 80, by("first", 2, Action::Deny)),
        // A Pass by address before the name's Accept hides it: the tier is passed on.
        ("10.9.0.1", &["pypi.org"], 443, Verdict::Default),
    ]);
}

#[test]
fn pass_hides_the_later_rules_of_its_tier() {
    let case = Case::new(&format!(
        "{}{}",
        cnp(
            "deny-all",
            2,
            &["{action: Deny, to: [{networks: [0.0.0.0/0, \"::/0\"]}]}"]
        ),
        cnp(
            "pass-db",
            1,
            &[
                "{action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}"
            ],
        ),
    ));
    let db = case.c.identities.lookup(ip("10.1.0.2"));
    assert_eq!(
        case.entries(db),
        vec![
            (None, None, ACTION_DENY),
            (Some(PROTO_TCP), Some((5432, 16)), ACTION_PASS)
        ],
        "db's own partition: the Pass, then the any-peer Deny in its place"
    );
    case.expect(&[
        // Passed on: no NetworkPolicy isolates train, no Baseline rule holds it.
        ("10.1.0.2", PROTO_TCP, 5432, Verdict::Default),
        ("10.1.0.2", PROTO_TCP, 5433, by("deny-all", 0, Action::Deny)),
        ("8.8.8.8", PROTO_TCP, 5432, by("deny-all", 0, Action::Deny)),
        ("fd00::9", PROTO_UDP, 53, by("deny-all", 0, Action::Deny)),
    ]);
}

#[test]
fn identities_get_entries_of_their_own_only_where_a_rule_names_them() {
    let case = Case::new(&cnp(
        "mixed",
        1,
        &[
            "{action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {number: 22}}}]}",
            "{action: Accept, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}]}",
            "{action: Deny, to: [{networks: [10.1.0.0/16]}]}",
        ],
    ));
    let ssh = (Some(PROTO_TCP), Some((22, 16)), ACTION_DENY);
    let lookup = |a| case.c.identities.lookup(ip(a));
    // The any-peer partition holds the any-peer rule alone.
    assert_eq!(case.entries(IDENTITY_ANY_V4), vec![ssh]);
    // World is named by no other rule: the fallback decides for it.
    assert!(case.entries(stagewall_common::IDENTITY_WORLD_V4).is_empty());
    // db and the /16 have their whole partitions, the any-peer rule in its place.
    assert_eq!(
        case.entries(lookup("10.1.0.2")),
        vec![(None, None, ACTION_ACCEPT), ssh]
    );
    assert_eq!(
        case.entries(lookup("10.1.9.9")),
        vec![(None, None, ACTION_DENY), ssh]
    );
    case.expect(&[
        ("10.1.0.2", PROTO_TCP, 22, by("mixed", 0, Action::Deny)),
        ("10.1.0.2", PROTO_TCP, 5432, by("mixed", 1, Action::Accept)),
        ("10.1.9.9", PROTO_TCP, 80, by("mixed", 2, Action::Deny)),
        ("8.8.8.8", PROTO_TCP, 22, by("mixed", 0, Action::Deny)),
        ("8.8.8.8", PROTO_TCP, 80, Verdict::Default),
        // No rule names an IPv6 peer.
        ("fd00::9", PROTO_TCP, 22, Verdict::Default),
    ]);
}

#[test]
fn endpoints_with_the_same_program_share_its_id_and_others_have_none() {
    let deny = "{action: Deny, to: [{networks: [0.0.0.0/0]}]}";
    // The same rule for train and, through a second policy, for db too.
    let for_db = cnp("db", 2, &[deny]).replace("app: train", "app: db");
    let case = Case::new(&format!("{}{for_db}", cnp("train", 1, &[deny])));
    let train = case.train();
    let db = case.c.endpoint(&name("ml", "db")).unwrap();
    assert_ne!(train.tiers.admin_egress, 0);
    assert_eq!(
        TierIds {
            admin_egress: 0,
            ..train.tiers
        },
        TierIds::default(),
        "no ingress rules, no Baseline policy"
    );
    // Their programs differ in the rule they name: each has its own.
    assert_ne!(db.tiers.admin_egress, train.tiers.admin_egress);
    // A third workload in train's subject shares train's program.
    let mut set = case.set.clone();
    let mut twin = set
        .workloads
        .iter()
        .find(|w| w.name.name == "train")
        .unwrap()
        .clone();
    twin.name = name("ml", "train-2");
    twin.addresses = vec![ip("10.1.0.7")];
    twin.attachment = Some(Attachment::Cgroup("/ml/train-2".into()));
    set.workloads.push(twin);
    let c = compile(&set, &EndpointIds::new()).unwrap();
    let ids = |n| c.endpoint(&name("ml", n)).unwrap().tiers;
    assert_eq!(ids("train"), ids("train-2"));
    // Tier ids come from the NetworkPolicy ids' counter: no clash with them, and every
    // rule is in the table once, in reading order.
    assert!(
        c.policy
            .iter()
            .all(|e| e.policy != ids("train").admin_egress)
    );
    let table: Vec<&str> = c.tier_rules.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(table, ["train", "db"]);
}

/// The property is not vacuous: over sets drawn as it draws them, every way of deciding
/// occurs (each action of both tiers, Pass, the NetworkPolicy tier, the default), and
/// both lookups of a tier decide some packets.
#[test]
fn the_propertys_sets_reach_every_kind_of_verdict() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = cluster_set_strategy();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..120 {
        let set = strategy.new_tree(&mut runner).unwrap().current();
        let c = compile(&set, &EndpointIds::new()).unwrap();
        let map = PolicyMap::of(&c);
        for w in set.workloads.iter().filter(|w| w.attachment.is_some()) {
            let ep = c.endpoint(&w.name).unwrap();
            for d in [Direction::Ingress, Direction::Egress] {
                let remotes = ADDRS.iter().chain(&PROBE_ADDRS).chain(&NODE_PEER_ADDRS);
                for remote in remotes.map(|a| ip(a)) {
                    for (proto, port) in [(PROTO_TCP, 80), (PROTO_UDP, 53), (PROTO_ICMP, 0)] {
                        let (verdict, passed, lookups) =
                            kernel(&c, &map, ep, d, remote, proto, port);
                        let kind = match verdict {
                            Verdict::Cluster(policy, d, index, action) => {
                                let p = set.cluster_policies.iter().find(|p| p.name == policy);
                                let tier = p.unwrap().tier;
                                // Decided by a nodes peer (no other peer of the rule holds
                                // the remote)?
                                let rule = &p.unwrap().rules(d)[index];
                                let only_nodes = rule.peers.iter().all(|peer| match peer {
                                    ClusterPeer::Nodes(_) => true,
                                    ClusterPeer::Networks(n) => {
                                        !n.iter().any(|n| n.contains(&remote))
                                    }
                                    ClusterPeer::Workloads(_) => {
                                        semantics::owner(&set, remote).is_none()
                                    }
                                    // No names are learnt here.
                                    ClusterPeer::Domains(_) => true,
                                });
                                if only_nodes {
                                    *seen
                                        .entry(format!("{action:?} by a nodes peer"))
                                        .or_default() += 1;
                                }
                                // Decided under the peer's identity or the fallback?
                                let id = ep.tiers.get(tier, d);
                                let own = map.0.contains_key(&(id, c.identities.lookup(remote)));
                                let by = if own { "identity" } else { "any peer" };
                                *seen.entry(format!("{tier:?} by {by}")).or_default() += 1;
                                format!("{tier:?} {action:?}")
                            }
                            other => format!("{other:?}"),
                        };
                        *seen.entry(kind).or_default() += 1;
                        if !passed.is_empty() {
                            *seen.entry("passed".into()).or_default() += 1;
                        }
                        *seen.entry(format!("{lookups} lookups")).or_default() += 1;
                    }
                }
            }
        }
    }
    for kind in [
        "Admin Accept",
        "Admin Deny",
        "Baseline Accept",
        "Baseline Deny",
        "Admin by identity",
        "Admin by any peer",
        "Baseline by identity",
        "Baseline by any peer",
        "NetworkPolicy(true)",
        "NetworkPolicy(false)",
        "Default",
        "SelfTraffic",
        "passed",
        "Accept by a nodes peer",
        "Deny by a nodes peer",
        "2 lookups",
        "4 lookups",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "{kind} never: {seen:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// NetworkPolicy entry sets reused from the last compile leave the tier programs and
    /// their ids as a fresh compile has them, a ClusterNetworkPolicy removed or not.
    #[test]
    fn a_compile_reusing_the_last_ones_entries_has_the_fresh_ones_tiers(set in cluster_set_strategy()) {
        let mut cache = CompileCache::default();
        let ids = compile_with(&set, &EndpointIds::new(), &mut cache).unwrap().endpoint_ids();
        let mut changed = set.clone();
        changed.cluster_policies.pop();
        // A node gone changes what nodes peers select.
        let mut fewer_nodes = set.clone();
        fewer_nodes.nodes.pop();
        for next in [&changed, &set, &fewer_nodes, &set] {
            let reused = compile_with(next, &ids, &mut cache).unwrap();
            let fresh = compile(next, &ids).unwrap();
            prop_assert_eq!(&reused.endpoints, &fresh.endpoints);
            prop_assert_eq!(&reused.policy, &fresh.policy);
            prop_assert_eq!(&reused.tier_entries, &fresh.tier_entries);
            prop_assert_eq!(&reused.tier_rules, &fresh.tier_rules);
        }
    }
}

/// A ClusterNetworkPolicy in audit mode is in no enforced program: only in the shadow
/// ones, which the kernel reads for the directions the EP_SHADOW_* flags name. It audits
/// nothing else: the NetworkPolicy audit flags stay off, and the tiers' audit flags are
/// the namespace's alone.
#[test]
fn an_audited_cluster_network_policy_is_only_in_the_shadow_programs() {
    use stagewall_common::{
        EP_AUDIT_EGRESS, EP_SHADOW_EGRESS, EP_SHADOW_INGRESS, EP_TIERS_AUDIT_EGRESS,
    };
    let deny = "{action: Deny, to: [{networks: [10.2.0.0/16]}]}";
    let enforced = cnp("enforced", 1, &[deny]);
    let audited = cnp(
        "trial",
        2,
        &["{action: Deny, to: [{networks: [10.3.0.0/16]}]}"],
    )
    .replace(
        "metadata: {name: trial}",
        "metadata: {name: trial, annotations: {stagewall.io/mode: audit}}",
    );
    let alone = Case::new(&enforced);
    let case = Case::new(&format!("{enforced}{audited}"));
    let train = case.train();
    // The enforced program is the one without the trial: the same entries, naming the
    // same rules.
    let program = |c: &Compiled, id: u32| {
        c.tier_entries
            .iter()
            .filter(|(e, _)| e.policy == id)
            .map(|(e, v)| {
                let rule = c.tier_rule(0, policy_value_rule(*v)).unwrap();
                (
                    e.identity,
                    e.protocol,
                    e.ports,
                    rule.policy.clone(),
                    rule.action,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        program(&case.c, train.tiers.admin_egress),
        program(&alone.c, alone.train().tiers.admin_egress)
    );
    assert_ne!(train.shadow_tiers.admin_egress, 0);
    assert_ne!(train.shadow_tiers.admin_egress, train.tiers.admin_egress);
    assert_eq!(train.flags & EP_SHADOW_EGRESS, EP_SHADOW_EGRESS);
    assert_eq!(train.flags & EP_SHADOW_INGRESS, 0, "no ingress rules");
    assert_eq!(
        train.flags & (EP_AUDIT_EGRESS | EP_TIERS_AUDIT_EGRESS),
        0,
        "nothing else is audited"
    );
    let trial_rule = case
        .c
        .tier_entries
        .iter()
        .filter(|(e, _)| e.policy == train.shadow_tiers.admin_egress)
        .map(|(_, v)| {
            case.c
                .tier_rule(0, policy_value_rule(*v))
                .unwrap()
                .policy
                .clone()
        })
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        trial_rule,
        ["enforced".to_string(), "trial".to_string()].into(),
        "the shadow has both"
    );
    // Without an audited policy there is no shadow.
    assert_eq!(alone.train().shadow_tiers, TierIds::default());
    assert_eq!(alone.train().flags & EP_SHADOW_EGRESS, 0);
}
