//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) in Kubernetes mode against a
//! real control plane (tests/src/cluster.rs): the upstream CRD as deploy/kubernetes ships
//! it, applied to the real kube-apiserver; the agent with a token of the shipped RBAC; pods
//! in two namespaces with real traffic between them, judged by the tiers: the Admin tier by
//! priority first (Accept allows, Deny denies, Pass skips to the NetworkPolicies), then the
//! NetworkPolicies if any isolates the pod, else the Baseline tier, else allowed.

use std::time::Duration;

use stagewall_tests::{
    Testbed,
    cluster::{CLUSTER_NETWORK_POLICY_CRD, Cluster, PodSpec},
    metric_sum, privileged, until, until_within,
};

/// Tenant b takes nothing from tenant a (Admin, priority 10), whatever its NetworkPolicy
/// says; tenant a takes everything from tenant b (Admin Accept, priority 20) but port 81,
/// which a Pass read first (priority 5) leaves to the NetworkPolicies, and since none
/// isolates tenant a, to the Baseline tier, which denies tenant a's ingress from anyone.
/// Tenant a may not call tenant b's pods on port 82 (Admin egress Deny: refused at connect).
const TIERS: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-b-not-from-a}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {tenant: b}}}
  ingress:
  - {name: not-from-a, action: Deny, from: [{namespaces: {matchLabels: {tenant: a}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-a-from-b}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {tenant: a}}}
  ingress:
  - {name: from-b, action: Accept, from: [{namespaces: {matchLabels: {tenant: b}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-a-81-passes}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {tenant: a}}}
  ingress:
  - name: port-81
    action: Pass
    from: [{namespaces: {matchLabels: {tenant: b}}}]
    protocols: [{tcp: {destinationPort: {number: 81}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-a-egress}
spec:
  tier: Admin
  priority: 30
  subject: {namespaces: {matchLabels: {tenant: a}}}
  egress:
  - name: not-82-to-b
    action: Deny
    to: [{pods: {namespaceSelector: {matchLabels: {tenant: b}}, podSelector: {}}}]
    protocols: [{tcp: {destinationPort: {number: 82}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenant-a-baseline}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {matchLabels: {tenant: a}}}
  ingress:
  - {name: nobody-else, action: Deny, from: [{namespaces: {}}]}
";

/// Tenant b's server takes clients of every namespace on port 80: it would let tenant a in.
const SERVER_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-80, namespace: tenant-b}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
";

/// Accepted by the CRD's schema, refused by the agent: a named port with a networks peer
/// (networks have no named ports; the standard channel's schema does not say so).
fn named_port_to_networks(name: &str, priority: u16, subject_tenant: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{tenant: {subject_tenant}}}}}}}\n  egress:\n  - {{action: Deny, to: [{{networks: [192.0.2.0/24]}}], protocols: [{{destinationNamedPort: http}}]}}\n"
    )
}

