//! The CCP-2 wire codec: frames, QUIC varints, error codes, capabilities and the reassembly of
//! frames from stream records.
//!
//! This crate performs no I/O, reads no clock and draws no randomness: it turns bytes into
//! [`Frame`]s and back. Decoding allocates nothing per frame — a decoded [`Frame<'a>`] borrows the
//! input it came from — and never panics on network input; every malformed input becomes a
//! [`DecodeError`], which maps to the [`ErrorCode`] a receiver sends back
//! ([`DecodeError::error_code`]). Encoding writes into caller storage through a bounded
//! [`Writer`] and reports [`EncodeError::BufferTooSmall`] instead of panicking.
//!
//! The normative byte layout is `docs/PROTOCOL.md` §Frames; the hex vectors in
//! `tests/vectors/frames.txt` are checked against it.
//!
//! - [`codec`]: [`Reader`], [`Writer`], the varint and the [`Codec`] trait.
//! - [`frame`]: [`FrameType`], [`Frame`], the body structs and [`peek_header`].
//! - [`assembler`]: [`FrameAssembler`] (records → frames) and [`record_chunks`] (frames →
//!   records).
//!
//! The assembler follows the sans-IO driving rule: after each [`FrameAssembler::push`], drain
//! [`Frames::next_frame`] until it returns `None` before pushing the next record.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assembler;
pub mod capability;
pub mod codec;
pub mod error;
pub mod error_code;
pub mod frame;

#[cfg(test)]
mod sample;

pub use assembler::{FrameAssembler, Frames, record_chunks};
pub use capability::Capabilities;
pub use codec::{Codec, Reader, VARINT_MAX, Writer, varint_len};
pub use error::{DecodeError, EncodeError, Field};
pub use error_code::ErrorCode;
pub use frame::{
    CallSignal, CallSignalFrom, CallSignalKind, CapabilitiesFrame, Deliver, DeliveryAck,
    ErrorFrame, FRAME_HEADER_LEN_MAX, Frame, FrameHeader, FrameType, GoAway, Hello, MessageIds,
    MessageIdsIter, Ping, Pong, Presence, PresenceSet, PresenceState, Receipt, ReceiptFrom,
    ReceiptKind, Recipient, Request, Response, SendAck, SendFrame, SendStatus, Typing, TypingFrom,
    TypingState, Versions, Welcome, peek_header, peek_header_with_max,
};

/// The CCP-2 protocol version this crate speaks, offered in `Hello` and chosen in `Welcome`.
pub const PROTOCOL_VERSION: u16 = 0x0002;
