//! What ml_network_violations_total needs beyond the events: bounded labels, and the
//! denials the kernel's per-flow event limit suppressed, counted without waiting for the
//! flow's next event.
//!
//! The kernel lets EVENTS_PER_FLOW_WINDOW events of a flow through per window and counts
//! the rest in the flow's EVENT_LIMITS entry; the first event of the next window carries
//! that count (`suppressed`). A one-off burst has no next event, so the agent also reads
//! the entries of the flows it saw violations of (`Ledger::flush`) and remembers, per
//! window, what it accounted, to subtract it when the carrying event comes.

use std::collections::{BTreeMap, HashMap, HashSet};

use stagewall_common::{EVENT_WINDOW_NS, EventLimit, FlowKey};

use crate::{
    compiler::{Compiled, IdentityKind, PortPrefix},
    events::{IpProtocol, UNPROGRAMMED},
};

/// The `port` label for a destination port no policy names.
pub const OTHER_PORT: &str = "other";

/// The port labels the policy in force allows: the ports and port blocks its rules name
/// (a range as the aligned blocks it compiles to), each labelled by the most specific
/// block that holds it.
#[derive(Debug, Default)]
pub struct PortLabels {
    /// Blocks by prefix length, longest first, then by value.
    blocks: BTreeMap<(std::cmp::Reverse<u8>, u16), String>,
}

impl PortLabels {
    pub fn new(policy: &Compiled) -> PortLabels {
        let blocks = policy
            .policy
            .iter()
            .filter_map(|e| e.ports)
            .map(|b| ((std::cmp::Reverse(b.bits), b.value), block_label(b)))
            .collect();
        PortLabels { blocks }
    }

    /// The label for a port of a protocol with ports.
    pub fn label(&self, port: u16) -> &str {
        self.blocks
            .iter()
            .find(|((bits, value), _)| contains(bits.0, *value, port))
            .map_or(OTHER_PORT, |(_, label)| label.as_str())
    }

    /// Every value `port` may take under this policy.
    pub fn allows(&self, label: &str) -> bool {
        label == OTHER_PORT || PORTLESS.contains(&label) || self.blocks.values().any(|l| l == label)
    }

    /// The `port` label of a violation: the named port or block, `other`, or for a
    /// protocol without ports its name (icmp, icmpv6, unknown, else `other`).
    pub fn for_event(&self, protocol: IpProtocol, dst_port: Option<u16>) -> String {
        match (protocol.has_ports(), dst_port) {
            (true, Some(p)) => self.label(p).to_string(),
            _ => match protocol {
                IpProtocol::Icmp | IpProtocol::Icmpv6 | IpProtocol::Unknown => {
                    protocol.name().into_owned()
                }
                _ => OTHER_PORT.to_string(),
            },
        }
    }
}

/// The port labels of protocols without ports.
const PORTLESS: [&str; 3] = ["icmp", "icmpv6", "unknown"];

fn contains(bits: u8, value: u16, port: u16) -> bool {
    let shift = 16 - bits as u32;
    (port as u32) >> shift == (value as u32) >> shift
}

fn block_label(b: PortPrefix) -> String {
    let size = 1u32 << (16 - b.bits as u32);
    let lo = b.value as u32 & !(size - 1);
    if size == 1 {
        lo.to_string()
    } else {
        format!("{lo}-{}", lo + size - 1)
    }
}

/// The (source, destination, port) labels of a violation.
pub type Labels = [String; 3];

/// A flow the agent saw violations of.
#[derive(Debug)]
struct Flow {
    labels: Labels,
    /// The flow's last two known rate-limit windows (start, kernel ns) and the suppressed
    /// count accounted in each; the later one last. Two: the event that carries a
    /// window's count may be read after the next window was.
    windows: [(u64, u32); 2],
    /// The latest window is over and fully accounted: nothing changes until the flow's
    /// next event, so it is read only on a sweep.
    settled: bool,
}

impl Flow {
    /// The known window that precedes the one starting at `start`.
    fn before(&mut self, start: u64) -> Option<&mut (u64, u32)> {
        self.windows.iter_mut().rev().find(|w| w.0 < start)
    }

    fn open(&mut self, start: u64, accounted: u32) {
        if start > self.windows[1].0 {
            self.windows = [self.windows[1], (start, accounted)];
        }
    }
}

