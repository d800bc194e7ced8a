//! Running commands: plain ones on the host (`ip`), and processes that enter a node's
//! network namespace and cgroup before they exec; where the workspace's binaries are.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::Testbed;

pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
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

pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args).map(|_| ())
}

impl Testbed {
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

    /// A command that runs in the hub namespace (where the agent and its HTTP endpoint
    /// are), in no workload's cgroup.
    pub fn hub_command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        in_netns_and_cgroup(&self.hub, None, program)
    }

    /// A command in the hub namespace (the node's network) and in `cgroup` (a directory
    /// of the cgroup2 tree).
    pub fn hub_command_in(
        &self,
        cgroup: &Path,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> anyhow::Result<Command> {
        in_netns_and_cgroup(&self.hub, Some(cgroup), program)
    }
}

/// A command whose process enters `netns` (and `cgroup`, if given) before it runs.
/// setns(CLONE_NEWNET) only: unlike `ip netns exec`, /sys stays as it is, so the cgroup2
/// mount and bpffs remain visible to the agent.
pub(crate) fn in_netns_and_cgroup(
    netns: &str,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> anyhow::Result<Command> {
    in_netns_path_and_cgroup(Path::new(&format!("/run/netns/{netns}")), cgroup, program)
}

/// As [`in_netns_and_cgroup`], with the network namespace as a path (a process's
/// `/proc/PID/ns/net`, for a real pod's sandbox).
pub(crate) fn in_netns_path_and_cgroup(
    netns: &Path,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> anyhow::Result<Command> {
    let ns = fs::File::open(netns).with_context(|| format!("netns {}", netns.display()))?;
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

pub(crate) fn sibling_bin(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps, the workspace's binaries (the demo
    // among them) in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    dir.join(name)
}
