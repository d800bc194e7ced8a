//! Fail closed until programmed: with `--guard-cgroup`, a process below the guard cgroup
//! that is in no workload has no network (denied as "default deny", reported as the
//! `unprogrammed` workload) from its first packet, until a policy names its workload;
//! workloads below the guard are enforced by the guard's programs alone.

use std::time::{Duration, Instant};

use stagewall_tests::{Testbed, privileged};

#[test]
fn below_a_guard_cgroup_a_workload_is_denied_until_its_policy_is_programmed() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "late"]).expect("creating the test bed");
    let guard = bed.cgroup_base_path();
    let mut inventory = bed.workload_yaml("client", "app", "{app: client}", false);
    inventory += &bed.workload_yaml("server", "app", "{app: server}", false);
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]\n";
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy("policy.yaml", policy).unwrap();
    for n in ["client", "server", "late"] {
        bed.serve(n, &[80, 81], &[]).unwrap();
    }
    let agent = bed
        .start_agent(&["--guard-cgroup", &guard])
        .expect("starting the agent");
    let (client, server, late) = (
        bed.node("client").v4,
        bed.node("server").v4,
        bed.node("late").v4,
    );

    // Workloads below the guard: enforced through the guard's programs alone.
    assert!(bed.tcp("client", server, 80).is("ok"));
    assert!(bed.tcp("client", server, 81).is("timeout"));
    assert!(bed.tcp("server", client, 80).is("ok"));
    let links: Vec<String> = std::fs::read_dir(bed.bpffs.join("v1/links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), 6, "only the guard's six links: {links:?}");

    // A process in no workload below the guard: no network, either way.
    assert!(bed.tcp("late", server, 80).is("eperm"));
    assert!(bed.tcp("late", client, 80).is("eperm"));
    assert!(bed.tcp("client", late, 80).is("timeout"));
    let events = agent.wait_events(3);
    assert!(
        events
            .iter()
            .any(|e| e["workload"] == "unprogrammed" && e["reason"] == "default-deny"),
        "{events:#?}"
    );

    // Its workload appears in the inventory: programmed, it reaches what its (absent)
    // policy allows, and what the server's policy allows it (not port 80: only the
    // client may).
    inventory += &bed.workload_yaml("late", "app", "{app: late}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    let started = Instant::now();
    while !bed.tcp("late", client, 80).is("ok") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not programmed:\n{}",
            agent.log()
        );
    }
    assert!(bed.tcp("client", late, 80).is("ok"));
    assert!(bed.tcp("late", server, 80).is("timeout"));
}
