//! Frames: the [`FrameType`] registry, the frame header, and [`Frame`], the decoded form that
//! borrows its input.
//!
//! A frame on the wire is `type: u8 | body_len: varint | body`, at most
//! [`FRAME_LEN_MAX`] bytes in all. Decoding a body must consume it exactly.

mod body;
mod value;

pub use body::{
    CallSignal, CallSignalFrom, CapabilitiesFrame, Deliver, DeliveryAck, ErrorFrame, GoAway, Hello,
    Ping, Pong, Presence, PresenceSet, Receipt, ReceiptFrom, Request, Response, SendAck, SendFrame,
    Typing, TypingFrom, Welcome,
};
pub use value::{
    CallSignalKind, MessageIds, MessageIdsIter, PresenceState, ReceiptKind, Recipient, SendStatus,
    TypingState, Versions,
};

use dp_core::limits::FRAME_LEN_MAX;

use crate::codec::{Codec, Reader, Writer, varint_len};
use crate::error::{DecodeError, EncodeError, Field, len_u64};

/// The longest frame header: the type byte and an eight-byte varint.
pub const FRAME_HEADER_LEN_MAX: usize = 9;

/// Defines `FrameType` and its lookups from one table, in spec order.
macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)+) => {
        /// The type byte of a frame, in spec order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $($(#[$doc])* $name = $value,)+
        }

        impl FrameType {
            /// Every frame type, in spec order.
            pub const ALL: &'static [Self] = &[$(Self::$name),+];

            /// The frame type a byte names, if any.
            pub const fn from_u8(byte: u8) -> Option<Self> {
                match byte {
                    $($value => Some(Self::$name),)+
                    _ => None,
                }
            }

            /// The frame type's name as written in the spec.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)+
                }
            }
        }
    };
}

frame_types! {
    /// Client → server, first frame after the handshake: versions, capabilities, frame limit.
    Hello = 0x01,
    /// Server → client: chosen version, capabilities, frame limit, device id, server time.
    Welcome = 0x02,
    /// Either direction: renegotiate capabilities.
    Capabilities = 0x03,
    /// Either direction: liveness probe.
    Ping = 0x04,
    /// Either direction: answer to `Ping`.
    Pong = 0x05,
    /// Either direction: an error report.
    Error = 0x06,
    /// Server → client: the session is ending; reconnect later.
    GoAway = 0x07,
    /// Client → server: an envelope for a device or conversation.
    Send = 0x10,
    /// Server → client: a `Send` was accepted.
    SendAck = 0x11,
    /// Server → client: an envelope from another device.
    Deliver = 0x12,
    /// Client → server: `Deliver`ed messages are stored.
    DeliveryAck = 0x13,
    /// Client → server: delivered/read receipts.
    Receipt = 0x14,
    /// Server → client: another device's receipts.
    ReceiptFrom = 0x15,
    /// Client → server: set own presence.
    PresenceSet = 0x16,
    /// Server → client: another device's presence.
    Presence = 0x17,
    /// Client → server: typing indicator.
    Typing = 0x18,
    /// Server → client: another device's typing indicator.
    TypingFrom = 0x19,
    /// Client → server: call signalling.
    CallSignal = 0x20,
    /// Server → client: call signalling from another device.
    CallSignalFrom = 0x21,
    /// Client → server: a control operation.
    Request = 0x30,
    /// Server → client: the result of a `Request`.
    Response = 0x31,
}

impl FrameType {
    /// The type byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

impl From<FrameType> for u8 {
    fn from(frame_type: FrameType) -> Self {
        frame_type.as_u8()
    }
}

impl TryFrom<u8> for FrameType {
    type Error = DecodeError;

    fn try_from(byte: u8) -> Result<Self, DecodeError> {
        Self::from_u8(byte).ok_or(DecodeError::UnknownFrameType(byte))
    }
}

/// A frame's header, read without its body: enough to skip the frame or to reject it early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The raw type byte, which may name no known frame type.
    pub type_byte: u8,
    /// The body length.
    pub body_len: usize,
    /// The header length: 1 plus the length of the `body_len` varint.
    pub header_len: usize,
}

