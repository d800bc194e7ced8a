//! The real agent against the real kernel: the example ML-pipeline policies enforced on
//! workloads that are network namespaces with processes in their own cgroups (and one
//! enforced by TC on its host-side veth), probed with real TCP, UDP and ICMP traffic.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde_json::Value;
use stagewall_tests::{Testbed, metric_sum, privileged};

const NS: &str = "ml-pipeline";
/// The external data source: an outside address inside the ingestion's allowed block.
const EXTERNAL: &str = "203.0.113.5";

/// A file of the repository (the example policies, the test data).
fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn example(path: &str) -> String {
    repo_file(&format!("policies/{path}"))
}

/// The example pipeline as a Pipeline document (what policies/ ships).
const PIPELINE_KIND: &str = "policies/ml-pipeline/pipeline.yaml";
/// The same pipeline as plain NetworkPolicies.
const NETWORKPOLICY_VERSION: &str = "tests/data/ml-pipeline-networkpolicies.yaml";

/// The pipeline test bed: the example pipeline policies unchanged (`policy_file`), an
/// inventory for the namespaces created here, echo servers on every port the policies name
/// and some more.
fn pipeline(policy_file: &str) -> Testbed {
    let mut bed = Testbed::new(&[
        "ingest", "validate", "trainer", "serving", "monitor", "external",
    ])
    .expect("creating the test bed");
    let mut inventory = String::new();
    inventory += &bed.workload_yaml("ingest", NS, "{stage: data-ingestion}", false);
    inventory += &bed.workload_yaml("validate", NS, "{stage: data-validation}", false);
    inventory += &bed.workload_yaml("trainer", NS, "{stage: training, role: worker}", false);
    inventory += &bed.workload_yaml("serving", NS, "{stage: model-serving}", true);
    inventory += &bed.workload_yaml(
        "monitor",
        NS,
        "{app: inference-monitor, stage: monitoring}",
        false,
    );
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy("namespace.yaml", &example("ml-pipeline/namespace.yaml"))
        .unwrap();
    bed.write_policy("pipeline.yaml", &repo_file(policy_file))
        .unwrap();
    bed.make_outside("external", EXTERNAL).unwrap();
    bed.serve("ingest", &[8080], &[8080]).unwrap();
    bed.serve("validate", &[9090, 9091], &[9090]).unwrap();
    bed.serve("trainer", &[2222, 8888, 9999], &[]).unwrap();
    bed.serve("serving", &[8500, 8501, 8502], &[]).unwrap();
    bed
}

fn v4(bed: &Testbed, node: &str) -> IpAddr {
    bed.node(node).v4
}

fn v6(bed: &Testbed, node: &str) -> IpAddr {
    bed.node(node).v6
}