/// Flows with violations and what of their suppressed events was already counted.
#[derive(Debug, Default)]
pub struct Ledger {
    flows: HashMap<FlowKey, Flow>,
    flushes: u64,
}

/// Every this many flushes, settled flows are read too: those the kernel forgot are
/// forgotten here (their next event carries nothing).
const SWEEP_EVERY: u64 = 30;

impl Ledger {
    /// A violation event of `key` at `time_ns` that carries `suppressed`: how much to
    /// count for it (itself, and what of `suppressed` a flush did not count already).
    pub fn violation(
        &mut self,
        key: FlowKey,
        labels: Labels,
        time_ns: u64,
        suppressed: u32,
    ) -> u64 {
        let flow = self.flows.entry(key).or_insert_with(|| Flow {
            labels: labels.clone(),
            windows: [(0, 0); 2],
            settled: false,
        });
        flow.labels = labels;
        flow.settled = false;
        if suppressed == 0 {
            // Not necessarily the first of a window: nothing to match.
            return 1;
        }
        // Only the first event of a window carries a count, that of the window before.
        let already = flow.before(time_ns).map_or(0, |w| {
            let a = w.1;
            w.1 = w.1.max(suppressed);
            a
        });
        flow.open(time_ns, 0);
        1 + u64::from(suppressed.saturating_sub(already))
    }

