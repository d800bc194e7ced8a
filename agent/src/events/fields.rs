//! What a verdict event's closed fields can say: its verdict, the reason for it, the IP
//! protocol and the kernel hook that saw it (the direction is `policy::model::Direction`).
//! Enums inside the agent; in the event JSON, the flow records, tables and metric labels
//! each is the name `name` gives (Display and serde agree): the strings they were before
//! they were enums. (The kernel's packet counters label verdicts their own way: see
//! observe::metrics.)

use std::{borrow::Cow, cmp::Ordering, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use stagewall_common::{
    DIR_INGRESS, HOOK_CGROUP_SKB, HOOK_CONNECT, HOOK_SENDMSG, HOOK_SOCKET_CREATE, HOOK_TC,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, REASON_ADMIN_DENY, REASON_ALLOWED,
    REASON_BASELINE_DENY, REASON_DEFAULT_DENY, REASON_MALFORMED, REASON_MAP_FULL, REASON_NO_RULE,
    REASON_NOT_IP, REASON_PACKET_SOCKET, REASON_QUARANTINE, REASON_SNI_MISMATCH, VERDICT_ALLOWED,
    VERDICT_DROPPED, VERDICT_WOULD_DROP,
};

use crate::policy::model::Direction;

/// A kernel direction number (DIR_*) as a direction; anything but ingress is egress, as
/// the kernel programs read it.
pub fn direction_from_kernel(direction: u8) -> Direction {
    if direction == DIR_INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// What happened to the packet, connect or send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Flow logging, or an allowed packet whose flow could not be tracked.
    Allowed,
    Dropped,
    /// Denied in audit mode: reported, not dropped.
    WouldDrop,
    /// A verdict number this agent does not know (a kernel program of another version);
    /// also what a newer agent's unknown verdict name reads as.
    #[serde(other)]
    Unknown,
}

impl Verdict {
    pub fn from_kernel(verdict: u8) -> Verdict {
        match verdict {
            VERDICT_ALLOWED => Verdict::Allowed,
            VERDICT_DROPPED => Verdict::Dropped,
            VERDICT_WOULD_DROP => Verdict::WouldDrop,
            _ => Verdict::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Dropped => "dropped",
            Verdict::WouldDrop => "would-drop",
            Verdict::Unknown => "unknown",
        }
    }

    /// Denied by policy, enforced or audited.
    pub fn is_violation(self) -> bool {
        matches!(self, Verdict::Dropped | Verdict::WouldDrop)
    }
}

/// Why the kernel reached the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Allowed,
    /// Isolated by policies without a rule for this direction.
    DefaultDeny,
    /// Rules exist, none allows it.
    NoRule,
    /// The workload is quarantined.
    Quarantine,
    /// An unparseable packet.
    InternalError,
    /// The flow table is full: replies may be denied.
    MapFull,
    /// A frame that is not IP (nor ARP) at an isolated workload's interface.
    NotIp,
    /// An isolated workload creating a packet (AF_PACKET) or XDP socket.
    PacketSocket,
    /// A ClusterNetworkPolicy rule of the Admin tier denies it.
    AdminDeny,
    /// A ClusterNetworkPolicy rule of the Baseline tier denies it.
    BaselineDeny,
    /// A TLS connection only a name allowed named another host in its ClientHello (or
    /// none): `--dns-sni-check`.
    SniMismatch,
    /// A reason number this agent does not know.
    #[serde(other)]
    Unknown,
}

impl Reason {
    pub fn from_kernel(reason: u8) -> Reason {
        match reason {
            REASON_ALLOWED => Reason::Allowed,
            REASON_DEFAULT_DENY => Reason::DefaultDeny,
            REASON_NO_RULE => Reason::NoRule,
            REASON_MALFORMED => Reason::InternalError,
            REASON_MAP_FULL => Reason::MapFull,
            REASON_QUARANTINE => Reason::Quarantine,
            REASON_NOT_IP => Reason::NotIp,
            REASON_PACKET_SOCKET => Reason::PacketSocket,
            REASON_ADMIN_DENY => Reason::AdminDeny,
            REASON_BASELINE_DENY => Reason::BaselineDeny,
            REASON_SNI_MISMATCH => Reason::SniMismatch,
            _ => Reason::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::DefaultDeny => "default-deny",
            Reason::NoRule => "no-rule",
            Reason::Quarantine => "quarantine",
            Reason::InternalError => "internal-error",
            Reason::MapFull => "map-full",
            Reason::NotIp => "not-ip",
            Reason::PacketSocket => "packet-socket",
            Reason::AdminDeny => "admin-deny",
            Reason::BaselineDeny => "baseline-deny",
            Reason::SniMismatch => "sni-mismatch",
            Reason::Unknown => "unknown",
        }
    }
}

