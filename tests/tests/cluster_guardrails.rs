//! ClusterNetworkPolicy guardrails on the real kernel, beyond the upstream conformance
//! cases (cluster_conformance.rs): a policy's own audit annotation, the event and metric
//! that name the deciding rule, the fast EPERM at connect, and a NetworkPolicy that
//! cannot open what the Admin tier denies. The policy is the shipped example
//! `policies/cluster/blocked-addresses.yaml`, unchanged but for the annotation. And the
//! experimental `nodes` peer: the control plane's Node denied by its role label.

use std::net::IpAddr;

use serde_json::Value;
use stagewall_tests::{Agent, Testbed, metric_sum, privileged, until};

/// An address of the example's block list (a documentation range), given to an outside
/// node the test creates.
const BLOCKED: &str = "192.0.2.10";

fn example(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The example with `stagewall.io/mode: audit` on it.
fn audited(yaml: &str) -> String {
    let audited = yaml.replacen(
        "  name: blocked-addresses\n",
        "  name: blocked-addresses\n  annotations: {stagewall.io/mode: audit}\n",
        1,
    );
    assert_ne!(audited, yaml, "the example's metadata changed");
    audited
}

/// A NetworkPolicy of the trainer's namespace that allows its egress to the whole block
/// list's first range and to the peer: the Admin tier is read first, so it opens nothing
/// the block list denies.
const NAMESPACE_OPENS_IT: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: trainer-egress, namespace: ml}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 192.0.2.0/24}}, {namespaceSelector: {}}]
";

fn generation(agent: &Agent) -> f64 {
    metric_sum(&agent.metrics(), "stagewall_policy_generation", &[])
}

/// Events of the trainer's connects to the blocked address.
fn blocked_events(agent: &Agent) -> Vec<Value> {
    agent
        .events()
        .into_iter()
        .filter(|e| e["dst"] == BLOCKED && e["workload"] == "ml/trainer")
        .collect()
}

fn rule_events(agent: &Agent, verdict: &str) -> f64 {
    metric_sum(
        &agent.metrics(),
        "stagewall_cluster_policy_rule_events_total",
        &[
            ("tier", "Admin"),
            ("policy", "blocked-addresses"),
            ("rule", "block-list"),
            ("action", "Deny"),
            ("verdict", verdict),
        ],
    )
}

#[test]
fn an_audited_guardrail_reports_then_enforced_it_denies_what_a_namespace_policy_allows() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["trainer", "peer", "blocked"]).expect("creating the test bed");
    let mut inventory = bed.workload_yaml("trainer", "ml", "{stage: training}", false);
    inventory += &bed.workload_yaml("peer", "data", "{app: store}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy("namespace-policy.yaml", NAMESPACE_OPENS_IT)
        .unwrap();
    let enforced = example("cluster/blocked-addresses.yaml");
    bed.write_policy("blocked-addresses.yaml", &audited(&enforced))
        .unwrap();
    bed.make_outside("blocked", BLOCKED).unwrap();
    bed.serve("blocked", &[80], &[]).unwrap();
    bed.serve("peer", &[5000], &[]).unwrap();
    let blocked: IpAddr = BLOCKED.parse().unwrap();
    let peer = bed.node("peer").v4;
    let agent = bed.start_agent(&[]).expect("starting the agent");

    // Audit: the connection goes through, and the rule that would deny it is reported.
    let outcome = bed.tcp("trainer", blocked, 80);
    assert!(outcome.is("ok"), "audited: {outcome:?}\n{}", agent.log());
    until(
        "the would-drop event",
        || agent.log(),
        || !blocked_events(&agent).is_empty(),
    );
    let e = &blocked_events(&agent)[0];
    assert_eq!(e["verdict"], "would-drop", "{e}");
    assert_eq!(e["reason"], "admin-deny", "{e}");
    assert_eq!(
        e["rule"],
        serde_json::json!({"tier": "Admin", "policy": "blocked-addresses", "name": "block-list", "action": "Deny"}),
        "{e}"
    );
    assert!(
        rule_events(&agent, "would-drop") >= 1.0,
        "{}",
        agent.metrics()
    );
    assert_eq!(rule_events(&agent, "dropped"), 0.0);

    // Enforced: refused at connect, although the namespace's own policy allows it; the
    // namespace policy still decides the rest.
    let before = generation(&agent);
    bed.write_policy("blocked-addresses.yaml", &enforced)
        .unwrap();
    until(
        "the enforced policy",
        || agent.log(),
        || generation(&agent) > before,
    );
    let outcome = bed.tcp("trainer", blocked, 80);
    assert!(
        outcome.is("eperm"),
        "enforced: {outcome:?}\n{}",
        agent.log()
    );
    assert!(
        outcome.millis < 500,
        "a denied connect fails at once, took {} ms",
        outcome.millis
    );
    let outcome = bed.tcp("trainer", peer, 5000);
    assert!(
        outcome.is("ok"),
        "trainer -> peer: {outcome:?}\n{}",
        agent.log()
    );
    until(
        "the dropped event",
        || agent.log(),
        || {
            blocked_events(&agent)
                .iter()
                .any(|e| e["verdict"] == "dropped")
        },
    );
    let e = blocked_events(&agent)
        .into_iter()
        .find(|e| e["verdict"] == "dropped")
        .unwrap();
    assert_eq!(e["reason"], "admin-deny", "{e}");
    assert_eq!(e["hook"], "connect", "{e}");
    assert_eq!(e["rule"]["name"], "block-list", "{e}");
    assert!(rule_events(&agent, "dropped") >= 1.0, "{}", agent.metrics());

    // Without the guardrail the namespace's policy decides alone: allowed.
    let before = generation(&agent);
    bed.remove_policy("blocked-addresses.yaml").unwrap();
    until(
        "the guardrail removed",
        || agent.log(),
        || generation(&agent) > before,
    );
    let outcome = bed.tcp("trainer", blocked, 80);
    assert!(
        outcome.is("ok"),
        "no guardrail: {outcome:?}\n{}",
        agent.log()
    );
}

