//! The test bed: network namespaces joined by a bridge, one per workload, processes placed
//! in per-workload cgroups, and the real agent running against them.
//!
//! Layout: a hub namespace holds a bridge and the host side of every workload's veth (so
//! TC programs attach there and nothing touches the host's own network); each workload
//! namespace has `eth0` with 198.18.0.N/24 (RFC 2544 benchmark range) and fd00:5747::N/64,
//! and an on-link default route so extra test addresses on the bridge are reachable.
//! Everything is named after the test process's pid and removed on drop, even when a test
//! fails; stale leftovers of killed runs are removed on start.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::exec::{in_netns_and_cgroup, ip, run};

/// Kernel state tests run one at a time, whatever the test runner's threads.
static KERNEL: Mutex<()> = Mutex::new(());

/// Returns false (after saying why) when privileged tests cannot run here. With CI=true a
/// test that cannot run fails instead: CI must never pass by skipping.
/// Where an agent pinning under `bpffs` keeps its links (one per program and target): the
/// directory of this build's map layout.
pub fn pinned_links(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("v{}/links", stagewall_common::MAP_LAYOUT_VERSION))
}

pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok();
    let why = match (root, ip) {
        (true, true) => return true,
        (false, _) => "not running as root",
        (true, false) => "the `ip` command (iproute2) is missing",
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("privileged test cannot run in CI: {why}");
    }
    eprintln!("SKIPPED: privileged test needs root and iproute2: {why}");
    false
}

/// A workload of the test bed: its namespace, veth, addresses and cgroup.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    /// Host side of the veth, in the hub namespace.
    pub host_if: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    pub cgroup: PathBuf,
    /// The cgroup as policies name it: its path below the cgroup2 mount.
    pub cgroup_path: String,
}

pub struct Testbed {
    prefix: String,
    pub hub: String,
    pub nodes: Vec<Node>,
    cgroup_base: PathBuf,
    pub(crate) children: Vec<Child>,
    pub dir: PathBuf,
    /// The agent's control socket (quarantine, release).
    pub control_socket: PathBuf,
    /// Where the agent pins its maps and links (removed with the test bed: that detaches
    /// every program the test's agents attached).
    pub bpffs: PathBuf,
    /// The agents' flow records file (outside the policy directory the agent watches).
    pub flow_records: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and cgroups of earlier test runs whose process is gone; for one that
/// was killed while it ran a real node (tests/src/node.rs), also what outlives the test
/// process: the container runtime's shims and containers, the mounts below its directory,
/// its cgroups in the v1 hierarchies and its pods' network namespaces.
fn remove_stale(cgroup_root: &Path) {
    let mut killed_runs = false;
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // stagewall-test-<pid>, and its control socket and flow records beside it.
            let Some(pid) = name
                .strip_prefix("stagewall-test-")
                .and_then(|p| p.split('.').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            if !e.path().is_dir() {
                let _ = fs::remove_file(e.path());
                continue;
            }
            killed_runs = true;
            for pid in crate::sweep::pids_with_argument_below(&e.path()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            crate::sweep::unmount_below(&e.path());
            crate::sweep::restore_sysctls_below(&e.path());
            for mount in crate::sweep::cgroup_v1_mounts() {
                remove_cgroup_tree(&mount.join(&name));
            }
            let _ = fs::remove_dir_all(e.path());
        }
    }
    if killed_runs {
        // Pods' namespaces of a killed node: none of their processes is left.
        for netns in crate::sweep::netns_names() {
            let empty = run("ip", &["netns", "pids", &netns]).is_ok_and(|p| p.trim().is_empty());
            if netns.starts_with("cni-") && empty {
                let _ = ip(&["netns", "del", &netns]);
            }
        }
    }
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if let Some(pid) = name
            .strip_prefix("swt")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse().ok())
            && !pid_alive(pid)
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for (dir, remove) in [
        (cgroup_root, remove_cgroup_tree as fn(&Path)),
        (Path::new(BPFFS), |p: &Path| {
            let _ = fs::remove_dir_all(p);
        }),
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("stagewall-test-")
                .and_then(|p| p.parse().ok())
                && !pid_alive(pid)
            {
                remove(&e.path());
            }
        }
    }
}