/// Which kernel program saw the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// cgroup_skb: a workload's packets, both directions.
    CgroupSkb,
    /// cgroup/connect4 and 6: a connect, before any packet.
    Connect,
    /// cgroup/sendmsg4 and 6: an unconnected send, before any packet.
    Sendmsg,
    /// tc: an interface-attached workload's packets.
    Tc,
    /// lsm/socket_create: a packet or XDP socket being created.
    SocketCreate,
    #[serde(other)]
    Unknown,
}

impl Hook {
    pub fn from_kernel(hook: u8) -> Hook {
        match hook {
            HOOK_CGROUP_SKB => Hook::CgroupSkb,
            HOOK_CONNECT => Hook::Connect,
            HOOK_SENDMSG => Hook::Sendmsg,
            HOOK_TC => Hook::Tc,
            HOOK_SOCKET_CREATE => Hook::SocketCreate,
            _ => Hook::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::CgroupSkb => "cgroup_skb",
            Hook::Connect => "connect",
            Hook::Sendmsg => "sendmsg",
            Hook::Tc => "tc",
            Hook::SocketCreate => "socket_create",
            Hook::Unknown => "unknown",
        }
    }

    /// The hook runs before the kernel chose a source address (so there is none yet).
    pub fn before_source_chosen(self) -> bool {
        matches!(self, Hook::Connect | Hook::Sendmsg)
    }
}

/// The IP protocol of an event or flow record (not to be confused with
/// `policy::model::Protocol`, the three a NetworkPolicy port may name). Any protocol
/// number is kept; those without a name are "ip-proto-N".
///
/// Ordered by name, as when it was a string, so flow records sort as they always did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum IpProtocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    /// Another protocol number.
    Other(u8),
    /// An event without a parsed packet (no address family).
    Unknown,
}

impl IpProtocol {
    pub fn from_number(protocol: u8) -> IpProtocol {
        match protocol {
            PROTO_TCP => IpProtocol::Tcp,
            PROTO_UDP => IpProtocol::Udp,
            PROTO_SCTP => IpProtocol::Sctp,
            PROTO_ICMP => IpProtocol::Icmp,
            PROTO_ICMPV6 => IpProtocol::Icmpv6,
            other => IpProtocol::Other(other),
        }
    }

    /// The protocol number; None for Unknown.
    pub fn number(self) -> Option<u8> {
        match self {
            IpProtocol::Tcp => Some(PROTO_TCP),
            IpProtocol::Udp => Some(PROTO_UDP),
            IpProtocol::Sctp => Some(PROTO_SCTP),
            IpProtocol::Icmp => Some(PROTO_ICMP),
            IpProtocol::Icmpv6 => Some(PROTO_ICMPV6),
            IpProtocol::Other(n) => Some(n),
            IpProtocol::Unknown => None,
        }
    }

    /// tcp, udp or sctp: events and records carry ports.
    pub fn has_ports(self) -> bool {
        matches!(self, IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Sctp)
    }

    pub fn name(self) -> Cow<'static, str> {
        match self {
            IpProtocol::Tcp => "tcp".into(),
            IpProtocol::Udp => "udp".into(),
            IpProtocol::Sctp => "sctp".into(),
            IpProtocol::Icmp => "icmp".into(),
            IpProtocol::Icmpv6 => "icmpv6".into(),
            IpProtocol::Other(n) => format!("ip-proto-{n}").into(),
            IpProtocol::Unknown => "unknown".into(),
        }
    }
}

impl Ord for IpProtocol {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(&other.name())
    }
}

impl PartialOrd for IpProtocol {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for IpProtocol {
    type Err = String;

