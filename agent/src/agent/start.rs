//! Start: load the kernel programs (taking over what a previous agent pinned), give the
//! workloads the endpoint ids they had, and put the first policy in force.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, RingBuf};
use stagewall_common::{EventLimit, FLOWS_MAX, FlowKey, FlowValue};
use tokio::sync::watch;

use super::{
    Agent, ConfigError, FirstPolicy, Options, Records,
    auto_quarantine::AutoQuarantine,
    dns_proxy::{self, BoundProxy, RunningProxy},
};
use crate::{
    compiler::{self, Compiled},
    datapath::{
        host,
        loader::Loader,
        pins::{self, PinLock, Pins},
        quarantine::QuarantineStore,
    },
    dns::proxy::monotonic_ns,
    observe::metrics::Metrics,
    rollout::flow_records::FlowRecords,
};

/// How often the flow table's entries are counted (a walk over the whole map).
const COUNT_FLOWS_EVERY: Duration = Duration::from_secs(10);

/// Counts the flow table's entries now and then, on a thread of its own: the walk is a
/// syscall per entry and must not stall the event reader.
fn count_flows(flows: HashMap<MapData, FlowKey, FlowValue>, metrics: Arc<Metrics>) {
    std::thread::spawn(move || {
        loop {
            metrics.set_map_usage("flows", flows.keys().flatten().count(), FLOWS_MAX);
            std::thread::sleep(COUNT_FLOWS_EVERY);
        }
    });
}

/// How often the suppressed events of flows with violations are counted: a burst shows
/// whole in the violations metric this long after it.
const COUNT_SUPPRESSED_EVERY: Duration = Duration::from_secs(1);

/// Counts the violations the kernel's per-flow event limit suppressed, on a thread of its
/// own (a syscall per flow followed).
fn count_suppressed(limits: HashMap<MapData, FlowKey, EventLimit>, metrics: Arc<Metrics>) {
    std::thread::spawn(move || {
        loop {
            metrics.flush_suppressed(monotonic_ns(), |key| limits.get(key, 0).ok());
            std::thread::sleep(COUNT_SUPPRESSED_EVERY);
        }
    });
}

/// The flow records' gauges: how many are kept, and the eviction total. The total is kept
/// in the records file (so across restarts): the counter takes what it has not counted
/// yet. Called at start, before /metrics is served, so that a scrape never sees the
/// total at 0 after a restart (a reset) and jump back.
pub(super) fn count_records(records: &FlowRecords, metrics: &Metrics) {
    metrics.flow_records.set(records.len() as i64);
    let evicted = &metrics.flow_records_evicted;
    evicted.inc_by(records.evicted().saturating_sub(evicted.get()));
}

/// The agent with its first policy in force, and the kernel's outputs for the tasks.
pub(super) struct Started {
    pub agent: Agent,
    /// The kernel's verdict events.
    pub events: RingBuf<MapData>,
    /// The kernel programs' own log, when on.
    pub logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The policy in force, for the event reader to name events.
    pub policy: watch::Receiver<Arc<Compiled>>,
    /// The DNS proxy, serving (with --dns-proxy).
    pub dns: Option<RunningProxy>,
}

pub(super) fn start(
    options: Options,
    first: FirstPolicy,
    records: Option<Records>,
    pins_lock: Option<PinLock>,
    dns_proxy: Option<BoundProxy>,
) -> anyhow::Result<Started> {
    let FirstPolicy {
        source,
        set,
        compiled,
        mut compile_cache,
    } = first;
    host::ensure_bpffs()?;
    let pins_lock = match pins_lock {
        Some(lock) => lock,
        None => pins::lock(&options.bpffs_dir)?,
    };
    let (loader, readers) = Loader::load(
        &options.cgroup_root,
        options.ebpf_log_level,
        Pins::new(&options.bpffs_dir),
        options.guard_cgroups.clone(),
        options.own_cgroup.clone(),
    )?;
    log::info!(
        "kernel programs loaded; cgroup2 at {}",
        options.cgroup_root.display()
    );
    // Workloads keep the endpoint ids a previous agent gave them (read from the pinned
    // maps): their flows, event limits and statistics are keyed by them.
    let adopted = loader.adopted_endpoint_ids(&compiled);
    let compiled = if adopted.is_empty() {
        compiled
    } else {
        compiler::compile_with(&set, &adopted, &mut compile_cache)
            .map_err(|e| ConfigError(e.to_string()))?
    };
    drop(set);
    // What a previous agent quarantined stays quarantined: from the first apply on.
    let quarantine_store = QuarantineStore::open(&options.bpffs_dir)?;
    let (quarantined, unreadable) = quarantine_store.workloads();
    if unreadable > 0 {
        log::error!(
            "{}: {unreadable} entries are no workload name; they are ignored",
            quarantine_store.path().display()
        );
    }
    for w in &quarantined {
        log::warn!(
            "{w} stays quarantined (kept in {})",
            quarantine_store.path().display()
        );
    }
    let metrics = Arc::new(Metrics::new());
    metrics.attach_kernel(loader.stats().clone());
    metrics
        .packet_socket_guard
        .set(i64::from(loader.packet_socket_guard()));
    metrics.objects_left_out.set(source.left_out() as i64);
    if let Some((records, _)) = &records {
        count_records(&records.lock().expect("records lock"), &metrics);
    }
    count_flows(readers.flows, metrics.clone());
    count_suppressed(readers.event_limits, metrics.clone());
    let (policy_tx, policy_rx) = watch::channel(Arc::new(Compiled::default()));
    // Serving before the first policy is in force: a workload it names is redirected from
    // its first query on.
    let dns = match dns_proxy {
        Some(bound) => Some(dns_proxy::start(
            bound,
            readers.dns,
            policy_rx.clone(),
            metrics.clone(),
        )?),
        None => None,
    };
    let mut agent = Agent {
        source,
        compile_cache,
        auto_quarantine: options.auto_quarantine.map(AutoQuarantine::new),
        options,
        loader,
        metrics,
        policy: policy_tx,
        trim_pending: false,
        applied: None,
        quarantined: quarantined.into_iter().collect(),
        quarantine_store,
        _pins_lock: pins_lock,
        records,
        dns_record_names: dns.as_ref().is_some_and(|d| d.record_names),
    };
    agent.apply(compiled).context("applying the policy")?;
    agent.source.applied(Ok(()));
    Ok(Started {
        agent,
        events: readers.events,
        logs: readers.logs,
        policy: policy_rx,
        dns,
    })
}