/// The hub's own address on the bridge, when it routes Services (nodes are .10 and up).
pub const HUB_GATEWAY: &str = "198.18.0.1";

/// The bpffs mount; each test bed pins below it in a directory of its own.
const BPFFS: &str = "/sys/fs/bpf";

pub(crate) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a test bed is laid out: names, address numbers and interface names.
pub struct Layout {
    /// Prefix of namespace names.
    pub prefix: String,
    /// Directory below the cgroup2 mount that holds the workloads' cgroups.
    pub cgroup_dir: String,
    pub nodes: Vec<NodeSpec>,
}

pub struct NodeSpec {
    pub name: String,
    /// Last number of the node's addresses: 198.18.0.N and fd00:5747::N (the same digits).
    pub n: u8,
    /// Name of the host side of its veth (at most 15 characters).
    pub host_if: String,
}

impl Layout {
    /// Names private to this test process, numbered from .10 upwards.
    pub fn for_test(names: &[&str]) -> Layout {
        let pid = std::process::id();
        Layout {
            prefix: format!("swt{pid}"),
            cgroup_dir: format!("stagewall-test-{pid}"),
            nodes: names
                .iter()
                .enumerate()
                .map(|(i, name)| NodeSpec {
                    name: name.to_string(),
                    n: i as u8 + 10,
                    host_if: format!("sw{}{}", pid % 100_000, i + 10),
                })
                .collect(),
        }
    }
}

impl Testbed {
    /// A hub namespace and one workload namespace per name, named for this test process.
    pub fn new(names: &[&str]) -> anyhow::Result<Testbed> {
        Testbed::with_layout(Layout::for_test(names))
    }

