//! Conversation messages, typing indicators and receipts (docs/design/0013).
//!
//! A conversation has a home shard, [`conversation_home`], like a device. A `Send` to a
//! conversation goes from the sender's shard to that home, which keeps a bounded cache of the
//! conversation's member devices filled from control ([`ControlRequest::LookupConversation`]),
//! checks that the sender may send, gives the message the conversation's next sequence number
//! (from a block control hands out, so numbers never go back across a restart) and makes one
//! copy per member device, the sending device excepted. Each copy takes the ordinary route to
//! its recipient (delivered live, or stored by control); the home counts their outcomes in a
//! fan-out and answers the sender once every copy is delivered or stored: `Delivered` when all
//! were delivered, `Stored` when any was stored, `Retry` when any was refused (the sender's
//! resend then copies to everyone again, and recipients deduplicate by message id).
//!
//! A non-member hears `NOT_FOUND`, exactly as for a conversation that does not exist, so ids
//! cannot be probed; a member without the right to send hears `FORBIDDEN`. Typing indicators
//! and receipts take the same way to the home and go, best effort, to the member devices that
//! are online.

use crate::conn::ConnId;
use crate::route::{self, Envelope, EnvelopeRef, Origin, home_shard, recycle};
use crate::{ControlRequest, Shard, ShardEvent, ShardId, ShardMessage};
use core::ops::Range;
use core::time::Duration;
use dp_core::limits::RECEIPTS_PER_FRAME_MAX;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_proto::{
    ErrorCode, Frame, FrameType, MessageIds, ReceiptFrom, ReceiptKind, SendStatus, TypingFrom,
    TypingState,
};
use std::collections::{BTreeMap, VecDeque};

/// Conversations whose membership one shard keeps cached; past it the least recently used is
/// forgotten.
pub const CONVERSATIONS_CACHED_MAX: usize = 4096;
/// Membership lookups one shard may have open with control at once; a message that would need
/// another is answered `Retry`.
pub const CONVERSATION_LOOKUPS_MAX: usize = 1024;
/// Messages and signals that may wait for one conversation's lookup; more are answered
/// `Retry` (signals are dropped).
pub const SENDS_WAITING_PER_CONVERSATION_MAX: usize = 64;
/// Conversation messages one shard may be fanning out at once (copies not all delivered or
/// stored); more are answered `Retry`.
pub const FANOUTS_MAX: usize = 16_384;
/// How long a cached membership is trusted without news from control. Membership changes made
/// through the API invalidate it at once; this bounds staleness for what does not (a device
/// added to a member's account, a friendship ended).
pub const CONVERSATION_CACHE_TTL: Duration = Duration::from_secs(30);
/// A cached conversation asks control again ahead of need, while it keeps fanning out, once
/// less than 1/`REFRESH_AHEAD_FRACTION` of its sequence block is left.
pub const REFRESH_AHEAD_FRACTION: u64 = 4;
/// ... or once its membership is this old, so that a busy conversation never waits for a
/// lookup.
pub const REFRESH_AHEAD_AGE: Duration = Duration::from_secs(20);
const _: () = assert!(REFRESH_AHEAD_AGE.as_secs() < CONVERSATION_CACHE_TTL.as_secs());
/// After asking ahead, a conversation does not ask ahead again for this long (an answer that
/// did not come, or storage that is unavailable, costs one lookup per interval, not one per
/// message).
pub const REFRESH_AHEAD_INTERVAL: Duration = Duration::from_secs(1);
/// Member devices one shard keeps cached over all its conversations (about 24 MiB); past it
/// the least recently used conversations are forgotten.
pub const CACHED_MEMBER_DEVICES_MAX: usize = 1 << 20;
/// The most member devices a conversation's answer may list (1000 members × 16 devices, the
/// control plane's defaults, fit); the rest are ignored.
pub const MEMBER_DEVICES_MAX: usize = 16_384;
/// The most member ids a recycled envelope box keeps room for.
pub(crate) const SPARE_MEMBERS_CAPACITY_MAX: usize = 1024;
/// Bytes of message ids one receipt carries.
pub(crate) const RECEIPT_BYTES_MAX: usize = RECEIPTS_PER_FRAME_MAX * 16;

const _: () = assert!(SENDS_WAITING_PER_CONVERSATION_MAX <= FANOUTS_MAX);
const _: () = assert!(MEMBER_DEVICES_MAX <= CACHED_MEMBER_DEVICES_MAX);

