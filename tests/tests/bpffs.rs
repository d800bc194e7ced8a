//! The bpffs the agent mounts, where the host has none, is root's alone: with bpffs's
//! default root (1777) any local user could look up the pins or add entries beside them.
//!
//! The test runs itself again under `unshare --mount` (a private mount namespace for the
//! whole process: the agent reads /proc/self/mountinfo, which a thread's own namespace
//! would not change), unmounts the host's bpffs there (the host keeps it: propagation is
//! private), and calls the agent's `ensure_bpffs`, so the mount looked at is the one the
//! agent made.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use stagewall_tests::privileged;

const TEST: &str = "the_bpffs_the_agent_mounts_is_root_only";
/// Set in the copy of the test that runs in the private mount namespace.
const INSIDE: &str = "STAGEWALL_TEST_BPFFS_INSIDE";
const BPFFS: &str = "/sys/fs/bpf";

#[test]
fn the_bpffs_the_agent_mounts_is_root_only() {
    if std::env::var_os(INSIDE).is_some() {
        return mount_and_check();
    }
    if !privileged() {
        return;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .output()
        .expect("running unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("mounted bpffs mode"), "the check ran: {text}");
}

/// In the private mount namespace: the agent mounts bpffs where there is none.
fn mount_and_check() {
    // Covering it would not do: the agent reads mountinfo, which still lists a bpffs
    // hidden below another mount.
    while bpffs_mounted() {
        let status = Command::new("umount").arg(BPFFS).status().unwrap();
        assert!(
            status.success(),
            "unmounting {BPFFS} in the private namespace"
        );
    }
    stagewall::datapath::host::ensure_bpffs().expect("the agent mounts bpffs");
    assert!(bpffs_mounted(), "the agent mounted bpffs at {BPFFS}");
    let mode = std::fs::metadata(BPFFS).unwrap().permissions().mode();
    println!("mounted bpffs mode {mode:o}");
    // The kernel keeps the sticky bit on bpffs's root whatever the options say.
    assert_eq!(mode & 0o777, 0o700, "{BPFFS} is {mode:o}");
}

fn bpffs_mounted() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .any(|l| l.contains(&format!(" {BPFFS} ")) && l.contains(" - bpf "))
}
