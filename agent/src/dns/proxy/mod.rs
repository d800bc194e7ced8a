//! The DNS proxy: queries the kernel redirected from workloads, forwarded to the resolver
//! they called; addresses learnt from each answer and written to the kernel before the
//! answer goes back (so the workload's first connection already finds them).
//!
//! The proxy is given its listening sockets (the agent binds them, maybe in another
//! network namespace); each stands for one resolver. A reply goes back from the listening
//! socket (the kernel's recvmsg hook shows it to the workload as the resolver's). What it
//! needs from the rest of the agent comes through three traits: `Clients` (whose query
//! this is, from the kernel's DNS_CLIENTS), `NameRules` (the workload's name identities
//! for a name) and `LearntWriter` (DNS_LEARNT). Everything is bounded: UDP queries in
//! flight, TCP connections, message sizes, the learnt table; what is dropped is counted
//! in `ProxyStats`.

mod stats;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use stagewall_common::{DnsLearntKey, DnsLearntValue};
use tokio::{sync::watch, task::JoinSet};

pub use stats::{LATENCY_BOUNDS_US, LatencyHistogram, ProxyStats};

use super::{
    learnt::{Changes, Learnt, LearntConfig},
    wire::{self, Message},
};
use crate::policy::error::Chain;
use stats::{add, inc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

/// Whose query the proxy holds: the kernel records the workload of each socket it
/// redirects (DNS_CLIENTS).
pub trait Clients: Send + Sync {
    /// The endpoint id of the workload whose socket `client` sent a query; None when the
    /// kernel recorded none (the query is forwarded, nothing is learnt).
    fn endpoint_of(&self, protocol: Protocol, client: SocketAddr) -> Option<u32>;
}

/// What a workload's egress rules allow by name.
pub trait NameRules: Send + Sync {
    /// The name identities of the workload's name patterns that match `name` (canonical:
    /// lower case, no trailing dot, labels of printable ASCII); empty when none does.
    fn identities_for(&self, endpoint_id: u32, name: &str) -> Vec<u32>;
}

/// The kernel's DNS_LEARNT. Called on the proxy's tasks with the answer held, so it must
/// be quick (map updates).
pub trait LearntWriter: Send + Sync {
    fn write(&self, entries: &[(DnsLearntKey, DnsLearntValue)]) -> Result<(), WriteError>;
    /// Removing a key the map does not hold is no error.
    fn remove(&self, keys: &[DnsLearntKey]) -> Result<(), WriteError>;
}

/// A failed DNS_LEARNT write or removal; the source says why.
#[derive(Debug, thiserror::Error)]
#[error("writing the learnt DNS addresses")]
pub struct WriteError {
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the DNS proxy's {protocol:?} socket for resolver {upstream}")]
    Listener {
        protocol: Protocol,
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One resolver the workloads call, and the proxy's sockets for it (bound, and for TCP
/// listening, by the agent).
#[derive(Debug)]
pub struct ProxyListener {
    pub upstream: SocketAddr,
    pub udp: std::net::UdpSocket,
    pub tcp: std::net::TcpListener,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long the resolver has to answer (the workload retries after its own timeout).
    pub upstream_timeout: Duration,
    /// UDP queries waiting for the resolver; more are dropped.
    pub udp_in_flight_max: usize,
    /// ... of them from one client address (a workload's, or the node's for workloads in
    /// its network namespace): one workload flooding a slow resolver cannot take every
    /// slot, and the others' DNS goes on.
    pub udp_in_flight_per_client: usize,
    /// Open TCP connections from workloads; more are closed at once.
    pub tcp_connections_max: usize,
    /// A TCP connection with no query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// How often expired learnt addresses are removed.
    pub gc_interval: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream_timeout: Duration::from_secs(5),
            // Each waits with a 64 KiB reply buffer: 64 MiB at most.
            udp_in_flight_max: 1024,
            udp_in_flight_per_client: 128,
            tcp_connections_max: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            gc_interval: Duration::from_secs(1),
        }
    }
}

/// CLOCK_MONOTONIC in ns: the kernel's bpf_ktime_get_ns, which DNS_LEARNT's expiry is in.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What the proxy's tasks share.
struct Shared {
    config: ProxyConfig,
    clients: Arc<dyn Clients>,
    rules: Arc<dyn NameRules>,
    writer: Arc<dyn LearntWriter>,
    learnt: Arc<Mutex<Learnt>>,
    stats: Arc<ProxyStats>,
    /// LearntConfig::max_ttl_ns in seconds: answers' TTLs are capped to it.
    max_ttl_s: u32,
}

/// What a reply from the resolver is to the query sent.
// Moved a few times per query: not worth a Box (an allocation) for the inline names.
#[allow(clippy::large_enum_variant)]
enum Reply {
    /// Another ID or question: stale or forged, dropped.
    NotOurs,
    /// Its ID, but the query or reply could not be read: forwarded, nothing learnt.
    Unread,
    Read(Message),
}

/// The query a reply must answer: parsed when it could be (else its ID only).
struct Query {
    id: u16,
    parsed: Option<Message>,
}

impl Query {
    fn new(raw: &[u8]) -> Query {
        Query {
            id: raw.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
            parsed: Message::parse(raw).ok(),
        }
    }
}

fn lock(learnt: &Mutex<Learnt>) -> MutexGuard<'_, Learnt> {
    // A panic while holding the lock leaves the table consistent enough to go on with.
    learnt.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Whether `reply` is the resolver's answer to `query`: its ID and, where both could
    /// be read, its question. Gives the reply read, when it could be.
    fn check(&self, query: &Query, reply: &[u8]) -> Reply {
        if reply.len() < wire::HEADER_LEN || u16::from_be_bytes([reply[0], reply[1]]) != query.id {
            return Reply::NotOurs;
        }
        match (&query.parsed, Message::parse(reply)) {
            (Some(q), Ok(r)) if wire::answers_query(q, &r) => Reply::Read(r),
            (Some(_), Ok(_)) => Reply::NotOurs,
            // A query or reply the proxy cannot read: the workload's own business.
            _ => Reply::Unread,
        }
    }

    /// Learns from the answer `reply` (checked) for `endpoint`'s query: the kernel is
    /// written before this returns, and `raw`'s TTLs capped to what stays learnt.
    fn on_answer(&self, endpoint: Option<u32>, reply: &Reply, raw: &mut [u8]) {
        match (endpoint, reply) {
            (Some(endpoint), Reply::Read(msg)) if self.learn(endpoint, msg) => {
                // No client may cache an address longer than it stays learnt. The reply
                // parsed, so this cannot fail; if it did, the TTLs would stay as they are.
                let _ = wire::cap_ttls(raw, self.max_ttl_s);
            }
            _ => inc(&self.stats.not_learnt),
        }
    }

    /// Learns the addresses of a reply for a workload; true when it was learnable.
    fn learn(&self, endpoint: u32, reply: &Message) -> bool {
        let Some(resolution) = wire::resolve_chain(reply) else {
            return false;
        };
        if resolution.addrs.is_empty() {
            return true;
        }
        let mut identities = Vec::new();
        for name in &resolution.names {
            for id in self.rules.identities_for(endpoint, name) {
                if !identities.contains(&id) {
                    identities.push(id);
                }
            }
        }
        let mut changes = Changes::default();
        lock(&self.learnt).learn(
            monotonic_ns(),
            endpoint,
            &resolution.names[0],
            &identities,
            &resolution.addrs,
            &mut changes,
        );
        self.apply(&changes);
        true
    }

    /// Writes `changes` to the kernel: removals first (they make room).
    fn apply(&self, changes: &Changes) {
        if !changes.remove.is_empty()
            && let Err(e) = self.writer.remove(&changes.remove)
        {
            inc(&self.stats.write_failures);
            log::warn!("DNS proxy: {}", Chain(&e));
        }
        if !changes.write.is_empty() {
            match self.writer.write(&changes.write) {
                Ok(()) => add(&self.stats.learnt_addresses, changes.write.len()),
                Err(e) => {
                    inc(&self.stats.write_failures);
                    log::warn!("DNS proxy: {}", Chain(&e));
                }
            }
        }
    }

    /// Records the latency the proxy added: its time since `received` until the answer is
    /// ready to go out, less `upstream`.
    fn record_latency(&self, received: Instant, upstream: Duration) {
        let added = received.elapsed().saturating_sub(upstream);
        self.stats
            .latency
            .record(u64::try_from(added.as_micros()).unwrap_or(u64::MAX));
    }

    /// Removes the learnt addresses past their expiry and linger.
    fn expire(&self) {
        let gone = lock(&self.learnt).expire(monotonic_ns());
        if !gone.is_empty() {
            add(&self.stats.expired, gone.len());
            self.apply(&Changes {
                write: Vec::new(),
                remove: gone,
            });
        }
    }
}

