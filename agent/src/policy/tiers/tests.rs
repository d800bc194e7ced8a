//! The tiers against the upstream conformance scenarios (network-policy-api v0.2.0:
//! CNPAdminTierPriorityField, CNPAdminTierIntegration, CNPAdminTierGress,
//! CNPBaselineTierGress, CNPAdminTierEgressInlineCIDRPeers, the named-port cases), read
//! as one side of a connection at a time.

use std::{net::IpAddr, path::Path};

use super::*;
use crate::policy::parse::parse_into;

/// Three houses, one workload each: gryffindor/harry (10.0.0.1, declares web = TCP
/// 8080), slytherin/draco (10.0.1.1, declares dns = UDP 53), ravenclaw/luna (10.0.2.1).
const HOUSES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: gryffindor, labels: {house: gryffindor}}
---
apiVersion: v1
kind: Namespace
metadata: {name: slytherin, labels: {house: slytherin}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ravenclaw, labels: {house: ravenclaw}}
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: harry, namespace: gryffindor, labels: {house: gryffindor}}
spec:
  addresses: [10.0.0.1]
  ports: [{name: web, port: 8080, protocol: TCP}]
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: draco, namespace: slytherin, labels: {house: slytherin}}
spec:
  addresses: [10.0.1.1]
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: stagewall.io/v1alpha1
kind: Workload
metadata: {name: luna, namespace: ravenclaw, labels: {house: ravenclaw}}
spec:
  addresses: [10.0.2.1]
";

const TCP: u8 = stagewall_common::PROTO_TCP;
const UDP: u8 = stagewall_common::PROTO_UDP;

fn set(policies: &str) -> PolicySet {
    let mut set = PolicySet::default();
    parse_into(
        Path::new("t.yaml"),
        &format!("{HOUSES}---\n{policies}"),
        &mut set,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    set
}

/// A ClusterNetworkPolicy whose subject is the `house` namespace, with these rules.
fn cnp(name: &str, tier: &str, priority: u16, house: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{house: {house}}}}}}}\n{rules}---\n"
    )
}

/// One side: `local`'s `direction`, the other end `remote` (a workload or an address).
fn side<'a>(
    set: &'a PolicySet,
    local: &str,
    direction: Direction,
    remote: &str,
    protocol: u8,
    port: u16,
) -> Decision<'a> {
    let local = set.workload(local).expect("local workload");
    let remote: IpAddr = match set.workload(remote) {
        Some(w) => w.addresses[0],
        None => remote.parse().expect("an address"),
    };
    decide(set, local, direction, remote, protocol, port)
}

/// "Accept by NAME/RULE", "Deny by NAME/RULE", "NetworkPolicy allowed", ... for asserts.
fn verdict(d: &Decision) -> String {
    let passed: Vec<String> = d
        .passed
        .iter()
        .map(|r| format!("pass {}/{}; ", r.policy.name, r.name()))
        .collect();
    let by = match &d.by {
        DecidedBy::SelfTraffic => "self".to_string(),
        DecidedBy::Default => "default allow".to_string(),
        DecidedBy::Cluster(r) => format!(
            "{} {} by {}/{}",
            r.policy.tier,
            r.action(),
            r.policy.name,
            r.name()
        ),
        DecidedBy::NetworkPolicy(Side::Allowed { policy, .. }) => {
            format!("NetworkPolicy {} allows", policy.name)
        }
        DecidedBy::NetworkPolicy(Side::Denied { .. }) => "NetworkPolicy denies".to_string(),
        DecidedBy::NetworkPolicy(other) => format!("NetworkPolicy {other:?}"),
    };
    format!("{}{by}", passed.concat())
}

const DENY_FROM_SLYTHERIN: &str = "  ingress:\n    - {name: from-slytherin, action: ACTION, from: [{namespaces: {matchLabels: {house: slytherin}}}]}\n  egress:\n    - {name: to-slytherin, action: ACTION, to: [{namespaces: {matchLabels: {house: slytherin}}}]}\n";

fn both_ways(action: &str) -> String {
    DENY_FROM_SLYTHERIN.replace("ACTION", action)
}

