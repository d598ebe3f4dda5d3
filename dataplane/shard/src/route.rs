//! Frame handling and envelope routing.
//!
//! An envelope from a device goes to its recipient's home shard. There it is delivered at once
//! if the recipient is online, otherwise stored by control. The sender's `SendAck` means
//! "delivered or durably stored", never less: a remote shard reports the outcome back, and
//! control acknowledges storage to the origin shard.

use crate::conn::{ConnId, ConnState};
use crate::conversation::{self, FanoutId, Signal, Stage};
use crate::{CloseReason, ControlRequest, Shard, ShardEvent, ShardId, ShardMessage};
use dp_core::limits::FRAME_LEN_MAX;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_proto::{
    Capabilities, CapabilitiesFrame, Deliver, ErrorCode, Frame, PROTOCOL_VERSION, Pong, Recipient,
    SendAck, SendFrame, SendStatus, Welcome,
};

/// Where an envelope entered the system: the shard and connection of its sender, so the
/// acknowledgement finds its way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The sender's shard.
    pub shard: ShardId,
    /// The sender's connection on that shard.
    pub conn: ConnId,
    /// For a copy of a conversation message: the fan-out on `shard` (the conversation's home)
    /// that counts the copies' outcomes before the sender hears one.
    pub(crate) fanout: FanoutId,
}

impl Origin {
    pub(crate) const fn session(shard: ShardId, conn: ConnId) -> Self {
        Self {
            shard,
            conn,
            fanout: FanoutId::NONE,
        }
    }
}

/// An envelope in flight between shards or to storage. The body is opaque ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's message id (end-to-end dedup key).
    pub message: MessageId,
    /// The authenticated sender.
    pub sender: DeviceId,
    /// The recipient (unused while a conversation message travels to the conversation's
    /// home shard).
    pub recipient: DeviceId,
    /// The conversation, or 0 for a message to one device.
    pub conversation: ConversationId,
    /// The per-conversation sequence number, 0 until the conversation's home shard assigns
    /// one (and for a message to one device).
    pub seq: u64,
    /// When the server accepted it.
    pub sent_at_ms: u64,
    /// The opaque body.
    pub body: Vec<u8>,
    /// Where the acknowledgement goes.
    pub origin: Origin,
    /// The session epoch of the recipient whose `Store` count this envelope is in (0: none).
    counted: u64,
    /// Whether it still goes to its conversation's home shard or already to its recipient.
    pub(crate) stage: Stage,
    /// A typing indicator or receipt (best effort, never stored) instead of a message.
    pub(crate) signal: Signal,
    /// For [`Stage::Members`]: the member devices homed on the receiving shard, one copy
    /// each (so a fan-out spends one link credit per shard, not per member).
    pub(crate) members: Vec<DeviceId>,
}

/// An envelope borrowed from a received frame, copied only if it must outlive it.
pub(crate) struct EnvelopeRef<'a> {
    pub(crate) message: MessageId,
    pub(crate) sender: DeviceId,
    pub(crate) recipient: DeviceId,
    pub(crate) conversation: ConversationId,
    pub(crate) seq: u64,
    pub(crate) sent_at_ms: u64,
    pub(crate) body: &'a [u8],
    pub(crate) origin: Origin,
    pub(crate) stage: Stage,
    pub(crate) signal: Signal,
}

impl EnvelopeRef<'_> {
    /// A boxed copy, in a recycled box when the shard has one (steady relaying allocates
    /// nothing).
    pub(crate) fn to_boxed<R: Rng>(&self, shard: &mut Shard<R>) -> Box<Envelope> {
        let mut boxed = shard.spare_envelopes.pop().unwrap_or_else(|| {
            Box::new(Envelope::from_storage(
                self.message,
                self.sender,
                self.recipient,
                0,
                Vec::new(),
            ))
        });
        boxed.message = self.message;
        boxed.sender = self.sender;
        boxed.recipient = self.recipient;
        boxed.conversation = self.conversation;
        boxed.seq = self.seq;
        boxed.sent_at_ms = self.sent_at_ms;
        boxed.body.clear();
        boxed.body.extend_from_slice(self.body);
        boxed.origin = self.origin;
        boxed.counted = 0;
        boxed.stage = self.stage;
        boxed.signal = self.signal;
        boxed.members.clear();
        boxed
    }
}

/// Keeps `envelope`'s box (and its body's capacity) for reuse, within bounds.
pub(crate) fn recycle<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>) {
    if shard.spare_envelopes.len() < crate::conn::SPARE_ENVELOPES_MAX
        && envelope.body.capacity() <= crate::conn::SPARE_BODY_CAPACITY_MAX
        && envelope.members.capacity() <= conversation::SPARE_MEMBERS_CAPACITY_MAX
    {
        shard.spare_envelopes.push(envelope);
    }
}

