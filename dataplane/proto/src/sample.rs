//! Arbitrary frames for the property tests: a strategy for [`Material`], the owned values a
//! frame of any type borrows from.

use dp_core::{CallId, ConversationId, DeviceId, MessageId};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::frame::{
    CallSignal, CallSignalFrom, CallSignalKind, CapabilitiesFrame, Deliver, DeliveryAck,
    ErrorFrame, Frame, FrameType, GoAway, Hello, MessageIds, Ping, Pong, Presence, PresenceSet,
    PresenceState, Receipt, ReceiptFrom, ReceiptKind, Recipient, Request, Response, SendAck,
    SendFrame, SendStatus, Typing, TypingFrom, TypingState, Versions, Welcome,
};
use crate::{Capabilities, ErrorCode};

/// Owned field values from which [`Material::frame`] builds a frame of type `frame_type`.
#[derive(Clone, Debug)]
pub(crate) struct Material {
    pub(crate) frame_type: FrameType,
    words: [u64; 4],
    word32: u32,
    word16: u16,
    byte: u8,
    choice: usize,
    devices: [[u8; 16]; 2],
    versions: Vec<u16>,
    body: Vec<u8>,
    reason: String,
    messages: Vec<MessageId>,
}

/// Any `Material`: every frame type, enum value, and lists and bodies of varied lengths
/// (including lengths whose varint takes two bytes).
pub(crate) fn material() -> impl Strategy<Value = Material> {
    (
        prop::sample::select(FrameType::ALL),
        any::<[u64; 4]>(),
        (any::<u32>(), any::<u16>(), any::<u8>(), any::<usize>()),
        any::<[[u8; 16]; 2]>(),
        vec(any::<u16>(), 1..=8),
        prop_oneof![vec(any::<u8>(), 0..70), vec(any::<u8>(), 0..600)],
        "\\PC{0,60}",
        vec(any::<[u8; 16]>(), 1..=20),
    )
        .prop_map(
            |(
                frame_type,
                words,
                (word32, word16, byte, choice),
                devices,
                versions,
                body,
                reason,
                ids,
            )| {
                Material {
                    frame_type,
                    words,
                    word32,
                    word16,
                    byte,
                    choice,
                    devices,
                    versions,
                    body,
                    reason,
                    messages: ids.into_iter().map(MessageId).collect(),
                }
            },
        )
}

fn pick<T: Copy>(all: &[T], choice: usize) -> T {
    all[choice % all.len()]
}

impl Material {
    /// The frame of type `frame_type` built from these values.
    pub(crate) fn frame(&self) -> Frame<'_> {
        let [w0, w1, w2, w3] = self.words;
        let device = DeviceId(self.devices[0]);
        let other = DeviceId(self.devices[1]);
        let message = MessageId(self.devices[1]);
        let conversation = ConversationId(w1);
        let messages = MessageIds::new(&self.messages);
        let body = self.body.as_slice();
        let reason = self.reason.as_str();
        match self.frame_type {
            FrameType::Hello => Frame::Hello(Hello {
                versions: Versions::new(&self.versions).expect("1..=8 versions"),
                capabilities: Capabilities(w0),
                frame_len_max: self.word32,
            }),
            FrameType::Welcome => Frame::Welcome(Welcome {
                version: self.word16,
                capabilities: Capabilities(w0),
                frame_len_max: self.word32,
                device,
                server_time_ms: w1,
            }),
            FrameType::Capabilities => Frame::Capabilities(CapabilitiesFrame {
                capabilities: Capabilities(w0),
            }),
            FrameType::Ping => Frame::Ping(Ping { nonce: w0 }),
            FrameType::Pong => Frame::Pong(Pong { nonce: w0 }),
            FrameType::Error => Frame::Error(ErrorFrame {
                code: ErrorCode(self.word16),
                frame_type: self.byte,
                reference: w0,
                reason,
            }),
            FrameType::GoAway => Frame::GoAway(GoAway {
                code: ErrorCode(self.word16),
                reconnect_after_ms: self.word32,
                reason,
            }),
            FrameType::Send => Frame::Send(SendFrame {
                message,
                recipient: if pick(&[true, false], self.choice) {
                    Recipient::Device(device)
                } else {
                    Recipient::Conversation(conversation)
                },
                body,
            }),
            FrameType::SendAck => Frame::SendAck(SendAck {
                message,
                status: pick(SendStatus::ALL, self.choice),
                seq: w0,
            }),
            FrameType::Deliver => Frame::Deliver(Deliver {
                message,
                sender: device,
                conversation,
                seq: w2,
                sent_at_ms: w3,
                body,
            }),
            FrameType::DeliveryAck => Frame::DeliveryAck(DeliveryAck { messages }),
            FrameType::Receipt => Frame::Receipt(Receipt {
                conversation,
                kind: pick(ReceiptKind::ALL, self.choice),
                messages,
            }),
            FrameType::ReceiptFrom => Frame::ReceiptFrom(ReceiptFrom {
                from: other,
                conversation,
                kind: pick(ReceiptKind::ALL, self.choice),
                messages,
            }),
            FrameType::PresenceSet => Frame::PresenceSet(PresenceSet {
                state: pick(PresenceState::ALL, self.choice),
            }),
            FrameType::Presence => Frame::Presence(Presence {
                device,
                state: pick(PresenceState::ALL, self.choice),
                last_seen_ms: w2,
            }),
            FrameType::Typing => Frame::Typing(Typing {
                conversation,
                state: pick(TypingState::ALL, self.choice),
            }),
            FrameType::TypingFrom => Frame::TypingFrom(TypingFrom {
                device,
                conversation,
                state: pick(TypingState::ALL, self.choice),
            }),
            FrameType::CallSignal => Frame::CallSignal(CallSignal {
                call: CallId(w0),
                conversation,
                kind: pick(CallSignalKind::ALL, self.choice),
                body,
            }),
            FrameType::CallSignalFrom => Frame::CallSignalFrom(CallSignalFrom {
                from: other,
                call: CallId(w0),
                conversation,
                kind: pick(CallSignalKind::ALL, self.choice),
                body,
            }),
            FrameType::Request => Frame::Request(Request {
                request_id: self.word32,
                op: self.word16,
                body,
            }),
            FrameType::Response => Frame::Response(Response {
                request_id: self.word32,
                status: ErrorCode(self.word16),
                body,
            }),
        }
    }
}

/// Encode `frame` into a fresh vector (tests only).
pub(crate) fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame
        .encode_append(&mut out)
        .expect("sample frames are encodable");
    out
}
