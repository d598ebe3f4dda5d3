//! Links between shards and between a shard and control: one bounded single-producer
//! single-consumer ring per direction (Seastar's `smp_message_queue` pairs), on `rtrb`.
//!
//! A full ring never blocks the sender. Messages come in two classes:
//!
//! - **must-deliver** (an envelope the sender will be acknowledged for): sent only with a
//!   credit that the receiver granted in advance. The ring's capacity covers every credit that
//!   can be outstanding, so a credited message always finds room; without a credit the caller
//!   refuses the work upstream (it does not acknowledge the client) until credit returns.
//! - **best-effort** (statistics, presence): sent only while the messages waiting fill less
//!   than the best-effort share of the ring; otherwise dropped and counted.
//!
//! Messages are staged locally and published with one atomic store per batch
//! ([`LinkSender::flush`]). Wake-ups are batched too: `flush` says whether the receiver parked
//! and needs its doorbell rung (an eventfd in the IO layer), at most once per batch.
//!
//! The link itself performs no I/O and allocates only at construction.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use rtrb::{Consumer, Producer, RingBuffer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Sizes of one link, valid by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    credits_max: u32,
    best_effort_slots: u32,
    batch_max: u32,
}

/// Why a [`LinkConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size was zero.
    Zero,
    /// The ring would be larger than `RING_SLOTS_MAX`.
    TooLarge,
}

/// The largest ring a link may have, in messages.
pub const RING_SLOTS_MAX: u32 = 1 << 20;

impl LinkConfig {
    /// A link whose ring holds `credits_max` credited messages plus `best_effort_slots` others,
    /// publishing at most `batch_max` messages per flush.
    pub fn new(
        credits_max: u32,
        best_effort_slots: u32,
        batch_max: u32,
    ) -> Result<Self, ConfigError> {
        if credits_max == 0 || best_effort_slots == 0 || batch_max == 0 {
            return Err(ConfigError::Zero);
        }
        if credits_max
            .checked_add(best_effort_slots)
            .is_none_or(|n| n > RING_SLOTS_MAX)
        {
            return Err(ConfigError::TooLarge);
        }
        Ok(Self {
            credits_max,
            best_effort_slots,
            batch_max,
        })
    }

    fn ring_slots(self) -> usize {
        (self.credits_max + self.best_effort_slots) as usize
    }
}

/// Why a message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// A must-deliver message without a credit: refuse the work upstream.
    NoCredit,
    /// A best-effort message found no room: it was dropped and counted.
    Dropped,
}

/// Counters of one sending side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Messages published.
    pub published: u64,
    /// Flushes that published at least one message.
    pub batches: u64,
    /// Best-effort messages dropped for lack of room.
    pub dropped: u64,
    /// Must-deliver messages refused for lack of credit.
    pub refused: u64,
}

/// The receiver's "I am asleep" flag, read by the sender once per batch.
#[derive(Debug, Default)]
struct Doorbell {
    parked: AtomicBool,
}

/// The sending end of a link. Owned by one thread.
#[derive(Debug)]
pub struct LinkSender<T> {
    producer: Producer<T>,
    staged: Vec<T>,
    credits: u32,
    config: LinkConfig,
    doorbell: Arc<Doorbell>,
    stats: SenderStats,
}

/// The receiving end of a link. Owned by one thread.
#[derive(Debug)]
pub struct LinkReceiver<T> {
    consumer: Consumer<T>,
    doorbell: Arc<Doorbell>,
}

/// A new link. The sender starts with no credits; the receiver grants them (typically all of
/// `credits_max` at start-up) through the reverse link, and the sender records them with
/// [`LinkSender::grant`].
pub fn link<T>(config: LinkConfig) -> (LinkSender<T>, LinkReceiver<T>) {
    let (producer, consumer) = RingBuffer::new(config.ring_slots());
    let doorbell = Arc::new(Doorbell::default());
    let sender = LinkSender {
        producer,
        staged: Vec::with_capacity(config.batch_max as usize),
        credits: 0,
        config,
        doorbell: Arc::clone(&doorbell),
        stats: SenderStats::default(),
    };
    (sender, LinkReceiver { consumer, doorbell })
}

