//! What tests leave on the host, and its removal: processes found by an argument (the
//! container runtime's shims, daemons nobody waits for), mounts below a directory, cgroups
//! in every hierarchy, network namespaces. Used by a test node's cleanup and by the test
//! bed's sweep of runs that were killed before they could clean up.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The cgroup v1 hierarchies' mounts (none on a cgroup2-only host).
pub(crate) fn cgroup_v1_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            let mount = before.split(' ').nth(4)?;
            (fstype == "cgroup").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// Every process in the cgroup `dir` and below.
pub(crate) fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// Processes with `arg` as one of their arguments.
pub(crate) fn pids_with_argument(arg: &str) -> Vec<i32> {
    pids_with_an_argument(|a| a == arg)
}

/// Processes one of whose arguments satisfies `matches`.
fn pids_with_an_argument(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|a| matches(&String::from_utf8_lossy(a)))
                .then_some(pid)
        })
        .collect()
}

/// The network namespaces named in /run/netns.
pub(crate) fn netns_names() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub(crate) fn unmount_below(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        if let Ok(target) = std::ffi::CString::new(m) {
            // SAFETY: a valid path; a lazy unmount touches nothing else.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Processes with an argument that is `dir` or a path below it.
pub(crate) fn pids_with_argument_below(dir: &Path) -> Vec<i32> {
    let dir = dir.to_string_lossy().into_owned();
    pids_with_an_argument(|a| a == dir || a.starts_with(&format!("{dir}/")))
}

/// Where a test node keeps the kernel settings as they were before its kubelet started.
const SYSCTLS_FILE: &str = "sysctls-before";

/// Writes `settings` (path, value) into `dir` for [`restore_sysctls_below`].
pub(crate) fn save_sysctls(dir: &Path, settings: &[(&str, String)]) -> std::io::Result<()> {
    let text: String = settings
        .iter()
        .map(|(path, value)| format!("{path} {}\n", value.trim()))
        .collect();
    fs::write(dir.join(SYSCTLS_FILE), text)
}

/// Restores the kernel settings that test nodes below `dir` saved, the last started first
/// (the first one saved the settings from before any kubelet).
pub(crate) fn restore_sysctls_below(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut saved: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path().join(SYSCTLS_FILE))
        .filter_map(|f| Some((fs::metadata(&f).ok()?.modified().ok()?, f)))
        .collect();
    saved.sort();
    for (_, file) in saved.iter().rev() {
        for line in fs::read_to_string(file).unwrap_or_default().lines() {
            if let Some((path, value)) = line.split_once(' ')
                && path.starts_with("/proc/sys/")
            {
                let _ = fs::write(path, value);
            }
        }
    }
}
