//! Decoding and encoding errors.
//!
//! Both are `Copy` and carry no `String`: they are produced on the hot path, counted and turned
//! into an [`ErrorCode`] for the peer.

use core::fmt;

use crate::error_code::ErrorCode;

/// A frame field, named in errors so that a counter or a log line can say which rule was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The message-id list of a `DeliveryAck` (its count).
    Acks,
    /// An opaque body: `Send`, `Deliver`, `CallSignal`, `CallSignalFrom`, `Request`, `Response`.
    Body,
    /// The `kind` of a `CallSignal` or `CallSignalFrom`.
    CallSignalKind,
    /// The whole frame: type byte, `body_len` and body.
    Frame,
    /// The `state` of a `PresenceSet` or `Presence`.
    PresenceState,
    /// The `reason` text of an `Error` or `GoAway`.
    Reason,
    /// The `kind` of a `Receipt` or `ReceiptFrom`.
    ReceiptKind,
    /// The message-id list of a `Receipt` or `ReceiptFrom` (its count).
    Receipts,
    /// The tag of a `Send` recipient.
    RecipientTag,
    /// The `status` of a `SendAck`.
    SendStatus,
    /// The `state` of a `Typing` or `TypingFrom`.
    TypingState,
    /// The version list of a `Hello` (its count).
    Versions,
}

/// Why bytes did not decode into a frame.
///
/// Every variant except [`DecodeError::UnknownFrameType`] means the peer broke the protocol: the
/// receiver answers with an `Error` frame carrying [`DecodeError::error_code`] and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeError {
    /// A complete frame's body ended before its last field did (a length or count inside the body
    /// points past its end). Unlike [`DecodeError::Truncated`], more input cannot fix this.
    BodyTruncated,
    /// A text field is not valid UTF-8.
    InvalidUtf8 {
        /// The field.
        field: Field,
    },
    /// A field holds a value the protocol does not define (an unknown enum value or tag, or a
    /// count of zero where at least one item is required).
    InvalidValue {
        /// The field.
        field: Field,
    },
    /// A varint was not encoded in the fewest bytes that can hold its value.
    NonMinimalVarint,
    /// A length or count exceeds its limit.
    TooLong {
        /// The field; [`Field::Frame`] for the frame as a whole.
        field: Field,
        /// The length or count found (for [`Field::Frame`]: header plus `body_len`, saturating).
        len: u64,
        /// The largest allowed.
        max: u64,
    },
    /// Bytes remain after the frame (in [`crate::Frame::decode_exact`]) or after the last field of
    /// a frame body.
    TrailingBytes,
    /// The input ends before the frame does. In a byte stream this means "wait for more"; in a
    /// complete message it means the message is malformed.
    Truncated,
    /// The frame's type byte names no frame this crate knows. The frame is well delimited, so a
    /// receiver skips it (see [`crate::peek_header`]) and keeps the connection.
    UnknownFrameType(u8),
}

impl DecodeError {
    /// The code a receiver sends back in its `Error` frame.
    pub const fn error_code(&self) -> ErrorCode {
        match self {
            Self::UnknownFrameType(_) => ErrorCode::UNKNOWN_FRAME_TYPE,
            Self::TooLong { .. } => ErrorCode::FRAME_TOO_LARGE,
            Self::BodyTruncated
            | Self::InvalidUtf8 { .. }
            | Self::InvalidValue { .. }
            | Self::NonMinimalVarint
            | Self::TrailingBytes
            | Self::Truncated => ErrorCode::MALFORMED_FRAME,
        }
    }

    /// Whether the receiver must close the connection after reporting this error: true for every
    /// error except an unknown frame type, which is skipped.
    pub const fn is_fatal(&self) -> bool {
        !matches!(self, Self::UnknownFrameType(_))
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyTruncated => write!(f, "frame body ends inside a field"),
            Self::InvalidUtf8 { field } => write!(f, "{field:?} is not valid UTF-8"),
            Self::InvalidValue { field } => write!(f, "{field:?} holds an undefined value"),
            Self::NonMinimalVarint => write!(f, "varint is not minimally encoded"),
            Self::TooLong { field, len, max } => {
                write!(f, "{field:?} length {len} exceeds the maximum {max}")
            }
            Self::TrailingBytes => write!(f, "trailing bytes after the last field"),
            Self::Truncated => write!(f, "input ends inside a frame"),
            Self::UnknownFrameType(byte) => write!(f, "unknown frame type {byte:#04x}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded. Only a local bug or a too-small buffer causes one: the
/// peer has no say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer cannot hold the encoding; size it with `encoded_len`.
    BufferTooSmall,
    /// A field holds a value the protocol cannot carry (an empty list).
    InvalidValue {
        /// The field.
        field: Field,
    },
    /// A length or count exceeds its limit.
    TooLong {
        /// The field; [`Field::Frame`] for the frame as a whole.
        field: Field,
        /// The length or count given.
        len: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A value above [`crate::VARINT_MAX`] was given to the varint encoder.
    VarintOutOfRange,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => write!(f, "output buffer too small"),
            Self::InvalidValue { field } => {
                write!(f, "{field:?} holds a value that cannot be sent")
            }
            Self::TooLong { field, len, max } => {
                write!(f, "{field:?} length {len} exceeds the maximum {max}")
            }
            Self::VarintOutOfRange => write!(f, "value exceeds the varint range"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// `usize` → `u64` for limits in errors; lossless on every supported target.
pub(crate) fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
