//! Prometheus metrics. `ml_network_violations_total` is named as the users' dashboards
//! expect; the rest are `stagewall_*`. Label values come from small sets: workload names,
//! CIDRs from the policy, "world", directions, verdicts, map names. What the kernel counts
//! is read through datapath::stats and added at each scrape.
//!
//! The `port` label of the violations takes only the ports the policy in force names
//! (else `other`), and series of workloads gone from it are removed on each apply, so a
//! port scan or workloads coming and going cannot grow the series without bound.
//!
//! Verdict label values differ by metric, as they always have: the event counters say
//! what events say (`would-drop`), the kernel's packet counters `would_drop`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector as _,
};
use stagewall_common::{
    COUNTERS_LEN, EndpointStats, Event, EventLimit, FlowKey, GUARD_ENDPOINT_ID,
};

use super::{
    dns_metrics::DnsMetrics,
    info::Info,
    violations::{Ledger, PortLabels, peer_names},
};
use crate::{
    compiler::{Compiled, map_keys::event_flow_key},
    datapath::stats::{Counter, KernelStats, Verdict},
    events::{UNPROGRAMMED, VerdictEvent},
    policy::model::{Direction, ObjectName},
};

pub struct Metrics {
    registry: Registry,
    violations: IntCounterVec,
    events: IntCounterVec,
    /// Events a ClusterNetworkPolicy rule decided, by rule and verdict (bounded by the
    /// rules written).
    cluster_rule_events: IntCounterVec,
    packets: IntCounterVec,
    workload_packets: IntCounterVec,
    workload_bytes: IntCounterVec,
    events_lost: IntCounter,
    events_suppressed: IntCounter,
    events_queued: IntCounter,
    output_errors: IntCounter,
    output_lost: IntCounter,
    malformed: IntCounter,
    replies: IntCounter,
    flow_insert_failed: IntCounter,
    packet_sockets: IntCounter,
    config_missing: IntCounter,
    pub packet_socket_guard: IntGauge,
    pub policy_generation: IntGauge,
    pub workloads_enforced: IntGauge,
    pub workloads_quarantined: IntGauge,
    pub objects_left_out: IntGauge,
    pub auto_quarantines: IntCounter,
    pub flow_records: IntGauge,
    /// The DNS proxy's (egress by name).
    pub dns: DnsMetrics,
    pub flow_records_evicted: IntCounter,
    info: Info,
    pub policy_reloads: IntCounterVec,
    pub policy_apply_seconds: Histogram,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    kernel: Mutex<Option<Kernel>>,
    bounds: Mutex<Bounds>,
}

/// What bounds the violation series, from the policy in force, and the flows whose
/// suppressed events are still to be counted.
#[derive(Default)]
struct Bounds {
    ports: PortLabels,
    ledger: Ledger,
}

/// The kernel's counters and statistics, and what was already added from them.
struct Kernel {
    stats: KernelStats,
    /// Counter totals already added, by COUNTERS index.
    seen: [u64; COUNTERS_LEN as usize],
    /// The policy in force, whose endpoints' statistics are exported.
    policy: Arc<Compiled>,
    /// Guard cgroups are attached: their statistics are exported as UNPROGRAMMED's.
    guards: bool,
    seen_stats: HashMap<(u32, Direction, Verdict), EndpointStats>,
}

/// The endpoints whose statistics are exported: their ids, and their workloads (None for
/// the guard cgroups, labelled UNPROGRAMMED).
fn exported(policy: &Compiled, guards: bool) -> impl Iterator<Item = (u32, Option<&ObjectName>)> {
    policy
        .endpoints
        .iter()
        .map(|e| (e.endpoint_id, Some(&e.workload)))
        .chain(guards.then_some((GUARD_ENDPOINT_ID, None)))
}

const VIOLATION_LABELS: [&str; 3] = ["source", "destination", "port"];
const WORKLOAD_LABELS: [&str; 3] = ["workload", "direction", "verdict"];

fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allowed => "allowed",
        Verdict::Dropped => "dropped",
        Verdict::WouldDrop => "would_drop",
    }
}

