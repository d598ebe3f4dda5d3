//! Frame handling and envelope routing.
//!
//! An envelope from a device goes to its recipient's home shard. There it is delivered at once
//! if the recipient is online, otherwise stored by control. The sender's `SendAck` means
//! "delivered or durably stored", never less: a remote shard reports the outcome back, and
//! control acknowledges storage to the origin shard.

use crate::conn::{ConnId, ConnState};
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
}

/// An envelope in flight between shards or to storage. The body is opaque ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's message id (end-to-end dedup key).
    pub message: MessageId,
    /// The authenticated sender.
    pub sender: DeviceId,
    /// The recipient.
    pub recipient: DeviceId,
    /// When the server accepted it.
    pub sent_at_ms: u64,
    /// The opaque body.
    pub body: Vec<u8>,
    /// Where the acknowledgement goes.
    pub origin: Origin,
}

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
        Frame::DeliveryAck(ack) => {
            let messages = ack.messages.iter().collect();
            shard
                .events
                .push_back(ShardEvent::ToControl(ControlRequest::Acknowledged {
                    device,
                    messages,
                }));
        }
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
        // Conversations need membership checks from control; until then they are refused.
        Recipient::Conversation(_) => {
            shard.send_error(id, ErrorCode::FORBIDDEN, 0);
            return;
        }
    };
    let sent_at_ms = shard.unix_ms(now);
    let home = home_shard(
        recipient,
        shard.config.shard_count,
        shard.config.routing_key,
    );
    if home == shard.config.shard
        && let Some(&target) = shard.online.get(&recipient)
    {
        // The fast path: encode the Deliver straight from the borrowed Send, no copy, no
        // allocation. If the recipient is too slow it is cut off and the envelope is stored.
        let deliver = Deliver {
            message: send.message,
            sender,
            conversation: ConversationId(0),
            seq: 0,
            sent_at_ms,
            body: send.body,
        };
        if shard.send_frame(target, &Frame::Deliver(deliver)) {
            shard.stats.delivered_local += 1;
            ack(shard, id, send.message, SendStatus::Delivered);
            return;
        }
    }
    let envelope = Box::new(Envelope {
        message: send.message,
        sender,
        recipient,
        sent_at_ms,
        body: send.body.to_vec(),
        origin: Origin {
            shard: shard.config.shard,
            conn: id,
        },
    });
    if home == shard.config.shard {
        store(shard, envelope);
    } else {
        shard.stats.routed_remote += 1;
        shard.events.push_back(ShardEvent::ToShard {
            to: home,
            message: ShardMessage::Envelope(envelope),
        });
    }
}

fn store<R: Rng>(shard: &mut Shard<R>, envelope: Box<Envelope>) {
    shard.stats.stored += 1;
    shard
        .events
        .push_back(ShardEvent::ToControl(ControlRequest::Store(envelope)));
}

/// An envelope from another shard for a device homed here.
pub(crate) fn deliver_or_store<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    envelope: Box<Envelope>,
) {
    if let Some(&target) = shard.online.get(&envelope.recipient)
        && deliver_local(shard, now, target, &envelope)
    {
        shard.events.push_back(ShardEvent::ToShard {
            to: envelope.origin.shard,
            message: ShardMessage::Outcome {
                origin: envelope.origin,
                message: envelope.message,
                status: SendStatus::Delivered,
            },
        });
        return;
    }
    store(shard, envelope);
}

/// Queues `envelope` to the local connection `target`; false if the recipient was too slow
/// (it is disconnected and the caller stores the envelope).
pub(crate) fn deliver_local<R: Rng>(
    shard: &mut Shard<R>,
    _now: Instant,
    target: ConnId,
    envelope: &Envelope,
) -> bool {
    let deliver = Deliver {
        message: envelope.message,
        sender: envelope.sender,
        conversation: ConversationId(0),
        seq: 0,
        sent_at_ms: envelope.sent_at_ms,
        body: &envelope.body,
    };
    let delivered = shard.send_frame(target, &Frame::Deliver(deliver));
    if delivered {
        shard.stats.delivered_local += 1;
    }
    delivered
}

/// Tells the sender on this shard that its envelope was delivered or stored.
pub(crate) fn acknowledge<R: Rng>(
    shard: &mut Shard<R>,
    origin: Origin,
    message: MessageId,
    status: SendStatus,
) {
    if origin.shard == shard.config.shard {
        ack(shard, origin.conn, message, status);
    }
}

fn ack<R: Rng>(shard: &mut Shard<R>, id: ConnId, message: MessageId, status: SendStatus) {
    shard.send_frame(
        id,
        &Frame::SendAck(SendAck {
            message,
            status,
            seq: 0,
        }),
    );
}
