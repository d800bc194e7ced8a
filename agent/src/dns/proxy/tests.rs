//! The proxy with real sockets on 127.0.0.1. The resolver here is a stand-in written for
//! these unit tests only (it answers from a closure); the tests against a real resolver
//! are the privileged integration tests.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::Ordering::Relaxed,
        mpsc::{Receiver, Sender, channel},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::oneshot,
};

use super::*;
use crate::dns::{
    learnt::{LearntConfig, learnt_key},
    wire::{FLAG_QR, FLAG_TC, Message, ResponseBuilder, TYPE_A, TYPE_AAAA, query},
};

const EP: u32 = 7;
const ID_PYPI: u32 = 0x8000_0001;
const ID_HOSTED: u32 = 0x8000_0002;

fn v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
}

/// Every client is workload EP, unless `unknown`.
struct FakeClients {
    unknown: bool,
}
impl Clients for FakeClients {
    fn endpoint_of(&self, _: Protocol, client: SocketAddr) -> Option<u32> {
        assert!(client.ip().is_loopback());
        (!self.unknown).then_some(EP)
    }
}

/// EP allows pypi.org and *.pythonhosted.org.
struct FakeRules;
impl NameRules for FakeRules {
    fn identities_for(&self, endpoint: u32, name: &str) -> Vec<u32> {
        match (endpoint, name) {
            (EP, "pypi.org") => vec![ID_PYPI],
            (EP, n) if n.ends_with(".pythonhosted.org") => vec![ID_HOSTED],
            _ => vec![],
        }
    }
}

/// Records what it is given; with a gate, tells `entered` and waits for `release`.
#[derive(Default)]
struct FakeWriter {
    written: Mutex<Vec<(DnsLearntKey, DnsLearntValue)>>,
    removed: Mutex<Vec<DnsLearntKey>>,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    fail: bool,
}
impl LearntWriter for FakeWriter {
    fn write(&self, entries: &[(DnsLearntKey, DnsLearntValue)]) -> Result<(), WriteError> {
        if let Some((entered, release)) = &*self.gate.lock().unwrap() {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        if self.fail {
            return Err(WriteError {
                source: "the map is full".into(),
            });
        }
        self.written.lock().unwrap().extend_from_slice(entries);
        Ok(())
    }
    fn remove(&self, keys: &[DnsLearntKey]) -> Result<(), WriteError> {
        self.removed.lock().unwrap().extend_from_slice(keys);
        Ok(())
    }
}

/// The stand-in resolver's answers: name -> addresses (TTL 300).
type Answer = Arc<dyn Fn(&Message) -> Vec<Vec<u8>> + Send + Sync>;

fn answer_from(table: &'static [(&'static str, &'static [IpAddr])]) -> Answer {
    Arc::new(move |q: &Message| {
        let question = q.question.unwrap();
        let name = question.name.as_str();
        let mut b = ResponseBuilder::new(q.id, name, question.qtype).unwrap();
        if name == "files.pythonhosted.org" {
            b = b.cname(name, 600, "dualstack.python.map.example").unwrap();
        }
        for (n, addrs) in table {
            if *n == name {
                for a in *addrs {
                    let owner = if name == "files.pythonhosted.org" {
                        "dualstack.python.map.example"
                    } else {
                        name
                    };
                    b = b.addr(owner, 300, *a).unwrap();
                }
            }
        }
        vec![b.build()]
    })
}

/// Starts the stand-in resolver (UDP and TCP on one port); gives its address.
async fn resolver(answer: Answer) -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let a = answer.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let q = Message::parse(&buf[..n]).unwrap();
            for reply in a(&q) {
                udp.send_to(&reply, from).await.unwrap();
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let a = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut p = [0u8; 2];
                    if s.read_exact(&mut p).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(p))];
                    s.read_exact(&mut q).await.unwrap();
                    for reply in a(&Message::parse(&q).unwrap()) {
                        s.write_all(&(reply.len() as u16).to_be_bytes())
                            .await
                            .unwrap();
                        s.write_all(&reply).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

struct Running {
    proxy: Arc<Proxy>,
    writer: Arc<FakeWriter>,
    udp: SocketAddr,
    tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), ProxyError>>,
}

async fn start(
    upstream: SocketAddr,
    writer: FakeWriter,
    unknown: bool,
    config: ProxyConfig,
    learnt: LearntConfig,
) -> Running {
    let writer = Arc::new(writer);
    let proxy = Arc::new(Proxy::new(
        config,
        learnt,
        Arc::new(FakeClients { unknown }),
        Arc::new(FakeRules),
        writer.clone(),
    ));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let p = proxy.clone();
    let done = tokio::spawn(async move {
        let listeners = vec![ProxyListener { upstream, udp, tcp }];
        p.serve(listeners, async {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        proxy,
        writer,
        udp: udp_addr,
        tcp: tcp_addr,
        stop: Some(stop),
        done,
    }
}

async fn started(answer: Answer) -> Running {
    let upstream = resolver(answer).await;
    start(
        upstream,
        FakeWriter::default(),
        false,
        ProxyConfig::default(),
        LearntConfig::default(),
    )
    .await
}

/// Asks the proxy over UDP; None when no reply comes within `wait`.
async fn ask_udp(
    proxy: SocketAddr,
    id: u16,
    name: &str,
    qtype: u16,
    wait: Duration,
) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query(id, name, qtype).unwrap(), proxy)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(from, proxy, "the reply comes from the proxy's socket");
    Some(Message::parse(&buf[..n]).unwrap())
}

const WAIT: Duration = Duration::from_secs(5);

fn written(r: &Running) -> Vec<(DnsLearntKey, Vec<u32>)> {
    r.writer
        .written
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                *k,
                v.identities
                    .iter()
                    .copied()
                    .take_while(|&i| i != 0)
                    .collect(),
            )
        })
        .collect()
}