/// One member device of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The device.
    pub device: DeviceId,
    /// Whether it may send to the conversation (`control-core`'s `may_send` rule).
    pub may_send: bool,
}

/// What control says of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Every live device of every member.
    pub members: Vec<Member>,
    /// Sequence numbers reserved for the conversation's home shard, never handed out again
    /// (durably): `start >= 1`.
    pub seq: Range<u64>,
}

/// Control's answer to [`ControlRequest::LookupConversation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationAnswer {
    /// The conversation exists.
    Found(Box<ConversationInfo>),
    /// No such conversation.
    NotFound,
    /// Control could not tell now (storage unavailable): the waiting senders hear `Retry`.
    Unavailable,
}

/// Where an envelope is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// To its conversation's home shard, to be checked and fanned out.
    Conversation,
    /// To the home shard of the member devices it lists, to be copied to each.
    Members,
    /// To its recipient's home shard.
    Device,
}

/// A best-effort signal travelling as an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Not a signal: a message.
    None,
    /// A typing indicator.
    Typing(TypingState),
    /// A receipt; the body holds the message ids, 16 bytes each.
    Receipt(ReceiptKind),
}

/// A fan-out's handle: slot index + 1 in the high half, generation in the low half; 0 names
/// none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FanoutId(u64);

impl FanoutId {
    pub(crate) const NONE: Self = Self(0);
}

/// The home shard of a conversation: the keyed hash of [`home_shard`] over its id.
pub fn conversation_home(conversation: ConversationId, shard_count: u16, key: u64) -> ShardId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&conversation.0.to_le_bytes());
    // A tag in the high half keeps conversation ids apart from device ids.
    id[8..].copy_from_slice(b"convrstn");
    home_shard(DeviceId(id), shard_count, key)
}

struct Cached {
    /// Sorted by device, no duplicates.
    members: Vec<Member>,
    /// `members.len()` when cached (the list is out of the entry while a fan-out runs).
    counted: usize,
    next_seq: u64,
    seq_end: u64,
    /// The block a refresh brought while numbers of the current one were left: used next.
    next_block: Option<Range<u64>>,
    /// The length of the latest block control handed out.
    block_len: u64,
    fetched_at: Instant,
    /// No asking ahead before this.
    refresh_not_before: Instant,
    used: u64,
}

impl Cached {
    /// Whether a sequence number is at hand (moving to the next block if this one is spent).
    fn has_seq(&mut self) -> bool {
        if self.next_seq >= self.seq_end
            && let Some(block) = self.next_block.take()
        {
            (self.next_seq, self.seq_end) = (block.start, block.end);
        }
        self.next_seq < self.seq_end
    }

    /// Whether to ask control again now, while this entry still serves.
    fn wants_refresh(&self, now: Instant) -> bool {
        let left = self.seq_end.saturating_sub(self.next_seq);
        now >= self.refresh_not_before
            && ((self.next_block.is_none()
                && left.saturating_mul(REFRESH_AHEAD_FRACTION) < self.block_len)
                || now >= self.fetched_at.saturating_add(REFRESH_AHEAD_AGE))
    }
}

struct Lookup {
    /// Waiting messages and signals, in arrival order.
    #[allow(clippy::vec_box)]
    waiting: VecDeque<Box<Envelope>>,
    /// The membership changed while the lookup was open: its answer may be stale.
    refetch: bool,
}

struct Fanout {
    origin: Origin,
    message: MessageId,
    seq: u64,
    remaining: u32,
    stored: bool,
    retry: bool,
    /// The message's box from the sender's shard, returned with the acknowledgement.
    spare: Option<Box<Envelope>>,
}

struct Slot {
    generation: u32,
    fanout: Option<Fanout>,
}

/// A shard's conversation state, all bounded by the limits above.
#[derive(Default)]
pub(crate) struct Table {
    cached: BTreeMap<ConversationId, Cached>,
    lookups: BTreeMap<ConversationId, Lookup>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    tick: u64,
    /// Member devices over all cached conversations.
    members_cached: usize,
    /// One batch per shard while a message is fanned out (reused, so a steady fan-out
    /// allocates nothing).
    #[allow(clippy::vec_box)]
    batches: Vec<Option<Box<Envelope>>>,
}