/// A NetworkPolicy the namespace's owner writes, in audit mode and allowing all egress.
const OWNER_AUDITS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: owner-trial, namespace: ml, annotations: {stagewall.io/mode: audit}}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]
";

/// Two guardrails on trial (audit mode): an Accept of the block list ahead of it, and a
/// Deny of the data namespace.
const TRIAL: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: trial-accept, annotations: {stagewall.io/mode: audit}}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
    - {name: open-block-list, action: Accept, to: [{networks: [192.0.2.0/24]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: trial-deny, annotations: {stagewall.io/mode: audit}}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: ml}}}
  egress:
    - {name: no-data, action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: data}}}]}
";

/// Audit mode never weakens an enforced guardrail: not a NetworkPolicy's annotation (the
/// namespace owner's), not an audited ClusterNetworkPolicy that would accept what the
/// guardrail denies. An audited ClusterNetworkPolicy changes no verdict; it reports what it
/// would deny.
#[test]
fn audit_mode_never_weakens_an_enforced_guardrail() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["trainer", "peer", "blocked"]).expect("creating the test bed");
    let mut inventory = bed.workload_yaml("trainer", "ml", "{stage: training}", false);
    inventory += &bed.workload_yaml("peer", "data", "{app: store}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy("owner.yaml", OWNER_AUDITS).unwrap();
    bed.write_policy("trial.yaml", TRIAL).unwrap();
    bed.write_policy(
        "blocked-addresses.yaml",
        &example("cluster/blocked-addresses.yaml"),
    )
    .unwrap();
    bed.make_outside("blocked", BLOCKED).unwrap();
    bed.serve("blocked", &[80], &[]).unwrap();
    bed.serve("peer", &[5000], &[]).unwrap();
    let blocked: IpAddr = BLOCKED.parse().unwrap();
    let peer = bed.node("peer").v4;
    let agent = bed.start_agent(&[]).expect("starting the agent");

    let outcome = bed.tcp("trainer", blocked, 80);
    assert!(
        outcome.is("eperm"),
        "the block list, under an audited NetworkPolicy and an audited Accept: {outcome:?}\n{}",
        agent.log()
    );
    let outcome = bed.tcp("trainer", peer, 5000);
    assert!(
        outcome.is("ok"),
        "the audited Deny changes no verdict: {outcome:?}\n{}",
        agent.log()
    );
    until(
        "the audited Deny's would-drop",
        || agent.log(),
        || {
            agent
                .events()
                .iter()
                .any(|e| e["verdict"] == "would-drop" && e["rule"]["policy"] == "trial-deny")
        },
    );
    let events = agent.events();
    let trial = events
        .iter()
        .find(|e| e["rule"]["policy"] == "trial-deny")
        .unwrap();
    assert_eq!(trial["reason"], "admin-deny", "{trial}");
    assert_eq!(trial["rule"]["name"], "no-data", "{trial}");
    assert_eq!(trial["workload"], "ml/trainer", "{trial}");
    let dropped = events
        .iter()
        .find(|e| e["dst"] == BLOCKED)
        .unwrap_or_else(|| panic!("the block list's denial is reported: {events:?}"));
    assert_eq!(dropped["verdict"], "dropped", "{dropped}");
    assert_eq!(dropped["rule"]["policy"], "blocked-addresses", "{dropped}");
    assert!(
        events.iter().all(|e| e["rule"]["policy"] != "trial-accept"),
        "an Accept decides nothing to report"
    );
}

