//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager (and kube-proxy when a test asks), built from their Go modules
//! at one pinned release by `cargo xtask cluster-build` (tests/cluster/) into
//! `target/cluster/bin`, started in the test bed's hub namespace, which stands for the
//! node (the API server listens on its addresses and advertises the node's, 198.18.0.1;
//! nothing outside the test bed reaches them), and killed when the `Cluster` is dropped,
//! or when the test thread that started them dies (a killed test run leaves none behind).
//! A real kubelet for it is tests/src/node.rs.
//!
//! The API server runs as a cluster's does: RBAC authorization, service-account tokens
//! signed with a key made at start, a serving certificate it generates itself. The tests
//! talk to it with kubectl as an administrator (a static token in group system:masters);
//! the agent gets a kubeconfig made from a real ServiceAccount token bound to the
//! ClusterRole that `deploy/kubernetes/rbac.yaml` ships, so the permissions the manifests
//! give are exactly the ones the agent runs with.

use std::{
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::Testbed;

/// etcd's client and peer ports and the API server's port, inside the hub namespace (a
/// fresh network namespace: nothing else listens there).
const ETCD_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const APISERVER_PORT: u16 = 6443;
/// kube-proxy's health and metrics ports, in the hub namespace too.
const KUBE_PROXY_HEALTHZ: &str = "127.0.0.1:10256";
const KUBE_PROXY_METRICS: &str = "127.0.0.1:10249";

/// Where the API server allocates ClusterIPs.
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
/// And IPv6 ones (the API server is dual-stack; IPv4 is its primary family, so a Service
/// is IPv6 only when it asks).
pub const SERVICE_RANGE_V6: &str = "fd00:96::/108";
/// The test bed's pod addresses (IPv4), as kube-proxy's `--cluster-cidr`.
pub const POD_RANGE: &str = "198.18.0.0/24";

/// kube-controller-manager's controllers the tests run (no node lifecycle or pod garbage
/// collection: the test's pods have no kubelet reporting for their nodes).
/// With a kubelet node: the DaemonSet controller, and the publisher of the cluster's CA
/// (`kube-root-ca.crt`, which every pod's service-account volume mounts).
const CONTROLLERS: &str = "serviceaccount-controller,serviceaccount-token-controller,namespace-controller,endpointslice-controller,endpointslice-mirroring-controller,garbage-collector-controller,daemonset-controller,root-ca-certificate-publisher-controller";

/// How long the control plane may take to become ready (etcd, then the API server's
/// post-start hooks: RBAC bootstrap roles, priority classes, ...).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Where `cargo xtask cluster-build` puts the binaries.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .join("target/cluster/bin")
}

/// prometheus-operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule), which
/// `cargo xtask cluster-build` takes from the operator's Go module into
/// target/cluster/crds/.
pub fn monitoring_crds() -> Vec<PathBuf> {
    // xtask's monitoring_crd_dir().
    let dir = bin_dir().with_file_name("crds");
    let mut crds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    crds.sort();
    crds
}

/// The workspace's deploy/kubernetes directory (the manifests the tests apply).
pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .join("deploy/kubernetes")
}

/// Are the control plane's binaries built? Says what is missing otherwise.
pub fn built() -> Result<(), String> {
    let missing: Vec<&str> = ["etcd", "kube-apiserver", "kubectl"]
        .into_iter()
        .filter(|b| !bin_dir().join(b).is_file())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} missing in {} (run `cargo xtask cluster-build`)",
            missing.join(", "),
            bin_dir().display()
        ))
    }
}

/// With CI=true a real-cluster test that cannot run fails, saying why; elsewhere it is
/// skipped with the reason printed. True when the binaries are there.
pub fn built_or_fail_in_ci() -> bool {
    match built() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the real-cluster tests cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// A pod the test runs as kubelet would: a Pod object on `node`, a test bed node as its
/// sandbox.
pub struct PodSpec<'a> {
    /// The test bed node that is the pod's network namespace and cgroup.
    pub bed_node: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The Kubernetes node it is scheduled to (`spec.nodeName`).
    pub node: &'a str,
    /// Labels as a YAML flow mapping, e.g. `{app: client}`.
    pub labels: &'a str,
    /// The container's ports as a YAML flow sequence, e.g. `[{name: http, containerPort: 80}]`.
    pub ports: &'a str,
}

