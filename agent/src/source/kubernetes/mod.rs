//! Kubernetes as the source of the desired state (`stagewall run --kubernetes`): the agent
//! watches Pods, Namespaces, NetworkPolicies, ClusterNetworkPolicies, Nodes, Services,
//! EndpointSlices and the stagewall.io kinds through the API server (kube-rs watchers: list, then watch from its resourceVersion with bookmarks,
//! listing again after 410 Gone), keeps them in a `Cluster`, and gives the agent the
//! desired state built from it whenever it changed.

pub mod cgroups;
pub mod cluster;
pub mod events;
pub mod routes;
pub mod seen;
pub mod services;
mod status;
mod veths;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use self::{cgroups::PodCgroups, cluster::Cluster, routes::PodInterfaces};
use crate::{
    datapath::host,
    policy::{
        error::{PolicyError, PolicyErrors},
        model::PolicySet,
    },
    source::WakeUp,
};

#[derive(clap::Args, Debug, Clone)]
pub struct KubernetesArgs {
    /// Take pods, namespaces and policies from the Kubernetes API server instead of
    /// --policies (in a cluster: its service account; elsewhere: --kubeconfig or
    /// $KUBECONFIG).
    #[arg(long)]
    pub kubernetes: bool,
    /// The kubeconfig file to reach the API server with.
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Where kubelet's pod cgroups (kubepods.slice or kubepods) are, as a path below the
    /// cgroup2 mount.
    #[arg(long, default_value = "/", requires = "kubernetes")]
    pub pods_cgroup_base: String,
    /// How this node's pods are enforced: by their cgroups, or by TC on their host-side
    /// veth (found by the host route to the pod's address that routed CNIs install; a pod
    /// without one is enforced by its cgroup). Pods with a mesh's sidecar (Istio,
    /// Linkerd) are enforced by TC wherever they have such a route, in either mode.
    #[arg(long, value_enum, default_value = "cgroup", requires = "kubernetes")]
    pub pod_attachment: PodAttachment,
    /// How long to wait for the first complete list of every kind before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "kubernetes")]
    pub sync_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PodAttachment {
    Cgroup,
    Tc,
}

/// One watched kind: its API resource, and whether the agent can do without it (the
/// stagewall.io kinds and ClusterNetworkPolicy, when their CustomResourceDefinitions are
/// not installed).
struct Kind {
    plural: &'static str,
    resource: ApiResource,
    optional: bool,
}

/// What the agent watches (the same on every node).
fn kinds() -> Vec<Kind> {
    let kind = |group: &str, version: &str, kind: &str, plural: &'static str, optional| Kind {
        plural,
        resource: ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        ),
        optional,
    };
    vec![
        kind("", "v1", "Pod", "pods", false),
        kind("", "v1", "Namespace", "namespaces", false),
        kind(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            false,
        ),
        kind("stagewall.io", "v1alpha1", "Pipeline", "pipelines", true),
        kind("stagewall.io", "v1alpha1", "Workload", "workloads", true),
        // Cluster-scoped; optional: the CRD is the API's own (deploy/kubernetes has it),
        // which a platform may not have installed. Without it the agent says so once and
        // goes on; the watcher asks again (backoff up to 30 s) and takes them up once served.
        kind(
            "policy.networking.k8s.io",
            "v1alpha2",
            "ClusterNetworkPolicy",
            "clusternetworkpolicies",
            true,
        ),
        // Every Node: this node's addresses (the node's identity), and every node's
        // labels and addresses, which ClusterNetworkPolicies' nodes peers select. Optional
        // so that an agent whose role predates it goes on, its node's probes then judged
        // as any address and nodes peers selecting nothing.
        kind("", "v1", "Node", "nodes", true),
        // Services and their endpoints: a pod's call to a Service is translated to one of
        // its pods at the socket. Optional: an agent whose role predates them goes on,
        // judging such calls on the Service's address.
        kind("", "v1", "Service", "services", true),
        kind(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
        ),
    ]
}

