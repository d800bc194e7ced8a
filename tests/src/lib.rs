//! The test bed: network namespaces joined by a bridge, one per workload, processes placed
//! in per-workload cgroups, and the real agent running against them.
//!
//! Layout: a hub namespace holds a bridge and the host side of every workload's veth (so
//! TC programs attach there and nothing touches the host's own network); each workload
//! namespace has `eth0` with 198.18.0.N/24 (RFC 2544 benchmark range) and fd00:5747::N/64,
//! and an on-link default route so extra test addresses on the bridge are reachable.
//! Everything is named after the test process's pid and removed on drop, even when a test
//! fails; stale leftovers of killed runs are removed on start.

pub mod apiserver;
pub mod demo;
pub mod raw;

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Kernel state tests run one at a time, whatever the test runner's threads.
static KERNEL: Mutex<()> = Mutex::new(());

/// Returns false (after saying why) when privileged tests cannot run here. With CI=true a
/// test that cannot run fails instead: CI must never pass by skipping.
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

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args).map(|_| ())
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
    children: Vec<Child>,
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

/// Removes namespaces and cgroups of earlier test runs whose process is gone.
fn remove_stale(cgroup_root: &Path) {
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

/// The bpffs mount; each test bed pins below it in a directory of its own.
const BPFFS: &str = "/sys/fs/bpf";

fn remove_cgroup_tree(dir: &Path) {
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

    /// A command that will run inside `node`'s network namespace and cgroup.
    pub fn command(
        &self,
        node: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        let node = self.node(node);
        in_netns_and_cgroup(&node.netns, Some(&node.cgroup), program)
    }

    /// Starts a long-running program in `node` (killed when the test bed is dropped).
    pub fn spawn(&mut self, node: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = self.command(node, program)?;
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        self.children
            .push(cmd.spawn().with_context(|| format!("starting {program}"))?);
        Ok(())
    }

    /// Starts the probe's echo servers in `node` and waits until they listen.
    pub fn serve(&mut self, node: &str, tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
        let join = |p: &[u16]| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = self.command(node, probe_bin())?;
        cmd.args(["serve", "--tcp", &join(tcp), "--udp", &join(udp)]);
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting probe server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        self.children.push(child);
        if line.trim() != "ready" {
            bail!("probe server in {node} did not start: {line:?}");
        }
        Ok(())
    }

    /// Runs a probe from `node` and returns what it printed.
    pub fn probe_output(&self, node: &str, args: &[&str]) -> String {
        let mut cmd = self.command(node, probe_bin()).expect("probe command");
        let out = cmd.args(args).output().expect("running probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a probe from `node` and returns its outcome.
    pub fn probe(&self, node: &str, args: &[&str]) -> Outcome {
        Outcome::parse(&self.probe_output(node, args))
    }

    pub fn tcp(&self, from: &str, to: IpAddr, port: u16) -> Outcome {
        self.probe(from, &["tcp", &to.to_string(), &port.to_string(), "1000"])
    }

    pub fn udp(&self, from: &str, to: IpAddr, port: u16, count: u32) -> Outcome {
        self.probe(
            from,
            &[
                "udp",
                &to.to_string(),
                &port.to_string(),
                "1000",
                &count.to_string(),
            ],
        )
    }

    /// ping from a node (one echo request, 1 s to answer).
    pub fn ping(&self, from: &str, to: IpAddr) -> bool {
        let mut cmd = self.command(from, "ping").expect("ping command");
        cmd.args(["-c", "1", "-W", "1", &to.to_string()]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().expect("running ping (iputils-ping)").success()
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

    /// Starts the agent on the test's policy directory in the hub namespace (so it sees
    /// the host-side interfaces) and waits until it reports ready.
    pub fn start_agent(&self, extra_args: &[&str]) -> anyhow::Result<Agent> {
        self.start_agent_on(&self.dir, extra_args)
    }

    /// The body of an HTTP GET to `addr` from the hub namespace (where the agent runs).
    pub fn hub_get(&self, addr: &str, path: &str) -> Option<String> {
        http_get_in(&self.hub, addr, path).map(body)
    }

    /// `stagewall uninstall` of this test bed's pins: every program detached.
    pub fn uninstall(&self) -> anyhow::Result<String> {
        let out = Command::new(agent_bin())
            .arg("uninstall")
            .arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.control_socket)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("stagewall uninstall: {text}");
        }
        Ok(text)
    }

    /// A command that runs in the hub namespace (where the agent and its HTTP endpoint
    /// are), in no workload's cgroup.
    pub fn hub_command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        in_netns_and_cgroup(&self.hub, None, program)
    }

    pub fn start_agent_on(&self, policies: &Path, extra_args: &[&str]) -> anyhow::Result<Agent> {
        let source = [OsStr::new("--policies"), policies.as_os_str()];
        self.start_agent_from(&source, extra_args)
    }

    /// Starts the agent on a Kubernetes API server (`--kubernetes --kubeconfig`).
    pub fn start_agent_kubernetes(
        &self,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let source = [
            OsStr::new("--kubernetes"),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        self.start_agent_from(&source, extra_args)
    }

    fn start_agent_from(&self, source: &[&OsStr], extra_args: &[&str]) -> anyhow::Result<Agent> {
        let mut cmd = in_netns_and_cgroup(&self.hub, None, agent_bin())?;
        cmd.arg("run")
            .args(source)
            .arg("--control-socket")
            .arg(&self.control_socket)
            .arg("--bpffs-dir")
            .arg(&self.bpffs)
            .arg("--flow-records")
            .arg(&self.flow_records)
            .args(extra_args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting stagewall")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let g = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                g.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let mut agent = Agent {
            child: Some(child),
            lines,
            log,
            reader: Some(reader),
            hub: self.hub.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if agent
                .http_get("/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(agent);
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "stagewall exited with {status} before it was ready:\n{}",
                    agent.log()
                );
            }
            if Instant::now() > deadline {
                bail!("stagewall not ready after 20 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// A command whose process enters `netns` (and `cgroup`, if given) before it runs.
/// setns(CLONE_NEWNET) only: unlike `ip netns exec`, /sys stays as it is, so the cgroup2
/// mount and bpffs remain visible to the agent.
fn in_netns_and_cgroup(
    netns: &str,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> anyhow::Result<Command> {
    let ns =
        fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("netns {netns}"))?;
    let procs = match cgroup {
        Some(dir) => Some(
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .with_context(|| format!("cgroup {}", dir.display()))?,
        ),
        None => None,
    };
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // Writing "0" moves the writing process itself into the cgroup.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn sibling_bin(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps, the workspace's binaries (the demo
    // among them) in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    dir.join(name)
}

pub fn probe_bin() -> PathBuf {
    std::env::var_os("STAGEWALL_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_bin("stagewall-probe"))
}

/// The agent binary: STAGEWALL_BIN, else the one cargo built next to the tests.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("STAGEWALL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_bin("stagewall"));
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --workspace --bins`, as `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// ok, eperm, timeout, refused or error:<kind>.
    pub word: String,
    pub millis: u64,
    pub body: String,
}

impl Outcome {
    fn parse(out: &str) -> Outcome {
        let (first, body) = out.split_once('\n').unwrap_or((out, ""));
        let mut parts = first.split_whitespace();
        Outcome {
            word: parts.next().unwrap_or("no-output").to_string(),
            millis: parts
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(u64::MAX),
            body: body.to_string(),
        }
    }

    pub fn is(&self, word: &str) -> bool {
        self.word == word
    }
}

/// The running agent; stopped (SIGTERM) or killed on drop.
pub struct Agent {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    hub: String,
}

/// The body of an HTTP response.
fn body(response: String) -> String {
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => response,
    }
}

/// An HTTP GET from inside a namespace; the whole response (status line, headers, body).
fn http_get_in(netns: &str, addr: &str, path: &str) -> Option<String> {
    let mut cmd = in_netns_and_cgroup(netns, None, probe_bin()).ok()?;
    let out = cmd.args(["get", addr, path, "5000"]).output().ok()?;
    let o = Outcome::parse(&String::from_utf8_lossy(&out.stdout));
    o.is("ok").then_some(o.body)
}

impl Agent {
    fn http_get(&self, path: &str) -> Option<String> {
        http_get_in(&self.hub, "127.0.0.1:9742", path)
    }

    /// The body of a GET to the agent's HTTP endpoint.
    pub fn get(&self, path: &str) -> Option<String> {
        self.http_get(path).map(body)
    }

    /// The agent's process id (for its memory use).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The agent's resident memory, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The agent's /metrics text.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics").expect("fetching /metrics")
    }

    /// /metrics and the events printed, taken when no event arrived in between (the agent
    /// counts an event just before it prints it), so the two can be compared exactly.
    pub fn settled_metrics_and_events(&self) -> (String, Vec<serde_json::Value>) {
        loop {
            let before = self.lines.lock().unwrap().len();
            let metrics = self.metrics();
            std::thread::sleep(Duration::from_millis(100));
            let events = self.events();
            if events.len() == before {
                return (metrics, events);
            }
        }
    }

    /// Violation events printed so far, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON event line: {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits until at least `n` events arrived (events cross a ring buffer and a pipe).
    pub fn wait_events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.lines.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.events()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: the agent dies without a word, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// SIGTERM, then waits for a clean exit and the last output.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("stagewall did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if !status.success() {
            bail!("stagewall exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sums the samples of a metric whose labels contain every `label="value"` pair given.
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
