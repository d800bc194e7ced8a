//! Kubernetes DaemonSet mode end to end against the hand-written list/watch server
//! (tests/src/apiserver.rs), kept for what a real API server cannot be made to do on
//! demand: watches cut at will, a history compacted away (410 Gone, then every watcher
//! lists again), a CRD that is not served (404). The enforcement around them (labels,
//! namespaces, policies, pods starting under the guard and going) is what those faults
//! must not break. The same mode on a real kube-apiserver is tests/tests/cluster.rs (and
//! the conformance matrix), with a real kubelet, the DaemonSet itself, two nodes and TC
//! enforcement of routed pods tests/tests/kubelet.rs.
//! The agent (`run --kubernetes`) talks kube-rs to it with API JSON (resourceVersion,
//! bookmarks). Pods of "node-a" are the test bed's namespaces in cgroups
//! named as kubelet names them; a pod of "node-b" is only known by IP and labels. Each
//! change made through the API (labels, IPs, namespace labels, policies, pods starting
//! and going, a watch history compacted away) must show in real traffic.

use std::net::IpAddr;

use serde_json::{Value, json};
use stagewall_tests::{
    Testbed, apiserver::ApiServer, cluster::pod_cgroup, metric_sum, privileged, until,
};

fn uid(n: u32) -> String {
    format!("7a1c0000-0000-4000-8000-{n:012}")
}

fn pod(name: &str, uid: &str, node: &str, ips: &[IpAddr], labels: Value) -> Value {
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "probe:1"}]},
        "status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips, "qosClass": "BestEffort"}
    })
}

fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "ml", "labels": labels}, "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

fn policy(name: &str, selector: Value, from: Value, port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "ml", "generation": 1},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [from], "ports": [{"protocol": "TCP", "port": port}]}]}
    })
}

/// A test bed whose nodes are pods, and an API server in its hub namespace. The nodes
/// named in `local` are pods of "node-a" (this node), in cgroups named as kubelet names
/// them; node i is pod UID uid(i + 1).
struct KubeBed {
    bed: Testbed,
    /// The cgroup below which the pods' cgroups are (the agent's --pods-cgroup-base).
    base: String,
    api: ApiServer,
    kubeconfig: std::path::PathBuf,
}