impl FrameHeader {
    /// The frame type, or `None` for a type this version does not know.
    pub const fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_u8(self.type_byte)
    }

    /// The whole frame's length: header plus body.
    pub const fn frame_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Read the header of the frame at the start of `input`, with the protocol's frame limit
/// [`FRAME_LEN_MAX`]. The body need not be present.
///
/// # Errors
///
/// [`DecodeError::Truncated`] if the header is incomplete, [`DecodeError::NonMinimalVarint`], or
/// [`DecodeError::TooLong`] if the frame would exceed the limit.
pub fn peek_header(input: &[u8]) -> Result<FrameHeader, DecodeError> {
    peek_header_with_max(input, FRAME_LEN_MAX)
}

/// As [`peek_header`], with a frame limit of `frame_len_max` bytes (header included).
///
/// # Errors
///
/// As [`peek_header`].
pub fn peek_header_with_max(
    input: &[u8],
    frame_len_max: usize,
) -> Result<FrameHeader, DecodeError> {
    let mut reader = Reader::new(input);
    let type_byte = reader.u8()?;
    let body_len = reader.varint()?;
    let header_len = input.len() - reader.remaining();
    let frame_len = len_u64(header_len).saturating_add(body_len);
    let too_long = DecodeError::TooLong {
        field: Field::Frame,
        len: frame_len,
        max: len_u64(frame_len_max),
    };
    if frame_len > len_u64(frame_len_max) {
        return Err(too_long);
    }
    let body_len = usize::try_from(body_len).map_err(|_| too_long)?;
    Ok(FrameHeader {
        type_byte,
        body_len,
        header_len,
    })
}

