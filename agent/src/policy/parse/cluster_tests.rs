//! ClusterNetworkPolicy documents: the upstream v1alpha2 shapes parse into the model;
//! every schema violation is an error naming its line and what was expected; a bad
//! object never stops the others; NetworkPolicy and ClusterNetworkPolicy fields do not
//! mix.

use std::path::Path;

use super::{ParseCache, parse_into, tests::CONTROL_PLANE, validate_set};
use crate::policy::{
    error::PolicyError,
    model::{
        Action, ClusterPeer, ClusterPort, ClusterSelector, LabelSelector, Mode, PolicySet,
        Protocol, Tier,
    },
};

/// Lines 1-4; a case's spec starts at line 5.
const HEAD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n";
/// Lines 5-7; a case's rules start at line 8.
const BASE: &str = "  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n";

fn parse(yaml: &str) -> (PolicySet, Vec<PolicyError>) {
    let mut set = PolicySet::default();
    let mut errors = match parse_into(Path::new("c.yaml"), yaml, &mut set) {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    if let Err(mut e) = validate_set(&set) {
        errors.append(&mut e.0);
    }
    (set, errors)
}

fn one_error(yaml: &str) -> PolicyError {
    let (_, errors) = parse(yaml);
    assert_eq!(errors.len(), 1, "{yaml}\n{errors:?}");
    errors.into_iter().next().unwrap()
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(key.to_string(), value.to_string())].into(),
        match_expressions: Vec::new(),
    }
}

