//! Drains the kernel's ring buffer: every event is named, counted in the metrics, written
//! to the sink and published to HTTP readers.

use std::{os::fd::AsRawFd, sync::Arc};

use aya::maps::{MapData, RingBuf};
use stagewall_common::Event;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use super::{describe, hub::Hub, sink::Sink};
use crate::{compiler::Compiled, metrics::Metrics};

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
            out.metrics.record_event(&e);
            out.sink.write_line(&serde_json::to_vec(&e)?)?;
            out.hub.publish(&e);
        }
        out.sink.flush()?;
        guard.clear_ready();
    }
}
