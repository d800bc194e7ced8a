//! Policy changes under live traffic: the agent applies every change of its policy
//! directory atomically (no packet sees half of the old and half of the new policy), and
//! a change that fails validation is reported with file and line while the policy in force
//! stays.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use stagewall_tests::{Agent, Testbed, metric_sum, privileged};

/// Policy A: the client reaches the server on TCP 80, 82, UDP 80 (both sides' rules), and
/// its egress allows 84, which the server's ingress denies.
fn policy_a() -> String {
    "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: app}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 80}, {port: 82}, {port: 80, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: app}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {app: server}}}]
      ports: [{port: 80}, {port: 82}, {port: 84}, {port: 80, protocol: UDP}]
"
    .to_string()
}

/// Policy B: the same verdicts for 80, 81 and 84 through different rules (CIDRs instead
/// of selectors, so other identities and entries in the kernel), 83 instead of 82.
fn policy_b(server: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server, namespace: app}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - from: [{{ipBlock: {{cidr: 198.18.0.0/24}}}}]
      ports: [{{port: 80}}, {{port: 83}}, {{port: 80, protocol: UDP}}]
    - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: nobody}}}}}}]
      ports: [{{port: 81}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client, namespace: app}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
    - to: [{{ipBlock: {{cidr: {server}/32}}}}]
      ports: [{{port: 80}}, {{port: 83}}, {{port: 84}}, {{port: 80, protocol: UDP}}]
    - to: [{{ipBlock: {{cidr: 192.0.2.0/24}}}}]
      ports: [{{port: 81}}]
"
    )
}

/// How many times the test switches between policy A and B under traffic.
const FLIPS: usize = 60;

fn generation(agent: &Agent) -> f64 {
    metric_sum(&agent.metrics(), "stagewall_policy_generation", &[])
}

/// Waits until the agent has applied a policy after `before`; returns how long it took.
fn wait_applied(agent: &Agent, before: f64) -> Duration {
    let start = Instant::now();
    while generation(agent) <= before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no reload within 5 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// A test bed with the client and server workloads (cgroups) in `workloads.yaml`.
fn client_and_server() -> Testbed {
    let bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let mut inventory = bed.workload_yaml("client", "app", "{app: client}", false);
    inventory += &bed.workload_yaml("server", "app", "{app: server}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed
}

#[test]
fn policy_flips_under_live_traffic_never_give_a_third_verdict() {
    if !privileged() {
        return;
    }
    let mut bed = client_and_server();
    bed.write_policy("policy.yaml", &policy_a()).unwrap();
    bed.serve("server", &[80, 81, 82, 83, 84], &[80]).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let server = bed.node("server").v4;
    let b = policy_b(&server.to_string());

    // The verdicts both policies give: anything else is a third answer.
    let probes = AtomicUsize::new(0);
    let wrong = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut latencies = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    for (what, outcome, expected) in [
                        ("tcp 80", bed.tcp("client", server, 80), "ok"),
                        ("udp 80", bed.udp("client", server, 80, 1), "ok"),
                        ("tcp 81", bed.tcp("client", server, 81), "eperm"),
                        (
                            "tcp 84",
                            bed.probe("client", &["tcp", &server.to_string(), "84", "200"]),
                            "timeout",
                        ),
                    ] {
                        probes.fetch_add(1, Ordering::Relaxed);
                        if !outcome.is(expected) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            eprintln!("third verdict: {what}: {outcome:?}, expected {expected}");
                        }
                    }
                }
            });
        }
        for flip in 0..FLIPS {
            let before = generation(&agent);
            let policy = if flip % 2 == 0 { b.clone() } else { policy_a() };
            bed.write_policy("policy.yaml", &policy).unwrap();
            latencies.push(wait_applied(&agent, before));
            std::thread::sleep(Duration::from_millis(80));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (probes, wrong) = (probes.into_inner(), wrong.into_inner());
    latencies.sort();
    eprintln!(
        "{probes} probes during {FLIPS} policy flips, {wrong} with a third verdict; file write to policy applied: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(probes >= 100, "too few probes ran: {probes}");
    assert_eq!(wrong, 0);

    // The flips took effect: policy A is in force now (82 allowed, 83 denied).
    assert!(bed.tcp("client", server, 82).is("ok"));
    assert!(bed.tcp("client", server, 83).is("eperm"));
    let metrics = agent.metrics();
    assert!(
        metric_sum(
            &metrics,
            "stagewall_policy_reloads_total",
            &[("result", "applied")]
        ) >= 41.0
    );

    // A bad change is rejected with file and line, and policy A stays in force.
    let before = generation(&agent);
    let bad = bed
        .write_policy("zz-bad.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: app}\nspec:\n  podSelector: {}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n")
        .unwrap();
    let start = Instant::now();
    while metric_sum(
        &agent.metrics(),
        "stagewall_policy_reloads_total",
        &[("result", "rejected")],
    ) < 1.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "bad policy not rejected:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "{}:7: invalid CIDR \"10.0.0.0/33\"",
            bad.display()
        )),
        "{log}"
    );
    assert_eq!(
        generation(&agent),
        before,
        "a rejected change must not be applied"
    );
    for _ in 0..3 {
        assert!(bed.tcp("client", server, 80).is("ok"));
        assert!(bed.tcp("client", server, 82).is("ok"));
        assert!(bed.tcp("client", server, 83).is("eperm"));
    }
    // Fixing it applies again.
    bed.remove_policy("zz-bad.yaml").unwrap();
    wait_applied(&agent, before);
    assert!(bed.tcp("client", server, 82).is("ok"));
}