/// Removes the series of `vec` (labelled `labels`, in their declared order) that `keep`
/// refuses; `keep` gets a label's value by name.
fn remove_series(
    vec: &IntCounterVec,
    labels: &[&str],
    keep: impl Fn(&dyn Fn(&str) -> String) -> bool,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            // Gathered label pairs are sorted by name, not in the declared order.
            let pairs = metric.get_label();
            let value = |name: &str| {
                pairs
                    .iter()
                    .find(|p| p.name() == name)
                    .map_or_else(String::new, |p| p.value().to_string())
            };
            if !keep(&value) {
                let values: Vec<String> = labels.iter().map(|l| value(l)).collect();
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                let _ = vec.remove_label_values(&values);
            }
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let apply = Histogram::with_opts(
            HistogramOpts::new(
                "stagewall_policy_apply_duration_seconds",
                "Time to write a compiled policy into the kernel and switch to it.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(apply.clone())).expect("unique metric");
        Metrics {
            violations: counter_vec(
                &r,
                "ml_network_violations_total",
                "Packets, connects and sends that policy denied (or would deny in audit mode), by sending workload, receiving workload or CIDR, and destination port (or protocol).",
                &VIOLATION_LABELS,
            ),
            cluster_rule_events: counter_vec(
                &r,
                "stagewall_cluster_policy_rule_events_total",
                "Verdict events a ClusterNetworkPolicy rule decided (denials, and allowed flows' records with --log-allowed), by tier, policy, rule name (#N without one), action and verdict.",
                &["tier", "policy", "rule", "action", "verdict"],
            ),
            events: counter_vec(
                &r,
                "stagewall_events_delivered_total",
                "Verdict events read from the kernel and delivered to the log and the event stream, by verdict and reason.",
                &["verdict", "reason"],
            ),
            packets: counter_vec(
                &r,
                "stagewall_packets_total",
                "Packets of enforced workloads seen by the kernel programs, by direction and verdict (allowed, dropped, would_drop).",
                &["direction", "verdict"],
            ),
            workload_packets: counter_vec(
                &r,
                "stagewall_workload_packets_total",
                "Packets of each enforced workload, by direction and verdict (dropped includes connects and sends refused with EPERM).",
                &["workload", "direction", "verdict"],
            ),
            workload_bytes: counter_vec(
                &r,
                "stagewall_workload_bytes_total",
                "Bytes of each enforced workload's packets, by direction and verdict.",
                &["workload", "direction", "verdict"],
            ),
            events_lost: counter(
                &r,
                "stagewall_events_lost_total",
                "Verdict events the kernel could not queue because the ring buffer was full.",
            ),
            events_suppressed: counter(
                &r,
                "stagewall_events_suppressed_total",
                "Verdict events the kernel's per-flow rate limit suppressed (ml_network_violations_total counts their violations within about a second).",
            ),
            events_queued: counter(
                &r,
                "stagewall_events_queued_total",
                "Verdict events the kernel queued in the ring buffer.",
            ),
            output_errors: counter(
                &r,
                "stagewall_events_output_errors_total",
                "Writes of the event log (stdout or --events-file) that failed; the agent goes on enforcing and retries with the next events.",
            ),
            output_lost: counter(
                &r,
                "stagewall_events_output_lost_total",
                "Verdict events that failed writes of the event log lost (a full disk, a closed stdout).",
            ),
            malformed: counter(
                &r,
                "stagewall_malformed_packets_total",
                "Packets whose headers could not be parsed (internal error: dropped).",
            ),
            replies: counter(
                &r,
                "stagewall_reply_packets_total",
                "Reply packets of tracked flows that passed without a rule.",
            ),
            flow_insert_failed: counter(
                &r,
                "stagewall_flow_track_failures_total",
                "Allowed flows the kernel could not track for their replies (flow table full).",
            ),
            packet_sockets: counter(
                &r,
                "stagewall_packet_sockets_total",
                "Packet (AF_PACKET) and XDP sockets created on the node by anyone, as the packet-socket guard saw them.",
            ),
            config_missing: counter(
                &r,
                "stagewall_config_missing_total",
                "Kernel program runs that found no configuration in force and decided by the workload's fail mode (should stay 0).",
            ),
            packet_socket_guard: gauge(
                &r,
                "stagewall_packet_socket_guard",
                "1 when the kernel refuses isolated and quarantined workloads packet and XDP sockets (BPF LSM), 0 when it cannot (see the log).",
            ),
            policy_generation: gauge(
                &r,
                "stagewall_policy_generation",
                "Number of policies applied since start; the one in force.",
            ),
            workloads_enforced: gauge(
                &r,
                "stagewall_workloads_enforced",
                "Local workloads the kernel programs are attached to.",
            ),
            workloads_quarantined: gauge(
                &r,
                "stagewall_workloads_quarantined",
                "Local workloads isolated by `stagewall quarantine` or automatically.",
            ),
            objects_left_out: gauge(
                &r,
                "stagewall_objects_left_out",
                "Kubernetes objects left out of the desired state for an error of theirs (the log names them); everything else is enforced.",
            ),
            flow_records: gauge(
                &r,
                "stagewall_flow_records",
                "Flow records kept (for stagewall advise, simulate and report), as of the last write to disk.",
            ),
            flow_records_evicted: counter(
                &r,
                "stagewall_flow_records_evicted_total",
                "Flow records dropped, least recently seen first, to stay within --flow-records-max since the records file was started.",
            ),
            auto_quarantines: counter(
                &r,
                "stagewall_auto_quarantines_total",
                "Workloads quarantined automatically (--auto-quarantine: N egress denials within T).",
            ),
            policy_reloads: counter_vec(
                &r,
                "stagewall_policy_reloads_total",
                "Policy loads by result: applied, rejected (invalid; the policy in force stays) or failed (the kernel refused; the policy in force stays).",
                &["result"],
            ),
            policy_apply_seconds: apply,
            map_entries: gauge_vec(
                &r,
                "stagewall_map_entries",
                "Entries in each kernel map (the policy maps hold the policy in force).",
                &["map"],
            ),
            map_capacity: gauge_vec(
                &r,
                "stagewall_map_capacity",
                "Capacity of each kernel map; for the policy maps, half of the map (two policies live in it during an update).",
                &["map"],
            ),
            dns: DnsMetrics::register(&r),
            info: Info::register(&r),
            registry: r,
            kernel: Mutex::new(None),
            bounds: Mutex::default(),
        }
    }

    /// Exports what the kernel counts, read through `stats`.
    pub fn attach_kernel(&self, stats: KernelStats) {
        *self.kernel.lock().expect("metrics lock") = Some(Kernel {
            stats,
            seen: [0; COUNTERS_LEN as usize],
            policy: Arc::default(),
            guards: false,
            seen_stats: HashMap::new(),
        });
    }

    /// The policy in force: its workloads' statistics are exported, and the guard
    /// cgroups' if `guards` are attached.
    /// The series of workloads gone from it are removed, and its named ports bound the
    /// violations' `port` label.
    pub fn set_policy(&self, policy: Arc<Compiled>, guards: bool) {
        let names = peer_names(&policy);
        let ports = PortLabels::new(&policy);
        let valid =
            |l: &[String; 3]| names.contains(&l[0]) && names.contains(&l[1]) && ports.allows(&l[2]);
        remove_series(&self.violations, &VIOLATION_LABELS, |l| {
            valid(&[l("source"), l("destination"), l("port")])
        });
        for v in [&self.workload_packets, &self.workload_bytes] {
            remove_series(v, &WORKLOAD_LABELS, |l| names.contains(&l("workload")));
        }
        {
            let mut bounds = self.bounds.lock().expect("metrics lock");
            bounds.ledger.retain(valid);
            bounds.ports = ports;
        }
        self.info.set_policy(&policy);
        if let Some(k) = self.kernel.lock().expect("metrics lock").as_mut() {
            k.policy = policy;
            k.guards = guards;
        }
    }

    pub fn set_map_usage(&self, map: &str, entries: usize, capacity: u32) {
        self.map_entries
            .with_label_values(&[map])
            .set(entries as i64);
        self.map_capacity
            .with_label_values(&[map])
            .set(capacity as i64);
    }

    /// An event delivered to the log and the stream.
    pub fn record_event(&self, e: &VerdictEvent) {
        self.events
            .with_label_values(&[e.verdict.name(), e.reason.name()])
            .inc();
        if let Some(rule) = &e.rule {
            self.cluster_rule_events
                .with_label_values(&[
                    rule.tier.as_str(),
                    rule.policy.as_str(),
                    rule.name.as_str(),
                    rule.action.as_str(),
                    e.verdict.name(),
                ])
                .inc();
        }
    }

    /// Every event the kernel reported (`event`, named `e`), delivered or not: a
    /// violation is counted with what its flow's rate limit suppressed and was not
    /// counted by `flush_suppressed` already; any other event ends its flow's violations.
    pub fn count_violation(&self, event: &Event, e: &VerdictEvent) {
        let key = event_flow_key(event);
        let mut bounds = self.bounds.lock().expect("metrics lock");
        if !e.is_violation() {
            bounds.ledger.other(&key);
            return;
        }
        let labels = e.metric_labels(|protocol, port| bounds.ports.for_event(protocol, port));
        let n = bounds
            .ledger
            .violation(key, labels.clone(), event.time_ns, event.suppressed);
        drop(bounds);
        let [source, destination, port] = labels;
        self.violations
            .with_label_values(&[source.as_str(), destination.as_str(), port.as_str()])
            .inc_by(n);
    }

    /// Counts the denials the kernel's event limits suppressed since the last flush, read
    /// through `read` at `now_ns` (CLOCK_MONOTONIC): a burst shows whole without the
    /// flow's next event. Returns the flows still followed.
    pub fn flush_suppressed(
        &self,
        now_ns: u64,
        read: impl FnMut(&FlowKey) -> Option<EventLimit>,
    ) -> usize {
        let mut bounds = self.bounds.lock().expect("metrics lock");
        let counted = bounds.ledger.flush(now_ns, read);
        let followed = bounds.ledger.len();
        drop(bounds);
        for ([source, destination, port], n) in counted {
            self.violations
                .with_label_values(&[source.as_str(), destination.as_str(), port.as_str()])
                .inc_by(n);
        }
        followed
    }

    /// A write of the event log failed and lost `lost` events.
    pub fn record_output_failure(&self, lost: u64) {
        self.output_errors.inc();
        self.output_lost.inc_by(lost);
    }

    /// Adds what the kernel counted since the last call.
    fn sync_kernel(&self) {
        let mut guard = self.kernel.lock().expect("metrics lock");
        let Some(k) = guard.as_mut() else { return };
        for (counter, total) in k.stats.counters() {
            let seen = &mut k.seen[counter.index() as usize];
            let delta = total.saturating_sub(*seen);
            *seen = total;
            if delta == 0 {
                continue;
            }
            match counter {
                Counter::Packets(direction, verdict) => self
                    .packets
                    .with_label_values(&[direction.name(), verdict_label(verdict)])
                    .inc_by(delta),
                Counter::EventsLost => self.events_lost.inc_by(delta),
                Counter::Malformed => self.malformed.inc_by(delta),
                Counter::Replies => self.replies.inc_by(delta),
                Counter::FlowInsertFailed => self.flow_insert_failed.inc_by(delta),
                Counter::EventsSuppressed => self.events_suppressed.inc_by(delta),
                Counter::EventsQueued => self.events_queued.inc_by(delta),
                Counter::PacketSockets => self.packet_sockets.inc_by(delta),
                Counter::ConfigMissing => self.config_missing.inc_by(delta),
            }
        }
        let policy = k.policy.clone();
        for (id, workload) in exported(&policy, k.guards) {
            let workload = workload.map_or_else(|| UNPROGRAMMED.to_string(), |w| w.to_string());
            for direction in [Direction::Ingress, Direction::Egress] {
                for verdict in Verdict::ALL {
                    let Some(total) = k.stats.endpoint(id, direction, verdict) else {
                        continue;
                    };
                    let seen = k.seen_stats.entry((id, direction, verdict)).or_default();
                    let labels = [workload.as_str(), direction.name(), verdict_label(verdict)];
                    self.workload_packets
                        .with_label_values(&labels)
                        .inc_by(total.packets.saturating_sub(seen.packets));
                    self.workload_bytes
                        .with_label_values(&labels)
                        .inc_by(total.bytes.saturating_sub(seen.bytes));
                    *seen = total;
                }
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.sync_kernel();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::{DIR_EGRESS, FAMILY_V4, PROTO_UDP, REASON_NO_RULE, VERDICT_DROPPED};

    use super::*;
    use crate::events::describe;

    /// A denied datagram of workload `workload` to `port` of 192.0.2.1 (world).
    fn violation(m: &Metrics, workload: &str, endpoint_id: u32, port: u16) {
        let mut event = Event {
            endpoint_id,
            verdict: VERDICT_DROPPED,
            reason: REASON_NO_RULE,
            direction: DIR_EGRESS,
            family: FAMILY_V4,
            protocol: PROTO_UDP,
            remote_port: port,
            ..Default::default()
        };
        event.remote_addr[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut e = describe(&event, &Compiled::default(), "node");
        e.workload = workload.to_string();
        m.count_violation(&event, &e);
    }

    fn series(m: &Metrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("ml_network_violations_total{"))
            .map(String::from)
            .collect()
    }

    /// A scan of every port makes one series per pair when no policy names a port.
    #[test]
    fn a_port_scan_makes_one_series_per_pair() {
        let m = Metrics::new();
        for port in 0..=u16::MAX {
            violation(&m, "app/client", 1, port);
        }
        let s = series(&m);
        assert_eq!(s.len(), 1, "{:?}", &s[..s.len().min(3)]);
        assert!(
            s[0].contains("port=\"other\"") && s[0].ends_with(" 65536"),
            "{s:?}"
        );
    }

    /// 1,000 short-lived workloads: their series go with them on the next apply; the
    /// workload still in the policy keeps its own.
    #[test]
    fn series_of_workloads_gone_from_the_policy_are_removed_on_apply() {
        let m = Metrics::new();
        for i in 0..1000 {
            violation(&m, &format!("jobs/w{i}"), i + 1, 53);
        }
        violation(&m, "app/keep", 5000, 53);
        assert_eq!(series(&m).len(), 1001);
        let mut policy = Compiled::default();
        policy.identities.owners.insert(
            "198.51.100.1".parse().unwrap(),
            ObjectName {
                namespace: "app".into(),
                name: "keep".into(),
            },
        );
        m.set_policy(Arc::new(policy), false);
        let s = series(&m);
        assert_eq!(s.len(), 1, "{:?}", &s[..s.len().min(3)]);
        assert!(s[0].contains("source=\"app/keep\""), "{s:?}");
        assert!(m.bounds.lock().unwrap().ledger.len() <= 1);
    }
}
