//! The proxy's counters, for metrics: plain atomics the agent reads when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (µs) of the buckets of the latency the proxy adds to a query (its time
/// with the query, less the resolver's); one more bucket holds the rest.
pub const LATENCY_BOUNDS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, us: u64) {
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Cumulative counts per bucket (as Prometheus reads a histogram; the last is the
    /// count of all), and the sum in µs.
    pub fn cumulative(&self) -> ([u64; LATENCY_BOUNDS_US.len() + 1], u64) {
        let mut out = [0; LATENCY_BOUNDS_US.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *o = total;
        }
        (out, self.sum_us.load(Relaxed))
    }
}

/// Running totals since the proxy started.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub queries_udp: AtomicU64,
    pub queries_tcp: AtomicU64,
    /// Replies sent back to workloads.
    pub answers: AtomicU64,
    /// Addresses written to the kernel (new or changed entries).
    pub learnt_addresses: AtomicU64,
    /// Replies forwarded without learning (not learnable, or the workload unknown).
    pub not_learnt: AtomicU64,
    /// Queries from a socket the kernel did not record (`Clients` knew no workload):
    /// forwarded, nothing learnt.
    pub unknown_clients: AtomicU64,
    /// Kernel writes or removals that failed (the answer still went out: DNS fails open).
    pub write_failures: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    /// Resolver sockets that failed (refused, reset, closed).
    pub upstream_errors: AtomicU64,
    /// Replies that did not answer the query sent (ID or question): dropped.
    pub mismatched_replies: AtomicU64,
    /// UDP queries dropped because `udp_in_flight_max` were pending.
    pub dropped_in_flight: AtomicU64,
    /// Queries shorter than a DNS header: dropped.
    pub dropped_malformed: AtomicU64,
    /// TCP connections closed at once because `tcp_connections_max` were open.
    pub tcp_refused: AtomicU64,
    /// Kernel entries removed by the periodic expiry.
    pub expired: AtomicU64,
    pub latency: LatencyHistogram,
}

pub(super) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

pub(super) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}
