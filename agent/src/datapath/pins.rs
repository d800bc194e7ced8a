//! What the agent keeps in bpffs so that enforcement outlives the process: the maps (the
//! policy in force, tracked flows, counters, queued events) and one link per program and
//! workload. While the agent is down (a crash, `kill -9`, an upgrade) the kernel programs
//! go on enforcing the last policy; a restarted agent reuses the maps, replaces the
//! programs inside the pinned links (an atomic swap, no moment without a program) and
//! reconciles the policy. `stagewall uninstall` removes it all.
//!
//! Layout: `DIR/v<MAP_LAYOUT_VERSION>/maps/<MAP>` and `DIR/v<N>/links/<target>-<program>`.
//! Maps pinned under another layout version are never opened: the agent attaches its own
//! programs beside the old ones (links of both run; each enforces a whole policy), then
//! removes the old layout's pins, which detaches its programs.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use stagewall_common::MAP_LAYOUT_VERSION;

use crate::datapath::{
    error::{DatapathError, PathAction},
    host::Target,
};

/// Where the agent pins unless `--bpffs-dir` says otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/stagewall";

/// Every map the agent pins (all of them): the map table of stagewall-common.
pub use stagewall_common::{MAPS as PINNED_MAPS, MapLayout};

/// The agent's pin directory for this build's map layout.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Pins {
        Pins {
            root: root.to_path_buf(),
            dir: root.join(format!("v{MAP_LAYOUT_VERSION}")),
        }
    }

    /// Creates the directories (on bpffs) and checks that maps pinned there have the
    /// layout this build expects; returns the directories of other layout versions.
    pub fn prepare(&self) -> Result<Vec<PathBuf>, DatapathError> {
        for sub in ["maps", "links", "node"] {
            let dir = self.dir.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(DatapathError::path(PathAction::Creating, dir))?;
        }
        for expected in PINNED_MAPS {
            let path = self.map(expected.name);
            if !path.exists() {
                continue;
            }
            let info = match MapInfo::from_pin(&path) {
                Ok(info) => info,
                Err(source) => return Err(DatapathError::PinnedMap { path, source }),
            };
            let found = MapLayout {
                name: expected.name,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            if found != expected {
                return Err(DatapathError::PinnedLayout {
                    path,
                    found,
                    expected,
                });
            }
        }
        let mut others = Vec::new();
        for entry in std::fs::read_dir(&self.root)
            .map_err(DatapathError::path(PathAction::Reading, &self.root))?
        {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path != self.dir && name.starts_with('v') && path.is_dir() {
                others.push(path);
            }
        }
        Ok(others)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// The pin of the link of `program` on `target`: cgroups by id, interfaces by index
    /// (names can change; both ids are unique while the target exists).
    pub fn link(&self, target: &Target, program: &str) -> PathBuf {
        let target = match target {
            Target::Cgroup { id, .. } => format!("cgroup-{id}"),
            Target::Interface { ifindex, .. } => format!("if-{ifindex}"),
        };
        self.dir.join("links").join(format!("{target}-{program}"))
    }

    /// The pin of the link of `program`, attached once for the whole node (not to a
    /// workload: `links()` does not list it).
    pub fn node_link(&self, program: &str) -> PathBuf {
        self.dir.join("node").join(program)
    }

    /// Every link pinned under this layout.
    pub fn links(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("links"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

/// Removes a pin directory and everything in it: links unpinned are detached, maps
/// unpinned are freed once no program uses them.
pub fn remove_all(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The pin directory held by one agent: an exclusive `flock` on the directory, released
/// when the agent exits however it exits (the kernel drops the lock with the descriptor).
/// A second agent on the same directory would write into the first one's maps, and
/// `uninstall` would detach a running agent's programs.
#[derive(Debug)]
pub struct PinLock(#[allow(dead_code)] OwnedFd);

/// Takes the pin directory `root` (created if missing) for this process; an error if
/// another process holds it.
pub fn lock(root: &Path) -> Result<PinLock, DatapathError> {
    std::fs::create_dir_all(root).map_err(DatapathError::path(PathAction::Creating, root))?;
    // Only root may read what the agent pins there.
    let _ = std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let dir = std::fs::File::open(root).map_err(DatapathError::path(PathAction::Opening, root))?;
    let fd = OwnedFd::from(dir);
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DatapathError::PinsLocked {
                path: root.to_path_buf(),
            });
        }
        return Err(DatapathError::path(PathAction::Opening, root)(e));
    }
    Ok(PinLock(fd))
}

/// What `uninstall` removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Uninstalled {
    /// Links removed (each detached a program).
    pub links: usize,
    /// Entries of the directory that are not the agent's and were left as they are.
    pub left: Vec<PathBuf>,
}

/// Is this entry of the pin directory one the agent makes: a layout (`v<N>`) or the
/// quarantined workloads (`quarantine-v<N>`)?
fn is_agents_own(name: &str) -> bool {
    let version = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix('v').is_some_and(version)
        || name.strip_prefix("quarantine-v").is_some_and(version)
}

/// `stagewall uninstall`: removes what the agent pinned below `root` (every layout, which
/// detaches every program it attached, and the quarantined workloads), and `root` itself
/// when nothing else is in it. Refuses while an agent holds `root`. Never removes what
/// the agent does not make: `--bpffs-dir` may name any directory.
pub fn uninstall(root: &Path) -> Result<Uninstalled, DatapathError> {
    let entries = match std::fs::read_dir(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Uninstalled {
                links: 0,
                left: Vec::new(),
            });
        }
        other => other.map_err(DatapathError::path(PathAction::Reading, root))?,
    };
    let _held = lock(root)?;
    let mut links = 0;
    let mut left = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_agents_own(&name) {
            left.push(path);
            continue;
        }
        if path.is_dir() {
            for sub in ["links", "node"] {
                links += std::fs::read_dir(path.join(sub)).map_or(0, |l| l.count());
            }
            remove_all(&path).map_err(DatapathError::path(PathAction::Removing, &path))?;
        } else {
            std::fs::remove_file(&path)
                .map_err(DatapathError::path(PathAction::Removing, &path))?;
        }
    }
    if left.is_empty() {
        // The lock is on this directory; removing it while held is fine on Linux.
        std::fs::remove_dir(root).map_err(DatapathError::path(PathAction::Removing, root))?;
    }
    Ok(Uninstalled { links, left })
}

