//! The simulated nodes' kubelets and the churn: pods created (bound with `spec.nodeName`,
//! then reported Running with an address through the status subresource), relabelled,
//! readdressed and deleted at a set rate, each change timed from its write at the API
//! server until the kernel's maps hold it (`kernel`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use stagewall_tests::cluster::{Cluster, pod_cgroup};

use crate::kernel::Maps;

/// How many nodes, pods, namespaces and app labels (per namespace) the cluster has.
#[derive(Clone, Copy)]
pub struct Shape {
    pub nodes: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub apps: usize,
}

/// NetworkPolicies per namespace (each selects one app, at most `apps`).
const POLICIES_PER_NAMESPACE: usize = 4;
/// Pod writes in flight while the cluster is filled.
const FILL_CONCURRENCY: usize = 16;
/// How often the kernel's maps are read for the changes not seen there yet.
const POLL_EVERY: Duration = Duration::from_millis(2);
/// How long a change may take to reach the kernel after the churn before it is counted
/// as never seen.
const DRAIN_WITHIN: Duration = Duration::from_secs(20);
/// Pod addresses: 10.64.0.0 upward, one fresh address per new pod or readdress.
const FIRST_POD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);

impl Shape {
    fn policies_per_namespace(&self) -> usize {
        POLICIES_PER_NAMESPACE.min(self.apps)
    }

    pub fn policies(&self) -> usize {
        self.namespaces * self.policies_per_namespace()
    }
}

/// A tokio runtime whose threads are in network namespace `netns` (the API server
/// listens in the test bed's hub): connections are made from its worker threads, so
/// everything that talks to the API server runs through `spawned`.
pub fn runtime_in(netns: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    let path = PathBuf::from(format!("/run/netns/{netns}"));
    fs::File::open(&path).with_context(|| format!("netns {netns}"))?;
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let ns = fs::File::open(&path).expect("the hub's netns");
            // SAFETY: plain syscall on an open namespace fd; it moves only this thread.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
            assert!(entered, "entering {}", path.display());
        })
        .build()?)
}

/// Runs `future` on one of `runtime`'s worker threads (in the hub), not on the caller's.
pub fn spawned<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    runtime.block_on(runtime.spawn(future))?
}

/// A client of the API server with the credentials of `kubeconfig`.
pub async fn client(kubeconfig: PathBuf) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn node_name(n: usize) -> String {
    format!("node-{n:02}")
}

fn namespace_name(n: usize) -> String {
    format!("churn-{n}")
}

const ROLES: [&str; 2] = ["frontend", "backend"];

/// A pod as the churn knows it.
#[derive(Clone)]
struct PodState {
    namespace: usize,
    name: String,
    node: usize,
    address: Ipv4Addr,
    app: usize,
    role: usize,
    uid: String,
    /// Kept as it is during the churn: the pod whose identity a relabelled pod must get.
    reference: bool,
    /// A change of it is on its way to the kernel.
    busy: bool,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, PodState>,
    /// The address of the reference pod of (namespace, app, role).
    references: BTreeMap<(usize, usize, usize), Ipv4Addr>,
    next_address: u32,
    next_pod: u64,
}

impl State {
    fn fresh_address(&mut self) -> Ipv4Addr {
        self.next_address += 1;
        Ipv4Addr::from(u32::from(FIRST_POD_ADDRESS) + self.next_address)
    }
}

/// The simulated cluster: its shape, the pods, and the agent's node (whose pods get
/// cgroups).
#[derive(Clone)]
pub struct Population {
    shape: Shape,
    this_node: usize,
    cgroup_mount: PathBuf,
    base: String,
    state: Arc<Mutex<State>>,
}

/// What a change is, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Create,
    Delete,
    Relabel,
    Readdress,
}

/// What the kernel holds once a change is there.
#[derive(Clone, Copy)]
enum Expect {
    Present(IpAddr),
    Absent(IpAddr),
    /// The old address gone, the new one there.
    Moved {
        old: IpAddr,
        new: IpAddr,
    },
    /// The address has the identity of the reference pod's address.
    SameIdentity {
        address: IpAddr,
        reference: IpAddr,
    },
}

