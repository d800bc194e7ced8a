//! Compiler tests: hand-written cases, and a property test that the compiled maps give the
//! same verdict as a direct reading of the Kubernetes NetworkPolicy rules.

use std::net::IpAddr;

use proptest::prelude::*;
use stagewall_common::{
    EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, IDENTITY_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use super::*;
use crate::policy::{
    model::{
        LabelSelector, Labels, NamedPort, Origin, Peer, PortMatch, PortSpec, Protocol, Requirement,
        Rule,
    },
    parse::parse_into,
};

impl PolicyEntry {
    fn matches(&self, identity: u32, protocol: u8, port: u16) -> bool {
        (self.identity == identity || self.identity == IDENTITY_ANY)
            && self.protocol.is_none_or(|p| p == protocol)
            && self.ports.is_none_or(|ports| ports.contains(port))
    }
}

impl Compiled {
    /// The verdict the kernel reaches for a first packet (not a reply) of `endpoint` in
    /// `direction` with a remote address, protocol and destination port: the same lookups
    /// as the kernel programs, over the compiled contents.
    pub fn allows(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
        remote: std::net::IpAddr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let (flag, policy) = match direction {
            Direction::Ingress => (EP_ISOLATED_INGRESS, endpoint.ingress_policy_id),
            Direction::Egress => (EP_ISOLATED_EGRESS, endpoint.egress_policy_id),
        };
        if endpoint.flags & flag == 0 || endpoint.addresses.contains(&remote) {
            return true;
        }
        let identity = self.identities.lookup(remote);
        // The node reaches its pods whatever their ingress policy says (as the kernel).
        if direction == Direction::Ingress && stagewall_common::is_node_identity(identity) {
            return true;
        }
        self.policy
            .iter()
            .filter(|e| e.policy == policy && e.direction == direction)
            .any(|e| e.matches(identity, protocol, port))
    }

    /// `allows`, for a destination the workload's DNS answers gave `names` for: as the
    /// kernel, when the address lookups miss on egress of an endpoint with
    /// EP_NAME_RULES, each name identity learnt for the address (what the proxy got from
    /// `names.identities_for`, at most DNS_LEARNT_IDENTITIES) is looked up exactly, and
    /// any hit allows.
    pub fn allows_named(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
        remote: std::net::IpAddr,
        protocol: u8,
        port: u16,
        names: &[String],
    ) -> bool {
        if self.allows(endpoint, direction, remote, protocol, port) {
            return true;
        }
        if direction != Direction::Egress || endpoint.flags & EP_NAME_RULES == 0 {
            return false;
        }
        let learnt = learnt_identities(self, endpoint, names);
        self.policy.iter().any(|e| {
            e.policy == endpoint.egress_policy_id
                && e.direction == direction
                && learnt.contains(&e.identity)
                && e.protocol.is_none_or(|p| p == protocol)
                && e.ports.is_none_or(|ports| ports.contains(port))
        })
    }
}

/// The name identities the DNS proxy would learn for an address the workload's DNS
/// answers gave `names` for (each name's, in order, without repeats), at most
/// DNS_LEARNT_IDENTITIES as DNS_LEARNT holds them.
pub(super) fn learnt_identities(c: &Compiled, endpoint: &Endpoint, names: &[String]) -> Vec<u32> {
    let mut learnt: Vec<u32> = Vec::new();
    for name in names {
        for id in c.names.identities_for(endpoint.endpoint_id, name) {
            if !learnt.contains(&id) {
                learnt.push(id);
            }
        }
    }
    assert!(
        learnt.len() <= stagewall_common::DNS_LEARNT_IDENTITIES,
        "the test's names learn more identities than the kernel keeps: {learnt:?}"
    );
    learnt
}

/// Patterns the generated rules name, and the names DNS answers may give for an address
/// (none; one each pattern matches; a mix of case, trailing dot and a name no pattern
/// matches). At most four identities are learnt for any of them.
pub(super) const DOMAINS: [&str; 3] = ["pypi.org", "*.pythonhosted.org", "*.example.com"];
pub(super) const NAME_SETS: [&[&str]; 6] = [
    &[],
    &["pypi.org"],
    &["files.pythonhosted.org"],
    &["PYPI.ORG.", "a.b.example.com"],
    &["pythonhosted.org", "example.com"],
    &["other.org"],
];

pub(super) fn name_sets() -> Vec<Vec<String>> {
    NAME_SETS
        .iter()
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .collect()
}

pub(super) fn parse(yaml: &str) -> PolicySet {
    let mut set = PolicySet::default();
    parse_into(std::path::Path::new("test.yaml"), yaml, &mut set).expect("valid yaml");
    set
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn name(ns: &str, n: &str) -> ObjectName {
    ObjectName {
        namespace: ns.into(),
        name: n.into(),
    }
}

const PIPELINE: &str = r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: ingest, namespace: ml, labels: {stage: ingestion}}
spec: {cgroup: /ml/ingest, addresses: [10.1.0.1, "fd00::1"]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: validate, namespace: ml, labels: {stage: validation}}
spec: {cgroup: /ml/validate, addresses: [10.1.0.2, "fd00::2"]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: other, namespace: ml, labels: {stage: other}}
spec: {interface: veth-other, addresses: [10.1.0.3]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: validate-ingress, namespace: ml}
spec:
  podSelector: {matchLabels: {stage: validation}}
  ingress:
    - from: [{podSelector: {matchLabels: {stage: ingestion}}}]
      ports: [{port: 9090}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingest-egress, namespace: ml}
spec:
  podSelector: {matchLabels: {stage: ingestion}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {stage: validation}}}]
      ports: [{port: 9090, protocol: TCP}]
    - to: [{ipBlock: {cidr: 151.101.0.0/16, except: [151.101.64.0/18]}}]
      ports: [{port: 443}]
    - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
      ports: [{port: 8000, endPort: 8100, protocol: UDP}]
