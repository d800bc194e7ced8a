//! Kubernetes mode on a real node: kubelet, containerd, runc and the CNI bridge plugin
//! (tests/src/node.rs) beside the real control plane (tests/src/cluster.rs), all in the test
//! bed's hub namespace. Pods are real pods from locally written images, their probes are
//! kubelet's own, and the agent finds them in the cgroups kubelet made.

use std::net::IpAddr;

use stagewall_tests::{
    Testbed, cluster::Cluster, metric_sum, node::KubeletNode, privileged, until,
};

/// Creates a real pod of the probe image in `namespace`, serving TCP on `port` with a
/// tcpSocket readiness probe, and waits until kubelet reports it Ready; gives its UID and
/// address.
fn run_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    labels: &str,
    port: u16,
) -> (String, IpAddr) {
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: probe:1\n    imagePullPolicy: Never\n    args: [serve, --tcp, \"{port}\"]\n    ports: [{{containerPort: {port}}}]\n    readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("creating pod {name}: {e:#}"));
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            "--namespace",
            namespace,
            &format!("pod/{name}"),
        ])
        .unwrap_or_else(|e| {
            let described = cluster
                .kubectl(&["describe", "pod", name, "--namespace", namespace])
                .unwrap_or_default();
            panic!("pod {name} not Ready: {e:#}\n{described}")
        });
    let get = |path: &str| {
        cluster
            .kubectl(&[
                "get",
                "pod",
                name,
                "--namespace",
                namespace,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ])
            .expect("kubectl get pod")
    };
    (
        get(".metadata.uid"),
        get(".status.podIP").parse().expect("a pod IP"),
    )
}

fn node_log(cluster: &Cluster, node: &KubeletNode) -> String {
    format!(
        "{}\n{}\n{}",
        node.log("kubelet"),
        node.log("containerd"),
        cluster.log("kube-apiserver")
    )
}

#[test]
fn real_pods_on_a_real_kubelet_are_enforced() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let bed = Testbed::new(&[]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let mut cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    let node = cluster
        .start_kubelet(&bed, "node-a")
        .expect("starting kubelet and containerd");
    cluster.create_namespace("ml").expect("namespace ml");

    // Real pods, Ready by kubelet's own tcpSocket probes.
    let (server, server_ip) = run_pod(&cluster, "ml", "server", "{app: server}", 80);
    let (client, _) = run_pod(&cluster, "ml", "client", "{app: client}", 80);
    let (other, _) = run_pod(&cluster, "ml", "other", "{app: other}", 80);
    assert!(
        node.pod_cgroup(&server)
            .is_some_and(|c| c.to_string_lossy().contains("/kubepods/besteffort/pod")),
        "kubelet's cgroupfs layout below the bed's cgroup"
    );
    assert!(
        node.tcp(&client, server_ip, 80).is("ok"),
        "{}",
        node_log(&cluster, &node)
    );
    assert!(node.tcp(&other, server_ip, 80).is("ok"));

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent");
    let log = || format!("{}\n{}", agent.log(), node_log(&cluster, &node));
    until("the three pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 3.0
    });

    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-80, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 80}]\n",
        )
        .expect("the policy");
    until("app=other cut off from the server", log, || {
        node.tcp(&other, server_ip, 80).is("timeout")
    });
    assert!(node.tcp(&client, server_ip, 80).is("ok"), "{}", log());

    // A pod kubelet deletes is forgotten.
    cluster
        .kubectl(&["delete", "pod", "other", "--namespace", "ml", "--wait=true"])
        .expect("deleting a pod");
    until("the deleted pod forgotten", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
    });
}
