//! A pod's host-side veth where no route names it (bridged CNIs: the node's routes name
//! the bridge). Found through the pod's network namespace: a process of the pod (from its
//! cgroup) gives the namespace, a thread that joins it asks the kernel (rtnetlink) for its
//! links, and the pod's `eth0` names its peer's index in the host's namespace.
//!
//! The agent needs the host's PID namespace for this (the DaemonSet has `hostPID: true`):
//! the PIDs in the pods' cgroups are the host's. Found veths are kept while the pod's
//! process and the veth's index stay the same, so each pod is looked up once.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::datapath::host::cgroup_dir;

use super::cgroups::PodCgroups;

/// What a pod's network namespace gave: its veth's host side, or nothing to look for (the
/// pod is on the host's network, or has no veth to another namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    Veth { index: u32, name: String },
    None,
}

/// Pods' host-side veths, by pod UID, kept between scans.
#[derive(Debug, Default)]
pub struct PodVeths {
    /// UID -> (the pod process looked at, what it gave).
    known: BTreeMap<String, (u32, Found)>,
}

impl PodVeths {
    /// Looks up the pods of `cgroups` not known yet (or whose process or veth changed) and
    /// forgets pods that are gone; gives UID -> veth name.
    pub fn scan(&mut self, cgroups: &PodCgroups, mount: &Path) -> BTreeMap<String, String> {
        self.known.retain(|uid, _| cgroups.get(uid).is_some());
        for (uid, path) in cgroups.iter() {
            let current = self.known.get(uid).is_some_and(|(pid, found)| {
                Path::new(&format!("/proc/{pid}")).exists()
                    && match found {
                        Found::Veth { index, name } => index_of(name) == Some(*index),
                        Found::None => true,
                    }
            });
            if current {
                continue;
            }
            let Some(pid) = pod_process(&cgroup_dir(mount, path)) else {
                continue;
            };
            match veth_of(pid) {
                Ok(found) => {
                    self.known.insert(uid.to_string(), (pid, found));
                }
                Err(e) => log::debug!("pod {uid}: its veth not found through process {pid}: {e}"),
            }
        }
        self.known
            .iter()
            .filter_map(|(uid, (_, found))| match found {
                Found::Veth { name, .. } => Some((uid.clone(), name.clone())),
                Found::None => None,
            })
            .collect()
    }
}

/// A process in the pod's cgroup or the cgroups below it (its containers').
fn pod_process(dir: &Path) -> Option<u32> {
    let mut dirs: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        // PID 0: a process of another PID namespace than the agent's.
        if let Some(pid) = procs
            .lines()
            .filter_map(|l| l.parse().ok())
            .find(|p| *p != 0)
        {
            return Some(pid);
        }
        if depth < 3
            && let Ok(entries) = std::fs::read_dir(&dir)
        {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), depth + 1)),
            );
        }
    }
    None
}

/// The host side of the veth of process `pid`'s network namespace.
fn veth_of(pid: u32) -> io::Result<Found> {
    let path = format!("/proc/{pid}/ns/net");
    let netns = File::open(&path)?;
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let theirs = netns.metadata()?;
    if (theirs.dev(), theirs.ino()) == (own.dev(), own.ino()) {
        return Ok(Found::None);
    }
    let links = std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread joins the pod's namespace, and it ends here.
            // SAFETY: setns with a namespace descriptor this function owns.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            netlink::links()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })?;
    let pod_side = links
        .iter()
        .filter(|l| l.peer_in_other_netns)
        .find(|l| l.name == "eth0")
        .or_else(|| links.iter().find(|l| l.peer_in_other_netns));
    let Some((pod_index, index)) = pod_side.and_then(|l| Some((l.index, l.peer_index?))) else {
        return Ok(Found::None);
    };
    let Some(name) = name_of(index) else {
        return Ok(Found::None);
    };
    // The peer may live in another namespace than the agent's, where the same index is
    // someone else's interface: this one must be paired with the pod's (its iflink).
    let iflink = std::fs::read_to_string(format!("/sys/class/net/{name}/iflink"));
    match iflink.map(|i| i.trim().parse::<u32>()) {
        Ok(Ok(paired)) if paired != pod_index => Ok(Found::None),
        _ => Ok(Found::Veth { index, name }),
    }
}

/// The name of interface `index` of the agent's network namespace.
fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The index of interface `name` of the agent's network namespace.
fn index_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// RTM_GETLINK, the one question asked: every link of the calling thread's namespace.
mod netlink {
    use std::io;