/// Every probe of the pipeline, with the outcome enforce mode must give.
fn probes(bed: &Testbed) -> Vec<(&'static str, stagewall_tests::Outcome, &'static str)> {
    vec![
        (
            "ingest -> validate:9090 v4",
            bed.tcp("ingest", v4(bed, "validate"), 9090),
            "ok",
        ),
        (
            "ingest -> validate:9090 v6",
            bed.tcp("ingest", v6(bed, "validate"), 9090),
            "ok",
        ),
        (
            "ingest -> its own 127.0.0.1:8080",
            bed.tcp("ingest", "127.0.0.1".parse().unwrap(), 8080),
            "ok",
        ),
        (
            "ingest -> its own [::1]:8080",
            bed.tcp("ingest", "::1".parse().unwrap(), 8080),
            "ok",
        ),
        (
            "ingest -> its own address :8080",
            bed.tcp("ingest", v4(bed, "ingest"), 8080),
            "ok",
        ),
        (
            "ingest -> its own address :8080/udp",
            bed.udp("ingest", v6(bed, "ingest"), 8080, 1),
            "ok",
        ),
        (
            "ingest -> validate:9091",
            bed.tcp("ingest", v4(bed, "validate"), 9091),
            "eperm",
        ),
        (
            "trainer -> validate:9090",
            bed.tcp("trainer", v4(bed, "validate"), 9090),
            "eperm",
        ),
        (
            "external -> ingest:8080",
            bed.tcp("external", v4(bed, "ingest"), 8080),
            "ok",
        ),
        (
            "external -> validate:9090",
            bed.tcp("external", v4(bed, "validate"), 9090),
            "timeout",
        ),
        (
            "trainer -> serving:8500 (tc)",
            bed.tcp("trainer", v4(bed, "serving"), 8500),
            "ok",
        ),
        (
            "trainer -> serving:8501 v6 (tc)",
            bed.tcp("trainer", v6(bed, "serving"), 8501),
            "ok",
        ),
        (
            "monitor -> serving:8501 (tc)",
            bed.tcp("monitor", v4(bed, "serving"), 8501),
            "ok",
        ),
        (
            "ingest -> serving:8500",
            bed.tcp("ingest", v4(bed, "serving"), 8500),
            "eperm",
        ),
        (
            "external -> serving:8500 (tc)",
            bed.tcp("external", v4(bed, "serving"), 8500),
            "timeout",
        ),
        (
            "trainer -> serving:8502",
            bed.tcp("trainer", v4(bed, "serving"), 8502),
            "eperm",
        ),
        (
            "external -> trainer:2222",
            bed.tcp("external", v4(bed, "trainer"), 2222),
            "timeout",
        ),
        (
            "external -> ingest:8080/udp x3",
            bed.udp("external", v4(bed, "ingest"), 8080, 3),
            "timeout",
        ),
        (
            "ingest -> validate:9090/udp",
            bed.udp("ingest", v4(bed, "validate"), 9090, 1),
            "eperm",
        ),
    ]
}

/// (workload, direction, peer, protocol, destination port) of an event.
type Signature = (String, String, String, String, Option<u64>);

fn signature(e: &Value) -> Signature {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    (
        s("workload"),
        s("direction"),
        s("peer"),
        s("protocol"),
        e["dst_port"].as_u64(),
    )
}

fn sig(
    workload: &str,
    direction: &str,
    peer: &str,
    protocol: &str,
    port: Option<u64>,
) -> Signature {
    let name = |n: &str| {
        if n.contains('/') {
            n.to_string()
        } else {
            format!("{NS}/{n}")
        }
    };
    // Peers are workloads, CIDRs or "world".
    let peer = if peer.contains('/') || peer == "world" {
        peer.to_string()
    } else {
        name(peer)
    };
    (
        name(workload),
        direction.into(),
        peer,
        protocol.into(),
        port,
    )
}

/// The violations enforce mode must report for `probes`, each with the hook that sees it.
fn expected_violations() -> BTreeMap<Signature, &'static str> {
    let cidr = "203.0.113.0/24";
    BTreeMap::from([
        (
            sig("ingest", "egress", "validate", "tcp", Some(9091)),
            "connect",
        ),
        (
            sig("trainer", "egress", "validate", "tcp", Some(9090)),
            "connect",
        ),
        (
            sig("validate", "ingress", cidr, "tcp", Some(9090)),
            "cgroup_skb",
        ),
        (
            sig("ingest", "egress", "serving", "tcp", Some(8500)),
            "connect",
        ),
        (sig("serving", "ingress", cidr, "tcp", Some(8500)), "tc"),
        (
            sig("trainer", "egress", "serving", "tcp", Some(8502)),
            "connect",
        ),
        (
            sig("trainer", "ingress", cidr, "tcp", Some(2222)),
            "cgroup_skb",
        ),
        (
            sig("ingest", "ingress", cidr, "udp", Some(8080)),
            "cgroup_skb",
        ),
        (
            sig("ingest", "egress", "validate", "udp", Some(9090)),
            "sendmsg",
        ),
    ])
}

#[test]
fn enforce_mode_allows_the_pipeline_and_drops_the_rest() {
    enforce_pipeline(
        PIPELINE_KIND,
        &[
            "training-pipeline-default-deny",
            "training-pipeline-data-validation",
        ],
    );
}