/// The cluster as the watchers see it, and what of it the agent was last given.
pub struct View {
    cluster: Arc<Mutex<Cluster>>,
    node: String,
    cgroup_mount: PathBuf,
    /// Pods' veths found through their network namespaces (bridged CNIs).
    veths: veths::PodVeths,
    base: String,
    attachment: PodAttachment,
    given: Option<PolicySet>,
    /// The cluster version of the last refused desired state: not refused again until
    /// the cluster changes.
    refused: Option<u64>,
    /// What the last desired state was built from: the same inputs give the same answer,
    /// so the periodic check does not rebuild it.
    inputs: Option<(u64, PodCgroups, PodInterfaces, Vec<IpAddr>)>,
    /// The errors of the objects left out of the last desired state given.
    pub left_out: Vec<PolicyError>,
    /// Reports refused and left-out objects as Kubernetes Events (the agent does; a dry
    /// run not).
    events: Option<events::ObjectEvents>,
    /// Writes this node's verdict on each stagewall.io object into its status (as events).
    status: Option<status::StatusWriter>,
    /// The stagewall.io objects as last seen, and the cluster's nodes: what the verdicts
    /// written into their status are about.
    status_seen: std::collections::BTreeMap<cluster::Key, seen::Seen>,
    nodes: Option<std::collections::BTreeSet<String>>,
    /// What became of the desired state: the outcome of the last one given, or why the
    /// latest was refused.
    applied: status::Applied,
    client: Client,
    resources: Vec<ApiResource>,
}

impl View {
    /// From now on, objects refused or left out are also reported as Kubernetes Events
    /// on them, and this node's verdict on each stagewall.io object is written into its
    /// status.
    pub fn report_events(&mut self) {
        self.events = Some(events::ObjectEvents::new(
            self.client.clone(),
            &self.node,
            self.resources.clone(),
        ));
        self.status = Some(status::StatusWriter::start(
            self.client.clone(),
            &self.node,
            &self.resources,
        ));
    }

    /// What became of the desired state last given: the status of the objects it was
    /// built from says whether they are enforced on this node.
    pub fn applied(&mut self, outcome: Result<(), String>) {
        self.applied.applied(outcome);
        self.write_status();
    }

    /// Hands this node's verdicts to the status writer (which writes what changed).
    fn write_status(&self) {
        if let Some(writer) = &self.status {
            writer.report(
                status::verdicts(&self.status_seen, &self.left_out, self.applied.outcome()),
                self.nodes.clone(),
            );
        }
    }

    /// The desired state if it changed since it was last given: pods' cgroups are looked
    /// up again each time (a pod's appears when kubelet starts it).
    pub fn changed(&mut self) -> Option<Result<PolicySet, PolicyErrors>> {
        // The host is read before the cluster is locked: the watchers wait for nobody.
        let cgroups = PodCgroups::scan(&self.cgroup_mount, &self.base);
        // Read in either attachment: meshed pods are enforced by TC where they have one.
        let routes =
            PodInterfaces::read().with_veths(self.veths.scan(&cgroups, &self.cgroup_mount));
        // The node's interfaces (the agent is on the host network), with its Node
        // object's addresses: the node's identity.
        let interfaces = host::local_addresses();
        let cluster = self.cluster.lock().expect("cluster lock");
        let inputs = (cluster.version, cgroups, routes, interfaces);
        if self.inputs.as_ref() == Some(&inputs) {
            return None;
        }
        let (_, cgroups, routes, interfaces) = self.inputs.insert(inputs);
        let desired = cluster
            .desired(&self.node, cgroups, &self.base, routes, self.attachment)
            .map(|(mut set, left_out)| {
                set.node_addresses.extend(interfaces.iter());
                set.node_addresses.sort();
                set.node_addresses.dedup();
                (set, left_out)
            });
        let refused: Vec<PolicyError> = cluster
            .seen
            .values()
            .filter_map(|seen| seen.refused.as_ref())
            .flatten()
            .cloned()
            .collect();
        self.status_seen = cluster
            .seen
            .iter()
            .filter(|(key, _)| status::STATUS_KINDS.contains(&key.0.as_str()))
            .map(|(key, seen)| (key.clone(), seen.clone()))
            .collect();
        let changed = match desired {
            // The same state from the same objects: nothing to do. (The same state with
            // other objects left out, one too large for the maps now left out, say, is
            // said and counted below.)
            Ok((set, left_out))
                if self.given.as_ref() == Some(&set) && left_out == self.left_out =>
            {
                // Back from a refused state, if it was one: the state in force stands.
                self.refused = None;
                self.applied.back_to_last_given();
                None
            }
            Ok((set, left_out)) => {
                // Said each time the state changes; the rest is enforced.
                for e in &left_out {
                    log::warn!("Kubernetes: left out, the rest is enforced: {e}");
                }
                // The nodes whose entries count in the objects' status (this one always:
                // its Node may not be listed, or not yet).
                self.nodes = (!set.nodes.is_empty()).then(|| {
                    set.nodes
                        .iter()
                        .map(|n| n.name.clone())
                        .chain([self.node.clone()])
                        .collect()
                });
                self.left_out = left_out;
                self.given = Some(set.clone());
                self.refused = None;
                Some(Ok(set))
            }
            Err(_) if self.refused == Some(cluster.version) => None,
            Err(e) => {
                self.refused = Some(cluster.version);
                self.applied
                    .refused(format!("this node's desired state was refused: {e}"));
                Some(Err(e))
            }
        };
        drop(cluster);
        // Events and status follow the objects whether or not the desired state changed
        // (a new object the parser refuses changes nothing else).
        if let Some(events) = &mut self.events {
            events.report(
                refused
                    .iter()
                    .map(|e| (events::NotEnforced::Refused, e))
                    .chain(
                        self.left_out
                            .iter()
                            .map(|e| (events::NotEnforced::LeftOut, e)),
                    ),
            );
        }
        // A changed state is reported once the agent has applied it (`applied`).
        if !matches!(changed, Some(Ok(_))) {
            self.write_status();
        }
        changed
    }
}

