//! One object never freezes the node, on the real API server: a NetworkPolicy of 900
//! single ports from every namespace, with 300 other identities in the cluster (Workload
//! objects, created in one apply), needs about 270,000 POLICY entries, more than a slot
//! of the map holds. The agent leaves that object out (log, metric, a Warning Event on
//! it), keeps enforcing the older policy, and still applies a policy created after it.

use stagewall_tests::{Testbed, cluster::Cluster, metric_sum, privileged, until, until_within};

fn network_policy(name: &str, port_list: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ml}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{namespaceSelector: {{}}}}]\n    ports: [{port_list}]\n"
    )
}

#[test]
fn a_policy_too_large_for_the_kernel_maps_is_left_out_and_the_node_goes_on() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    cluster.create_namespace("ml").expect("namespace");
    for (name, labels) in [("client", "{app: client}"), ("server", "{app: server}")] {
        cluster.run_bed_pod(&mut bed, &base, name, "node-a", labels);
    }
    bed.serve("server", &[80, 81, 82, 10_000], &[]).unwrap();
    let server = bed.node("server").v4;
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &network_policy("older", "{protocol: TCP, port: 80}"),
        )
        .expect("the older policy");
    // 300 identities elsewhere in the cluster.
    let workloads: String = (0..300)
        .map(|i| {
            format!(
                "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: w{i}, namespace: ml, labels: {{app: w{i}}}}}\nspec: {{addresses: [\"10.250.{}.{}\"]}}\n---\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &workloads)
        .expect("300 Workload objects");

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent with the ServiceAccount's token");
    let log = || format!("{}\n{}", agent.log(), cluster.log("kube-apiserver"));
    until("the pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
    });
    until("the older policy in force", log, || {
        bed.tcp("client", server, 81).is("timeout")
    });
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());

    // The huge one (about 12 KB of YAML), then a small one after it.
    let many: Vec<String> = (0..900)
        .map(|p| format!("{{protocol: TCP, port: {}}}", 10_000 + p))
        .collect();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &network_policy("huge", &many.join(", ")),
        )
        .expect("the huge policy");
    // Finding what fits compiles the set a few times (seconds in a debug build).
    let took = until_within(
        "the huge policy left out",
        std::time::Duration::from_secs(60),
        log,
        || metric_sum(&agent.metrics(), "stagewall_objects_left_out", &[]) == 1.0,
    );
    println!("the huge policy left out after {took:?}");
    // Creation timestamps have one-second resolution: the next policy is younger.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &network_policy("newer", "{protocol: TCP, port: 82}"),
        )
        .expect("the newer policy");
    until("the newer policy in force", log, || {
        bed.tcp("client", server, 82).is("ok")
    });
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());
    assert!(bed.tcp("client", server, 81).is("timeout"), "{}", log());
    assert!(
        bed.tcp("client", server, 10_000).is("timeout"),
        "the huge policy is not in force\n{}",
        log()
    );
    assert_eq!(
        metric_sum(&agent.metrics(), "stagewall_objects_left_out", &[]),
        1.0,
        "{}",
        log()
    );
    assert!(
        agent
            .log()
            .contains("kubernetes/networkpolicies/ml/huge:0: left out: with it the kernel maps overflow (policy:"),
        "{}",
        log()
    );
    let events = || cluster.events("ml");
    until("a LeftOut event on the huge policy", log, || {
        events().contains("LeftOut NetworkPolicy/huge: left out on node node-a")
    });
}