impl Envelope {
    /// An envelope read back from storage, to hand to the recipient's home shard with
    /// [`ControlEvent::Deliver`](crate::ControlEvent::Deliver). Its `origin` is unused: the
    /// recipient's acknowledgement goes to control.
    pub fn from_storage(
        message: MessageId,
        sender: DeviceId,
        recipient: DeviceId,
        sent_at_ms: u64,
        body: Vec<u8>,
    ) -> Self {
        Self {
            message,
            sender,
            recipient,
            conversation: ConversationId(0),
            seq: 0,
            sent_at_ms,
            body,
            origin: Origin::session(ShardId(0), ConnId::DANGLING),
            counted: 0,
            stage: Stage::Device,
            signal: Signal::None,
            members: Vec::new(),
        }
    }

    /// The same envelope as a copy of message `seq` of `conversation` (one read back from
    /// storage keeps the conversation and sequence number it was stored with).
    #[must_use]
    pub fn in_conversation(mut self, conversation: ConversationId, seq: u64) -> Self {
        self.conversation = conversation;
        self.seq = seq;
        self
    }

    pub(crate) fn borrowed(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            message: self.message,
            sender: self.sender,
            recipient: self.recipient,
            conversation: self.conversation,
            seq: self.seq,
            sent_at_ms: self.sent_at_ms,
            body: &self.body,
            origin: self.origin,
            stage: self.stage,
            signal: self.signal,
        }
    }
}

/// An envelope queued to a recipient and not yet acknowledged by it.
pub(crate) struct InFlight {
    pub(crate) envelope: Box<Envelope>,
    pub(crate) stored: bool,
}

/// Control operations one session may have open at once; more are answered `RATE_LIMITED`.
const REQUESTS_OPEN_MAX: u32 = 16;

/// Capabilities this server offers today.
const SERVER_CAPABILITIES: Capabilities = Capabilities::HYBRID_PQ;