#[test]
fn priority_decides_between_admin_policies_and_pass_reaches_baseline() {
    // CNPAdminTierPriorityField: Deny at 50, Pass at 60, Baseline Accept at 10.
    let policies = |pass_priority| {
        cnp("priority-50", "Admin", 50, "gryffindor", &both_ways("Deny"))
            + &cnp(
                "moving-pass",
                "Admin",
                pass_priority,
                "gryffindor",
                &both_ways("Pass"),
            )
            + &cnp(
                "default",
                "Baseline",
                10,
                "gryffindor",
                &both_ways("Accept"),
            )
    };
    let s = set(&policies(60));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "Admin Deny by priority-50/\"from-slytherin\"");
    assert!(!d.allowed());
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "slytherin/draco",
        TCP,
        8080,
    );
    assert_eq!(verdict(&d), "Admin Deny by priority-50/\"to-slytherin\"");
    // The Pass policy moved to 40: it is read first, and the Baseline accepts.
    let s = set(&policies(40));
    for direction in [Direction::Ingress, Direction::Egress] {
        let d = side(
            &s,
            "gryffindor/harry",
            direction,
            "slytherin/draco",
            TCP,
            80,
        );
        assert!(d.allowed(), "{direction}: {}", verdict(&d));
        assert!(
            verdict(&d).starts_with("pass moving-pass/"),
            "{}",
            verdict(&d)
        );
        assert!(
            verdict(&d).contains("Baseline Accept by default/"),
            "{}",
            verdict(&d)
        );
    }
    // Neither tier's subject holds slytherin: its own side is untouched.
    let d = side(
        &s,
        "slytherin/draco",
        Direction::Egress,
        "gryffindor/harry",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "default allow");
}

const NP_ALLOW_SLYTHERIN: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-slytherin, namespace: gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {house: slytherin}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {house: slytherin}}}]}]
---
";

#[test]
fn admin_deny_overrides_a_network_policy_and_pass_defers_to_it() {
    // CNPAdminTierIntegration: Admin Deny (then Pass), a NetworkPolicy allowing
    // slytherin, a Baseline Deny.
    let baseline = cnp("default", "Baseline", 10, "gryffindor", &both_ways("Deny"));
    let s = set(&(cnp(
        "pass-example",
        "Admin",
        10,
        "gryffindor",
        &both_ways("Deny"),
    ) + NP_ALLOW_SLYTHERIN
        + &baseline));
    for direction in [Direction::Ingress, Direction::Egress] {
        let d = side(
            &s,
            "gryffindor/harry",
            direction,
            "slytherin/draco",
            TCP,
            80,
        );
        assert!(!d.allowed());
        assert!(
            verdict(&d).starts_with("Admin Deny by pass-example/"),
            "{}",
            verdict(&d)
        );
    }
    // Deny becomes Pass: the NetworkPolicy decides (and allows).
    let s = set(&(cnp(
        "pass-example",
        "Admin",
        10,
        "gryffindor",
        &both_ways("Pass"),
    ) + NP_ALLOW_SLYTHERIN
        + &baseline));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        TCP,
        80,
    );
    assert_eq!(
        verdict(&d),
        "pass pass-example/\"from-slytherin\"; NetworkPolicy gryffindor/allow-slytherin allows"
    );
    // The NetworkPolicy isolates: what it does not allow is denied there, and the
    // Baseline is never read.
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "ravenclaw/luna",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "NetworkPolicy denies");
    // The NetworkPolicy deleted: the Baseline Deny decides.
    let s = set(&(cnp(
        "pass-example",
        "Admin",
        10,
        "gryffindor",
        &both_ways("Pass"),
    ) + &baseline));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "slytherin/draco",
        TCP,
        80,
    );
    assert_eq!(
        verdict(&d),
        "pass pass-example/\"to-slytherin\"; Baseline Deny by default/\"to-slytherin\""
    );
}

#[test]
fn admin_accept_overrides_a_network_policy_that_denies() {
    let np_deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: gryffindor}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n";
    let s = set(&(cnp("ops", "Admin", 1, "gryffindor", &both_ways("Accept")) + np_deny_all));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "Admin Accept by ops/\"from-slytherin\"");
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "ravenclaw/luna",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "NetworkPolicy denies");
}