/// The cgroup kubelet (systemd driver) makes for a BestEffort pod, below `base`.
pub fn pod_cgroup(base: &str, uid: &str) -> String {
    format!(
        "{base}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    )
}

pub struct Cluster {
    /// Scratch directory: etcd's data, keys, certificates, kubeconfigs, logs.
    pub dir: PathBuf,
    /// The hub namespace everything runs in.
    netns: String,
    children: Vec<(&'static str, Child)>,
    /// The administrator's kubeconfig (kubectl in the tests).
    pub admin: PathBuf,
}

impl Cluster {
    /// Starts etcd and kube-apiserver in `bed`'s hub namespace and waits until the API
    /// server is ready.
    pub fn start(bed: &Testbed) -> anyhow::Result<Cluster> {
        built().map_err(anyhow::Error::msg)?;
        let dir = bed.dir.join("cluster");
        fs::create_dir_all(dir.join("certs"))?;
        // The address the API server advertises and clients connect to.
        bed.give_hub_gateway()?;
        let mut cluster = Cluster {
            admin: dir.join("admin.kubeconfig"),
            dir: dir.clone(),
            netns: bed.hub.clone(),
            children: Vec::new(),
        };
        let etcd_url = format!("http://127.0.0.1:{ETCD_PORT}");
        let peer_url = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        cluster.spawn(
            "etcd",
            bed,
            &[
                "--name",
                "test",
                "--data-dir",
                &path(&dir.join("etcd")),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("test={peer_url}"),
            ],
        )?;
        // The key that signs and checks service-account tokens.
        let sa_key = dir.join("service-account.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out", &path(&sa_key), "2048"])
            .output()
            .context("openssl")?;
        if !out.status.success() {
            bail!("openssl genrsa: {}", String::from_utf8_lossy(&out.stderr));
        }
        let token = random_token()?;
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )?;
        cluster.spawn(
            "kube-apiserver",
            bed,
            &[
                "--etcd-servers",
                &etcd_url,
                // All addresses of the hub namespace (nothing outside the test bed
                // reaches it): kubectl and the agent use the node's address, pods reach
                // it through the `kubernetes` Service, whose endpoint is the advertised
                // address (the lease reconciler writes it).
                "--bind-address",
                "0.0.0.0",
                "--advertise-address",
                crate::bed::HUB_GATEWAY,
                "--secure-port",
                &APISERVER_PORT.to_string(),
                "--cert-dir",
                &path(&dir.join("certs")),
                "--service-cluster-ip-range",
                &format!("{SERVICE_RANGE},{SERVICE_RANGE_V6}"),
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--service-account-key-file",
                &path(&sa_key),
                "--service-account-signing-key-file",
                &path(&sa_key),
                "--authorization-mode",
                "RBAC",
                "--token-auth-file",
                &path(&dir.join("tokens.csv")),
                // Logs and exec through the kubelet at its address (node names do not
                // resolve in the test bed).
                "--kubelet-preferred-address-types",
                "InternalIP",
            ],
        )?;
        let started = Instant::now();
        // The serving certificate the API server generated: the CA every client trusts.
        let ca = dir.join("certs/apiserver.crt");
        loop {
            if ca.is_file() {
                cluster.write_kubeconfig(&cluster.admin, "admin", &token)?;
                if cluster.kubectl(&["get", "--raw", "/readyz"]).is_ok() {
                    break;
                }
            }
            let mut exited = None;
            for (name, child) in &mut cluster.children {
                if let Some(status) = child.try_wait()? {
                    exited = Some((*name, status));
                }
            }
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status})\n{}", cluster.log(name));
            }
            if started.elapsed() > READY_WITHIN {
                bail!(
                    "the API server was not ready within {READY_WITHIN:?}\n{}",
                    cluster.log("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // The controllers the tests need: service accounts (a namespace's "default", which
        // pod admission requires) and their tokens, namespaces (deletion), EndpointSlices
        // for Services, and the garbage collector.
        cluster.spawn(
            "kube-controller-manager",
            bed,
            &[
                "--kubeconfig",
                &path(&cluster.admin),
                "--bind-address",
                "127.0.0.1",
                "--leader-elect=false",
                "--service-account-private-key-file",
                &path(&sa_key),
                "--root-ca-file",
                &path(&ca),
                "--controllers",
                CONTROLLERS,
            ],
        )?;
        println!("control plane ready in {:?}", started.elapsed());
        Ok(cluster)
    }

    /// Starts kube-scheduler (once): pods without a nodeName, and the DaemonSet's, which
    /// the DaemonSet controller leaves to it.
    pub fn start_scheduler(&mut self, bed: &Testbed) -> anyhow::Result<()> {
        if self.children.iter().any(|(n, _)| *n == "kube-scheduler") {
            return Ok(());
        }
        let admin = path(&self.admin);
        self.spawn(
            "kube-scheduler",
            bed,
            &[
                "--kubeconfig",
                &admin,
                "--bind-address",
                "127.0.0.1",
                "--leader-elect=false",
            ],
        )
    }

    fn spawn(&mut self, name: &'static str, bed: &Testbed, args: &[&str]) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = bed.hub_command(bin_dir().join(name))?;
        // SAFETY: prctl is async-signal-safe; it only sets this child's death signal.
        unsafe {
            cmd.pre_exec(|| {
                // Killed with the thread that started it, also when the test process is
                // killed (SIGKILL skips Drop).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// The last lines of a component's log.
    pub fn log(&self, name: &str) -> String {
        log_tail(&self.dir, name)
    }

    /// Writes a kubeconfig for `user` with a bearer `token`, trusting the API server's
    /// own certificate.
    pub fn write_kubeconfig(&self, file: &Path, user: &str, token: &str) -> anyhow::Result<()> {
        let ca = path(&self.dir.join("certs/apiserver.crt"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:{APISERVER_PORT}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n",
            crate::bed::HUB_GATEWAY
        );
        fs::write(file, config)?;
        Ok(())
    }

    /// Creates a namespace and waits for its "default" ServiceAccount (made by the
    /// controller manager), which pod admission requires.
    pub fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        self.kubectl(&["create", "namespace", name])?;
        let started = Instant::now();
        while self
            .kubectl(&["get", "serviceaccount", "default", "--namespace", name])
            .is_err()
        {
            if started.elapsed() > READY_WITHIN {
                bail!(
                    "no default ServiceAccount in {name} after {READY_WITHIN:?}\n{}",
                    self.log("kube-controller-manager")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Acts as kubelet for `pod`: creates its Pod object, and for a pod of `local_node`
    /// moves the test bed node's cgroup to where kubelet would put it (named after the UID
    /// the API server gave); then reports its address through the status subresource, as
    /// kubelet does once the sandbox is up. Gives the UID.
    pub fn run_pod(
        &self,
        bed: &mut Testbed,
        local_node: &str,
        base: &str,
        pod: &PodSpec,
    ) -> anyhow::Result<String> {
        let PodSpec {
            bed_node,
            namespace,
            name,
            node,
            labels,
            ports,
        } = pod;
        self.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\n  namespace: \"{namespace}\"\n  labels: {labels}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: probe:1\n    ports: {ports}\n"
            ),
        )?;
        let get = |path: &str| {
            self.kubectl(&[
                "get",
                "pod",
                name,
                "--namespace",
                namespace,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ])
        };
        let uid = get(".metadata.uid")?;
        let qos = get(".status.qosClass")?;
        if qos != "BestEffort" {
            bail!("{namespace}/{name}: QoS class {qos}, not the BestEffort the test expects");
        }
        if node == &local_node {
            bed.move_cgroup(bed_node, &pod_cgroup(base, &uid))?;
        }
        let ip = bed.node(bed_node).v4;
        // Ready, as kubelet reports once the containers run: the EndpointSlice controller
        // makes only ready pods a Service's serving endpoints.
        let ready =
            r#"[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]"#;
        self.patch_pod_status(
            namespace,
            name,
            &format!(
                r#"{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":{ready}}}"#
            ),
        )?;
        Ok(uid)
    }

    /// Merges `status` (JSON) into the pod's status, through the status subresource as
    /// kubelet writes it.
    fn patch_pod_status(&self, namespace: &str, name: &str, status: &str) -> anyhow::Result<()> {
        self.kubectl(&[
            "patch",
            "pod",
            name,
            "--namespace",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{status}}}"#),
        ])?;
        Ok(())
    }

    /// Runs the bed node `name` as the pod `ml/name` with these labels on `node` (see
    /// `run_pod`); panics if it cannot.
    pub fn run_bed_pod(&self, bed: &mut Testbed, base: &str, name: &str, node: &str, labels: &str) {
        let pod = PodSpec {
            bed_node: name,
            namespace: "ml",
            name,
            node,
            labels,
            ports: "[]",
        };
        self.run_pod(bed, "node-a", base, &pod)
            .unwrap_or_else(|e| panic!("running pod {name}: {e:#}"));
    }

    /// The Events (events.k8s.io) of `namespace`, one a line: `REASON KIND/NAME: NOTE`.
    pub fn events(&self, namespace: &str) -> String {
        self.kubectl(&[
            "get",
            "events.events.k8s.io",
            "--namespace",
            namespace,
            "-o",
            "jsonpath={range .items[*]}{.reason} {.regarding.kind}/{.regarding.name}: {.note}{\"\\n\"}{end}",
        ])
        .unwrap_or_default()
    }

    /// Reports the pod `namespace/name` (run by `run_pod` from the bed node `bed_node`)
    /// with the bed node's IPv6 address too, as kubelet does for a dual-stack pod: the
    /// EndpointSlice controller then gives IPv6 Services their endpoints.
    pub fn report_dual_stack(
        &self,
        bed: &Testbed,
        bed_node: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let node = bed.node(bed_node);
        self.patch_pod_status(
            namespace,
            name,
            &format!(
                r#"{{"podIPs":[{{"ip":"{}"}},{{"ip":"{}"}}]}}"#,
                node.v4, node.v6
            ),
        )
    }

    /// Creates the Node object `name` with `address` as its InternalIP (a kubelet would
    /// register it). The EndpointSlice controller skips pods whose node does not exist, and
    /// kube-proxy takes its node's address from it.
    pub fn create_node(&self, name: &str, address: &str) -> anyhow::Result<()> {
        self.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"),
        )?;
        let status = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{address}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])?;
        Ok(())
    }

    /// Runs the real kube-proxy (nftables mode) for `node` in the hub namespace, which
    /// becomes that node's network: `Testbed::route_services_through_hub` routes the pods'
    /// Service traffic there, and the Node object is created with the hub's address. Waits
    /// until kube-proxy answers on /healthz (200; it may still be syncing: tests wait for
    /// the Service itself to answer). Its rules
    /// are in the hub's own nftables (tables `ip kube-proxy` and `ip6 kube-proxy`), gone
    /// with the namespace; it is killed with the cluster. Its first sync logs "Failed to
    /// list existing sets ... no such file or directory" once per family: it looks for
    /// stale sets in a table it has not made yet; harmless.
    pub fn start_kube_proxy(&mut self, bed: &Testbed, node: &str) -> anyhow::Result<()> {
        bed.route_services_through_hub(SERVICE_RANGE)?;
        // A kubelet registered it already (Cluster::start_kubelet); else as a kubelet would.
        if self.kubectl(&["get", "node", node]).is_err() {
            self.create_node(node, crate::bed::HUB_GATEWAY)?;
        }
        self.spawn(
            "kube-proxy",
            bed,
            &[
                "--kubeconfig",
                &path(&self.admin),
                "--hostname-override",
                node,
                "--proxy-mode",
                "nftables",
                // Traffic from pods is the cluster's own and keeps its source (no
                // masquerading): the server's ingress policy must see the client.
                "--cluster-cidr",
                POD_RANGE,
                // 0: leave the conntrack sysctls alone (nf_conntrack_max is the host's, not
                // the namespace's).
                "--conntrack-max-per-core",
                "0",
                "--conntrack-tcp-timeout-established",
                "0",
                "--conntrack-tcp-timeout-close-wait",
                "0",
                "--healthz-bind-address",
                KUBE_PROXY_HEALTHZ,
                "--metrics-bind-address",
                KUBE_PROXY_METRICS,
            ],
        )?;
        let started = Instant::now();
        loop {
            let healthz = crate::probe::http_get_in(&self.netns, KUBE_PROXY_HEALTHZ, "/healthz");
            if healthz.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| *n == "kube-proxy")
                && let Some(status) = child.try_wait()?
            {
                bail!("kube-proxy exited ({status})\n{}", self.log("kube-proxy"));
            }
            if started.elapsed() > READY_WITHIN {
                bail!(
                    "kube-proxy not synced within {READY_WITHIN:?}\n{}",
                    self.log("kube-proxy")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("kube-proxy synced in {:?}", started.elapsed());
        Ok(())
    }

    /// The rules kube-proxy wrote (nftables mode), as `nft list table ip kube-proxy`.
    pub fn kube_proxy_rules(&self) -> anyhow::Result<String> {
        let out = crate::exec::in_netns_and_cgroup(&self.netns, None, "nft")?
            .args(["list", "table", "ip", "kube-proxy"])
            .output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl as the administrator; fails with kubectl's stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin, args, None)
    }

    /// kubectl as the administrator with `input` on stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        self.kubectl_as(&self.admin, args, Some(input))
    }

    /// kubectl with the credentials of `kubeconfig`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut cmd =
            crate::exec::in_netns_and_cgroup(&self.netns, None, bin_dir().join("kubectl"))?;
        // kubectl's discovery cache lives with this cluster, not in root's home, where every
        // test cluster at 127.0.0.1:6443 would share (and leave) one.
        cmd.arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs what the agent needs from deploy/kubernetes (its namespace, the
    /// ServiceAccount, ClusterRole and binding, stagewall's CRDs and the upstream
    /// ClusterNetworkPolicy CRD), and gives a kubeconfig with a token of that
    /// ServiceAccount (TokenRequest, as kubelet mounts one into the pod).
    pub fn agent_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        for manifest in ["namespace.yaml", "rbac.yaml", "crds.yaml"] {
            self.kubectl(&["apply", "-f", &path(&manifests().join(manifest))])?;
        }
        self.install_cluster_network_policy_crd()?;
        // CRDs serve once established.
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/pipelines.stagewall.io",
            "crd/workloads.stagewall.io",
        ])?;
        let token = self.kubectl(&[
            "create",
            "token",
            "stagewall",
            "--namespace",
            "stagewall-system",
            "--duration",
            "1h",
        ])?;
        let file = self.dir.join("agent.kubeconfig");
        self.write_kubeconfig(&file, "stagewall", token.trim())?;
        Ok(file)
    }
}

/// The upstream ClusterNetworkPolicy CRD's name (deploy/kubernetes/clusternetworkpolicies.crd.yaml).
pub const CLUSTER_NETWORK_POLICY_CRD: &str = "clusternetworkpolicies.policy.networking.k8s.io";

impl Cluster {
    /// Applies deploy/kubernetes/clusternetworkpolicies.crd.yaml and waits until the API
    /// server serves ClusterNetworkPolicies.
    pub fn install_cluster_network_policy_crd(&self) -> anyhow::Result<()> {
        let file = manifests().join("clusternetworkpolicies.crd.yaml");
        self.kubectl(&["apply", "-f", &path(&file)])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{CLUSTER_NETWORK_POLICY_CRD}"),
        ])?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The API server first, so it does not log etcd's going.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The last lines of `<dir>/<name>.log`, headed by the name: a component's log as test
/// failures show it.
pub(crate) fn log_tail(dir: &Path, name: &str) -> String {
    let text = fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {name} (last lines)\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

pub(crate) fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// 32 hex characters from the kernel's random source: the administrator's token.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
