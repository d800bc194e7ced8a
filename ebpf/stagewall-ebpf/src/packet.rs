//! Parsing the headers a verdict needs. Every read goes through `SkBuff::load`
//! (bpf_skb_load_bytes), which checks bounds in the kernel.
//!
//! cgroup_skb programs see data starting at the IP header; TC programs see the Ethernet
//! header first. Callers pass the offset of the IP header.
//!
//! The parsers below `parse` are inlined into it: returning a struct from a BPF-to-BPF
//! call is where LLVM's BPF backend emits code the verifier rejects (registers read after
//! a helper clobbered them).

use aya_ebpf::programs::sk_buff::SkBuff;
use stagewall_common::{
    FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// TC programs see the Ethernet header first; the IP header follows it.
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// IPv6 extension headers we step over to find the transport header.
const IPV6_HOPOPTS: u8 = 0;
const PROTO_IGMP: u8 = 2;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_MAX_EXT_HEADERS: usize = 4;

/// A packet's addresses and ports as seen on the wire (source, destination). Built in one
/// piece at the end of parsing: byte-sized stores into a half-built struct on the stack
/// can land on a slot the verifier knows as a spilled register, and it rejects them.
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP/SCTP ports; for ICMP echo, the echo identifier in both; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub protocol: u8,
    /// Link control: IPv6 neighbor discovery (ICMPv6 133-137, IPv6's ARP), multicast
    /// listener discovery (ICMPv6 130-132, 143) and IGMP, each only in the form that
    /// cannot leave the link (`link_scoped`). Policy never blocks it, as it never blocks
    /// ARP: without neighbor discovery no IPv6 peer of an isolated interface could be
    /// reached at all. The same message in any other form (to a routable unicast
    /// address, with a hop limit a router would forward) is decided by policy like any
    /// other packet of its protocol: otherwise it would carry data anywhere.
    pub link_control: bool,
    /// An ICMP or ICMPv6 error (unreachable, packet too big, time exceeded, parameter
    /// problem): the addresses, ports and protocol above are those of the packet it is
    /// about, as that packet went. It passes when that packet's flow is tracked.
    pub icmp_error: bool,
    /// FRAGMENT_*: whether this is a fragment, and which.
    pub fragment: u8,
    /// A fragment's IP identification (IPv4: 16 bits).
    pub fragment_id: u32,
}

pub const FRAGMENT_NONE: u8 = 0;
/// The first fragment: it carries the transport header and is decided by it.
pub const FRAGMENT_FIRST: u8 = 1;
/// A later fragment: no transport header; it passes if its datagram's first did.
pub const FRAGMENT_LATER: u8 = 2;

/// What the transport header tells.
#[derive(Default)]
struct L4 {
    sport: u16,
    dport: u16,
    /// The ICMP or ICMPv6 type (0 for other protocols).
    icmp_type: u8,
}

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const ICMPV6_REDIRECT: u8 = 137;
/// Neighbor discovery is sent with hop limit 255 and its receivers discard anything else
/// (RFC 4861), so a router never passes it on as ND; MLD and IGMP are sent with TTL 1
/// (RFC 3810, RFC 2236).
const ND_HOP_LIMIT: u8 = 255;
const MLD_HOP_LIMIT: u8 = 1;

/// Is this IPv6 packet link control that stays on the link? Neighbor solicitations and
/// advertisements go to unicast addresses too (address resolution replies, reachability
/// probes), so only their hop limit binds them; router solicitations, advertisements and
/// redirects, and MLD, must also name a link-local or multicast destination.
fn ipv6_link_scoped(icmp_type: u8, hop_limit: u8, dst: &[u8; 16]) -> bool {
    let link_local_or_multicast = dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80);
    match icmp_type {
        ICMPV6_ROUTER_SOLICITATION | ICMPV6_ROUTER_ADVERTISEMENT | ICMPV6_REDIRECT => {
            hop_limit == ND_HOP_LIMIT && link_local_or_multicast
        }
        135 | 136 => hop_limit == ND_HOP_LIMIT,
        130..=132 | 143 => hop_limit == MLD_HOP_LIMIT && link_local_or_multicast,
        _ => false,
    }
}

/// IGMP stays on the link when sent with TTL 1 to a multicast group (224.0.0.0/4).
fn igmp_link_scoped(ttl: u8, dst: &[u8; 4]) -> bool {
    ttl == MLD_HOP_LIMIT && dst[0] & 0xf0 == 0xe0
}

pub struct Malformed;

/// What kind of packet an skb holds, from the Ethernet type (TC) or skb->protocol (cgroup).
pub enum L3 {
    V4,
    V6,
    Arp,
    Other,
    /// Too short to tell.
    Truncated,
}

pub fn l3_from_ethertype(ethertype_be: u16) -> L3 {
    match u16::from_be(ethertype_be) {
        ETH_P_IP => L3::V4,
        ETH_P_IPV6 => L3::V6,
        ETH_P_ARP => L3::Arp,
        _ => L3::Other,
    }
}

