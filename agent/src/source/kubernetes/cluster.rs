//! The cluster as the API server last said it is, and the desired state built from it:
//! pure, fed with API objects as JSON (what the watchers receive), so it is tested with
//! real API objects and no API server.
//!
//! - Pods become workloads: by IP and labels everywhere (peers), and enforced through
//!   their cgroup when they run on this node. Pods on the host network share the node's
//!   addresses and are left alone, as NetworkPolicy leaves them; finished pods are gone.
//! - Nodes become the nodes inventory (name, labels, InternalIP and ExternalIP addresses)
//!   that ClusterNetworkPolicies' nodes peers select; this node's addresses are also the
//!   node's identity.
//! - Namespaces, NetworkPolicies, ClusterNetworkPolicies (cluster-scoped: known as
//!   `kubernetes/clusternetworkpolicies/<name>`), Pipelines and Workloads go through the
//!   same parser as policy files, each object on its own: an object the parser refuses is reported
//!   (kind, name, line of its JSON, what was expected) and its previous version, if any,
//!   stays in force, so one bad object neither opens nor freezes the rest.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use self::objects::{node_info, spec_only};
use super::{
    PodAttachment,
    cgroups::PodCgroups,
    routes::PodInterfaces,
    seen::Seen,
    services::{self, ServiceInfo, SliceInfo},
};
use crate::policy::{
    error::{PolicyError, PolicyErrors},
    model::{
        Attachment, Labels, NamedPort, Node, ObjectName, Origin, PolicySet, Protocol, Workload,
    },
    parse::{complete, parse_into},
};

/// The kinds the agent watches besides pods, by their plural resource name.
pub const DOCUMENT_KINDS: [&str; 5] = [
    "namespaces",
    "networkpolicies",
    "clusternetworkpolicies",
    "pipelines",
    "workloads",
];

/// What a pod contributes, from its API object.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodInfo {
    name: ObjectName,
    uid: String,
    labels: Labels,
    node: Option<String>,
    addresses: Vec<IpAddr>,
    ports: Vec<NamedPort>,
    qos_class: Option<String>,
    created: String,
    /// In the node's network namespace: the node itself as far as network policy goes,
    /// so neither a workload nor a peer, and never guarded.
    host_network: bool,
    /// With a service mesh's sidecar (Istio, Linkerd): its inbound connections are
    /// redirected to the proxy's port inside the pod before a socket sees them, so its
    /// ingress is decided by TC on its host-side interface, before the redirect.
    meshed: bool,
}

// The fields of a v1 Pod the agent reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPod {
    metadata: RawMeta,
    spec: Option<RawPodSpec>,
    status: Option<RawPodStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<Labels>,
    creation_timestamp: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
    host_network: Option<bool>,
    #[serde(default)]
    containers: Vec<RawContainer>,
    #[serde(default)]
    init_containers: Vec<RawContainer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ports: Vec<RawContainerPort>,
}

/// The sidecars' container names (Istio's also as a native sidecar, an init container)
/// and the annotations their injectors set.
const MESH_CONTAINERS: [&str; 2] = ["istio-proxy", "linkerd-proxy"];
const MESH_ANNOTATIONS: [&str; 2] = ["sidecar.istio.io/status", "linkerd.io/proxy-version"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainerPort {
    name: Option<String>,
    container_port: u16,
    protocol: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    phase: Option<String>,
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<RawPodIp>,
    qos_class: Option<String>,
}

#[derive(Deserialize)]
struct RawPodIp {
    ip: String,
}

/// The pod as a workload (or as part of the node, with host network), or None when it
/// has nothing to enforce or be known by (finished). An object that is not a pod is an
/// error.
fn pod_info(object: &serde_json::Value) -> Result<Option<PodInfo>, String> {
    let pod = RawPod::deserialize(object).map_err(|e| format!("not a v1 Pod: {e}"))?;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut addresses: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                },
                port: p.container_port,
            })
        })
        .collect();
    Ok(Some(PodInfo {
        name: ObjectName {
            namespace: pod.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: pod.metadata.name,
        },
        uid: pod.metadata.uid.unwrap_or_default(),
        labels: pod.metadata.labels.unwrap_or_default(),
        node: spec.node_name,
        addresses,
        ports,
        qos_class: status.qos_class,
        created: pod.metadata.creation_timestamp.unwrap_or_default(),
        host_network: spec.host_network == Some(true),
        meshed: spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .any(|c| MESH_CONTAINERS.contains(&c.name.as_str()))
            || MESH_ANNOTATIONS
                .iter()
                .any(|a| pod.metadata.annotations.contains_key(*a)),
    }))
}