"#;

#[test]
fn pipeline_verdicts() {
    let set = parse(PIPELINE);
    let c = compile(&set, &EndpointIds::new()).unwrap();
    let ingest = c.endpoint(&name("ml", "ingest")).unwrap();
    let validate = c.endpoint(&name("ml", "validate")).unwrap();
    let other = c.endpoint(&name("ml", "other")).unwrap();

    // ingestion -> validation:9090/TCP, both sides.
    assert!(c.allows(ingest, Direction::Egress, ip("10.1.0.2"), PROTO_TCP, 9090));
    assert!(c.allows(
        validate,
        Direction::Ingress,
        ip("10.1.0.1"),
        PROTO_TCP,
        9090
    ));
    assert!(c.allows(ingest, Direction::Egress, ip("fd00::2"), PROTO_TCP, 9090));
    assert!(!c.allows(ingest, Direction::Egress, ip("10.1.0.2"), PROTO_TCP, 9091));
    assert!(!c.allows(ingest, Direction::Egress, ip("10.1.0.2"), PROTO_UDP, 9090));
    assert!(!c.allows(
        validate,
        Direction::Ingress,
        ip("10.1.0.3"),
        PROTO_TCP,
        9090
    ));
    // Ingest's ingress is not isolated (its only policy has policyTypes: [Egress]).
    assert_eq!(ingest.flags & EP_ISOLATED_INGRESS, 0);
    assert!(c.allows(ingest, Direction::Ingress, ip("192.0.2.1"), PROTO_TCP, 1));
    // Validation's egress is not isolated.
    assert!(c.allows(validate, Direction::Egress, ip("192.0.2.1"), PROTO_TCP, 1));
    // ipBlock with except.
    assert!(c.allows(ingest, Direction::Egress, ip("151.101.1.1"), PROTO_TCP, 443));
    assert!(!c.allows(
        ingest,
        Direction::Egress,
        ip("151.101.64.1"),
        PROTO_TCP,
        443
    ));
    assert!(!c.allows(ingest, Direction::Egress, ip("151.102.0.1"), PROTO_TCP, 443));
    // endPort range, and a workload inside the block is in the block.
    assert!(c.allows(ingest, Direction::Egress, ip("10.9.9.9"), PROTO_UDP, 8000));
    assert!(c.allows(ingest, Direction::Egress, ip("10.9.9.9"), PROTO_UDP, 8100));
    assert!(!c.allows(ingest, Direction::Egress, ip("10.9.9.9"), PROTO_UDP, 8101));
    assert!(c.allows(ingest, Direction::Egress, ip("10.1.0.3"), PROTO_UDP, 8050));
    // A workload no policy selects is open.
    assert_eq!(other.flags, 0);
    assert!(c.allows(other, Direction::Ingress, ip("192.0.2.1"), PROTO_ICMP, 0));
}