impl Expect {
    fn addresses(&self) -> Vec<IpAddr> {
        match *self {
            Expect::Present(a) | Expect::Absent(a) => vec![a],
            Expect::Moved { old, new } => vec![old, new],
            Expect::SameIdentity { address, reference } => vec![address, reference],
        }
    }

    fn met(&self, identities: &[Option<u32>]) -> bool {
        match self {
            Expect::Present(_) => identities[0].is_some(),
            Expect::Absent(_) => identities[0].is_none(),
            Expect::Moved { .. } => identities[0].is_none() && identities[1].is_some(),
            Expect::SameIdentity { .. } => {
                identities[0].is_some() && identities[0] == identities[1]
            }
        }
    }
}

/// A change written (or being written) and not yet seen in the kernel.
struct Pending {
    pod: String,
    kind: ChangeKind,
    this_node: bool,
    sent: Instant,
    expect: Expect,
}

/// The changes' times to the kernel.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<(ChangeKind, bool, Duration)>,
    pub issued: usize,
    pub unseen: usize,
    pub failed: usize,
}

impl Latencies {
    /// Sorted samples by kind of change and node (this one or another), then all of them.
    pub fn groups(&self) -> Vec<(String, Vec<Duration>)> {
        let mut groups: BTreeMap<(ChangeKind, bool), Vec<Duration>> = BTreeMap::new();
        for &(kind, this_node, d) in &self.samples {
            groups.entry((kind, this_node)).or_default().push(d);
        }
        let mut rows: Vec<(String, Vec<Duration>)> = groups
            .into_iter()
            .map(|((kind, this_node), mut samples)| {
                samples.sort();
                let node = if this_node {
                    "this node"
                } else {
                    "other nodes"
                };
                (format!("{kind:?}, pod on {node}"), samples)
            })
            .collect();
        rows.push(("every change".into(), self.all()));
        rows
    }

    pub fn all(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.samples.iter().map(|s| s.2).collect();
        all.sort();
        all
    }
}

/// The `q` quantile of sorted samples (zero without any).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A small deterministic generator (xorshift64*): the same run every time.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

impl Population {
    pub fn new(shape: &Shape, this_node: &str, base: &str) -> anyhow::Result<Population> {
        let this_node = (0..shape.nodes)
            .find(|&n| node_name(n) == this_node)
            .context("the agent's node is not one of the simulated nodes")?;
        Ok(Population {
            shape: *shape,
            this_node,
            cgroup_mount: stagewall::datapath::host::cgroup2_mount()?,
            base: base.to_string(),
            state: Arc::default(),
        })
    }