/// The plain NetworkPolicy version of the pipeline gives every probe the same verdict and
/// reports the same violations as the Pipeline document.
#[test]
fn networkpolicy_version_enforces_exactly_what_the_pipeline_kind_does() {
    enforce_pipeline(NETWORKPOLICY_VERSION, &["default-deny", "data-validation"]);
}

/// Runs every probe of the pipeline in enforce mode against `policy_file` and checks the
/// outcomes, the events (`isolating`: the policies that isolate data-validation's ingress)
/// and the metrics, then that stopping the agent removes enforcement.
fn enforce_pipeline(policy_file: &str, isolating: &[&str]) {
    if !privileged() {
        return;
    }
    let bed = pipeline(policy_file);
    let mut agent = bed.start_agent(&[]).expect("starting the agent");

    let results = probes(&bed);
    for (what, outcome, expected) in &results {
        assert!(
            outcome.is(expected),
            "{what}: expected {expected}, got {outcome:?}\n{}",
            agent.log()
        );
        if *expected == "eperm" {
            // Denied egress fails at connect/sendmsg, not after retransmits.
            assert!(
                outcome.millis < 500,
                "{what}: denied connect took {} ms",
                outcome.millis
            );
        }
    }
    assert!(
        !bed.ping("external", v4(&bed, "serving")),
        "ping to serving must be dropped (tc)"
    );
    assert!(
        !bed.ping("external", v6(&bed, "serving")),
        "ping6 to serving must be dropped (tc)"
    );

    let expected = expected_violations();
    let min_events = expected.len() + 2 + 2; // + 2 more UDP datagrams + 2 pings
    let events = agent.wait_events(min_events);
    let mut seen: BTreeMap<Signature, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["verdict"], "dropped", "{e}");
        assert_eq!(e["reason"], "no-rule", "{e}");
        assert!(
            e["time"].as_str().is_some_and(|t| t.starts_with("20")),
            "{e}"
        );
        seen.entry(signature(e)).or_default().push(e);
    }
    let mut expected_sigs: BTreeSet<Signature> = expected.keys().cloned().collect();
    expected_sigs.insert(sig("serving", "ingress", "203.0.113.0/24", "icmp", None));
    expected_sigs.insert(sig("serving", "ingress", "world", "icmpv6", None));
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        expected_sigs,
        "events: {events:#?}"
    );
    for (s, hook) in &expected {
        assert!(
            seen[s].iter().all(|e| e["hook"] == *hook),
            "{s:?} expected hook {hook}: {:?}",
            seen[s]
        );
    }
    // Exact counts where the sender does not retransmit: 3 datagrams, 1 send, 1 connect.
    assert_eq!(
        seen[&sig("ingest", "ingress", "203.0.113.0/24", "udp", Some(8080))].len(),
        3
    );
    assert_eq!(
        seen[&sig("ingest", "egress", "validate", "udp", Some(9090))].len(),
        1
    );
    assert_eq!(
        seen[&sig("ingest", "egress", "validate", "tcp", Some(9091))].len(),
        1
    );
    // The event names the policies that isolate the workload.
    let e = seen[&sig("validate", "ingress", "203.0.113.0/24", "tcp", Some(9090))][0];
    let isolating: Vec<String> = isolating.iter().map(|p| format!("{NS}/{p}")).collect();
    assert_eq!(e["policies"], serde_json::json!(isolating));
    assert_eq!(e["src"], EXTERNAL);
    assert_eq!(e["dst"], v4(&bed, "validate").to_string());

    // The metric counts exactly the violations printed.
    let (metrics, events) = agent.settled_metrics_and_events();
    let total = metric_sum(&metrics, "ml_network_violations_total", &[]);
    assert_eq!(total as usize, events.len(), "{metrics}");
    let one = metric_sum(
        &metrics,
        "ml_network_violations_total",
        &[
            ("source", "ml-pipeline/ingest"),
            ("destination", "ml-pipeline/validate"),
            // No policy names 9091: the bounded label is "other".
            ("port", "other"),
        ],
    );
    assert_eq!(one, 1.0, "{metrics}");
    let udp = metric_sum(
        &metrics,
        "ml_network_violations_total",
        &[
            ("source", "203.0.113.0/24"),
            ("destination", "ml-pipeline/ingest"),
            ("port", "8080"),
        ],
    );
    assert_eq!(udp, 3.0, "{metrics}");
    assert!(
        metric_sum(
            &metrics,
            "stagewall_packets_total",
            &[("verdict", "allowed")]
        ) > 0.0
    );
    assert!(
        metric_sum(&metrics, "stagewall_reply_packets_total", &[]) > 0.0,
        "replies pass as replies"
    );
    assert_eq!(
        metric_sum(&metrics, "stagewall_events_lost_total", &[]),
        0.0
    );
    assert_eq!(
        metric_sum(&metrics, "stagewall_workloads_enforced", &[]),
        5.0
    );

    // Stopped, the agent leaves its programs enforcing; `stagewall uninstall` removes
    // every attachment: what was denied flows again.
    agent.stop().expect("clean shutdown");
    assert!(
        bed.tcp("ingest", v4(&bed, "validate"), 9091).is("eperm"),
        "enforcement goes on while the agent is down"
    );
    assert!(bed.tcp("external", v4(&bed, "serving"), 8500).is("timeout"));
    let said = bed.uninstall().expect("uninstall");
    assert!(
        said.contains("every stagewall program is detached"),
        "{said}"
    );
    assert!(!bed.bpffs.exists());
    assert!(
        bed.tcp("ingest", v4(&bed, "validate"), 9091).is("ok"),
        "cgroup programs still attached"
    );
    assert!(
        bed.tcp("external", v4(&bed, "serving"), 8500).is("ok"),
        "tc programs still attached"
    );
    assert!(bed.udp("external", v4(&bed, "ingest"), 8080, 1).is("ok"));
}

