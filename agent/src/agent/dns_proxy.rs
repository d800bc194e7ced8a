//! The DNS proxy in the running agent: its options, its sockets (bound while the options
//! are checked, before the kernel is touched), the kernel maps it reads and writes
//! (datapath::dns), its liveness, and its metrics. The proxy itself is `dns::proxy`.
//!
//! Fail mode: the agent moves the proxy's liveness (DNS_PROXY) forward every second, by
//! LIVENESS_AHEAD. When the agent is down or stuck, the kernel stops redirecting within
//! that time and the workloads' queries go to their resolver directly: DNS keeps working,
//! nothing new is learnt (a connection to an address no earlier answer gave is refused),
//! and what was learnt stays in force until it expires (DNS_LEARNT is pinned). A
//! workload without name rules is never redirected, whatever the agent's state.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use stagewall_common::{DnsLearntKey, DnsLearntValue, PROTO_TCP, PROTO_UDP};
use tokio::sync::watch;

use super::ConfigError;
use crate::{
    compiler::Compiled,
    datapath::dns::{DnsMaps, ProxyLayout},
    dns::{
        learnt::{Changes, Learnt, LearntConfig, LearntStats},
        proxy::{
            Clients, LearntWriter, NameRules, Protocol, Proxy, ProxyConfig, ProxyListener,
            ProxyStats, WriteError, monotonic_ns,
        },
    },
    observe::{dns_metrics::DnsCounts, metrics::Metrics},
};

/// How far ahead of now the agent declares its proxy alive; it renews every second.
const LIVENESS_AHEAD: Duration = Duration::from_secs(3);
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// `stagewall run`'s options for egress by name.
#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// Serve egress by name (`fqdn` flows, `domainNames`): the address the agent's DNS
    /// proxy listens on, reachable from the workloads (repeatable: one IPv4, one IPv6).
    /// 127.0.0.1 for workloads in the host's network namespace; the node's address for
    /// workloads (pods) in their own (the DaemonSet sets STAGEWALL_DNS_PROXY to it).
    /// Workloads with name rules have their queries to the resolvers (--dns-resolver)
    /// redirected to it.
    #[arg(
        long = "dns-proxy",
        value_name = "ADDR",
        env = "STAGEWALL_DNS_PROXY",
        value_delimiter = ','
    )]
    pub proxy: Vec<IpAddr>,
    /// The proxy's first port: it listens on one port per resolver, from this one up.
    #[arg(long, default_value_t = 10053)]
    pub dns_proxy_port: u16,
    /// A resolver whose queries go through the proxy (ADDR or ADDR:PORT, repeatable).
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-resolver", value_name = "ADDR[:PORT]")]
    pub resolvers: Vec<String>,
    /// How long after an answer's TTL a new connection to its addresses is still allowed
    /// (clients that cache an answer a moment past its TTL). An open connection is never
    /// cut by expiry.
    #[arg(long, default_value = "5s")]
    pub dns_grace: humantime::Duration,
    /// Answers' TTLs are raised to at least this.
    #[arg(long, default_value = "0s")]
    pub dns_min_ttl: humantime::Duration,
    /// ... and lowered to at most this.
    #[arg(long, default_value = "1h")]
    pub dns_max_ttl: humantime::Duration,
    /// Learnt addresses one workload keeps; past it, expired ones go first, then the
    /// least recently answered.
    #[arg(long, default_value_t = 4096)]
    pub dns_learnt_per_workload: usize,
    /// Learnt addresses of all workloads of the node together (kernel limit 262,144).
    #[arg(long, default_value_t = 100_000)]
    pub dns_learnt_max: usize,
    /// Send the DNS of workloads whose egress flows are recorded (--record-flows) through
    /// the proxy too, though they have no name rules, so that their flow records and
    /// events name destinations and `advise` proposes names instead of addresses. Their
    /// DNS then depends on the proxy as named workloads' does (see the fail mode).
    #[arg(long)]
    pub dns_record_names: bool,
}

/// The proxy's sockets, bound, and where the kernel sends the workloads' queries.
pub struct BoundProxy {
    pub layout: ProxyLayout,
    /// --dns-record-names.
    pub record_names: bool,
    listeners: Vec<ProxyListener>,
    learnt: LearntConfig,
}