/// The DNS proxy (module doc).
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        learnt: LearntConfig,
        clients: Arc<dyn Clients>,
        rules: Arc<dyn NameRules>,
        writer: Arc<dyn LearntWriter>,
    ) -> Proxy {
        Proxy {
            shared: Arc::new(Shared {
                config,
                clients,
                rules,
                writer,
                learnt: Arc::new(Mutex::new(Learnt::new(learnt))),
                stats: Arc::new(ProxyStats::default()),
                max_ttl_s: u32::try_from(learnt.max_ttl_ns / 1_000_000_000).unwrap_or(u32::MAX),
            }),
        }
    }

    /// The learnt addresses: to name a denied destination (`Learnt::name_of`) and for
    /// advise (`Learnt::looked_up`). Hold the lock briefly: every answer takes it.
    pub fn learnt(&self) -> Arc<Mutex<Learnt>> {
        self.shared.learnt.clone()
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        self.shared.stats.clone()
    }

    /// Serves `listeners` until `shutdown` completes; then stops every task (queries in
    /// flight are dropped: the workloads retry). Fails, before serving, only when a
    /// socket cannot be used.
    pub async fn serve(
        &self,
        listeners: Vec<ProxyListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        let mut sockets = Vec::with_capacity(listeners.len());
        for l in listeners {
            let error = |protocol| {
                move |source| ProxyError::Listener {
                    protocol,
                    upstream: l.upstream,
                    source,
                }
            };
            l.udp.set_nonblocking(true).map_err(error(Protocol::Udp))?;
            l.tcp.set_nonblocking(true).map_err(error(Protocol::Tcp))?;
            let udp = tokio::net::UdpSocket::from_std(l.udp).map_err(error(Protocol::Udp))?;
            let tcp = tokio::net::TcpListener::from_std(l.tcp).map_err(error(Protocol::Tcp))?;
            sockets.push((l.upstream, udp, tcp));
        }
        let (stop, on_stop) = watch::channel(false);
        let udp_slots = Arc::new(tokio::sync::Semaphore::new(
            self.shared.config.udp_in_flight_max,
        ));
        let tcp_slots = Arc::new(tokio::sync::Semaphore::new(
            self.shared.config.tcp_connections_max,
        ));
        let mut tasks = JoinSet::new();
        for (upstream, udp, tcp) in sockets {
            let shared = self.shared.clone();
            let (slots, rx) = (udp_slots.clone(), on_stop.clone());
            tasks.spawn(udp::serve(shared, Arc::new(udp), upstream, slots, rx));
            let shared = self.shared.clone();
            let (slots, rx) = (tcp_slots.clone(), on_stop.clone());
            tasks.spawn(tcp::serve(shared, tcp, upstream, slots, rx));
        }
        let shared = self.shared.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(shared.config.gc_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                shared.expire();
            }
        });
        shutdown.await;
        let _ = stop.send(true);
        tasks.shutdown().await;
        Ok(())
    }
}

/// Completes when the proxy is told to stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error: the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}
