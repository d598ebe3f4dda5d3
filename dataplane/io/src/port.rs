//! The control side's end of the links, for a control plane outside this crate.

use crate::link::{ControlLinks, TaskBell};
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use dp_shard::{ControlEvent, ControlRequest, ShardId};
use std::sync::Arc;

/// The control side's end of every shard's links: requests in, events out, with the credits
/// of the links handled here. A shard's `Store` requests are credited: while control does not
/// take them, the shard runs out of credit and refuses envelopes upstream (`SendAck(Retry)`),
/// so a slow store slows senders instead of filling memory.
///
/// Serve it from an async task: [`ControlPort::ready`] resolves when a shard may have sent
/// something (one wake per flush on the shard side), and [`ControlPort::waker`] lets other
/// threads (a store's commit thread) wake the same task.
pub struct ControlPort {
    links: ControlLinks,
    bell: Arc<TaskBell>,
}

impl core::fmt::Debug for ControlPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ControlPort")
            .field("shards", &self.links.from_shards.len())
            .finish_non_exhaustive()
    }
}

impl ControlPort {
    pub(crate) fn new(links: ControlLinks, bell: Arc<TaskBell>) -> Self {
        Self { links, bell }
    }

    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.links.from_shards.len()
    }

    /// Takes up to `max` requests from shard `shard`, in the order it sent them, returning
    /// each one's credit to it. Returns how many were taken.
    pub fn receive(
        &mut self,
        shard: usize,
        max: usize,
        handle: impl FnMut(ControlRequest),
    ) -> usize {
        let (Some(inbox), Some(reply)) = (
            self.links.from_shards.get_mut(shard),
            self.links.to_shards.get_mut(shard),
        ) else {
            return 0;
        };
        inbox.drain(max, reply, handle)
    }

    /// Sends `event` to shard `shard` (published at the next [`ControlPort::flush`]).
    pub fn send(&mut self, shard: ShardId, event: ControlEvent) {
        if let Some(outbox) = self.links.to_shards.get_mut(usize::from(shard.0)) {
            outbox.send(event);
        }
    }

    /// Publishes what was sent and the credits owed, and wakes the shards that sleep.
    pub fn flush(&mut self) {
        for outbox in &mut self.links.to_shards {
            outbox.flush();
        }
    }

    /// Resolves once a shard (or [`ControlPort::waker`]) rang since the last time, or at once
    /// if something is already waiting.
    pub fn ready(&mut self) -> impl Future<Output = ()> + Send + '_ {
        Ready { port: self }
    }

    /// Something to call from another thread to wake the task awaiting
    /// [`ControlPort::ready`]; cheap and never blocks.
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let bell = Arc::clone(&self.bell);
        Arc::new(move || bell.ring())
    }
}

struct Ready<'a> {
    port: &'a mut ControlPort,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let port = &*self.get_mut().port;
        port.bell.register(cx.waker());
        if port.bell.take() || !port.links.from_shards.iter().all(|inbox| inbox.park()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