#[test]
fn cluster_network_policies_from_the_real_api_server_decide_by_tier_around_network_policies() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server", "other"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");

    // The shipped RBAC reads ClusterNetworkPolicies and changes none.
    let as_agent = |args: &[&str]| cluster.kubectl_as(&agent_kubeconfig, args, None);
    let resource = "clusternetworkpolicies.policy.networking.k8s.io";
    for verb in ["get", "list", "watch"] {
        let said = as_agent(&["auth", "can-i", verb, resource]);
        assert_eq!(said.expect("can-i").trim(), "yes", "{verb} {resource}");
    }
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            as_agent(&["auth", "can-i", verb, resource]).is_err(),
            "the agent's token may {verb} {resource}"
        );
    }

    // The standard channel's schema refuses peers the agent does not support yet.
    let refused = cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: gpu-nodes}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{nodes: {matchLabels: {role: gpu}}}]}\n",
        )
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("nodes"),
        "a nodes peer: {refused:#}"
    );

    for (namespace, tenant) in [("tenant-a", "a"), ("tenant-b", "b")] {
        cluster.create_namespace(namespace).expect("namespace");
        cluster
            .kubectl(&["label", "namespace", namespace, &format!("tenant={tenant}")])
            .expect("namespace label");
    }
    for (bed_node, namespace, labels) in [
        ("client", "tenant-a", "{app: client}"),
        ("server", "tenant-b", "{app: server}"),
        ("other", "tenant-b", "{app: client}"),
    ] {
        let pod = PodSpec {
            bed_node,
            namespace,
            name: bed_node,
            node: "node-a",
            labels,
            ports: "[]",
        };
        cluster
            .run_pod(&mut bed, "node-a", &base, &pod)
            .unwrap_or_else(|e| panic!("running pod {namespace}/{bed_node}: {e:#}"));
    }
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], SERVER_POLICY)
        .expect("the NetworkPolicy");
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], TIERS)
        .expect("the ClusterNetworkPolicies pass the upstream CRD's schema");
    bed.serve("server", &[80, 81, 82], &[]).unwrap();
    bed.serve("client", &[80, 81], &[]).unwrap();
    let server = bed.node("server").v4;
    let client = bed.node("client").v4;

    // The agent's Kubernetes source reads them (a dry run with the agent's token, no
    // kernel): the Admin Deny is what decides over the NetworkPolicy.
    let said = bed.check_kubernetes(&agent_kubeconfig, &base);
    assert!(said.contains("5 ClusterNetworkPolicies"), "{said}");
    let explained = bed.check_kubernetes_with(
        &agent_kubeconfig,
        &base,
        &[
            "--explain",
            "--from",
            "tenant-a/client",
            "--to",
            "tenant-b/server",
            "--port",
            "80",
        ],
    );
    assert!(explained.contains("verdict: denied"), "{explained}");
    assert!(
        explained.contains("ingress of tenant-b/server: DENIED by ClusterNetworkPolicy tenant-b-not-from-a (Admin tier, priority 10) ingress rule \"not-from-a\" (Deny) at kubernetes/clusternetworkpolicies/tenant-b-not-from-a:"),
        "{explained}"
    );

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("starting the agent with the ServiceAccount's token");
    let log = || format!("{}\n{}", agent.log(), cluster.log("kube-apiserver"));
    until("the pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 3.0
    });
    assert!(
        !agent
            .log()
            .contains("clusternetworkpolicies are not served"),
        "{}",
        log()
    );

    // Each verdict with the tier that gives it. Dropped on ingress: the client times out;
    // refused on egress: connect() fails at once with EPERM.
    let expect = |from: &str, to, port, word: &str, why: &str| {
        let outcome = bed.tcp(from, to, port);
        assert!(
            outcome.is(word),
            "{from} -> {to}:{port}: {why}: expected {word}, got {outcome:?}\n{}",
            log()
        );
    };
    let tiers = |why: &str| {
        expect(
            "client",
            server,
            80,
            "timeout",
            &format!("Admin Deny over the NetworkPolicy that allows it ({why})"),
        );
        expect("other", server, 80, "ok", "the NetworkPolicy allows it");
        expect(
            "other",
            server,
            81,
            "timeout",
            "the NetworkPolicy isolates the server",
        );
        expect(
            "server",
            client,
            80,
            "ok",
            "Admin Accept (priority 20) over the Baseline Deny",
        );
        expect(
            "server",
            client,
            81,
            "timeout",
            "Admin Pass (priority 5, read first), no NetworkPolicy, Baseline Deny",
        );
        expect(
            "client",
            server,
            82,
            "eperm",
            "Admin egress Deny, at connect",
        );
    };
    // A ClusterNetworkPolicy the agent refuses: named in its log, with what was
    // expected; the others stay in force. A refused update keeps the previous version
    // (both said before any traffic, so that this part is shown whatever the kernel does).
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &named_port_to_networks("bad-named-port", 40, "a"),
        )
        .expect("the CRD's schema takes it");
    let refused = |name: &str| {
        let log = agent.log();
        log.lines().any(|l| {
            l.contains("Kubernetes object refused")
                && l.contains(&format!("kubernetes/clusternetworkpolicies/{name}:"))
                && l.contains("destinationNamedPort")
        })
    };
    until("the bad object refused", log, || refused("bad-named-port"));
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &named_port_to_networks("tenant-b-not-from-a", 10, "b"),
        )
        .expect("the CRD's schema takes it");
    until("the bad update refused", log, || {
        refused("tenant-b-not-from-a")
    });
    tiers("beside a refused object and a refused update");

    // The denials name the ClusterNetworkPolicy rule that decided, tier by tier.
    let denied_by = |workload: &str, direction: &str, reason: &str, policy: &str| {
        let found = |events: &[serde_json::Value]| {
            events.iter().any(|e| {
                e["verdict"] == "dropped"
                    && e["workload"] == workload
                    && e["direction"] == direction
                    && e["reason"] == reason
                    && e["rule"]["policy"] == policy
            })
        };
        until(&format!("{reason} of {policy} reported"), log, || {
            found(&agent.events())
        });
    };
    denied_by(
        "tenant-b/server",
        "ingress",
        "admin-deny",
        "tenant-b-not-from-a",
    );
    denied_by(
        "tenant-a/client",
        "ingress",
        "baseline-deny",
        "tenant-a-baseline",
    );
    denied_by("tenant-a/client", "egress", "admin-deny", "tenant-a-egress");

    // Deleted with kubectl: tenant b's NetworkPolicy decides again.
    cluster
        .kubectl(&["delete", "clusternetworkpolicy", "tenant-b-not-from-a"])
        .expect("deleting it");
    let took = until("the deletion", log, || {
        bed.tcp("client", server, 80).is("ok")
    });
    println!("a ClusterNetworkPolicy's deletion in force after {took:?}");
    expect(
        "other",
        server,
        81,
        "timeout",
        "the NetworkPolicy still isolates",
    );

    // The stagewall.io/mode annotation through the API server: the Baseline audited, its
    // denial passes and is reported as a would-drop naming the rule.
    cluster
        .kubectl(&[
            "annotate",
            "clusternetworkpolicy",
            "tenant-a-baseline",
            "stagewall.io/mode=audit",
        ])
        .expect("annotating it");
    until("the Baseline audited", log, || {
        bed.tcp("server", client, 81).is("ok")
    });
    until("the would-drop reported", log, || {
        agent.events().iter().any(|e| {
            e["verdict"] == "would-drop"
                && e["workload"] == "tenant-a/client"
                && e["reason"] == "baseline-deny"
                && e["rule"]["policy"] == "tenant-a-baseline"
        })
    });
}