#[test]
fn ingress_empty_list_denies_all_and_empty_rule_allows_all() {
    let set = parse(
        r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: a, namespace: ns}
spec: {cgroup: /a, addresses: [10.0.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: b, namespace: ns, labels: {open: "yes"}}
spec: {cgroup: /b, addresses: [10.0.0.2]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: ns}
spec: {podSelector: {}, ingress: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-to-b, namespace: ns}
spec:
  podSelector: {matchLabels: {open: "yes"}}
  ingress: [{}]
"#,
    );
    let c = compile(&set, &EndpointIds::new()).unwrap();
    let a = c.endpoint(&name("ns", "a")).unwrap();
    let b = c.endpoint(&name("ns", "b")).unwrap();
    assert!(!c.allows(a, Direction::Ingress, ip("10.0.0.2"), PROTO_TCP, 80));
    assert!(!c.allows(a, Direction::Ingress, ip("8.8.8.8"), PROTO_ICMP, 0));
    assert!(c.allows(b, Direction::Ingress, ip("10.0.0.1"), PROTO_TCP, 80));
    assert!(c.allows(b, Direction::Ingress, ip("8.8.8.8"), PROTO_ICMP, 0));
    assert!(c.allows(b, Direction::Ingress, ip("2001:db8::1"), PROTO_UDP, 53));
    // Egress is not isolated by a policy with only an ingress section.
    assert!(c.allows(a, Direction::Egress, ip("8.8.8.8"), PROTO_TCP, 443));
}

#[test]
fn equal_rule_sets_share_a_policy_id() {
    let mut yaml = String::new();
    for i in 0..20 {
        yaml.push_str(&format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: w{i}, namespace: ns, labels: {{app: worker}}}}\nspec: {{cgroup: /w{i}, addresses: [10.0.1.{i}]}}\n---\n"
        ));
    }
    yaml.push_str(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: workers, namespace: ns}\nspec:\n  podSelector: {matchLabels: {app: worker}}\n  ingress:\n    - from: [{podSelector: {matchLabels: {app: worker}}}]\n      ports: [{port: 2222}, {port: 8888}]\n",
    );
    let c = compile(&parse(&yaml), &EndpointIds::new()).unwrap();
    let ids: BTreeSet<u32> = c.endpoints.iter().map(|e| e.ingress_policy_id).collect();
    assert_eq!(ids.len(), 1);
    // 20 workers share one identity: 1 identity x 2 ports.
    assert_eq!(c.policy.len(), 2);
}

#[test]
fn port_ranges_do_not_blow_up() {
    let set = parse(
        r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: a, namespace: ns}
spec: {cgroup: /a, addresses: [10.0.0.1]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wide, namespace: ns}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 1, endPort: 65534}]}]
"#,
    );
    let c = compile(&set, &EndpointIds::new()).unwrap();
    assert_eq!(c.policy.len(), 30);
    let a = c.endpoint(&name("ns", "a")).unwrap();
    assert!(c.allows(a, Direction::Ingress, ip("1.2.3.4"), PROTO_TCP, 1));
    assert!(c.allows(a, Direction::Ingress, ip("1.2.3.4"), PROTO_TCP, 40000));
    assert!(!c.allows(a, Direction::Ingress, ip("1.2.3.4"), PROTO_TCP, 65535));
}

#[test]
fn workloads_keep_their_endpoint_ids_across_recompilation() {
    let w = |name: &str, addr: &str| {
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{cgroup: /{name}, addresses: [{addr}]}}\n---\n"
        )
    };
    let first = compile(
        &parse(&(w("b", "10.0.0.2") + &w("c", "10.0.0.3"))),
        &EndpointIds::new(),
    )
    .unwrap();
    let ids = first.endpoint_ids();
    // "a" sorts before the others and is new: it must not take their ids.
    let second = compile(
        &parse(&(w("a", "10.0.0.1") + &w("b", "10.0.0.2") + &w("c", "10.0.0.3"))),
        &ids,
    )
    .unwrap();
    let second_ids = second.endpoint_ids();
    assert_eq!(second_ids[&name("ns", "b")], ids[&name("ns", "b")]);
    assert_eq!(second_ids[&name("ns", "c")], ids[&name("ns", "c")]);
    let unique: BTreeSet<u32> = second_ids.values().copied().collect();
    assert_eq!(unique.len(), 3);
}

