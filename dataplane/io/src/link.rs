//! The mesh of links: every shard to every other shard, every shard to control and back. Each
//! direction is a `dp-link` ring; credits for a direction flow back on the opposite one.

use atomic_waker::AtomicWaker;
use core::task::Waker;
use dp_core::Rng;
use dp_link::{LinkConfig, LinkReceiver, LinkSender, link};
use dp_shard::{ControlEvent, ControlRequest, HandOff, Shard, ShardEvent, ShardMessage};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The token of every epoll thread's waker.
pub(crate) const WAKER: mio::Token = mio::Token(usize::MAX);

/// How a sleeping link owner is woken: rung once per flush that finds it parked.
#[derive(Clone, Debug)]
pub(crate) enum Doorbell {
    /// An epoll thread: its `mio::Waker` (an eventfd write).
    Mio(Arc<mio::Waker>),
    /// A glommio executor: the waker of its main task. Waking it from another thread goes
    /// through glommio's cross-executor notification (an eventfd the sleeping executor's
    /// io_uring waits on), and only when that executor sleeps.
    Task(Arc<TaskBell>),
}

impl Doorbell {
    pub(crate) fn ring(&self) {
        match self {
            Self::Mio(waker) => {
                let _ = waker.wake();
            }
            Self::Task(bell) => bell.ring(),
        }
    }
}

/// The doorbell of a task: a flag and the task's waker.
#[derive(Debug, Default)]
pub(crate) struct TaskBell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl TaskBell {
    pub(crate) fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the task to wake; call before [`TaskBell::take`] so no ring is missed.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Whether the bell rang since last asked.
    pub(crate) fn take(&self) -> bool {
        self.rung.swap(false, Ordering::AcqRel)
    }
}
/// Must-deliver messages one direction may have outstanding.
const CREDITS: u32 = 4096;
/// Ring room for credit returns.
const BEST_EFFORT_SLOTS: u32 = 64;
/// Messages published per batch.
const BATCH: u32 = 32;
/// Messages a sender without credit holds, in order, before it must shed.
pub(crate) const BACKLOG_MAX: usize = 1 << 16;

/// A message between shards.
pub(crate) enum PeerMsg {
    Message(ShardMessage),
    /// A connection moving to its home shard, with its socket.
    HandOff(Box<HandOff>, std::net::TcpStream),
    /// A QUIC connection's session moving to its home shard, or bytes of a relayed QUIC
    /// stream (`quic.rs`).
    Quic(crate::quic::Relay),
}

/// What travels in a ring: an item (spending a credit) or returned credits.
pub(crate) enum Tagged<T> {
    Item(T),
    Credits(u32),
}

/// The sending end of one direction.
pub(crate) struct Outbox<T> {
    tx: LinkSender<Tagged<T>>,
    backlog: VecDeque<T>,
    /// Credits to return to the peer for items taken from it.
    owed: u32,
    waker: Doorbell,
    /// Items shed because the backlog was full.
    pub(crate) shed: u64,
}

impl<T> Outbox<T> {
    fn new(mut tx: LinkSender<Tagged<T>>, waker: Doorbell) -> Self {
        tx.grant(CREDITS);
        Self {
            tx,
            backlog: VecDeque::new(),
            owed: 0,
            waker,
            shed: 0,
        }
    }

    /// Messages held back for lack of credit.
    pub(crate) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Sends `item` if a credit allows it now (and nothing is held back ahead of it);
    /// otherwise hands it back, for the shard to refuse upstream.
    pub(crate) fn try_send(&mut self, item: T) -> Result<(), T> {
        if !self.backlog.is_empty() || self.tx.credits() == 0 {
            return Err(item);
        }
        match self.tx.send_credited(Tagged::Item(item)) {
            Ok(true) => {
                self.waker.ring();
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(_) => {
                debug_assert!(false, "a credit was available");
                Ok(())
            }
        }
    }

    /// Sends `item`, in order after anything held back for lack of credit. For work that
    /// cannot be refused (outcomes, session events, hand-offs), bounded by what the shards
    /// hold.
    pub(crate) fn send(&mut self, item: T) {
        if self.backlog.is_empty() && self.tx.credits() > 0 {
            if let Ok(true) = self.tx.send_credited(Tagged::Item(item)) {
                self.waker.ring();
            }
        } else if self.backlog.len() < BACKLOG_MAX {
            self.backlog.push_back(item);
        } else {
            self.shed += 1;
        }
    }

    /// Sends what credit allows from the backlog, returns owed credits, publishes the batch and
    /// wakes the peer if it sleeps.
    pub(crate) fn flush(&mut self) {
        while self.tx.credits() > 0 {
            let Some(item) = self.backlog.pop_front() else {
                break;
            };
            let _ = self.tx.send_credited(Tagged::Item(item));
        }
        if self.owed > 0 && self.tx.send_best_effort(Tagged::Credits(self.owed)).is_ok() {
            self.owed = 0;
        }
        if self.tx.flush() {
            self.waker.ring();
        }
    }
}

/// The receiving end of one direction.
pub(crate) struct Inbox<T> {
    rx: LinkReceiver<Tagged<T>>,
}

impl<T> Inbox<T> {
    /// Hands up to `max` items to `handle`; credits they carried go back through `reply`, and
    /// credits returned by the peer are given to `reply`'s sender.
    pub(crate) fn drain<U>(
        &mut self,
        max: usize,
        reply: &mut Outbox<U>,
        mut handle: impl FnMut(T),
    ) -> usize {
        self.rx.drain(max, |tagged| match tagged {
            Tagged::Item(item) => {
                reply.owed += 1;
                handle(item);
            }
            Tagged::Credits(n) => reply.tx.grant(n),
        })
    }

