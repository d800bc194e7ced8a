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
    let links: Vec<String> = std::fs::read_dir(stagewall_tests::pinned_links(&bed.bpffs))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), 10, "only the guard's ten links: {links:?}");

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

/// The agent below its own guard (a service in the guarded tree on a host, or its own pod
/// in a DaemonSet): it keeps its network, also when a new agent in another cgroup takes
/// over the guard a previous one left in force, while a process in no workload is denied.
#[test]
fn the_agent_below_its_own_guard_keeps_its_network_also_across_a_takeover() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "stray"]).expect("creating the test bed");
    let guard = bed.cgroup_base_path();
    bed.write_policy(
        "workloads.yaml",
        &bed.workload_yaml("client", "app", "{app: client}", false),
    )
    .unwrap();
    bed.serve("client", &[80], &[]).unwrap();
    let first = bed.make_cgroup("agent-1").expect("a cgroup for the agent");
    // start_agent_in waits for the agent's /readyz, asked from the node (the hub): the
    // agent's own socket is below the guard.
    let mut agent = bed
        .start_agent_in(
            &first,
            &["--guard-cgroup", &guard, "--metrics-addr", "0.0.0.0:9742"],
        )
        .expect("the agent below its guard answers");
    // Scraped from another host (the client, at the node's address): loopback alone
    // would not show it, the programs leave loopback traffic alone.
    bed.give_hub_gateway().unwrap();
    let scrape = format!("{}:9742", stagewall_tests::HUB_GATEWAY);
    let answers = |_: &stagewall_tests::Agent| {
        bed.probe("client", &["get", &scrape, "/readyz", "1000"])
            .is("ok")
    };
    // Asked again once its guard is attached (the first answer may come before).
    assert!(bed.tcp("stray", bed.node("client").v4, 80).is("eperm"));
    assert!(answers(&agent), "{}", agent.log());
    // Killed: the guard stays in force (pinned). A new agent in a new cgroup (a new
    // pod) lets itself through before anything else.
    agent.kill();
    let second = bed
        .make_cgroup("agent-2")
        .expect("a cgroup for the new agent");
    let agent = bed
        .start_agent_in(
            &second,
            &["--guard-cgroup", &guard, "--metrics-addr", "0.0.0.0:9742"],
        )
        .expect("the new agent below the guard in force answers");
    assert!(answers(&agent), "{}", agent.log());
    assert!(
        agent.log().contains("let through the guards in force"),
        "{}",
        agent.log()
    );
    assert!(bed.tcp("stray", bed.node("client").v4, 80).is("eperm"));
    assert!(bed.tcp("client", bed.node("client").v4, 80).is("ok"));
}