/// What an skb holds.
pub enum Parsed {
    /// An IP packet, written to the caller's `Packet`.
    Ip,
    /// ARP: IPv4's neighbor discovery, outside of what network policy covers.
    Arp,
    /// Any other frame (VLAN in VLAN, raw L2): an isolated workload may not pass it.
    NotIp,
    /// Headers that end too early or contradict themselves.
    Malformed,
}

impl Packet {
    pub const fn empty() -> Packet {
        Packet {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            family: 0,
            protocol: 0,
            link_control: false,
            icmp_error: false,
            fragment: FRAGMENT_NONE,
            fragment_id: 0,
        }
    }
}

/// Parses the packet at `offset` into `out`. A function of its own, not inlined, and
/// writing to its caller's `Packet` rather than returning one: its temporaries leave the
/// stack before the verdict's call chain starts (the verifier allows that chain 512
/// bytes), and returning a struct from a BPF-to-BPF call is where LLVM's BPF backend
/// emits code the verifier rejects.
#[inline(never)]
pub fn parse(skb: &SkBuff, l3: L3, offset: usize, out: &mut Packet) -> Parsed {
    let parsed = match l3 {
        L3::V4 => parse_v4(skb, offset, out),
        L3::V6 => parse_v6(skb, offset, out),
        L3::Arp => return Parsed::Arp,
        L3::Other => return Parsed::NotIp,
        L3::Truncated => return Parsed::Malformed,
    };
    match parsed {
        Ok(()) => Parsed::Ip,
        Err(Malformed) => Parsed::Malformed,
    }
}

#[inline(always)]
fn load<T>(skb: &SkBuff, offset: usize) -> Result<T, Malformed> {
    skb.load::<T>(offset).map_err(|_| Malformed)
}

// Each parser below is a BPF function of its own writing the caller's Packet: their
// temporaries would not fit in one frame (the verifier allows 512 bytes to a call chain).

#[inline(never)]
fn parse_v4(skb: &SkBuff, offset: usize, out: &mut Packet) -> Result<(), Malformed> {
    // The fixed header in one read: each read is a helper call, and the last field
    // (the destination) ends at byte 20 anyway, so a shorter packet failed before too.
    let header: [u8; 20] = load(skb, offset)?;
    let version_ihl = header[0];
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Malformed);
    }
    let id_be = u16::from_ne_bytes([header[4], header[5]]);
    let frag_off_be = u16::from_ne_bytes([header[6], header[7]]);
    let ttl = header[8];
    let protocol = header[9];
    let src4 = [header[12], header[13], header[14], header[15]];
    let dst4 = [header[16], header[17], header[18], header[19]];
    // A non-first fragment carries no transport header: its ports stay 0; it passes if
    // its datagram's first fragment did, else only rules without ports can allow it (it
    // never borrows the verdict of a port rule).
    let frag_off = u16::from_be(frag_off_be);
    let fragment = if frag_off & 0x1fff != 0 {
        FRAGMENT_LATER
    } else if frag_off & 0x2000 != 0 {
        FRAGMENT_FIRST
    } else {
        FRAGMENT_NONE
    };
    let l4 = if fragment != FRAGMENT_LATER {
        read_l4(skb, protocol, offset + ihl)?
    } else {
        L4::default()
    };
    if protocol == PROTO_ICMP
        && is_icmp_error(protocol, l4.icmp_type)
        && embedded_v4(skb, offset + ihl + 8, out)
    {
        return Ok(());
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&src4);
    dst[..4].copy_from_slice(&dst4);
    *out = Packet {
        src,
        dst,
        sport: l4.sport,
        dport: l4.dport,
        family: FAMILY_V4,
        protocol,
        link_control: protocol == PROTO_IGMP && igmp_link_scoped(ttl, &dst4),
        icmp_error: false,
        fragment,
        fragment_id: u16::from_be(id_be) as u32,
    };
    Ok(())
}