    /// Declares the owner about to sleep; false if something arrived meanwhile.
    pub(crate) fn park(&self) -> bool {
        self.rx.park()
    }
}

fn pair<T>(waker: &Doorbell) -> (Outbox<T>, Inbox<T>) {
    // The sizes are constants well inside the link's limits.
    #[allow(clippy::expect_used)]
    let config = LinkConfig::new(CREDITS, BEST_EFFORT_SLOTS, BATCH).expect("valid link sizes");
    let (tx, rx) = link(config);
    (Outbox::new(tx, waker.clone()), Inbox { rx })
}

/// One shard's ends of the mesh.
pub(crate) struct ShardLinks {
    /// To each other shard (`None` for itself).
    pub(crate) to_shards: Vec<Option<Outbox<PeerMsg>>>,
    pub(crate) from_shards: Vec<Option<Inbox<PeerMsg>>>,
    pub(crate) to_control: Outbox<ControlRequest>,
    pub(crate) from_control: Inbox<ControlEvent>,
}

impl ShardLinks {
    /// Sends a link-bound shard event (`ToShard`, `ToControl`): envelopes only with a credit,
    /// handing a refused one back to the shard (its sender hears `Retry`); everything else
    /// always. Other events belong to the backend and are not handled here.
    pub(crate) fn route<R: Rng>(&mut self, shard: &mut Shard<R>, event: ShardEvent) {
        match event {
            ShardEvent::ToShard { to, message } => {
                let Some(target) = self
                    .to_shards
                    .get_mut(usize::from(to.0))
                    .and_then(Option::as_mut)
                else {
                    return;
                };
                match message {
                    ShardMessage::Envelope(envelope) => {
                        let message = PeerMsg::Message(ShardMessage::Envelope(envelope));
                        if let Err(PeerMsg::Message(ShardMessage::Envelope(envelope))) =
                            target.try_send(message)
                        {
                            shard.handle_refused(envelope);
                        }
                    }
                    ShardMessage::Presence(batch) => {
                        // Best effort: a full link drops it (counted), never blocks.
                        let message = PeerMsg::Message(ShardMessage::Presence(batch));
                        if let Err(PeerMsg::Message(ShardMessage::Presence(batch))) =
                            target.try_send(message)
                        {
                            shard.handle_presence_refused(batch);
                        }
                    }
                    message => target.send(PeerMsg::Message(message)),
                }
            }
            ShardEvent::ToControl(ControlRequest::Store(envelope)) => {
                if let Err(ControlRequest::Store(envelope)) =
                    self.to_control.try_send(ControlRequest::Store(envelope))
                {
                    shard.handle_refused(envelope);
                }
            }
            ShardEvent::ToControl(request) => self.to_control.send(request),
            ShardEvent::Close { .. } | ShardEvent::HandOff { .. } => {
                debug_assert!(false, "the backend handles closes and hand-offs");
            }
        }
    }

    /// Moves connection `conn`, with its socket, to its home shard `to`. Without the socket
    /// (it failed) the connection is just dropped from this shard.
    pub(crate) fn hand_off<R: Rng>(
        &mut self,
        shard: &mut Shard<R>,
        conn: dp_shard::ConnId,
        to: dp_shard::ShardId,
        stream: Option<std::net::TcpStream>,
    ) {
        let handoff = shard.take_handoff(conn);
        let target = self
            .to_shards
            .get_mut(usize::from(to.0))
            .and_then(Option::as_mut);
        if let (Some(stream), Some(handoff), Some(target)) = (stream, handoff, target) {
            target.send(PeerMsg::HandOff(handoff, stream));
        }
    }