#[test]
fn the_first_matching_rule_of_a_policy_wins_ports_included() {
    // CNPAdminTierGress / CNPBaselineTierGress: Accept, Deny, Pass to ravenclaw in that
    // order (Accept wins); Deny to slytherin on TCP 80, UDP 53 only.
    let rules = "  egress:
    - {name: allow-ravenclaw, action: Accept, to: [{namespaces: {matchLabels: {house: ravenclaw}}}]}
    - {name: deny-ravenclaw, action: Deny, to: [{namespaces: {matchLabels: {house: ravenclaw}}}]}
    - {name: pass-ravenclaw, action: Pass, to: [{namespaces: {matchLabels: {house: ravenclaw}}}]}
    - name: deny-slytherin-80-53
      action: Deny
      to: [{pods: {namespaceSelector: {matchLabels: {house: slytherin}}, podSelector: {}}}]
      protocols: [{tcp: {destinationPort: {number: 80}}}, {udp: {destinationPort: {number: 53}}}]
    - name: deny-slytherin-range
      action: Deny
      to: [{namespaces: {matchLabels: {house: slytherin}}}]
      protocols: [{tcp: {destinationPort: {range: {start: 9000, end: 9010}}}}]
";
    for tier in ["Admin", "Baseline"] {
        let s = set(&cnp("gress-rules", tier, 15, "gryffindor", rules));
        let d = side(
            &s,
            "gryffindor/harry",
            Direction::Egress,
            "ravenclaw/luna",
            TCP,
            80,
        );
        assert_eq!(
            verdict(&d),
            format!("{tier} Accept by gress-rules/\"allow-ravenclaw\"")
        );
        for (protocol, port, denied_by) in [
            (TCP, 80, Some("deny-slytherin-80-53")),
            (UDP, 53, Some("deny-slytherin-80-53")),
            (TCP, 53, None),
            (UDP, 80, None),
            (TCP, 9000, Some("deny-slytherin-range")),
            (TCP, 9010, Some("deny-slytherin-range")),
            (TCP, 9011, None),
        ] {
            let d = side(
                &s,
                "gryffindor/harry",
                Direction::Egress,
                "slytherin/draco",
                protocol,
                port,
            );
            match denied_by {
                Some(rule) => assert_eq!(
                    verdict(&d),
                    format!("{tier} Deny by gress-rules/\"{rule}\"")
                ),
                None => assert_eq!(verdict(&d), "default allow", "{protocol} {port}"),
            }
        }
    }
}

#[test]
fn networks_match_addresses_inside_and_outside_the_inventory() {
    // CNPAdminTierEgressInlineCIDRPeers: Accept to slytherin, then Deny everything.
    let rules = "  egress:
    - {name: allow-slytherin, action: Accept, to: [{namespaces: {matchLabels: {house: slytherin}}}]}
    - {name: deny-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
    - {name: deny-internet, action: Deny, to: [{networks: [0.0.0.0/0, '::/0']}]}
";
    let s = set(&cnp("inline-cidr", "Admin", 85, "gryffindor", rules));
    let harry = |to: &str| {
        verdict(&side(
            &s,
            "gryffindor/harry",
            Direction::Egress,
            to,
            TCP,
            443,
        ))
    };
    assert_eq!(
        harry("slytherin/draco"),
        "Admin Accept by inline-cidr/\"allow-slytherin\""
    );
    assert_eq!(
        harry("169.254.169.254"),
        "Admin Deny by inline-cidr/\"deny-metadata\""
    );
    // Networks name workloads' addresses too.
    assert_eq!(
        harry("ravenclaw/luna"),
        "Admin Deny by inline-cidr/\"deny-internet\""
    );
    assert_eq!(
        harry("2001:db8::1"),
        "Admin Deny by inline-cidr/\"deny-internet\""
    );
    // Traffic to itself never leaves the workload.
    assert_eq!(harry("10.0.0.1"), "self");
}

#[test]
fn named_ports_resolve_against_the_destination() {
    // CNPAdminTierIngressNamedPort, CNPAdminTierEgressNamedPort.
    let rules = "  ingress:
    - {name: web, action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: web}]}
  egress:
    - {name: dns, action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: dns}]}
";
    let s = set(&cnp("named", "Admin", 1, "gryffindor", rules));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        TCP,
        8080,
    );
    assert_eq!(verdict(&d), "Admin Deny by named/\"web\"");
    // The name's protocol counts: UDP 8080 is not `web`.
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        UDP,
        8080,
    );
    assert_eq!(verdict(&d), "default allow");
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "slytherin/draco",
        UDP,
        53,
    );
    assert_eq!(verdict(&d), "Admin Deny by named/\"dns\"");
    // luna declares no `dns`.
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "ravenclaw/luna",
        UDP,
        53,
    );
    assert_eq!(verdict(&d), "default allow");
}

