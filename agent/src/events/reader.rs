//! Drains the kernel's ring buffer: every event is named, counted in the metrics, written
//! to the sink and published to HTTP readers.

use std::{
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use stagewall_common::{Event, REASON_ALLOWED, audit_flag};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use super::{describe, hub::Hub, sink::Sink};
use crate::{
    compiler::Compiled,
    flow_records::{FlowRecords, Recording},
    metrics::Metrics,
};

/// Registers a kernel ring buffer's fd with tokio for readiness (read) events.
pub fn readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner` (an aya map), which the AsyncFd owns and which
    // keeps it open and unchanged until it is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain data of exactly this size; the ring buffer gives no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

pub struct Outputs {
    pub metrics: Arc<Metrics>,
    pub sink: Sink,
    pub hub: Arc<Hub>,
    pub node: String,
    /// Allowed flows go to the sink and the hub (--log-allowed); without it the kernel
    /// reports them only for the flow records.
    pub log_allowed: bool,
    /// Flow records, and which events feed them.
    pub records: Option<(Arc<Mutex<FlowRecords>>, RecordFilter)>,
}

/// Which events the flow records take: those of audited directions, or all.
#[derive(Clone, Copy)]
pub struct RecordFilter {
    pub recording: Recording,
    /// The agent runs in audit mode: every direction is audited.
    pub agent_audits: bool,
}

impl RecordFilter {
    /// Does it take a direction (DIR_*) of an endpoint with these EP_* flags?
    pub fn covers(&self, flags: u32, direction: u8) -> bool {
        match self.recording {
            Recording::All => true,
            Recording::Off => false,
            Recording::Audited => self.agent_audits || flags & audit_flag(direction) != 0,
        }
    }

    /// Does it take this event? Only of workloads of the policy in force.
    fn takes(&self, event: &Event, compiled: &Compiled) -> bool {
        compiled
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == event.endpoint_id)
            .is_some_and(|e| self.covers(e.flags, event.direction))
    }
}

/// Runs until the task is cancelled.
pub async fn stream(
    ring: RingBuf<MapData>,
    policy: watch::Receiver<Arc<Compiled>>,
    mut out: Outputs,
) -> anyhow::Result<()> {
    let mut fd = readable(ring)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let compiled = policy.borrow().clone();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = decode(&item) else {
                log::warn!("short event of {} bytes from the kernel", item.len());
                continue;
            };
            let e = describe(&event, &compiled, &out.node);
            if let Some((records, filter)) = &out.records
                && filter.takes(&event, &compiled)
            {
                records.lock().expect("records lock").observe(&e);
            }
            if event.reason == REASON_ALLOWED && !out.log_allowed {
                continue;
            }
            out.metrics.record_event(&e);
            out.sink.write_line(&serde_json::to_vec(&e)?)?;
            out.hub.publish(&e);
        }
        out.sink.flush()?;
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use stagewall_common::{DIR_EGRESS, DIR_INGRESS, EP_AUDIT_EGRESS, EP_AUDIT_INGRESS};

    use super::*;

    #[test]
    fn records_take_audited_directions_or_all_or_none() {
        let filter = |recording, agent_audits| RecordFilter {
            recording,
            agent_audits,
        };
        let audited = filter(Recording::Audited, false);
        assert!(audited.covers(EP_AUDIT_INGRESS, DIR_INGRESS));
        assert!(
            !audited.covers(EP_AUDIT_INGRESS, DIR_EGRESS),
            "per direction"
        );
        assert!(!audited.covers(0, DIR_INGRESS), "an enforced workload");
        assert!(
            filter(Recording::Audited, true).covers(0, DIR_EGRESS),
            "--mode audit"
        );
        assert!(filter(Recording::All, false).covers(0, DIR_EGRESS));
        assert!(!filter(Recording::Off, true).covers(EP_AUDIT_EGRESS, DIR_EGRESS));
    }
}