/// A workload whose cgroup does not exist yet is enforced as soon as it appears, without
/// any policy change.
#[test]
fn a_workload_started_after_the_agent_is_enforced_when_its_cgroup_appears() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let late = bed
        .node("client")
        .cgroup_path
        .replace("/client", "/late-client");
    let inventory = format!(
        "{}apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: late, namespace: app, labels: {{app: late}}}}\nspec:\n  cgroup: {late}\n  addresses: [198.18.0.99]\n---\n{}",
        bed.workload_yaml("server", "app", "{app: server}", false),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: late, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: late}}\n  policyTypes: [Egress]\n  egress: []\n"
    );
    bed.write_policy("policy.yaml", &inventory).unwrap();
    bed.serve("server", &[80], &[]).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let server = bed.node("server").v4;
    let before = generation(&agent);
    bed.move_cgroup("client", &late).unwrap();
    wait_applied(&agent, before);
    assert!(bed.tcp("client", server, 80).is("eperm"), "{}", agent.log());
}

/// A connection the client opened while nothing isolated it keeps working when a policy
/// then isolates the client's ingress (its replies are replies, not new connections).
/// The soak test found this: flows of workloads isolated in neither direction were not
/// tracked, so their replies were dropped once the isolation began.
#[test]
fn a_connection_opened_before_its_replies_direction_is_isolated_keeps_working() {
    if !privileged() {
        return;
    }
    let mut bed = client_and_server();
    bed.serve("server", &[80], &[]).unwrap();
    bed.serve("client", &[80], &[]).unwrap();
    let agent = bed.start_agent(&[]).expect("starting the agent");
    let server = bed.node("server").v4.to_string();
    let mut rr = bed.command("client", stagewall_tests::probe_bin()).unwrap();
    let rr = rr
        .args(["rr", &server, "80", "2500"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The client's ingress is isolated and allows nothing.
    let before = generation(&agent);
    bed.write_policy(
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    wait_applied(&agent, before);
    let out = rr.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    // `ok MS` then `transactions/s p50 p99 max` (µs): the exchange went on without a
    // stall. A reply in flight at the switch that were dropped would come again only
    // after TCP's retransmission timeout (200 ms at least).
    assert!(said.starts_with("ok"), "the connection broke: {said}");
    let max: f64 = said
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        max < 150_000.0,
        "a stall (a reply dropped, retransmitted): {said}"
    );
    // A new connection to the client is denied now.
    assert!(bed.tcp("server", bed.node("client").v4, 80).is("timeout"));
}