static PYPI: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
];
static HOSTED: [IpAddr; 1] = [IpAddr::V6(Ipv6Addr::LOCALHOST)];
static EVIL: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))];
static TABLE: [(&str, &[IpAddr]); 3] = [
    ("pypi.org", &PYPI),
    ("files.pythonhosted.org", &HOSTED),
    ("evil.example", &EVIL),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_answer_is_held_until_the_kernel_is_written() {
    let upstream = resolver(answer_from(&TABLE)).await;
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let writer = FakeWriter {
        gate: Mutex::new(Some((entered_tx, release_rx))),
        ..FakeWriter::default()
    };
    let r = start(
        upstream,
        writer,
        false,
        ProxyConfig::default(),
        LearntConfig::default(),
    )
    .await;
    let client = tokio::spawn(ask_udp(r.udp, 1, "pypi.org", TYPE_A, WAIT));
    tokio::task::spawn_blocking(move || entered.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();
    // The writer is inside `write`: no answer may have gone out yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !client.is_finished(),
        "the answer went out before the write returned"
    );
    assert_eq!(r.proxy.stats().answers.load(Relaxed), 0);
    release.send(()).unwrap();
    let reply = client.await.unwrap().expect("the answer after the write");
    assert_eq!(reply.answers.len(), 2);
    assert_eq!(
        written(&r),
        [
            (learnt_key(EP, v4(1)), vec![ID_PYPI]),
            (learnt_key(EP, v4(2)), vec![ID_PYPI])
        ]
    );
    let stats = r.proxy.stats();
    assert_eq!(stats.learnt_addresses.load(Relaxed), 2);
    assert_eq!(stats.latency.cumulative().0[LATENCY_BOUNDS_US.len()], 1);
}

#[tokio::test]
async fn a_cname_chain_is_learnt_for_the_names_it_passes() {
    let r = started(answer_from(&TABLE)).await;
    let reply = ask_udp(r.udp, 2, "FILES.pythonhosted.org", TYPE_AAAA, WAIT)
        .await
        .unwrap();
    assert_eq!(reply.answers.len(), 2);
    let localhost = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(written(&r), [(learnt_key(EP, localhost), vec![ID_HOSTED])]);
    let learnt = r.proxy.learnt();
    let learnt = learnt.lock().unwrap();
    assert_eq!(
        learnt.name_of(EP, localhost),
        Some("files.pythonhosted.org")
    );
}

#[tokio::test]
async fn names_no_rule_allows_are_named_but_not_written() {
    let r = started(answer_from(&TABLE)).await;
    assert!(
        ask_udp(r.udp, 3, "evil.example", TYPE_A, WAIT)
            .await
            .is_some()
    );
    assert!(written(&r).is_empty());
    let learnt = r.proxy.learnt();
    assert_eq!(
        learnt.lock().unwrap().name_of(EP, EVIL[0]),
        Some("evil.example")
    );
    assert_eq!(
        learnt.lock().unwrap().looked_up(EP).collect::<Vec<_>>(),
        ["evil.example"]
    );
}

#[tokio::test]
async fn tcp_queries_are_learnt_one_after_another_on_a_connection() {
    let r = started(answer_from(&TABLE)).await;
    let mut s = TcpStream::connect(r.tcp).await.unwrap();
    for (id, name, qtype) in [
        (4, "pypi.org", TYPE_A),
        (5, "files.pythonhosted.org", TYPE_AAAA),
    ] {
        let q = query(id, name, qtype).unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
    }
    for id in [4, 5] {
        let mut p = [0u8; 2];
        s.read_exact(&mut p).await.unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(p))];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(Message::parse(&reply).unwrap().id, id);
    }
    assert_eq!(written(&r).len(), 3);
    assert_eq!(r.proxy.stats().queries_tcp.load(Relaxed), 2);
}

#[tokio::test]
async fn an_unknown_client_is_answered_without_learning() {
    let upstream = resolver(answer_from(&TABLE)).await;
    let r = start(
        upstream,
        FakeWriter::default(),
        true,
        ProxyConfig::default(),
        LearntConfig::default(),
    )
    .await;
    assert!(ask_udp(r.udp, 6, "pypi.org", TYPE_A, WAIT).await.is_some());
    assert!(written(&r).is_empty());
    let stats = r.proxy.stats();
    assert_eq!(stats.unknown_clients.load(Relaxed), 1);
    assert_eq!(stats.not_learnt.load(Relaxed), 1);
}