/// The home shard of `device` among `shard_count`: a keyed hash of its id. Device ids are
/// BLAKE2s outputs and the key is secret to the process, so a client cannot grind keys to pile
/// its devices onto one shard.
pub fn home_shard(device: DeviceId, shard_count: u16, key: u64) -> ShardId {
    let mut low = [0u8; 8];
    low.copy_from_slice(&device.0[..8]);
    let mut high = [0u8; 8];
    high.copy_from_slice(&device.0[8..]);
    let mixed = (u64::from_le_bytes(low) ^ key).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from_le_bytes(high).rotate_left(29);
    let mixed = (mixed ^ (mixed >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    // Multiply-shift maps the top 32 bits onto 0..shard_count without a division.
    let index = ((mixed >> 32) * u64::from(shard_count)) >> 32;
    ShardId(u16::try_from(index).unwrap_or(0))
}

pub(crate) fn handle_frame<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    id: ConnId,
    frame: Frame<'_>,
) {
    let Some(conn) = shard.conns.get_mut(id) else {
        return;
    };
    let ConnState::Established(session) = &mut conn.state else {
        return;
    };
    let device = session.device;
    let hello_done = session.hello_done;
    match frame {
        Frame::Ping(ping) => {
            shard.send_frame(id, &Frame::Pong(Pong { nonce: ping.nonce }));
        }
        Frame::Error(_) | Frame::Pong(_) => {}
        Frame::Hello(hello) if !hello_done => {
            let Some(version) = hello.versions.highest_common(&[PROTOCOL_VERSION]) else {
                shard.send_error(id, ErrorCode::UNSUPPORTED_VERSION, 0);
                shard.close(id, CloseReason::Protocol(ErrorCode::UNSUPPORTED_VERSION));
                return;
            };
            session.hello_done = true;
            let welcome = Welcome {
                version,
                capabilities: hello.capabilities.intersection(SERVER_CAPABILITIES),
                frame_len_max: u32::try_from(FRAME_LEN_MAX).unwrap_or(u32::MAX),
                device,
                server_time_ms: shard.unix_ms(now),
            };
            shard.send_frame(id, &Frame::Welcome(welcome));
            shard.session_opened(id, device);
        }
        _ if !hello_done => {
            shard.send_error(id, ErrorCode::UNEXPECTED_FRAME, 0);
            shard.close(id, CloseReason::Protocol(ErrorCode::UNEXPECTED_FRAME));
        }
        Frame::Capabilities(offer) => {
            let capabilities = offer.capabilities.intersection(SERVER_CAPABILITIES);
            shard.send_frame(id, &Frame::Capabilities(CapabilitiesFrame { capabilities }));
        }
        Frame::Send(send) => handle_send(shard, now, id, device, &send),
        Frame::DeliveryAck(ack) => handle_delivery_ack(shard, id, device, ack.messages.iter()),
        Frame::Typing(typing) => {
            conversation::signal(
                shard,
                now,
                id,
                device,
                typing.conversation,
                Signal::Typing(typing.state),
                &[],
            );
        }
        Frame::Receipt(receipt) => {
            // The ids travel as their wire bytes (16 each, at most `RECEIPTS_PER_FRAME_MAX`).
            let mut ids = [0u8; conversation::RECEIPT_BYTES_MAX];
            let mut len = 0;
            for message in receipt.messages.iter() {
                if let Some(slot) = ids.get_mut(len..len + 16) {
                    slot.copy_from_slice(&message.0);
                    len += 16;
                }
            }
            conversation::signal(
                shard,
                now,
                id,
                device,
                receipt.conversation,
                Signal::Receipt(receipt.kind),
                &ids[..len],
            );
        }
        Frame::Request(request) => {
            if session.requests_open >= REQUESTS_OPEN_MAX {
                let response = Frame::Response(dp_proto::Response {
                    request_id: request.request_id,
                    status: ErrorCode::RATE_LIMITED,
                    body: &[],
                });
                shard.send_frame(id, &response);
                return;
            }
            session.requests_open += 1;
            let operation = crate::Operation {
                origin: Origin::session(shard.config.shard, id),
                peer: session.peer.clone(),
                request_id: request.request_id,
                op: request.op,
                body: request.body.to_vec(),
            };
            shard
                .events
                .push_back(ShardEvent::ToControl(ControlRequest::Operation(Box::new(
                    operation,
                ))));
        }
        Frame::PresenceSet(set) => crate::presence::set(shard, now, device, set.state),
        _ => shard.send_error(id, ErrorCode::UNEXPECTED_FRAME, 0),
    }
}

fn handle_send<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    id: ConnId,
    sender: DeviceId,
    send: &SendFrame<'_>,
) {
    let recipient = match send.recipient {
        Recipient::Device(device) => device,
        Recipient::Conversation(conversation) => {
            let envelope = EnvelopeRef {
                message: send.message,
                sender,
                recipient: DeviceId([0; 16]),
                conversation,
                seq: 0,
                sent_at_ms: shard.unix_ms(now),
                body: send.body,
                origin: Origin::session(shard.config.shard, id),
                stage: Stage::Conversation,
                signal: Signal::None,
            };
            conversation::submit_ref(shard, now, &envelope);
            return;
        }
    };
    let sent_at_ms = shard.unix_ms(now);
    let home = home_shard(
        recipient,
        shard.config.shard_count,
        shard.config.routing_key,
    );
    let envelope = EnvelopeRef {
        message: send.message,
        sender,
        recipient,
        conversation: ConversationId(0),
        seq: 0,
        sent_at_ms,
        body: send.body,
        origin: Origin::session(shard.config.shard, id),
        stage: Stage::Device,
        signal: Signal::None,
    };
    if home == shard.config.shard {
        // The fast path: encode the Deliver straight from the borrowed Send; the sender is
        // acknowledged when the recipient acknowledges (or, if it goes away first, when the
        // envelope is stored).
        if let Some(target) = live_target(shard, recipient)
            && queue_deliver(shard, target, &envelope)
        {
            let copy = envelope.to_boxed(shard);
            keep_inflight(shard, target, copy, false);
            return;
        }
        let copy = envelope.to_boxed(shard);
        store(shard, copy);
    } else {
        shard.stats.routed_remote += 1;
        let copy = envelope.to_boxed(shard);
        shard.events.push_back(ShardEvent::ToShard {
            to: home,
            message: ShardMessage::Envelope(copy),
        });
    }
}

/// The connection to deliver a live envelope for `recipient` to: its session, unless control
/// may still hold older envelopes for it (then the new one is stored behind them).
fn live_target<R: Rng>(shard: &Shard<R>, recipient: DeviceId) -> Option<ConnId> {
    shard
        .online
        .get(&recipient)
        .and_then(|online| (!online.backlog).then_some(online.conn))
}

