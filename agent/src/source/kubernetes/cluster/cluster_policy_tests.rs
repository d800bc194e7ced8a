//! ClusterNetworkPolicies in the cluster view: cluster-scoped objects as the API server
//! gives them, read by the same parser as files, one bad object kept from the rest, and
//! left out like any policy object when the kernel maps cannot hold them.

use serde_json::json;

use super::{tests::desired, tests::pod, *};
use crate::policy::{
    model::{Direction, Tier},
    tiers::{self, DecidedBy},
};

/// A ClusterNetworkPolicy as the API server returns it: cluster-scoped (no namespace),
/// with the fields the agent ignores (uid, managedFields, a status written by another
/// implementation).
fn cluster_policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {
            "name": name,
            "uid": "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5",
            "resourceVersion": "9001",
            "generation": 1,
            "creationTimestamp": "2026-11-20T08:00:00Z",
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "policy.networking.k8s.io/v1alpha2", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        },
        "spec": spec,
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": "2026-11-20T08:00:01Z"}]}
    })
}

fn namespace(name: &str, tenant: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"tenant": tenant}, "resourceVersion": "1"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// Admin: tenant b takes nothing from tenant a. Baseline: tenant a takes nothing from
/// anyone, unless something before it decided.
fn tenants() -> serde_json::Value {
    cluster_policy(
        "tenants",
        json!({
            "tier": "Admin", "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"tenant": "b"}}},
            "ingress": [{"name": "not-from-a", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"tenant": "a"}}}]}]
        }),
    )
}

fn baseline() -> serde_json::Value {
    cluster_policy(
        "baseline",
        json!({
            "tier": "Baseline", "priority": 100,
            "subject": {"namespaces": {"matchLabels": {"tenant": "a"}}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]
        }),
    )
}

/// Pods a/x, b/server (its NetworkPolicy lets every client in on port 80) and b/client.
fn two_tenants() -> Cluster {
    let mut c = Cluster::default();
    c.apply("namespaces", &namespace("a", "a")).unwrap();
    c.apply("namespaces", &namespace("b", "b")).unwrap();
    for (ns, name, uid, ip, app) in [
        ("a", "x", "uid-x", "10.244.1.5", "client"),
        ("b", "server", "uid-s", "10.244.1.6", "server"),
        ("b", "client", "uid-c", "10.244.1.7", "client"),
    ] {
        let mut p = pod(name, uid, "node-a", ip, json!({"app": app}));
        p["metadata"]["namespace"] = ns.into();
        c.apply("pods", &p).unwrap();
    }
    c.apply(
        "networkpolicies",
        &json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "server", "namespace": "b"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                                  "ports": [{"port": 80}]}]}
        }),
    )
    .unwrap();
    c
}

/// Whether `to` takes TCP `port` from `from` on its ingress, and who decided.
fn ingress(set: &PolicySet, from: &str, to: &str, port: u16) -> (bool, String) {
    let remote = set.workload(from).unwrap().addresses[0];
    let decision = tiers::decide(
        set,
        set.workload(to).unwrap(),
        Direction::Ingress,
        remote,
        6,
        port,
    );
    let by = match &decision.by {
        DecidedBy::Cluster(rule) => format!("{} {}", rule.policy.name, rule.name()),
        DecidedBy::NetworkPolicy(_) => "NetworkPolicy".into(),
        DecidedBy::SelfTraffic => "self".into(),
        DecidedBy::Default => "default".into(),
    };
    (decision.allowed(), by)
}

#[test]
fn cluster_network_policies_from_the_api_server_take_their_tiers_around_network_policies() {
    let mut c = two_tenants();
    c.apply("clusternetworkpolicies", &tenants()).unwrap();
    c.apply("clusternetworkpolicies", &baseline()).unwrap();
    let set = desired(&c);
    assert_eq!(set.cluster_policies.len(), 2);
    let admin = set
        .cluster_policies
        .iter()
        .find(|p| p.name == "tenants")
        .unwrap();
    assert_eq!((admin.tier, admin.priority), (Tier::Admin, 10));
    assert_eq!(
        admin.origin.file,
        Path::new("kubernetes/clusternetworkpolicies/tenants"),
        "cluster-scoped: no namespace in its name"
    );
    // The Admin Deny wins over the NetworkPolicy that lets every client in.
    assert_eq!(
        ingress(&set, "a/x", "b/server", 80),
        (false, "tenants \"not-from-a\"".into())
    );
    // Undecided by the Admin tier: the NetworkPolicy isolates the server.
    assert_eq!(
        ingress(&set, "b/client", "b/server", 80),
        (true, "NetworkPolicy".into())
    );
    assert_eq!(
        ingress(&set, "b/client", "b/server", 81),
        (false, "NetworkPolicy".into())
    );
    // No NetworkPolicy isolates a/x: the Baseline tier decides.
    assert_eq!(
        ingress(&set, "b/server", "a/x", 80),
        (false, "baseline #1".into())
    );
    // The Admin Deny holds for every pod of tenant b; no tier decides for b/client's
    // ingress from its own namespace.
    assert_eq!(
        ingress(&set, "a/x", "b/client", 80),
        (false, "tenants \"not-from-a\"".into())
    );
    assert_eq!(
        ingress(&set, "b/server", "b/client", 80),
        (true, "default".into())
    );

    // Deleted (a watch event), and gone from a relist.
    c.delete("clusternetworkpolicies", &tenants());
    assert_eq!(
        ingress(&desired(&c), "a/x", "b/server", 80),
        (true, "NetworkPolicy".into())
    );
    assert!(c.replace("clusternetworkpolicies", &[]).is_empty());
    assert!(desired(&c).cluster_policies.is_empty());
}

