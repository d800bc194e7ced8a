//! Prometheus metrics. `ml_network_violations_total` is named as the users' dashboards
//! expect; the rest are `stagewall_*`. Label values come from small sets: workload names,
//! CIDRs from the policy, "world", directions and verdicts.

use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use prometheus::{Encoder as _, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use stagewall_common::{
    CNT_ALLOWED_EGRESS, CNT_ALLOWED_INGRESS, CNT_DROPPED_EGRESS, CNT_DROPPED_INGRESS,
    CNT_EVENTS_LOST, CNT_FLOW_INSERT_FAILED, CNT_MALFORMED, CNT_REPLIES, CNT_WOULD_DROP_EGRESS,
    CNT_WOULD_DROP_INGRESS, COUNTERS_LEN,
};

use crate::events::Violation;

pub struct Metrics {
    registry: Registry,
    violations: IntCounterVec,
    packets: IntCounterVec,
    events_lost: IntCounter,
    malformed: IntCounter,
    replies: IntCounter,
    flow_insert_failed: IntCounter,
    pub policy_generation: IntGauge,
    pub workloads_enforced: IntGauge,
    pub policy_reloads: IntCounterVec,
    kernel: Mutex<Option<KernelCounters>>,
}

/// The kernel's per-CPU counters and what was last added to the metrics from them.
struct KernelCounters {
    map: PerCpuArray<MapData, u64>,
    seen: [u64; COUNTERS_LEN as usize],
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
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
        let build = IntGauge::with_opts(
            Opts::new("stagewall_build_info", "stagewall build; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build.set(1);
        r.register(Box::new(build)).expect("unique metric");
        Metrics {
            violations: counter_vec(
                &r,
                "ml_network_violations_total",
                "Packets, connects and sends that policy denied (or would deny in audit mode), by sending workload, receiving workload or CIDR, and destination port.",
                &["source", "destination", "port"],
            ),
            packets: counter_vec(
                &r,
                "stagewall_packets_total",
                "Packets of enforced workloads seen by the kernel programs, by direction and verdict (allowed, dropped, would_drop).",
                &["direction", "verdict"],
            ),
            events_lost: counter(
                &r,
                "stagewall_events_lost_total",
                "Violation events the kernel could not queue because the ring buffer was full.",
            ),
            malformed: counter(
                &r,
                "stagewall_malformed_packets_total",
                "Packets whose headers could not be parsed (dropped).",
            ),
            replies: counter(
                &r,
                "stagewall_reply_packets_total",
                "Reply packets of tracked flows that passed without a rule.",
            ),
            flow_insert_failed: counter(
                &r,
                "stagewall_flow_track_failures_total",
                "Allowed flows the kernel could not track for their replies.",
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
            policy_reloads: counter_vec(
                &r,
                "stagewall_policy_reloads_total",
                "Policy loads by result (applied, rejected).",
                &["result"],
            ),
            registry: r,
            kernel: Mutex::new(None),
        }
    }

    pub fn attach_kernel_counters(&self, map: PerCpuArray<MapData, u64>) {
        *self.kernel.lock().expect("metrics lock") = Some(KernelCounters {
            map,
            seen: [0; COUNTERS_LEN as usize],
        });
    }

    pub fn record_violation(&self, v: &Violation) {
        let [source, destination, port] = v.metric_labels();
        self.violations
            .with_label_values(&[source.as_str(), destination.as_str(), port.as_str()])
            .inc();
    }

    /// Adds what the kernel counted since the last call.
    fn sync_kernel(&self) {
        let mut guard = self.kernel.lock().expect("metrics lock");
        let Some(k) = guard.as_mut() else { return };
        for index in 0..COUNTERS_LEN {
            let Ok(values) = k.map.get(&index, 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let delta = total.saturating_sub(k.seen[index as usize]);
            k.seen[index as usize] = total;
            if delta == 0 {
                continue;
            }
            let packets = |direction, verdict| {
                self.packets
                    .with_label_values(&[direction, verdict])
                    .inc_by(delta)
            };
            match index {
                CNT_ALLOWED_INGRESS => packets("ingress", "allowed"),
                CNT_ALLOWED_EGRESS => packets("egress", "allowed"),
                CNT_DROPPED_INGRESS => packets("ingress", "dropped"),
                CNT_DROPPED_EGRESS => packets("egress", "dropped"),
                CNT_WOULD_DROP_INGRESS => packets("ingress", "would_drop"),
                CNT_WOULD_DROP_EGRESS => packets("egress", "would_drop"),
                CNT_EVENTS_LOST => self.events_lost.inc_by(delta),
                CNT_MALFORMED => self.malformed.inc_by(delta),
                CNT_REPLIES => self.replies.inc_by(delta),
                CNT_FLOW_INSERT_FAILED => self.flow_insert_failed.inc_by(delta),
                _ => {}
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