/// IPv6 through the tiers: a Deny of `::/0` (the any-peer program of IPv6) cuts the
/// dual-stack peer's IPv6 address and leaves its IPv4 one to the NetworkPolicy tier.
#[test]
fn an_ipv6_guardrail_denies_ipv6_only() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["trainer", "peer"]).expect("creating the test bed");
    let mut inventory = bed.workload_yaml("trainer", "ml", "{stage: training}", false);
    inventory += &bed.workload_yaml("peer", "data", "{app: store}", true);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy(
        "no-ipv6.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-ipv6}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: ml}}}
  egress:
    - {name: ipv4-only, action: Deny, to: [{networks: [\"::/0\"]}]}
",
    )
    .unwrap();
    bed.serve("peer", &[5000], &[5001]).unwrap();
    bed.serve("trainer", &[7000], &[]).unwrap();
    let (v4, v6) = (bed.node("peer").v4, bed.node("peer").v6);
    let trainer_v6 = bed.node("trainer").v6;
    let agent = bed.start_agent(&[]).expect("starting the agent");
    for (what, outcome, expected) in [
        ("tcp v6", bed.tcp("trainer", v6, 5000), "eperm"),
        ("udp v6", bed.udp("trainer", v6, 5001, 1), "eperm"),
        ("tcp v4", bed.tcp("trainer", v4, 5000), "ok"),
        ("udp v4", bed.udp("trainer", v4, 5001, 1), "ok"),
        // Into the trainer over IPv6: its replies pass its egress Deny (stateful).
        (
            "peer -> trainer v6",
            bed.tcp("peer", trainer_v6, 7000),
            "ok",
        ),
    ] {
        assert!(
            outcome.is(expected),
            "{what}: expected {expected}, got {outcome:?}\n{}",
            agent.log()
        );
    }
}

/// A Node document with `address`, and the control plane's role label when `control_plane`.
fn node_doc(name: &str, address: &str, control_plane: bool) -> String {
    let labels = if control_plane {
        "{node-role.kubernetes.io/control-plane: '', kubernetes.io/hostname: NAME}"
    } else {
        "{kubernetes.io/hostname: NAME}"
    }
    .replace("NAME", name);
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels}}}\nstatus:\n  addresses:\n    - {{type: InternalIP, address: {address}}}\n    - {{type: Hostname, address: {name}}}\n---\n"
    )
}

/// Every workload's egress to the control plane's nodes is denied, whatever their address.
const DENY_CONTROL_PLANE: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: control-plane}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
    - name: nodes
      action: Deny
      to:
        - nodes:
            matchExpressions:
              - {key: node-role.kubernetes.io/control-plane, operator: Exists}
";

#[test]
fn a_nodes_peer_denies_the_nodes_whose_labels_match_and_follows_their_labels() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["trainer", "control", "worker"]).expect("creating the test bed");
    bed.write_policy(
        "workloads.yaml",
        &bed.workload_yaml("trainer", "ml", "{stage: training}", false),
    )
    .unwrap();
    let (control, worker) = ("192.0.2.20", "192.0.2.21");
    bed.write_policy(
        "nodes.yaml",
        &(node_doc("cp-1", control, true) + &node_doc("worker-1", worker, false)),
    )
    .unwrap();
    bed.write_policy("control-plane.yaml", DENY_CONTROL_PLANE)
        .unwrap();
    bed.make_outside("control", control).unwrap();
    bed.make_outside("worker", worker).unwrap();
    bed.serve("control", &[80], &[]).unwrap();
    bed.serve("worker", &[80], &[]).unwrap();
    let (control, worker): (IpAddr, IpAddr) = (control.parse().unwrap(), worker.parse().unwrap());
    let agent = bed.start_agent(&[]).expect("starting the agent");

    let outcome = bed.tcp("trainer", control, 80);
    assert!(
        outcome.is("eperm"),
        "trainer -> control-plane node: {outcome:?}\n{}",
        agent.log()
    );
    let outcome = bed.tcp("trainer", worker, 80);
    assert!(
        outcome.is("ok"),
        "trainer -> worker node: {outcome:?}\n{}",
        agent.log()
    );
    until(
        "the dropped event",
        || agent.log(),
        || {
            agent.events().iter().any(|e| {
                e["dst"] == "192.0.2.20"
                    && e["verdict"] == "dropped"
                    && e["rule"]["name"] == "nodes"
            })
        },
    );

    // The role moves to the other node: the denial follows the label, not the address.
    let before = generation(&agent);
    bed.write_policy(
        "nodes.yaml",
        &(node_doc("cp-1", "192.0.2.20", false) + &node_doc("worker-1", "192.0.2.21", true)),
    )
    .unwrap();
    until(
        "the relabelled nodes",
        || agent.log(),
        || generation(&agent) > before,
    );
    let outcome = bed.tcp("trainer", control, 80);
    assert!(outcome.is("ok"), "unlabelled: {outcome:?}\n{}", agent.log());
    let outcome = bed.tcp("trainer", worker, 80);
    assert!(
        outcome.is("eperm"),
        "labelled: {outcome:?}\n{}",
        agent.log()
    );
}