#[test]
fn a_refused_cluster_network_policy_is_named_and_the_rest_stay_in_force() {
    let mut c = two_tenants();
    c.apply("clusternetworkpolicies", &tenants()).unwrap();
    let before = desired(&c);
    let version = c.version;

    // A nodes peer: the experimental channel's schema takes it, the agent does not yet.
    let mut bad = tenants();
    bad["spec"]["ingress"][0]["from"] = json!([{"nodes": {"matchLabels": {"role": "gpu"}}}]);
    let e = c
        .apply("clusternetworkpolicies", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("kubernetes/clusternetworkpolicies/tenants:"),
        "the object and the line of its JSON: {e}"
    );
    assert!(e.contains("nodes"), "{e}");
    // The set stays; what the agent reports (the object's events and status) changed.
    assert_eq!(c.version, version + 1, "the refusal is news");
    assert!(
        c.seen[&(
            "clusternetworkpolicies".to_string(),
            String::new(),
            "tenants".to_string()
        )]
            .refused
            .is_some()
    );
    assert_eq!(desired(&c), before, "the previous version stays in force");

    // A new object the parser refuses is absent; the objects beside it apply.
    let named_port_to_networks = cluster_policy(
        "bad",
        json!({
            "tier": "Admin", "priority": 20,
            "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}],
                        "protocols": [{"destinationNamedPort": "http"}]}]
        }),
    );
    let errors = c.replace(
        "clusternetworkpolicies",
        &[tenants(), named_port_to_networks, baseline()],
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.starts_with("kubernetes/clusternetworkpolicies/bad:")
            && e.contains("destinationNamedPort"),
        "{e}"
    );
    let names: Vec<String> = desired(&c)
        .cluster_policies
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["baseline", "tenants"]);
}

#[test]
fn a_changed_cluster_network_policy_replaces_its_previous_version() {
    // Cluster-scoped: known by its name alone, as the API server knows it.
    let mut c = two_tenants();
    c.apply("clusternetworkpolicies", &tenants()).unwrap();
    let mut changed = tenants();
    changed["spec"]["priority"] = 5.into();
    c.apply("clusternetworkpolicies", &changed).unwrap();
    let set = desired(&c);
    assert_eq!(set.cluster_policies.len(), 1);
    assert_eq!(set.cluster_policies[0].priority, 5);
}