    pub fn with_layout(layout: Layout) -> anyhow::Result<Testbed> {
        let serial = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
        let cgroup_root = stagewall::datapath::host::cgroup2_mount()?;
        remove_stale(&cgroup_root);
        let cgroup_base = cgroup_root.join(&layout.cgroup_dir);
        let dir = std::env::temp_dir().join(&layout.cgroup_dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut bed = Testbed {
            hub: format!("{}-hub", layout.prefix),
            prefix: layout.prefix,
            nodes: Vec::new(),
            cgroup_base,
            children: Vec::new(),
            control_socket: std::env::temp_dir()
                .join(format!("{}.control.sock", layout.cgroup_dir)),
            bpffs: Path::new(BPFFS).join(&layout.cgroup_dir),
            flow_records: std::env::temp_dir()
                .join(format!("{}.flow-records.json", layout.cgroup_dir)),
            dir,
            _serial: serial,
        };
        // From here on, Drop cleans up whatever was made.
        let _ = fs::remove_file(&bed.flow_records);
        if bed.cgroup_base.exists() {
            // Left over by a killed run of the same layout (the demo's fixed names).
            let _ = fs::remove_dir_all(&bed.bpffs);
            remove_cgroup_tree(&bed.cgroup_base);
            let _ = ip(&["netns", "del", &bed.hub]);
            for spec in &layout.nodes {
                let _ = ip(&["netns", "del", &format!("{}-{}", bed.prefix, spec.name)]);
            }
        }
        fs::create_dir_all(&bed.cgroup_base)?;
        ip(&["netns", "add", &bed.hub])?;
        ip(&["-n", &bed.hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &bed.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bed.hub, "link", "set", "br0", "up"])?;
        // Where br_netfilter is loaded (Docker hosts), bridged frames pass iptables and
        // its header checks; in the hub (its setting is per namespace) the bridge forwards
        // frames as they are, so the kernel programs see what a test sent.
        let status = in_netns_and_cgroup(&bed.hub, None, "sh")?
            .args(["-c", "for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables; do [ -e $f ] && echo 0 > $f; done; true"])
            .status()?;
        if !status.success() {
            bail!("turning off bridge netfilter in {}", bed.hub);
        }
        for spec in &layout.nodes {
            bed.add_node(spec, &cgroup_root)?;
        }
        Ok(bed)
    }

    fn add_node(&mut self, spec: &NodeSpec, cgroup_root: &Path) -> anyhow::Result<()> {
        let (name, n, host_if) = (&spec.name, spec.n, &spec.host_if);
        let netns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &netns])?;
        ip(&[
            "-n", &self.hub, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&[
            "-n", &self.hub, "link", "set", host_if, "master", "br0", "up",
        ])?;
        let v4 = format!("198.18.0.{n}");
        let v6 = format!("fd00:5747::{n}");
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "dev", "eth0"])?;
        ip(&["-n", &netns, "-6", "route", "add", "default", "dev", "eth0"])?;
        let cgroup = self.cgroup_base.join(name);
        fs::create_dir_all(&cgroup)?;
        let cgroup_path = format!("/{}", cgroup.strip_prefix(cgroup_root)?.display());
        self.nodes.push(Node {
            name: name.to_string(),
            netns,
            host_if: host_if.to_string(),
            v4: v4.parse()?,
            v6: v6.parse()?,
            cgroup,
            cgroup_path,
        });
        Ok(())
    }

    /// The test bed's cgroup, below the cgroup2 mount (`/stagewall-test-<pid>`): every
    /// node's cgroup is below it, and so are the pod cgroups a Kubernetes test names after
    /// kubelet's (the agent's --pods-cgroup-base, or a --guard-cgroup above them).
    pub fn cgroup_base_path(&self) -> String {
        let root = stagewall::datapath::host::cgroup2_mount().expect("the cgroup2 mount");
        format!(
            "/{}",
            self.cgroup_base
                .strip_prefix(root)
                .expect("the test bed's cgroups are below the cgroup2 mount")
                .display()
        )
    }

    /// Makes the hub a Kubernetes node's network for Services (kube-proxy runs there; see
    /// Cluster::start_kube_proxy): pods send `service_range` to the hub, and the hub's
    /// netfilter sees the pods' bridged replies. Call it after the nodes are added.
    ///
    /// - br0 gets [`HUB_GATEWAY`] (nodes are numbered from .10), and each node a route for
    ///   the service range via it. Their on-link default route would otherwise ARP for the
    ///   ClusterIP itself on the bridge, and nobody answers for it.
    /// - Bridge netfilter on, in the hub only (it is per namespace; `with_layout` turns it
    ///   off for the other tests). The server answers the client's own address, which is
    ///   on its link: the reply is bridged from veth to veth and never routed through the
    ///   hub. Only br_netfilter hands bridged IPv4 to the hub's netfilter hooks, where
    ///   conntrack turns its source back into the ClusterIP; without it the client gets a
    ///   reply from the pod address it never called (TCP: a reset, the connect times out).
    ///   The alternative, kube-proxy masquerading (`--masquerade-all`), would make the hub
    ///   the source the server sees and hide the client from its ingress policy.
    /// - IPv4 forwarding on. The client's packet for the ClusterIP is addressed to br0's
    ///   MAC; br_netfilter DNATs it in the bridge's prerouting and, its new destination
    ///   being on br0 itself, bridges it on to the server pod rather than routing it (the
    ///   hub's IpForwDatagrams stays 0, so it sends no ICMP redirects either). But it looks
    ///   that route up as a forwarded packet's: with forwarding off the packet is dropped
    ///   (seen on kernel 6.18: the ClusterIP then never answers).
    pub fn route_services_through_hub(&self, service_range: &str) -> anyhow::Result<()> {
        self.give_hub_gateway()?;
        // br_netfilter may be a module (built in on the machines this runs on).
        if !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            let loaded = Command::new("modprobe")
                .arg("br_netfilter")
                .status()
                .is_ok_and(|s| s.success());
            if !loaded {
                bail!(
                    "Services through kube-proxy need bridge netfilter: /proc/sys/net/bridge is missing and `modprobe br_netfilter` failed"
                );
            }
        }
        let script = [
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "/proc/sys/net/ipv4/ip_forward",
        ]
        .map(|f| format!("echo 1 > {f}"))
        .join(" && ");
        let out = in_netns_and_cgroup(&self.hub, None, "sh")?
            .args(["-c", &script])
            .output()?;
        if !out.status.success() {
            bail!(
                "hub sysctls for Services in {}: {}",
                self.hub,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for node in &self.nodes {
            ip(&[
                "-n",
                &node.netns,
                "route",
                "add",
                service_range,
                "via",
                HUB_GATEWAY,
            ])?;
        }
        // The hub's own connections to a ClusterIP (host-network pods: the agent's to the
        // `kubernetes` Service) need a route before kube-proxy's output DNAT sees them;
        // the hub has no default route.
        ip(&[
            "-n",
            &self.hub,
            "route",
            "replace",
            service_range,
            "dev",
            "br0",
        ])?;
        Ok(())
    }

    /// Makes the cgroup `name` below the test bed's (removed with the bed); gives its
    /// directory.
    pub fn make_cgroup(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.cgroup_base.join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Gives br0 [`HUB_GATEWAY`]: the hub's address on the nodes' link, which a
    /// Kubernetes node in the hub (kube-proxy, kubelet) has as its own. Idempotent.
    pub fn give_hub_gateway(&self) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.hub,
            "addr",
            "replace",
            &format!("{HUB_GATEWAY}/24"),
            "dev",
            "br0",
        ])
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Makes a node an outside peer: its IPv4 address becomes `addr` (say 203.0.113.5),
    /// reached on-link through the default route every node has.
    pub fn make_outside(&mut self, node: &str, addr: &str) -> anyhow::Result<()> {
        let n = self.node(node).clone();
        ip(&[
            "-n",
            &n.netns,
            "addr",
            "del",
            &format!("{}/24", n.v4),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &n.netns,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "eth0",
        ])?;
        // Removing the last IPv4 address flushed the device's IPv4 routes.
        ip(&["-n", &n.netns, "route", "add", "default", "dev", "eth0"])?;
        let node = self
            .nodes
            .iter_mut()
            .find(|x| x.name == node)
            .expect("node exists");
        node.v4 = addr.parse()?;
        Ok(())
    }

    /// Writes a policy file into the test's policy directory, atomically (a hidden
    /// temporary file renamed into place), as a careful operator or a ConfigMap update
    /// does: the agent never reads half a file.
    pub fn write_policy(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Creates the cgroup `cgroup_path` (below this test bed's cgroup directory) and runs
    /// the node's later commands in it: a workload that starts after the agent.
    pub fn move_cgroup(&mut self, node: &str, cgroup_path: &str) -> anyhow::Result<()> {
        let dir = stagewall::datapath::host::cgroup_dir(
            &stagewall::datapath::host::cgroup2_mount()?,
            cgroup_path,
        );
        if !dir.starts_with(&self.cgroup_base) {
            bail!("{} is outside the test bed's cgroups", dir.display());
        }
        fs::create_dir_all(&dir)?;
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .context("no such node")?;
        n.cgroup = dir;
        n.cgroup_path = cgroup_path.to_string();
        Ok(())
    }

    pub fn remove_policy(&self, name: &str) -> anyhow::Result<()> {
        Ok(fs::remove_file(self.dir.join(name))?)
    }

    /// The Workload document of a node enforced by cgroup, with TC on its host-side
    /// interface as the backstop for raw sockets.
    pub fn backstopped_workload_yaml(&self, node: &str, namespace: &str, labels: &str) -> String {
        let cgroup = format!("cgroup: {}", self.node(node).cgroup_path);
        self.workload_yaml(node, namespace, labels, false).replace(
            &cgroup,
            &format!("{cgroup}\n  interface: {}", self.node(node).host_if),
        )
    }

    /// The Workload document of a node, enforced by cgroup or by its host-side interface.
    pub fn workload_yaml(
        &self,
        node: &str,
        namespace: &str,
        labels: &str,
        by_interface: bool,
    ) -> String {
        let n = self.node(node);
        let attachment = if by_interface {
            format!("interface: {}", n.host_if)
        } else {
            format!("cgroup: {}", n.cgroup_path)
        };
        format!(
            "apiVersion: stagewall.io/v1alpha1\nkind: Workload\nmetadata:\n  name: {}\n  namespace: {namespace}\n  labels: {labels}\nspec:\n  {attachment}\n  addresses: [\"{}\", \"{}\"]\n---\n",
            n.name, n.v4, n.v6
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unpinning detaches: nothing of the test's agents stays attached.
        let _ = fs::remove_dir_all(&self.bpffs);
        for node in &self.nodes {
            let _ = ip(&["netns", "del", &node.netns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
        remove_cgroup_tree(&self.cgroup_base);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.control_socket);
        let _ = fs::remove_file(&self.flow_records);
    }
}