impl<T> LinkSender<T> {
    /// Credits available for must-deliver messages.
    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Records `n` credits returned by the receiver. Credits never exceed `credits_max`; more
    /// would break the room guarantee, so the excess is a receiver bug and is ignored.
    pub fn grant(&mut self, n: u32) {
        debug_assert!(
            self.credits + n <= self.config.credits_max,
            "credits over the maximum"
        );
        self.credits = self.credits.saturating_add(n).min(self.config.credits_max);
    }

    /// Stages a must-deliver message, spending one credit. Flushes first if the batch is full.
    pub fn send_credited(&mut self, message: T) -> Result<bool, SendError> {
        if self.credits == 0 {
            self.stats.refused += 1;
            return Err(SendError::NoCredit);
        }
        self.credits -= 1;
        Ok(self.stage(message))
    }

    /// Stages a best-effort message if the messages waiting (of both classes, staged or in the
    /// ring) fill less than the best-effort share of the ring; otherwise drops and counts it.
    ///
    /// Why this bound: the sender cannot see how many credited messages the receiver has taken
    /// but not yet returned credit for, so it keeps the whole credited share (`credits_max`
    /// slots) free of best-effort messages. Then best-effort messages never exceed
    /// `best_effort_slots`, credited ones never exceed `credits_max`, and a credited message
    /// always finds room. Under load the ring fills with credited work first and best-effort
    /// messages are shed, which is the intent.
    pub fn send_best_effort(&mut self, message: T) -> Result<bool, SendError> {
        let waiting = self.config.ring_slots() - self.producer.slots() + self.staged.len();
        if waiting >= self.config.best_effort_slots as usize {
            self.stats.dropped += 1;
            return Err(SendError::Dropped);
        }
        Ok(self.stage(message))
    }

    /// Returns whether staging flushed a full batch and the receiver needs waking.
    fn stage(&mut self, message: T) -> bool {
        self.staged.push(message);
        if self.staged.len() >= self.config.batch_max as usize {
            self.flush()
        } else {
            false
        }
    }

    /// Publishes every staged message with one release store. Returns whether the receiver was
    /// parked and must be woken (ring its doorbell once).
    pub fn flush(&mut self) -> bool {
        if self.staged.is_empty() {
            return false;
        }
        let n = self.staged.len();
        // Room is guaranteed: credited messages have reserved slots and best-effort ones were
        // admitted only into free slots, so the chunk always fits. Should it not, keep the
        // messages staged rather than lose must-deliver work.
        let Ok(chunk) = self.producer.write_chunk_uninit(n) else {
            debug_assert!(false, "link ring overflow: credit accounting is broken");
            return false;
        };
        let written = chunk.fill_from_iter(self.staged.drain(..));
        debug_assert_eq!(written, n);
        self.stats.published += written as u64;
        self.stats.batches += 1;
        self.doorbell.parked.swap(false, Ordering::AcqRel)
    }

    /// Messages staged but not yet published.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }
}

impl<T> LinkReceiver<T> {
    /// Takes up to `max` published messages, oldest first, handing each to `handle`.
    /// Returns how many were taken (the budget for one loop iteration).
    pub fn drain(&mut self, max: usize, mut handle: impl FnMut(T)) -> usize {
        let n = self.consumer.slots().min(max);
        if n == 0 {
            return 0;
        }
        match self.consumer.read_chunk(n) {
            Ok(chunk) => {
                let mut taken = 0;
                for message in chunk {
                    handle(message);
                    taken += 1;
                }
                taken
            }
            Err(_) => 0,
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.consumer.slots()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.consumer.is_empty()
    }

    /// Declares the receiver about to sleep. Returns `false` if messages arrived meanwhile (do
    /// not sleep then). The next flush by the sender reports that the doorbell must be rung.
    pub fn park(&self) -> bool {
        self.doorbell.parked.store(true, Ordering::Release);
        if self.consumer.is_empty() {
            true
        } else {
            self.doorbell.parked.store(false, Ordering::Release);
            false
        }
    }
}

#[cfg(test)]
mod tests;