/// `ADDR` or `ADDR:PORT` (IPv6 with a port in brackets).
fn parse_resolver(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            ConfigError(format!(
                "--dns-resolver {text:?}: expected an address, or address:port"
            ))
        })
}

/// The nameservers of a resolv.conf.
fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn duration_ns(d: humantime::Duration) -> u64 {
    u64::try_from(Duration::from(d).as_nanos()).unwrap_or(u64::MAX)
}

/// Checks the options and binds the proxy's sockets (one UDP and one TCP per resolver);
/// None without --dns-proxy.
pub fn bind(args: &DnsArgs) -> Result<Option<BoundProxy>, ConfigError> {
    if args.proxy.is_empty() {
        return Ok(None);
    }
    let v4 = args.proxy.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = args.proxy.iter().find_map(|a| match a {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    if args.proxy.len() > usize::from(v4.is_some()) + usize::from(v6.is_some()) {
        return Err(ConfigError(
            "--dns-proxy: at most one IPv4 and one IPv6 address".into(),
        ));
    }
    let mut resolvers = args
        .resolvers
        .iter()
        .map(|r| parse_resolver(r))
        .collect::<Result<Vec<_>, _>>()?;
    if resolvers.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        resolvers = nameservers(&conf);
        if resolvers.is_empty() {
            return Err(ConfigError(
                "--dns-proxy: no --dns-resolver, and /etc/resolv.conf names no nameserver".into(),
            ));
        }
    }
    resolvers.dedup();
    // A resolver of a family the proxy has no address of is not redirected, and has no
    // port of the proxy's: every port in the kernel's range is one the proxy listens on.
    resolvers.retain(|r| {
        let served = match r {
            SocketAddr::V4(_) => v4.is_some(),
            SocketAddr::V6(_) => v6.is_some(),
        };
        if !served {
            log::warn!(
                "resolver {r}: no --dns-proxy address of its family; its queries are not redirected"
            );
        }
        served
    });
    if resolvers.is_empty() {
        return Err(ConfigError(
            "--dns-proxy: no resolver of the proxy's address families to serve".into(),
        ));
    }
    let layout = ProxyLayout {
        v4,
        v6,
        port_first: args.dns_proxy_port,
        resolvers,
    };
    let mut listeners = Vec::new();
    for (i, upstream) in layout.resolvers.iter().enumerate() {
        let ip = match upstream {
            SocketAddr::V4(_) => v4.map(IpAddr::V4),
            SocketAddr::V6(_) => v6.map(IpAddr::V6),
        };
        let Some(ip) = ip else {
            continue; // not kept above
        };
        let at = SocketAddr::new(ip, layout.port_of(i));
        let bound = |what: &str, e: std::io::Error| {
            ConfigError(format!(
                "the DNS proxy's {what} socket {at} (for resolver {upstream}): {e}"
            ))
        };
        let udp = UdpSocket::bind(at).map_err(|e| bound("UDP", e))?;
        let tcp = TcpListener::bind(at).map_err(|e| bound("TCP", e))?;
        listeners.push(ProxyListener {
            upstream: *upstream,
            udp,
            tcp,
        });
    }
    let learnt = LearntConfig {
        min_ttl_ns: duration_ns(args.dns_min_ttl),
        max_ttl_ns: duration_ns(args.dns_max_ttl),
        grace_ns: duration_ns(args.dns_grace),
        // An expired entry stays this long: to name denied destinations, and for an open
        // connection a policy change decides again (it is never cut by expiry).
        linger_ns: 3_600 * 1_000_000_000,
        max_per_endpoint: args.dns_learnt_per_workload,
        max_total: args
            .dns_learnt_max
            .min(stagewall_common::DNS_LEARNT_MAX as usize),
    };
    Ok(Some(BoundProxy {
        layout,
        record_names: args.dns_record_names,
        listeners,
        learnt,
    }))
}

/// The kernel's record of whose socket sent a query.
struct KernelClients(Arc<Mutex<DnsMaps>>);

impl Clients for KernelClients {
    fn endpoint_of(&self, protocol: Protocol, client: SocketAddr) -> Option<u32> {
        let protocol = match protocol {
            Protocol::Udp => PROTO_UDP,
            Protocol::Tcp => PROTO_TCP,
        };
        self.0.lock().ok()?.client(protocol, client)
    }
}

/// The policy in force's name rules.
struct PolicyNames(watch::Receiver<Arc<Compiled>>);

impl NameRules for PolicyNames {
    fn identities_for(&self, endpoint_id: u32, name: &str) -> Vec<u32> {
        self.0.borrow().names.identities_for(endpoint_id, name)
    }
}

/// DNS_LEARNT.
struct KernelLearnt(Arc<Mutex<DnsMaps>>);

fn write_error(e: impl std::error::Error + Send + Sync + 'static) -> WriteError {
    WriteError {
        source: Box::new(e),
    }
}

impl LearntWriter for KernelLearnt {
    fn write(&self, entries: &[(DnsLearntKey, DnsLearntValue)]) -> Result<(), WriteError> {
        let mut maps = self.0.lock().expect("DNS maps lock");
        maps.write_learnt(entries).map_err(write_error)
    }

    fn remove(&self, keys: &[DnsLearntKey]) -> Result<(), WriteError> {
        self.0.lock().expect("DNS maps lock").remove_learnt(keys);
        Ok(())
    }
}

/// Takes over what a previous agent learnt (the pinned DNS_LEARNT): kept until it
/// expires; what does not fit the bounds is removed.
fn adopt(maps: &Mutex<DnsMaps>, table: &Mutex<Learnt>) {
    let mut maps = maps.lock().expect("DNS maps lock");
    let mut changes = Changes::default();
    let mut table = table.lock().expect("learnt lock");
    let now = monotonic_ns();
    let entries = maps.learnt_entries();
    for (key, value) in &entries {
        table.adopt(now, key, value, &mut changes);
    }
    maps.remove_learnt(&changes.remove);
    if !entries.is_empty() {
        log::info!(
            "DNS: {} learnt addresses taken over from the previous agent",
            entries.len() - changes.remove.len()
        );
    }
}

/// Forgets the learnt addresses of workloads gone from the policy in force.
fn forget_departed(
    policy: &watch::Receiver<Arc<Compiled>>,
    table: &Mutex<Learnt>,
    maps: &Mutex<DnsMaps>,
) {
    let compiled = policy.borrow().clone();
    if compiled.generation == 0 {
        return; // no policy applied yet
    }
    let mut table = table.lock().expect("learnt lock");
    let mut gone = Vec::new();
    for id in table.endpoint_ids() {
        if compiled.endpoint_by_id(id).is_none() {
            gone.extend(table.forget_endpoint(id));
        }
    }
    drop(table);
    if !gone.is_empty() {
        maps.lock().expect("DNS maps lock").remove_learnt(&gone);
    }
}

/// The metrics' snapshot of the proxy's counts and its learnt table.
fn counts(stats: &ProxyStats, learnt: &LearntStats) -> DnsCounts {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    DnsCounts {
        queries_udp: n(&stats.queries_udp),
        queries_tcp: n(&stats.queries_tcp),
        answers: n(&stats.answers),
        learnt: n(&stats.learnt_addresses),
        evictions: learnt.evictions,
        expirations: learnt.expirations,
        errors: [
            ("unknown_client", n(&stats.unknown_clients)),
            ("kernel_write", n(&stats.write_failures)),
            ("upstream_timeout", n(&stats.upstream_timeouts)),
            ("upstream_error", n(&stats.upstream_errors)),
            ("mismatched_reply", n(&stats.mismatched_replies)),
            ("too_many_in_flight", n(&stats.dropped_in_flight)),
            ("malformed_query", n(&stats.dropped_malformed)),
            ("too_many_tcp", n(&stats.tcp_refused)),
        ],
        kernel_entries: learnt.kernel_entries as u64,
        entries: learnt.entries as u64,
        workload_max: learnt.max_per_endpoint as u64,
    }
}

/// The running proxy: the learnt addresses (to name denied destinations) and a way to
/// stop it.
pub struct RunningProxy {
    pub learnt: Arc<Mutex<Learnt>>,
    /// --dns-record-names.
    pub record_names: bool,
    maps: Arc<Mutex<DnsMaps>>,
    /// Set by `stop`: the liveness is not renewed any more.
    stopping: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningProxy {
    /// Stops redirecting at once (a clean stop: nothing waits for the liveness to run
    /// out), then stops the proxy.
    pub fn stop(mut self) {
        // Under the maps' lock, which the liveness thread holds from reading `stopping`
        // to writing: it cannot renew after this.
        if let Ok(mut maps) = self.maps.lock() {
            self.stopping.store(true, Ordering::Relaxed);
            if let Err(e) = maps.alive_until(0) {
                log::warn!("stopping the DNS redirection: {e}");
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes the proxy's layout into the kernel, starts serving on a thread of its own (its
/// own runtime: a busy event reader never delays an answer), and renews its liveness
/// every second while it serves.
pub fn start(
    bound: BoundProxy,
    maps: DnsMaps,
    policy: watch::Receiver<Arc<Compiled>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunningProxy> {
    let BoundProxy {
        layout,
        listeners,
        learnt,
        record_names,
    } = bound;
    let maps = Arc::new(Mutex::new(maps));
    maps.lock().expect("DNS maps lock").set_layout(&layout)?;
    let proxy = Proxy::new(
        ProxyConfig::default(),
        learnt,
        Arc::new(KernelClients(maps.clone())),
        Arc::new(PolicyNames(policy.clone())),
        Arc::new(KernelLearnt(maps.clone())),
    );
    let learnt_table = proxy.learnt();
    adopt(&maps, &learnt_table);
    let (stats, table) = (proxy.stats(), proxy.learnt());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (alive_tx, alive_rx) = std::sync::mpsc::channel::<()>();
    metrics
        .dns
        .set_capacity(learnt.max_total, learnt.max_per_endpoint);
    let proxy_thread = std::thread::Builder::new()
        .name("dns-proxy".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the DNS proxy's runtime");
            let served = runtime.block_on(proxy.serve(listeners, async {
                let _ = stop_rx.await;
            }));
            if let Err(e) = served {
                log::error!("the DNS proxy stopped: {}", crate::policy::error::Chain(&e));
            }
        })?;
    // Liveness and metrics on a thread of their own: renewed while the proxy's thread
    // runs, so a proxy that stopped stops the redirection within LIVENESS_AHEAD.
    let renew_maps = maps.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let stop_renewing = stopping.clone();
    std::thread::Builder::new()
        .name("dns-liveness".into())
        .spawn(move || {
            loop {
                let mut maps = renew_maps.lock().expect("DNS maps lock");
                let until = if proxy_thread.is_finished() || stop_renewing.load(Ordering::Relaxed) {
                    0
                } else {
                    monotonic_ns() + LIVENESS_AHEAD.as_nanos() as u64
                };
                if let Err(e) = maps.alive_until(until) {
                    log::error!("the DNS proxy's liveness: {e}");
                }
                drop(maps);
                let _ = alive_tx.send(());
                forget_departed(&policy, &table, &renew_maps);
                let learnt_stats = table.lock().expect("learnt lock").stats();
                metrics.dns.update(&counts(&stats, &learnt_stats));
                if until == 0 {
                    return;
                }
                std::thread::sleep(RENEW_EVERY);
            }
        })?;
    // Serving before the first policy: a workload's first query is redirected only once
    // the proxy is declared alive.
    let _ = alive_rx.recv_timeout(Duration::from_secs(5));
    log::info!(
        "DNS proxy on {:?}/{:?} from port {} for resolvers {:?}",
        layout.v4,
        layout.v6,
        layout.port_first,
        layout.resolvers
    );
    Ok(RunningProxy {
        learnt: learnt_table,
        record_names,
        maps,
        stopping,
        stop: Some(stop_tx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf_and_the_command_line() {
        let conf = "# comment\nnameserver 10.96.0.10\nsearch svc.cluster.local\nnameserver fe80::1%eth0\nnameserver  127.0.0.53\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_resolver("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("10.0.0.2:5353").unwrap(),
            "10.0.0.2:5353".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("fd00::53").unwrap(),
            "[fd00::53]:53".parse().unwrap()
        );
        let e = parse_resolver("dns.example").unwrap_err().to_string();
        assert!(
            e.contains("--dns-resolver \"dns.example\"") && e.contains("expected"),
            "{e}"
        );
    }
}
