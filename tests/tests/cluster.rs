//! Kubernetes mode against a real control plane: etcd and kube-apiserver built from their
//! Go modules (tests/cluster, `cargo xtask cluster-build`), started in the test bed's hub
//! namespace. The manifests of deploy/kubernetes are applied with kubectl, the agent runs
//! with a real ServiceAccount token bound to the ClusterRole they ship, and the test acts
//! as kubelet for its pods: real Pod objects, each given a network namespace and a cgroup
//! named as kubelet names it, its address written through the status subresource.
//!
//! What the hand-written server in tests/src/apiserver.rs is still kept for: watches cut
//! and history compacted on demand, and a missing CRD (tests/tests/kubernetes.rs).

use stagewall_tests::{
    Testbed,
    cluster::{Cluster, PodSpec},
    metric_sum, privileged, until,
};

/// Runs `name` in namespace ml on `node` as kubelet would (see Cluster::run_pod).
fn run_pod(cluster: &Cluster, bed: &mut Testbed, base: &str, name: &str, node: &str, labels: &str) {
    let pod = PodSpec {
        bed_node: name,
        namespace: "ml",
        name,
        node,
        labels,
        ports: "[]",
    };
    cluster
        .run_pod(bed, "node-a", base, &pod)
        .unwrap_or_else(|e| panic!("running pod {name}: {e:#}"));
}