    /// Any other event of `key`: the flow is not a violation (any more); its suppressed
    /// events are not violations.
    pub fn other(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Reads the kernel's entries of the flows (`read`; None when it has none) at
    /// `now_ns` (CLOCK_MONOTONIC, as bpf_ktime_get_ns) and returns the suppressed counts
    /// not counted yet, by labels.
    pub fn flush(
        &mut self,
        now_ns: u64,
        mut read: impl FnMut(&FlowKey) -> Option<EventLimit>,
    ) -> Vec<(Labels, u64)> {
        self.flushes += 1;
        let sweep = self.flushes.is_multiple_of(SWEEP_EVERY);
        let mut out = Vec::new();
        self.flows.retain(|key, flow| {
            if flow.settled && !sweep {
                return true;
            }
            let Some(limit) = read(key) else {
                // The kernel forgot the flow (its LRU map was full): its next event
                // starts afresh and carries nothing.
                return false;
            };
            let start = limit.window_start_ns;
            let latest = flow.windows[1].0;
            let add = match flow.windows.iter_mut().find(|w| w.0 == start) {
                Some(w) => {
                    let add = limit.suppressed.saturating_sub(w.1);
                    w.1 = w.1.max(limit.suppressed);
                    add
                }
                None if start > latest => {
                    flow.open(start, limit.suppressed);
                    limit.suppressed
                }
                // Older than what is known: already accounted by its carrying event.
                None => 0,
            };
            if add > 0 {
                out.push((flow.labels.clone(), u64::from(add)));
            }
            let over = now_ns.saturating_sub(start) >= EVENT_WINDOW_NS;
            if over && limit.suppressed == 0 {
                // Its next event carries 0: nothing to subtract, nothing to remember.
                return false;
            }
            flow.settled = over;
            true
        });
        out
    }

    /// Forgets the flows whose labels are no longer valid (`keep` says which are).
    pub fn retain(&mut self, keep: impl Fn(&Labels) -> bool) {
        self.flows.retain(|_, f| keep(&f.labels));
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// The names violation series may carry under `policy`: its workloads (local and
/// remote), its CIDRs, and the fixed names events give (world, node, unknown,
/// unprogrammed).
pub fn peer_names(policy: &Compiled) -> HashSet<String> {
    let mut names: HashSet<String> = ["world", "node", "unknown", UNPROGRAMMED]
        .into_iter()
        .map(String::from)
        .collect();
    names.extend(policy.endpoints.iter().map(|e| e.workload.to_string()));
    names.extend(policy.identities.owners.values().map(|w| w.to_string()));
    names.extend(policy.identities.kinds.values().filter_map(|k| match k {
        IdentityKind::Cidr(prefix) => Some(prefix.to_string()),
        _ => None,
    }));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            endpoint_id: 1,
            remote_port: port,
            ..Default::default()
        }
    }

    fn labels() -> Labels {
        ["world".into(), "app/server".into(), "81".into()]
    }

    fn limit(start: u64, suppressed: u32) -> Option<EventLimit> {
        Some(EventLimit {
            window_start_ns: start,
            events: 32,
            suppressed,
        })
    }

    /// 32 events of a 400-datagram burst, 368 suppressed: the flush counts the 368, and
    /// the flow's next event, which carries them, counts only itself.
    #[test]
    fn a_burst_is_counted_once_whether_the_flush_or_the_next_event_comes_first() {
        let mut l = Ledger::default();
        let counted: u64 = (0..32)
            .map(|i| l.violation(key(81), labels(), 10 * S + i, 0))
            .sum();
        assert_eq!(counted, 32);
        assert_eq!(
            l.flush(10 * S + S / 2, |_| limit(10 * S, 100)),
            [(labels(), 100)]
        );
        assert_eq!(
            l.flush(10 * S + S / 2, |_| limit(10 * S, 368)),
            [(labels(), 268)]
        );
        // The window is over: read once more, then settled.
        assert!(l.flush(12 * S, |_| limit(10 * S, 368)).is_empty());
        assert!(
            l.flush(13 * S, |_| panic!("a settled flow is not read"))
                .is_empty()
        );
        // The next window's first event carries the 368 already counted.
        assert_eq!(l.violation(key(81), labels(), 20 * S, 368), 1);

        // The next window read before its carrying event: each count once.
        let mut l = Ledger::default();
        l.violation(key(81), labels(), 10 * S, 0);
        assert_eq!(l.flush(10 * S + 1, |_| limit(10 * S, 50)), [(labels(), 50)]);
        assert_eq!(l.flush(11 * S + 1, |_| limit(11 * S, 7)), [(labels(), 7)]);
        assert_eq!(l.violation(key(81), labels(), 11 * S, 60), 1 + 10);
        assert_eq!(l.flush(11 * S + 2, |_| limit(11 * S, 9)), [(labels(), 2)]);
        assert_eq!(l.violation(key(81), labels(), 12 * S, 9), 1);

        // A flow the agent never read: the event carries all.
        let mut l = Ledger::default();
        assert_eq!(l.violation(key(81), labels(), 10 * S, 368), 369);
    }

    /// Flows without suppressed events, those the kernel forgot and those that turned
    /// allowed are not followed: the ledger stays as small as the flows that need it.
    #[test]
    fn flows_that_need_no_accounting_are_forgotten() {
        let mut l = Ledger::default();
        for port in 1..=1000 {
            l.violation(key(port), labels(), 10 * S, 0);
        }
        l.violation(key(2000), labels(), 10 * S, 0);
        l.other(&key(2000));
        assert_eq!(l.len(), 1000);
        let out = l.flush(12 * S, |k| {
            (k.remote_port <= 500).then(|| limit(10 * S, 0)).flatten()
        });
        assert!(out.is_empty(), "{out:?}");
        assert!(l.is_empty(), "{l:?}");
    }

    #[test]
    fn ports_are_labelled_by_what_the_policy_names() {
        let mut policy = Compiled::default();
        let entry = |ports| crate::compiler::PolicyEntry {
            policy: 1,
            identity: 0,
            direction: crate::policy::model::Direction::Ingress,
            protocol: None,
            ports,
        };
        policy.policy.insert(entry(Some(PortPrefix {
            value: 80,
            bits: 16,
        })));
        policy.policy.insert(entry(Some(PortPrefix {
            value: 8192,
            bits: 6,
        })));
        policy.policy.insert(entry(None));
        let ports = PortLabels::new(&policy);
        assert_eq!(ports.for_event(IpProtocol::Udp, Some(80)), "80");
        assert_eq!(ports.for_event(IpProtocol::Tcp, Some(9000)), "8192-9215");
        assert_eq!(ports.for_event(IpProtocol::Tcp, Some(81)), OTHER_PORT);
        assert_eq!(ports.for_event(IpProtocol::Icmp, None), "icmp");
        assert_eq!(ports.for_event(IpProtocol::Other(47), None), OTHER_PORT);
        assert!(ports.allows("80") && ports.allows("8192-9215") && ports.allows("other"));
        assert!(!ports.allows("81"));
    }
}
