//! A pod's host-side veth where no route names it (bridged CNIs: the node's routes name
//! the bridge). The host's veths say which namespace their other end is in (IFLA_LINK_NETNSID,
//! an id local to the host's namespace); the kernel gives the same id for the namespace a
//! process of the pod is in (RTM_GETNSID by PID). Both are rtnetlink questions asked in the
//! agent's own namespace: no joining the pod's, no access to its processes beyond their PIDs.
//!
//! The agent needs the host's PID namespace for this (the DaemonSet has `hostPID: true`):
//! the PIDs in the pods' cgroups are the host's. Every process of the pod is tried (a
//! container may have a namespace of its own without a veth), and a found veth is kept
//! while its index and namespace id stay the same; a pod without one is asked again at the
//! next scan (its veth may not be there yet while the CNI sets it up).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::datapath::host::cgroup_dir;

use super::cgroups::PodCgroups;

/// A pod's veth, host side.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Veth {
    index: u32,
    name: String,
    /// The id of the pod's namespace in the host's.
    netns_id: i32,
}

/// Processes of one pod tried at the most per scan.
const PROCESSES_TRIED: usize = 16;

/// Pods' host-side veths, by pod UID, kept between scans.
#[derive(Debug, Default)]
pub struct PodVeths {
    known: BTreeMap<String, Veth>,
    /// Pods have cgroups with processes but none of them is visible (PID 0): the agent is
    /// not in the host's PID namespace. Said once.
    warned_no_pids: bool,
}

impl PodVeths {
    /// Looks up the veths of the pods of `cgroups` not known yet (or whose veth changed)
    /// and forgets pods that are gone; gives UID -> veth name.
    pub fn scan(&mut self, cgroups: &PodCgroups, mount: &Path) -> BTreeMap<String, String> {
        self.known.retain(|uid, _| cgroups.get(uid).is_some());
        let links = match netlink::Socket::open().and_then(|mut s| Ok((s.links()?, s))) {
            Ok(found) => Some(found),
            Err(e) => {
                log::warn!("listing the node's interfaces (rtnetlink): {e}");
                None
            }
        };
        if let Some((links, mut socket)) = links {
            // Host interfaces whose peer is in another namespace, by that namespace's id.
            let mut by_netns: BTreeMap<i32, Veth> = BTreeMap::new();
            for l in &links {
                if let Some(netns_id) = l.peer_netns_id {
                    by_netns.entry(netns_id).or_insert(Veth {
                        index: l.index,
                        name: l.name.clone(),
                        netns_id,
                    });
                }
            }
            self.known
                .retain(|_, v| by_netns.get(&v.netns_id).is_some_and(|now| now == v));
            for (uid, path) in cgroups.iter() {
                if self.known.contains_key(uid) {
                    continue;
                }
                let (pids, invisible) = pod_processes(&cgroup_dir(mount, path));
                if pids.is_empty() && invisible && !self.warned_no_pids {
                    self.warned_no_pids = true;
                    log::warn!(
                        "the pods' processes are not visible (the agent is not in the host's PID namespace: hostPID): bridged pods' veths are not found, so they get no TC backstop against raw sockets"
                    );
                }
                let found = pids.iter().find_map(|pid| match socket.netns_id_of(*pid) {
                    Ok(Some(id)) => by_netns.get(&id).cloned(),
                    Ok(None) => None,
                    Err(e) => {
                        log::debug!("pod {uid}: the namespace of process {pid}: {e}");
                        None
                    }
                });
                if let Some(veth) = found {
                    log::info!(
                        "pod {uid}: its veth is {} (its network namespace has id {} here)",
                        veth.name,
                        veth.netns_id
                    );
                    self.known.insert(uid.to_string(), veth);
                }
            }
        }
        self.known
            .iter()
            .map(|(uid, v)| (uid.clone(), v.name.clone()))
            .collect()
    }
}

