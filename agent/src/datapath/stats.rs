//! The one reader of what the kernel programs count: the global counters (COUNTERS, CNT_*)
//! and each endpoint's packets and bytes by direction and verdict (ENDPOINT_STATS). Both
//! maps are per-CPU arrays; every read here sums the CPUs. The metrics export them and
//! auto-quarantine watches the workloads' egress drops, both through this reader.

use std::sync::Arc;

use aya::maps::{MapData, PerCpuArray};
use stagewall_common::{
    CNT_CONFIG_MISSING, CNT_EVENTS_LOST, CNT_EVENTS_QUEUED, CNT_EVENTS_SUPPRESSED,
    CNT_FLOW_INSERT_FAILED, CNT_MALFORMED, CNT_PACKET_SOCKETS, CNT_REPLIES, COUNTERS_LEN,
    EndpointStats, STAT_ALLOWED, STAT_DROPPED, STAT_WOULD_DROP, endpoint_stats_index,
    verdict_counter,
};

use crate::{compiler::map_keys::direction_number, policy::model::Direction};

/// How the kernel counted a packet (or a connect or send): the STAT_* of its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allowed,
    /// Dropped, or a connect or send refused with EPERM.
    Dropped,
    /// Denied by the policy and passed (audit mode).
    WouldDrop,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Allowed, Verdict::Dropped, Verdict::WouldDrop];

    fn stat(self) -> u32 {
        match self {
            Verdict::Allowed => STAT_ALLOWED,
            Verdict::Dropped => STAT_DROPPED,
            Verdict::WouldDrop => STAT_WOULD_DROP,
        }
    }
}

/// One of the kernel programs' global counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Packets of enforced workloads, by direction and verdict.
    Packets(Direction, Verdict),
    /// Events that did not fit in the ring buffer.
    EventsLost,
    /// Packets whose headers could not be parsed.
    Malformed,
    /// Replies of tracked flows that passed without a rule.
    Replies,
    /// Allowed flows that could not be tracked (flow table full).
    FlowInsertFailed,
    /// Events the per-flow rate limit suppressed.
    EventsSuppressed,
    /// Events queued in the ring buffer.
    EventsQueued,
    /// Packet and XDP sockets created on the node (by anyone), as the packet-socket
    /// guard saw them.
    PacketSockets,
    /// Programs that found no configuration in force (decided by fail mode).
    ConfigMissing,
}

impl Counter {
    /// Every counter, in the order of their indexes in COUNTERS.
    pub const ALL: [Counter; COUNTERS_LEN as usize] = [
        Counter::Packets(Direction::Ingress, Verdict::Allowed),
        Counter::Packets(Direction::Egress, Verdict::Allowed),
        Counter::Packets(Direction::Ingress, Verdict::Dropped),
        Counter::Packets(Direction::Egress, Verdict::Dropped),
        Counter::Packets(Direction::Ingress, Verdict::WouldDrop),
        Counter::Packets(Direction::Egress, Verdict::WouldDrop),
        Counter::EventsLost,
        Counter::Malformed,
        Counter::Replies,
        Counter::FlowInsertFailed,
        Counter::EventsSuppressed,
        Counter::EventsQueued,
        Counter::PacketSockets,
        Counter::ConfigMissing,
    ];

    /// Its index in COUNTERS (CNT_*).
    pub fn index(self) -> u32 {
        match self {
            Counter::Packets(direction, verdict) => {
                verdict_counter(verdict.stat(), direction_number(direction))
            }
            Counter::EventsLost => CNT_EVENTS_LOST,
            Counter::Malformed => CNT_MALFORMED,
            Counter::Replies => CNT_REPLIES,
            Counter::FlowInsertFailed => CNT_FLOW_INSERT_FAILED,
            Counter::EventsSuppressed => CNT_EVENTS_SUPPRESSED,
            Counter::EventsQueued => CNT_EVENTS_QUEUED,
            Counter::PacketSockets => CNT_PACKET_SOCKETS,
            Counter::ConfigMissing => CNT_CONFIG_MISSING,
        }
    }
}

/// The kernel's counters and per-endpoint statistics, read on demand. Cloning shares the
/// maps.
#[derive(Clone)]
pub struct KernelStats(Arc<StatsMaps>);

struct StatsMaps {
    counters: PerCpuArray<MapData, u64>,
    endpoints: PerCpuArray<MapData, EndpointStats>,
}

impl KernelStats {
    pub(super) fn new(
        counters: PerCpuArray<MapData, u64>,
        endpoints: PerCpuArray<MapData, EndpointStats>,
    ) -> KernelStats {
        KernelStats(Arc::new(StatsMaps {
            counters,
            endpoints,
        }))
    }

    /// Every counter's total so far, summed over the CPUs; a counter that cannot be read
    /// is left out.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .into_iter()
            .filter_map(|counter| {
                let values = self.0.counters.get(&counter.index(), 0).ok()?;
                Some((counter, values.iter().sum()))
            })
            .collect()
    }

    /// One counter's total so far (0 when it cannot be read).
    pub fn counter(&self, counter: Counter) -> u64 {
        self.0
            .counters
            .get(&counter.index(), 0)
            .map_or(0, |values| values.iter().sum())
    }

    /// An endpoint's packets and bytes so far in `direction` with `verdict`, summed over
    /// the CPUs; None when the map cannot be read.
    pub fn endpoint(
        &self,
        endpoint_id: u32,
        direction: Direction,
        verdict: Verdict,
    ) -> Option<EndpointStats> {
        let index = endpoint_stats_index(endpoint_id, direction_number(direction), verdict.stat());
        let values = self.0.endpoints.get(&index, 0).ok()?;
        Some(
            values
                .iter()
                .fold(EndpointStats::default(), |a, v| EndpointStats {
                    packets: a.packets + v.packets,
                    bytes: a.bytes + v.bytes,
                }),
        )
    }

    /// Packets the endpoint's egress had dropped so far (what auto-quarantine watches).
    pub fn egress_drops(&self, endpoint_id: u32) -> Option<u64> {
        self.endpoint(endpoint_id, Direction::Egress, Verdict::Dropped)
            .map(|s| s.packets)
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::{
        CNT_ALLOWED_EGRESS, CNT_ALLOWED_INGRESS, CNT_DROPPED_EGRESS, CNT_DROPPED_INGRESS,
        CNT_WOULD_DROP_EGRESS, CNT_WOULD_DROP_INGRESS,
    };

    use super::*;

    #[test]
    fn counters_name_every_index_of_the_counters_map_once() {
        let indexes: Vec<u32> = Counter::ALL.iter().map(|c| c.index()).collect();
        assert_eq!(indexes, (0..COUNTERS_LEN).collect::<Vec<_>>());
        assert_eq!(
            [
                Counter::Packets(Direction::Ingress, Verdict::Allowed).index(),
                Counter::Packets(Direction::Egress, Verdict::Allowed).index(),
                Counter::Packets(Direction::Ingress, Verdict::Dropped).index(),
                Counter::Packets(Direction::Egress, Verdict::Dropped).index(),
                Counter::Packets(Direction::Ingress, Verdict::WouldDrop).index(),
                Counter::Packets(Direction::Egress, Verdict::WouldDrop).index(),
            ],
            [
                CNT_ALLOWED_INGRESS,
                CNT_ALLOWED_EGRESS,
                CNT_DROPPED_INGRESS,
                CNT_DROPPED_EGRESS,
                CNT_WOULD_DROP_INGRESS,
                CNT_WOULD_DROP_EGRESS,
            ]
        );
    }
}
