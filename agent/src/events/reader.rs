//! Drains the kernel's ring buffer: each event, decoded, goes to the agent's handler
//! (which names it and fans it out).

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use stagewall_common::Event;
use tokio::io::{Interest, unix::AsyncFd};

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

/// What takes the kernel's events.
pub trait Handler {
    /// What the handler fails with; waiting on the ring buffer fails with an io::Error.
    type Error: From<std::io::Error>;
    /// One event.
    fn event(&mut self, event: &Event) -> Result<(), Self::Error>;
    /// The ring buffer is empty for now (a moment to flush).
    fn drained(&mut self) -> Result<(), Self::Error>;
}

/// Hands every event of the ring buffer to `handler`; runs until the task is cancelled or
/// the handler fails.
pub async fn drain<H: Handler>(ring: RingBuf<MapData>, handler: &mut H) -> Result<(), H::Error> {
    let mut fd = readable(ring)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = decode(&item) else {
                log::warn!("short event of {} bytes from the kernel", item.len());
                continue;
            };
            handler.event(&event)?;
        }
        handler.drained()?;
        guard.clear_ready();
    }
}