    /// Feeds the shard up to `budget` messages from each incoming link (other shards, then
    /// control) and returns the connections handed over to it, for the backend to adopt with
    /// their sockets. QUIC relay messages go to `relays`, in order, with the sending shard.
    pub(crate) fn drain<R: Rng>(
        &mut self,
        shard: &mut Shard<R>,
        now: dp_core::Instant,
        budget: usize,
        relays: &mut Vec<(usize, crate::quic::Relay)>,
    ) -> Vec<(Box<HandOff>, std::net::TcpStream)> {
        let mut handoffs = Vec::new();
        for (source, inbox) in self.from_shards.iter_mut().enumerate() {
            let (Some(inbox), Some(reply)) = (inbox, self.to_shards[source].as_mut()) else {
                continue;
            };
            inbox.drain(budget, reply, |message| match message {
                PeerMsg::Message(message) => shard.handle_shard_message(now, message),
                PeerMsg::HandOff(handoff, stream) => handoffs.push((handoff, stream)),
                PeerMsg::Quic(relay) => relays.push((source, relay)),
            });
        }
        self.from_control
            .drain(budget, &mut self.to_control, |event| {
                shard.handle_control(now, event);
            });
        handoffs
    }

    /// Messages held back for lack of credit on this shard's outgoing links, and messages
    /// shed because a backlog was full.
    pub(crate) fn backlog_and_shed(&self) -> (u64, u64) {
        let outgoing = self.to_shards.iter().flatten();
        let (mut backlog, mut shed) = (0u64, 0u64);
        for outbox in outgoing {
            backlog += outbox.backlog_len() as u64;
            shed += outbox.shed;
        }
        let control = &self.to_control;
        (backlog + control.backlog_len() as u64, shed + control.shed)
    }
}

/// Control's ends of the mesh, indexed by shard.
pub(crate) struct ControlLinks {
    pub(crate) to_shards: Vec<Outbox<ControlEvent>>,
    pub(crate) from_shards: Vec<Inbox<ControlRequest>>,
}

/// Every link, before the threads take their ends.
pub(crate) struct Mesh {
    shards: Vec<Option<ShardLinks>>,
    control: Option<ControlLinks>,
}

impl Mesh {
    /// `wakers[0]` is control's, `wakers[1 + i]` shard `i`'s.
    pub(crate) fn new(shards: usize, wakers: &[Doorbell]) -> Self {
        let mut to: Vec<Vec<Option<Outbox<PeerMsg>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut from: Vec<Vec<Option<Inbox<PeerMsg>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        for (source, row) in to.iter_mut().enumerate() {
            for (target, slot) in row.iter_mut().enumerate() {
                if source != target {
                    let (outbox, inbox) = pair(&wakers[1 + target]);
                    *slot = Some(outbox);
                    from[target][source] = Some(inbox);
                }
            }
        }
        let mut control = ControlLinks {
            to_shards: Vec::new(),
            from_shards: Vec::new(),
        };
        let mut links = Vec::new();
        for (index, (to_shards, from_shards)) in to.into_iter().zip(from).enumerate() {
            let (to_control, control_inbox) = pair(&wakers[0]);
            let (control_outbox, from_control) = pair(&wakers[1 + index]);
            control.to_shards.push(control_outbox);
            control.from_shards.push(control_inbox);
            links.push(Some(ShardLinks {
                to_shards,
                from_shards,
                to_control,
                from_control,
            }));
        }
        Self {
            shards: links,
            control: Some(control),
        }
    }

    pub(crate) fn take_shard(&mut self, index: usize) -> ShardLinks {
        // Each shard's ends are taken exactly once, by `Server::start`.
        #[allow(clippy::expect_used)]
        self.shards[index].take().expect("shard links taken once")
    }

    pub(crate) fn take_control(&mut self) -> ControlLinks {
        #[allow(clippy::expect_used)]
        self.control.take().expect("control links taken once")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_task_bell_wakes_the_registered_task_once_per_ring_and_keeps_a_missed_ring() {
        let bell = TaskBell::default();
        // Rung before anyone listens: the flag keeps it for the next look.
        bell.ring();
        assert!(bell.take());
        assert!(!bell.take(), "taken once");

        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        bell.register(&waker);
        bell.ring();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(bell.take());
        // The waker is taken by the ring: a second ring without a new registration wakes
        // nobody, but still leaves the flag.
        bell.ring();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(bell.take());
    }

    #[test]
    fn a_flush_rings_a_parked_receiver_once() {
        let bell = Arc::new(TaskBell::default());
        let (mut outbox, mut inbox) = pair::<u32>(&Doorbell::Task(Arc::clone(&bell)));
        let (mut reply, _reply_inbox) = pair::<u32>(&Doorbell::Task(Arc::new(TaskBell::default())));
        assert!(inbox.park());
        outbox.send(1);
        outbox.send(2);
        outbox.flush();
        assert!(bell.take(), "the parked receiver is rung");
        outbox.send(3);
        outbox.flush();
        assert!(!bell.take(), "not parked again: no second ring");
        let mut got = Vec::new();
        inbox.drain(16, &mut reply, |item| got.push(item));
        assert_eq!(got, [1, 2, 3]);
    }
}
