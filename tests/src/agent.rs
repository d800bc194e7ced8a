//! The agent under test: `stagewall run` started in the hub namespace and waited for until
//! ready, its HTTP endpoint (/readyz, /metrics), its events and log, stopping and killing
//! it, and `stagewall uninstall`.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    Testbed,
    exec::{in_netns_and_cgroup, sibling_bin},
    probe::http_get_in,
};

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

/// The running agent; stopped (SIGTERM) or killed on drop.
pub struct Agent {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    hub: String,
}

/// The agent's arguments for Kubernetes mode with `kubeconfig`.
fn kubernetes_source(kubeconfig: &Path) -> [&OsStr; 3] {
    [
        OsStr::new("--kubernetes"),
        OsStr::new("--kubeconfig"),
        kubeconfig.as_os_str(),
    ]
}

/// Where an agent runs: its network namespace and its own files.
struct Place<'a> {
    netns: &'a str,
    bpffs: &'a Path,
    control_socket: &'a Path,
    flow_records: &'a Path,
    /// Whether the agent's stdout (its event log) is read; if not, its read end is closed
    /// at once, so every event printed fails (EPIPE).
    read_stdout: bool,
}

/// The body of an HTTP response.
fn body(response: String) -> String {
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => response,
    }
}

impl Testbed {
    /// Starts the agent on the test's policy directory in the hub namespace (so it sees
    /// the host-side interfaces) and waits until it reports ready.
    pub fn start_agent(&self, extra_args: &[&str]) -> anyhow::Result<Agent> {
        self.start_agent_on(&self.dir, extra_args)
    }

    pub fn start_agent_on(&self, policies: &Path, extra_args: &[&str]) -> anyhow::Result<Agent> {
        let source = [OsStr::new("--policies"), policies.as_os_str()];
        self.start_agent_from(&source, None, extra_args)
    }

    /// `start_agent` with nobody reading the event log on its stdout: the pipe's read end
    /// is closed, as when whatever read the agent's output went away.
    pub fn start_agent_stdout_closed(&self, extra_args: &[&str]) -> anyhow::Result<Agent> {
        let source = [OsStr::new("--policies"), self.dir.as_os_str()];
        let place = Place {
            read_stdout: false,
            ..self.place()
        };
        self.start_agent_at(&place, &source, None, extra_args)
    }

    /// Starts the agent on the bed's policy directory in `cgroup` (a directory of the
    /// cgroup2 tree), as a service of the host or a pod would be.
    pub fn start_agent_in(&self, cgroup: &Path, extra_args: &[&str]) -> anyhow::Result<Agent> {
        let source = [OsStr::new("--policies"), self.dir.as_os_str()];
        self.start_agent_from(&source, Some(cgroup), extra_args)
    }

    /// Starts the agent on a Kubernetes API server (`--kubernetes --kubeconfig`).
    pub fn start_agent_kubernetes(
        &self,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let source = kubernetes_source(kubeconfig);
        self.start_agent_from(&source, None, extra_args)
    }

    /// Starts the agent of a second Kubernetes node in that node's network namespace
    /// (`netns`), with pins, control socket and flow records of its own, named after it.
    pub fn start_agent_kubernetes_in(
        &self,
        netns: &str,
        name: &str,
        kubeconfig: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let source = kubernetes_source(kubeconfig);
        let place = Place {
            netns,
            bpffs: &self.bpffs.join(name),
            control_socket: &self.dir.join(format!("{name}.control.sock")),
            flow_records: &self.dir.join(format!("{name}.flow-records.json")),
            read_stdout: true,
        };
        self.start_agent_at(&place, &source, None, extra_args)
    }

    fn start_agent_from(
        &self,
        source: &[&OsStr],
        cgroup: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        self.start_agent_at(&self.place(), source, cgroup, extra_args)
    }

    /// The test bed's own agent: in the hub, with the bed's pins, socket and records.
    fn place(&self) -> Place<'_> {
        Place {
            netns: &self.hub,
            bpffs: &self.bpffs,
            control_socket: &self.control_socket,
            flow_records: &self.flow_records,
            read_stdout: true,
        }
    }

    fn start_agent_at(
        &self,
        place: &Place,
        source: &[&OsStr],
        cgroup: Option<&Path>,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let mut cmd = in_netns_and_cgroup(place.netns, cgroup, agent_bin())?;
        cmd.arg("run")
            .args(source)
            .arg("--control-socket")
            .arg(place.control_socket)
            .arg("--bpffs-dir")
            .arg(place.bpffs)
            .arg("--flow-records")
            .arg(place.flow_records)
            .args(extra_args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting stagewall")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let l = lines.clone();
        let reader = if place.read_stdout {
            Some(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    l.lock().unwrap().push(line);
                }
            }))
        } else {
            drop(stdout);
            None
        };
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
            reader,
            hub: place.netns.to_string(),
        };
        // Loading the programs runs the verifier, which on a busy 2-CPU machine takes a
        // while: ready within a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
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
                bail!("stagewall not ready after 60 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `stagewall check --kubernetes` from the hub as node-a's agent would read the cluster
    /// (pods' cgroups below `pods_cgroup_base`); fails the test unless it succeeds, and
    /// gives what it printed.
    pub fn check_kubernetes(&self, kubeconfig: &Path, pods_cgroup_base: &str) -> String {
        self.check_kubernetes_with(kubeconfig, pods_cgroup_base, &[])
    }

    /// `check_kubernetes` with more arguments (`--explain --from ... --to ... --port N`).
    pub fn check_kubernetes_with(
        &self,
        kubeconfig: &Path,
        pods_cgroup_base: &str,
        extra_args: &[&str],
    ) -> String {
        let out = self
            .hub_command(agent_bin())
            .expect("a command in the hub")
            .args(["check", "--kubernetes", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--node-name",
                "node-a",
                "--pods-cgroup-base",
                pods_cgroup_base,
            ])
            .args(extra_args)
            .output()
            .expect("running stagewall check");
        // What it printed, then what it warned of (objects left out).
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // An explanation of a denied connection exits 1 (docs/exit-codes.md): an answer,
        // not a failure; the verdict it printed says which.
        let answered = out.status.success()
            || (extra_args.contains(&"--explain") && out.status.code() == Some(1));
        assert!(answered, "{said}");
        said
    }

    /// The body of an HTTP GET to `addr` from the hub namespace (where the agent runs).
    pub fn hub_get(&self, addr: &str, path: &str) -> Option<String> {
        http_get_in(&self.hub, addr, path).map(body)
    }

    /// A control command (`quarantine`, `release`) to the agent of this test bed: whether
    /// it succeeded, and what it said.
    pub fn control(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(agent_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.control_socket)
            .output()
            .expect("running stagewall");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
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

    /// How the agent exited, if it did (None while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The agent's resident memory, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        crate::bench::status_kib(self.pid(), "VmRSS")
    }

    /// The agent's /metrics text.
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
            .unwrap_or_else(|| panic!("fetching /metrics failed; the agent's log:\n{}", self.log()))
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

/// Waits until `check` holds (a change went through the agent into the kernel), failing
/// with `log()` after 10 s; says how long it took.
pub fn until(what: &str, log: impl Fn() -> String, check: impl Fn() -> bool) -> Duration {
    until_within(what, Duration::from_secs(10), log, check)
}

/// `until` with its own limit, for what the agent does not control (a controller or
/// kube-proxy catching up on a loaded machine).
pub fn until_within(
    what: &str,
    within: Duration,
    log: impl Fn() -> String,
    check: impl Fn() -> bool,
) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < within,
            "{what}: not in force after {within:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}