/// The example pipeline written with the Pipeline kind enforces exactly what its plain
/// NetworkPolicy version does: every workload, direction, peer, protocol and port.
#[test]
fn pipeline_kind_compiles_to_the_same_verdicts_as_its_networkpolicy_version() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let load = |policy: &str| {
        let files = [
            "policies/ml-pipeline/workloads.yaml",
            "policies/ml-pipeline/namespace.yaml",
            policy,
        ]
        .map(|f| root.join(f));
        crate::policy::parse::load_files(&files, &mut Default::default())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let pipeline_set = load("policies/ml-pipeline/pipeline.yaml");
    let reference_set = load("tests/data/ml-pipeline-networkpolicies.yaml");
    assert_eq!(pipeline_set.pipelines.len(), 1);
    assert!(reference_set.pipelines.is_empty());
    let (pipeline, reference) = (
        compile(&pipeline_set, &EndpointIds::new()).unwrap(),
        compile(&reference_set, &EndpointIds::new()).unwrap(),
    );
    let mut remotes: Vec<IpAddr> = pipeline_set
        .workloads
        .iter()
        .flat_map(|w| w.addresses.clone())
        .collect();
    remotes.extend(
        [
            "203.0.113.5",
            "203.0.114.5",
            "151.101.7.7",
            "151.102.0.1",
            "10.1.2.3",
            "8.8.8.8",
            "2001:db8::1",
        ]
        .map(ip),
    );
    let ports = [22, 443, 2222, 8080, 8500, 8501, 8502, 8888, 9090];
    let mut checked = 0;
    let mut allowed = 0;
    for w in pipeline_set
        .workloads
        .iter()
        .filter(|w| w.attachment.is_some())
    {
        let (a, b) = (
            pipeline.endpoint(&w.name).unwrap(),
            reference.endpoint(&w.name).unwrap(),
        );
        for direction in [Direction::Ingress, Direction::Egress] {
            for &remote in &remotes {
                for protocol in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
                    for port in ports {
                        let verdict = pipeline.allows(a, direction, remote, protocol, port);
                        assert_eq!(
                            verdict,
                            reference.allows(b, direction, remote, protocol, port),
                            "{} {direction:?} {remote} {protocol}/{port}",
                            w.name
                        );
                        checked += 1;
                        allowed += usize::from(verdict);
                    }
                }
            }
        }
    }
    // Both verdicts occur, so the comparison is not vacuous.
    assert!(
        checked > 5000 && allowed > 100 && allowed < checked / 2,
        "{allowed}/{checked}"
    );
}

// ---------------------------------------------------------------------------------------------
// Property: compiled verdicts equal the NetworkPolicy rules read directly.

fn reference_allows(
    set: &PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    crate::policy::semantics::decide(set, local, direction, remote, protocol, port).allowed()
}

fn reference_allows_named(
    set: &PolicySet,
    local: &Workload,
    direction: Direction,
    remote: IpAddr,
    (protocol, port): (u8, u16),
    names: &[String],
) -> bool {
    crate::policy::semantics::decide_named(set, local, direction, remote, protocol, port, names)
        .allowed()
}

pub(super) fn origin() -> Origin {
    Origin {
        file: "generated".into(),
        line: 1,
    }
}

const NAMESPACES: [&str; 2] = ["a", "b"];
pub(super) const APPS: [&str; 3] = ["web", "db", "train"];
pub(super) const ADDRS: [&str; 8] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.5",
    "10.0.0.6",
    "10.0.1.9",
    "192.168.0.1",
    "fd00::1",
    "fd00::2",
];
pub(super) const BLOCKS: [(&str, &[&str]); 7] = [
    ("10.0.0.0/29", &["10.0.0.4/30"]),
    ("10.0.0.0/16", &[]),
    // The same CIDR with other exceptions (nested ones too): a rule's blocks are
    // selected together, per CIDR.
    ("10.0.0.0/16", &["10.0.7.0/24"]),
    ("10.0.0.0/16", &["10.0.0.0/24", "10.0.0.0/29"]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("10.0.0.6/32", &[]),
    ("fd00::/64", &["fd00::2/128"]),
];
pub(super) const PROBE_ADDRS: [&str; 4] = ["10.0.0.3", "10.0.7.7", "8.8.8.8", "fd00::9"];
/// Addresses a generated node may have: inside and outside the blocks, IPv4 and IPv6, and
/// one a workload may own too (the workload's then).
pub(super) const NODE_ADDRS: [&str; 4] = ["10.0.7.7", "8.8.8.8", "fd00::9", "10.0.0.1"];

pub(super) fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::default()),
        (0..APPS.len()).prop_map(|i| LabelSelector {
            match_labels: Labels::from([("app".to_string(), APPS[i].to_string())]),
            match_expressions: vec![],
        }),
        (0..APPS.len()).prop_map(|i| LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::NotIn("app".into(), vec![APPS[i].into()])],
        }),
        Just(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::Exists("tier".into())],
        }),
    ]
}