fn store<R: Rng>(shard: &mut Shard<R>, mut envelope: Box<Envelope>) {
    shard.stats.stored += 1;
    if let Some(online) = shard.online.get_mut(&envelope.recipient) {
        // Delivered from storage from now on, in order, until control reports it drained.
        online.backlog = true;
        online.stores += 1;
        envelope.counted = online.epoch;
    }
    shard
        .events
        .push_back(ShardEvent::ToControl(ControlRequest::Store(envelope)));
}

/// An envelope from another shard: a conversation message for its home here, a typing
/// indicator or receipt, or an envelope for a device homed here.
pub(crate) fn from_shard<R: Rng>(shard: &mut Shard<R>, now: Instant, envelope: Box<Envelope>) {
    if envelope.stage == Stage::Conversation {
        conversation::submit(shard, now, envelope);
    } else if envelope.stage == Stage::Members {
        conversation::copy_to_members(shard, envelope);
    } else {
        deliver_or_store(shard, envelope);
    }
}

/// An envelope for a device homed here.
pub(crate) fn deliver_or_store<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>) {
    match live_target(shard, envelope.recipient) {
        Some(target) => {
            if let Err(envelope) = deliver_boxed(shard, target, envelope, false) {
                store(shard, envelope);
            }
        }
        None => store(shard, envelope),
    }
}

/// Delivers an envelope the shard already owns (from another shard, or from storage) to the
/// local connection `target`, keeping the box itself as the in-flight copy; hands it back if
/// the recipient cannot take it (see [`queue_deliver`]).
pub(crate) fn deliver_boxed<R: Rng>(
    shard: &mut Shard<R>,
    target: ConnId,
    envelope: Box<Envelope>,
    stored: bool,
) -> Result<(), Box<Envelope>> {
    if stored && is_inflight(shard, target, envelope.message) {
        // Control's retry of its drain window: this one is already on its way.
        recycle(shard, envelope);
        return Ok(());
    }
    if !queue_deliver(shard, target, &envelope.borrowed()) {
        return Err(envelope);
    }
    keep_inflight(shard, target, envelope, stored);
    Ok(())
}

fn is_inflight<R: Rng>(shard: &mut Shard<R>, target: ConnId, message: MessageId) -> bool {
    shard
        .conns
        .get_mut(target)
        .is_some_and(|conn| conn.inflight.iter().any(|f| f.envelope.message == message))
}

fn keep_inflight<R: Rng>(
    shard: &mut Shard<R>,
    target: ConnId,
    envelope: Box<Envelope>,
    stored: bool,
) {
    shard.stats.delivered_local += 1;
    match shard.conns.get_mut(target) {
        Some(conn) => conn.inflight.push_back(InFlight { envelope, stored }),
        None => recycle(shard, envelope),
    }
}

/// Queues a `Deliver` of `envelope` to the local connection `target`; the caller keeps the
/// in-flight copy until the recipient acknowledges it. False if the recipient cannot take it:
/// it is then disconnected as too slow (what it had in flight is stored), so nothing later
/// overtakes this envelope, and the caller stores it (a live one) or leaves it stored.
fn queue_deliver<R: Rng>(shard: &mut Shard<R>, target: ConnId, envelope: &EnvelopeRef<'_>) -> bool {
    let deliver = Frame::Deliver(Deliver {
        message: envelope.message,
        sender: envelope.sender,
        conversation: envelope.conversation,
        seq: envelope.seq,
        sent_at_ms: envelope.sent_at_ms,
        body: envelope.body,
    });
    let Some(conn) = shard.conns.get_mut(target) else {
        return false;
    };
    if conn.inflight.len() >= shard.config.inflight_max {
        shard.stats.slow_consumers += 1;
        shard.close(target, CloseReason::SlowConsumer);
        return false;
    }
    shard.send_frame(target, &deliver)
}

/// The recipient acknowledged these envelopes: tell each sender "delivered" (on this shard or
/// through its origin shard), tell control to delete those it had stored, and recycle the
/// copies.
fn handle_delivery_ack<R: Rng>(
    shard: &mut Shard<R>,
    id: ConnId,
    device: DeviceId,
    messages: impl Iterator<Item = MessageId>,
) {
    let mut stored = Vec::new();
    for message in messages {
        let Some(conn) = shard.conns.get_mut(id) else {
            return;
        };
        let position = conn
            .inflight
            .iter()
            .position(|f| f.envelope.message == message);
        let Some(inflight) = position.and_then(|at| conn.inflight.remove(at)) else {
            // Not in flight here: delivered from storage in an earlier session.
            stored.push(message);
            continue;
        };
        if inflight.stored {
            stored.push(message);
            recycle(shard, inflight.envelope);
        } else {
            let origin = inflight.envelope.origin;
            acknowledge(
                shard,
                origin,
                message,
                SendStatus::Delivered,
                Some(inflight.envelope),
            );
        }
    }
    if !stored.is_empty() {
        shard
            .events
            .push_back(ShardEvent::ToControl(ControlRequest::Acknowledged {
                device,
                messages: stored,
            }));
    }
}

