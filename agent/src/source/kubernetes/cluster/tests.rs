//! Tests of the cluster view: pods, nodes and objects as the API server gives them, and
//! the desired state built from them.

use serde_json::json;

use super::*;
use crate::policy::model::Direction;

const UID: &str = "5c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6a";

/// A pod as the API server returns it (fields the agent ignores included).
pub(super) fn pod(
    name: &str,
    uid: &str,
    node: &str,
    ip: &str,
    labels: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": uid,
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "trainer:1", "ports": [{"name": "rendezvous", "containerPort": 2222, "protocol": "TCP"}]}],
            "restartPolicy": "Always",
            "serviceAccountName": "default"
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn policy(ports: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "trainers",
            "namespace": "ml",
            "uid": "0b6d7c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e",
            "resourceVersion": "812",
            "generation": 2,
            "creationTimestamp": "2026-11-20T09:00:00Z",
            "annotations": {"stagewall.io/mode": "audit"}
        },
        "spec": {
            "podSelector": {"matchLabels": {"stage": "training"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"stage": "training"}}}], "ports": ports}]
        }
    })
}

pub(super) fn desired(cluster: &Cluster) -> PolicySet {
    cluster
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .unwrap()
        .0
}

#[test]
fn pods_become_workloads_enforced_on_their_own_node_and_peers_elsewhere() {
    let mut c = Cluster::default();
    let labels = json!({"stage": "training"});
    c.apply(
        "pods",
        &pod("t0", UID, "node-a", "10.244.1.5", labels.clone()),
    )
    .unwrap();
    c.apply(
        "pods",
        &pod(
            "t1",
            "6c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6b",
            "node-b",
            "10.244.2.7",
            labels.clone(),
        ),
    )
    .unwrap();
    let mut host = pod(
        "exporter",
        "7c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6c",
        "node-a",
        "192.168.1.10",
        json!({}),
    );
    host["spec"]["hostNetwork"] = true.into();
    c.apply("pods", &host).unwrap();
    let mut done = pod(
        "job",
        "8c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6d",
        "node-a",
        "10.244.1.9",
        json!({}),
    );
    done["status"]["phase"] = "Succeeded".into();
    c.apply("pods", &done).unwrap();
    let set = desired(&c);
    assert_eq!(
        set.workloads.len(),
        2,
        "host network and finished pods are left out"
    );
    let t0 = set.workload("ml/t0").unwrap();
    assert_eq!(
        t0.attachment,
        Some(Attachment::Cgroup(format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        ))),
        "where kubelet will create it (systemd driver, BestEffort)"
    );
    assert_eq!(t0.ports[0].port, 2222, "named ports from containerPorts");
    let t1 = set.workload("ml/t1").unwrap();
    assert_eq!(t1.attachment, None, "another node's pod is a peer");
    assert_eq!(t1.addresses, vec!["10.244.2.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(t1.labels.get("stage").map(String::as_str), Some("training"));
}

#[test]
fn this_nodes_host_network_pods_are_unguarded_cgroups_not_workloads() {
    let mut c = Cluster::default();
    let local = "7c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6c";
    let starting = "7c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6d";
    let remote = "7c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6e";
    for (name, uid, node) in [
        ("kube-proxy", local, "node-a"),
        ("dns-cache", starting, "node-a"),
        ("exporter", remote, "node-b"),
    ] {
        let mut host = pod(name, uid, node, "192.168.1.10", json!({"k8s-app": name}));
        host["spec"]["hostNetwork"] = true.into();
        c.apply("pods", &host).unwrap();
    }
    c.apply(
        "pods",
        &pod("t0", UID, "node-a", "10.244.1.5", json!({"k8s-app": "t0"})),
    )
    .unwrap();
    let path = format!("/kubepods/besteffort/pod{local}");
    let cgroups = PodCgroups::of(&[(local, &path), (remote, "/elsewhere")]);
    let (set, _) = c
        .desired(
            "node-a",
            &cgroups,
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .unwrap();
    assert_eq!(
        set.unguarded_cgroups,
        vec![path],
        "this node's, once kubelet made its cgroup; another node's never"
    );
    assert_eq!(
        set.workloads.len(),
        1,
        "no workload, and no peer, for any of them"
    );
    assert_eq!(
        set.workloads[0].addresses,
        vec!["10.244.1.5".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn an_object_the_whole_set_refuses_is_left_out_and_the_rest_enforced() {
    let mut c = Cluster::default();
    c.apply(
        "pods",
        &pod(
            "t0",
            UID,
            "node-a",
            "10.244.1.5",
            json!({"stage": "training"}),
        ),
    )
    .unwrap();
    let workload = |ns: &str, name: &str, address: &str| {
        json!({"apiVersion": "stagewall.io/v1alpha1", "kind": "Workload",
               "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
               "spec": {"addresses": [address]}})
    };
    // Another namespace's object claiming the pod's address: the pod keeps it.
    c.apply("workloads", &workload("tenant-b", "thief", "10.244.1.5"))
        .unwrap();
    // Two objects claiming one address: the later by namespace and name is refused.
    c.apply("workloads", &workload("tenant-a", "db", "192.0.2.7"))
        .unwrap();
    c.apply("workloads", &workload("tenant-c", "copy", "192.0.2.7"))
        .unwrap();
    // A Pipeline whose flow names a stage it does not have.
    c.apply(
        "pipelines",
        &json!({"apiVersion": "stagewall.io/v1alpha1", "kind": "Pipeline",
                "metadata": {"name": "broken", "namespace": "ml"},
                "spec": {"stages": [{"name": "a", "selector": {"matchLabels": {"x": "a"}}}],
                         "flows": [{"from": {"stage": "a"}, "to": {"stage": "nowhere"}}]}}),
    )
    .unwrap();
    c.apply("networkpolicies", &policy(json!([{"port": 2222}])))
        .unwrap();
    let (set, refused) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .expect("the rest is enforced");
    let names: Vec<String> = set.workloads.iter().map(|w| w.name.to_string()).collect();
    assert_eq!(names, ["ml/t0", "tenant-a/db"], "{refused:?}");
    assert_eq!(
        set.policies.len(),
        1,
        "the NetworkPolicy stays: {:?}",
        set.policies
    );
    let refused_files: Vec<String> = refused
        .iter()
        .map(|e| e.file.display().to_string())
        .collect();
    for file in [
        "kubernetes/workloads/tenant-b/thief",
        "kubernetes/workloads/tenant-c/copy",
        "kubernetes/pipelines/ml/broken",
    ] {
        assert!(
            refused_files.iter().any(|f| f == file),
            "{file}: {refused:?}"
        );
    }
}

#[test]
fn this_nodes_addresses_come_from_its_node_object() {
    let mut c = Cluster::default();
    let node = |name: &str, addresses: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
               "status": {"addresses": addresses}})
    };
    c.apply(
        "nodes",
        &node(
            "node-a",
            json!([{"type": "InternalIP", "address": "192.168.1.10"},
                   {"type": "InternalIP", "address": "fd00::10"},
                   {"type": "Hostname", "address": "node-a"}]),
        ),
    )
    .unwrap();
    c.apply(
        "nodes",
        &node(
            "node-b",
            json!([{"type": "InternalIP", "address": "192.168.1.11"}]),
        ),
    )
    .unwrap();
    let set = desired(&c);
    let want: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    assert_eq!(
        set.node_addresses, want,
        "this node's, not another's; no host names"
    );
    c.delete("nodes", &node("node-a", json!([])));
    assert!(desired(&c).node_addresses.is_empty());
}

#[test]
fn every_nodes_labels_and_addresses_are_the_inventory_nodes_peers_select() {
    let mut c = Cluster::default();
    let node = |name: &str, labels: serde_json::Value, address: &str| {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "labels": labels},
               "status": {"addresses": [{"type": "InternalIP", "address": address},
                                        {"type": "Hostname", "address": name}],
                          "conditions": [{"type": "Ready", "status": "True",
                                          "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}})
    };
    let control = json!({"node-role.kubernetes.io/control-plane": ""});
    c.apply("nodes", &node("cp-1", control.clone(), "192.168.1.1"))
        .unwrap();
    c.apply(
        "nodes",
        &node("node-a", json!({"zone": "a"}), "192.168.1.10"),
    )
    .unwrap();
    let set = desired(&c);
    let names: Vec<(&str, usize)> = set
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.labels.len()))
        .collect();
    assert_eq!(names, [("cp-1", 1), ("node-a", 1)]);
    assert_eq!(
        set.nodes[0].addresses,
        vec!["192.168.1.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        set.node_addresses,
        vec!["192.168.1.10".parse::<IpAddr>().unwrap()],
        "this node's identity is still its own addresses only"
    );

    // A heartbeat (status conditions) changes nothing; a label does.
    let version = c.version;
    let mut beat = node("cp-1", control, "192.168.1.1");
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-01-01T00:05:00Z");
    c.apply("nodes", &beat).unwrap();
    assert_eq!(c.version, version, "a heartbeat is no change");
    c.apply("nodes", &node("cp-1", json!({}), "192.168.1.1"))
        .unwrap();
    assert!(c.version > version);
    assert!(desired(&c).nodes[0].labels.is_empty());
    c.delete("nodes", &node("cp-1", json!({}), "192.168.1.1"));
    assert_eq!(desired(&c).nodes.len(), 1);
}

#[test]
fn policies_parse_from_api_json_and_a_refused_update_keeps_the_previous_version() {
    let mut c = Cluster::default();
    c.apply(
        "pods",
        &pod(
            "t0",
            UID,
            "node-a",
            "10.244.1.5",
            json!({"stage": "training"}),
        ),
    )
    .unwrap();
    c.apply("networkpolicies", &policy(json!([{"port": 2222}])))
        .unwrap();
    let set = desired(&c);
    let t0 = set.workload("ml/t0").unwrap();
    assert_eq!(set.isolating(t0, Direction::Ingress).len(), 1);
    assert!(
        set.audited(t0, Direction::Ingress),
        "annotations come along"
    );
    let version = c.version;

    let e = c
        .apply(
            "networkpolicies",
            &policy(json!([{"port": 2222, "endPort": 2000}])),
        )
        .unwrap_err();
    let e = e.to_string();
    assert!(
        e.starts_with("kubernetes/networkpolicies/ml/trainers:"),
        "{e}"
    );
    assert!(e.contains("endPort 2000 is invalid"), "{e}");
    // The set stays; what the agent reports (the object's events and status) changed.
    assert_eq!(c.version, version + 1, "the refusal is news");
    assert!(
        c.seen[&(
            "networkpolicies".to_string(),
            "ml".to_string(),
            "trainers".to_string()
        )]
            .refused
            .is_some()
    );
    assert_eq!(desired(&c), set, "the previous version stays in force");

    c.delete("networkpolicies", &policy(json!([])));
    assert!(desired(&c).policies.is_empty());
}

#[test]
fn status_writes_neither_change_the_set_nor_move_its_lines() {
    // Each node's agent writes its entry into a Pipeline's or Workload's status by
    // server-side apply, which adds a managedFields entry per node and a new
    // resourceVersion: none of that is the object's spec.
    let mut c = Cluster::default();
    c.apply("networkpolicies", &policy(json!([{"port": 2222}])))
        .unwrap();
    let version = c.version;
    let set = desired(&c);
    let mut written = policy(json!([{"port": 2222}]));
    written["metadata"]["resourceVersion"] = json!("813");
    written["metadata"]["managedFields"] = json!([
        {"manager": "stagewall-agent-node-a", "operation": "Apply", "subresource": "status",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:nodes": {}}}},
        {"manager": "stagewall-agent", "operation": "Update", "subresource": "status",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}}
    ]);
    written["status"] = json!({"enforced": "1/1", "nodes": [{"node": "node-a"}]});
    c.apply("networkpolicies", &written).unwrap();
    assert_eq!(c.version, version, "a status write is no change");
    assert_eq!(desired(&c), set, "the same set, the same lines");
}

#[test]
fn a_relist_drops_what_is_gone_and_a_reused_address_goes_to_the_newer_pod() {
    let mut c = Cluster::default();
    c.apply(
        "pods",
        &pod("old", UID, "node-b", "10.244.2.7", json!({"app": "a"})),
    )
    .unwrap();
    let mut new = pod(
        "new",
        "9c8ab4e0-9a1f-4d62-8a43-1f2e3d4c5b6e",
        "node-b",
        "10.244.2.7",
        json!({"app": "b"}),
    );
    new["metadata"]["creationTimestamp"] = "2026-11-21T10:00:00Z".into();
    c.apply("pods", &new).unwrap();
    let set = desired(&c);
    assert!(set.workload("ml/old").unwrap().addresses.is_empty());
    assert_eq!(set.workload("ml/new").unwrap().addresses.len(), 1);

    c.apply("networkpolicies", &policy(json!([]))).unwrap();
    let errors = c.replace("pods", &[new]);
    assert!(errors.is_empty());
    let set = desired(&c);
    assert!(set.workload("ml/old").is_none(), "not in the new list");
    assert_eq!(set.policies.len(), 1, "other kinds untouched");
}

#[test]
fn a_workload_object_naming_a_cgroup_or_an_interface_is_refused() {
    let mut c = Cluster::default();
    for (field, value) in [
        ("cgroup", "/"),
        ("cgroup", "/system.slice/kubelet.service"),
        ("interface", "eth0"),
    ] {
        let object = json!({"apiVersion": "stagewall.io/v1alpha1", "kind": "Workload",
                            "metadata": {"name": "grab", "namespace": "tenant-b"},
                            "spec": {"addresses": ["192.0.2.9"], field: value}});
        let refused = c.apply("workloads", &object).unwrap_err().to_string();
        assert!(
            refused.contains("kubernetes/workloads/tenant-b/grab")
                && refused.contains(
                    "expected a Workload object from the API server to name addresses only"
                ),
            "{field}: {refused}"
        );
    }
    let (set, _) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .unwrap();
    assert!(set.workloads.is_empty(), "nothing of them is kept");
}

/// A pod with a mesh's sidecar is enforced by TC on its host-side interface, where it
/// has one, even when the agent enforces pods by their cgroups: the sidecar's redirect
/// (to the proxy's port) happens inside the pod, after TC and before any socket.
#[test]
fn a_meshed_pod_is_enforced_on_its_interface_and_a_plain_one_by_its_cgroup() {
    let mut c = Cluster::default();
    let mut meshed = pod("meshed", UID, "node-a", "10.244.1.5", json!({"app": "m"}));
    meshed["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "istio-proxy", "image": "proxyv2:1"}));
    c.apply("pods", &meshed).unwrap();
    let mut annotated = pod(
        "linkerd",
        "u-3",
        "node-a",
        "10.244.1.7",
        json!({"app": "l"}),
    );
    annotated["metadata"]["annotations"] = json!({"linkerd.io/proxy-version": "edge"});
    c.apply("pods", &annotated).unwrap();
    c.apply(
        "pods",
        &pod("plain", "u-2", "node-a", "10.244.1.6", json!({"app": "p"})),
    )
    .unwrap();
    let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
              veth-m\t0501F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
              veth-p\t0601F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
              veth-l\t0701F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
    let routes = PodInterfaces::parse(v4, "");
    let attachment = |set: &PolicySet, name: &str| {
        set.workload(&format!("ml/{name}"))
            .and_then(|w| w.attachment.clone())
    };
    let (set, _) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &routes,
            PodAttachment::Cgroup,
        )
        .unwrap();
    assert_eq!(
        attachment(&set, "meshed"),
        Some(Attachment::Interface("veth-m".into()))
    );
    assert_eq!(
        attachment(&set, "linkerd"),
        Some(Attachment::Interface("veth-l".into()))
    );
    assert!(
        matches!(attachment(&set, "plain"), Some(Attachment::Cgroup(_))),
        "{set:?}"
    );
    // Without a host route (a bridged CNI) the meshed pod keeps its cgroup.
    let (set, _) = c
        .desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .unwrap();
    assert!(matches!(
        attachment(&set, "meshed"),
        Some(Attachment::Cgroup(_))
    ));
}

/// Services and EndpointSlices from the watchers become the desired state's frontends;
/// a deleted slice takes its backends with it.
#[test]
fn services_and_their_endpoint_slices_become_frontends() {
    let mut c = Cluster::default();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "registry", "namespace": "ml"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "registry-abc", "namespace": "ml",
                     "labels": {"kubernetes.io/service-name": "registry"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    });
    c.apply("services", &service).unwrap();
    c.apply("endpointslices", &slice).unwrap();
    let desired = |c: &Cluster| {
        c.desired(
            "node-a",
            &PodCgroups::default(),
            "/",
            &PodInterfaces::default(),
            PodAttachment::Cgroup,
        )
        .unwrap()
        .0
        .services
    };
    let frontends = desired(&c);
    assert_eq!(frontends.len(), 1);
    assert_eq!(
        frontends[0].backends,
        vec!["10.244.1.5:8080".parse().unwrap()]
    );
    c.delete("endpointslices", &slice);
    assert!(desired(&c)[0].backends.is_empty());
    let error = c
        .apply(
            "services",
            &json!({"metadata": {"name": "bad", "namespace": "ml"}, "spec": {"ports": 80}}),
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("kubernetes/services/ml/bad"),
        "{error}"
    );
}

/// One NetworkPolicy of 900 single ports from every namespace, with 300 pods that each
/// are their own identity, needs 270,000 POLICY entries (with the older policy's 300,
/// 270,300), more than the map holds: that
/// object is left out, named with the reason; the older policy stays in force, and a
/// younger one is admitted after it (oldest first, skipping what does not fit).
#[test]
fn a_policy_that_overflows_the_kernel_maps_is_left_out_and_the_older_ones_stay() {
    let mut c = Cluster::default();
    for i in 0..300 {
        let node = if i == 0 { "node-a" } else { "node-b" };
        c.apply(
            "pods",
            &pod(
                &format!("p{i}"),
                &format!("uid-{i}"),
                node,
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                json!({"app": format!("a{i}")}),
            ),
        )
        .unwrap();
    }
    let network_policy = |name: &str, created: &str, ports: serde_json::Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {}}], "ports": ports}]}
        })
    };
    let many: Vec<serde_json::Value> = (0..900)
        .map(|p| json!({"protocol": "TCP", "port": 10_000 + p}))
        .collect();
    c.apply(
        "networkpolicies",
        &network_policy("older", "2026-11-01T00:00:00Z", json!([{"port": 80}])),
    )
    .unwrap();
    c.apply(
        "networkpolicies",
        &network_policy("huge", "2026-11-20T00:00:00Z", json!(many)),
    )
    .unwrap();
    // Younger than the huge one: it still gets its turn.
    c.apply(
        "networkpolicies",
        &network_policy("newer", "2026-11-21T00:00:00Z", json!([{"port": 81}])),
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
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.name.as_str()).collect();
    assert_eq!(names, ["newer", "older"]);
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    let error = left_out[0].to_string();
    assert!(
        error.contains("kubernetes/networkpolicies/ml/huge")
            && error.contains("policy: 270600 entries exceed the kernel map's capacity of 262144"),
        "{error}"
    );
}