fn peer_strategy() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (0..BLOCKS.len()).prop_map(|i| Peer::IpBlock {
            cidr: BLOCKS[i].0.parse().unwrap(),
            except: BLOCKS[i].1.iter().map(|e| e.parse().unwrap()).collect(),
        }),
        (
            proptest::option::of(selector_strategy()),
            proptest::option::of(selector_strategy())
        )
            .prop_filter("a peer needs a selector", |(n, p)| n.is_some()
                || p.is_some())
            .prop_map(|(namespace_selector, pod_selector)| Peer::Workloads {
                namespace_selector,
                pod_selector,
            }),
        (0..DOMAINS.len()).prop_map(|i| Peer::Domain(
            crate::policy::model::DomainPattern::parse(DOMAINS[i]).unwrap()
        )),
    ]
}

fn port_strategy() -> impl Strategy<Value = PortSpec> {
    let spec = |protocol, port| PortSpec { protocol, port };
    prop_oneof![
        Just(spec(Protocol::Tcp, PortMatch::Range(80, 80))),
        Just(spec(Protocol::Udp, PortMatch::Range(53, 53))),
        Just(spec(Protocol::Tcp, PortMatch::Range(8000, 8100))),
        Just(spec(Protocol::Udp, PortMatch::All)),
        Just(spec(Protocol::Tcp, PortMatch::Named("web".into()))),
        Just(spec(Protocol::Udp, PortMatch::Named("dns".into()))),
        Just(spec(Protocol::Udp, PortMatch::Named("web".into()))),
    ]
}

/// Declared ports: "web" is TCP 80 on some workloads and TCP 8050 on others.
fn named_ports(choice: u8) -> Vec<NamedPort> {
    let web = |port| NamedPort {
        name: "web".into(),
        protocol: Protocol::Tcp,
        port,
    };
    let dns = NamedPort {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 53,
    };
    match choice % 4 {
        0 => vec![],
        1 => vec![web(80)],
        2 => vec![web(8050), dns],
        _ => vec![dns],
    }
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer_strategy(), 0..3),
        prop::collection::vec(port_strategy(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule {
            peers,
            ports,
            line: 1,
        })
}

