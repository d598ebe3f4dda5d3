//! One struct per frame type: the frame's body, field by field in wire order.
//!
//! A body struct takes the frame type's name, except where that name is taken:
//! [`CapabilitiesFrame`] (the bit set is [`Capabilities`]), [`ErrorFrame`] and [`SendFrame`]
//! (`Send` is a standard marker trait).

use dp_core::limits::{
    ACKS_PER_FRAME_MAX, CALL_SIGNAL_BODY_LEN_MAX, ENVELOPE_BODY_LEN_MAX, REASON_LEN_MAX,
    RECEIPTS_PER_FRAME_MAX, REQUEST_BODY_LEN_MAX,
};
use dp_core::{CallId, ConversationId, DeviceId, MessageId};

use super::value::{
    CallSignalKind, MessageIds, PresenceState, ReceiptKind, Recipient, SendStatus, TypingState,
    Versions,
};
use crate::capability::Capabilities;
use crate::codec::{Codec, Reader, Writer, bytes_len};
use crate::error::{DecodeError, EncodeError, Field};
use crate::error_code::ErrorCode;

/// `0x01 Hello`, client → server: the first frame after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The versions the client speaks; the session uses the greatest one both sides speak.
    pub versions: Versions,
    /// The features the client supports.
    pub capabilities: Capabilities,
    /// The largest frame the client accepts, in bytes.
    pub frame_len_max: u32,
}

/// `0x02 Welcome`, server → client: the answer to `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The version chosen from the client's list.
    pub version: u16,
    /// The features the server supports; the effective set is the intersection.
    pub capabilities: Capabilities,
    /// The largest frame the server accepts, in bytes.
    pub frame_len_max: u32,
    /// The client's device id as the server computed it from the handshake.
    pub device: DeviceId,
    /// The server's wall-clock time, in milliseconds since the Unix epoch.
    pub server_time_ms: u64,
}

/// `0x03 Capabilities`, either direction: renegotiates the feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilitiesFrame {
    /// The sender's new feature set; the effective set is the intersection with the peer's.
    pub capabilities: Capabilities,
}

/// `0x04 Ping`, either direction: the peer answers with a `Pong` carrying the same nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// An opaque value echoed in the `Pong`.
    pub nonce: u64,
}

/// `0x05 Pong`, either direction: the answer to a `Ping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The nonce of the `Ping` being answered.
    pub nonce: u64,
}

/// `0x06 Error`, either direction: reports a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// The type byte of the offending frame, 0 if none.
    pub frame_type: u8,
    /// The request id the error refers to, 0 if none.
    pub reference: u64,
    /// A human-readable diagnostic, at most `REASON_LEN_MAX` bytes (may be empty).
    pub reason: &'a str,
}

/// `0x07 GoAway`, server → client: the server is closing the session; reconnect later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAway<'a> {
    /// Why (typically `SHUTTING_DOWN`).
    pub code: ErrorCode,
    /// How long the client should wait before reconnecting, in milliseconds.
    pub reconnect_after_ms: u32,
    /// A human-readable diagnostic, at most `REASON_LEN_MAX` bytes.
    pub reason: &'a str,
}

/// `0x10 Send`, client → server: an end-to-end encrypted envelope for a device or conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendFrame<'a> {
    /// The client-chosen message id, for end-to-end deduplication.
    pub message: MessageId,
    /// Who receives it.
    pub recipient: Recipient,
    /// The opaque envelope, at most `ENVELOPE_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// `0x11 SendAck`, server → client: the server has taken responsibility for a `Send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendAck {
    /// The id of the acknowledged `Send`.
    pub message: MessageId,
    /// Delivered or stored.
    pub status: SendStatus,
    /// The message's per-conversation sequence number, 0 if none.
    pub seq: u64,
}

/// `0x12 Deliver`, server → client: an envelope from another device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deliver<'a> {
    /// The sender's message id.
    pub message: MessageId,
    /// The sending device.
    pub sender: DeviceId,
    /// The conversation, or 0 for a direct device message.
    pub conversation: ConversationId,
    /// The per-conversation sequence number.
    pub seq: u64,
    /// When the server accepted the message, in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The opaque envelope, at most `ENVELOPE_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// `0x13 DeliveryAck`, client → server: these `Deliver`ed messages are safely stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryAck<'a> {
    /// One to `ACKS_PER_FRAME_MAX` message ids.
    pub messages: MessageIds<'a>,
}

/// `0x14 Receipt`, client → server: delivered or read receipts for a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt<'a> {
    /// The conversation the messages belong to.
    pub conversation: ConversationId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// One to `RECEIPTS_PER_FRAME_MAX` message ids.
    pub messages: MessageIds<'a>,
}

/// `0x15 ReceiptFrom`, server → client: a receipt another device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptFrom<'a> {
    /// The device that sent the receipt.
    pub from: DeviceId,
    /// The conversation the messages belong to.
    pub conversation: ConversationId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// One to `RECEIPTS_PER_FRAME_MAX` message ids.
    pub messages: MessageIds<'a>,
}

/// `0x16 PresenceSet`, client → server: sets the client's own presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceSet {
    /// The new presence.
    pub state: PresenceState,
}

/// `0x17 Presence`, server → client: another device's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The device.
    pub device: DeviceId,
    /// Its presence.
    pub state: PresenceState,
    /// When it was last seen online, in milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
}

/// `0x18 Typing`, client → server: the client's user started or stopped typing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Typing {
    /// The conversation.
    pub conversation: ConversationId,
    /// Typing or stopped.
    pub state: TypingState,
}

