//! The DNS proxy's metrics (egress by name): queries, answers, what was learnt, the learnt
//! table's size against its capacity, and every query or answer dropped, by why. The
//! proxy counts in atomics of its own; `update` turns each second's snapshot into these.

use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// A snapshot of the proxy's counts (monotonic) and of its learnt table (levels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub queries_udp: u64,
    pub queries_tcp: u64,
    pub answers: u64,
    pub learnt: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// (kind label, count) of what was dropped or failed.
    pub errors: [(&'static str, u64); 8],
    /// Addresses in force in the kernel, addresses kept (also those kept only to name a
    /// destination), and the most one workload holds.
    pub kernel_entries: u64,
    pub entries: u64,
    pub workload_max: u64,
}

pub struct DnsMetrics {
    queries: IntCounterVec,
    answers: IntCounter,
    learnt: IntCounter,
    evictions: IntCounter,
    expirations: IntCounter,
    errors: IntCounterVec,
    addresses: IntGauge,
    entries: IntGauge,
    workload_max: IntGauge,
    capacity: IntGaugeVec,
    last: Mutex<DnsCounts>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

impl DnsMetrics {
    pub fn register(r: &Registry) -> DnsMetrics {
        DnsMetrics {
            queries: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "stagewall_dns_queries_total",
                        "Workloads' DNS queries the agent's proxy received, by transport.",
                    ),
                    &["protocol"],
                )
                .expect("valid metric"),
            ),
            answers: counter(
                r,
                "stagewall_dns_answers_total",
                "Answers the proxy handed back to workloads.",
            ),
            learnt: counter(
                r,
                "stagewall_dns_learnt_total",
                "Addresses learnt from answers for names a workload's rules allow (written to the kernel before the answer went back).",
            ),
            evictions: counter(
                r,
                "stagewall_dns_learnt_evictions_total",
                "Learnt addresses evicted to stay within capacity (expired ones first, then the least recently answered).",
            ),
            expirations: counter(
                r,
                "stagewall_dns_learnt_expirations_total",
                "Learnt addresses removed after their TTL, the grace and the linger ran out.",
            ),
            errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "stagewall_dns_proxy_errors_total",
                        "Queries and answers the proxy dropped or could not learn from, by kind.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            addresses: gauge(
                r,
                "stagewall_dns_learnt_addresses",
                "Learnt (workload, address) entries in force in the kernel.",
            ),
            entries: gauge(
                r,
                "stagewall_dns_learnt_entries",
                "Learnt (workload, address) entries kept, also those kept only to name a denied destination.",
            ),
            workload_max: gauge(
                r,
                "stagewall_dns_learnt_workload_max",
                "The most learnt addresses one workload holds.",
            ),
            capacity: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "stagewall_dns_learnt_capacity",
                        "Learnt addresses kept at most, per node and per workload.",
                    ),
                    &["scope"],
                )
                .expect("valid metric"),
            ),
            last: Mutex::new(DnsCounts::default()),
        }
    }

    pub fn set_capacity(&self, node: usize, workload: usize) {
        self.capacity.with_label_values(&["node"]).set(node as i64);
        self.capacity
            .with_label_values(&["workload"])
            .set(workload as i64);
    }

    /// Adds what the counts grew by since the last snapshot, and sets the levels.
    pub fn update(&self, now: &DnsCounts) {
        let mut last = self.last.lock().expect("dns metrics lock");
        let grew = |now: u64, then: u64| now.saturating_sub(then);
        self.queries
            .with_label_values(&["udp"])
            .inc_by(grew(now.queries_udp, last.queries_udp));
        self.queries
            .with_label_values(&["tcp"])
            .inc_by(grew(now.queries_tcp, last.queries_tcp));
        self.answers.inc_by(grew(now.answers, last.answers));
        self.learnt.inc_by(grew(now.learnt, last.learnt));
        self.evictions.inc_by(grew(now.evictions, last.evictions));
        self.expirations
            .inc_by(grew(now.expirations, last.expirations));
        for ((kind, n), (_, then)) in now.errors.iter().zip(last.errors.iter()) {
            self.errors
                .with_label_values(&[kind])
                .inc_by(grew(*n, *then));
        }
        self.addresses.set(now.kernel_entries as i64);
        self.entries.set(now.entries as i64);
        self.workload_max.set(now.workload_max as i64);
        *last = *now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_what_they_grew_by() {
        let r = Registry::new();
        let m = DnsMetrics::register(&r);
        let mut c = DnsCounts {
            queries_udp: 5,
            kernel_entries: 3,
            ..Default::default()
        };
        c.errors[0] = ("upstream_timeout", 1);
        m.update(&c);
        c.queries_udp = 8;
        c.kernel_entries = 2;
        c.errors[0].1 = 4;
        m.update(&c);
        assert_eq!(m.queries.with_label_values(&["udp"]).get(), 8);
        assert_eq!(m.addresses.get(), 2);
        assert_eq!(m.errors.with_label_values(&["upstream_timeout"]).get(), 4);
    }
}