pub(super) fn set_strategy() -> impl Strategy<Value = PolicySet> {
    let workloads = prop::collection::vec(
        (
            0..NAMESPACES.len(),
            0..APPS.len(),
            any::<bool>(),
            any::<bool>(),
            any::<u8>(),
        ),
        1..6,
    );
    let policies = prop::collection::vec(
        (
            0..NAMESPACES.len(),
            selector_strategy(),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(rule_strategy(), 0..3),
            prop::collection::vec(rule_strategy(), 0..3),
        ),
        0..4,
    );
    let team = any::<bool>();
    // Which of NODE_ADDRS are this node's (bits).
    let node = any::<u8>();
    (workloads, policies, team, node).prop_map(|(workloads, policies, team, node)| {
        let mut set = PolicySet::default();
        set.namespaces.push(crate::policy::model::Namespace {
            name: "a".into(),
            labels: Labels::from([("team".into(), if team { "x" } else { "y" }.into())]),
            fail_mode: None,
            mode: None,
            origin: origin(),
        });
        for (i, (ns, app, tier, local, ports)) in workloads.into_iter().enumerate() {
            let mut labels = Labels::from([("app".to_string(), APPS[app].to_string())]);
            if tier {
                labels.insert("tier".into(), "1".into());
            }
            set.workloads.push(Workload {
                name: name(NAMESPACES[ns], &format!("w{i}")),
                labels,
                attachment: local.then(|| Attachment::Cgroup(format!("/w{i}"))),
                backstop: None,
                addresses: vec![ip(ADDRS[i]), ip(ADDRS[i + 1 + (i % 2)])],
                ports: named_ports(ports),
                fail_mode: None,
                origin: origin(),
            });
        }
        // Each address belongs to one workload.
        let mut seen = BTreeSet::new();
        for w in &mut set.workloads {
            w.addresses.retain(|a| seen.insert(*a));
        }
        set.node_addresses = NODE_ADDRS
            .iter()
            .enumerate()
            .filter(|(i, _)| node & (1 << i) != 0)
            .map(|(_, a)| ip(a))
            .collect();
        for (i, (ns, selector, ingress, egress, irules, erules)) in policies.into_iter().enumerate()
        {
            set.policies.push(NetworkPolicy {
                name: name(NAMESPACES[ns], &format!("p{i}")),
                pod_selector: selector,
                ingress_isolates: ingress || !egress,
                egress_isolates: egress,
                ingress: irules,
                egress: erules,
                mode: None,
                origin: origin(),
            });
        }
        set
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn compiled_verdicts_match_networkpolicy_semantics(set in set_strategy()) {
        let c = compile(&set, &EndpointIds::new()).unwrap();
        let remotes: Vec<IpAddr> = ADDRS.iter().chain(PROBE_ADDRS.iter()).map(|a| ip(a)).collect();
        let name_sets = name_sets();
        for w in set.workloads.iter().filter(|w| w.attachment.is_some()) {
            let ep = c.endpoint(&w.name).unwrap();
            // EP_NAME_RULES exactly where an egress rule that holds the workload names a
            // domain, and the proxy's index agrees.
            let named = set.isolating(w, Direction::Egress).iter().any(|p| {
                p.egress.iter().flat_map(|r| &r.peers).any(|peer| matches!(peer, Peer::Domain(_)))
            });
            prop_assert_eq!(ep.flags & EP_NAME_RULES != 0, named);
            prop_assert_eq!(c.names.has_name_rules(ep.endpoint_id), named);
            for direction in [Direction::Ingress, Direction::Egress] {
                for &remote in &remotes {
                    for protocol in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
                        for port in [53u16, 80, 8050, 9000] {
                            prop_assert_eq!(
                                c.allows(ep, direction, remote, protocol, port),
                                reference_allows(&set, w, direction, remote, protocol, port),
                                "{} {:?} {} proto {} port {}", w.name, direction, remote, protocol, port
                            );
                            for names in &name_sets {
                                prop_assert_eq!(
                                    c.allows_named(ep, direction, remote, protocol, port, names),
                                    reference_allows_named(&set, w, direction, remote, (protocol, port), names),
                                    "{} {:?} {} {:?} proto {} port {}", w.name, direction, remote, names, protocol, port
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fail_mode_comes_from_the_workload_then_its_namespace_and_is_closed_by_default() {
    let set = parse(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: lab, annotations: {stagewall.io/fail-mode: open}}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: notebook, namespace: lab}
spec: {cgroup: /lab/notebook, addresses: [10.9.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: trainer, namespace: lab}
spec: {cgroup: /lab/trainer, addresses: [10.9.0.2], failMode: closed}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: serving, namespace: prod}
spec: {cgroup: /prod/serving, addresses: [10.9.0.3]}
"#,
    );
    let compiled = compile(&set, &EndpointIds::new()).unwrap();
    let open =
        |ns: &str, n: &str| compiled.endpoint(&name(ns, n)).unwrap().flags & EP_FAIL_OPEN != 0;
    assert!(open("lab", "notebook"), "the namespace's annotation");
    assert!(!open("lab", "trainer"), "the workload's own setting wins");
    assert!(!open("prod", "serving"), "closed by default");
}

#[test]
fn audit_comes_from_the_namespace_or_a_policy_and_covers_the_directions_it_isolates() {
    let mut set = parse(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: lab, annotations: {stagewall.io/mode: audit}}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: notebook, namespace: lab, labels: {app: notebook}}
spec: {cgroup: /lab/notebook, addresses: [10.9.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: trainer, namespace: prod, labels: {app: trainer}}
spec: {cgroup: /prod/trainer, addresses: [10.9.0.2]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: serving, namespace: prod, labels: {app: serving}}
spec: {cgroup: /prod/serving, addresses: [10.9.0.3]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: monitor, namespace: prod, labels: {app: monitor}}
spec: {cgroup: /prod/monitor, addresses: [10.9.0.4]}
---
# Ingress only, in audit: the trainer's egress stays enforced by the next policy.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: trainer-in, namespace: prod, annotations: {stagewall.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: trainer}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: trainer-out, namespace: prod}
spec: {podSelector: {matchLabels: {app: trainer}}, policyTypes: [Egress]}
---
apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {name: serve, namespace: prod, annotations: {stagewall.io/mode: audit}}
spec:
  stages: [{name: serving, selector: {matchLabels: {app: serving}}}]
  flows: [{from: {cidr: 10.0.0.0/8}, to: {stage: serving}}]
"#,
    );
    crate::policy::pipeline::expand(&mut set).unwrap();
    let compiled = compile(&set, &EndpointIds::new()).unwrap();
    let flags = |ns: &str, n: &str| {
        compiled.endpoint(&name(ns, n)).unwrap().flags & (EP_AUDIT_INGRESS | EP_AUDIT_EGRESS)
    };
    assert_eq!(
        flags("lab", "notebook"),
        EP_AUDIT_INGRESS | EP_AUDIT_EGRESS,
        "the namespace's annotation audits both directions, isolated or not"
    );
    assert_eq!(
        flags("prod", "trainer"),
        EP_AUDIT_INGRESS,
        "only the audited policy's direction"
    );
    assert_eq!(
        flags("prod", "serving"),
        EP_AUDIT_INGRESS | EP_AUDIT_EGRESS,
        "the policies a Pipeline expands into carry its annotation"
    );
    assert_eq!(flags("prod", "monitor"), 0, "enforced by default");
}

#[test]
fn a_policy_too_large_for_the_kernel_maps_is_rejected_naming_the_map() {
    // More CIDRs than half the IPCACHE (one policy slot's share) holds.
    let prefixes = IPCACHE_MAX / 2 + 1;
    let peers = (0..prefixes)
        .map(|i| Peer::IpBlock {
            cidr: format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
            except: Vec::new(),
        })
        .collect();
    let mut set = parse(PIPELINE);
    set.policies.push(NetworkPolicy {
        name: name("ml", "huge"),
        pod_selector: LabelSelector::default(),
        ingress_isolates: true,
        egress_isolates: false,
        ingress: vec![Rule {
            peers,
            ports: Vec::new(),
            line: 1,
        }],
        egress: Vec::new(),
        mode: None,
        origin: origin(),
    });
    let err = compile(&set, &EndpointIds::new()).unwrap_err();
    assert!(
        matches!(
            err,
            CompileError::TooLarge {
                what: "ipcache",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("exceed the kernel map's capacity"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// A compile that reuses the previous compile's entry sets gives exactly what a
    /// compile from scratch gives, whatever changed in between: a policy removed, a
    /// policy's rules cut short, a workload's labels.
    #[test]
    fn a_compile_reusing_the_last_ones_entries_equals_a_compile_from_scratch(
        set in set_strategy(),
        change in 0..3usize,
    ) {
        let mut cache = CompileCache::default();
        let first = compile_with(&set, &EndpointIds::new(), &mut cache).unwrap();
        let ids = first.endpoint_ids();
        let mut changed = set.clone();
        match change {
            0 => {
                changed.policies.pop();
            }
            1 => {
                if let Some(p) = changed.policies.first_mut() {
                    p.ingress.truncate(1);
                    p.egress.clear();
                }
            }
            _ => {
                if let Some(w) = changed.workloads.first_mut() {
                    w.labels.insert("tier".into(), "2".into());
                }
            }
        }
        for next in [&changed, &set, &set] {
            let reused = compile_with(next, &ids, &mut cache).unwrap();
            let fresh = compile(next, &ids).unwrap();
            prop_assert_eq!(&reused.endpoints, &fresh.endpoints);
            prop_assert_eq!(&reused.policy, &fresh.policy);
            prop_assert_eq!(&reused.tier_entries, &fresh.tier_entries);
            prop_assert_eq!(&reused.identities, &fresh.identities);
            prop_assert_eq!(&reused.endpoint_index, &fresh.endpoint_index);
            // The index finds every endpoint by its id, and nothing else.
            prop_assert_eq!(reused.endpoint_index.len(), reused.endpoints.len());
            for e in &reused.endpoints {
                prop_assert_eq!(reused.endpoint_by_id(e.endpoint_id), Some(e));
            }
            prop_assert!(reused.endpoint_by_id(stagewall_common::GUARD_ENDPOINT_ID).is_none());
        }
    }
}

#[test]
fn node_addresses_get_node_identities_that_ipblocks_still_name() {
    let mut set = parse(
        r#"
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: web, namespace: ml, labels: {app: web}}
spec: {cgroup: /ml/web, addresses: [10.1.0.5]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: ml}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 192.168.0.0/16}}]}]
"#,
    );
    // Two node addresses inside the block, one outside, and one a workload claims.
    set.node_addresses = vec![
        ip("192.168.1.10"),
        ip("192.168.1.11"),
        ip("172.16.0.1"),
        ip("10.1.0.5"),
    ];
    let ids = Identities::allocate(&set);
    let inside = ids.lookup(ip("192.168.1.10"));
    let outside = ids.lookup(ip("172.16.0.1"));
    assert!(stagewall_common::is_node_identity(inside));
    assert!(stagewall_common::is_node_identity(outside));
    assert_eq!(
        inside,
        ids.lookup(ip("192.168.1.11")),
        "one identity per block set"
    );
    assert_ne!(inside, outside);
    assert!(
        !stagewall_common::is_node_identity(ids.lookup(ip("10.1.0.5"))),
        "a workload's address stays the workload's"
    );
    let block = ids.blocks[0].clone();
    let selected = ids.select_block(&block);
    assert!(
        selected.contains(&inside),
        "the ipBlock still names the node address in it"
    );
    assert!(!selected.contains(&outside));
    assert_eq!(ids.peer_name(ip("192.168.1.10")), "node");
}

#[test]
fn name_rules_become_entries_under_their_patterns_identities() {
    let set = parse(
        "apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: train, namespace: ml, labels: {stage: training}}
spec: {cgroup: /train, addresses: [10.0.0.1]}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: serve, namespace: ml, labels: {stage: serving}}
spec: {cgroup: /serve, addresses: [10.0.0.2]}
---
apiVersion: stagewall.io/v1alpha1
kind: Pipeline
metadata: {name: p, namespace: ml}
spec:
  stages:
    - {name: training, selector: {matchLabels: {stage: training}}}
    - {name: serving, selector: {matchLabels: {stage: serving}}}
  flows:
    - {from: {stage: training}, to: {fqdn: pypi.org}, ports: [{protocol: TCP, port: 443}]}
    - {from: {stage: training}, to: {fqdn: '*.pythonhosted.org'}, ports: [{protocol: TCP, port: 443}]}
    - {from: {stage: training}, to: {stage: serving}, ports: [{protocol: TCP, port: 8500}]}
",
    );
    let mut set = set;
    crate::policy::pipeline::expand(&mut set).unwrap();
    let c = compile(&set, &EndpointIds::new()).unwrap();
    let (train, serve) = (
        c.endpoint(&name("ml", "train")).unwrap(),
        c.endpoint(&name("ml", "serve")).unwrap(),
    );
    assert_ne!(train.flags & EP_NAME_RULES, 0);
    assert_eq!(serve.flags & EP_NAME_RULES, 0, "serving has no name rules");
    let pypi = crate::policy::model::DomainPattern::parse("pypi.org").unwrap();
    let entries: Vec<&PolicyEntry> = c
        .policy
        .iter()
        .filter(|e| e.policy == train.egress_policy_id && e.identity == pypi.identity())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].protocol, Some(PROTO_TCP));
    assert!(entries[0].ports.unwrap().contains(443));
    // Names are never in IPCACHE.
    assert!(
        c.ipcache()
            .all(|(_, id)| !stagewall_common::is_name_identity(*id))
    );
    assert_eq!(
        c.names
            .identities_for(train.endpoint_id, "files.pythonhosted.org"),
        [
            crate::policy::model::DomainPattern::parse("*.pythonhosted.org")
                .unwrap()
                .identity()
        ]
    );
    assert!(
        c.names
            .identities_for(serve.endpoint_id, "pypi.org")
            .is_empty()
    );
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let remote = ip("151.101.1.1");
    assert!(c.allows_named(
        train,
        Direction::Egress,
        remote,
        PROTO_TCP,
        443,
        &names(&["PyPI.org."])
    ));
    assert!(!c.allows_named(
        train,
        Direction::Egress,
        remote,
        PROTO_TCP,
        80,
        &names(&["pypi.org"])
    ));
    assert!(!c.allows_named(
        train,
        Direction::Egress,
        remote,
        PROTO_TCP,
        443,
        &names(&["pythonhosted.org"])
    ));
    assert!(!c.allows_named(train, Direction::Egress, remote, PROTO_TCP, 443, &[]));
}

#[test]
fn two_patterns_with_one_identity_are_refused_naming_both() {
    // Two names whose FNV-1a hashes agree in the 31 bits an identity keeps.
    let set = parse(
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: names}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
    - {action: Accept, to: [{domainNames: [h398824.example.org, h768140.example.org]}]}
",
    );
    let err = compile(&set, &EndpointIds::new()).unwrap_err().to_string();
    assert!(
        err.contains("h398824.example.org")
            && err.contains("h768140.example.org")
            && err.contains("0xa9da4b99"),
        "{err}"
    );
}
