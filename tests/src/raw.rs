//! Hand-made frames for the hostile-packet tests (fragments, IP options, IPv6 extension
//! headers, truncated headers, unknown protocols: what the kernel's own stack never
//! sends), and raw AF_PACKET sockets that send them and count what arrives.
//!
//! Frames carry a marker the receiver counts by: the IPv4 identification or the IPv6 flow
//! label.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

pub const PROTO_UDP: u8 = 17;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ALL: u16 = 0x0003;
/// 802.1Q and 802.1ad (the outer tag of VLAN in VLAN) tags.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const PROTO_IGMP: u8 = 2;
pub const PROTO_ICMPV6: u8 = 58;

pub type Mac = [u8; 6];

/// A node's IPv4 address as the frame builders take it.
pub fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("expected IPv4"),
    }
}

/// A node's IPv6 address as the frame builders take it.
pub fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("expected IPv6"),
    }
}

/// Bytes as the probe's raw-send and ip-send take them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "aa:bb:cc:dd:ee:ff" as bytes.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

pub fn ethernet(dst: Mac, src: Mac, ip: &[u8]) -> Vec<u8> {
    let ethertype = if ip.first().is_some_and(|b| b >> 4 == 6) {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    };
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// The frame with VLAN-in-VLAN tags (802.1ad outer, 802.1Q inner) after its addresses.
pub fn qinq(frame: &[u8], outer_vlan: u16, inner_vlan: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&ETH_P_8021AD.to_be_bytes());
    f.extend_from_slice(&outer_vlan.to_be_bytes());
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&inner_vlan.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// Sets an IP packet's TTL (IPv4, checksum fixed) or hop limit (IPv6).
pub fn set_hop_limit(ip: &mut [u8], hops: u8) {
    if ip[0] >> 4 == 6 {
        ip[7] = hops;
    } else {
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        ip[8] = hops;
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&ip[..header_len]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }
}

/// An IGMPv2 membership report for `group` (checksum 0: counted before any check).
pub fn igmp_report(group: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0x16, 0, 0, 0];
    m.extend_from_slice(&group.octets());
    m
}

/// An ICMPv6 neighbor solicitation for `target` (checksum 0).
pub fn neighbor_solicitation(target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m
}

/// An IPv4 packet around `payload`: `options` (padded to 4 bytes) make a longer header;
/// `fragment` is the flags and offset field (offset in 8-byte units, 0x2000 = more
/// fragments). The header checksum is right, so only the policy decides.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
    options: &[u8],
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut options = options.to_vec();
    while !options.len().is_multiple_of(4) {
        options.push(0); // end of options list
    }
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut h = vec![0x40 | (header_len / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&fragment.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&options);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 packet: `next` names the first header of `payload` (an extension header or
/// the transport).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, flow_label: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = (0x6000_0000u32 | (flow_label & 0xf_ffff))
        .to_be_bytes()
        .to_vec();
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop or destination options header of 8 bytes (one PadN option), then `rest`.
pub fn ipv6_options(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(rest);
    h
}

/// An IPv6 fragment header (offset in 8-byte units), then `rest`.
pub fn ipv6_fragment(next: u8, offset: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

/// A UDP header and payload (checksum 0: the receiver counts frames before any check).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The marker of a frame: the IPv4 identification or the IPv6 flow label.
pub fn marker(frame: &[u8]) -> Option<u32> {
    // Past any VLAN tags (a receiving interface may have taken the outer one off already).
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = frame.get(at + 2..)?;
    match ethertype {
        ETH_P_IP => Some(u32::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]))),
        ETH_P_IPV6 => Some(u32::from_be_bytes(ip.get(..4)?.try_into().ok()?) & 0xf_ffff),
        _ => None,
    }
}

/// An AF_PACKET socket bound to `interface` (in the caller's network namespace).
struct PacketSocket(i32);

impl PacketSocket {
    fn bind(interface: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(interface).map_err(io::Error::other)?;
        // SAFETY: plain syscalls; the descriptor is owned by the returned value.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sock = PacketSocket(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sock)
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Sends each frame once on `interface`, as it is.
pub fn send(interface: &str, frames: &[Vec<u8>]) -> io::Result<()> {
    let sock = PacketSocket::bind(interface)?;
    for f in frames {
        // SAFETY: the buffer outlives the call.
        let n = unsafe { libc::send(sock.0, f.as_ptr().cast(), f.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `count` copies of an IPv4 UDP frame (20-byte IP header) on `interface`, each
/// with other UDP ports (source and destination counting up from 1024): as many new flows
/// as frames, from one sender.
pub fn flood_flows(interface: &str, frame: &[u8], count: u32) -> io::Result<()> {
    const PORTS: u32 = 64_000;
    let sock = PacketSocket::bind(interface)?;
    let mut f = frame.to_vec();
    for i in 0..count {
        let sport = 1024 + (i % PORTS) as u16;
        let dport = 1024 + (i / PORTS) as u16;
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        // SAFETY: the buffer outlives the call.
        let n = unsafe { libc::send(sock.0, f.as_ptr().cast(), f.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A full transmit queue: wait a moment and go on.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Sends each IPv4 packet once, header and all, through a raw IP socket (IP_HDRINCL):
/// the socket a workload with CAP_NET_RAW opens to write its own headers.
pub fn send_ip(packets: &[Vec<u8>]) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut result = Ok(());
        for p in packets {
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
            let n = libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                &to as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if n < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
        }
        libc::close(fd);
        result
    }
}

/// Counts the frames arriving on `interface` for `duration` whose marker is in
/// `markers`; `ready` runs once the socket is bound (nothing sent before is missed).
pub fn count(
    interface: &str,
    duration: Duration,
    markers: &[u32],
    ready: impl FnOnce(),
) -> io::Result<Vec<usize>> {
    let sock = PacketSocket::bind(interface)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: a timeval option on our own socket.
    unsafe {
        libc::setsockopt(
            sock.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    ready();
    let mut counts = vec![0; markers.len()];
    let mut buf = [0u8; 2048];
    let end = Instant::now() + duration;
    while Instant::now() < end {
        // SAFETY: the buffer outlives the call.
        let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(m) = marker(&buf[..n as usize])
            && let Some(i) = markers.iter().position(|x| *x == m)
        {
            counts[i] += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_and_markers_read_back() {
        let p = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            PROTO_UDP,
            0xbeef,
            &[1, 1, 1],
            0,
            &udp(1, 2, b"x"),
        );
        assert_eq!(p[0], 0x46, "a 24-byte header");
        assert_eq!(checksum(&p[..24]), 0, "a right checksum sums to zero");
        let f = ethernet([2; 6], [4; 6], &p);
        assert_eq!(marker(&f), Some(0xbeef));
        let v6 = ipv6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            PROTO_UDP,
            0x12345,
            &udp(1, 2, b""),
        );
        assert_eq!(marker(&ethernet([2; 6], [4; 6], &v6)), Some(0x12345));
        assert_eq!(marker(&qinq(&f, 7, 8)), Some(0xbeef), "past both tags");
        let mut short = p.clone();
        set_hop_limit(&mut short, 1);
        assert_eq!((short[8], checksum(&short[..24])), (1, 0));
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
