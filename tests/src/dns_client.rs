//! The probe's DNS client, for the DNS benchmark: A queries written by hand (header, QNAME,
//! QTYPE A, QCLASS IN) on connected UDP sockets, so that a measurement costs no process
//! start and no resolver library.
//!
//! - [`round_trips`] (`stagewall-probe dns-rr`): one socket, one query at a time; the
//!   latency of each.
//! - [`load`] (`stagewall-probe dns-load`): several sockets, each with one query in flight,
//!   for a while or until every name of a list was answered; answers per second.
//!
//! An answer counts when its ID is the query's and its QR bit is set; one with an RCODE
//! other than NOERROR, or without answer records, counts as an error too. No answer within [`TIMEOUT`]: lost.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a query waits for its answer before it counts as lost.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// An A query for `name` with `id` (recursion desired).
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // Flags: RD. One question, no other records.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    // QTYPE A, QCLASS IN.
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

/// What came back for one query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An answer with RCODE NOERROR and records.
    Answer,
    /// An answer with another RCODE, or none.
    Error,
    Lost,
}

/// A connected UDP socket to the resolver with a fresh query ID each time.
struct Client {
    socket: UdpSocket,
    next_id: u16,
    buf: Vec<u8>,
}

impl Client {
    fn new(resolver: SocketAddr, seed: u16) -> std::io::Result<Client> {
        let bind: SocketAddr = if resolver.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(resolver)?;
        Ok(Client {
            socket,
            next_id: seed,
            buf: vec![0; 4096],
        })
    }

    /// Sends one query and waits for the answer with its ID (others are stale answers to
    /// queries given up on: skipped).
    fn ask(&mut self, name: &str) -> std::io::Result<Reply> {
        self.next_id = self.next_id.wrapping_mul(25_173).wrapping_add(13_849);
        let id = self.next_id;
        self.socket.send(&query(id, name))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Reply::Lost);
            }
            self.socket.set_read_timeout(Some(left))?;
            let n = match self.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Reply::Lost);
                }
                // An ICMP error from an earlier send; keep waiting for this one.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            let m = &self.buf[..n];
            if n < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
                continue;
            }
            // NOERROR with at least one answer record.
            return Ok(
                if m[3] & 0x0f == 0 && u16::from_be_bytes([m[6], m[7]]) > 0 {
                    Reply::Answer
                } else {
                    Reply::Error
                },
            );
        }
    }
}

/// A seed for query IDs that differs between runs and sockets.
fn seed(socket: usize) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos as u16) ^ (socket as u16).wrapping_mul(40_503)
}

/// `count` queries for `name`, one after another on one socket: `answered N lost N errors
/// N p50_us X p99_us X max_us X` (the latencies of the queries answered).
pub fn round_trips(resolver: SocketAddr, name: &str, count: usize) -> std::io::Result<String> {
    let mut client = Client::new(resolver, seed(0))?;
    let mut latencies = Vec::with_capacity(count);
    let (mut lost, mut errors) = (0, 0);
    for _ in 0..count {
        let t = Instant::now();
        match client.ask(name)? {
            Reply::Lost => lost += 1,
            reply => {
                latencies.push(t.elapsed().as_nanos() as u64);
                if reply == Reply::Error {
                    errors += 1;
                }
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: usize| {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[(latencies.len() * p / 100).min(latencies.len() - 1)] as f64 / 1000.0
    };
    Ok(format!(
        "answered {} lost {lost} errors {errors} p50_us {:.1} p99_us {:.1} max_us {:.1}\n",
        latencies.len(),
        pct(50),
        pct(99),
        pct(100)
    ))
}

/// How long [`load`] runs.
pub enum Until {
    /// For this long, the names asked round-robin.
    Elapsed(Duration),
    /// Until every name was answered once (each asked at most three times).
    AllAnswered,
}

/// `concurrency` sockets, each asking one name after another (so that many queries are in
/// flight), names taken in turn from `names`: `answered N lost N errors N seconds S
/// per_second R`.
pub fn load(
    resolver: SocketAddr,
    names: Arc<Vec<String>>,
    until: Until,
    concurrency: usize,
) -> std::io::Result<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (limit, all) = match until {
        Until::Elapsed(d) => (Some(d), false),
        Until::AllAnswered => (None, true),
    };
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let mut client = Client::new(resolver, seed(w + 1))?;
            let (names, next) = (names.clone(), next.clone());
            let (answered, lost, errors) = (answered.clone(), lost.clone(), errors.clone());
            Ok(std::thread::spawn(move || -> std::io::Result<()> {
                loop {
                    if limit.is_some_and(|l| start.elapsed() >= l) {
                        return Ok(());
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if all && i >= names.len() {
                        return Ok(());
                    }
                    let name = &names[i % names.len()];
                    let tries = if all { 3 } else { 1 };
                    for _ in 0..tries {
                        match client.ask(name)? {
                            Reply::Lost => {
                                lost.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Reply::Error => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Reply::Answer => {}
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for w in workers {
        w.join().expect("a load worker panicked")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let answered = answered.load(Ordering::Relaxed);
    Ok(format!(
        "answered {answered} lost {} errors {} seconds {seconds:.2} per_second {:.0}\n",
        lost.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        answered as f64 / seconds
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_header_labels_type_and_class() {
        assert_eq!(
            query(0x1234, "a.bc."),
            [
                0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0,
                1
            ]
        );
    }
}