#[test]
fn baseline_pass_leaves_the_default_and_unnamed_rules_are_numbered() {
    let rules = "  egress:\n    - {action: Pass, to: [{networks: [0.0.0.0/0]}]}\n    - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n";
    let s = set(&cnp("base", "Baseline", 1, "gryffindor", rules));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "192.0.2.1",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "pass base/#1; default allow");
    assert!(d.allowed());
}

#[test]
fn ties_are_read_by_name_and_warned_about() {
    let s = set(
        &(cnp("b-deny", "Admin", 5, "gryffindor", &both_ways("Deny"))
            + &cnp("a-accept", "Admin", 5, "gryffindor", &both_ways("Accept"))
            + &cnp(
                "c-other-tier",
                "Baseline",
                5,
                "gryffindor",
                &both_ways("Deny"),
            )),
    );
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Ingress,
        "slytherin/draco",
        TCP,
        80,
    );
    assert_eq!(verdict(&d), "Admin Accept by a-accept/\"from-slytherin\"");
    let warnings = priority_ties(&s);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("ClusterNetworkPolicies a-accept (t.yaml:"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains("share Admin priority 5"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("a-accept first"), "{warnings:?}");
}

#[test]
fn subjects_choose_by_namespace_or_by_namespace_and_workload() {
    let rules = "  egress:\n    - {name: nowhere, action: Deny, to: [{namespaces: {}}]}\n";
    for (subject, denied) in [
        // Every namespace (no namespaceSelector), workloads labelled slytherin.
        (
            "{pods: {podSelector: {matchLabels: {house: slytherin}}}}",
            [false, true],
        ),
        // Both selectors must hold.
        (
            "{pods: {namespaceSelector: {matchLabels: {house: gryffindor}}, podSelector: {matchLabels: {house: slytherin}}}}",
            [false, false],
        ),
        ("{namespaces: {}}", [true, true]),
    ] {
        let policy = cnp("subject", "Admin", 1, "x", rules).replace(
            "subject: {namespaces: {matchLabels: {house: x}}}",
            &format!("subject: {subject}"),
        );
        let s = set(&policy);
        for (from, denied) in ["gryffindor/harry", "slytherin/draco"]
            .into_iter()
            .zip(denied)
        {
            let d = side(&s, from, Direction::Egress, "ravenclaw/luna", TCP, 80);
            assert_eq!(d.allowed(), !denied, "{subject} {from}: {}", verdict(&d));
        }
    }
}

/// policies/ with a few workloads added where the guardrails have something to decide.
fn examples_with_tenants() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut set = crate::policy::parse::load_dir(&dir, &mut Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let workload = |namespace: &str, name: &str, labels: &str, address: &str| {
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec: {{addresses: [{address}]}}\n---\n"
        )
    };
    let extra = [
        workload("tenant-a-research", "notebook", "{}", "10.1.0.1"),
        workload("tenant-a-jobs", "job", "{}", "10.1.0.2"),
        workload("tenant-b-research", "notebook", "{}", "10.2.0.1"),
        workload("team-sandbox", "web", "{app: web}", "10.3.0.1"),
        workload("team-sandbox", "batch", "{}", "10.3.0.2"),
        workload("kube-system", "coredns", "{k8s-app: kube-dns}", "10.9.0.10"),
    ]
    .concat();
    parse_into(Path::new("extra.yaml"), &extra, &mut set).unwrap_or_else(|e| panic!("{e}"));
    set
}

