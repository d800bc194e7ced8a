//! Where each kernel event goes: named after the policy in force, into the flow records
//! (the directions they cover), the metrics, the event log and the HTTP event stream.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use stagewall_common::Event;
use tokio::sync::watch;

use super::Records;
use crate::{
    compiler::Compiled,
    dns::learnt::Learnt,
    events::{
        Reason, describe,
        hub::Hub,
        reader,
        sink::{Lost, Sink},
    },
    observe::metrics::Metrics,
    policy::model::Direction,
};

pub struct Outputs {
    /// The policy in force, to name events.
    pub policy: watch::Receiver<Arc<Compiled>>,
    pub metrics: Arc<Metrics>,
    pub sink: Sink,
    pub hub: Arc<Hub>,
    pub node: String,
    /// Allowed flows go to the sink and the hub (--log-allowed); without it the kernel
    /// reports them only for the flow records.
    pub log_allowed: bool,
    /// Flow records, and which events feed them.
    pub records: Option<Records>,
    /// The policy that names the events of the batch being drained: read once per batch,
    /// so a batch is named by one policy and the lock is not taken per event.
    pub batch_policy: Option<Arc<Compiled>>,
    /// Event log failures not logged yet.
    pub unlogged: Unlogged,
    /// What the DNS proxy learnt, to name the destination of a workload's egress.
    pub dns_names: Option<Arc<Mutex<Learnt>>>,
}

/// How often a failing event log is logged: every failure is counted in the metrics, but
/// a full disk must not turn each event into a line of the agent's log.
const OUTPUT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Event log failures since the last one logged.
#[derive(Default)]
pub struct Unlogged {
    last_logged: Option<Instant>,
    failures: u64,
    lost: u64,
}

impl Outputs {
    /// Runs until the task is cancelled.
    pub async fn stream(mut self, ring: RingBuf<MapData>) -> anyhow::Result<()> {
        reader::drain(ring, &mut self).await
    }
}

impl reader::Handler for Outputs {
    type Error = anyhow::Error;

    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let compiled = self
            .batch_policy
            .get_or_insert_with(|| self.policy.borrow().clone())
            .clone();
        let mut e = describe(event, &compiled, &self.node);
        if let (Some(names), Direction::Egress, Some(dst)) = (&self.dns_names, e.direction, e.dst) {
            e.dst_name = names
                .lock()
                .expect("learnt lock")
                .name_of(event.endpoint_id, dst)
                .map(str::to_string);
        }
        if let Some((records, filter)) = &self.records
            && filter.takes(event, &compiled)
        {
            records.lock().expect("records lock").observe(&e);
        }
        // Every event, delivered or not: an allowed one ends its flow's violations.
        self.metrics.count_violation(event, &e);
        if e.reason == Reason::Allowed && !self.log_allowed {
            return Ok(());
        }
        self.metrics.record_event(&e);
        // The event log is an output, as the others: its failure never ends the reader
        // task, whose end would end the agent (enforcement is the kernel's, and goes on).
        let written = match serde_json::to_vec(&e) {
            Ok(line) => self.sink.write_line(&line),
            Err(e) => Err(Lost {
                lines: 1,
                error: e.into(),
            }),
        };
        self.output_failed(written);
        self.hub.publish(&e);
        Ok(())
    }

    fn drained(&mut self) -> anyhow::Result<()> {
        self.batch_policy = None;
        let flushed = self.sink.flush();
        self.output_failed(flushed);
        Ok(())
    }
}

