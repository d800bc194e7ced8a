//! A real Kubernetes node for the tests: kubelet with containerd, runc and a CNI plugin,
//! built by `cargo xtask cluster-build` (tests/cluster/node/). Two kinds ([`NodeNetwork`]):
//!
//! - the test bed's hub namespace becomes the node (as for the control plane and
//!   kube-proxy): the CNI bridge plugin gives pods veths on the bed's bridge `br0` and
//!   addresses from 198.18.0.100-199 (the bed's own nodes use .10 up); the node's address
//!   is the hub's [`HUB_GATEWAY`] on br0;
//! - a second node in a namespace of its own, on br0 with its own address (198.18.0.N),
//!   whose pods the CNI ptp plugin routes (a host route per pod through its veth, as
//!   Calico does) from 198.19.N.0/24; the two nodes route each other's pods.
//!
//! Pods are real: kubelet creates their sandboxes and containers from images written
//! locally (there is no registry), runs their probes from the node's address and reports
//! their status.
//!
//! Cgroups: kubelet's cgroupfs driver below the test bed's cgroup (`--cgroup-root`), so a
//! pod of UID u lives in `<bed>/kubepods/<qos>/pod<u>` of the cgroup2 tree, where the agent
//! finds it. On a host with the hybrid cgroup layout (cgroup v1 controllers, cgroup2 at
//! /sys/fs/cgroup/unified) kubelet runs in cgroup v1 mode (`failCgroupV1: false`), and runc
//! places every container in the cgroup2 tree too, at the same path.
//!
//! Everything it made goes on drop, also what outlives kubelet and containerd: the shims
//! and containers, the mounts below its directory, the pods' network namespaces and the
//! cgroups in every hierarchy.

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    Outcome, Testbed,
    bed::{HUB_GATEWAY, remove_cgroup_tree},
    cluster::{Cluster, bin_dir, path},
    exec::{in_netns_and_cgroup, run},
    sweep::{self, cgroup_pids, cgroup_v1_mounts, netns_names, pids_with_argument},
};

/// The pod sandbox image (the probe binary's `pause`), as containerd is told to use it.
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:1";
/// The test pods' image: the probe binary as entrypoint (`args: [serve, --tcp, "80"]`).
pub const PROBE_IMAGE: &str = "docker.io/library/probe:1";

/// How long kubelet may take to register its Node and report it Ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The node's pod addresses, on the bed's bridge.
const POD_RANGE_START: &str = "198.18.0.100";
const POD_RANGE_END: &str = "198.18.0.199";

/// Where a node's network is (see the module's description).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeNetwork {
    /// The bed's hub namespace, pods bridged on br0.
    Hub,
    /// A namespace of its own with the address 198.18.0.`n` on br0, pods routed from
    /// 198.19.`n`.0/24.
    Routed { n: u8 },
}

pub struct KubeletNode {
    pub name: String,
    /// The node's network namespace (a name in /run/netns).
    pub netns: String,
    /// The node's address: kubelet's, its probes' source, the agent's.
    pub address: IpAddr,
    /// Its own namespace, made for it (deleted on drop); false for the bed's hub.
    own_netns: bool,
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    /// kubelet's --cgroup-root: the bed's cgroup, as a path below each hierarchy's mount.
    cgroup_root: String,
    /// Network namespaces (in /run/netns) that existed before containerd started: the
    /// ones it adds are its pods'.
    netns_before: BTreeSet<String>,
    /// Directories bind-mounted onto themselves as shared mounts (see `share`).
    shared: Vec<PathBuf>,
    /// What the host paths kubelet, containerd and CNI write outside their configured
    /// directories held before they started (see [`HOST_PATHS`]).
    host_paths_before: Vec<(PathBuf, Option<BTreeSet<String>>)>,
    /// The kernel settings kubelet sets for itself (see [`KUBELET_SYSCTLS`]) as they were
    /// before it started: restored on drop.
    sysctls_before: Vec<(&'static str, String)>,
}

/// What kubelet writes into the host's kernel settings at start (unless told to only
/// check them, which makes it refuse to start on a host that differs): the machine-wide
/// panic and overcommit behaviour, and the root user's key quotas.
const KUBELET_SYSCTLS: [&str; 6] = [
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/vm/panic_on_oom",
    "/proc/sys/kernel/keys/root_maxkeys",
    "/proc/sys/kernel/keys/root_maxbytes",
];

/// Host paths kubelet, containerd and the CNI plugins write to whatever they are told:
/// containerd's shim sockets and runc's state (/run/containerd), the CNI result cache,
/// kubelet's device-plugin directory and its pod and container log links. What a node
/// adds there is removed with it; what was there before stays.
const HOST_PATHS: [&str; 5] = [
    "/run/containerd",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
];

/// A directory's entries (None: no such directory).
fn entries(dir: &Path) -> Option<BTreeSet<String>> {
    fs::read_dir(dir).ok().map(|list| {
        list.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    })
}

impl Cluster {
    /// Starts containerd and kubelet for the node `name` in `bed`'s hub namespace, with the
    /// pause and probe images imported, and waits until the Node is Ready. Also starts the
    /// scheduler (pods without a nodeName, DaemonSets).
    pub fn start_kubelet(&mut self, bed: &Testbed, name: &str) -> anyhow::Result<KubeletNode> {
        self.start_kubelet_on(bed, name, NodeNetwork::Hub)
    }