impl KubeBed {
    fn new(names: &[&str], local: &[&str], missing: &[&'static str]) -> KubeBed {
        let mut bed = Testbed::new(names).expect("creating the test bed");
        let base = bed.cgroup_base_path();
        for (i, name) in names.iter().enumerate() {
            if local.contains(name) {
                bed.move_cgroup(name, &pod_cgroup(&base, &uid(i as u32 + 1)))
                    .unwrap();
            }
        }
        let api = ApiServer::start(&bed.hub, missing).expect("starting the API server");
        let kubeconfig = bed.dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        KubeBed {
            bed,
            base,
            api,
            kubeconfig,
        }
    }

    /// Creates or changes the pod of test bed node `name`, on `node`.
    fn pod(&self, name: &str, node: &str, ips: &[IpAddr], labels: Value) {
        let i = self.bed.nodes.iter().position(|n| n.name == name).unwrap();
        self.api
            .apply("pods", pod(name, &uid(i as u32 + 1), node, ips, labels));
    }

    /// Starts the agent as node-a's, with its pods' cgroups below `base`.
    fn agent(&self, extra: &[&str]) -> stagewall_tests::Agent {
        let mut args = vec!["--node-name", "node-a", "--pods-cgroup-base", &self.base];
        args.extend(extra);
        self.bed
            .start_agent_kubernetes(&self.kubeconfig, &args)
            .expect("starting the agent")
    }
}

/// A policy that lets pods labelled app=client reach app=server on `port`.
fn clients_to_server(name: &str, port: u16) -> Value {
    policy(
        name,
        json!({"app": "server"}),
        json!({"podSelector": {"matchLabels": {"app": "client"}}}),
        port,
    )
}

#[test]
fn pods_labels_ips_namespaces_and_policies_from_the_api_server_are_enforced() {
    if !privileged() {
        return;
    }
    // The Workload CustomResourceDefinition is not installed: the agent goes on without.
    let mut k = KubeBed::new(
        &["client", "server", "remote", "late"],
        &["client", "server", "late"],
        &["workloads"],
    );
    k.bed.serve("server", &[80, 81], &[]).unwrap();
    k.bed.serve("remote", &[80], &[]).unwrap();
    let (bed, api, base) = (&k.bed, &k.api, &k.base);
    let (client, server, remote) = (
        bed.node("client").clone(),
        bed.node("server").clone(),
        bed.node("remote").clone(),
    );
    api.apply("namespaces", namespace(json!({"team": "b"})));
    k.pod(
        "client",
        "node-a",
        &[client.v4, client.v6],
        json!({"app": "client"}),
    );
    k.pod("server", "node-a", &[server.v4], json!({"app": "server"}));
    k.pod("remote", "node-b", &[remote.v4], json!({"app": "other"}));
    api.apply("networkpolicies", clients_to_server("server-80", 80));
    api.apply(
        "networkpolicies",
        policy(
            "server-81",
            json!({"app": "server"}),
            json!({"namespaceSelector": {"matchLabels": {"team": "a"}}}),
            81,
        ),
    );
    let kubeconfig = &k.kubeconfig;

    // `check --kubernetes` reads the same objects and compiles them, without the kernel.
    let said = bed.check_kubernetes(kubeconfig, base);
    assert!(said.starts_with("ok: 3 workloads (2 local)"), "{said}");
    assert!(said.contains("ml/server"), "{said}");
    let guard = format!("{base}/kubepods.slice");
    let agent = k.agent(&["--guard-cgroup", &guard, "--record-flows", "all"]);
    let log = || agent.log();
    let served = api.served();
    assert!(served.lists >= 3 && served.watches >= 3, "{served:?}");
    assert!(log().contains("workloads are not served"), "{}", log());
    let enforced = |n: f64| metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == n;
    assert!(enforced(2.0), "client and server are this node's pods");

    assert!(bed.tcp("client", server.v4, 80).is("ok"));
    assert!(
        bed.tcp("client", server.v4, 81).is("timeout"),
        "namespace team=b"
    );
    assert!(bed.tcp("remote", server.v4, 80).is("timeout"), "app=other");

    // A label change of a pod on another node.
    k.pod("remote", "node-b", &[remote.v4], json!({"app": "client"}));
    let took = until("remote's new label", log, || {
        bed.tcp("remote", server.v4, 80).is("ok")
    });
    println!("label change in force after {took:?}");

    // Its IP changes (only its IPv6 address now): the IPv4 address is nobody's.
    k.pod("remote", "node-b", &[remote.v6], json!({"app": "client"}));
    until("remote's new address", log, || {
        bed.tcp("remote", server.v4, 80).is("timeout")
    });
    assert!(bed.tcp("remote", server.v6, 80).is("ok"));

    // Namespace labels.
    api.apply("namespaces", namespace(json!({"team": "a"})));
    until("the namespace's new label", log, || {
        bed.tcp("client", server.v4, 81).is("ok")
    });

    // A policy changes.
    api.apply(
        "networkpolicies",
        policy(
            "server-80",
            json!({"app": "server"}),
            json!({"podSelector": {"matchLabels": {"app": "nobody"}}}),
            80,
        ),
    );
    until("the changed policy", log, || {
        bed.tcp("client", server.v4, 80).is("timeout")
    });

    // A bad object: refused with its name and line, the rest goes on.
    let mut bad = policy(
        "bad",
        json!({"app": "server"}),
        json!({"podSelector": {}}),
        80,
    );
    bad["spec"]["ingress"][0]["ports"][0]["endPort"] = 70.into();
    api.apply("networkpolicies", bad);
    until("the refusal", log, || {
        log().contains("kubernetes/networkpolicies/ml/bad:")
    });
    assert!(log().contains("endPort 70 is invalid"), "{}", log());
    assert!(
        bed.tcp("client", server.v4, 80).is("timeout"),
        "the bad policy opened nothing"
    );

    // The watch history is compacted away and every watch cut: the watchers get 410 Gone
    // and list again; a change made meanwhile is seen.
    let before = api.served();
    api.compact_and_disconnect();
    api.delete("networkpolicies", "ml", "server-81");
    until("the deletion, after relisting", log, || {
        bed.tcp("client", server.v4, 81).is("timeout")
    });
    until("every watcher's relist", log, || {
        let now = api.served();
        now.gone >= before.gone + 3 && now.lists >= before.lists + 3
    });
    let after = api.served();
    assert!(
        after.bookmarks > 0,
        "bookmarks were asked for and sent: {after:?}"
    );
    println!("410 Gone and relist: {before:?} -> {after:?}");
    assert!(bed.tcp("client", server.v4, 81).is("timeout"));
    assert!(
        bed.tcp("remote", server.v6, 80).is("timeout"),
        "server-80 allows nobody"
    );

    // A pod that starts on this node: denied by the guard until its pod is programmed.
    assert!(
        bed.tcp("late", remote.v4, 80).is("eperm"),
        "not programmed yet"
    );
    k.pod(
        "late",
        "node-a",
        &[bed.node("late").v4],
        json!({"app": "late"}),
    );
    until("the new pod", log, || {
        bed.tcp("late", remote.v4, 80).is("ok")
    });
    assert!(enforced(3.0));

    // stagewall.io kinds come through the API too: a Pipeline whose one stage may reach
    // the remote pod on port 81 only.
    api.apply(
        "pipelines",
        json!({
            "apiVersion": "stagewall.io/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "late", "namespace": "ml"},
            "spec": {
                "stages": [{"name": "late", "selector": {"matchLabels": {"app": "late"}}}],
                "flows": [{"from": {"stage": "late"}, "to": {"cidr": format!("{}/32", remote.v4)},
                           "ports": [{"protocol": "TCP", "port": 81}]}]
            }
        }),
    );
    until("the Pipeline", log, || {
        bed.tcp("late", remote.v4, 80).is("eperm")
    });

    // A pod that goes: its cgroup is nobody's, so the guard denies it again.
    api.delete("pods", "ml", "client");
    until("the deleted pod", log, || {
        bed.tcp("client", remote.v4, 80).is("eperm")
    });
    assert!(enforced(2.0));

    // The rollout report reads the policies in force from the API server too.
    let mut agent = agent;
    agent.stop().unwrap();
    let mut report = bed.hub_command(stagewall_tests::agent_bin()).unwrap();
    report.args([
        "report",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    report.arg("--records").arg(&bed.flow_records);
    let out = report.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("stage ml/server (ml/server)"), "{said}");
    assert!(said.contains("ingress policies: ml/server-80"), "{said}");
    assert!(said.contains("dropped:\n    ingress from"), "{said}");
}