/// A decoded frame. Byte and text fields borrow the input, so decoding allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // Each variant is documented on its body struct and on `FrameType`.
pub enum Frame<'a> {
    Hello(Hello),
    Welcome(Welcome),
    Capabilities(CapabilitiesFrame),
    Ping(Ping),
    Pong(Pong),
    Error(ErrorFrame<'a>),
    GoAway(GoAway<'a>),
    Send(SendFrame<'a>),
    SendAck(SendAck),
    Deliver(Deliver<'a>),
    DeliveryAck(DeliveryAck<'a>),
    Receipt(Receipt<'a>),
    ReceiptFrom(ReceiptFrom<'a>),
    PresenceSet(PresenceSet),
    Presence(Presence),
    Typing(Typing),
    TypingFrom(TypingFrom),
    CallSignal(CallSignal<'a>),
    CallSignalFrom(CallSignalFrom<'a>),
    Request(Request<'a>),
    Response(Response<'a>),
}

/// Applies `$e` to the body of each `Frame` variant, bound as `$body`.
macro_rules! with_body {
    ($frame:expr, $body:ident => $e:expr) => {
        match $frame {
            Frame::Hello($body) => $e,
            Frame::Welcome($body) => $e,
            Frame::Capabilities($body) => $e,
            Frame::Ping($body) => $e,
            Frame::Pong($body) => $e,
            Frame::Error($body) => $e,
            Frame::GoAway($body) => $e,
            Frame::Send($body) => $e,
            Frame::SendAck($body) => $e,
            Frame::Deliver($body) => $e,
            Frame::DeliveryAck($body) => $e,
            Frame::Receipt($body) => $e,
            Frame::ReceiptFrom($body) => $e,
            Frame::PresenceSet($body) => $e,
            Frame::Presence($body) => $e,
            Frame::Typing($body) => $e,
            Frame::TypingFrom($body) => $e,
            Frame::CallSignal($body) => $e,
            Frame::CallSignalFrom($body) => $e,
            Frame::Request($body) => $e,
            Frame::Response($body) => $e,
        }
    };
}

impl<'a> Frame<'a> {
    /// The frame's type.
    pub const fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Welcome(_) => FrameType::Welcome,
            Self::Capabilities(_) => FrameType::Capabilities,
            Self::Ping(_) => FrameType::Ping,
            Self::Pong(_) => FrameType::Pong,
            Self::Error(_) => FrameType::Error,
            Self::GoAway(_) => FrameType::GoAway,
            Self::Send(_) => FrameType::Send,
            Self::SendAck(_) => FrameType::SendAck,
            Self::Deliver(_) => FrameType::Deliver,
            Self::DeliveryAck(_) => FrameType::DeliveryAck,
            Self::Receipt(_) => FrameType::Receipt,
            Self::ReceiptFrom(_) => FrameType::ReceiptFrom,
            Self::PresenceSet(_) => FrameType::PresenceSet,
            Self::Presence(_) => FrameType::Presence,
            Self::Typing(_) => FrameType::Typing,
            Self::TypingFrom(_) => FrameType::TypingFrom,
            Self::CallSignal(_) => FrameType::CallSignal,
            Self::CallSignalFrom(_) => FrameType::CallSignalFrom,
            Self::Request(_) => FrameType::Request,
            Self::Response(_) => FrameType::Response,
        }
    }

    /// Decode the frame at the start of `input`; returns it and the number of bytes it took.
    ///
    /// Checks, in order: the header is complete ([`DecodeError::Truncated`]) and within
    /// [`FRAME_LEN_MAX`] ([`DecodeError::TooLong`]); the whole frame is present
    /// ([`DecodeError::Truncated`]); the type is known ([`DecodeError::UnknownFrameType`] — the
    /// frame can then be skipped with [`peek_header`]); the body decodes and is consumed exactly.
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]. Every strict prefix of a valid frame gives
    /// [`DecodeError::Truncated`].
    pub fn decode(input: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let header = peek_header(input)?;
        let frame = input
            .get(..header.frame_len())
            .ok_or(DecodeError::Truncated)?;
        let body = frame
            .get(header.header_len..)
            .ok_or(DecodeError::Truncated)?;
        let frame_type = FrameType::try_from(header.type_byte)?;
        Ok((Self::decode_body(frame_type, body)?, header.frame_len()))
    }

    /// Decode a frame that must fill `input` exactly (one frame per datagram or buffer).
    ///
    /// # Errors
    ///
    /// As [`Frame::decode`], and [`DecodeError::TrailingBytes`] if bytes follow the frame.
    pub fn decode_exact(input: &'a [u8]) -> Result<Self, DecodeError> {
        let (frame, consumed) = Self::decode(input)?;
        if consumed != input.len() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(frame)
    }

    /// Decode a complete body of type `frame_type` (the header already read).
    ///
    /// # Errors
    ///
    /// A field error, [`DecodeError::BodyTruncated`] if the body ends inside a field, or
    /// [`DecodeError::TrailingBytes`] if it continues after the last one.
    pub fn decode_body(frame_type: FrameType, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(body);
        let frame = Self::decode_fields(frame_type, &mut reader).map_err(|error| match error {
            DecodeError::Truncated => DecodeError::BodyTruncated,
            other => other,
        })?;
        reader.finish()?;
        Ok(frame)
    }

    fn decode_fields(frame_type: FrameType, r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(match frame_type {
            FrameType::Hello => Self::Hello(Codec::decode(r)?),
            FrameType::Welcome => Self::Welcome(Codec::decode(r)?),
            FrameType::Capabilities => Self::Capabilities(Codec::decode(r)?),
            FrameType::Ping => Self::Ping(Codec::decode(r)?),
            FrameType::Pong => Self::Pong(Codec::decode(r)?),
            FrameType::Error => Self::Error(Codec::decode(r)?),
            FrameType::GoAway => Self::GoAway(Codec::decode(r)?),
            FrameType::Send => Self::Send(Codec::decode(r)?),
            FrameType::SendAck => Self::SendAck(Codec::decode(r)?),
            FrameType::Deliver => Self::Deliver(Codec::decode(r)?),
            FrameType::DeliveryAck => Self::DeliveryAck(Codec::decode(r)?),
            FrameType::Receipt => Self::Receipt(Codec::decode(r)?),
            FrameType::ReceiptFrom => Self::ReceiptFrom(Codec::decode(r)?),
            FrameType::PresenceSet => Self::PresenceSet(Codec::decode(r)?),
            FrameType::Presence => Self::Presence(Codec::decode(r)?),
            FrameType::Typing => Self::Typing(Codec::decode(r)?),
            FrameType::TypingFrom => Self::TypingFrom(Codec::decode(r)?),
            FrameType::CallSignal => Self::CallSignal(Codec::decode(r)?),
            FrameType::CallSignalFrom => Self::CallSignalFrom(Codec::decode(r)?),
            FrameType::Request => Self::Request(Codec::decode(r)?),
            FrameType::Response => Self::Response(Codec::decode(r)?),
        })
    }

    /// The body's encoded length.
    pub fn body_len(&self) -> usize {
        with_body!(self, body => body.encoded_len())
    }

    /// The whole frame's encoded length: header plus body.
    pub fn encoded_len(&self) -> usize {
        let body_len = self.body_len();
        1 + varint_len(len_u64(body_len)) + body_len
    }

    /// Encode the frame at the start of `out`; returns the number of bytes written
    /// ([`Frame::encoded_len`]).
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`], or a limit the frame breaks (a field over its maximum,
    /// an empty list, the frame over [`FRAME_LEN_MAX`]). `out` may be partly written then.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let body_len = self.body_len();
        let frame_len = self.encoded_len();
        if frame_len > FRAME_LEN_MAX {
            return Err(EncodeError::TooLong {
                field: Field::Frame,
                len: len_u64(frame_len),
                max: len_u64(FRAME_LEN_MAX),
            });
        }
        let mut writer = Writer::new(out);
        writer.u8(self.frame_type().as_u8())?;
        writer.varint(len_u64(body_len))?;
        with_body!(self, body => body.encode(&mut writer))?;
        debug_assert_eq!(
            writer.position(),
            frame_len,
            "encoded_len disagrees with encode"
        );
        Ok(writer.position())
    }

    /// Append the encoded frame to `out` (a reused send buffer); returns the number of bytes
    /// appended. On error `out` is left as it was.
    ///
    /// # Errors
    ///
    /// As [`Frame::encode`], except [`EncodeError::BufferTooSmall`].
    pub fn encode_append(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let result = out
            .get_mut(start..)
            .ok_or(EncodeError::BufferTooSmall)
            .and_then(|tail| self.encode(tail));
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

macro_rules! frame_from {
    ($($variant:ident($body:ident)),+ $(,)?) => {$(
        impl From<$body> for Frame<'_> {
            fn from(body: $body) -> Self {
                Self::$variant(body)
            }
        }
    )+};
    ($($variant:ident($body:ident<'a>)),+ $(,)?) => {$(
        impl<'a> From<$body<'a>> for Frame<'a> {
            fn from(body: $body<'a>) -> Self {
                Self::$variant(body)
            }
        }
    )+};
}

frame_from!(
    Hello(Hello),
    Welcome(Welcome),
    Capabilities(CapabilitiesFrame),
    Ping(Ping),
    Pong(Pong),
    SendAck(SendAck),
    PresenceSet(PresenceSet),
    Presence(Presence),
    Typing(Typing),
    TypingFrom(TypingFrom),
);

frame_from!(
    Error(ErrorFrame<'a>),
    GoAway(GoAway<'a>),
    Send(SendFrame<'a>),
    Deliver(Deliver<'a>),
    DeliveryAck(DeliveryAck<'a>),
    Receipt(Receipt<'a>),
    ReceiptFrom(ReceiptFrom<'a>),
    CallSignal(CallSignal<'a>),
    CallSignalFrom(CallSignalFrom<'a>),
    Request(Request<'a>),
    Response(Response<'a>),
);

#[cfg(test)]
mod tests;