    /// As [`Cluster::start_kubelet`], with the node's network as `network` says.
    pub fn start_kubelet_on(
        &mut self,
        bed: &Testbed,
        name: &str,
        network: NodeNetwork,
    ) -> anyhow::Result<KubeletNode> {
        let dir = bed.dir.join(format!("kubelet-{name}"));
        fs::create_dir_all(dir.join("cni"))?;
        let (netns, address, cgroup_root) = match network {
            NodeNetwork::Hub => (
                bed.hub.clone(),
                HUB_GATEWAY.parse()?,
                bed.cgroup_base_path(),
            ),
            NodeNetwork::Routed { n } => (
                format!("{}-{name}", bed.hub.trim_end_matches("-hub")),
                format!("198.18.0.{n}").parse()?,
                format!("{}/{name}", bed.cgroup_base_path()),
            ),
        };
        let mut node = KubeletNode {
            name: name.to_string(),
            netns,
            address,
            own_netns: network != NodeNetwork::Hub,
            dir: dir.clone(),
            children: Vec::new(),
            cgroup_root,
            netns_before: netns_names(),
            shared: Vec::new(),
            host_paths_before: HOST_PATHS
                .iter()
                .map(|p| (PathBuf::from(p), entries(Path::new(p))))
                .collect(),
            sysctls_before: KUBELET_SYSCTLS
                .iter()
                .filter_map(|p| Some((*p, fs::read_to_string(p).ok()?)))
                .collect(),
        };
        // Kept on disk too: a run killed before its cleanup gets them back from the sweep
        // of the next (tests/src/sweep.rs).
        sweep::save_sysctls(&dir, &node.sysctls_before)?;
        node.make_cgroup_root()?;
        bed.give_hub_gateway()?;
        if let NodeNetwork::Routed { n } = network {
            node.make_routed_network(bed, n)?;
        }

        let bin = bin_dir();
        let sock = dir.join("containerd.sock");
        fs::write(
            dir.join("containerd.toml"),
            containerd_config(&dir, &sock, &bin),
        )?;
        fs::write(dir.join("cni/10-pods.conflist"), cni_config(&dir, network))?;
        let mut containerd = in_netns_and_cgroup(&node.netns, None, bin.join("containerd"))?;
        containerd
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            // It starts its shims (containerd-shim-runc-v2) from PATH.
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        node.spawn("containerd", containerd)?;
        let started = Instant::now();
        while node.ctr(&["version"]).is_err() {
            node.exited()?;
            if started.elapsed() > READY_WITHIN {
                bail!(
                    "containerd not up within {READY_WITHIN:?}\n{}",
                    node.log("containerd")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let probe = crate::probe_bin();
        node.import_image(PAUSE_IMAGE, "/stagewall-probe pause", &probe)?;
        node.import_image(PROBE_IMAGE, "/stagewall-probe", &probe)?;

        fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(&dir, &sock, &node.cgroup_root, node.address),
        )?;
        let mut kubelet = in_netns_and_cgroup(&node.netns, None, bin.join("kubelet"))?;
        kubelet
            .arg("--config")
            .arg(dir.join("kubelet.yaml"))
            .arg("--kubeconfig")
            .arg(&self.admin)
            .arg("--root-dir")
            .arg(dir.join("kubelet"))
            .arg("--cert-dir")
            .arg(dir.join("kubelet/pki"))
            .arg("--hostname-override")
            .arg(name)
            .arg("--node-ip")
            .arg(node.address.to_string());
        node.spawn("kubelet", kubelet)?;
        loop {
            let ready = self.kubectl(&[
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            if ready.is_ok_and(|s| s == "True") {
                break;
            }
            node.exited()?;
            if started.elapsed() > READY_WITHIN {
                bail!(
                    "node {name} not Ready within {READY_WITHIN:?}\n{}",
                    node.log("kubelet")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // kubelet registers the Node with the not-ready taint; the node lifecycle
        // controller takes it off once the Node is Ready. That controller is not run: it
        // would mark the other tests' kubelet-less Nodes unreachable and evict their pods.
        let taint = self.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.taints}"])?;
        if taint.contains("node.kubernetes.io/not-ready") {
            self.kubectl(&[
                "taint",
                "node",
                name,
                "node.kubernetes.io/not-ready:NoSchedule-",
            ])?;
        }
        self.start_scheduler(bed)?;
        println!("kubelet node {name} Ready in {:?}", started.elapsed());
        Ok(node)
    }
}

impl KubeletNode {
    /// The second node's own namespace: a veth onto the bed's bridge with its address,
    /// forwarding on, routes to the hub node's pods (on the link) and from the hub to this
    /// node's pods (via this node).
    fn make_routed_network(&self, bed: &Testbed, n: u8) -> anyhow::Result<()> {
        let netns = self.netns.as_str();
        let uplink = format!("node{n}");
        run("ip", &["netns", "add", netns])?;
        run("ip", &["-n", netns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n", &bed.hub, "link", "add", &uplink, "type", "veth", "peer", "name", "eth0",
                "netns", netns,
            ],
        )?;
        run(
            "ip",
            &[
                "-n", &bed.hub, "link", "set", &uplink, "master", "br0", "up",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{}/24", self.address),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", netns, "link", "set", "eth0", "up"])?;
        run(
            "ip",
            &["-n", netns, "route", "add", "default", "via", HUB_GATEWAY],
        )?;
        run(
            "ip",
            &[
                "-n",
                &bed.hub,
                "route",
                "replace",
                &format!("198.19.{n}.0/24"),
                "via",
                &self.address.to_string(),
            ],
        )?;
        for ns in [netns, bed.hub.as_str()] {
            let out = in_netns_and_cgroup(ns, None, "sh")?
                .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
                .output()?;
            if !out.status.success() {
                bail!(
                    "ip_forward in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        // SAFETY: prctl is async-signal-safe; it only sets this child's death signal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Fails, with its log, if kubelet or containerd has exited.
    fn exited(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let name = *name;
                bail!("{name} exited ({status})\n{}", self.log(name));
            }
        }
        Ok(())
    }

    /// The last lines of kubelet's or containerd's log.
    pub fn log(&self, name: &str) -> String {
        crate::cluster::log_tail(&self.dir, name)
    }

    /// ctr on this node's containerd, in kubelet's (CRI's) namespace.
    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let sock = path(&self.dir.join("containerd.sock"));
        let mut all = vec!["--address", &sock, "--namespace", "k8s.io"];
        all.extend(args);
        run(&path(&bin_dir().join("ctr")), &all)
    }

    /// Writes an image of `binary` (stripped) and the shared libraries it loads, run as
    /// `entrypoint` (words split at spaces; the first is where the binary goes), and
    /// imports it as `name` into containerd, where kubelet finds it (`imagePullPolicy:
    /// Never` or `IfNotPresent`).
    pub fn import_image(&self, name: &str, entrypoint: &str, binary: &Path) -> anyhow::Result<()> {
        let file = binary.file_name().context("binary has a file name")?;
        let at = entrypoint
            .split_whitespace()
            .next()
            .context("an entrypoint")?;
        let stripped = self.dir.join(file);
        run(
            "strip",
            &["--strip-debug", "-o", &path(&stripped), &path(binary)],
        )?;
        let mut files = vec![format!("{}={at}", path(&stripped))];
        // `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the
        // loader's "/lib64/ld-linux-x86-64.so.2 (0x...)"; each at the same path inside.
        for lib in run("ldd", &[&path(binary)])?
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .collect::<BTreeSet<_>>()
        {
            files.push(format!("{lib}={lib}"));
        }
        let archive = self
            .dir
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let mut args = vec![
            "-o".to_string(),
            path(&archive),
            "-name".to_string(),
            name.to_string(),
            "-entrypoint".to_string(),
            entrypoint.to_string(),
        ];
        args.extend(files);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&path(&bin_dir().join("ociimage")), &args)?;
        self.import_archive(&archive)
    }

    /// Imports an OCI archive (one platform's, or a multi-arch index such as `cargo xtask
    /// image` writes: containerd unpacks this node's platform) under the names it carries.
    pub fn import_archive(&self, archive: &Path) -> anyhow::Result<()> {
        // --local: unpacked by ctr itself into the native snapshotter (the daemon's
        // transfer service unpacks only for the default snapshotter).
        self.ctr(&[
            "images",
            "import",
            "--local",
            "--snapshotter",
            "native",
            &path(archive),
        ])?;
        Ok(())
    }

    /// kubelet's cgroup root must exist in every hierarchy it uses: the cgroup2 tree (the
    /// bed's cgroup, there already) and, on a hybrid host, each cgroup v1 controller's
    /// (cpuset's needs its CPUs and memory nodes before anything can join it).
    fn make_cgroup_root(&self) -> anyhow::Result<()> {
        let cgroup2 = stagewall::datapath::host::cgroup2_mount()?;
        fs::create_dir_all(cgroup2.join(self.cgroup_root.trim_start_matches('/')))?;
        for mount in cgroup_v1_mounts() {
            // Level by level: a new cpuset cgroup has no CPUs or memory nodes until given
            // its parent's, and nothing can join (or be made below) it meanwhile.
            let mut dir = mount.clone();
            for part in self.cgroup_root.trim_start_matches('/').split('/') {
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                fs::create_dir(&dir).with_context(|| format!("{}", dir.display()))?;
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if let Ok(value) = fs::read_to_string(mount.join(file)) {
                        fs::write(dir.join(file), value.trim())
                            .with_context(|| format!("{}", dir.join(file).display()))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes `dir` a shared mount (bound onto itself), as systemd makes every mount of a
    /// real node: a hostPath with `mountPropagation: HostToContainer` must be on a shared
    /// or slave mount (containerd refuses the container otherwise), and this machine's
    /// mounts are private. Undone on drop.
    pub fn share(&mut self, dir: &Path) -> anyhow::Result<()> {
        let dir_s = path(dir);
        run("mount", &["--bind", &dir_s, &dir_s])?;
        self.shared.push(dir.to_path_buf());
        run("mount", &["--make-shared", &dir_s])?;
        Ok(())
    }

    /// The pod's cgroup in the cgroup2 tree (`<bed>/kubepods/<qos>/pod<uid>`), once kubelet
    /// has made it.
    pub fn pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        let root = stagewall::datapath::host::cgroup2_mount().ok()?;
        let kubepods = root
            .join(self.cgroup_root.trim_start_matches('/'))
            .join("kubepods");
        let name = format!("pod{uid}");
        [
            kubepods.join(&name),
            kubepods.join("burstable").join(&name),
            kubepods.join("besteffort").join(&name),
        ]
        .into_iter()
        .find(|d| d.is_dir())
    }

    /// A command that runs inside the pod with this UID: in its network namespace (the
    /// sandbox's, found through one of its processes) and its cgroup, so the agent's
    /// cgroup programs see it as the pod.
    pub fn pod_command(
        &self,
        uid: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        let cgroup = self
            .pod_cgroup(uid)
            .with_context(|| format!("no cgroup for pod {uid}"))?;
        let pid = cgroup_pids(&cgroup)
            .into_iter()
            .next()
            .with_context(|| format!("no process in {}", cgroup.display()))?;
        crate::exec::in_netns_path_and_cgroup(
            Path::new(&format!("/proc/{pid}/ns/net")),
            Some(&cgroup),
            program,
        )
    }
}

impl KubeletNode {
    /// Runs the probe binary inside the pod with this UID (see [`KubeletNode::pod_command`]).
    pub fn probe(&self, uid: &str, args: &[&str]) -> Outcome {
        let out = self
            .pod_command(uid, crate::probe_bin())
            .and_then(|mut cmd| Ok(cmd.args(args).output()?))
            .unwrap_or_else(|e| panic!("probe in pod {uid}: {e:#}"));
        Outcome::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// A TCP connection from the pod with this UID (1 s timeout).
    pub fn tcp(&self, uid: &str, to: IpAddr, port: u16) -> Outcome {
        self.probe(uid, &["tcp", &to.to_string(), &port.to_string(), "1000"])
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (setting, value) in &self.sysctls_before {
            let _ = fs::write(setting, value);
        }
        // The shims (daemons, not containerd's children) and the containers.
        let sock = path(&self.dir.join("containerd.sock"));
        for pid in pids_with_argument(&sock) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Ok(root) = stagewall::datapath::host::cgroup2_mount() {
            let kubepods = root
                .join(self.cgroup_root.trim_start_matches('/'))
                .join("kubepods");
            for pid in cgroup_pids(&kubepods) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        // Below the node's directory: kubelet's root (bind-mounted onto itself), the pods'
        // volumes, the sandboxes' /dev/shm and the containers' root filesystems.
        sweep::unmount_below(&self.dir);
        for dir in self.shared.iter().rev() {
            let _ = run("umount", &["--lazy", &path(dir)]);
        }
        for netns in netns_names().difference(&self.netns_before) {
            if netns.starts_with("cni-") {
                let _ = run("ip", &["netns", "del", netns]);
            }
        }
        if self.own_netns {
            // Its veth on the bed's bridge goes with it.
            let _ = run("ip", &["netns", "del", &self.netns]);
            if let Ok(root) = stagewall::datapath::host::cgroup2_mount() {
                remove_cgroup_tree(&root.join(self.cgroup_root.trim_start_matches('/')));
            }
        }
        for mount in cgroup_v1_mounts() {
            let dir = mount.join(self.cgroup_root.trim_start_matches('/'));
            remove_cgroup_tree(&dir);
            // A routed node's root is below the bed's, made here too: gone once empty.
            if self.own_netns
                && let Some(parent) = dir.parent()
            {
                let _ = fs::remove_dir(parent);
            }
        }
        for (dir, before) in &self.host_paths_before {
            match before {
                None => {
                    let _ = fs::remove_dir_all(dir);
                }
                Some(before) => {
                    for name in entries(dir).unwrap_or_default().difference(before) {
                        let path = dir.join(name);
                        if path.is_dir() && !path.is_symlink() {
                            let _ = fs::remove_dir_all(&path);
                        } else {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// containerd: its state below the node's directory, CRI with runc (cgroupfs driver) and
/// the CNI plugins from the build, the native snapshotter (a copy per container: no
/// overlayfs needed below the test directory), the pause image, and oom_score_adj kept at
/// containerd's own (the machines' containers lack CAP_SYS_RESOURCE, which lowering it
/// needs).
fn containerd_config(dir: &Path, sock: &Path, bin: &Path) -> String {
    let (dir, sock, bin) = (path(dir), path(sock), path(bin));
    format!(
        r#"version = 3
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"

[grpc]
  address = "{sock}"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = "native"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{bin}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{dir}/cni"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
"#
    )
}

/// The hub node: the CNI bridge plugin on the bed's bridge (made by the bed, addressed
/// with the node's [`HUB_GATEWAY`]), host-local addresses from the node's range. A routed
/// node: the ptp plugin (a veth per pod, a host route to it; the host side of each veth
/// is the pods' gateway) from its own /24.
fn cni_config(dir: &Path, network: NodeNetwork) -> String {
    let ipam = path(&dir.join("cni-ipam"));
    let main = match network {
        NodeNetwork::Hub => format!(
            r#"{{"type": "bridge", "bridge": "br0", "isGateway": false,
    "ipam": {{"type": "host-local", "dataDir": "{ipam}",
      "ranges": [[{{"subnet": "198.18.0.0/24", "rangeStart": "{POD_RANGE_START}",
                   "rangeEnd": "{POD_RANGE_END}", "gateway": "{HUB_GATEWAY}"}}]],
      "routes": [{{"dst": "0.0.0.0/0"}}]}}}}"#
        ),
        NodeNetwork::Routed { n } => format!(
            r#"{{"type": "ptp", "ipMasq": false,
    "ipam": {{"type": "host-local", "dataDir": "{ipam}",
      "ranges": [[{{"subnet": "198.19.{n}.0/24"}}]],
      "routes": [{{"dst": "0.0.0.0/0"}}]}}}}"#
        ),
    };
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "test", "plugins": [
  {main},
  {{"type": "loopback"}}]}}
"#
    )
}

/// kubelet: cgroupfs driver below the bed's cgroup (cgroup v1 allowed: the hybrid hosts),
/// serving on the node's address with anonymous access (the API server reaches it for
/// logs and exec), no image garbage collection or eviction (the images are imported once
/// and never pulled), cluster DNS at the Service range's .10.
fn kubelet_config(dir: &Path, sock: &Path, cgroup_root: &str, address: IpAddr) -> String {
    let (dir, sock) = (path(dir), path(sock));
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
address: {address}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{}}
volumePluginDir: {dir}/kubelet/volume-plugins
"#
    )
}