#[test]
fn the_upstream_shape_parses_into_the_model() {
    let yaml = format!(
        "{HEAD}  tier: Baseline
  priority: 1000
  subject:
    pods:
      namespaceSelector: {{matchLabels: {{tenant: a}}}}
      podSelector: {{matchLabels: {{app: db}}}}
  ingress:
    - name: from-tenant-a
      action: Accept
      from:
        - namespaces: {{matchLabels: {{tenant: a}}}}
        - pods: {{podSelector: {{matchLabels: {{app: web}}}}}}
      protocols:
        - tcp: {{destinationPort: {{number: 5432}}}}
        - udp: {{destinationPort: {{range: {{start: 7000, end: 7100}}}}}}
        - destinationNamedPort: metrics
  egress:
    - action: Deny
      to: [{{networks: [169.254.169.254/32, 'fd00:ec2::254/128']}}]
    - {{name: rest, action: Pass, to: [{{namespaces: {{}}}}], protocols: [{{sctp: {{destinationPort: {{number: 9}}}}}}]}}
status: {{conditions: []}}
"
    );
    let (set, errors) = parse(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let [p] = set.cluster_policies.as_slice() else {
        panic!("{set:?}")
    };
    assert_eq!(
        (p.name.as_str(), p.tier, p.priority),
        ("guard", Tier::Baseline, 1000)
    );
    assert_eq!(p.origin.line, 2);
    assert_eq!(
        p.subject,
        ClusterSelector::Pods {
            namespaces: selector("tenant", "a"),
            pods: selector("app", "db")
        }
    );
    let rule = &p.ingress[0];
    assert_eq!(
        (rule.name.as_deref(), rule.action, rule.line),
        (Some("from-tenant-a"), Action::Accept, 12)
    );
    assert_eq!(
        rule.peers,
        vec![
            ClusterPeer::Workloads(ClusterSelector::Namespaces(selector("tenant", "a"))),
            ClusterPeer::Workloads(ClusterSelector::Pods {
                namespaces: LabelSelector::default(),
                pods: selector("app", "web")
            }),
        ]
    );
    assert_eq!(
        rule.protocols,
        vec![
            ClusterPort::Ports {
                protocol: Protocol::Tcp,
                first: 5432,
                last: 5432
            },
            ClusterPort::Ports {
                protocol: Protocol::Udp,
                first: 7000,
                last: 7100
            },
            ClusterPort::Named("metrics".into()),
        ]
    );
    let [deny, pass] = p.egress.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!((deny.name.as_deref(), deny.action), (None, Action::Deny));
    assert_eq!(
        deny.peers,
        vec![ClusterPeer::Networks(vec![
            "169.254.169.254/32".parse().unwrap(),
            "fd00:ec2::254/128".parse().unwrap()
        ])]
    );
    assert!(deny.protocols.is_empty());
    assert_eq!(pass.action, Action::Pass);
    assert_eq!(
        pass.protocols,
        vec![ClusterPort::Ports {
            protocol: Protocol::Sctp,
            first: 9,
            last: 9
        }]
    );
}

#[test]
fn every_schema_violation_names_its_line_and_what_was_expected() {
    let egress = |rule: &str| format!("{BASE}  egress:\n    - {rule}\n");
    let ingress = |rule: &str| format!("{BASE}  ingress:\n    - {rule}\n");
    let to_any = "to: [{namespaces: {}}]";
    let many = |item: &str, n| vec![item; n].join(", ");
    let cases: Vec<(String, u32, &str)> = vec![
        // The spec.
        (
            "  priority: 1\n  subject: {namespaces: {}}\n".into(),
            5,
            "spec has no tier; expected tier: Admin or Baseline",
        ),
        (
            "  tier: admin\n  priority: 1\n  subject: {namespaces: {}}\n".into(),
            5,
            "tier \"admin\" is invalid; expected Admin or Baseline",
        ),
        (
            "  tier: Admin\n  subject: {namespaces: {}}\n".into(),
            5,
            "spec has no priority; expected a number from 0 to 1000",
        ),
        (
            "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n".into(),
            6,
            "priority 1001 is out of range; expected 0 to 1000",
        ),
        (
            "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n".into(),
            6,
            "priority -1 is out of range",
        ),
        (
            "  tier: Admin\n  priority: 1\n".into(),
            5,
            "spec has no subject; expected subject.namespaces or subject.pods",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {}\n".into(),
            7,
            "subject is empty; expected exactly one of namespaces or pods",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n"
                .into(),
            7,
            "subject has both namespaces and pods",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n".into(),
            7,
            "pods has no podSelector; expected podSelector",
        ),
        (
            format!("{BASE}  podSelector: {{}}\n"),
            5,
            "ClusterNetworkPolicy spec has podSelector, which belong to another kind",
        ),
        (
            format!(
                "{BASE}  ingress: [{}]\n",
                many("{action: Deny, from: [{namespaces: {}}]}", 26)
            ),
            5,
            "has 26 ingress rules; expected at most 25",
        ),
        // Rules.
        (
            egress(to_any),
            9,
            "egress rule has no action; expected action: Accept, Deny or Pass",
        ),
        (
            egress(&format!("{{action: Allow, {to_any}}}")),
            9,
            "action \"Allow\" is invalid; expected Accept, Deny or Pass",
        ),
        (
            egress(&format!(
                "{{name: {}, action: Deny, {to_any}}}",
                "n".repeat(101)
            )),
            9,
            "rule name is 101 characters long; expected at most 100",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, ports: [{{port: 80}}]}}"
            )),
            9,
            "rule has 'ports'; expected 'protocols'",
        ),
        (
            egress("{action: Deny, from: [{namespaces: {}}]}"),
            9,
            "egress rule has 'from'; expected 'to'",
        ),
        (
            ingress("{action: Deny, to: [{namespaces: {}}]}"),
            9,
            "ingress rule has 'to'; expected 'from'",
        ),
        (
            egress("{action: Deny}"),
            9,
            "egress rule has no 'to' peers; expected from 1 to 25",
        ),
        (
            egress("{action: Deny, to: []}"),
            9,
            "egress rule has no 'to' peers",
        ),
        (
            egress(&format!(
                "{{action: Deny, to: [{}]}}",
                many("{namespaces: {}}", 26)
            )),
            9,
            "egress rule has 26 'to' peers; expected at most 25",
        ),
        // Peers.
        (
            egress("{action: Deny, to: [{}]}"),
            9,
            "peer is empty; expected exactly one of namespaces, pods, networks, nodes or domainNames",
        ),
        (
            egress("{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}"),
            9,
            "peer has namespaces and networks; expected exactly one",
        ),
        (
            egress("{action: Deny, to: [{podSelector: {}}]}"),
            9,
            "peer has podSelector, which belong to a NetworkPolicy peer",
        ),
        (
            ingress("{action: Deny, from: [{networks: [10.0.0.0/8]}]}"),
            9,
            "networks is an egress peer; expected namespaces or pods in an ingress rule",
        ),
        (
            ingress("{action: Deny, from: [{nodes: {}}]}"),
            9,
            "nodes is an egress peer; expected namespaces or pods in an ingress rule",
        ),
        (
            egress("{action: Deny, to: [{nodes: {}, networks: [10.0.0.0/8]}]}"),
            9,
            "peer has networks and nodes; expected exactly one",
        ),
        (
            egress("{action: Deny, to: [{nodes: {matchLabels: {'a b': x}}}]}"),
            9,
            "label key",
        ),
        (
            egress("{action: Deny, to: [{domainNames: [example.org]}]}"),
            9,
            "egress rule with action Deny has a domainNames peer; expected action Accept",
        ),
        (
            egress("{action: Deny, to: [{networks: []}]}"),
            9,
            "networks has 0 CIDRs; expected from 1 to 25",
        ),
        (
            egress(&format!(
                "{{action: Deny, to: [{{networks: [{}]}}]}}",
                many("10.0.0.0/8", 26)
            )),
            9,
            "networks has 26 CIDRs; expected from 1 to 25",
        ),
        (
            egress("{action: Deny, to: [{networks: [10.0.0.0/33]}]}"),
            9,
            "invalid CIDR \"10.0.0.0/33\"",
        ),
        // Protocols.
        (
            egress(&format!("{{action: Deny, {to_any}, protocols: []}}")),
            9,
            "rule has 0 protocols; expected from 1 to 25",
        ),
        (
            egress(&format!("{{action: Deny, {to_any}, protocols: [{{}}]}}")),
            9,
            "protocols entry is empty; expected exactly one of tcp, udp, sctp or destinationNamedPort",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{destinationPort: {{number: 1}}}}, udp: {{destinationPort: {{number: 1}}}}}}]}}"
            )),
            9,
            "protocols entry has tcp and udp",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{}}}}]}}"
            )),
            9,
            "tcp has no destinationPort",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{udp: {{destinationPort: {{}}}}}}]}}"
            )),
            9,
            "destinationPort is empty; expected exactly one of number or range",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{destinationPort: {{number: 0}}}}}}]}}"
            )),
            9,
            "destinationPort number 0 is out of range; expected 1 to 65535",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{destinationPort: {{range: {{start: 80, end: 80}}}}}}}}]}}"
            )),
            9,
            "range start 80 is not below end 80; expected start < end",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{destinationPort: {{range: {{start: 80}}}}}}}}]}}"
            )),
            9,
            "range needs start and end",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{tcp: {{destinationPort: {{range: {{start: 80, end: 65536}}}}}}}}]}}"
            )),
            9,
            "range end 65536 is out of range",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{{destinationNamedPort: Web}}]}}"
            )),
            9,
            "port name \"Web\" is invalid",
        ),
        (
            egress(
                "{action: Deny, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: web}]}",
            ),
            9,
            "networks peer and a destinationNamedPort",
        ),
        (
            egress("{action: Deny, to: [{nodes: {}}], protocols: [{destinationNamedPort: web}]}"),
            9,
            "rule has a nodes peer and a destinationNamedPort; expected numbered ports with nodes",
        ),
        (
            egress(&format!(
                "{{action: Deny, {to_any}, protocols: [{}]}}",
                many("{destinationNamedPort: web}", 26)
            )),
            9,
            "rule has 26 protocols; expected from 1 to 25",
        ),
    ];
    for (spec, line, wanted) in cases {
        let e = one_error(&format!("{HEAD}{spec}"));
        assert!(
            e.message.contains(wanted),
            "{spec}\nwanted {wanted:?}, got: {e}"
        );
        assert_eq!(e.line, line, "{spec}\n{e}");
        assert!(
            e.message.contains("expected") || wanted.contains("expected"),
            "{e}"
        );
    }
}