/// A platform without the ClusterNetworkPolicy CRD: the agent says so once, enforces the
/// rest, and takes ClusterNetworkPolicies up when the CRD is installed later (its watcher
/// lists again with backoff, at most 30 s apart).
#[test]
fn without_the_crd_the_agent_says_so_once_and_takes_cluster_network_policies_up_once_installed() {
    if !privileged() || !stagewall_tests::cluster::built_or_fail_in_ci() {
        return;
    }
    let mut bed = Testbed::new(&["client", "server"]).expect("creating the test bed");
    let base = bed.cgroup_base_path();
    let cluster = Cluster::start(&bed).expect("starting the control plane");
    let agent_kubeconfig = cluster
        .agent_kubeconfig()
        .expect("installing deploy/kubernetes and a token for the agent");
    cluster
        .kubectl(&["delete", "crd", CLUSTER_NETWORK_POLICY_CRD, "--wait=true"])
        .expect("removing the CRD");
    cluster.create_namespace("ml").expect("namespace");
    cluster.run_bed_pod(&mut bed, &base, "client", "node-a", "{app: client}");
    cluster.run_bed_pod(&mut bed, &base, "server", "node-a", "{app: server}");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-80, namespace: ml}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{protocol: TCP, port: 80}]\n",
        )
        .expect("the policy");
    bed.serve("server", &[80], &[]).unwrap();
    let server = bed.node("server").v4;

    let agent = bed
        .start_agent_kubernetes(
            &agent_kubeconfig,
            &["--node-name", "node-a", "--pods-cgroup-base", &base],
        )
        .expect("the agent starts without the CRD");
    let log = || format!("{}\n{}", agent.log(), cluster.log("kube-apiserver"));
    until("the pods enforced", log, || {
        metric_sum(&agent.metrics(), "stagewall_workloads_enforced", &[]) == 2.0
    });
    let said_missing = || {
        agent
            .log()
            .matches("clusternetworkpolicies are not served or not granted")
            .count()
    };
    assert_eq!(said_missing(), 1, "said once\n{}", log());
    assert!(bed.tcp("client", server, 80).is("ok"), "{}", log());
    let entries = || {
        metric_sum(
            &agent.metrics(),
            "stagewall_map_entries",
            &[("map", "policy")],
        )
    };
    let before = entries();

    // Installed later, from deploy/kubernetes, with a policy right away.
    cluster
        .install_cluster_network_policy_crd()
        .expect("installing the CRD");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: server-closed}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}\n  ingress:\n  - {name: closed, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}\n",
        )
        .expect("the ClusterNetworkPolicy");
    // Read by the source (its tier entries compiled into the policy map) ...
    let took = until_within(
        "the ClusterNetworkPolicy taken up",
        Duration::from_secs(90),
        log,
        || entries() > before,
    );
    println!("ClusterNetworkPolicies taken up {took:?} after their CRD was installed");
    // ... and enforced.
    until("the Admin Deny", log, || {
        bed.tcp("client", server, 80).is("timeout")
    });
    assert_eq!(
        said_missing(),
        1,
        "said once, not on every retry\n{}",
        log()
    );

    // The CRD removed again: its objects go with it (the API server deletes them first,
    // and the watch says so), nothing of them stays in force.
    cluster
        .kubectl(&["delete", "crd", CLUSTER_NETWORK_POLICY_CRD, "--wait=true"])
        .expect("removing the CRD");
    until("the ClusterNetworkPolicy gone with its CRD", log, || {
        entries() == before
    });
    until("the NetworkPolicy alone", log, || {
        bed.tcp("client", server, 80).is("ok")
    });
}

