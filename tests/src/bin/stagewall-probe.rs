//! A tiny network probe the integration tests run inside their namespaces and cgroups.
//!
//!   stagewall-probe serve --tcp 9090,9091 --udp 9090 [--sctp 9003]
//!                                                          echo servers (SCTP: answers INIT,
//!                                                          see stagewall_tests::sctp); prints "ready"
//!   stagewall-probe tcp ADDR PORT TIMEOUT_MS              connect, send, await the echo;
//!                                                          prints `peer ADDR:PORT` (getpeername)
//!   stagewall-probe udp ADDR PORT TIMEOUT_MS [COUNT]      send COUNT datagrams, await echoes;
//!                                                          prints `from ADDR:PORT` of the last
//!   stagewall-probe get ADDR:PORT PATH TIMEOUT_MS         HTTP GET; prints status and body
//!   stagewall-probe flood ADDR PORT MILLIS SOCKETS       UDP from SOCKETS source ports
//!                                                          for MILLIS; prints `sent N`
//!   stagewall-probe scan ADDR FIRST LAST                 one UDP datagram to each port
//!                                                          FIRST..=LAST from one socket;
//!                                                          prints `tried N`
//!   stagewall-probe rr ADDR PORT MILLIS                  request/response: `ok MS\nTPS P50_US P99_US`
//!   stagewall-probe crr ADDR PORT MILLIS                 new connections: `ok MS\nPER_SECOND`
//!   stagewall-probe udp-sink PORT MILLIS                 prints `ready`, then `received N`
//!   stagewall-probe watch-verdict ADDR PORT MILLIS [stdin]  `first X`, then `changed Y NS`;
//!                                                          with `stdin`, also stops when stdin closes
//!   stagewall-probe matrix TIMEOUT_MS PROTO/ADDR/PORT...   all at once, one line each:
//!                                                          `PROTO/ADDR/PORT OUTCOME MS`;
//!                                                          PROTO tcp, udp or sctp (IPv4: INIT,
//!                                                          awaits the INIT ACK)
//!   stagewall-probe raw-send IFACE HEXFRAME...             send hand-made frames as they are
//!   stagewall-probe raw-flood IFACE HEXFRAME COUNT         COUNT copies of an IPv4 UDP frame,
//!                                                          each with other ports (new flows)
//!   stagewall-probe ip-send HEXPACKET...                   send hand-made IPv4 packets through a
//!                                                          raw IP socket (IP_HDRINCL)
//!   stagewall-probe resolve-connect NAME PORT COUNT MS [4|6]
//!                                                          COUNT times: resolve NAME with the
//!                                                          system resolver (glibc getaddrinfo,
//!                                                          /etc/resolv.conf), connect to its
//!                                                          first address (of the family) and
//!                                                          await the echo: `done MS\nok N
//!                                                          eperm N unresolved N other N` and
//!                                                          the first failures
//!   stagewall-probe dns-rr RESOLVER NAME COUNT             COUNT A queries for NAME, one at a
//!                                                          time on one UDP socket connected to
//!                                                          RESOLVER:53 (1 s timeout each):
//!                                                          `answered N lost N errors N p50_us X
//!                                                          p99_us X max_us X`
//!   stagewall-probe dns-load RESOLVER NAMES SECONDS CONCURRENCY
//!                                                          CONCURRENCY sockets, one query in
//!                                                          flight each, NAMES (a name, or @FILE
//!                                                          of one name a line) in turn, for
//!                                                          SECONDS, or with `all` until each
//!                                                          name was answered (3 tries each):
//!                                                          `answered N lost N errors N seconds
//!                                                          S per_second R`
//!   stagewall-probe pause                                 a real pod's sandbox process: sleeps
//!                                                          until SIGTERM or SIGINT
//!   stagewall-probe raw-count IFACE MS MARKER...           `ready`, then `counts N...`: frames
//!                                                          seen per marker (IPv4 id, IPv6 flow label)
//!
//! Probes print one outcome word and the elapsed milliseconds: `ok 2`, `eperm 0`,
//! `timeout 1000`, `refused 1`, `error:<what> 3`. They exit 0 whatever the outcome.

use stagewall_tests::{dns_client, raw, sctp};
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex frame"))
        .collect()
}