#[test]
fn metadata_and_kind_mistakes_are_named() {
    let e = one_error(&format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: g, namespace: ns}}\nspec:\n{BASE}"
    ));
    assert!(
        e.message
            .contains("cluster-scoped; expected no metadata.namespace"),
        "{e}"
    );
    assert_eq!(e.line, 3, "{e}");
    let e = one_error(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: g}\n",
    );
    assert!(
        e.message
            .contains("has no spec; expected spec.tier, spec.priority and spec.subject"),
        "{e}"
    );
    let e = one_error(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: g}\nspec: {}\n",
    );
    assert!(e.message.contains("expected kind ClusterNetworkPolicy of apiVersion policy.networking.k8s.io/v1alpha2 with spec.tier: Admin"), "{e}");
    let e = one_error(&format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: g, annotations: {{stagewall.io/mode: watch}}}}\nspec:\n{BASE}"
    ));
    assert!(
        e.message.contains(
            "annotation stagewall.io/mode \"watch\" is invalid; expected enforce or audit"
        ),
        "{e}"
    );
    let (_, errors) = parse(&format!("{HEAD}{BASE}---\n{HEAD}{BASE}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .contains("duplicate ClusterNetworkPolicy guard; first defined at c.yaml:2"),
        "{}",
        errors[0]
    );
}

