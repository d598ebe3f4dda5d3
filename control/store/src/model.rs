//! The rows the store reads and writes, in domain types.

use blake2::{Blake2s256, Digest};
use dp_core::{ConversationId, DeviceId, MessageId};
use std::fmt;

/// An offline envelope: opaque bytes for one recipient device, kept until it acknowledges them
/// or they expire.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's message id; stores are idempotent per (recipient, message id).
    pub message: MessageId,
    /// The authenticated sender device.
    pub sender: DeviceId,
    /// The recipient device.
    pub recipient: DeviceId,
    /// The conversation, when the envelope belongs to one.
    pub conversation: Option<ConversationId>,
    /// Its per-conversation sequence number (0 for a message to one device).
    pub conversation_seq: u64,
    /// When the server accepted it (milliseconds since the Unix epoch).
    pub sent_at_ms: u64,
    /// After this time (milliseconds since the Unix epoch) it is no longer delivered and the
    /// purge deletes it.
    pub expires_at_ms: u64,
    /// The opaque body, at most [`crate::ENVELOPE_BODY_LEN_MAX`] bytes.
    pub body: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body is opaque and may be large: its length only.
        f.debug_struct("Envelope")
            .field("message", &self.message)
            .field("sender", &self.sender)
            .field("recipient", &self.recipient)
            .field("conversation", &self.conversation)
            .field("conversation_seq", &self.conversation_seq)
            .field("sent_at_ms", &self.sent_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// An envelope as stored, with its place in the server order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The store-wide sequence number: increases with every stored envelope, never reused.
    pub seq: u64,
    /// The envelope.
    pub envelope: Envelope,
}

/// A user's server-assigned id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub i64);

/// A device to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    /// The device id (derived from the public key by the caller, `docs/PROTOCOL.md` §Identity).
    pub id: DeviceId,
    /// The device's Noise static public key.
    pub public_key: [u8; 32],
    /// The account it belongs to.
    pub user: UserId,
    /// A human-readable name, at most [`crate::DEVICE_NAME_LEN_MAX`] bytes.
    pub name: String,
    /// When it was added (milliseconds since the Unix epoch).
    pub created_at_ms: u64,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The device id.
    pub id: DeviceId,
    /// The device's Noise static public key.
    pub public_key: [u8; 32],
    /// The account it belongs to.
    pub user: UserId,
    /// Its name.
    pub name: String,
    /// When it was added.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// A bearer session token as the client holds it: 32 random bytes. The store keeps only its
/// hash ([`TokenHash`]); the token itself is never written anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(pub [u8; 32]);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(…)")
    }
}

impl SessionToken {
    /// The hash the store keeps: BLAKE2s-256 over the token. The token is 256 random bits, so
    /// a plain hash (no salt, no stretching) is enough: the hash cannot be reversed and a
    /// stolen table cannot be replayed as bearer tokens.
    pub fn hash(&self) -> TokenHash {
        let digest = Blake2s256::digest(self.0);
        TokenHash(digest.into())
    }
}

/// The stored hash of a [`SessionToken`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// Whom a valid session token authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    /// The device the token was issued to.
    pub device: DeviceId,
    /// The device's account.
    pub user: UserId,
}

/// A schema migration run: the version before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// The highest version recorded before (0 for a new database).
    pub from: i64,
    /// The highest version recorded after.
    pub to: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_not_the_token_and_depends_on_every_byte() {
        let token = SessionToken([7; 32]);
        let hash = token.hash();
        assert_ne!(hash.0, token.0);
        let mut other = token.clone();
        other.0[31] ^= 1;
        assert_ne!(other.hash(), hash);
        assert_eq!(format!("{token:?}"), "SessionToken(…)");
    }
}
