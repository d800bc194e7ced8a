//! Violation events: drained from the kernel's ring buffer, named (workload, peer,
//! policies), printed as one JSON line each and counted in the metrics.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use stagewall_common::{
    DIR_INGRESS, Event, FAMILY_V4, HOOK_CGROUP_SKB, HOOK_CONNECT, HOOK_SENDMSG, HOOK_TC,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, REASON_MALFORMED, REASON_NO_RULE,
    VERDICT_DROPPED, VERDICT_WOULD_DROP,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use crate::{compiler::Compiled, metrics::Metrics};

/// One violation as users see it (a JSON line on stdout).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub time: String,
    /// "dropped", or "would-drop" in audit mode.
    pub verdict: &'static str,
    pub reason: &'static str,
    pub direction: &'static str,
    pub protocol: String,
    /// Absent for a denied connect or send: the kernel has not chosen a source yet.
    pub src: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    pub dst_port: Option<u16>,
    /// The local workload (namespace/name).
    pub workload: String,
    /// The other side: a workload, the CIDR it fell in, or "world".
    pub peer: String,
    /// The policies that isolate the workload in this direction.
    pub policies: Vec<String>,
    /// Which kernel program saw it: cgroup_skb, connect, sendmsg or tc.
    pub hook: &'static str,
}

impl Violation {
    /// (source, destination, port) labels of ml_network_violations_total: names, never
    /// raw outside addresses, so the label set stays bounded.
    pub fn metric_labels(&self) -> [String; 3] {
        let (source, destination) = if self.direction == "ingress" {
            (self.peer.clone(), self.workload.clone())
        } else {
            (self.workload.clone(), self.peer.clone())
        };
        let port = match self.dst_port {
            Some(p) if has_ports(&self.protocol) => p.to_string(),
            _ => self.protocol.clone(),
        };
        [source, destination, port]
    }
}

fn has_ports(protocol: &str) -> bool {
    matches!(protocol, "tcp" | "udp" | "sctp")
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_SCTP => "sctp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        other => format!("ip-proto-{other}"),
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall-clock time.
fn wall_time(monotonic_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    SystemTime::now() - Duration::from_nanos(now_mono.saturating_sub(monotonic_ns))
}

/// Names a kernel event with the policy it was decided under.
pub fn describe(event: &Event, compiled: &Compiled) -> Violation {
    let local = addr(event.family, event.local_addr);
    let remote = addr(event.family, event.remote_addr);
    let ingress = event.direction == DIR_INGRESS;
    let endpoint = compiled
        .endpoints
        .iter()
        .find(|e| e.endpoint_id == event.endpoint_id);
    let workload = endpoint.map_or_else(
        || format!("endpoint-{}", event.endpoint_id),
        |e| e.workload.to_string(),
    );
    let policies = endpoint
        .map(|e| {
            if ingress {
                &e.ingress_policies
            } else {
                &e.egress_policies
            }
        })
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let protocol = protocol_name(event.protocol);
    let ports = has_ports(&protocol);
    let port = |p: u16| (ports && p != 0).then_some(p);
    let local_known = !(event.hook == HOOK_CONNECT || event.hook == HOOK_SENDMSG);
    let (src, src_port, dst, dst_port) = if ingress {
        (
            Some(remote),
            port(event.remote_port),
            local,
            port(event.local_port),
        )
    } else {
        (
            local_known.then_some(local),
            port(event.local_port),
            remote,
            port(event.remote_port),
        )
    };
    Violation {
        time: humantime::format_rfc3339_millis(wall_time(event.time_ns)).to_string(),
        verdict: match event.verdict {
            VERDICT_DROPPED => "dropped",
            VERDICT_WOULD_DROP => "would-drop",
            _ => "unknown",
        },
        reason: match event.reason {
            REASON_NO_RULE => "no-rule",
            REASON_MALFORMED => "malformed",
            _ => "unknown",
        },
        direction: if ingress { "ingress" } else { "egress" },
        protocol,
        src,
        src_port,
        dst,
        dst_port,
        workload,
        peer: compiled.identities.peer_name(remote),
        policies,
        hook: match event.hook {
            HOOK_CGROUP_SKB => "cgroup_skb",
            HOOK_CONNECT => "connect",
            HOOK_SENDMSG => "sendmsg",
            HOOK_TC => "tc",
            _ => "unknown",
        },
    }
}

fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain data of exactly this size; the ring buffer gives no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Registers a kernel ring buffer's fd with tokio for readiness (read) events.
pub fn readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner` (an aya map), which the AsyncFd owns and which
    // keeps it open and unchanged until it is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

/// Drains the ring buffer until the task is cancelled, writing each violation as a JSON
/// line to `out` and counting it.
pub async fn stream(
    ring: RingBuf<MapData>,
    policy: watch::Receiver<Arc<Compiled>>,
    metrics: Arc<Metrics>,
    mut out: impl Write,
) -> anyhow::Result<()> {
    let mut fd = readable(ring)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let compiled = policy.borrow().clone();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = decode(&item) else {
                log::warn!("short event of {} bytes from the kernel", item.len());
                continue;
            };
            let violation = describe(&event, &compiled);
            metrics.record_violation(&violation);
            serde_json::to_writer(&mut out, &violation)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        guard.clear_ready();
    }
}