#[test]
fn network_policy_and_cluster_fields_do_not_mix() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  podSelector: {}\n";
    let e = one_error(&format!(
        "{np}  ingress:\n    - {{action: Deny, from: [{{podSelector: {{}}}}]}}\n"
    ));
    assert!(e.message.contains("NetworkPolicy rule has action, which belong to a ClusterNetworkPolicy rule; expected 'from' and 'ports'"), "{e}");
    assert_eq!(e.line, 7);
    let e = one_error(&format!(
        "{np}  egress:\n    - to: [{{networks: [10.0.0.0/8]}}]\n"
    ));
    assert!(e.message.contains("peer has networks, which belong to a ClusterNetworkPolicy peer; expected podSelector, namespaceSelector or ipBlock"), "{e}");
    let e = one_error(&format!(
        "{HEAD}  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  policyTypes: [Ingress]\n"
    ));
    assert!(
        e.message
            .contains("spec has policyTypes, which belong to another kind"),
        "{e}"
    );
}

#[test]
fn one_bad_object_never_stops_the_others() {
    let bad_value =
        format!("{HEAD}  tier: Admin\n  priority: 5000\n  subject: {{namespaces: {{}}}}\n");
    let good = format!("{HEAD}{BASE}").replace("name: guard", "name: good");
    let (set, errors) = parse(&format!("{bad_value}---\n{good}"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(set.cluster_policies.len(), 1);
    assert_eq!(set.cluster_policies[0].name, "good");
    // A document that does not even deserialise (an unknown field) is its own too.
    let unknown = format!(
        "{HEAD}{BASE}  egress:\n    - {{action: Deny, to: [{{namespaces: {{}}}}], portz: []}}\n"
    );
    let mut set = PolicySet::default();
    let errors = ParseCache::default()
        .parse_into(
            Path::new("c.yaml"),
            &format!("{unknown}---\n{good}"),
            &mut set,
        )
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors.0[0].message.contains("portz"), "{errors:?}");
    assert_eq!(set.cluster_policies.len(), 1);
}

#[test]
fn the_mode_annotation_puts_a_cluster_network_policy_in_audit_mode() {
    let (set, errors) = parse(&format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: g, annotations: {{stagewall.io/mode: audit}}}}\nspec:\n{BASE}"
    ));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(set.cluster_policies[0].mode, Some(Mode::Audit));
    let (set, errors) = parse(&format!("{HEAD}{BASE}"));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(set.cluster_policies[0].mode, None);
}

#[test]
fn a_nodes_peer_and_node_documents_parse_into_the_model() {
    let yaml = format!(
        "{CONTROL_PLANE}---\napiVersion: v1\nkind: Node\nmetadata: {{name: worker-1}}\n---\n{HEAD}{BASE}  egress:
    - name: control-plane
      action: Deny
      to: [{{nodes: {{matchExpressions: [{{key: node-role.kubernetes.io/control-plane, operator: Exists}}]}}}}]
      protocols: [{{tcp: {{destinationPort: {{number: 6443}}}}}}]
"
    );
    let (set, errors) = parse(&yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let [cp, worker] = set.nodes.as_slice() else {
        panic!("{set:?}")
    };
    assert_eq!((cp.name.as_str(), cp.origin.line), ("cp-1", 2));
    assert_eq!(
        cp.addresses,
        vec![
            "10.0.0.10".parse::<std::net::IpAddr>().unwrap(),
            "fd00::10".parse().unwrap()
        ],
        "IPs only, without repeats"
    );
    assert_eq!(cp.labels["node-role.kubernetes.io/control-plane"], "");
    assert_eq!(
        (worker.name.as_str(), worker.addresses.len()),
        ("worker-1", 0)
    );
    let rule = &set.cluster_policies[0].egress[0];
    let ClusterPeer::Nodes(selector) = &rule.peers[0] else {
        panic!("{rule:?}")
    };
    assert_eq!(
        set.node_peer_addresses(selector),
        cp.addresses,
        "the control plane's addresses, not the worker's"
    );
}
