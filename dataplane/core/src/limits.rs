//! Every bound of the wire protocol and the session layer, as named constants.
//!
//! Relations between them are checked at compile time at the bottom of this file, so that
//! changing one limit cannot silently break another (TigerBeetle's `constants.zig`).

use core::time::Duration;

/// The largest Noise message, handshake or transport, including its 16-byte tag.
pub const NOISE_MESSAGE_LEN_MAX: usize = 65_535;
/// The AEAD tag length of both Noise ciphers.
pub const AEAD_TAG_LEN: usize = 16;
/// The largest plaintext of one stream record.
pub const RECORD_PLAINTEXT_LEN_MAX: usize = NOISE_MESSAGE_LEN_MAX - AEAD_TAG_LEN;
/// The largest frame (type, length and body). Frames span records in stream mode.
pub const FRAME_LEN_MAX: usize = 1 << 20;
/// The largest opaque envelope body a client may send.
pub const ENVELOPE_BODY_LEN_MAX: usize = 256 * 1024;
/// The largest call-signalling body (an SDP-sized blob).
pub const CALL_SIGNAL_BODY_LEN_MAX: usize = 16 * 1024;
/// The largest request or response body of a control operation carried in a frame.
pub const REQUEST_BODY_LEN_MAX: usize = 64 * 1024;
/// The largest media payload in one datagram frame.
pub const MEDIA_PAYLOAD_LEN_MAX: usize = 1_400;
/// The largest UDP payload the protocol sends or accepts.
pub const DATAGRAM_LEN_MAX: usize = 1_452;
/// The most protocol versions a `Hello` may offer.
pub const VERSIONS_MAX: usize = 8;
/// The longest diagnostic text in an `Error` or `GoAway` frame, in bytes of UTF-8.
pub const REASON_LEN_MAX: usize = 256;
/// The most receipts in one `Receipt` frame.
pub const RECEIPTS_PER_FRAME_MAX: usize = 256;
/// The most acknowledgements in one `DeliveryAck` frame.
pub const ACKS_PER_FRAME_MAX: usize = 256;

/// Bits in the datagram replay window (RFC 6479 style).
pub const REPLAY_WINDOW_BITS: u64 = 2_048;
/// After this many messages under one key the sender rekeys.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 48;
/// After this many bytes under one key the sender rekeys.
pub const REKEY_AFTER_BYTES: u64 = 1 << 36;
/// After this long under one key the sender rekeys.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A previous receive key stays usable this long after the peer moved on, for reordering.
pub const PREVIOUS_KEY_KEEP_TIME: Duration = Duration::from_secs(5);
/// Past this counter value a datagram session refuses to send and must be replaced.
pub const DATAGRAM_COUNTER_MAX: u64 = u64::MAX - (1 << 16);

/// A handshake that has not completed in this time is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The cookie secret rotates this often; a cookie is valid for about twice this.
pub const COOKIE_SECRET_ROTATE_TIME: Duration = Duration::from_secs(120);
/// How long a rotated-out server static key is still accepted.
pub const STATIC_KEY_GRACE_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most server static keys a responder accepts at once (current plus those in grace).
pub const STATIC_KEYS_MAX: usize = 4;
/// How far an IK initiation's timestamp may lie in the future or the past.
pub const HANDSHAKE_TIMESTAMP_SKEW_MAX: Duration = Duration::from_secs(180);

const _: () = {
    assert!(RECORD_PLAINTEXT_LEN_MAX + AEAD_TAG_LEN <= u16::MAX as usize);
    assert!(ENVELOPE_BODY_LEN_MAX + 1024 <= FRAME_LEN_MAX);
    assert!(CALL_SIGNAL_BODY_LEN_MAX + 1024 <= FRAME_LEN_MAX);
    assert!(REQUEST_BODY_LEN_MAX + 1024 <= FRAME_LEN_MAX);
    // A media frame plus the datagram header, frame header and tag fits one datagram.
    assert!(MEDIA_PAYLOAD_LEN_MAX + 16 + 16 + 20 <= DATAGRAM_LEN_MAX);
    assert!(REPLAY_WINDOW_BITS >= 1024 && REPLAY_WINDOW_BITS.is_multiple_of(64));
    assert!(PREVIOUS_KEY_KEEP_TIME.as_secs() < REKEY_AFTER_TIME.as_secs());
    assert!(HANDSHAKE_TIMEOUT.as_secs() < COOKIE_SECRET_ROTATE_TIME.as_secs());
    assert!(STATIC_KEYS_MAX >= 2);
};