impl Table {
    fn forget(&mut self, conversation: ConversationId) {
        if let Some(entry) = self.cached.remove(&conversation) {
            self.members_cached = self.members_cached.saturating_sub(entry.counted);
        }
    }

    /// Caches `entry`, forgetting the least recently used conversations while a bound would
    /// be passed.
    fn remember(&mut self, conversation: ConversationId, mut entry: Cached) {
        self.forget(conversation);
        entry.counted = entry.members.len();
        while !self.cached.is_empty()
            && (self.cached.len() >= CONVERSATIONS_CACHED_MAX
                || self.members_cached + entry.counted > CACHED_MEMBER_DEVICES_MAX)
        {
            let Some(oldest) = self
                .cached
                .iter()
                .min_by_key(|(_, cached)| cached.used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.forget(oldest);
        }
        self.members_cached += entry.counted;
        self.cached.insert(conversation, entry);
    }

    fn insert_fanout(&mut self, fanout: Fanout) -> Option<FanoutId> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.slots.len() < FANOUTS_MAX => {
                self.slots.push(Slot {
                    generation: 0,
                    fanout: None,
                });
                u32::try_from(self.slots.len() - 1).ok()?
            }
            None => return None,
        };
        let slot = self.slots.get_mut(usize::try_from(index).ok()?)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.fanout = Some(fanout);
        Some(FanoutId(
            (u64::from(index) + 1) << 32 | u64::from(slot.generation),
        ))
    }

    fn fanout_mut(&mut self, id: FanoutId) -> Option<(u32, &mut Fanout)> {
        let index = u32::try_from((id.0 >> 32).checked_sub(1)?).ok()?;
        let generation = (id.0 & u64::from(u32::MAX)) as u32;
        let slot = self.slots.get_mut(usize::try_from(index).ok()?)?;
        if slot.generation != generation {
            return None;
        }
        slot.fanout.as_mut().map(|fanout| (index, fanout))
    }

    fn free_fanout(&mut self, index: u32) {
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            slot.fanout = None;
            self.free.push(index);
        }
    }

    /// Conversations cached (for tests and metrics).
    pub(crate) fn cached_len(&self) -> usize {
        self.cached.len()
    }
}

/// A message or signal from a local session: to the conversation's home shard.
pub(crate) fn submit_ref<R: Rng>(shard: &mut Shard<R>, now: Instant, envelope: &EnvelopeRef<'_>) {
    let home = conversation_home(
        envelope.conversation,
        shard.config.shard_count,
        shard.config.routing_key,
    );
    let copy = envelope.to_boxed(shard);
    if home == shard.config.shard {
        submit(shard, now, copy);
    } else {
        shard.stats.routed_remote += 1;
        shard.events.push_back(ShardEvent::ToShard {
            to: home,
            message: ShardMessage::Envelope(copy),
        });
    }
}

/// A typing indicator or receipt from a local session.
pub(crate) fn signal<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    id: ConnId,
    sender: DeviceId,
    conversation: ConversationId,
    signal: Signal,
    body: &[u8],
) {
    let envelope = EnvelopeRef {
        message: MessageId([0; 16]),
        sender,
        recipient: DeviceId([0; 16]),
        conversation,
        seq: 0,
        sent_at_ms: shard.unix_ms(now),
        body,
        origin: Origin::session(shard.config.shard, id),
        stage: Stage::Conversation,
        signal,
    };
    submit_ref(shard, now, &envelope);
}