#[test]
fn a_cluster_network_policy_that_overflows_the_kernel_maps_is_left_out_and_the_older_ones_stay() {
    let mut c = Cluster::default();
    for i in 0..300 {
        let node = if i == 0 { "node-a" } else { "node-b" };
        let ip = format!("10.244.{}.{}", i / 200, i % 200 + 1);
        let labels = json!({"app": format!("a{i}")});
        c.apply(
            "pods",
            &pod(&format!("p{i}"), &format!("uid-{i}"), node, &ip, labels),
        )
        .unwrap();
    }
    // Every pod's identity on 25 rules of 25 ports each, both ways: 1,250 entries per
    // identity, 375,000 in all, more than a slot's 262,144.
    let rules = |first: u16| -> Vec<serde_json::Value> {
        (0..25u16)
            .map(|r| {
                let protocols: Vec<serde_json::Value> = (0..25u16)
                    .map(|p| json!({"tcp": {"destinationPort": {"number": first + r * 25 + p}}}))
                    .collect();
                json!({"action": "Accept", "from": [{"namespaces": {}}], "to": [{"namespaces": {}}], "protocols": protocols})
            })
            .collect()
    };
    let ingress_egress = |first: u16| {
        let mut ingress = rules(first);
        for r in &mut ingress {
            r.as_object_mut().unwrap().remove("to");
        }
        let mut egress = rules(first);
        for r in &mut egress {
            r.as_object_mut().unwrap().remove("from");
        }
        (ingress, egress)
    };
    let (ingress, egress) = ingress_egress(10_000);
    let mut huge = cluster_policy(
        "huge",
        json!({"tier": "Admin", "priority": 20, "subject": {"namespaces": {}},
               "ingress": ingress, "egress": egress}),
    );
    huge["metadata"]["creationTimestamp"] = "2026-11-20T00:00:00Z".into();
    let small = |name: &str, created: &str, port: u16| {
        let mut p = cluster_policy(
            name,
            json!({"tier": "Admin", "priority": 30, "subject": {"namespaces": {}},
                   "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                                "protocols": [{"tcp": {"destinationPort": {"number": port}}}]}]}),
        );
        p["metadata"]["creationTimestamp"] = created.into();
        p
    };
    c.apply(
        "clusternetworkpolicies",
        &small("older", "2026-11-01T00:00:00Z", 80),
    )
    .unwrap();
    c.apply("clusternetworkpolicies", &huge).unwrap();
    // Younger than the huge one: it still gets its turn.
    c.apply(
        "clusternetworkpolicies",
        &small("newer", "2026-11-21T00:00:00Z", 81),
    )
    .unwrap();
    let (set, left_out) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .expect("the rest is enforced");
    let names: Vec<&str> = set
        .cluster_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["newer", "older"]);
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    let error = left_out[0].to_string();
    assert!(
        error.starts_with("kubernetes/clusternetworkpolicies/huge:0: left out: with it the kernel maps overflow (policy:"),
        "{error}"
    );
}

/// A guardrail is admitted before a namespace's objects, older or not: left out, it would
/// open what it denies.
#[test]
fn a_guardrail_is_admitted_before_an_older_network_policy_that_would_push_it_out() {
    let mut c = Cluster::default();
    for i in 0..300 {
        let node = if i == 0 { "node-a" } else { "node-b" };
        let ip = format!("10.244.{}.{}", i / 200, i % 200 + 1);
        let labels = json!({"app": format!("a{i}")});
        c.apply(
            "pods",
            &pod(&format!("p{i}"), &format!("uid-{i}"), node, &ip, labels),
        )
        .unwrap();
    }
    let ports = |first: u16, n: u16| -> Vec<serde_json::Value> {
        (first..first + n).map(|p| json!({"port": p})).collect()
    };
    // Every identity on 800 ports: 240,000 entries, which fit alone in a slot's 262,144.
    let rules: Vec<serde_json::Value> = (0..16u16)
        .map(|r| json!({"from": [{"namespaceSelector": {}}], "ports": ports(10_000 + r * 50, 50)}))
        .collect();
    let wide = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "wide", "namespace": "ml", "uid": "u-wide",
                     "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules}
    });
    c.apply("networkpolicies", &wide).unwrap();
    // Every identity on 100 ports (4 rules of 25): 30,000 entries, which fit alone, not
    // beside it.
    let guard_rules: Vec<serde_json::Value> = (0..4u16)
        .map(|r| {
            let protocols: Vec<serde_json::Value> = (0..25u16)
                .map(|p| json!({"tcp": {"destinationPort": {"number": 20_000 + r * 25 + p}}}))
                .collect();
            json!({"action": "Deny", "from": [{"namespaces": {}}], "protocols": protocols})
        })
        .collect();
    let mut guard = cluster_policy(
        "guard",
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
               "ingress": guard_rules}),
    );
    guard["metadata"]["creationTimestamp"] = "2026-11-21T00:00:00Z".into();
    c.apply("clusternetworkpolicies", &guard).unwrap();
    let (set, left_out) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .expect("the rest is enforced");
    let names: Vec<&str> = set
        .cluster_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["guard"]);
    assert!(set.policies.is_empty(), "{:?}", set.policies);
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    let error = left_out[0].to_string();
    assert!(
        error.starts_with(
            "kubernetes/networkpolicies/ml/wide:0: left out: with it the kernel maps overflow"
        ),
        "{error}"
    );
}

#[test]
fn the_agent_watches_every_document_kind_and_cluster_network_policies_are_optional() {
    let kinds = crate::source::kubernetes::kinds();
    for plural in DOCUMENT_KINDS {
        assert!(
            kinds.iter().any(|k| k.plural == plural),
            "{plural} is not watched"
        );
    }
    let cnp = kinds
        .iter()
        .find(|k| k.plural == "clusternetworkpolicies")
        .unwrap();
    assert_eq!(
        cnp.resource.api_version,
        "policy.networking.k8s.io/v1alpha2"
    );
    assert_eq!(cnp.resource.kind, "ClusterNetworkPolicy");
    assert!(
        cnp.optional,
        "without its CRD the agent goes on without ClusterNetworkPolicies"
    );
    // Every Node, not only this one: nodes peers select among them.
    assert!(kinds.iter().any(|k| k.plural == "nodes" && k.optional));
}