fn outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => "eperm".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::ConnectionRefused => "refused".into(),
        _ => format!("error:{}", e.kind()).replace(' ', "_"),
    }
}

/// Gives the connection's peer as getpeername() says it (through a Service: its address,
/// whatever backend the connection went to).
fn tcp(addr: SocketAddr, timeout: Duration) -> Result<SocketAddr, std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    s.peer_addr()
}

/// An ephemeral port on the unspecified address of `addr`'s family.
fn any_port_like(addr: SocketAddr) -> SocketAddr {
    let ip = if addr.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    SocketAddr::new(ip, 0)
}

/// Gives where the last echo came from (through a Service: its ClusterIP once conntrack has
/// undone the DNAT).
fn udp(addr: SocketAddr, timeout: Duration, count: u32) -> Result<SocketAddr, std::io::Error> {
    let bind = any_port_like(addr);
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    // Unconnected sends: each goes through cgroup/sendmsg4|6.
    for _ in 0..count {
        s.send_to(b"ping", addr)?;
    }
    let mut buf = [0u8; 16];
    let mut from = addr;
    for _ in 0..count {
        (_, from) = s.recv_from(&mut buf)?;
    }
    Ok(from)
}

/// A minimal TLS 1.3 ClientHello (one record) naming `sni` in its server_name extension,
/// after a supported_groups one (so a reader must walk the extensions); `none`: no
/// server_name at all. Enough for stagewall's SNI check, not for a real server.
fn client_hello(sni: &str) -> Vec<u8> {
    let mut extensions = vec![0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d];
    if sni != "none" {
        let name = sni.as_bytes();
        let n = name.len() as u16;
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&(n + 5).to_be_bytes());
        extensions.extend_from_slice(&(n + 3).to_be_bytes());
        extensions.push(0);
        extensions.extend_from_slice(&n.to_be_bytes());
        extensions.extend_from_slice(name);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0, 0, 0];
    handshake[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Connects, sends a ClientHello naming `sni` (`plain`: "ping", no TLS at all), and waits
/// for the echo server to send its first bytes back: did the hello get through?
fn hello(addr: SocketAddr, timeout: Duration, sni: &str) -> Result<(), std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let payload = if sni == "plain" {
        b"ping".to_vec()
    } else {
        client_hello(sni)
    };
    s.write_all(&payload)?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    Ok(())
}

fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn serve(tcp_ports: &[u16], udp_ports: &[u16], sctp_ports: Vec<u16>) -> ! {
    let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let mut threads = Vec::new();
    if !sctp_ports.is_empty() {
        threads.push(std::thread::spawn(move || {
            let Err(e) = sctp::serve(&sctp_ports);
            panic!("sctp server: {e}");
        }));
    }
    for &port in tcp_ports {
        // [::] with IPV6_V6ONLY off (the Linux default) accepts IPv4 too.
        let l = TcpListener::bind(SocketAddr::new(any, port)).expect("bind tcp");
        threads.push(std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = conn.set_nodelay(true);
                    let mut buf = [0u8; 64];
                    // Echo until the client closes: one-shot probes and request/response
                    // benchmarks alike.
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    for &port in udp_ports {
        let s = UdpSocket::bind(SocketAddr::new(any, port)).expect("bind udp");
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

fn ports(arg: Option<&String>) -> Vec<u16> {
    arg.map(|s| {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().expect("port"))
            .collect()
    })
    .unwrap_or_default()
}

/// Sends 1-byte UDP datagrams round-robin from `sockets` source ports as fast as it can
/// for `duration` (bounded in time, to a test's own namespace): many flows, so the
/// kernel's per-flow event rate limit lets many events through.
fn flood(addr: SocketAddr, duration: Duration, sockets: usize) -> u64 {
    let bind = any_port_like(addr);
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|_| UdpSocket::bind(bind).expect("bind"))
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for s in &socks {
            if s.send_to(b"x", addr).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// One datagram to each port of `ports` from one socket, as a port scan does: a denied
/// send (EPERM) does not stop it. Returns how many were tried.
fn scan(addr: IpAddr, ports: std::ops::RangeInclusive<u16>) -> u64 {
    let s = UdpSocket::bind(any_port_like(SocketAddr::new(addr, 0))).expect("bind");
    let mut tried = 0;
    for port in ports {
        let _ = s.send_to(b"x", SocketAddr::new(addr, port));
        tried += 1;
    }
    tried
}

/// Request/response over one TCP connection for `duration`: transactions per second and
/// the 50th and 99th percentile latency in microseconds.
fn rr(addr: SocketAddr, duration: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut byte)?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    latencies.sort_unstable();
    // Percentiles in µs; 100 is the slowest transaction.
    let pct =
        |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)] as f64 / 1000.0;
    Ok(format!(
        "{:.0} {:.1} {:.1} {:.1}",
        latencies.len() as f64 / start.elapsed().as_secs_f64(),
        pct(50),
        pct(99),
        pct(100)
    ))
}

/// New TCP connections (connect, one byte each way, close) for `duration`: per second.
fn crr(addr: SocketAddr, duration: Duration) -> std::io::Result<String> {
    let start = Instant::now();
    let mut n = 0u64;
    let mut byte = [0u8; 1];
    while start.elapsed() < duration {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.write_all(b"x")?;
        s.read_exact(&mut byte)?;
        // Close with a reset (SO_LINGER 0), as connection-rate benchmarks do: TIME_WAIT
        // sockets would otherwise exhaust the client's ports and measure that instead.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a valid linger struct of the given size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        n += 1;
    }
    Ok(format!("{:.0}", n as f64 / start.elapsed().as_secs_f64()))
}

/// Counts UDP datagrams received on `port` until `duration` has passed.
fn udp_sink(port: u16, duration: Duration) -> u64 {
    let s =
        UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)).expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let mut n = 0;
    while start.elapsed() < duration {
        if s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// Tries TCP connects to `addr` until the outcome differs from the first one for three
/// attempts in a row (a single slow answer on a busy machine is not a change), or `limit`
/// passes, or `stop` is set; prints the outcomes and when (CLOCK_REALTIME, ns) the new one
/// first appeared.
fn watch_verdict(addr: SocketAddr, limit: Duration, stop: &AtomicBool) -> String {
    let attempt = || match TcpStream::connect_timeout(&addr, Duration::from_millis(10)) {
        Ok(_) => "ok".to_string(),
        Err(e) => outcome(&e),
    };
    let first = attempt();
    println!("first {first}");
    std::io::stdout().flush().unwrap();
    let start = Instant::now();
    let mut streak: Option<(String, u128, u32)> = None;
    while start.elapsed() < limit && !stop.load(Ordering::Relaxed) {
        // A pause between attempts leaves the CPU to the agent on small machines (a busy
        // loop of connections slowed the change it measures).
        std::thread::sleep(Duration::from_micros(100));
        let now = attempt();
        // A timeout is no verdict: a SYN let through under the old policy and dropped
        // under the new one hangs. It neither starts nor continues a streak.
        if now == "timeout" {
            streak = None;
            continue;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        streak = match streak {
            _ if now == first => None,
            Some((o, t, n)) if o == now => Some((o, t, n + 1)),
            _ => Some((now, at, 1)),
        };
        if let Some((o, t, 3)) = &streak {
            return format!("changed {o} {t}");
        }
    }
    "unchanged".to_string()
}

/// Probes every target concurrently (one thread each) and prints one line per target.
fn matrix(timeout: Duration, targets: &[String]) {
    let results: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                scope.spawn(move || {
                    let parts: Vec<&str> = t.split('/').collect();
                    let [proto, addr, port] = parts[..] else {
                        return format!("{t} error:bad_target 0");
                    };
                    let addr = SocketAddr::new(
                        addr.parse().expect("address"),
                        port.parse().expect("port"),
                    );
                    let start = Instant::now();
                    let result = match (proto, addr) {
                        ("tcp", _) => tcp(addr, timeout).map(|_| ()),
                        ("sctp", SocketAddr::V4(v4)) => sctp::associate(v4, timeout),
                        ("sctp", SocketAddr::V6(_)) => {
                            return format!("{t} error:sctp_is_ipv4_only 0");
                        }
                        _ => udp(addr, timeout, 1).map(|_| ()),
                    };
                    let word = match result {
                        Ok(()) => "ok".to_string(),
                        Err(e) => outcome(&e),
                    };
                    format!("{t} {word} {}", start.elapsed().as_millis())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    for line in results {
        println!("{line}");
    }
}

extern "C" fn exit_now(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// The pause image's process (the test node's pod sandboxes): it only holds the pod's
/// namespaces. As PID 1 of its PID namespace it has no default signal actions, so it
/// installs handlers to stop when the runtime asks.
fn pause() -> ! {
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, exit_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_now as *const () as libc::sighandler_t);
    }
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// Resolve-then-connect in a loop, as a client of a name with short-lived addresses does:
/// every resolution goes through the system resolver, every connection to what it gave.
fn resolve_connect(
    name: &str,
    port: u16,
    count: u32,
    timeout: Duration,
    family: Option<u8>,
) -> String {
    use std::net::ToSocketAddrs as _;
    let (mut ok, mut eperm, mut unresolved, mut other) = (0u32, 0u32, 0u32, 0u32);
    let mut failures = Vec::new();
    for _ in 0..count {
        let addrs: Vec<SocketAddr> = match (name, port).to_socket_addrs() {
            Ok(a) => a
                .filter(|a| match family {
                    Some(4) => a.is_ipv4(),
                    Some(6) => a.is_ipv6(),
                    _ => true,
                })
                .collect(),
            Err(e) => {
                unresolved += 1;
                if failures.len() < 5 {
                    failures.push(format!("resolve: {e}"));
                }
                continue;
            }
        };
        let Some(addr) = addrs.first() else {
            unresolved += 1;
            continue;
        };
        match tcp(*addr, timeout) {
            Ok(_) => ok += 1,
            Err(e) => {
                if e.kind() == ErrorKind::PermissionDenied {
                    eperm += 1;
                } else {
                    other += 1;
                }
                if failures.len() < 5 {
                    failures.push(format!("{addr}: {}", outcome(&e)));
                }
            }
        }
    }
    format!(
        "ok {ok} eperm {eperm} unresolved {unresolved} other {other}\n{}",
        failures.join("\n")
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stagewall-probe pause | serve --tcp P,.. --udp P,.. [--sctp P,..] | tcp ADDR PORT MS | hello ADDR PORT MS SNI|none|plain | hellos ADDR PORT SNI COUNT | udp ADDR PORT MS [COUNT] | get ADDR:PORT PATH MS | flood ADDR PORT MS SOCKETS | scan ADDR FIRST LAST | rr|crr ADDR PORT MS | udp-sink PORT MS | watch-verdict ADDR PORT MS [stdin] | matrix MS PROTO/ADDR/PORT... | raw-send IFACE HEX... | raw-flood IFACE HEX COUNT | ip-send HEX... | raw-count IFACE MS MARKER... | resolve-connect NAME PORT COUNT MS [4|6] | dns-rr RESOLVER NAME COUNT | dns-load RESOLVER NAME|@FILE SECONDS|all CONCURRENCY";
    let start = Instant::now();
    let ms = |s: &String| Duration::from_millis(s.parse().expect("milliseconds"));
    let sock = |a: &String, p: &String| {
        SocketAddr::new(a.parse().expect("address"), p.parse().expect("port"))
    };
    let result = match args.first().map(String::as_str) {
        Some("pause") => pause(),
        Some("serve") => {
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
            };
            serve(
                &ports(flag("--tcp")),
                &ports(flag("--udp")),
                ports(flag("--sctp")),
            )
        }
        Some("tcp") if args.len() == 4 => {
            tcp(sock(&args[1], &args[2]), ms(&args[3])).map(|peer| format!("peer {peer}\n"))
        }
        Some("hello") if args.len() == 5 => {
            hello(sock(&args[1], &args[2]), ms(&args[3]), &args[4]).map(|()| String::new())
        }
        Some("hellos") if args.len() == 5 => {
            // COUNT connections, one after the other, each with its ClientHello.
            let addr = sock(&args[1], &args[2]);
            let count: u32 = args[4].parse().expect("count");
            let ok = (0..count)
                .filter(|_| hello(addr, Duration::from_secs(1), &args[3]).is_ok())
                .count();
            println!("ok {ok} of {count}");
            return;
        }
        Some("udp") if args.len() >= 4 => {
            let count = args.get(4).map_or(1, |c| c.parse().expect("count"));
            udp(sock(&args[1], &args[2]), ms(&args[3]), count).map(|from| format!("from {from}\n"))
        }
        Some("flood") if args.len() == 5 => {
            let sent = flood(
                sock(&args[1], &args[2]),
                ms(&args[3]),
                args[4].parse().expect("sockets"),
            );
            println!("sent {sent}");
            return;
        }
        Some("scan") if args.len() == 4 => {
            let port = |a: &String| a.parse::<u16>().expect("port");
            let addr: IpAddr = args[1].parse().expect("address");
            println!("tried {}", scan(addr, port(&args[2])..=port(&args[3])));
            return;
        }
        Some("rr") if args.len() == 4 => rr(sock(&args[1], &args[2]), ms(&args[3])),
        Some("crr") if args.len() == 4 => crr(sock(&args[1], &args[2]), ms(&args[3])),
        Some("udp-sink") if args.len() == 3 => {
            println!(
                "received {}",
                udp_sink(args[1].parse().expect("port"), ms(&args[2]))
            );
            return;
        }
        Some("watch-verdict") if args.len() == 4 || (args.len() == 5 && args[4] == "stdin") => {
            let stop = Arc::new(AtomicBool::new(false));
            if args.len() == 5 {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                    stop.store(true, Ordering::Relaxed);
                });
            }
            println!(
                "{}",
                watch_verdict(sock(&args[1], &args[2]), ms(&args[3]), &stop)
            );
            return;
        }
        Some("resolve-connect") if args.len() == 5 || args.len() == 6 => {
            let family = args.get(5).map(|f| f.parse().expect("4 or 6"));
            Ok(resolve_connect(
                &args[1],
                args[2].parse().expect("port"),
                args[3].parse().expect("count"),
                ms(&args[4]),
                family,
            ))
        }
        Some("dns-rr") if args.len() == 4 => dns_client::round_trips(
            SocketAddr::new(args[1].parse().expect("address"), 53),
            &args[2],
            args[3].parse().expect("count"),
        ),
        Some("dns-load") if args.len() == 5 => {
            let names = match args[2].strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .expect("the names file")
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
                    .collect(),
                None => vec![args[2].clone()],
            };
            let until = match args[3].as_str() {
                "all" => dns_client::Until::AllAnswered,
                s => {
                    dns_client::Until::Elapsed(Duration::from_secs_f64(s.parse().expect("seconds")))
                }
            };
            dns_client::load(
                SocketAddr::new(args[1].parse().expect("address"), 53),
                Arc::new(names),
                until,
                args[4].parse().expect("concurrency"),
            )
        }
        Some("matrix") if args.len() >= 2 => {
            matrix(ms(&args[1]), &args[2..]);
            return;
        }
        Some("raw-send") if args.len() >= 3 => {
            let frames: Vec<Vec<u8>> = args[2..].iter().map(|h| from_hex(h)).collect();
            raw::send(&args[1], &frames).map(|_| String::new())
        }
        Some("raw-flood") if args.len() == 4 => {
            let frame = from_hex(&args[2]);
            let count = args[3].parse().expect("a count");
            raw::flood_flows(&args[1], &frame, count).map(|_| String::new())
        }
        Some("ip-send") if args.len() >= 2 => {
            let packets: Vec<Vec<u8>> = args[1..].iter().map(|h| from_hex(h)).collect();
            raw::send_ip(&packets).map(|_| String::new())
        }
        Some("raw-count") if args.len() >= 4 => {
            let markers: Vec<u32> = args[3..]
                .iter()
                .map(|m| m.parse().expect("marker"))
                .collect();
            let ready = || {
                println!("ready");
                std::io::stdout().flush().unwrap();
            };
            match raw::count(&args[1], ms(&args[2]), &markers, ready) {
                Ok(counts) => {
                    let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
                    println!("counts {}", counts.join(" "));
                    return;
                }
                Err(e) => Err(e),
            }
        }
        Some("get") if args.len() == 4 => {
            get(args[1].parse().expect("address"), &args[2], ms(&args[3]))
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let elapsed = start.elapsed().as_millis();
    match result {
        Ok(body) if body.is_empty() => println!("ok {elapsed}"),
        Ok(body) => print!("ok {elapsed}\n{body}"),
        Err(e) => println!("{} {elapsed}", outcome(&e)),
    }
}