/// One ClusterNetworkPolicy too large for the kernel maps is left out like any policy
/// object, with a Warning Event on it (cluster-scoped: the event lives in `default`), and
/// the rest stays in force: 25 rules of 25 ports each way, from and to 300 identities
/// elsewhere in the cluster, need 375,000 POLICY entries; a slot holds 262,144.
#[test]
fn a_cluster_network_policy_too_large_for_the_kernel_maps_is_left_out_with_an_event() {
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
    let small = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: small}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}\n  ingress:\n  - {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 81}}}]}\n";
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], small)
        .expect("the small one");

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
    let entries = || {
        metric_sum(
            &agent.metrics(),
            "stagewall_map_entries",
            &[("map", "policy")],
        )
    };
    let before = entries();
    assert!(before > 0.0, "the small one is compiled\n{}", log());

    let rules = |peers: &str| -> String {
        (0..25)
            .map(|r| {
                let ports: Vec<String> = (0..25)
                    .map(|p| {
                        format!(
                            "{{tcp: {{destinationPort: {{number: {}}}}}}}",
                            10_000 + r * 25 + p
                        )
                    })
                    .collect();
                format!(
                    "  - {{action: Accept, {peers}: [{{namespaces: {{}}}}], protocols: [{}]}}\n",
                    ports.join(", ")
                )
            })
            .collect()
    };
    let huge = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: huge}}\nspec:\n  tier: Admin\n  priority: 2\n  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: server}}}}}}}}\n  ingress:\n{}  egress:\n{}",
        rules("from"),
        rules("to")
    );
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &huge)
        .expect("the huge one passes the CRD's schema");
    let took = until_within(
        "the huge one left out",
        Duration::from_secs(60),
        log,
        || metric_sum(&agent.metrics(), "stagewall_objects_left_out", &[]) == 1.0,
    );
    println!("the huge ClusterNetworkPolicy left out after {took:?}");
    assert!(
        agent.log().contains(
            "kubernetes/clusternetworkpolicies/huge:0: left out: with it the kernel maps overflow (policy:"
        ),
        "{}",
        log()
    );
    assert_eq!(entries(), before, "the small one alone\n{}", log());
    let events = || cluster.events("default");
    until("a LeftOut event on the huge one", log, || {
        events().contains("LeftOut ClusterNetworkPolicy/huge: left out on node node-a")
    });
}