#[test]
fn the_agent_enforces_a_real_api_servers_objects_with_the_shipped_rbac_and_writes_nothing() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "other"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");

    // The ServiceAccount token the shipped RBAC gives can read what the agent watches and
    // write nothing at all.
    let as_agent = |args: &[&str]| cluster.kubectl_as(&agent_kubeconfig, args, None);
    for resource in [
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "pipelines.stagewall.io",
        "workloads.stagewall.io",
    ] {
        let said = as_agent(&["auth", "can-i", "watch", resource, "--all-namespaces"]);
        assert_eq!(said.expect("can-i").trim(), "yes", "watch {resource}");
        for verb in ["create", "update", "patch", "delete"] {
            // kubectl says "no" and exits 1.
            let said = as_agent(&["auth", "can-i", verb, resource, "--all-namespaces"]);
            assert!(said.is_err(), "the agent's token may {verb} {resource}");
        }
    }
    let write = as_agent(&["create", "namespace", "intruder"]).unwrap_err();
    assert!(format!("{write:#}").contains("Forbidden"), "{write:#}");
    let read = as_agent(&["get", "secrets", "--all-namespaces"]).unwrap_err();
    assert!(format!("{read:#}").contains("Forbidden"), "{read:#}");

    // The API server itself refuses what the CRD schema and NetworkPolicy validation
    // forbid: such objects never reach the agent.
    cluster.create_namespace("ml").expect("namespace");
    cluster
        .kubectl(&["label", "namespace", "ml", "team=b"])
        .expect("namespace label");
    let refused = cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {name: bad, namespace: ml}\nspec:\n  stages:\n  - name: training\n",
        )
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("selector"),
        "a stage without a selector: {refused:#}"
    );
    let refused = cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: ml}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{protocol: TCP, port: 80, endPort: 70}]\n",
        )
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("endPort"),
        "endPort below port: {refused:#}"
    );

    // The CRDs' CEL rules: a port range below its port, a flow end that is two things.
    let pipeline = |flow: &str| {
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: bad, namespace: ml}}\nspec:\n  stages:\n  - {{name: training, selector: {{matchLabels: {{stage: training}}}}}}\n  flows:\n  - {flow}\n"
        )
    };
    for (flow, expected) in [
        (
            "{from: {stage: training}, to: {cidr: 192.0.2.0/24}, ports: [{port: 90, endPort: 80}]}",
            "endPort needs a numeric port and must not be below it",
        ),
        (
            "{from: {stage: training}, to: {cidr: 192.0.2.0/24}, ports: [{port: https, endPort: 500}]}",
            "endPort needs a numeric port and must not be below it",
        ),
        (
            "{from: {stage: training, cidr: 192.0.2.0/24}, to: {stage: training}}",
            "a flow end is exactly one of",
        ),
        (
            "{from: {stage: training, except: [192.0.2.1/32]}, to: {stage: training}}",
            "except belongs to a cidr flow end",
        ),
    ] {
        let refused = cluster
            .kubectl_stdin(&["apply", "-f", "-"], &pipeline(flow))
            .unwrap_err();
        assert!(
            format!("{refused:#}").contains(expected),
            "{flow}: {refused:#}"
        );
    }
    // The example pipeline passes the same rules (a server-side dry run).
    let examples = stagewall_tests::cluster::manifests().join("../../policies/ml-pipeline");
    cluster
        .kubectl(&[
            "apply",
            "-f",
            &examples.join("namespace.yaml").to_string_lossy(),
        ])
        .expect("the example namespace");
    cluster
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &examples.join("pipeline.yaml").to_string_lossy(),
        ])
        .expect("the example pipeline passes the CRD's schema and rules");

    // Pods as kubelet would run them: client and server on this node, other on node-b.
    run_pod(
        &cluster,
        &mut bed,
        &base,
        "client",
        "node-a",
        "{app: client}",
    );
    run_pod(
        &cluster,
        &mut bed,
        &base,
        "server",
        "node-a",
        "{app: server}",
    );
    run_pod(&cluster, &mut bed, &base, "other", "node-b", "{app: other}");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-80, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 80}]\n",
        )
        .expect("the policy");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-81, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n    ports: [{protocol: TCP, port: 81}]\n",
        )
        .expect("the policy");
    bed.serve("server", &[80, 81], &[]).unwrap();
    let server = bed.node("server").v4;

    // `check --kubernetes` with the agent's own token: the shipped RBAC is enough for it.
    let mut check = bed.hub_command(stagewall_tests::agent_bin()).unwrap();
    check.args(["check", "--kubernetes", "--kubeconfig"]);
    check.arg(&agent_kubeconfig);
    check.args(["--node-name", "node-a", "--pods-cgroup-base", &base]);
    let out = check.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("ok: 3 workloads (2 local)"), "{said}");

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
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());
    assert!(bed.tcp("client", server, 81).is("timeout"), "{}", log());
    assert!(bed.tcp("other", server, 80).is("timeout"), "app=other");

    // A label changed with kubectl reaches the kernel.
    cluster
        .kubectl(&[
            "label",
            "pod",
            "other",
            "-n",
            "ml",
            "app=client",
            "--overwrite",
        ])
        .expect("relabelling");
    let took = until("other's new label", log, || {
        bed.tcp("other", server, 80).is("ok")
    });
    println!("a label change through the real API server in force after {took:?}");

    // A namespace label changed with kubectl: ml is team a now, so server-81 admits it.
    cluster
        .kubectl(&["label", "namespace", "ml", "team=a", "--overwrite"])
        .expect("relabelling the namespace");
    until("the namespace's new label", log, || {
        bed.tcp("client", server, 81).is("ok")
    });

    // A stagewall.io object through the real API server: a Pipeline whose one stage
    // (the client) may reach the server on port 81 only.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: clients, namespace: ml}}\nspec:\n  stages:\n  - {{name: clients, selector: {{matchLabels: {{app: client}}}}}}\n  flows:\n  - {{from: {{stage: clients}}, to: {{cidr: {server}/32}}, ports: [{{protocol: TCP, port: 81}}]}}\n"
            ),
        )
        .expect("the Pipeline");
    until("the Pipeline", log, || {
        bed.tcp("client", server, 80).is("eperm")
    });
    assert!(bed.tcp("client", server, 81).is("ok"), "{}", log());
    cluster
        .kubectl(&["delete", "pipeline", "clients", "-n", "ml"])
        .expect("deleting the Pipeline");
    until("the Pipeline's deletion", log, || {
        bed.tcp("client", server, 80).is("ok")
    });

    // The policies deleted: server is no longer isolated.
    cluster
        .kubectl(&[
            "delete",
            "networkpolicy",
            "server-80",
            "server-81",
            "-n",
            "ml",
        ])
        .expect("deleting the policies");
    until("the deletion", log, || {
        bed.tcp("other", server, 81).is("ok")
    });
}
