//! Kubernetes mode against a real control plane: etcd and kube-apiserver built from their
//! Go modules (tests/cluster, `cargo xtask cluster-build`), started in the test bed's hub
//! namespace. The manifests of deploy/kubernetes are applied with kubectl, the agent runs
//! with a real ServiceAccount token bound to the ClusterRole they ship, and the test acts
//! as kubelet for its pods: real Pod objects, each given a network namespace and a cgroup
//! named as kubelet names it, its address written through the status subresource.
//!
//! What the hand-written server in tests/src/apiserver.rs is still kept for: watches cut
//! and history compacted on demand, and a missing CRD (tests/tests/kubernetes.rs).
//! ClusterNetworkPolicies through the real API server, with and without their CRD:
//! tests/tests/cluster_tiers.rs.

use std::time::Duration;

use serde_json::Value;

use stagewall_tests::{Testbed, cluster::Cluster, metric_sum, privileged, until, until_within};

/// The condition of `type_` in an object's status (Null without one).
fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_agent_enforces_a_real_api_servers_objects_with_the_shipped_rbac_and_writes_only_events_and_status()
 {
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
    // write nothing but new Events and the status of stagewall.io objects.
    let as_agent = |args: &[&str]| cluster.kubectl_as(&agent_kubeconfig, args, None);
    for resource in [
        "pods",
        "namespaces",
        "nodes",
        "networkpolicies.networking.k8s.io",
        "clusternetworkpolicies.policy.networking.k8s.io",
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
    let said = as_agent(&[
        "auth",
        "can-i",
        "create",
        "events.events.k8s.io",
        "--all-namespaces",
    ]);
    assert_eq!(said.expect("can-i").trim(), "yes", "create events");
    for verb in ["get", "list", "update", "patch", "delete"] {
        let said = as_agent(&[
            "auth",
            "can-i",
            verb,
            "events.events.k8s.io",
            "--all-namespaces",
        ]);
        assert!(said.is_err(), "the agent's token may {verb} events");
    }
    for resource in ["pipelines.stagewall.io", "workloads.stagewall.io"] {
        let status = |verb| {
            as_agent(&[
                "auth",
                "can-i",
                verb,
                resource,
                "--subresource=status",
                "--all-namespaces",
            ])
        };
        assert_eq!(status("patch").expect("can-i").trim(), "yes", "{resource}");
        for verb in ["update", "create", "delete"] {
            assert!(
                status(verb).is_err(),
                "the agent's token may {verb} {resource}/status"
            );
        }
    }
    // kubectl shows whether each object is in force: the printer columns as served.
    for crd in ["crd/pipelines.stagewall.io", "crd/workloads.stagewall.io"] {
        let columns = cluster
            .kubectl(&[
                "get",
                crd,
                "-o",
                "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name} {.spec.versions[0].subresources}",
            ])
            .expect("the CRD");
        assert_eq!(
            columns.trim(),
            r#"Accepted Enforced Reason Age {"status":{}}"#,
            "{crd}"
        );
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

    // A namespace's Workload object never attaches to a node's cgroup or interface.
    for (field, value) in [
        ("cgroup", "/"),
        ("cgroup", "/system.slice/kubelet.service"),
        ("interface", "eth0"),
    ] {
        let refused = cluster
            .kubectl_stdin(
                &["apply", "-f", "-"],
                &format!(
                    "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: grab, namespace: ml}}\nspec: {{addresses: [192.0.2.9], {field}: \"{value}\"}}\n"
                ),
            )
            .unwrap_err();
        assert!(
            format!("{refused:#}").contains("never a cgroup or an interface"),
            "{field}: {value}: {refused:#}"
        );
    }

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
    cluster.run_bed_pod(&mut bed, &base, "client", "node-a", "{app: client}");
    cluster.run_bed_pod(&mut bed, &base, "server", "node-a", "{app: server}");
    cluster.run_bed_pod(&mut bed, &base, "other", "node-b", "{app: other}");
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
    let said = bed.check_kubernetes(&agent_kubeconfig, &base);
    assert!(said.starts_with("ok: 3 workloads (2 local)"), "{said}");

    // Another namespace's Workload object claiming the server pod's address: it is left
    // out (and said so), the pod keeps its address, the agent starts and enforces the
    // rest. (It used to refuse the whole state, and exit at start.)
    cluster
        .create_namespace("tenant-b")
        .expect("namespace tenant-b");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata: {{name: thief, namespace: tenant-b, labels: {{app: client}}}}\nspec: {{addresses: [\"{server}\"]}}\n"
            ),
        )
        .expect("a Workload claiming the server's address");
    let said = bed.check_kubernetes(&agent_kubeconfig, &base);
    assert!(
        said.starts_with("ok: 3 workloads (2 local)")
            && said.contains("left out: kubernetes/workloads/tenant-b/thief"),
        "check says what the agent will leave out: {said}"
    );

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
    assert!(
        agent.log().contains("left out, the rest is enforced")
            && agent.log().contains("kubernetes/workloads/tenant-b/thief"),
        "{}",
        log()
    );
    assert_eq!(
        metric_sum(&agent.metrics(), "stagewall_objects_left_out", &[]),
        1.0
    );
    // And a Warning event on the object itself, for whoever wrote it.
    let event = || cluster.events("tenant-b");
    until("a LeftOut event on the Workload", log, || {
        event().contains("LeftOut Workload/thief: left out on node node-a")
    });
    assert!(
        event().contains("also the address of ml/server"),
        "{}",
        event()
    );
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());
    assert!(bed.tcp("client", server, 81).is("timeout"), "{}", log());
    assert!(bed.tcp("other", server, 80).is("timeout"), "app=other");
    // The Workload's status says so too, with the reason, read back through the API.
    let status = |kind: &str, namespace: &str, name: &str| -> Value {
        cluster
            .kubectl(&["get", kind, name, "-n", namespace, "-o", "json"])
            .ok()
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .map(|o| o["status"].clone())
            .unwrap_or_default()
    };
    until("the Workload's status", log, || {
        condition(&status("workload", "tenant-b", "thief"), "Accepted")["reason"] == "LeftOut"
    });
    let thief = status("workload", "tenant-b", "thief");
    assert_eq!(
        condition(&thief, "Accepted")["status"],
        "False",
        "{thief:#}"
    );
    assert!(
        condition(&thief, "Accepted")["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rejected on node node-a: line ")
                && m.contains("also the address of ml/server")),
        "{thief:#}"
    );
    assert_eq!(thief["enforced"], "0/1", "{thief:#}");

    // A NetworkPolicy the API server takes and the agent refuses (320 peers times 320
    // ports, over the agent's bound on one rule): a Warning event on it, and the rest
    // stays in force.
    let peers: String = (1..=320)
        .map(|i| format!("    - podSelector: {{matchLabels: {{n: \"{i}\"}}}}\n"))
        .collect();
    let ports: String = (1..=320)
        .map(|i| format!("    - {{protocol: TCP, port: {i}}}\n"))
        .collect();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: wide, namespace: ml}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n{peers}    ports:\n{ports}"
            ),
        )
        .expect("a NetworkPolicy the API server accepts");
    until("a Refused event on the NetworkPolicy", log, || {
        cluster
            .events("ml")
            .contains("Refused NetworkPolicy/wide: refused on node node-a, its previous version (if any) stays in force: line ")
    });
    assert!(
        cluster.events("ml").contains("102400 combinations"),
        "{}",
        cluster.events("ml")
    );
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());
    cluster
        .kubectl(&["delete", "networkpolicy", "wide", "-n", "ml"])
        .expect("deleting it");

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
    // Its status through the real API server: accepted, enforced on the one node with an
    // agent, and shown so by `kubectl get pipelines`.
    until("the Pipeline's status", log, || {
        let s = status("pipeline", "ml", "clients");
        condition(&s, "Accepted")["status"] == "True"
            && condition(&s, "Enforced")["status"] == "True"
    });
    let clients = status("pipeline", "ml", "clients");
    assert_eq!(clients["enforced"], "1/1", "{clients:#}");
    assert_eq!(clients["nodes"][0]["node"], "node-a", "{clients:#}");
    assert_eq!(clients["nodes"][0]["enforced"], true, "{clients:#}");
    // A Pipeline the schema takes and the agent refuses (a flow to a stage it does not
    // have): Rejected, with the reason and the line, and nothing else changes.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: stagewall.io/v1alpha1\nkind: Pipeline\nmetadata: {name: broken, namespace: ml}\nspec:\n  stages:\n  - {name: clients, selector: {matchLabels: {app: client}}}\n  flows:\n  - {from: {stage: clients}, to: {stage: nowhere}}\n",
        )
        .expect("the broken Pipeline");
    until("the broken Pipeline's status", log, || {
        condition(&status("pipeline", "ml", "broken"), "Accepted")["status"] == "False"
    });
    let broken = status("pipeline", "ml", "broken");
    let accepted = condition(&broken, "Accepted");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"nowhere\"")),
        "{broken:#}"
    );
    assert!(
        broken["nodes"][0]["line"].as_u64().is_some_and(|l| l > 0),
        "{broken:#}"
    );
    assert_eq!(broken["enforced"], "0/1", "{broken:#}");
    let table = cluster
        .kubectl(&["get", "pipelines", "-n", "ml"])
        .expect("kubectl get pipelines");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    };
    assert!(
        table.starts_with("NAME")
            && table.lines().next().is_some_and(|h| h.contains("ACCEPTED")
                && h.contains("ENFORCED")
                && h.contains("REASON")),
        "{table}"
    );
    assert_eq!(row("clients")[1..4], ["True", "1/1", "Accepted"], "{table}");
    assert_eq!(row("broken")[1..3], ["False", "0/1"], "{table}");
    assert_eq!(
        row("broken")[3],
        accepted["reason"].as_str().unwrap(),
        "{table}"
    );
    assert!(bed.tcp("client", server, 81).is("ok"), "{}", log());
    cluster
        .kubectl(&["delete", "pipeline", "broken", "-n", "ml"])
        .expect("deleting the broken Pipeline");
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

