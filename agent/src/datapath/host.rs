//! What the agent needs from the host: the cgroup2 mount, bpffs, and turning a workload's
//! attachment (cgroup path, systemd unit, interface) into what the kernel programs key on.

use std::{
    ffi::{CString, NulError},
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::policy::model::Attachment;

/// Where bpffs lives by convention; the agent mounts it there when it is missing.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What the host lacks, or would not give.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading /proc/self/mountinfo")]
    Mountinfo(#[source] io::Error),
    #[error(
        "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); stagewall needs cgroup v2"
    )]
    NoCgroup2,
    #[error("creating {BPFFS}")]
    CreateBpffs(#[source] io::Error),
    #[error("mount -t bpf bpf {BPFFS}")]
    MountBpffs(#[source] io::Error),
    #[error("cgroup {}", dir.display())]
    Cgroup {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("no cgroup named {unit} below {}", cgroup_root.display())]
    NoUnitCgroup { unit: String, cgroup_root: PathBuf },
    #[error("no network interface {name} in the agent's network namespace")]
    NoInterface { name: String },
    /// An interface name with a NUL byte.
    #[error(transparent)]
    Nul(#[from] NulError),
}

/// One line of /proc/self/mountinfo: (mount point, filesystem type).
fn mounts() -> Result<Vec<(PathBuf, String)>, HostError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(HostError::Mountinfo)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            // Fields: id parent maj:min root mountpoint options [optional...] - fstype ...
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((
                PathBuf::from(unescape_mount_path(mount_point)),
                fstype.to_string(),
            ))
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&digits, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&digits);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The cgroup2 mount at or below `root`: `root` itself when it is one, else its `unified`
/// directory when that is (the hybrid layout, where `root` holds the cgroup v1
/// controllers), else `root` as given (resolving cgroups below it then says what is
/// wrong). For `--cgroup-root`, which in a DaemonSet names the host's /sys/fs/cgroup as
/// mounted into the container.
pub fn cgroup2_at_or_below(root: &Path) -> PathBuf {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let is_cgroup2 = |dir: &Path| {
        let Ok(path) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: a valid path and a zeroed statfs for the kernel to fill.
        unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == CGROUP2_SUPER_MAGIC
        }
    };
    let unified = root.join("unified");
    if !is_cgroup2(root) && is_cgroup2(&unified) {
        return unified;
    }
    root.to_path_buf()
}

/// Interfaces whose addresses are services', not the node's: kube-proxy's IPVS dummy
/// (every ClusterIP and load-balancer address) and node-local DNS's.
const SERVICE_INTERFACES: [&str; 2] = ["kube-ipvs0", "nodelocaldns"];

/// The addresses of this network namespace's interfaces (the node's, for an agent on the
/// host network); sorted. Left out: loopback, link-local addresses (the same on many
/// links), and the service interfaces kube-proxy and node-local DNS make. Empty if they
/// cannot be read.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases; each
    // ifa_addr is null or points to a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            let name = (*entry).ifa_name;
            let service = !name.is_null()
                && SERVICE_INTERFACES
                    .iter()
                    .any(|s| std::ffi::CStr::from_ptr(name).to_bytes() == s.as_bytes());
            if !addr.is_null() && !service {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        found.push(std::net::IpAddr::V4(ip));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        found.push(std::net::IpAddr::V6(sin6.sin6_addr.s6_addr.into()));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.retain(|a| {
        !a.is_loopback()
            && match a {
                std::net::IpAddr::V4(v4) => !v4.is_link_local(),
                std::net::IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            }
    });
    found.sort();
    found.dedup();
    found
}

/// The cgroup2 mount point: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones, wherever mountinfo says. Never hard-coded.
pub fn cgroup2_mount() -> Result<PathBuf, HostError> {
    mounts()?
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(path, _)| path)
        .ok_or(HostError::NoCgroup2)
}

/// Mounts bpffs at BPFFS unless a bpffs is already there.
pub fn ensure_bpffs() -> Result<(), HostError> {
    let mounted = mounts()?
        .iter()
        .any(|(path, fstype)| fstype == "bpf" && path == Path::new(BPFFS));
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(HostError::CreateBpffs)?;
    let target = CString::new(BPFFS)?;
    let fstype = c"bpf";
    // Root only: bpffs's default root is 1777, where any user could look up the pins or
    // create entries beside them. (The kernel keeps the sticky bit: the mode reads 1700.)
    let options = c"mode=0700";
    // SAFETY: valid NUL-terminated strings; bpffs reads its data argument as options text.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(HostError::MountBpffs(io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// A workload's attachment, found on this host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A cgroup directory and its id (the inode number, what bpf_skb_cgroup_id returns).
    Cgroup { dir: PathBuf, id: u64 },
    /// An interface and its index (skb->ifindex in TC programs).
    Interface { name: String, ifindex: u32 },
}

/// The directory of a cgroup named as policies name it (a path below the cgroup2 mount,
/// `/` the mount itself) on the mount at `cgroup_root`.
pub fn cgroup_dir(cgroup_root: &Path, path: &str) -> PathBuf {
    cgroup_root.join(path.trim_start_matches('/'))
}

pub fn resolve(cgroup_root: &Path, attachment: &Attachment) -> Result<Target, HostError> {
    match attachment {
        Attachment::Cgroup(path) => cgroup_target(cgroup_dir(cgroup_root, path)),
        Attachment::SystemdUnit(unit) => {
            let dir =
                find_unit_cgroup(cgroup_root, unit, 0).ok_or_else(|| HostError::NoUnitCgroup {
                    unit: unit.clone(),
                    cgroup_root: cgroup_root.to_path_buf(),
                })?;
            cgroup_target(dir)
        }
        Attachment::Interface(name) => {
            let c = CString::new(name.as_str())?;
            // SAFETY: valid NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                return Err(HostError::NoInterface { name: name.clone() });
            }
            Ok(Target::Interface {
                name: name.clone(),
                ifindex,
            })
        }
    }
}

fn cgroup_target(dir: PathBuf) -> Result<Target, HostError> {
    let meta = match std::fs::metadata(&dir) {
        Ok(meta) => meta,
        Err(source) => return Err(HostError::Cgroup { dir, source }),
    };
    if !meta.is_dir() {
        return Err(HostError::NotADirectory { dir });
    }
    Ok(Target::Cgroup {
        dir,
        id: meta.ino(),
    })
}

/// systemd puts a unit's processes in a cgroup named after the unit, a few levels down
/// (system.slice/foo.service, user.slice/.../foo.service).
fn find_unit_cgroup(dir: &Path, unit: &str, depth: usize) -> Option<PathBuf> {
    const MAX_DEPTH: usize = 6;
    if depth > MAX_DEPTH {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if entry.file_name().to_str() == Some(unit) {
                return Some(entry.path());
            }
            subdirs.push(entry.path());
        }
    }
    subdirs.sort();
    subdirs
        .iter()
        .find_map(|d| find_unit_cgroup(d, unit, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/mnt/with\040space"),
            "/mnt/with space"
        );
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }

    #[test]
    fn finds_the_cgroup2_mount_of_this_host() {
        // Every Linux host this runs on has mountinfo; cgroup2 may be absent in odd
        // containers, in which case the error must say so.
        match cgroup2_mount() {
            Ok(path) => assert!(path.join("cgroup.procs").exists(), "{}", path.display()),
            Err(e) => assert!(e.to_string().contains("cgroup2"), "{e}"),
        }
    }
}
