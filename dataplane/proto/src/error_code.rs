//! [`ErrorCode`]: the 16-bit codes of `Error`, `GoAway` and `Response` frames.

use core::fmt;

/// A protocol error code.
///
/// A newtype rather than an enum, so that a code defined by a newer peer still decodes; the
/// associated constants are the codes this version defines. [`ErrorCode::OK`] (zero) is not an
/// error: it appears only as the status of a successful `Response`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)+) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: Self = Self($value);)+

            /// Every code this version defines, [`ErrorCode::OK`] first.
            pub const ALL: &'static [Self] = &[$(Self::$name),+];

            /// The code's name as written in the spec, or `None` for a code this version does not
            /// define.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// Success (a `Response` status only; never sent in an `Error` frame).
    OK = 0x0000,
    /// A frame did not decode: truncated body, bad varint, undefined value, invalid UTF-8,
    /// trailing bytes.
    MALFORMED_FRAME = 0x0001,
    /// A frame's type byte is not known to the receiver; the frame was skipped.
    UNKNOWN_FRAME_TYPE = 0x0002,
    /// A frame or one of its fields exceeds its length limit.
    FRAME_TOO_LARGE = 0x0003,
    /// None of the versions in `Hello` is supported.
    UNSUPPORTED_VERSION = 0x0004,
    /// A well-formed frame arrived in a state or direction where it is not allowed.
    UNEXPECTED_FRAME = 0x0005,
    /// The peer has not authenticated.
    UNAUTHENTICATED = 0x0010,
    /// The peer may not perform this operation.
    FORBIDDEN = 0x0011,
    /// The referenced device, conversation, call or message does not exist.
    NOT_FOUND = 0x0012,
    /// The device has been revoked.
    DEVICE_REVOKED = 0x0013,
    /// The device is not registered.
    UNKNOWN_DEVICE = 0x0014,
    /// The operation conflicts with the current state (for example a duplicate id).
    CONFLICT = 0x0015,
    /// The peer exceeded a rate limit.
    RATE_LIMITED = 0x0020,
    /// The server is overloaded and shed the request.
    OVERLOADED = 0x0021,
    /// The peer does not read fast enough; its send queue overflowed.
    SLOW_CONSUMER = 0x0022,
    /// The account has too many concurrent sessions.
    TOO_MANY_SESSIONS = 0x0023,
    /// The session was idle for too long.
    IDLE_TIMEOUT = 0x0030,
    /// The server is shutting down.
    SHUTTING_DOWN = 0x0031,
    /// An internal server error.
    INTERNAL = 0x0040,
    /// Storage is temporarily unavailable.
    STORAGE_UNAVAILABLE = 0x0041,
    /// The server requires the hybrid post-quantum handshake.
    HYBRID_REQUIRED = 0x0050,
}

impl ErrorCode {
    /// Whether this is [`ErrorCode::OK`].
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "ErrorCode::{name}"),
            None => write!(f, "ErrorCode({:#06x})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests;