    /// The namespaces (with their default ServiceAccount, which pod admission needs) and
    /// the NetworkPolicies: in each namespace, policy k lets app-k be reached on port 80
    /// by the namespace's frontends and by app-(k+1) pods of any namespace.
    pub fn create_namespaces_and_policies(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let mut policies = String::new();
        for ns in 0..self.shape.namespaces {
            cluster.create_namespace(&namespace_name(ns))?;
            for k in 0..self.shape.policies_per_namespace() {
                let peer = (k + 1) % self.shape.apps;
                policies.push_str(&format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: app-{k}, namespace: {}}}\nspec:\n  podSelector: {{matchLabels: {{app: app-{k}}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{role: frontend}}}}\n    - namespaceSelector: {{}}\n      podSelector: {{matchLabels: {{app: app-{peer}}}}}\n    ports: [{{protocol: TCP, port: 80}}]\n",
                    namespace_name(ns)
                ));
            }
        }
        cluster.kubectl_stdin(&["apply", "-f", "-"], &policies)?;
        Ok(())
    }

    /// The Node objects, Ready with an InternalIP, as their kubelets would register them.
    pub async fn create_nodes(self, client: Client) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client);
        for n in 0..self.shape.nodes {
            let name = node_name(n);
            let node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            }))?;
            nodes.create(&PostParams::default(), &node).await?;
            let address = if n == self.this_node {
                stagewall_tests::HUB_GATEWAY.to_string()
            } else {
                format!("10.255.{}.{}", n / 250, n % 250 + 1)
            };
            let status = json!({"status": {
                "addresses": [{"type": "InternalIP", "address": address}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
        Ok(())
    }

    /// Creates the pods, spread over nodes, namespaces and labels; the first pod of each
    /// namespace, app and role is that label set's reference.
    pub async fn fill(self, client: Client) -> anyhow::Result<()> {
        let mut rng = Rng(0x5eed);
        let pods: Vec<PodState> = {
            let mut state = self.state.lock().unwrap();
            (0..self.shape.pods)
                .map(|i| {
                    let namespace = i % self.shape.namespaces;
                    let app = (i / self.shape.namespaces) % self.shape.apps;
                    let role = (i / (self.shape.namespaces * self.shape.apps)) % 2;
                    let reference = !state.references.contains_key(&(namespace, app, role));
                    let pod = self.new_pod(
                        &mut state,
                        namespace,
                        app,
                        role,
                        rng.below(self.shape.nodes),
                    );
                    if reference {
                        state.references.insert((namespace, app, role), pod.address);
                    }
                    PodState { reference, ..pod }
                })
                .collect()
        };
        let created: Vec<PodState> = futures_util::stream::iter(pods)
            .map(|pod| {
                let (population, client) = (self.clone(), client.clone());
                async move {
                    let uid = population.create(&client, &pod).await?;
                    population.report_running(&client, &pod).await?;
                    Ok::<_, anyhow::Error>(PodState { uid, ..pod })
                }
            })
            .buffer_unordered(FILL_CONCURRENCY)
            .try_collect()
            .await?;
        let mut state = self.state.lock().unwrap();
        for pod in created {
            state.pods.insert(key(&pod), pod);
        }
        Ok(())
    }

    fn new_pod(
        &self,
        state: &mut State,
        namespace: usize,
        app: usize,
        role: usize,
        node: usize,
    ) -> PodState {
        state.next_pod += 1;
        PodState {
            namespace,
            name: format!("pod-{}", state.next_pod),
            node,
            address: state.fresh_address(),
            app,
            role,
            uid: String::new(),
            reference: false,
            busy: false,
        }
    }

    fn pods(&self, client: &Client, pod: &PodState) -> Api<Pod> {
        Api::namespaced(client.clone(), &namespace_name(pod.namespace))
    }

    /// Creates the Pod object bound to its node; a pod of this node gets the cgroup
    /// kubelet would make. Gives its UID.
    async fn create(&self, client: &Client, pod: &PodState) -> anyhow::Result<String> {
        let object = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "labels": {"app": format!("app-{}", pod.app), "role": ROLES[pod.role]}},
            "spec": {"nodeName": node_name(pod.node), "containers": [
                {"name": "main", "image": "probe:1", "ports": [{"name": "http", "containerPort": 80}]}
            ]},
        }))?;
        let created = self
            .pods(client, pod)
            .create(&PostParams::default(), &object)
            .await?;
        let uid = created.metadata.uid.context("the API server gave no UID")?;
        if pod.node == self.this_node {
            fs::create_dir_all(self.cgroup_of(&uid))?;
        }
        Ok(uid)
    }

    fn cgroup_of(&self, uid: &str) -> PathBuf {
        stagewall::datapath::host::cgroup_dir(&self.cgroup_mount, &pod_cgroup(&self.base, uid))
    }

    /// Reports the pod Running and Ready with its address, as kubelet does.
    async fn report_running(&self, client: &Client, pod: &PodState) -> anyhow::Result<()> {
        let ip = pod.address.to_string();
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
        }});
        self.pods(client, pod)
            .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Waits until every pod's address is in the kernel.
    pub fn wait_all_in_kernel(
        &self,
        maps: &Maps,
        within: Duration,
        log: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let addresses: Vec<IpAddr> = self
            .state
            .lock()
            .unwrap()
            .pods
            .values()
            .map(|p| p.address.into())
            .collect();
        let started = Instant::now();
        loop {
            let missing = maps
                .identities(&addresses)
                .iter()
                .filter(|i| i.is_none())
                .count();
            if missing == 0 {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "{missing} pods not in the kernel after {within:?}\n{}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Changes pods at `rate` per second for `period`, and times each change until the
    /// kernel has it (read on this thread while the runtime writes the changes).
    pub fn churn(
        &self,
        runtime: &tokio::runtime::Runtime,
        client: &Client,
        maps: &Maps,
        rate: u32,
        period: Duration,
    ) -> anyhow::Result<Latencies> {
        let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
        let latencies = Arc::new(Mutex::new(Latencies::default()));
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (population, client) = (self.clone(), client.clone());
            let (pending, latencies, writing) =
                (pending.clone(), latencies.clone(), writing.clone());
            runtime.spawn(async move {
                let result = population
                    .write_changes(client, rate, period, pending, latencies)
                    .await;
                writing.store(false, Ordering::SeqCst);
                result
            })
        };
        // Reads the kernel until the writes are done and every change is seen (or late).
        let mut drained_since: Option<Instant> = None;
        loop {
            let checks: Vec<(usize, Expect)> = pending
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, p)| (i, p.expect))
                .collect();
            let addresses: Vec<IpAddr> = checks.iter().flat_map(|(_, e)| e.addresses()).collect();
            let identities = maps.identities(&addresses);
            let seen_at = Instant::now();
            let mut met = BTreeSet::new();
            let mut offset = 0;
            for (i, expect) in &checks {
                let n = expect.addresses().len();
                if expect.met(&identities[offset..offset + n]) {
                    met.insert(*i);
                }
                offset += n;
            }
            if !met.is_empty() {
                let mut pending = pending.lock().unwrap();
                let mut latencies = latencies.lock().unwrap();
                let mut state = self.state.lock().unwrap();
                // Indices only grow while unlocked (pushes go to the end).
                for i in met.into_iter().rev() {
                    let p = pending.remove(i);
                    latencies
                        .samples
                        .push((p.kind, p.this_node, seen_at - p.sent));
                    if let Some(pod) = state.pods.get_mut(&p.pod) {
                        pod.busy = false;
                    }
                }
            }
            if !writing.load(Ordering::SeqCst) {
                let since = *drained_since.get_or_insert_with(Instant::now);
                let left = pending.lock().unwrap().len();
                if left == 0 || since.elapsed() > DRAIN_WITHIN {
                    latencies.lock().unwrap().unseen = left;
                    break;
                }
            }
            std::thread::sleep(POLL_EVERY);
        }
        runtime.block_on(writer)??;
        let latencies = std::mem::take(&mut *latencies.lock().unwrap());
        Ok(latencies)
    }

    /// The writer's side of the churn: one change every 1/rate s, each on a task of its
    /// own (a slow write does not hold up the next).
    async fn write_changes(
        self,
        client: Client,
        rate: u32,
        period: Duration,
        pending: Arc<Mutex<Vec<Pending>>>,
        latencies: Arc<Mutex<Latencies>>,
    ) -> anyhow::Result<()> {
        let mut rng = Rng(0xc0ffee);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let ends = tokio::time::Instant::now() + period;
        let mut tasks = tokio::task::JoinSet::new();
        while tokio::time::Instant::now() < ends {
            tick.tick().await;
            let Some(change) = self.pick(&mut rng) else {
                continue;
            };
            latencies.lock().unwrap().issued += 1;
            let (population, client, pending) = (self.clone(), client.clone(), pending.clone());
            tasks.spawn(async move { population.write(&client, change, &pending).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done? {
                eprintln!("a pod change failed: {e:#}");
                latencies.lock().unwrap().failed += 1;
            }
        }
        Ok(())
    }

    /// The next change: 30% new pods, 30% deletions, 20% relabels, 20% new addresses, on
    /// pods whose last change the kernel already has.
    fn pick(&self, rng: &mut Rng) -> Option<Change> {
        let mut state = self.state.lock().unwrap();
        let roll = rng.below(10);
        if roll < 3 {
            let (namespace, app, role, node) = (
                rng.below(self.shape.namespaces),
                rng.below(self.shape.apps),
                rng.below(2),
                rng.below(self.shape.nodes),
            );
            let pod = PodState {
                busy: true,
                ..self.new_pod(&mut state, namespace, app, role, node)
            };
            state.pods.insert(key(&pod), pod.clone());
            return Some(Change::Create(pod));
        }
        let free: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, p)| !p.reference && !p.busy)
            .map(|(k, _)| k.clone())
            .collect();
        let chosen = free.get(rng.below(free.len()))?.clone();
        if roll < 6 {
            let pod = state.pods.remove(&chosen).expect("chosen from the pods");
            return Some(Change::Delete(pod));
        }
        let apps = self.shape.apps;
        let other_app = rng.below(apps.saturating_sub(1));
        let new_address = state.fresh_address();
        let before = state.pods[&chosen].clone();
        let after = if roll < 8 && apps > 1 {
            // Another app than its own, whose reference pod it must then resemble.
            let app = (before.app + 1 + other_app) % apps;
            let reference = *state
                .references
                .get(&(before.namespace, app, before.role))?;
            Change::Relabel(
                PodState {
                    app,
                    ..before.clone()
                },
                reference,
            )
        } else {
            Change::Readdress(
                before.clone(),
                PodState {
                    address: new_address,
                    ..before.clone()
                },
            )
        };
        let pod = state.pods.get_mut(&chosen).expect("chosen from the pods");
        *pod = match &after {
            Change::Relabel(p, _) | Change::Readdress(_, p) => p.clone(),
            Change::Create(_) | Change::Delete(_) => unreachable!("made above"),
        };
        pod.busy = true;
        Some(after)
    }

    /// Writes one change to the API server, registering what the kernel is to show before
    /// the write that makes it (which none of these shows before that write).
    async fn write(
        &self,
        client: &Client,
        change: Change,
        pending: &Mutex<Vec<Pending>>,
    ) -> anyhow::Result<()> {
        let register = |pod: &PodState, kind, expect| {
            pending.lock().unwrap().push(Pending {
                pod: key(pod),
                kind,
                this_node: pod.node == self.this_node,
                sent: Instant::now(),
                expect,
            });
        };
        match change {
            Change::Create(pod) => {
                let uid = self.create(client, &pod).await?;
                if let Some(p) = self.state.lock().unwrap().pods.get_mut(&key(&pod)) {
                    p.uid = uid;
                }
                register(
                    &pod,
                    ChangeKind::Create,
                    Expect::Present(pod.address.into()),
                );
                self.report_running(client, &pod).await?;
            }
            Change::Delete(pod) => {
                register(&pod, ChangeKind::Delete, Expect::Absent(pod.address.into()));
                // At once, as kubelet confirms a deletion once the containers are gone.
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                self.pods(client, &pod).delete(&pod.name, &params).await?;
                if pod.node == self.this_node {
                    // Empty: kubelet would remove it once the containers are gone.
                    let _ = fs::remove_dir(self.cgroup_of(&pod.uid));
                }
            }
            Change::Relabel(pod, reference) => {
                register(
                    &pod,
                    ChangeKind::Relabel,
                    Expect::SameIdentity {
                        address: pod.address.into(),
                        reference: reference.into(),
                    },
                );
                let labels = json!({"metadata": {"labels": {"app": format!("app-{}", pod.app)}}});
                self.pods(client, &pod)
                    .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&labels))
                    .await?;
            }
            Change::Readdress(before, pod) => {
                register(
                    &pod,
                    ChangeKind::Readdress,
                    Expect::Moved {
                        old: before.address.into(),
                        new: pod.address.into(),
                    },
                );
                self.report_running(client, &pod).await?;
            }
        }
        Ok(())
    }
}

/// One change of the churn.
enum Change {
    Create(PodState),
    Delete(PodState),
    /// The pod with its new labels, and the address of the reference pod that has them.
    Relabel(PodState, Ipv4Addr),
    /// The pod before and after.
    Readdress(PodState, PodState),
}

fn key(pod: &PodState) -> String {
    format!("{}/{}", namespace_name(pod.namespace), pod.name)
}