/// A Service through the real kube-proxy (nftables mode) in the hub namespace, the node's
/// network: a pod calls the Service's ClusterIP, kube-proxy's DNAT sends it to the server
/// pod with the client's own address (no masquerading of pod traffic), so the server's
/// ingress NetworkPolicy judges the real client: allowed for app=client, refused for a pod
/// it does not name, TCP and UDP alike. Conntrack turns the replies' source back into the
/// ClusterIP (the bridged replies pass the hub's netfilter: Testbed::route_services_through_hub).
/// Since the agent translates Services at the socket, the pods' calls reach the server
/// already translated; kube-proxy's rules serve everyone else. An egress-isolated client
/// calling Services: tests/tests/services.rs.
#[test]
fn a_service_clusterip_through_the_real_kube_proxy_keeps_the_client_for_the_servers_ingress_policy()
{
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "other"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let mut cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    cluster
        .start_kube_proxy(&bed, "node-a")
        .expect("starting kube-proxy");
    cluster.create_namespace("ml").expect("namespace");
    for (name, labels) in [
        ("client", "{app: client}"),
        ("server", "{app: server}"),
        ("other", "{app: other}"),
    ] {
        cluster.run_bed_pod(&mut bed, &base, name, "node-a", labels);
    }
    // The policy names the pod's port: it is judged after kube-proxy's DNAT (80 -> 8080).
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-8080, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 8080}, {protocol: UDP, port: 8080}]\n",
        )
        .expect("the policy");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: ml}\nspec:\n  selector: {app: server}\n  ports:\n  - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}\n  - {name: udp, protocol: UDP, port: 80, targetPort: 8080}\n",
        )
        .expect("the Service");
    let cluster_ip: std::net::IpAddr = cluster
        .kubectl(&[
            "get",
            "service",
            "server",
            "-n",
            "ml",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("the ClusterIP")
        .parse()
        .expect("an address");
    bed.serve("server", &[8080], &[8080]).unwrap();
    let server = bed.node("server").v4;
    let other = bed.node("other").v4;

    // The EndpointSlice controller makes the ready server pod the Service's endpoint.
    let endpoints = || {
        cluster
            .kubectl(&[
                "get",
                "endpointslices",
                "-n",
                "ml",
                "-l",
                "kubernetes.io/service-name=server",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[*]}",
            ])
            .unwrap_or_default()
    };
    until_within(
        "the Service's EndpointSlice",
        Duration::from_secs(60),
        || cluster.log("kube-controller-manager"),
        || endpoints().trim() == server.to_string(),
    );

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent with the ServiceAccount's token");
    let log = || {
        format!(
            "{}\n{}\n--- kube-proxy's rules\n{}",
            agent.log(),
            cluster.log("kube-proxy"),
            cluster
                .kube_proxy_rules()
                .unwrap_or_else(|e| format!("{e:#}"))
        )
    };
    until("the pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 3.0
    });
    // Straight to the pod first: the policy is in force.
    assert!(bed.tcp("client", server, 8080).is("ok"), "{}", log());
    assert!(bed.tcp("other", server, 8080).is("timeout"), "{}", log());

    // Through the ClusterIP (kube-proxy programs the Service's endpoints asynchronously).
    let took = until_within("the ClusterIP served", Duration::from_secs(60), log, || {
        bed.tcp("client", cluster_ip, 80).is("ok")
    });
    println!("client -> {cluster_ip}:80 (TCP) served after {took:?}");
    let rules = cluster.kube_proxy_rules().expect("kube-proxy's rules");
    assert!(rules.contains(&cluster_ip.to_string()), "{rules}");
    let udp = bed.udp("client", cluster_ip, 80, 3);
    assert!(
        udp.is("ok"),
        "UDP through the ClusterIP: {udp:?}\n{}",
        log()
    );
    assert_eq!(
        udp.body.trim(),
        format!("from {cluster_ip}:80"),
        "the echo's source: the address the client called"
    );
    let before = agent.events().len();
    assert!(
        bed.tcp("other", cluster_ip, 80).is("timeout"),
        "app=other through the ClusterIP\n{}",
        log()
    );
    assert!(
        bed.udp("other", cluster_ip, 80, 1).is("timeout"),
        "app=other through the ClusterIP (UDP)\n{}",
        log()
    );
    // Once more, after the refusals: nothing in between changed the client's way.
    assert!(bed.tcp("client", cluster_ip, 80).is("ok"), "{}", log());

    // The refusals name the real peer and the pod's own address and port: the server saw
    // the packets after DNAT, from `other` itself.
    let events = agent.wait_events(before + 2);
    let refused: Vec<_> = events[before..]
        .iter()
        .filter(|e| e["verdict"] == "dropped" && e["direction"] == "ingress")
        .collect();
    for protocol in ["tcp", "udp"] {
        assert!(
            refused.iter().any(|e| e["protocol"] == protocol
                && e["workload"] == "ml/server"
                && e["src"] == other.to_string()
                && e["dst"] == server.to_string()
                && e["dst_port"] == 8080),
            "no {protocol} refusal naming {other} -> {server}:8080: {refused:#?}"
        );
    }
    assert!(
        events
            .iter()
            .all(|e| e["src"] != bed.node("client").v4.to_string()),
        "the client was refused: {events:#?}"
    );
}