#[tokio::test]
async fn replies_with_another_id_or_question_are_dropped() {
    let table = answer_from(&TABLE);
    let r = started(Arc::new(move |q: &Message| {
        let mut forged = table(q).remove(0);
        forged[0] ^= 0xff; // another ID
        let other = ResponseBuilder::new(q.id, "evil.example", TYPE_A)
            .unwrap()
            .addr("evil.example", 300, EVIL[0])
            .unwrap()
            .build();
        vec![forged, other, table(q).remove(0)]
    }))
    .await;
    let reply = ask_udp(r.udp, 7, "pypi.org", TYPE_A, WAIT).await.unwrap();
    assert_eq!(reply.question.unwrap().name.as_str(), "pypi.org");
    assert_eq!(reply.id, 7);
    assert_eq!(r.proxy.stats().mismatched_replies.load(Relaxed), 2);
    assert_eq!(written(&r).len(), 2, "only the real answer is learnt");
}

#[tokio::test]
async fn a_silent_resolver_times_out() {
    let upstream = resolver(Arc::new(|_: &Message| vec![])).await;
    let config = ProxyConfig {
        upstream_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let r = start(
        upstream,
        FakeWriter::default(),
        false,
        config,
        LearntConfig::default(),
    )
    .await;
    assert!(
        ask_udp(r.udp, 8, "pypi.org", TYPE_A, Duration::from_millis(600))
            .await
            .is_none()
    );
    assert_eq!(r.proxy.stats().upstream_timeouts.load(Relaxed), 1);
}

#[tokio::test]
async fn truncated_answers_are_forwarded_and_not_learnt() {
    let r = started(Arc::new(|q: &Message| {
        let b = ResponseBuilder::new(q.id, "pypi.org", TYPE_A).unwrap();
        vec![
            b.flags(FLAG_QR | FLAG_TC)
                .addr("pypi.org", 300, v4(1))
                .unwrap()
                .build(),
        ]
    }))
    .await;
    let reply = ask_udp(r.udp, 9, "pypi.org", TYPE_A, WAIT).await.unwrap();
    assert!(reply.is_truncated());
    assert!(written(&r).is_empty());
}

#[tokio::test]
async fn a_failed_write_still_answers_and_is_counted() {
    let upstream = resolver(answer_from(&TABLE)).await;
    let writer = FakeWriter {
        fail: true,
        ..FakeWriter::default()
    };
    let r = start(
        upstream,
        writer,
        false,
        ProxyConfig::default(),
        LearntConfig::default(),
    )
    .await;
    assert!(ask_udp(r.udp, 10, "pypi.org", TYPE_A, WAIT).await.is_some());
    assert_eq!(r.proxy.stats().write_failures.load(Relaxed), 1);
}

#[tokio::test]
async fn long_ttls_are_capped_to_what_stays_learnt() {
    let upstream = resolver(answer_from(&TABLE)).await;
    let learnt = LearntConfig {
        max_ttl_ns: 120_000_000_000,
        ..LearntConfig::default()
    };
    let r = start(
        upstream,
        FakeWriter::default(),
        false,
        ProxyConfig::default(),
        learnt,
    )
    .await;
    let reply = ask_udp(r.udp, 11, "pypi.org", TYPE_A, WAIT).await.unwrap();
    assert!(reply.answers.iter().all(|a| a.ttl == 120), "{reply:?}");
}

#[tokio::test]
async fn rotating_answers_stay_within_the_bounds() {
    let next = Arc::new(Mutex::new(0u32));
    let upstream = resolver(Arc::new(move |q: &Message| {
        let mut n = next.lock().unwrap();
        *n += 1;
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + *n));
        vec![
            ResponseBuilder::new(q.id, "pypi.org", TYPE_A)
                .unwrap()
                .addr("pypi.org", 1, addr)
                .unwrap()
                .build(),
        ]
    }))
    .await;
    let learnt = LearntConfig {
        max_per_endpoint: 16,
        ..LearntConfig::default()
    };
    let r = start(
        upstream,
        FakeWriter::default(),
        false,
        ProxyConfig::default(),
        learnt,
    )
    .await;
    for id in 0..100 {
        assert!(ask_udp(r.udp, id, "pypi.org", TYPE_A, WAIT).await.is_some());
    }
    let stats = r.proxy.learnt().lock().unwrap().stats();
    assert_eq!((stats.entries, stats.evictions), (16, 84));
    assert_eq!(r.writer.removed.lock().unwrap().len(), 84);
    assert_eq!(written(&r).len(), 100);
}

#[tokio::test]
async fn the_proxy_stops_when_told() {
    let mut r = started(answer_from(&TABLE)).await;
    assert!(ask_udp(r.udp, 12, "pypi.org", TYPE_A, WAIT).await.is_some());
    r.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(WAIT, &mut r.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        ask_udp(r.udp, 13, "pypi.org", TYPE_A, Duration::from_millis(200))
            .await
            .is_none()
    );
}