/// Up to PROCESSES_TRIED processes in the pod's cgroup or the cgroups below it (its
/// containers'); and whether some process was there but invisible (PID 0: another PID
/// namespace than the agent's).
fn pod_processes(dir: &Path) -> (Vec<u32>, bool) {
    let mut pids = BTreeSet::new();
    let mut invisible = false;
    let mut dirs: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.parse::<u32>().ok()) {
            if pid == 0 {
                invisible = true;
            } else if pids.len() < PROCESSES_TRIED {
                pids.insert(pid);
            }
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
    (pids.into_iter().collect(), invisible)
}

/// The two rtnetlink questions asked: every link of the agent's namespace (RTM_GETLINK),
/// and the id of a process's namespace (RTM_GETNSID).
mod netlink {
    use std::{
        io,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };

    /// One link as RTM_NEWLINK describes it.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Link {
        pub index: u32,
        pub name: String,
        /// IFLA_LINK_NETNSID: the id of the namespace its peer is in (a veth's other end).
        pub peer_netns_id: Option<i32>,
    }

    const NLMSG_HDRLEN: usize = 16;
    const IFINFOMSG_LEN: usize = 16;
    const RTGENMSG_LEN: usize = 4;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const RTM_NEWNSID: u16 = 88;
    const RTM_GETNSID: u16 = 90;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP_INTR: u16 = 0x10;
    const NLM_F_DUMP: u16 = 0x300;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINK_NETNSID: u16 = 37;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_PID: u16 = 2;
    /// Attribute types carry two flag bits (nested, byte order) above these.
    const NLA_TYPE_MASK: u16 = 0x3fff;
    /// The kernel's answer for a namespace without an id.
    const NSID_NOT_ASSIGNED: i32 = -1;

    fn error(what: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }

    /// A NETLINK_ROUTE socket.
    pub struct Socket {
        fd: OwnedFd,
        seq: u32,
    }

    impl Socket {
        pub fn open() -> io::Result<Socket> {
            // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(error("socket(AF_NETLINK)", io::Error::last_os_error()));
            }
            // SAFETY: a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Socket { fd, seq: 0 })
        }

        /// Every link of the agent's namespace.
        pub fn links(&mut self) -> io::Result<Vec<Link>> {
            let mut body = [0u8; IFINFOMSG_LEN];
            body[0] = libc::AF_UNSPEC as u8;
            let seq = self.send(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, &body)?;
            let mut links = Vec::new();
            loop {
                let datagram = self.receive()?;
                match parse(&datagram, seq, &mut |kind, message| {
                    if kind == RTM_NEWLINK {
                        links.push(link(message).ok_or_else(truncated)?);
                    }
                    Ok(())
                })? {
                    Parsed::Done => return Ok(links),
                    Parsed::More => {}
                }
            }
        }

        /// The id of process `pid`'s network namespace in the agent's, if it has one.
        pub fn netns_id_of(&mut self, pid: u32) -> io::Result<Option<i32>> {
            let mut body = Vec::with_capacity(RTGENMSG_LEN + 8);
            body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&NETNSA_PID.to_ne_bytes());
            body.extend_from_slice(&pid.to_ne_bytes());
            let seq = self.send(RTM_GETNSID, NLM_F_REQUEST, &body)?;
            let datagram = self.receive()?;
            let mut id = None;
            parse(&datagram, seq, &mut |kind, message| {
                if kind == RTM_NEWNSID {
                    id = attributes(message, NLMSG_HDRLEN + RTGENMSG_LEN)
                        .ok_or_else(truncated)?
                        .into_iter()
                        .find(|(k, _)| *k == NETNSA_NSID)
                        .and_then(|(_, v)| i32_at(v, 0));
                }
                Ok(())
            })?;
            Ok(id.filter(|i| *i != NSID_NOT_ASSIGNED))
        }

        fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
            self.seq = self.seq.wrapping_add(1);
            let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
            m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&self.seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(body);
            // SAFETY: the buffer outlives the call.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
            if n < 0 {
                return Err(error("send(rtnetlink)", io::Error::last_os_error()));
            }
            Ok(self.seq)
        }

        /// One datagram from the kernel (sender port 0); others are skipped.
        fn receive(&mut self) -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: sockaddr_nl is plain data; zero is a valid value.
                let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
                let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
                // SAFETY: the buffers outlive the call and are as long as said.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                        (&raw mut from).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    return Err(error("recv(rtnetlink)", io::Error::last_os_error()));
                }
                let n = n as usize;
                if n > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "rtnetlink reply larger than 64 KiB",
                    ));
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "rtnetlink socket closed",
                    ));
                }
                if from.nl_pid == 0 {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        }
    }

    fn truncated() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "truncated rtnetlink message")
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn i32_at(b: &[u8], at: usize) -> Option<i32> {
        Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Parsed {
        Done,
        More,
    }

    /// Hands each message of one datagram answering request `seq` to `each` (its type
    /// and bytes); Done at NLMSG_DONE, or after the one answer of a request that is no
    /// dump. An error reply, an interrupted dump or a malformed message is an error.
    pub fn parse(
        datagram: &[u8],
        seq: u32,
        each: &mut dyn FnMut(u16, &[u8]) -> io::Result<()>,
    ) -> io::Result<Parsed> {
        let mut at = 0;
        let mut answered = false;
        while at + NLMSG_HDRLEN <= datagram.len() {
            let len = u32_at(datagram, at).ok_or_else(truncated)? as usize;
            let kind = u16_at(datagram, at + 4).ok_or_else(truncated)?;
            let flags = u16_at(datagram, at + 6).ok_or_else(truncated)?;
            let message_seq = u32_at(datagram, at + 8).ok_or_else(truncated)?;
            if len < NLMSG_HDRLEN || len > datagram.len() - at {
                return Err(truncated());
            }
            let message = &datagram[at..at + len];
            at += len.next_multiple_of(4);
            if message_seq != seq {
                continue;
            }
            if flags & NLM_F_DUMP_INTR != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "rtnetlink dump interrupted (interfaces changed meanwhile)",
                ));
            }
            match kind {
                NLMSG_DONE | NLMSG_ERROR => {
                    // Both carry an errno (0: none) after the header.
                    let errno = i32_at(message, NLMSG_HDRLEN).unwrap_or(0);
                    if errno < 0 {
                        return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                    }
                    return Ok(Parsed::Done);
                }
                _ => {
                    each(kind, message)?;
                    answered = true;
                }
            }
        }
        // A request that is no dump has one answer; a dump ends with NLMSG_DONE.
        let dump_part = datagram.len() >= 8 && u16_at(datagram, 6).unwrap_or(0) & 0x2 != 0;
        if answered && !dump_part {
            Ok(Parsed::Done)
        } else {
            Ok(Parsed::More)
        }
    }

    /// The attributes (type, payload) of a message, from byte `at`.
    fn attributes(message: &[u8], at: usize) -> Option<Vec<(u16, &[u8])>> {
        let mut found = Vec::new();
        let mut at = at;
        while at + 4 <= message.len() {
            let len = u16_at(message, at)? as usize;
            let kind = u16_at(message, at + 2)? & NLA_TYPE_MASK;
            if len < 4 || at + len > message.len() {
                return None;
            }
            found.push((kind, &message[at + 4..at + len]));
            at += len.next_multiple_of(4);
        }
        Some(found)
    }

    fn link(message: &[u8]) -> Option<Link> {
        // ifinfomsg: family, pad, type (u16), then the index (i32).
        let mut link = Link {
            index: u32_at(message, NLMSG_HDRLEN + 4)?,
            name: String::new(),
            peer_netns_id: None,
        };
        for (kind, payload) in attributes(message, NLMSG_HDRLEN + IFINFOMSG_LEN)? {
            match kind {
                IFLA_IFNAME => {
                    let name = payload.split(|b| *b == 0).next().unwrap_or_default();
                    link.name = String::from_utf8_lossy(name).into_owned();
                }
                IFLA_LINK_NETNSID => link.peer_netns_id = i32_at(payload, 0),
                _ => {}
            }
        }
        Some(link)
    }

    #[cfg(test)]
    pub fn link_for_test(message: &[u8]) -> Option<Link> {
        link(message)
    }
}

