//! Where each kernel event goes: named after the policy in force, into the flow records
//! (the directions they cover), the metrics, the event log and the HTTP event stream.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use stagewall_common::Event;
use tokio::sync::watch;

use super::Records;
use crate::{
    compiler::Compiled,
    events::{Reason, describe, hub::Hub, reader, sink::Sink},
    observe::metrics::Metrics,
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
        let e = describe(event, &compiled, &self.node);
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
        self.sink.write_line(&serde_json::to_vec(&e)?)?;
        self.hub.publish(&e);
        Ok(())
    }

    fn drained(&mut self) -> anyhow::Result<()> {
        self.batch_policy = None;
        Ok(self.sink.flush()?)
    }
}