/// A message or signal at its conversation's home shard: fanned out now if the membership is
/// cached (and, for a message, a sequence number is at hand), else queued behind a lookup.
pub(crate) fn submit<R: Rng>(shard: &mut Shard<R>, now: Instant, envelope: Box<Envelope>) {
    let conversation = envelope.conversation;
    let table = &mut shard.conversations;
    table.tick += 1;
    if let Some(entry) = table.cached.get_mut(&conversation) {
        let fresh = now < entry.fetched_at.saturating_add(CONVERSATION_CACHE_TTL);
        let numbered = envelope.signal != Signal::None || entry.has_seq();
        if fresh && numbered {
            entry.used = table.tick;
            let refresh = entry.wants_refresh(now)
                && !table.lookups.contains_key(&conversation)
                && table.lookups.len() < CONVERSATION_LOOKUPS_MAX;
            if refresh {
                // Ask ahead: the answer replaces the membership and brings the next block.
                entry.refresh_not_before = now.saturating_add(REFRESH_AHEAD_INTERVAL);
                table.lookups.insert(
                    conversation,
                    Lookup {
                        waiting: VecDeque::new(),
                        refetch: false,
                    },
                );
                ask(shard, conversation);
            }
            fan_out(shard, envelope);
            return;
        }
        // Stale, or its sequence block is spent: ask control again (the rest of the block is
        // skipped, so numbers keep increasing).
        table.forget(conversation);
    }
    let open = table.lookups.len();
    match table.lookups.get_mut(&conversation) {
        Some(lookup) if lookup.waiting.len() < SENDS_WAITING_PER_CONVERSATION_MAX => {
            lookup.waiting.push_back(envelope);
        }
        Some(_) => turn_away(shard, envelope),
        None if open < CONVERSATION_LOOKUPS_MAX => {
            let mut waiting = VecDeque::new();
            waiting.push_back(envelope);
            table.lookups.insert(
                conversation,
                Lookup {
                    waiting,
                    refetch: false,
                },
            );
            ask(shard, conversation);
        }
        None => turn_away(shard, envelope),
    }
}

fn ask<R: Rng>(shard: &mut Shard<R>, conversation: ConversationId) {
    shard.stats.conversation_lookups += 1;
    shard
        .events
        .push_back(ShardEvent::ToControl(ControlRequest::LookupConversation {
            conversation,
        }));
}

/// Not taken for lack of room: a message's sender hears `Retry`, a signal is dropped.
fn turn_away<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>) {
    if envelope.signal == Signal::None {
        shard.stats.refused += 1;
        route::acknowledge(
            shard,
            envelope.origin,
            envelope.message,
            SendStatus::Retry,
            None,
        );
    } else {
        shard.stats.signals_dropped += 1;
    }
    recycle(shard, envelope);
}

/// Refused by the membership check: a message's sender hears `Error(code)`, a signal is
/// dropped.
fn reject<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>, code: ErrorCode) {
    shard.stats.conversation_refused += 1;
    if envelope.signal == Signal::None {
        let (origin, conversation) = (envelope.origin, envelope.conversation);
        if origin.shard == shard.config.shard {
            rejected(shard, origin, conversation, code);
        } else {
            shard.events.push_back(ShardEvent::ToShard {
                to: origin.shard,
                message: ShardMessage::Rejected {
                    origin,
                    conversation,
                    code,
                },
            });
        }
    }
    recycle(shard, envelope);
}

/// Tells the sender of a refused conversation message: `Error(code)` about a `Send`, its
/// reference the conversation id.
pub(crate) fn rejected<R: Rng>(
    shard: &mut Shard<R>,
    origin: Origin,
    conversation: ConversationId,
    code: ErrorCode,
) {
    shard.send_error_about(origin.conn, code, FrameType::Send as u8, conversation.0);
}