/// The Helm chart (deploy/helm/stagewall), rendered by the helm that `cargo xtask
/// cluster-build` builds into a release namespace of its own and with the values that add
/// objects of kinds a bare API server serves, is created object by object by the real API
/// server (`kubectl create`: no dry run), and reads back as the values said. (Its
/// PodMonitor, ServiceMonitor and PrometheusRule need prometheus-operator's CRDs, which
/// this cluster has not: xtask's helm tests lint and validate them.)
#[test]
fn the_helm_charts_objects_are_created_by_the_real_api_server() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let helm = stagewall_tests::cluster::bin_dir().join("helm");
    assert!(
        helm.is_file(),
        "{} is missing: run `cargo xtask cluster-build`",
        helm.display()
    );
    let chart = stagewall_tests::cluster::manifests().join("../helm/stagewall");
    let rendered = std::process::Command::new(&helm)
        .arg("template")
        .arg("stagewall")
        .arg(&chart)
        .args(["--namespace", "ml-security", "--include-crds"])
        .args(["--set", "namespace.create=true"])
        .args(["--set", "grafanaDashboard.enabled=true"])
        .args(["--set", "mode=audit", "--set", "cgroupDriver=cgroupfs"])
        .args(["--set", "nodeSelector.kubernetes\\.io/os=linux"])
        .args(["--set", "metrics.podMonitor.enabled=true"])
        .args(["--set", "metrics.serviceMonitor.enabled=true"])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .output()
        .expect("running helm");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).expect("UTF-8");

    let bed = Testbed::new(&["client"]).expect("creating the test bed");
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    // prometheus-operator's CRDs first, as in a cluster that runs the operator: the API
    // server then validates the chart's monitors and rule against their schemas (kubectl
    // asks for strict field validation: an unknown field is an error).
    // (Which: xtask/src/cluster.rs MONITORING_CRDS; each kind is checked below by the
    // object of it that the API server creates.)
    let crds = stagewall_tests::cluster::monitoring_crds();
    assert!(
        !crds.is_empty(),
        "prometheus-operator's CRDs in target/cluster/crds: run `cargo xtask cluster-build`"
    );
    for crd in &crds {
        cluster
            .kubectl(&["create", "-f", crd.to_str().unwrap()])
            .expect("the API server takes prometheus-operator's CRD");
    }
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .expect("the monitoring CRDs are established");
    let created = cluster
        .kubectl_stdin(&["create", "-f", "-"], &rendered)
        .expect("the API server creates every object of the chart");
    for object in [
        "namespace/ml-security",
        "customresourcedefinition.apiextensions.k8s.io/pipelines.stagewall.io",
        "customresourcedefinition.apiextensions.k8s.io/workloads.stagewall.io",
        "customresourcedefinition.apiextensions.k8s.io/clusternetworkpolicies.policy.networking.k8s.io",
        "serviceaccount/stagewall",
        "clusterrole.rbac.authorization.k8s.io/stagewall",
        "clusterrolebinding.rbac.authorization.k8s.io/stagewall",
        "daemonset.apps/stagewall",
        "configmap/stagewall-dashboard",
        "podmonitor.monitoring.coreos.com/stagewall",
        "service/stagewall-metrics",
        "servicemonitor.monitoring.coreos.com/stagewall",
        "prometheusrule.monitoring.coreos.com/stagewall",
    ] {
        assert!(
            created.contains(&format!("{object} created")),
            "{object}:\n{created}"
        );
    }
    let get = |args: &[&str]| cluster.kubectl(args).expect("kubectl get");
    let args = get(&[
        "get",
        "daemonset",
        "stagewall",
        "--namespace",
        "ml-security",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args} {.spec.template.spec.nodeSelector}",
    ]);
    assert!(args.contains("--mode=audit"), "{args}");
    assert!(args.contains("--guard-cgroup=/kubepods\""), "{args}");
    assert!(args.contains("\"kubernetes.io/os\":\"linux\""), "{args}");
    let dashboard = get(&[
        "get",
        "configmap",
        "stagewall-dashboard",
        "--namespace",
        "ml-security",
        "-o",
        "jsonpath={.metadata.labels.grafana_dashboard} {.data.stagewall-dashboard\\.json}",
    ]);
    let (label, json) = dashboard.split_once(' ').expect("label and data");
    assert_eq!(label, "1");
    let shipped = std::fs::read_to_string(
        stagewall_tests::cluster::manifests().join("../grafana/stagewall-dashboard.json"),
    )
    .expect("the dashboard");
    assert_eq!(json.trim_end(), shipped.trim_end());
    let subject = get(&[
        "get",
        "clusterrolebinding",
        "stagewall",
        "-o",
        "jsonpath={.subjects[0].namespace}/{.subjects[0].name}",
    ]);
    assert_eq!(subject, "ml-security/stagewall");
    // As the operator reads them: the monitors keep the workloads' own labels
    // (honorLabels) and scrape the metrics port; the rule holds every alert.
    let monitor = get(&[
        "get",
        "podmonitor",
        "stagewall",
        "--namespace",
        "ml-security",
        "-o",
        "jsonpath={.spec.podMetricsEndpoints[0].honorLabels} {.spec.podMetricsEndpoints[0].port}",
    ]);
    assert_eq!(monitor, "true metrics");
    let alerts = get(&[
        "get",
        "prometheusrule",
        "stagewall",
        "--namespace",
        "ml-security",
        "-o",
        "jsonpath={.spec.groups[*].rules[*].alert}",
    ]);
    let shipped_alerts: Vec<String> = std::fs::read_to_string(
        stagewall_tests::cluster::manifests().join("../prometheus/stagewall-rules.yaml"),
    )
    .expect("the rule file")
    .lines()
    .filter_map(|l| l.trim().strip_prefix("- alert: "))
    .map(str::to_string)
    .collect();
    assert!(shipped_alerts.len() >= 6, "{shipped_alerts:?}");
    assert_eq!(
        alerts.split_whitespace().collect::<Vec<_>>(),
        shipped_alerts
    );
}