impl Outputs {
    /// Counts a failed write of the event log; logs it unless one was logged lately.
    fn output_failed(&mut self, result: Result<(), Lost>) {
        let Err(lost) = result else { return };
        self.metrics.record_output_failure(lost.lines);
        let u = &mut self.unlogged;
        u.failures += 1;
        u.lost += lost.lines;
        if u.last_logged
            .is_some_and(|t| t.elapsed() < OUTPUT_ERROR_LOG_EVERY)
        {
            return;
        }
        log::error!(
            "event log: writing events failed {} times, {} events lost (stagewall_events_output_lost_total), last: {}; enforcement goes on",
            u.failures,
            u.lost,
            crate::policy::error::Chain(&lost.error)
        );
        *u = Unlogged {
            last_logged: Some(Instant::now()),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::{DIR_EGRESS, FAMILY_V4, HOOK_CONNECT, PROTO_TCP, REASON_NO_RULE};

    use super::*;
    use crate::events::{filter::Filter, reader::Handler as _};

    fn outputs(sink: Sink) -> Outputs {
        Outputs {
            policy: watch::channel(Arc::new(Compiled::default())).1,
            metrics: Arc::new(Metrics::new()),
            sink,
            hub: Arc::new(Hub::default()),
            node: "node-1".into(),
            log_allowed: false,
            records: None,
            batch_policy: None,
            unlogged: Unlogged::default(),
            dns_names: None,
        }
    }

    fn denial() -> Event {
        Event {
            endpoint_id: 7,
            verdict: stagewall_common::VERDICT_DROPPED,
            reason: REASON_NO_RULE,
            direction: DIR_EGRESS,
            hook: HOOK_CONNECT,
            family: FAMILY_V4,
            protocol: PROTO_TCP,
            remote_port: 443,
            ..Default::default()
        }
    }

    /// A denied destination a workload looked up through the DNS proxy is named by the
    /// name it looked up; another workload's lookup names nothing.
    #[test]
    fn a_denied_destination_carries_the_name_the_workload_looked_up() {
        use crate::dns::learnt::{Changes, LearntConfig};
        let mut learnt = Learnt::new(LearntConfig::default());
        let addr = std::net::IpAddr::from([203, 0, 113, 20]);
        let now = crate::dns::proxy::monotonic_ns();
        learnt.learn(
            now,
            7,
            "other.test",
            &[],
            &[(addr, 30)],
            &mut Changes::default(),
        );
        learnt.learn(
            now,
            8,
            "elsewhere.test",
            &[],
            &[(std::net::IpAddr::from([203, 0, 113, 21]), 30)],
            &mut Changes::default(),
        );
        let sink = Sink::stream(
            std::fs::File::options()
                .write(true)
                .open("/dev/null")
                .unwrap(),
        );
        let mut out = Outputs {
            dns_names: Some(Arc::new(Mutex::new(learnt))),
            ..outputs(sink)
        };
        let mut to = |last: u8| {
            let mut e = denial();
            e.remote_addr[..4].copy_from_slice(&[203, 0, 113, last]);
            out.event(&e).unwrap();
        };
        to(20);
        to(21);
        let seen = out.hub.recent(&Filter::default());
        assert_eq!(seen[0].dst_name.as_deref(), Some("other.test"));
        assert_eq!(
            seen[1].dst_name, None,
            "workload 8's lookup does not name 7's flow"
        );
    }

    /// The value of an unlabelled metric, as /metrics shows it.
    fn metric(metrics: &Metrics, name: &str) -> u64 {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// A full disk (ENOSPC from /dev/full) loses events, counted, and never ends the
    /// drain: the reader task ending would end the agent.
    #[test]
    fn a_full_disk_loses_events_counted_and_the_drain_goes_on() {
        let full = std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut out = outputs(Sink::stream(full));
        for batch in 1..=3 {
            for _ in 0..4 {
                out.event(&denial())
                    .expect("an output error does not end the drain");
            }
            out.drained()
                .expect("an output error does not end the drain");
            assert_eq!(
                metric(&out.metrics, "stagewall_events_output_errors_total"),
                batch
            );
            assert_eq!(
                metric(&out.metrics, "stagewall_events_output_lost_total"),
                4 * batch
            );
        }
        assert_eq!(
            out.hub.recent(&Filter::default()).len(),
            12,
            "the event stream has every event still"
        );
    }
}
