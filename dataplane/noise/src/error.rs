//! Errors of the session layer, by class (STYLE.md §3.5): the peer misbehaved, a local limit
//! was reached, or the caller misused the API. All are `Copy` and carry no strings, so the hot
//! path can count them without allocating.

use core::fmt;

/// Why a handshake packet was refused. The packet is dropped and counted; a refused initiation
/// is never answered with an error, so that refusals cannot serve as an oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The packet is shorter than its type requires or its header is invalid.
    Malformed,
    /// The packet type is not one the receiver expects in its current state.
    UnexpectedPacket,
    /// The suite byte names no suite this implementation knows.
    UnknownSuite,
    /// The suite is known but refused by local policy (for example classic when hybrid is
    /// required).
    SuiteRefused,
    /// `mac1` matches none of the responder's static keys.
    BadMac1,
    /// The responder is under load and `mac2` is missing or stale: a cookie reply was sent.
    CookieRequired,
    /// The receiver index names no pending handshake.
    UnknownIndex,
    /// Noise processing failed: a wrong key, a forged or altered message.
    Noise,
    /// The decrypted handshake payload is malformed.
    BadPayload,
    /// The ML-KEM encapsulation key failed its validity check.
    BadKemKey,
    /// The pending-handshake table is full; the initiation is dropped.
    PendingTableFull,
    /// The caller's output buffer is too small.
    BufferTooSmall,
    /// The handshake did not complete within its deadline.
    Timeout,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for HandshakeError {}

/// Why an incoming record or datagram was dropped. Counted, never answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than a header and a tag, or a header field is invalid.
    Malformed,
    /// The counter was seen before or lies behind the replay window.
    Replay,
    /// Authentication failed.
    Decrypt,
    /// The key epoch is neither the current, the previous (still kept) nor the next one.
    UnknownEpoch,
    /// The peer's counter passed the limit; the session must be replaced.
    CounterExhausted,
    /// The record or datagram is larger than the protocol allows.
    TooLarge,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for OpenError {}

/// Why an outgoing record or datagram could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SealError {
    /// The caller's output buffer is too small.
    BufferTooSmall,
    /// The plaintext is larger than one record or datagram may carry.
    TooLarge,
    /// The send counter passed the limit; the session must be replaced.
    CounterExhausted,
    /// An IK responder may not send before the initiator has proven its keys (key confirmation).
    NotConfirmed,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for SealError {}