#[cfg(test)]
mod tests {
    use super::netlink::{Link, Parsed, link_for_test, parse};

    const SEQ: u32 = 7;
    const NLM_F_MULTI: u16 = 0x2;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(body);
        m
    }

    fn newlink(index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(16, NLM_F_MULTI, SEQ, &body)
    }

    fn links_of(datagram: &[u8]) -> std::io::Result<(Vec<Link>, Parsed)> {
        let mut links = Vec::new();
        let parsed = parse(datagram, SEQ, &mut |kind, m| {
            if kind == 16 {
                links.push(link_for_test(m).expect("a link"));
            }
            Ok(())
        })?;
        Ok((links, parsed))
    }

    #[test]
    fn a_dump_gives_each_link_with_its_peers_namespace() {
        let mut datagram = newlink(1, &[attr(3, b"lo\0")]);
        datagram.extend(newlink(
            9,
            &[
                attr(3, b"veth1234\0"),
                attr(5, &2u32.to_ne_bytes()),
                // IFLA_LINK_NETNSID, with a flag bit a kernel may set.
                attr(37 | 0x8000, &4i32.to_ne_bytes()),
            ],
        ));
        // A message of another request is skipped.
        datagram.extend(message(16, NLM_F_MULTI, SEQ + 1, &[0; 16]));
        let (links, parsed) = links_of(&datagram).unwrap();
        assert_eq!(parsed, Parsed::More, "a dump goes on until NLMSG_DONE");
        assert_eq!(
            links,
            [
                Link {
                    index: 1,
                    name: "lo".into(),
                    peer_netns_id: None
                },
                Link {
                    index: 9,
                    name: "veth1234".into(),
                    peer_netns_id: Some(4)
                },
            ]
        );
        let done = message(3, NLM_F_MULTI, SEQ, &0i32.to_ne_bytes());
        assert_eq!(links_of(&done).unwrap().1, Parsed::Done);
    }

    #[test]
    fn errors_interrupted_dumps_and_truncated_messages_are_errors_not_panics() {
        let error = message(2, 0, SEQ, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            links_of(&error).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let failed_dump = message(3, NLM_F_MULTI, SEQ, &(-libc::EBUSY).to_ne_bytes());
        assert_eq!(
            links_of(&failed_dump).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        let most_negative = message(2, 0, SEQ, &i32::MIN.to_ne_bytes());
        assert!(links_of(&most_negative).is_err());
        let ack = message(2, 0, SEQ, &0i32.to_ne_bytes());
        assert_eq!(links_of(&ack).unwrap().1, Parsed::Done, "errno 0 is an ack");
        let interrupted = message(16, NLM_F_MULTI | 0x10, SEQ, &[0; 16]);
        assert!(links_of(&interrupted).is_err());
        let mut cut = newlink(2, &[attr(3, b"eth0\0")]);
        cut.truncate(cut.len() - 3);
        assert!(links_of(&cut).is_err());
        let mut bad = newlink(2, &[attr(3, b"eth0\0")]);
        bad[32] = 200; // an attribute running past its message
        assert!(
            parse(&bad, SEQ, &mut |_, m| {
                link_for_test(m)
                    .map(|_| ())
                    .ok_or_else(|| std::io::Error::other("truncated"))
            })
            .is_err()
        );
        for n in 0..40 {
            let _ = links_of(&vec![0xff; n]);
            let _ = links_of(&vec![0; n]);
        }
    }
}