/// Checks the sender against the cached membership and copies the message or signal to every
/// other member device.
fn fan_out<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>) {
    let conversation = envelope.conversation;
    let Some(entry) = shard.conversations.cached.get_mut(&conversation) else {
        turn_away(shard, envelope);
        return;
    };
    let may_send = match entry
        .members
        .binary_search_by_key(&envelope.sender, |m| m.device)
    {
        Ok(at) => entry.members[at].may_send,
        Err(_) => {
            // A non-member hears what a sender to a non-existent conversation hears.
            reject(shard, envelope, ErrorCode::NOT_FOUND);
            return;
        }
    };
    if !may_send {
        reject(shard, envelope, ErrorCode::FORBIDDEN);
        return;
    }
    let recipients = u32::try_from(entry.members.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let seq = if envelope.signal == Signal::None {
        let seq = entry.next_seq;
        entry.next_seq += 1;
        seq
    } else {
        0
    };
    // The member list leaves the cache while the copies are made (and comes back after), so
    // routing may borrow the shard.
    let members = core::mem::take(&mut entry.members);
    let mut origin = Origin::session(shard.config.shard, ConnId::DANGLING);
    if envelope.signal == Signal::None {
        shard.stats.conversation_sends += 1;
        if recipients == 0 {
            let (origin, message) = (envelope.origin, envelope.message);
            restore(shard, conversation, members);
            route::acknowledge_seq(
                shard,
                origin,
                message,
                SendStatus::Delivered,
                seq,
                Some(envelope),
            );
            return;
        }
        let fanout = Fanout {
            origin: envelope.origin,
            message: envelope.message,
            seq,
            remaining: recipients,
            stored: false,
            retry: false,
            spare: None,
        };
        match shard.conversations.insert_fanout(fanout) {
            Some(id) => origin.fanout = id,
            None => {
                restore(shard, conversation, members);
                turn_away(shard, envelope);
                return;
            }
        }
    }
    if envelope.signal != Signal::None {
        origin = envelope.origin;
    }
    let mut batches = core::mem::take(&mut shard.conversations.batches);
    batches.resize_with(usize::from(shard.config.shard_count), || None);
    for member in &members {
        if member.device == envelope.sender {
            continue;
        }
        let mut copy = envelope.borrowed();
        copy.recipient = member.device;
        copy.seq = seq;
        copy.origin = origin;
        let home = home_shard(
            member.device,
            shard.config.shard_count,
            shard.config.routing_key,
        );
        if home == shard.config.shard {
            copy.stage = Stage::Device;
            to_local_member(shard, &copy);
            continue;
        }
        // Members on another shard travel as one batch per shard.
        let Some(batch) = batches.get_mut(usize::from(home.0)) else {
            continue;
        };
        if batch.is_none() {
            copy.stage = Stage::Members;
            copy.recipient = DeviceId([0; 16]);
            *batch = Some(copy.to_boxed(shard));
        }
        if let Some(batch) = batch {
            batch.members.push(member.device);
        }
    }
    for (to, batch) in batches.iter_mut().enumerate() {
        if let Some(batch) = batch.take() {
            shard.stats.routed_remote += 1;
            shard.events.push_back(ShardEvent::ToShard {
                to: ShardId(u16::try_from(to).unwrap_or(u16::MAX)),
                message: ShardMessage::Envelope(batch),
            });
        }
    }
    shard.conversations.batches = batches;
    restore(shard, conversation, members);
    if envelope.signal == Signal::None && envelope.origin.shard != shard.config.shard {
        // The box goes back to the sender's shard with the acknowledgement.
        if let Some((_, fanout)) = shard.conversations.fanout_mut(origin.fanout) {
            fanout.spare = Some(envelope);
            return;
        }
    }
    recycle(shard, envelope);
}

/// One copy for a member homed here: a message is delivered or stored, a signal goes to the
/// member's session if it has one.
fn to_local_member<R: Rng>(shard: &mut Shard<R>, copy: &EnvelopeRef<'_>) {
    if copy.signal == Signal::None {
        shard.stats.conversation_copies += 1;
        let boxed = copy.to_boxed(shard);
        route::deliver_or_store(shard, boxed);
    } else {
        deliver_signal_ref(shard, copy);
    }
}

/// A batch from a conversation's home shard: one copy for each member it lists.
pub(crate) fn copy_to_members<R: Rng>(shard: &mut Shard<R>, batch: Box<Envelope>) {
    for &device in &batch.members {
        let mut copy = batch.borrowed();
        copy.recipient = device;
        copy.stage = Stage::Device;
        to_local_member(shard, &copy);
    }
    let maker = batch.origin.shard;
    if maker == shard.config.shard {
        recycle(shard, batch);
    } else {
        shard.events.push_back(ShardEvent::ToShard {
            to: maker,
            message: ShardMessage::Spare(batch),
        });
    }
}

fn restore<R: Rng>(shard: &mut Shard<R>, conversation: ConversationId, members: Vec<Member>) {
    if let Some(entry) = shard.conversations.cached.get_mut(&conversation) {
        entry.members = members;
    }
}

/// A signal for a device homed here: to its session if it has one and room, else dropped.
fn deliver_signal_ref<R: Rng>(shard: &mut Shard<R>, copy: &EnvelopeRef<'_>) {
    let Some(conn) = shard.online.get(&copy.recipient).map(|online| online.conn) else {
        shard.stats.signals_dropped += 1;
        return;
    };
    let mut ids = [MessageId([0; 16]); RECEIPTS_PER_FRAME_MAX];
    let frame = match copy.signal {
        Signal::None => return,
        Signal::Typing(state) => Frame::TypingFrom(TypingFrom {
            device: copy.sender,
            conversation: copy.conversation,
            state,
        }),
        Signal::Receipt(kind) => {
            let mut count = 0;
            for (slot, chunk) in ids.iter_mut().zip(copy.body.chunks_exact(16)) {
                slot.0.copy_from_slice(chunk);
                count += 1;
            }
            if count == 0 {
                return;
            }
            Frame::ReceiptFrom(ReceiptFrom {
                from: copy.sender,
                conversation: copy.conversation,
                kind,
                messages: MessageIds::new(&ids[..count]),
            })
        }
    };
    if shard.send_best_effort(conn, &frame) {
        shard.stats.signals_forwarded += 1;
    } else {
        shard.stats.signals_dropped += 1;
    }
}

/// One copy of a fanned-out message was delivered, stored or refused.
pub(crate) fn copy_outcome<R: Rng>(shard: &mut Shard<R>, id: FanoutId, status: SendStatus) {
    let Some((index, fanout)) = shard.conversations.fanout_mut(id) else {
        return;
    };
    match status {
        SendStatus::Stored => fanout.stored = true,
        SendStatus::Retry => fanout.retry = true,
        _ => {}
    }
    fanout.remaining = fanout.remaining.saturating_sub(1);
    if fanout.remaining > 0 {
        return;
    }
    let status = if fanout.retry {
        SendStatus::Retry
    } else if fanout.stored {
        SendStatus::Stored
    } else {
        SendStatus::Delivered
    };
    let (origin, message, seq) = (fanout.origin, fanout.message, fanout.seq);
    let spare = fanout.spare.take();
    shard.conversations.free_fanout(index);
    route::acknowledge_seq(shard, origin, message, status, seq, spare);
}

/// Control's answer to a lookup: the waiting messages and signals go on.
pub(crate) fn answered<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    conversation: ConversationId,
    answer: ConversationAnswer,
) {
    let Some(mut lookup) = shard.conversations.lookups.remove(&conversation) else {
        return;
    };
    if lookup.refetch {
        // The membership changed since the question was asked: ask again.
        lookup.refetch = false;
        shard.conversations.lookups.insert(conversation, lookup);
        ask(shard, conversation);
        return;
    }
    match answer {
        ConversationAnswer::Found(info) if info.seq.start >= 1 && info.seq.start < info.seq.end => {
            let ConversationInfo { mut members, seq } = *info;
            members.sort_unstable_by_key(|m| m.device);
            members.dedup_by_key(|m| m.device);
            members.truncate(MEMBER_DEVICES_MAX);
            let table = &mut shard.conversations;
            let used = table.tick;
            let block_len = seq.end - seq.start;
            // A refresh ahead of need: what is left of the current block is used first.
            let (next_seq, seq_end, next_block) = match table.cached.get(&conversation) {
                Some(old) if old.next_seq < old.seq_end => (old.next_seq, old.seq_end, Some(seq)),
                _ => (seq.start, seq.end, None),
            };
            table.remember(
                conversation,
                Cached {
                    members,
                    counted: 0,
                    next_seq,
                    seq_end,
                    next_block,
                    block_len,
                    fetched_at: now,
                    refresh_not_before: now,
                    used,
                },
            );
            for envelope in lookup.waiting {
                submit(shard, now, envelope);
            }
        }
        ConversationAnswer::NotFound => {
            shard.conversations.forget(conversation);
            for envelope in lookup.waiting {
                reject(shard, envelope, ErrorCode::NOT_FOUND);
            }
        }
        ConversationAnswer::Found(_) | ConversationAnswer::Unavailable => {
            for envelope in lookup.waiting {
                turn_away(shard, envelope);
            }
        }
    }
}

/// A device was revoked: forget every cached conversation it is a member of, so no more
/// copies are made for it.
pub(crate) fn device_revoked<R: Rng>(shard: &mut Shard<R>, device: DeviceId) {
    let table = &mut shard.conversations;
    let mut affected = Vec::new();
    for (id, entry) in &table.cached {
        if entry
            .members
            .binary_search_by_key(&device, |m| m.device)
            .is_ok()
        {
            affected.push(*id);
        }
    }
    for id in affected {
        changed(shard, id);
    }
}

/// Control says the conversation's membership changed: forget it, and do not trust an answer
/// to a question asked before.
pub(crate) fn changed<R: Rng>(shard: &mut Shard<R>, conversation: ConversationId) {
    shard.conversations.forget(conversation);
    if let Some(lookup) = shard.conversations.lookups.get_mut(&conversation) {
        lookup.refetch = true;
    }
}
