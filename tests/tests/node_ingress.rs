//! The node's own traffic into an ingress-isolated workload on a host (bare metal): denied
//! like any address the policy does not name, unless `--node-ingress` makes the host's
//! addresses the node's, which ingress always allows (Kubernetes' rule for a pod's node,
//! on by default in Kubernetes mode: tests/tests/kubelet.rs shows kubelet's probes).

use stagewall_tests::{Outcome, Testbed, privileged};

/// A TCP connection from the node itself (the hub namespace, in no workload's cgroup).
fn from_node(bed: &Testbed, to: std::net::IpAddr) -> String {
    let out = bed
        .hub_command(stagewall_tests::probe_bin())
        .expect("a command in the hub")
        .args(["tcp", &to.to_string(), "80", "1000"])
        .output()
        .expect("running the probe");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_node_reaches_an_ingress_isolated_workload_only_with_node_ingress() {
    if !privileged() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "other"]).expect("creating the test bed");
    let mut inventory = bed.workload_yaml("client", "app", "{app: client}", false);
    inventory += &bed.workload_yaml("server", "app", "{app: server}", false);
    inventory += &bed.workload_yaml("other", "app", "{app: other}", false);
    bed.write_policy("workloads.yaml", &inventory).unwrap();
    bed.write_policy(
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]\n",
    )
    .unwrap();
    bed.serve("server", &[80], &[]).unwrap();
    // The node's address on the workloads' link.
    bed.give_hub_gateway().unwrap();
    let server = bed.node("server").v4;

    let mut agent = bed.start_agent(&[]).expect("starting the agent");
    assert!(
        from_node(&bed, server).starts_with("timeout"),
        "the node is no peer by default"
    );
    agent.stop().expect("stopping the agent");

    let agent = bed
        .start_agent(&["--node-ingress"])
        .expect("starting the agent with --node-ingress");
    let said = from_node(&bed, server);
    assert!(said.starts_with("ok"), "{said}\n{}", agent.log());
    assert!(bed.tcp("client", server, 80).is("ok"));
    let other: Outcome = bed.tcp("other", server, 80);
    assert!(other.is("timeout"), "only the node is let in: {other:?}");
}