/// Why the API server's objects could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("reading kubeconfig {}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("no in-cluster service account and no kubeconfig")]
    NoConfig(#[source] InferConfigError),
    #[error(transparent)]
    Client(#[from] kube::Error),
    #[error("the Kubernetes watchers stopped")]
    WatchersStopped,
    #[error("the API server did not list every kind within {timeout:?} (listed: {listed:?})")]
    SyncTimeout {
        timeout: Duration,
        listed: std::collections::BTreeSet<&'static str>,
    },
}

/// The cgroup of this node's pod with `uid` (a path below the cgroup2 mount at `mount`),
/// looked for below `base` as the pods' are.
pub fn pod_cgroup(mount: &std::path::Path, base: &str, uid: &str) -> Option<String> {
    PodCgroups::scan(mount, base).get(uid).map(str::to_string)
}

/// Where Kubernetes mounts a pod's service account token.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Does the agent run in a pod with a service account (and the API server's address)?
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::path::Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

async fn client(args: &KubernetesArgs) -> Result<Client, KubernetesError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubernetesError::ReadKubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await.map_err(KubernetesError::NoConfig)?,
    };
    Ok(Client::try_from(config)?)
}

/// Connects, starts a watcher per kind and waits until each has listed its objects once
/// (or, for the optional kinds, was found not to be served). Every later change sends a
/// wake-up on `changes`.
pub async fn start_watchers(
    args: &KubernetesArgs,
    node: &str,
    cgroup_mount: PathBuf,
    changes: mpsc::Sender<WakeUp>,
) -> Result<View, KubernetesError> {
    let client = client(args).await?;
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let (synced_tx, mut synced) = mpsc::channel(8);
    let kinds = kinds();
    let required = kinds.len();
    let resources: Vec<ApiResource> = kinds.iter().map(|k| k.resource.clone()).collect();
    for kind in kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
        tokio::spawn(follow(
            api,
            kind,
            cluster.clone(),
            changes.clone(),
            synced_tx.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + args.sync_timeout;
    let mut done = std::collections::BTreeSet::new();
    while done.len() < required {
        match tokio::time::timeout_at(deadline, synced.recv()).await {
            Ok(Some(plural)) => {
                done.insert(plural);
            }
            Ok(None) => return Err(KubernetesError::WatchersStopped),
            Err(_) => {
                return Err(KubernetesError::SyncTimeout {
                    timeout: args.sync_timeout,
                    listed: done,
                });
            }
        }
    }
    log::info!("Kubernetes: every kind listed; enforcing for node {node}");
    Ok(View {
        cluster,
        node: node.to_string(),
        cgroup_mount,
        veths: veths::PodVeths::default(),
        base: args.pods_cgroup_base.clone(),
        attachment: args.pod_attachment,
        given: None,
        refused: None,
        inputs: None,
        left_out: Vec::new(),
        events: None,
        status: None,
        status_seen: Default::default(),
        nodes: None,
        applied: status::Applied::default(),
        resources,
        client,
    })
}

/// An object as the parser and the pod reader take it: with its apiVersion and kind,
/// which the items of a list do not carry.
fn json(object: &DynamicObject, resource: &ApiResource) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("API objects serialise");
    value["apiVersion"] = resource.api_version.clone().into();
    value["kind"] = resource.kind.clone().into();
    value
}

/// Follows one kind for as long as the agent runs: list, watch, and list again when the
/// watch falls too far behind (410 Gone), with backoff on errors.
async fn follow(
    api: Api<DynamicObject>,
    kind: Kind,
    cluster: Arc<Mutex<Cluster>>,
    changes: mpsc::Sender<WakeUp>,
    synced: mpsc::Sender<&'static str>,
) {
    let mut listed: Vec<serde_json::Value> = Vec::new();
    let config = watcher::Config::default();
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut first = true;
    // A lost grant is said once, until the kind is listed again.
    let mut ungranted_said = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => {
                ungranted_said = false;
                event
            }
            Err(e) => {
                // Not served (404), or not granted (403: a role from before the kind).
                let missing = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404 || s.code == 403);
                if missing && kind.optional && first {
                    log::warn!(
                        "Kubernetes: {} are not served or not granted (is the CustomResourceDefinition installed? does the ClusterRole of deploy/kubernetes/rbac.yaml allow them?); going on without them, and taking them up once they are: {e}",
                        kind.plural
                    );
                    first = false;
                    let _ = synced.send(kind.plural).await;
                } else if missing && kind.optional {
                    // Said once; the watcher keeps asking, and takes them up once served.
                    log::debug!("Kubernetes: {} still not served", kind.plural);
                    let not_served = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                    if not_served {
                        // The kind is gone (its CustomResourceDefinition deleted), and its
                        // objects with it: a watch that missed their deletions must not
                        // keep them in force. (Not granted, 403, keeps what was listed: a
                        // revoked role is no reason to drop guardrails.)
                        let removed = {
                            let mut cluster = cluster.lock().expect("cluster lock");
                            let before = cluster.version;
                            cluster.replace(kind.plural, &[]);
                            cluster.version != before
                        };
                        if removed {
                            log::warn!(
                                "Kubernetes: {} are no longer served; the ones listed before are out of force",
                                kind.plural
                            );
                            let _ = changes.try_send(WakeUp::Complete);
                        }
                    } else if !first && !ungranted_said {
                        ungranted_said = true;
                        log::warn!(
                            "Kubernetes: {} are no longer granted; the ones listed before stay in force: {e}",
                            kind.plural
                        );
                    }
                } else {
                    log::warn!("Kubernetes: watching {}: {e}", kind.plural);
                }
                continue;
            }
        };
        let listed_all = matches!(event, watcher::Event::InitDone);
        let errors = {
            let mut cluster = cluster.lock().expect("cluster lock");
            match event {
                watcher::Event::Init => {
                    listed.clear();
                    Vec::new()
                }
                watcher::Event::InitApply(o) => {
                    listed.push(json(&o, &kind.resource));
                    Vec::new()
                }
                watcher::Event::InitDone => {
                    cluster.replace(kind.plural, &std::mem::take(&mut listed))
                }
                watcher::Event::Apply(o) => cluster
                    .apply(kind.plural, &json(&o, &kind.resource))
                    .err()
                    .into_iter()
                    .collect(),
                watcher::Event::Delete(o) => {
                    cluster.delete(kind.plural, &json(&o, &kind.resource));
                    Vec::new()
                }
            }
        };
        for e in errors.iter().flatten() {
            log::error!("Kubernetes object refused, its previous version stays: {e}");
        }
        if listed_all && first {
            first = false;
            let _ = synced.send(kind.plural).await;
        }
        let _ = changes.try_send(WakeUp::Complete);
    }
}
