//! A tiny network probe the integration tests run inside their namespaces and cgroups.
//!
//!   stagewall-probe serve --tcp 9090,9091 --udp 9090      echo servers; prints "ready"
//!   stagewall-probe tcp ADDR PORT TIMEOUT_MS              connect, send, await the echo
//!   stagewall-probe udp ADDR PORT TIMEOUT_MS [COUNT]      send COUNT datagrams, await echoes
//!   stagewall-probe get ADDR:PORT PATH TIMEOUT_MS         HTTP GET; prints status and body
//!   stagewall-probe flood ADDR PORT MILLIS SOCKETS       UDP from SOCKETS source ports
//!                                                          for MILLIS; prints `sent N`
//!   stagewall-probe matrix TIMEOUT_MS PROTO/ADDR/PORT...   all at once, one line each:
//!                                                          `PROTO/ADDR/PORT OUTCOME MS`
//!
//! Probes print one outcome word and the elapsed milliseconds: `ok 2`, `eperm 0`,
//! `timeout 1000`, `refused 1`, `error:<what> 3`. They exit 0 whatever the outcome.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn outcome(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => "eperm".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::ConnectionRefused => "refused".into(),
        _ => format!("error:{}", e.kind()).replace(' ', "_"),
    }
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Result<(), std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    Ok(())
}

fn udp(addr: SocketAddr, timeout: Duration, count: u32) -> Result<(), std::io::Error> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    // Unconnected sends: each goes through cgroup/sendmsg4|6.
    for _ in 0..count {
        s.send_to(b"ping", addr)?;
    }
    let mut buf = [0u8; 16];
    for _ in 0..count {
        s.recv_from(&mut buf)?;
    }
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

fn serve(tcp_ports: &[u16], udp_ports: &[u16]) -> ! {
    let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let mut threads = Vec::new();
    for &port in tcp_ports {
        // [::] with IPV6_V6ONLY off (the Linux default) accepts IPv4 too.
        let l = TcpListener::bind(SocketAddr::new(any, port)).expect("bind tcp");
        threads.push(std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 64];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
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
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
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
                    let result = match proto {
                        "tcp" => tcp(addr, timeout),
                        _ => udp(addr, timeout, 1),
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: stagewall-probe serve --tcp P,.. --udp P,.. | tcp ADDR PORT MS | udp ADDR PORT MS [COUNT] | get ADDR:PORT PATH MS | flood ADDR PORT MS SOCKETS | matrix MS PROTO/ADDR/PORT...";
    let start = Instant::now();
    let ms = |s: &String| Duration::from_millis(s.parse().expect("milliseconds"));
    let sock = |a: &String, p: &String| {
        SocketAddr::new(a.parse().expect("address"), p.parse().expect("port"))
    };
    let result = match args.first().map(String::as_str) {
        Some("serve") => {
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
            };
            serve(&ports(flag("--tcp")), &ports(flag("--udp")))
        }
        Some("tcp") if args.len() == 4 => {
            tcp(sock(&args[1], &args[2]), ms(&args[3])).map(|_| String::new())
        }
        Some("udp") if args.len() >= 4 => {
            let count = args.get(4).map_or(1, |c| c.parse().expect("count"));
            udp(sock(&args[1], &args[2]), ms(&args[3]), count).map(|_| String::new())
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
        Some("matrix") if args.len() >= 2 => {
            matrix(ms(&args[1]), &args[2..]);
            return;
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