/// `0x19 TypingFrom`, server → client: another device's typing indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypingFrom {
    /// The device.
    pub device: DeviceId,
    /// The conversation.
    pub conversation: ConversationId,
    /// Typing or stopped.
    pub state: TypingState,
}

/// `0x20 CallSignal`, client → server: call signalling, relayed to the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSignal<'a> {
    /// The call, or 0 to start a new one (with `Invite`).
    pub call: CallId,
    /// The conversation the call belongs to.
    pub conversation: ConversationId,
    /// What the signal means.
    pub kind: CallSignalKind,
    /// The opaque payload (SDP, candidate), at most `CALL_SIGNAL_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// `0x21 CallSignalFrom`, server → client: call signalling from another device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSignalFrom<'a> {
    /// The device that sent the signal.
    pub from: DeviceId,
    /// The call.
    pub call: CallId,
    /// The conversation the call belongs to.
    pub conversation: ConversationId,
    /// What the signal means.
    pub kind: CallSignalKind,
    /// The opaque payload, at most `CALL_SIGNAL_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// `0x30 Request`, client → server: a control operation carried over the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Chosen by the client; echoed in the `Response`.
    pub request_id: u32,
    /// The operation.
    pub op: u16,
    /// The operation's arguments, at most `REQUEST_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// `0x31 Response`, server → client: the result of a `Request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's id.
    pub request_id: u32,
    /// [`ErrorCode::OK`] on success, else the error.
    pub status: ErrorCode,
    /// The operation's result, at most `REQUEST_BODY_LEN_MAX` bytes.
    pub body: &'a [u8],
}

/// Implements `Codec` for a body struct whose fields are all `Codec` values, in wire order.
macro_rules! fixed_body {
    ($($name:ident { $($field:ident),+ })+) => {$(
        impl Codec<'_> for $name {
            fn encoded_len(&self) -> usize {
                0 $(+ self.$field.encoded_len())+
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                $(self.$field.encode(writer)?;)+
                Ok(())
            }

            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(Self { $($field: Codec::decode(reader)?),+ })
            }
        }
    )+};
}

fixed_body! {
    Hello { versions, capabilities, frame_len_max }
    Welcome { version, capabilities, frame_len_max, device, server_time_ms }
    CapabilitiesFrame { capabilities }
    Ping { nonce }
    Pong { nonce }
    SendAck { message, status, seq }
    PresenceSet { state }
    Presence { device, state, last_seen_ms }
    Typing { conversation, state }
    TypingFrom { device, conversation, state }
}

/// Implements `Codec` for a body struct whose fields are `Codec` values followed by one trailing
/// `bytes(MAX)` or `str(MAX)` field.
macro_rules! tail_body {
    ($(
        $name:ident { $($field:ident),+ ; $tail:ident: $kind:ident($tail_field:ident, $max:ident) }
    )+) => {$(
        impl<'a> Codec<'a> for $name<'a> {
            fn encoded_len(&self) -> usize {
                0 $(+ self.$field.encoded_len())+ + bytes_len(self.$tail.len())
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                $(self.$field.encode(writer)?;)+
                writer.$kind(Field::$tail_field, $max, self.$tail)
            }

            fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                Ok(Self {
                    $($field: Codec::decode(reader)?,)+
                    $tail: reader.$kind(Field::$tail_field, $max)?,
                })
            }
        }
    )+};
}

tail_body! {
    ErrorFrame { code, frame_type, reference; reason: str(Reason, REASON_LEN_MAX) }
    GoAway { code, reconnect_after_ms; reason: str(Reason, REASON_LEN_MAX) }
    SendFrame { message, recipient; body: bytes(Body, ENVELOPE_BODY_LEN_MAX) }
    Deliver {
        message, sender, conversation, seq, sent_at_ms;
        body: bytes(Body, ENVELOPE_BODY_LEN_MAX)
    }
    CallSignal { call, conversation, kind; body: bytes(Body, CALL_SIGNAL_BODY_LEN_MAX) }
    CallSignalFrom { from, call, conversation, kind; body: bytes(Body, CALL_SIGNAL_BODY_LEN_MAX) }
    Request { request_id, op; body: bytes(Body, REQUEST_BODY_LEN_MAX) }
    Response { request_id, status; body: bytes(Body, REQUEST_BODY_LEN_MAX) }
}

/// Implements `Codec` for a body struct whose fields are `Codec` values followed by a message-id
/// list.
macro_rules! list_body {
    ($($name:ident { $($field:ident),* ; messages($list_field:ident, $max:ident) })+) => {$(
        impl<'a> Codec<'a> for $name<'a> {
            fn encoded_len(&self) -> usize {
                0 $(+ self.$field.encoded_len())* + self.messages.list_len()
            }

            fn encode(&self, writer: &mut Writer<'_>) -> Result<(), EncodeError> {
                $(self.$field.encode(writer)?;)*
                self.messages.encode_list(writer, Field::$list_field, $max)
            }

            fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
                Ok(Self {
                    $($field: Codec::decode(reader)?,)*
                    messages: MessageIds::decode_list(reader, Field::$list_field, $max)?,
                })
            }
        }
    )+};
}

list_body! {
    DeliveryAck { ; messages(Acks, ACKS_PER_FRAME_MAX) }
    Receipt { conversation, kind; messages(Receipts, RECEIPTS_PER_FRAME_MAX) }
    ReceiptFrom { from, conversation, kind; messages(Receipts, RECEIPTS_PER_FRAME_MAX) }
}