/// Envelopes a connection still had in flight when it closed: store those that came live, so
/// their senders get "stored" and the recipient gets them on its next session.
pub(crate) fn store_inflight<R: Rng>(
    shard: &mut Shard<R>,
    inflight: impl Iterator<Item = InFlight>,
) {
    for inflight in inflight {
        if inflight.stored {
            recycle(shard, inflight.envelope);
        } else {
            store(shard, inflight.envelope);
        }
    }
}

/// An envelope the IO layer could not send for lack of link credit: undo its count as a
/// store, and tell its sender to send it again.
pub(crate) fn refuse<R: Rng>(shard: &mut Shard<R>, envelope: &Envelope) {
    if envelope.signal != Signal::None {
        // Best effort: dropped and counted.
        shard.stats.signals_dropped += 1;
        return;
    }
    shard.stats.refused += 1;
    if envelope.stage == Stage::Members {
        // Every copy the batch stood for is refused.
        for _ in &envelope.members {
            acknowledge(
                shard,
                envelope.origin,
                envelope.message,
                SendStatus::Retry,
                None,
            );
        }
        return;
    }
    if let Some(online) = shard.online.get_mut(&envelope.recipient)
        && envelope.counted != 0
        && envelope.counted == online.epoch
    {
        // This `Store` never reached control. `backlog` stays set: control's `Drained`
        // clears it.
        online.stores -= 1;
    }
    acknowledge(
        shard,
        envelope.origin,
        envelope.message,
        SendStatus::Retry,
        None,
    );
}

/// Control's answer to a `Request`, to the session that sent it (if it is still there).
pub(crate) fn respond<R: Rng>(
    shard: &mut Shard<R>,
    origin: Origin,
    request_id: u32,
    status: ErrorCode,
    body: &[u8],
) {
    let Some(conn) = shard.conns.get_mut(origin.conn) else {
        return;
    };
    if let ConnState::Established(session) = &mut conn.state {
        session.requests_open = session.requests_open.saturating_sub(1);
    }
    let response = Frame::Response(dp_proto::Response {
        request_id,
        status,
        body,
    });
    shard.send_frame(origin.conn, &response);
}

/// Tells the sender that its envelope was delivered or stored: directly if it is connected to
/// this shard, else through its origin shard. `envelope`, the spent copy if there is one, goes
/// back to the shard that made it, for reuse.
pub(crate) fn acknowledge<R: Rng>(
    shard: &mut Shard<R>,
    origin: Origin,
    message: MessageId,
    status: SendStatus,
    envelope: Option<Box<Envelope>>,
) {
    acknowledge_seq(shard, origin, message, status, 0, envelope);
}

/// [`acknowledge`] with the message's per-conversation sequence number.
pub(crate) fn acknowledge_seq<R: Rng>(
    shard: &mut Shard<R>,
    origin: Origin,
    message: MessageId,
    status: SendStatus,
    seq: u64,
    envelope: Option<Box<Envelope>>,
) {
    if origin.shard == shard.config.shard && origin.fanout != FanoutId::NONE {
        // One copy of a conversation message: counted by its fan-out here.
        if let Some(envelope) = envelope {
            recycle(shard, envelope);
        }
        conversation::copy_outcome(shard, origin.fanout, status);
    } else if origin.fanout != FanoutId::NONE {
        // A copy made here from a batch: its box stays here (the batch went back).
        if let Some(envelope) = envelope {
            recycle(shard, envelope);
        }
        shard.events.push_back(ShardEvent::ToShard {
            to: origin.shard,
            message: ShardMessage::Outcome {
                origin,
                message,
                status,
                seq,
                envelope: None,
            },
        });
    } else if origin.shard == shard.config.shard {
        ack(shard, origin.conn, message, status, seq);
        if let Some(envelope) = envelope {
            recycle(shard, envelope);
        }
    } else {
        shard.events.push_back(ShardEvent::ToShard {
            to: origin.shard,
            message: ShardMessage::Outcome {
                origin,
                message,
                status,
                seq,
                envelope,
            },
        });
    }
}

fn ack<R: Rng>(shard: &mut Shard<R>, id: ConnId, message: MessageId, status: SendStatus, seq: u64) {
    shard.send_frame(
        id,
        &Frame::SendAck(SendAck {
            message,
            status,
            seq,
        }),
    );
}