#[test]
fn audit_mode_drops_nothing_and_reports_what_enforce_drops() {
    if !privileged() {
        return;
    }
    let bed = pipeline(PIPELINE_KIND);
    let agent = bed
        .start_agent(&["--mode", "audit"])
        .expect("starting the agent");
    for (what, outcome, _) in probes(&bed) {
        assert!(
            outcome.is("ok"),
            "audit mode must not drop: {what}: {outcome:?}\n{}",
            agent.log()
        );
    }
    assert!(
        bed.ping("external", v4(&bed, "serving")),
        "audit mode must not drop ICMP"
    );

    let expected = expected_violations();
    let events = agent.wait_events(expected.len() + 3);
    let mut seen: BTreeMap<Signature, usize> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["verdict"], "would-drop", "{e}");
        *seen.entry(signature(e)).or_default() += 1;
    }
    // Every drop of enforce mode is reported. A packet enforce mode drops at the sender
    // never reaches the receiver; in audit mode it does, and the receiver's ingress policy
    // reports it too when it also denies it. Those are the only extra events allowed.
    for s in expected.keys() {
        assert!(
            seen.contains_key(s),
            "audit mode did not report {s:?}: {events:#?}"
        );
    }
    let egress_flows: BTreeSet<(String, String, Option<u64>)> = expected
        .keys()
        .filter(|s| s.1 == "egress")
        .map(|s| (s.0.clone(), s.2.clone(), s.4))
        .collect();
    for s in seen.keys().filter(|s| !expected.contains_key(s)) {
        let is_icmp = s.3 == "icmp" && s.0 == format!("{NS}/serving");
        let receiver_of_denied_egress =
            s.1 == "ingress" && egress_flows.contains(&(s.2.clone(), s.0.clone(), s.4));
        assert!(
            is_icmp || receiver_of_denied_egress,
            "unexpected would-drop {s:?}: {events:#?}"
        );
    }
    assert_eq!(
        seen[&sig("ingest", "ingress", "203.0.113.0/24", "udp", Some(8080))],
        3
    );
    // Replies of would-dropped packets are replies, not violations.
    assert!(
        !seen
            .keys()
            .any(|s| s.1 == "egress" && s.2 == "203.0.113.0/24"),
        "replies reported as violations: {events:#?}"
    );
}

