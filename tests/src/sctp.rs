//! SCTP for the probe without the kernel's SCTP stack: the kernels these tests run on may
//! be built without it (`CONFIG_IP_SCTP` unset: `socket(AF_INET, SOCK_STREAM,
//! IPPROTO_SCTP)` fails with EPROTONOSUPPORT). The probe speaks the first exchange of an
//! association instead, INIT and INIT ACK, through raw IPv4 sockets of protocol 132:
//! real SCTP packets (common header, CRC32c, the chunk) that meet the same hooks a
//! kernel association's would. A raw socket's sends pass the cgroup's egress program
//! (ip_finish_output) and its receives the cgroup's ingress program (sk_filter in
//! raw_rcv); TC sees them on the wire. The cgroup connect and sendmsg hooks do not run
//! for raw sockets, as they do not for a kernel SCTP socket either (TCP and UDP only).
//!
//! The server answers an INIT to one of its ports with an INIT ACK carrying the
//! client's tag; anything else it ignores (every raw socket of the namespace receives
//! every SCTP packet, the INIT ACKs its own clients receive included).

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

const IPPROTO_SCTP: i32 = 132;
const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
/// Common header (12) and an INIT or INIT ACK chunk without parameters (20).
const PACKET_LEN: usize = 32;

/// CRC32c (Castagnoli, reflected), as SCTP's checksum (RFC 9260, appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An INIT (`chunk` 1, verification tag 0) or INIT ACK (2, the peer's tag) packet.
fn packet(src_port: u16, dst_port: u16, vtag: u32, chunk: u8, initiate_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(PACKET_LEN);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, filled in below
    p.push(chunk);
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.to_be_bytes()); // initial TSN
    // The kernel stores the checksum as the little-endian bytes of the CRC
    // (sctp_compute_cksum).
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// What a received packet (IPv4 header first, as raw IPv4 sockets deliver) says.
struct Received {
    src: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    vtag: u32,
    chunk: u8,
    initiate_tag: u32,
}

fn parse(buf: &[u8]) -> Option<Received> {
    let ihl = usize::from(*buf.first()? & 0x0f) * 4;
    let sctp = buf.get(ihl..ihl + PACKET_LEN)?;
    let be16 = |i: usize| u16::from_be_bytes([sctp[i], sctp[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([sctp[i], sctp[i + 1], sctp[i + 2], sctp[i + 3]]);
    Some(Received {
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        src_port: be16(0),
        dst_port: be16(2),
        vtag: be32(4),
        chunk: sctp[12],
        initiate_tag: be32(16),
    })
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_to(fd: &OwnedFd, packet: &[u8], to: Ipv4Addr) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid buffer and address of the given sizes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one packet, waiting at most `timeout`.
fn recv(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    // SAFETY: a valid buffer of the given size.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A tag no two probes of one process share, and unlikely to repeat across processes.
fn fresh_tag() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ std::process::id().rotate_left(16)) | 1
}

/// Client ports, one per probe of this process, from a base that differs by process: a
/// probe never shares its 5-tuple with another probe of the same run.
fn client_port() -> u16 {
    static BASE: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = *BASE.get_or_init(|| fresh_tag() % 28_000);
    32_768 + ((base + NEXT.fetch_add(1, Ordering::Relaxed)) % 28_000) as u16
}

/// Sends an INIT to `to` and waits for its INIT ACK: Ok when it came (the association
/// could start), TimedOut when it did not, the send's error (EPERM: the cgroup's egress
/// program dropped it) otherwise.
pub fn associate(to: SocketAddrV4, timeout: Duration) -> io::Result<()> {
    let fd = raw_socket()?;
    let port = client_port();
    let tag = fresh_tag();
    send_to(&fd, &packet(port, to.port(), 0, CHUNK_INIT, tag), *to.ip())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let n = recv(&fd, &mut buf, left)?;
        if let Some(r) = parse(&buf[..n])
            && r.chunk == CHUNK_INIT_ACK
            && r.src == *to.ip()
            && r.src_port == to.port()
            && r.dst_port == port
            && r.vtag == tag
        {
            return Ok(());
        }
    }
}

/// Answers every INIT to one of `ports`, forever (a server thread's body).
pub fn serve(ports: &[u16]) -> io::Result<std::convert::Infallible> {
    let fd = raw_socket()?;
    let mut buf = [0u8; 2048];
    loop {
        let n = match recv(&fd, &mut buf, Duration::from_secs(3600)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e),
        };
        let Some(r) = parse(&buf[..n]) else { continue };
        if r.chunk != CHUNK_INIT || r.vtag != 0 || !ports.contains(&r.dst_port) {
            continue;
        }
        let reply = packet(
            r.dst_port,
            r.src_port,
            r.initiate_tag,
            CHUNK_INIT_ACK,
            fresh_tag(),
        );
        // A reply the server's egress program drops is the test's to see (the client
        // times out); the server goes on.
        let _ = send_to(&fd, &reply, r.src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_check_value() {
        // RFC 3720 B.4 / the common CRC-32C check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn an_init_parses_back() {
        let mut ip = vec![0x45, 0, 0, 52, 0, 0, 0, 0, 64, 132, 0, 0, 198, 18, 0, 16];
        ip.extend_from_slice(&[198, 18, 0, 28]);
        ip.extend(packet(40_000, 9003, 0, CHUNK_INIT, 77));
        let r = parse(&ip).expect("parses");
        assert_eq!(r.src, Ipv4Addr::new(198, 18, 0, 16));
        assert_eq!((r.src_port, r.dst_port, r.vtag), (40_000, 9003, 0));
        assert_eq!((r.chunk, r.initiate_tag), (CHUNK_INIT, 77));
    }
}