#[test]
fn the_example_guardrails_decide_as_their_comments_say() {
    let s = examples_with_tenants();
    let check = |local: &str, direction, remote: &str, protocol, port, want: &str| {
        let d = side(&s, local, direction, remote, protocol, port);
        assert_eq!(verdict(&d), want, "{local} {direction} {remote} {port}");
    };
    use Direction::{Egress, Ingress};
    // Tenants: across is denied in the Admin tier, both ways; within is passed on to the
    // tenants' own NetworkPolicies.
    check(
        "tenant-a-research/notebook",
        Egress,
        "tenant-b-research/notebook",
        TCP,
        80,
        "Admin Deny by tenant-a-isolation/\"other-tenants\"",
    );
    check(
        "tenant-b-research/notebook",
        Ingress,
        "tenant-a-research/notebook",
        TCP,
        80,
        "Admin Deny by tenant-b-isolation/\"other-tenants\"",
    );
    check(
        "tenant-a-jobs/job",
        Ingress,
        "tenant-a-research/notebook",
        TCP,
        80,
        "pass tenant-a-isolation/\"same-tenant\"; NetworkPolicy tenant-a-jobs/tenant-isolation allows",
    );
    // The metadata service: denied to every workload, from the ml pipeline as well.
    check(
        "ml-pipeline/trainer-0",
        Egress,
        "169.254.169.254",
        TCP,
        80,
        "Admin Deny by cloud-metadata/\"metadata-service\"",
    );
    check(
        "team-sandbox/batch",
        Egress,
        "192.0.2.7",
        TCP,
        443,
        "Admin Deny by blocked-addresses/\"block-list\"",
    );
    // The Baseline default deny, and the NetworkPolicy that opens the web port.
    check(
        "team-sandbox/web",
        Ingress,
        "ml-pipeline/trainer-0",
        TCP,
        8080,
        "NetworkPolicy team-sandbox/allow-web allows",
    );
    check(
        "team-sandbox/web",
        Ingress,
        "ml-pipeline/trainer-0",
        TCP,
        9090,
        "NetworkPolicy denies",
    );
    check(
        "team-sandbox/batch",
        Ingress,
        "ml-pipeline/trainer-0",
        TCP,
        8080,
        "Baseline Deny by baseline-default-deny/\"no-workloads-in\"",
    );
    check(
        "team-sandbox/batch",
        Egress,
        "kube-system/coredns",
        UDP,
        53,
        "Baseline Accept by baseline-default-deny/\"dns\"",
    );
    check(
        "team-sandbox/web",
        Egress,
        "8.8.8.8",
        TCP,
        443,
        "Baseline Deny by baseline-default-deny/\"nothing-else-out\"",
    );
    assert!(priority_ties(&s).is_empty(), "{:?}", priority_ties(&s));
}

/// Two Nodes: a control plane (with a workload's address too, as a host-network pod's
/// would be) and a worker.
const NODES: &str = "apiVersion: v1
kind: Node
metadata: {name: cp-1, labels: {node-role.kubernetes.io/control-plane: ''}}
status:
  addresses:
    - {type: InternalIP, address: 10.9.0.1}
    - {type: ExternalIP, address: 'fd09::1'}
    - {type: InternalIP, address: 10.0.2.1}
---
apiVersion: v1
kind: Node
metadata: {name: worker-1, labels: {zone: a}}
status: {addresses: [{type: InternalIP, address: 10.9.0.2}]}
---
";

#[test]
fn a_nodes_peer_matches_the_addresses_of_the_nodes_whose_labels_match() {
    let deny = "  egress:\n    - name: control-plane\n      action: Deny\n      to: [{nodes: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]}}]\n";
    let s = set(&format!(
        "{NODES}{}",
        cnp("guard", "Admin", 1, "gryffindor", deny)
    ));
    let egress = |remote: &str| {
        verdict(&side(
            &s,
            "gryffindor/harry",
            Direction::Egress,
            remote,
            TCP,
            6443,
        ))
    };
    for remote in ["10.9.0.1", "fd09::1", "ravenclaw/luna"] {
        assert_eq!(
            egress(remote),
            "Admin Deny by guard/\"control-plane\"",
            "{remote}"
        );
    }
    for remote in ["10.9.0.2", "10.9.0.3"] {
        assert_eq!(egress(remote), "default allow", "{remote}");
    }
    assert!(empty_nodes_peers(&s).is_empty());

    // Without the Nodes, the peer selects nothing, which is a warning.
    let s = set(&cnp("guard", "Admin", 1, "gryffindor", deny));
    let d = side(
        &s,
        "gryffindor/harry",
        Direction::Egress,
        "10.9.0.1",
        TCP,
        1,
    );
    assert_eq!(verdict(&d), "default allow");
    let warnings = empty_nodes_peers(&s);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("guard egress rule \"control-plane\" (t.yaml:"),
        "{warnings:?}"
    );
}