/// Tenant isolation by namespaceSelector (the example policies), protocol-wide rules (ICMP
/// passes a rule without ports), IPv6 UDP, and a TC-enforced workload's egress.
#[test]
fn tenants_are_isolated_and_rules_without_ports_allow_every_protocol() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["a1", "a2", "b1"]).expect("creating the test bed");
    let mut inventory = String::new();
    inventory += &bed.workload_yaml("a1", "tenant-a-research", "{app: notebook}", false);
    inventory += &bed.workload_yaml("a2", "tenant-a-jobs", "{app: batch}", true);
    inventory += &bed.workload_yaml("b1", "tenant-b-research", "{app: notebook}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy("tenants.yaml", &example("tenants/tenants.yaml"))
        .unwrap();
    // The batch runner may only send to its own tenant, on TCP 80.
    bed.write_policy(
        "batch-egress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: batch-egress, namespace: tenant-a-jobs}\nspec:\n  podSelector: {matchLabels: {app: batch}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{namespaceSelector: {matchLabels: {tenant: a}}}]\n      ports: [{port: 80}]\n",
    )
    .unwrap();
    for node in ["a1", "a2", "b1"] {
        bed.serve(node, &[80], &[5353]).unwrap();
    }
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let (a1, a2, b1) = (v4(&bed, "a1"), v4(&bed, "a2"), v4(&bed, "b1"));

    assert!(bed.tcp("a1", a2, 80).is("ok"), "same tenant, tc ingress");
    assert!(
        bed.tcp("a2", a1, 80).is("ok"),
        "same tenant, tc egress allowed on 80"
    );
    assert!(
        bed.udp("a1", v6(&bed, "a2"), 5353, 1).is("ok"),
        "protocol-wide ingress rule, IPv6 UDP"
    );
    assert!(bed.ping("a1", a2), "ICMP passes a rule without ports");
    assert!(bed.tcp("b1", a1, 80).is("timeout"), "other tenant -> a1");
    assert!(
        bed.tcp("b1", a2, 80).is("timeout"),
        "other tenant -> a2 (tc)"
    );
    assert!(bed.tcp("a1", b1, 80).is("timeout"), "tenant a -> b1");
    assert!(!bed.ping("b1", a2), "other tenant's ICMP");
    assert!(
        bed.udp("a2", v6(&bed, "a1"), 5353, 1).is("timeout"),
        "a2's egress allows TCP 80 only (tc drop)"
    );
    assert!(
        bed.tcp("a2", b1, 80).is("timeout"),
        "a2's egress stays within its tenant"
    );

    let events = agent.wait_events(6);
    let sigs: BTreeSet<Signature> = events.iter().map(signature).collect();
    let expect = |w: &str, dir: &str, peer: &str, proto: &str, port: Option<u64>| {
        (
            w.to_string(),
            dir.to_string(),
            peer.to_string(),
            proto.to_string(),
            port,
        )
    };
    for s in [
        expect(
            "tenant-a-research/a1",
            "ingress",
            "tenant-b-research/b1",
            "tcp",
            Some(80),
        ),
        expect(
            "tenant-a-jobs/a2",
            "ingress",
            "tenant-b-research/b1",
            "tcp",
            Some(80),
        ),
        expect(
            "tenant-b-research/b1",
            "ingress",
            "tenant-a-research/a1",
            "tcp",
            Some(80),
        ),
        expect(
            "tenant-a-jobs/a2",
            "ingress",
            "tenant-b-research/b1",
            "icmp",
            None,
        ),
        expect(
            "tenant-a-jobs/a2",
            "egress",
            "tenant-a-research/a1",
            "udp",
            Some(5353),
        ),
        expect(
            "tenant-a-jobs/a2",
            "egress",
            "tenant-b-research/b1",
            "tcp",
            Some(80),
        ),
    ] {
        assert!(sigs.contains(&s), "missing {s:?} in {sigs:#?}");
    }
    assert!(events.iter().all(|e| e["verdict"] == "dropped"));
    let tc_egress = events
        .iter()
        .find(|e| e["workload"] == "tenant-a-jobs/a2" && e["direction"] == "egress")
        .unwrap();
    assert_eq!(tc_egress["hook"], "tc");
}