    /// One link as RTM_NEWLINK describes it.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Link {
        /// Its own index (in the namespace dumped).
        pub index: u32,
        pub name: String,
        /// IFLA_LINK: the peer's index (a veth's other end).
        pub peer_index: Option<u32>,
        /// IFLA_LINK_NETNSID present: the peer is in another namespace.
        pub peer_in_other_netns: bool,
    }

    const NLMSG_HDRLEN: usize = 16;
    const IFINFOMSG_LEN: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINK: u16 = 5;
    const IFLA_LINK_NETNSID: u16 = 37;
    /// Attribute types carry two flag bits (nested, byte order) above these.
    const NLA_TYPE_MASK: u16 = 0x3fff;

    pub fn links() -> io::Result<Vec<Link>> {
        // SAFETY: socket(2) with constant arguments; closed by `Fd`.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = Fd(fd);
        let mut request = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        let len = request.len() as u32;
        request[0..4].copy_from_slice(&len.to_ne_bytes());
        request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
        request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request[8..12].copy_from_slice(&1u32.to_ne_bytes());
        request[16] = libc::AF_UNSPEC as u8;
        // SAFETY: the buffer outlives the call.
        if unsafe { libc::send(fd.0, request.as_ptr().cast(), request.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut links = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the buffer outlives the call and is as long as said.
            let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 || parse(&buf[..n as usize], &mut links)? {
                return Ok(links);
            }
        }
    }

    struct Fd(i32);

    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: a descriptor this struct owns.
            unsafe { libc::close(self.0) };
        }
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// Adds the links of one datagram of the dump; true once the dump is done.
    pub fn parse(datagram: &[u8], links: &mut Vec<Link>) -> io::Result<bool> {
        let truncated = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
        let mut at = 0;
        while at + NLMSG_HDRLEN <= datagram.len() {
            let len = u32_at(datagram, at).ok_or_else(truncated)? as usize;
            let kind = u16_at(datagram, at + 4).ok_or_else(truncated)?;
            if len < NLMSG_HDRLEN || at + len > datagram.len() {
                return Err(truncated());
            }
            let message = &datagram[at..at + len];
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let errno = u32_at(message, NLMSG_HDRLEN).ok_or_else(truncated)? as i32;
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWLINK => links.push(link(message).ok_or_else(truncated)?),
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
        Ok(false)
    }

    fn link(message: &[u8]) -> Option<Link> {
        let mut link = Link {
            // ifinfomsg: family, pad, type (u16), then the index (i32).
            index: u32_at(message, NLMSG_HDRLEN + 4)?,
            name: String::new(),
            peer_index: None,
            peer_in_other_netns: false,
        };
        let mut at = NLMSG_HDRLEN + IFINFOMSG_LEN;
        while at + 4 <= message.len() {
            let len = u16_at(message, at)? as usize;
            let kind = u16_at(message, at + 2)? & NLA_TYPE_MASK;
            if len < 4 || at + len > message.len() {
                return None;
            }
            let payload = &message[at + 4..at + len];
            match kind {
                IFLA_IFNAME => {
                    let name = payload.split(|b| *b == 0).next().unwrap_or_default();
                    link.name = String::from_utf8_lossy(name).into_owned();
                }
                IFLA_LINK => link.peer_index = u32_at(payload, 0),
                IFLA_LINK_NETNSID => link.peer_in_other_netns = true,
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
        Some(link)
    }
}

#[cfg(test)]
mod tests {
    use super::netlink::{Link, parse};

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    fn newlink(index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(16, &body)
    }

    #[test]
    fn a_dump_gives_each_link_with_its_peer() {
        let mut datagram = newlink(1, &[attr(3, b"lo\0")]);
        datagram.extend(newlink(
            2,
            &[
                attr(3, b"eth0\0"),
                attr(5, &42u32.to_ne_bytes()),
                // IFLA_LINK_NETNSID, with the nested flag bits a kernel may set.
                attr(37 | 0x8000, &0i32.to_ne_bytes()),
            ],
        ));
        let mut links = Vec::new();
        assert!(!parse(&datagram, &mut links).unwrap(), "not done yet");
        assert!(parse(&message(3, &[0; 4]), &mut links).unwrap(), "done");
        assert_eq!(
            links,
            [
                Link {
                    index: 1,
                    name: "lo".into(),
                    peer_index: None,
                    peer_in_other_netns: false
                },
                Link {
                    index: 2,
                    name: "eth0".into(),
                    peer_index: Some(42),
                    peer_in_other_netns: true
                },
            ]
        );
    }

    #[test]
    fn errors_and_truncated_messages_are_errors_not_panics() {
        let mut links = Vec::new();
        let error = message(2, &(-libc::EPERM).to_ne_bytes());
        let e = parse(&error, &mut links).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let mut cut = newlink(2, &[attr(3, b"eth0\0")]);
        cut.truncate(cut.len() - 3);
        assert!(parse(&cut, &mut links).is_err());
        // An attribute whose length runs past its message.
        let mut bad = newlink(2, &[attr(3, b"eth0\0")]);
        bad[32] = 200;
        assert!(parse(&bad, &mut links).is_err());
        for n in 0..40 {
            let _ = parse(&vec![0xff; n], &mut links);
        }
    }
}