/// `BPF_OBJ_GET`: opens a pinned object.
fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// The kernel checks that every byte after the command's last field is zero:
        /// implicit padding here would be whatever was on the stack, and an EINVAL.
        _pad: u32,
    }
    const _: () = assert!(size_of::<ObjGet>() == 8 + 4 * 4);
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replaces the program of a pinned link with `program`, atomically (`BPF_LINK_UPDATE`):
/// the hook never runs without a program. aya has no public call for cgroup links.
pub fn update_link(pin: &Path, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let link = open_pinned(pin)?;
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

// bpf(2) commands (enum bpf_cmd in linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, alive for the call;
    // the kernel reads `size_of::<T>()` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninstall_takes_only_what_the_agent_makes() {
        for own in ["v0", "v2", "v12", "quarantine-v1"] {
            assert!(is_agents_own(own), "{own}");
        }
        for other in [
            "v",
            "vx",
            "v2.bak",
            "quarantine",
            "quarantine-v",
            "maps",
            "cilium",
        ] {
            assert!(!is_agents_own(other), "{other}");
        }
    }

    /// The layout MAP_LAYOUT_VERSION stands for. When this test fails, a map or a type
    /// it holds changed: bump MAP_LAYOUT_VERSION and write the new layout here, so an
    /// agent with the new layout never reads maps pinned by the old one.
    #[test]
    fn the_pinned_maps_have_the_layout_their_version_names() {
        let layout_v6: [(&str, u32, u32, u32); 17] = [
            ("CONFIG", 4, 16, 1),
            ("ENDPOINTS", 16, 48, 8_192),
            ("SELF_ADDRS", 28, 4, 65_536),
            ("IPCACHE", 24, 4, 262_144),
            ("POLICY", 16, 4, 524_288),
            ("SERVICES", 24, 24, 262_144),
            ("SERVICE_NAT", 32, 24, 131_072),
            ("FLOWS", 32, 16, 262_144),
            ("FLOW_BUDGETS", 4, 16, 8_192),
            ("EVENTS", 0, 0, 1 << 22),
            ("EVENT_LIMITS", 32, 16, 65_536),
            ("ENDPOINT_STATS", 4, 16, 49_152),
            ("COUNTERS", 4, 8, 14),
            ("DNS_PROXY", 4, 48, 1),
            ("DNS_RESOLVERS", 20, 20, 64),
            ("DNS_CLIENTS", 20, 4, 65_536),
            ("DNS_LEARNT", 24, 24, 262_144),
        ];
        assert_eq!(
            MAP_LAYOUT_VERSION, 6,
            "write the new version's layout below"
        );
        let actual: Vec<(&str, u32, u32, u32)> = PINNED_MAPS
            .iter()
            .map(|m| (m.name, m.key_size, m.value_size, m.max_entries))
            .collect();
        assert_eq!(actual, layout_v6);
    }
}