/// The IPv4 packet an ICMP error is about, from its header and first 8 bytes there,
/// written to `out`; false if they are not all there (the error is then decided as the
/// ICMP packet it is).
#[inline(never)]
fn embedded_v4(skb: &SkBuff, offset: usize, out: &mut Packet) -> bool {
    let Ok(version_ihl) = load::<u8>(skb, offset) else {
        return false;
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    let (Ok(protocol), Ok(src4), Ok(dst4), Ok(ports)) = (
        load::<u8>(skb, offset + 9),
        load::<[u8; 4]>(skb, offset + 12),
        load::<[u8; 4]>(skb, offset + 16),
        load::<[u8; 4]>(skb, offset + ihl),
    ) else {
        return false;
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&src4);
    dst[..4].copy_from_slice(&dst4);
    let (sport, dport) = embedded_ports(protocol, ports);
    *out = Packet {
        src,
        dst,
        sport,
        dport,
        family: FAMILY_V4,
        protocol,
        link_control: false,
        icmp_error: true,
        fragment: FRAGMENT_NONE,
        fragment_id: 0,
    };
    true
}

/// The IPv6 packet an ICMPv6 error is about (its fixed header and the 4 bytes after it;
/// extension headers are not walked: such a packet's error is decided as ICMPv6).
#[inline(never)]
fn embedded_v6(skb: &SkBuff, offset: usize, out: &mut Packet) -> bool {
    let (Ok(next), Ok(src), Ok(dst), Ok(ports)) = (
        load::<u8>(skb, offset + 6),
        load::<[u8; 16]>(skb, offset + 8),
        load::<[u8; 16]>(skb, offset + 24),
        load::<[u8; 4]>(skb, offset + 40),
    ) else {
        return false;
    };
    let (sport, dport) = embedded_ports(next, ports);
    *out = Packet {
        src,
        dst,
        sport,
        dport,
        family: FAMILY_V6,
        protocol: next,
        link_control: false,
        icmp_error: true,
        fragment: FRAGMENT_NONE,
        fragment_id: 0,
    };
    true
}

/// The ports of the packet an error is about, as a flow keys them: TCP/UDP/SCTP ports, an
/// echo's identifier in both.
fn embedded_ports(protocol: u8, b: [u8; 4]) -> (u16, u16) {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ),
        // Echo: type, code, checksum here; the identifier is further on, not among the 8
        // bytes every error carries for IPv4, so echo errors match no flow.
        _ => (0, 0),
    }
}

/// Destination unreachable, time exceeded, parameter problem (and ICMPv6's packet too
/// big): errors that carry the packet they are about.
fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        PROTO_ICMP => matches!(icmp_type, 3 | 11 | 12),
        _ => matches!(icmp_type, 1..=4),
    }
}

#[inline(never)]
fn parse_v6(skb: &SkBuff, offset: usize, out: &mut Packet) -> Result<(), Malformed> {
    // The fixed header in one read (one helper call; the destination ends at byte 40).
    let header: [u8; 40] = load(skb, offset)?;
    let mut next = header[6];
    let hop_limit = header[7];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    let mut l4_offset = offset + 40;
    let mut fragment = FRAGMENT_NONE;
    let mut fragment_id = 0u32;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let hdr: [u8; 2] = load(skb, l4_offset)?;
                next = hdr[0];
                l4_offset += (hdr[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let hdr: [u8; 8] = load(skb, l4_offset)?;
                next = hdr[0];
                let offset_and_more = u16::from_be_bytes([hdr[2], hdr[3]]);
                fragment = if offset_and_more >> 3 != 0 {
                    FRAGMENT_LATER
                } else if offset_and_more & 1 != 0 {
                    FRAGMENT_FIRST
                } else {
                    FRAGMENT_NONE
                };
                fragment_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                l4_offset += 8;
            }
            _ => break,
        }
    }
    let first_fragment = fragment != FRAGMENT_LATER;
    let l4 = if first_fragment {
        read_l4(skb, next, l4_offset)?
    } else {
        L4::default()
    };
    if next == PROTO_ICMPV6
        && first_fragment
        && is_icmp_error(next, l4.icmp_type)
        && embedded_v6(skb, l4_offset + 8, out)
    {
        return Ok(());
    }
    *out = Packet {
        src,
        dst,
        sport: l4.sport,
        dport: l4.dport,
        family: FAMILY_V6,
        protocol: next,
        link_control: next == PROTO_ICMPV6
            && first_fragment
            && ipv6_link_scoped(l4.icmp_type, hop_limit, &dst),
        icmp_error: false,
        fragment,
        fragment_id,
    };
    Ok(())
}

#[inline(always)]
fn read_l4(skb: &SkBuff, protocol: u8, offset: usize) -> Result<L4, Malformed> {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = load(skb, offset)?;
            Ok(L4 {
                sport: u16::from_be_bytes([ports[0], ports[1]]),
                dport: u16::from_be_bytes([ports[2], ports[3]]),
                icmp_type: 0,
            })
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let icmp_type: u8 = load(skb, offset)?;
            let id = if is_echo(protocol, icmp_type) {
                let id: [u8; 2] = load(skb, offset + 4)?;
                u16::from_be_bytes(id)
            } else {
                0
            };
            Ok(L4 {
                sport: id,
                dport: id,
                icmp_type,
            })
        }
        _ => Ok(L4::default()),
    }
}

/// Echo request or reply: their identifier ties a reply to its request.
fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        PROTO_ICMP => icmp_type == 8 || icmp_type == 0,
        _ => icmp_type == 128 || icmp_type == 129,
    }
}

/// The L3 kind of a cgroup_skb packet, from skb->protocol (it holds the big-endian
/// Ethernet type).
pub fn l3_from_skb(skb: &SkBuff) -> L3 {
    // SAFETY: skb points at the program's context.
    let protocol = unsafe { core::ptr::read_volatile(&(*skb.skb).protocol) };
    l3_from_ethertype(protocol as u16)
}

pub fn l3_from_eth(skb: &SkBuff) -> Result<L3, Malformed> {
    let ethertype_be: u16 = load(skb, 12)?;
    Ok(l3_from_ethertype(ethertype_be))
}