/// Where an object's errors point: `kubernetes/<kind>/<namespace>/<name>`, with lines of
/// the object as pretty JSON.
fn object_path(kind: &str, object: &serde_json::Value) -> PathBuf {
    key_path(&key(kind, object))
}

/// The path of the object `key` names (the inverse of `key_of_file`).
fn key_path((kind, namespace, name): &Key) -> PathBuf {
    let mut path = PathBuf::from("kubernetes").join(kind);
    if !namespace.is_empty() {
        path.push(namespace);
    }
    path.join(if name.is_empty() { "unnamed" } else { name })
}

/// Objects by (kind, namespace, name).
pub type Key = (String, String, String);

fn key(kind: &str, object: &serde_json::Value) -> Key {
    let meta = &object["metadata"];
    (
        kind.to_string(),
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

#[derive(Default)]
pub struct Cluster {
    pods: BTreeMap<Key, PodInfo>,
    /// Nodes' labels and addresses (status.addresses), by node: this node's addresses
    /// are the node's identity; every node's, what nodes peers select.
    nodes: BTreeMap<Key, Node>,
    /// Services' virtual addresses and ports, and their EndpointSlices' ready endpoints.
    services: BTreeMap<Key, ServiceInfo>,
    slices: BTreeMap<Key, SliceInfo>,
    /// Every other object, parsed: the last version the parser accepted.
    documents: BTreeMap<Key, PolicySet>,
    /// Their creation timestamps (RFC 3339, so they sort by time): when the kernel maps
    /// cannot hold everything, the oldest objects are admitted first.
    created: BTreeMap<Key, String>,
    /// Every other object as last seen, whether the parser took it or not: its
    /// generation and the errors it was refused for (what its status and events say).
    pub seen: BTreeMap<Key, Seen>,
    /// Counts changes, so the agent can tell whether anything happened.
    pub version: u64,
}

impl Cluster {
    /// An object was added or changed. Returns the errors of one the parser refuses (its
    /// previous version stays).
    pub fn apply(&mut self, kind: &str, object: &serde_json::Value) -> Result<(), PolicyErrors> {
        let key = key(kind, object);
        if kind == "nodes" {
            // Only labels and addresses count: a status heartbeat changes nothing.
            let node = node_info(object);
            if self.nodes.insert(key, node.clone()) != Some(node) {
                self.version += 1;
            }
            return Ok(());
        }
        if kind == "services" {
            let info = services::service_info(object)
                .map_err(|message| one_error(kind, object, message))?;
            if self.services.insert(key, info.clone()) != Some(info) {
                self.version += 1;
            }
            return Ok(());
        }
        if kind == "endpointslices" {
            let info =
                services::slice_info(object).map_err(|message| one_error(kind, object, message))?;
            if self.slices.insert(key, info.clone()) != Some(info) {
                self.version += 1;
            }
            return Ok(());
        }
        if kind == "pods" {
            let info = pod_info(object).map_err(|message| one_error(kind, object, message))?;
            let changed = match info {
                Some(info) => self.pods.insert(key, info.clone()).as_ref() != Some(&info),
                None => self.pods.remove(&key).is_some(),
            };
            if changed {
                self.version += 1;
            }
            return Ok(());
        }
        let result = self.apply_document(kind, object, key.clone());
        let seen = Seen {
            uid: object["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .into(),
            generation: object["metadata"]["generation"]
                .as_i64()
                .unwrap_or_default(),
            refused: result.clone().err(),
        };
        // A refusal (or its end) is a change of what the agent reports, if not of the set.
        if self.seen.insert(key, seen.clone()) != Some(seen) {
            self.version += 1;
        }
        result
    }

    /// A Namespace, NetworkPolicy, ClusterNetworkPolicy, Pipeline or Workload was added
    /// or changed: parsed as a policy file is.
    fn apply_document(
        &mut self,
        kind: &str,
        object: &serde_json::Value,
        key: Key,
    ) -> Result<(), PolicyErrors> {
        let text = serde_json::to_string_pretty(&spec_only(object)).expect("JSON values serialise");
        let mut parsed = PolicySet::default();
        parse_into(&object_path(kind, object), &text, &mut parsed)?;
        // A namespace's object is known by its addresses; it never takes one of the node's
        // cgroups or interfaces (the root cgroup, a systemd unit, the node's NIC): those
        // are given by whoever runs the node, in a host's policy directory.
        if let Some(w) = parsed.workloads.iter().find(|w| w.attachment.is_some()) {
            return Err(one_error(
                kind,
                object,
                format!(
                    "{} names a cgroup or an interface ({:?}); expected a Workload object from the API server to name addresses only",
                    w.name,
                    w.attachment.as_ref().expect("found by it")
                ),
            ));
        }
        let created = object["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.created.insert(key.clone(), created);
        if self.documents.get(&key) != Some(&parsed) {
            self.documents.insert(key, parsed);
            self.version += 1;
        }
        Ok(())
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: &str, object: &serde_json::Value) {
        let key = key(kind, object);
        let removed = if kind == "pods" {
            self.pods.remove(&key).is_some()
        } else if kind == "nodes" {
            self.nodes.remove(&key).is_some()
        } else if kind == "services" {
            self.services.remove(&key).is_some()
        } else if kind == "endpointslices" {
            self.slices.remove(&key).is_some()
        } else {
            self.created.remove(&key);
            self.seen.remove(&key);
            self.documents.remove(&key).is_some()
        };
        if removed {
            self.version += 1;
        }
    }

    /// Replaces every object of a kind (a fresh list after a relist). Returns the errors
    /// of refused objects; their previous versions stay.
    pub fn replace(&mut self, kind: &str, objects: &[serde_json::Value]) -> Vec<PolicyErrors> {
        let listed: std::collections::BTreeSet<Key> =
            objects.iter().map(|o| key(kind, o)).collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .chain(self.documents.keys())
            .chain(self.seen.keys())
            .chain(self.nodes.keys())
            .chain(self.services.keys())
            .chain(self.slices.keys())
            .filter(|k| k.0 == kind && !listed.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.pods.remove(&k);
            self.nodes.remove(&k);
            self.services.remove(&k);
            self.slices.remove(&k);
            self.documents.remove(&k);
            self.created.remove(&k);
            self.seen.remove(&k);
            self.version += 1;
        }
        objects
            .iter()
            .filter_map(|o| self.apply(kind, o).err())
            .collect()
    }

    /// The desired state for the agent on `node`: every pod a workload, this node's
    /// enforced through their host-side interface when `routes` name one and either
    /// `attachment` says TC or the pod is meshed, else through their cgroups (found by UID below `base`, or where kubelet will
    /// create them), plus the policies, and this node's addresses from its Node object.
    ///
    /// One object never stops the rest: an object that the checks of the whole set refuse
    /// (a Pipeline flow naming no stage, a Workload claiming an address, a name or a
    /// cgroup that another object has) is left out, and the rest is enforced; its errors
    /// come back beside the set. Which of two clashing objects is left out is fixed: pods
    /// come first (a Workload object never takes a pod's address or cgroup), then the
    /// other objects by kind, namespace and name; the later one is refused. Errors that
    /// name no object refuse the whole state.
    ///
    /// The same for the kernel maps' capacity: when the whole set needs more entries
    /// than the maps hold (one NetworkPolicy of 900 ports that every pod of the cluster
    /// may reach, say), objects are admitted oldest first and one that would overflow
    /// them is left out (capacity.rs).
    pub fn desired(
        &self,
        node: &str,
        cgroups: &PodCgroups,
        base: &str,
        routes: &PodInterfaces,
        attachment: PodAttachment,
    ) -> Result<(PolicySet, Vec<PolicyError>), PolicyErrors> {
        let mut left_out: std::collections::BTreeSet<Key> = std::collections::BTreeSet::new();
        let mut refused = Vec::new();
        loop {
            let mut set = self.build(node, cgroups, base, (routes, attachment), &left_out);
            let errors = complete(&mut set);
            if errors.is_empty() {
                return self.fit(set, refused, &left_out, |left_out| {
                    let mut set = self.build(node, cgroups, base, (routes, attachment), left_out);
                    complete(&mut set).is_empty().then_some(set)
                });
            }
            let at_fault: Vec<Key> = errors
                .iter()
                .filter_map(|e| key_of_file(&e.file))
                .filter(|k| self.documents.contains_key(k) && !left_out.contains(k))
                .collect();
            if at_fault.is_empty() {
                return Err(PolicyErrors(errors));
            }
            left_out.extend(at_fault);
            refused.extend(errors);
        }
    }

    /// The set before its checks: pods first, then every other object not `left_out`.
    fn build(
        &self,
        node: &str,
        cgroups: &PodCgroups,
        base: &str,
        (routes, attachment): (&PodInterfaces, PodAttachment),
        left_out: &std::collections::BTreeSet<Key>,
    ) -> PolicySet {
        let mut set = PolicySet::default();
        // An address moves from a pod that is going to the one that now has it: the
        // newer pod keeps it (the API server may still list both for a moment).
        let mut owner: BTreeMap<IpAddr, (&str, &Key)> = BTreeMap::new();
        for (key, pod) in self.pods.iter().filter(|(_, p)| !p.host_network) {
            for a in &pod.addresses {
                let newer = owner
                    .get(a)
                    .is_none_or(|(created, _)| pod.created.as_str() > *created);
                if newer {
                    owner.insert(*a, (pod.created.as_str(), key));
                }
            }
        }
        for (key, pod) in &self.pods {
            let local = pod.node.as_deref() == Some(node) && !pod.uid.is_empty();
            if pod.host_network {
                // Its cgroup (once kubelet made it) is let through the guards.
                if let Some(path) = local.then(|| cgroups.get(&pod.uid)).flatten() {
                    set.unguarded_cgroups.push(path.to_string());
                }
                continue;
            }
            let by_interface = attachment == PodAttachment::Tc || pod.meshed;
            // A pod enforced by its cgroup gets TC on its veth (where the routes name one)
            // as the backstop for raw sockets, which the cgroup hooks never see.
            let backstop = (local && !by_interface)
                .then(|| routes.backstop(&pod.uid, &pod.addresses))
                .flatten()
                .map(str::to_string);
            let attachment = local.then(|| {
                if let Some(interface) = by_interface
                    .then(|| routes.interface(&pod.addresses))
                    .flatten()
                {
                    // Enforced on its interface; a guard above its cgroup lets it through.
                    if let Some(path) = cgroups.get(&pod.uid) {
                        set.unguarded_cgroups.push(path.to_string());
                    }
                    return Attachment::Interface(interface.to_string());
                }
                let path = cgroups.get(&pod.uid).map_or_else(
                    || cgroups.expected(base, &pod.uid, pod.qos_class.as_deref()),
                    str::to_string,
                );
                Attachment::Cgroup(path)
            });
            set.workloads.push(Workload {
                name: pod.name.clone(),
                labels: pod.labels.clone(),
                attachment,
                backstop,
                addresses: pod
                    .addresses
                    .iter()
                    .filter(|a| owner.get(a).is_some_and(|(_, k)| *k == key))
                    .copied()
                    .collect(),
                ports: pod.ports.clone(),
                fail_mode: None,
                origin: Origin {
                    file: Path::new("kubernetes/pods")
                        .join(&pod.name.namespace)
                        .join(&pod.name.name),
                    line: 0,
                },
            });
        }
        for (key, parsed) in &self.documents {
            if !left_out.contains(key) {
                set.extend_from(parsed);
            }
        }
        let this_node = ("nodes".to_string(), String::new(), node.to_string());
        if let Some(this) = self.nodes.get(&this_node) {
            set.node_addresses.extend(&this.addresses);
        }
        set.nodes.extend(self.nodes.values().cloned());
        let slices: Vec<&SliceInfo> = self.slices.values().collect();
        set.services =
            services::frontends(self.services.values(), &slices, node, &set.node_addresses);
        set
    }
}

/// The object an error's file names (`kubernetes/<kind>[/<namespace>]/<name>`).
pub(super) fn key_of_file(file: &Path) -> Option<Key> {
    let parts: Vec<String> = file
        .strip_prefix("kubernetes")
        .ok()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [kind, namespace, name] => Some((kind.clone(), namespace.clone(), name.clone())),
        [kind, name] => Some((kind.clone(), String::new(), name.clone())),
        _ => None,
    }
}

fn one_error(kind: &str, object: &serde_json::Value, message: String) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        file: object_path(kind, object),
        line: 0,
        message,
    }])
}

mod capacity;
#[cfg(test)]
mod cluster_policy_tests;
mod objects;
#[cfg(test)]
mod tests;