    /// The names `name` gives.
    fn from_str(name: &str) -> Result<IpProtocol, String> {
        Ok(match name {
            "tcp" => IpProtocol::Tcp,
            "udp" => IpProtocol::Udp,
            "sctp" => IpProtocol::Sctp,
            "icmp" => IpProtocol::Icmp,
            "icmpv6" => IpProtocol::Icmpv6,
            "unknown" => IpProtocol::Unknown,
            other => other
                .strip_prefix("ip-proto-")
                .and_then(|n| n.parse().ok())
                .map(IpProtocol::from_number)
                .ok_or_else(|| format!("{name:?} is not an IP protocol name"))?,
        })
    }
}

impl From<IpProtocol> for String {
    fn from(p: IpProtocol) -> String {
        p.name().into_owned()
    }
}

impl TryFrom<String> for IpProtocol {
    type Error = String;

    fn try_from(name: String) -> Result<IpProtocol, String> {
        name.parse()
    }
}

impl FromStr for Verdict {
    type Err = String;

    /// dropped, would-drop, allowed (or unknown).
    fn from_str(name: &str) -> Result<Verdict, String> {
        [
            Verdict::Dropped,
            Verdict::WouldDrop,
            Verdict::Allowed,
            Verdict::Unknown,
        ]
        .into_iter()
        .find(|v| v.name() == name)
        .ok_or_else(|| format!("{name:?} is not a verdict: dropped, would-drop or allowed"))
    }
}

macro_rules! display_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so table columns ({:<11}) line up as they did for strings.
                f.pad(&self.name())
            }
        }
    )*};
}

display_name!(Verdict, Reason, Hook, IpProtocol);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_display_say_the_names() {
        for v in [
            Verdict::Allowed,
            Verdict::Dropped,
            Verdict::WouldDrop,
            Verdict::Unknown,
        ] {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
            assert_eq!(v.to_string().parse::<Verdict>(), Ok(v));
        }
        assert_eq!(Verdict::WouldDrop.to_string(), "would-drop");
        for r in [
            Reason::Allowed,
            Reason::DefaultDeny,
            Reason::NoRule,
            Reason::Quarantine,
            Reason::InternalError,
            Reason::MapFull,
            Reason::SniMismatch,
            Reason::Unknown,
        ] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        assert_eq!(Reason::InternalError.to_string(), "internal-error");
        assert_eq!(
            Reason::from_kernel(stagewall_common::REASON_SNI_MISMATCH).to_string(),
            "sni-mismatch"
        );
        assert_eq!(
            serde_json::to_string(&Hook::CgroupSkb).unwrap(),
            "\"cgroup_skb\""
        );
        assert_eq!(format!("{:<6}|", Verdict::Dropped), "dropped|");
        assert_eq!(format!("{:<8}|", IpProtocol::Tcp), "tcp     |");
        assert_eq!(format!("{:<7}|", Direction::Egress), "egress |");
        assert_eq!(
            serde_json::to_string(&Direction::Ingress).unwrap(),
            "\"ingress\""
        );
    }

    #[test]
    fn every_protocol_number_round_trips_through_its_name() {
        for n in 0..=u8::MAX {
            let p = IpProtocol::from_number(n);
            assert_eq!(p.number(), Some(n));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<IpProtocol>(&json).unwrap(), p);
        }
        assert_eq!(IpProtocol::from_number(47).to_string(), "ip-proto-47");
        assert_eq!("unknown".parse(), Ok(IpProtocol::Unknown));
        assert_eq!("ip-proto-6".parse(), Ok(IpProtocol::Tcp));
        assert!("TCP".parse::<IpProtocol>().is_err());
        assert!(IpProtocol::Other(10) < IpProtocol::Other(2), "by name");
        assert!(IpProtocol::Icmpv6 < IpProtocol::Other(0));
    }

    #[test]
    fn names_a_newer_agent_adds_read_as_unknown() {
        // `stagewall events` may read the stream of a newer agent.
        let verdict: Verdict = serde_json::from_str("\"rate-limited\"").unwrap();
        assert_eq!(verdict, Verdict::Unknown);
        let reason: Reason = serde_json::from_str("\"dns-expired\"").unwrap();
        assert_eq!(reason, Reason::Unknown);
        let hook: Hook = serde_json::from_str("\"xdp\"").unwrap();
        assert_eq!(hook, Hook::Unknown);
    }
}
