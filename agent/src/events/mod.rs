//! Verdict events: drained from the kernel's ring buffer (reader), named after the policy
//! in force (this module), and fanned out by the agent to the metrics, a JSON-lines log on
//! stdout or a rotating file (sink) and the HTTP event stream (hub); `stagewall events`
//! reads that stream (cli::events).

pub mod filter;
pub mod hub;
pub mod reader;
pub mod sink;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use stagewall_common::{
    DIR_INGRESS, Event, FAMILY_V4, FAMILY_V6, GUARD_ENDPOINT_ID, HOOK_CGROUP_SKB, HOOK_CONNECT,
    HOOK_SENDMSG, HOOK_TC, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    REASON_ALLOWED, REASON_DEFAULT_DENY, REASON_MALFORMED, REASON_MAP_FULL, REASON_NO_RULE,
    REASON_QUARANTINE, VERDICT_ALLOWED, VERDICT_DROPPED, VERDICT_WOULD_DROP,
};

use crate::compiler::Compiled;

/// One verdict event as users see it: a JSON line, an HTTP stream item, a table row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictEvent {
    pub time: String,
    /// The node (host) whose agent saw it.
    pub node: String,
    /// "dropped", "would-drop" (audit mode) or "allowed" (flow logging, or an allowed
    /// packet whose flow could not be tracked).
    pub verdict: String,
    /// "default-deny" (isolated by policies without a rule for this direction), "no-rule"
    /// (rules exist, none allows it), "quarantine" (the workload is quarantined),
    /// "internal-error" (unparseable packet), "map-full" (flow table full: replies may be
    /// denied) or "allowed".
    pub reason: String,
    pub direction: String,
    pub protocol: String,
    /// Absent for a denied connect or send (no source chosen yet) and unparseable packets.
    pub src: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dst_port: Option<u16>,
    /// The local workload's namespace, name (namespace/name) and `stage` label.
    pub namespace: String,
    pub workload: String,
    pub stage: Option<String>,
    /// The other side: a workload, the CIDR of a policy it fell in, or "world".
    pub peer: String,
    /// The policies that isolate the workload in this direction.
    pub policies: Vec<String>,
    /// Which kernel program saw it: cgroup_skb, connect, sendmsg or tc.
    pub hook: String,
    /// Earlier events of this flow the kernel's rate limit folded into this one.
    pub suppressed: u32,
}

impl VerdictEvent {
    pub fn is_violation(&self) -> bool {
        self.verdict == "dropped" || self.verdict == "would-drop"
    }

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

/// The protocol number `protocol_name` gave a name.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(PROTO_TCP),
        "udp" => Some(PROTO_UDP),
        "sctp" => Some(PROTO_SCTP),
        "icmp" => Some(PROTO_ICMP),
        "icmpv6" => Some(PROTO_ICMPV6),
        other => other.strip_prefix("ip-proto-")?.parse().ok(),
    }
}

fn addr(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
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

/// How events and metrics name a process below a guard cgroup in no workload.
pub const UNPROGRAMMED: &str = "unprogrammed";

/// Names a kernel event with the policy in force.
pub fn describe(event: &Event, compiled: &Compiled, node: &str) -> VerdictEvent {
    let local = addr(event.family, event.local_addr);
    let remote = addr(event.family, event.remote_addr);
    let ingress = event.direction == DIR_INGRESS;
    let endpoint = compiled
        .endpoints
        .iter()
        .find(|e| e.endpoint_id == event.endpoint_id);
    let (namespace, workload) = match endpoint {
        Some(e) => (e.workload.namespace.clone(), e.workload.to_string()),
        None if event.endpoint_id == GUARD_ENDPOINT_ID => (String::new(), UNPROGRAMMED.into()),
        None => (String::new(), format!("endpoint-{}", event.endpoint_id)),
    };
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
            remote,
            port(event.remote_port),
            local,
            port(event.local_port),
        )
    } else {
        (
            local.filter(|_| local_known),
            port(event.local_port),
            remote,
            port(event.remote_port),
        )
    };
    VerdictEvent {
        time: humantime::format_rfc3339_millis(wall_time(event.time_ns)).to_string(),
        node: node.to_string(),
        verdict: match event.verdict {
            VERDICT_ALLOWED => "allowed",
            VERDICT_DROPPED => "dropped",
            VERDICT_WOULD_DROP => "would-drop",
            _ => "unknown",
        }
        .into(),
        reason: match event.reason {
            REASON_ALLOWED => "allowed",
            REASON_DEFAULT_DENY => "default-deny",
            REASON_NO_RULE => "no-rule",
            REASON_MALFORMED => "internal-error",
            REASON_MAP_FULL => "map-full",
            REASON_QUARANTINE => "quarantine",
            _ => "unknown",
        }
        .into(),
        direction: if ingress { "ingress" } else { "egress" }.into(),
        protocol: if event.family == 0 {
            "unknown".into()
        } else {
            protocol
        },
        src,
        src_port,
        dst,
        dst_port,
        namespace,
        workload,
        stage: endpoint.and_then(|e| e.stage.clone()),
        peer: remote.map_or_else(|| "unknown".into(), |r| compiled.identities.peer_name(r)),
        policies,
        hook: match event.hook {
            HOOK_CGROUP_SKB => "cgroup_skb",
            HOOK_CONNECT => "connect",
            HOOK_SENDMSG => "sendmsg",
            HOOK_TC => "tc",
            _ => "unknown",
        }
        .into(),
        suppressed: event.suppressed,
    }
}

/// The node name events carry: the host name, unless given.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
