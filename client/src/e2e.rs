//! End-to-end encryption of envelope bodies between devices, with matrix-org's `vodozemac`
//! (Olm: X3DH-style triple Diffie-Hellman to start a session, then the Double Ratchet;
//! audited by Least Authority). The server only ever relays and stores the ciphertext
//! ([`E2e::seal`]'s output is the envelope body); why this library and what the server learns
//! are in `docs/design/0014-end-to-end-encryption.md`.
//!
//! # Use
//!
//! 1. [`E2e::new`] once per device; keep it with [`E2e::pickle`] (encrypted under a local key)
//!    and restore it with [`E2e::from_pickle`].
//! 2. Publish keys: the JSON of [`E2e::keys_to_publish`] is the body of
//!    `PUT /v1/devices/me/keys` (`docs/API.md`).
//! 3. To write to a device without a session ([`E2e::has_session`]), claim its keys with
//!    `POST /v1/keys/claim` ([`ClaimRequest`] / [`ClaimResponse`]) and pass them to
//!    [`E2e::seal`]; later messages need none. Send the result as the envelope body.
//! 4. [`E2e::open`] a delivered body with the sender device the server authenticated. The
//!    first message of a session (a pre-key message) creates the inbound session.
//!
//! # Body format (version 1)
//!
//! ```text
//! +---------+-----------+-------------------------------------------+
//! | version | olm type  | Olm message (vodozemac / libolm encoding) |
//! | 0x01    | 0x00|0x01 | 0x00: pre-key message, 0x01: normal       |
//! +---------+-----------+-------------------------------------------+
//! ```
//!
//! Every input is bounded ([`BODY_LEN_MAX`], [`PLAINTEXT_LEN_MAX`], [`PEERS_MAX`],
//! [`SESSIONS_PER_PEER_MAX`]); a malformed body is an [`E2eError`], never a panic.
//!
//! # Identity pinning
//!
//! The first identity key seen for a device (from claimed keys, or from its first pre-key
//! message) is pinned: a later different one is refused ([`E2eError::IdentityChanged`]) until
//! the application calls [`E2e::forget`]. Comparing keys out of band (safety numbers) is not
//! built yet.
//!
//! Randomness comes from the operating system (vodozemac draws its own; pickles use
//! `getrandom`); this module reads no clock and does no I/O.

pub mod group;
#[cfg(test)]
mod tests;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dp_core::DeviceId;
use group::{Groups, GroupsPickle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};
use zeroize::Zeroizing;

/// The body format's version byte.
pub const BODY_VERSION: u8 = 0x01;
/// The longest body [`E2e::open`] accepts: the data plane's envelope bound.
pub const BODY_LEN_MAX: usize = dp_core::limits::ENVELOPE_BODY_LEN_MAX;
/// What Olm adds to a plaintext at most (header, the pre-key message's three keys, CBC padding
/// and MAC), with room to spare.
pub const OLM_OVERHEAD_MAX: usize = 512;
/// The longest plaintext [`E2e::seal`] takes: its body still fits [`BODY_LEN_MAX`].
pub const PLAINTEXT_LEN_MAX: usize = BODY_LEN_MAX - OLM_OVERHEAD_MAX;
/// Devices with sessions or a pinned identity kept at most; past it the least recently used
/// one is forgotten (its sessions and its pin).
pub const PEERS_MAX: usize = 4096;
/// Olm sessions kept per device at most (two devices that start sessions with each other at
/// the same time have two); past it the least recently used is dropped.
pub const SESSIONS_PER_PEER_MAX: usize = 4;
/// One-time keys in one publication at most (the server's bound,
/// `control_store::ONE_TIME_KEYS_PER_UPLOAD_MAX`).
pub const ONE_TIME_KEYS_PER_PUBLISH_MAX: usize = 50;
/// The longest pickle [`E2e::from_pickle`] reads.
pub const PICKLE_LEN_MAX: usize = 64 * 1024 * 1024;
/// What an Ed25519 signature over a published Curve25519 key covers: this context, then the
/// key's 32 bytes.
pub const KEY_SIGNATURE_CONTEXT: &[u8] = b"commucat e2e key v1\0";

const OLM_TYPE_PRE_KEY: u8 = 0x00;
const OLM_TYPE_NORMAL: u8 = 0x01;
const PICKLE_PREFIX: &str = "ccp-e2e-pickle-v1:";
const PICKLE_AAD: &[u8] = b"commucat e2e pickle v1";
const PICKLE_NONCE_LEN: usize = 24;

const _: () = {
    assert!(PLAINTEXT_LEN_MAX > 0);
    assert!(SESSIONS_PER_PEER_MAX >= 2);
};

/// Why an [`E2e`] operation failed. Peer-caused errors ([`Self::Malformed`],
/// [`Self::Decrypt`], …) mean the body is dropped; none of them changes existing sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum E2eError {
    /// The body is longer than [`BODY_LEN_MAX`].
    BodyTooLong,
    /// The claimed keys are for another device than the one written to.
    ClaimedForAnotherDevice,
    /// A decryption failed: wrong session, tampered ciphertext, or a replayed message whose
    /// key is already used.
    Decrypt,
    /// The device's identity key differs from the one pinned for it.
    IdentityChanged,
    /// A claimed key is not unpadded base64 of a valid key.
    InvalidKey,
    /// A claimed one-time key's signature does not verify under the claimed Ed25519 key.
    InvalidSignature,
    /// The body is not a version-1 body (too short, unknown Olm type, undecodable message).
    Malformed,
    /// No session with the device and no claimed keys to start one; or a normal message from a
    /// device without a session.
    NoSession,
    /// The pickle is malformed, too long, or was made under another key.
    Pickle,
    /// The plaintext is longer than [`PLAINTEXT_LEN_MAX`].
    PlaintextTooLong,
    /// The operating system's random source failed.
    Random,
    /// A pre-key message could not start a session (its one-time key is unknown or used).
    SessionCreation,
    /// The body's version byte is not [`BODY_VERSION`].
    UnknownVersion(u8),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyTooLong => f.write_str("encrypted body too long"),
            Self::ClaimedForAnotherDevice => f.write_str("claimed keys are for another device"),
            Self::Decrypt => f.write_str("decryption failed"),
            Self::IdentityChanged => f.write_str("the device's identity key changed"),
            Self::InvalidKey => f.write_str("invalid key"),
            Self::InvalidSignature => f.write_str("invalid one-time key signature"),
            Self::Malformed => f.write_str("malformed encrypted body"),
            Self::NoSession => f.write_str("no session with the device"),
            Self::Pickle => f.write_str("invalid pickle or wrong key"),
            Self::PlaintextTooLong => f.write_str("plaintext too long"),
            Self::Random => f.write_str("the random source failed"),
            Self::SessionCreation => f.write_str("cannot create a session"),
            Self::UnknownVersion(v) => write!(f, "unknown encrypted body version {v:#04x}"),
        }
    }
}

impl std::error::Error for E2eError {}

/// A device's public identity keys, unpadded base64 (as the key directory stores them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityKeys {
    /// The Curve25519 identity key (Olm's "sender key").
    pub curve25519: String,
    /// The Ed25519 signing key (Olm's "fingerprint key").
    pub ed25519: String,
}

/// A Curve25519 key signed by the device's Ed25519 key over [`KEY_SIGNATURE_CONTEXT`] and the
/// key's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKey {
    /// The key's id, unique per device.
    pub key_id: String,
    /// The public key, unpadded base64.
    pub key: String,
    /// The signature, unpadded base64.
    pub signature: String,
}

/// The body of `PUT /v1/devices/me/keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishKeys {
    /// The identity keys.
    pub identity: IdentityKeys,
    /// A fresh fallback key (the previous one still opens sessions started with it).
    pub fallback_key: SignedKey,
    /// New one-time keys.
    pub one_time_keys: Vec<SignedKey>,
}

/// The answer of `PUT /v1/devices/me/keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// One-time keys the server holds for this device now.
    pub one_time_keys: u64,
}

/// The body of `POST /v1/keys/claim`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Device ids, 32 hex digits each.
    pub devices: Vec<String>,
}

impl ClaimRequest {
    /// A claim for these devices.
    pub fn new(devices: &[DeviceId]) -> Self {
        Self {
            devices: devices.iter().map(|d| hex::encode(d.0)).collect(),
        }
    }
}

/// The answer of `POST /v1/keys/claim`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    /// One entry per device the caller may message that has published keys.
    pub devices: Vec<ClaimedKeys>,
}

/// One device's claimed keys: what [`E2e::seal`] needs to start a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeys {
    /// The device id, 32 hex digits.
    pub device_id: String,
    /// Its identity keys.
    pub identity: IdentityKeys,
    /// A one-time key (or the fallback key).
    pub one_time_key: SignedKey,
    /// Whether `one_time_key` is the device's fallback key.
    #[serde(default)]
    pub fallback: bool,
}

impl ClaimedKeys {
    /// The device these keys belong to, if `device_id` is well-formed.
    pub fn device(&self) -> Option<DeviceId> {
        let bytes = hex::decode(&self.device_id).ok()?;
        Some(DeviceId(bytes.try_into().ok()?))
    }
}

/// What is known of one other device: its pinned identity and its sessions, most recently
/// used first.
struct Peer {
    curve25519: Curve25519PublicKey,
    ed25519: Option<Ed25519PublicKey>,
    sessions: Vec<Session>,
    used: u64,
}

/// A device's end-to-end state: its Olm account (identity, one-time and fallback keys) and
/// its Olm sessions with other devices, bounded by [`PEERS_MAX`] × [`SESSIONS_PER_PEER_MAX`].
pub struct E2e {
    account: Account,
    peers: BTreeMap<DeviceId, Peer>,
    /// A logical clock for least-recently-used eviction (not time).
    tick: u64,
    /// Megolm group sessions ([`group`]), pickled with the rest.
    groups: Groups,
}

impl fmt::Debug for E2e {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public parts only: never key material.
        f.debug_struct("E2e")
            .field("identity", &self.identity())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl Default for E2e {
    fn default() -> Self {
        Self::new()
    }
}

fn signed_message(key: &Curve25519PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_SIGNATURE_CONTEXT.len() + 32);
    out.extend_from_slice(KEY_SIGNATURE_CONTEXT);
    out.extend_from_slice(key.as_bytes());
    out
}

impl E2e {
    /// A new device identity with fresh random keys.
    pub fn new() -> Self {
        Self {
            account: Account::new(),
            peers: BTreeMap::new(),
            tick: 0,
            groups: Groups::new(),
        }
    }

    /// This device's public identity keys.
    pub fn identity(&self) -> IdentityKeys {
        let keys = self.account.identity_keys();
        IdentityKeys {
            curve25519: keys.curve25519.to_base64(),
            ed25519: keys.ed25519.to_base64(),
        }
    }

    fn sign(&self, key_id: String, key: &Curve25519PublicKey) -> SignedKey {
        SignedKey {
            key_id,
            key: key.to_base64(),
            signature: self.account.sign(signed_message(key)).to_base64(),
        }
    }

    /// The body of `PUT /v1/devices/me/keys`: the identity keys, a fresh fallback key and
    /// `one_time` (at most [`ONE_TIME_KEYS_PER_PUBLISH_MAX`]) new one-time keys, each signed.
    /// Marks them published: call it when about to upload, and pickle afterwards.
    pub fn keys_to_publish(&mut self, one_time: usize) -> PublishKeys {
        let _ = self
            .account
            .generate_one_time_keys(one_time.min(ONE_TIME_KEYS_PER_PUBLISH_MAX));
        let _ = self.account.generate_fallback_key();
        let mut one_time_keys: Vec<_> = self.account.one_time_keys().into_iter().collect();
        // Oldest first (key ids count up), and never more than the server takes.
        one_time_keys.sort_by_key(|(id, _)| *id);
        one_time_keys.truncate(ONE_TIME_KEYS_PER_PUBLISH_MAX);
        let one_time_keys = one_time_keys
            .into_iter()
            .map(|(id, key)| self.sign(id.to_base64(), &key))
            .collect();
        let fallback_key = self
            .account
            .fallback_key()
            .into_iter()
            .next()
            .map(|(id, key)| self.sign(id.to_base64(), &key));
        self.account.mark_keys_as_published();
        PublishKeys {
            identity: self.identity(),
            // generate_fallback_key always leaves one unpublished fallback key.
            fallback_key: fallback_key.unwrap_or_else(|| SignedKey {
                key_id: String::new(),
                key: String::new(),
                signature: String::new(),
            }),
            one_time_keys,
        }
    }

    /// `one_time` (at most [`ONE_TIME_KEYS_PER_PUBLISH_MAX`]) new signed one-time keys, marked
    /// published, *without* a new fallback key: to top the server's pool up, sent with the
    /// fallback key of the last [`E2e::keys_to_publish`] (publishing keeps the previous
    /// fallback key usable only one rotation back, so topping up should not rotate it).
    pub fn one_time_keys_to_publish(&mut self, one_time: usize) -> Vec<SignedKey> {
        let _ = self
            .account
            .generate_one_time_keys(one_time.min(ONE_TIME_KEYS_PER_PUBLISH_MAX));
        let mut keys: Vec<_> = self.account.one_time_keys().into_iter().collect();
        keys.sort_by_key(|(id, _)| *id);
        keys.truncate(ONE_TIME_KEYS_PER_PUBLISH_MAX);
        let signed = keys
            .into_iter()
            .map(|(id, key)| self.sign(id.to_base64(), &key))
            .collect();
        self.account.mark_keys_as_published();
        signed
    }

    /// The Megolm group state ([`group`]): outbound and inbound group sessions.
    pub fn groups(&mut self) -> &mut Groups {
        &mut self.groups
    }

    /// Whether an Olm session with `device` exists (then [`E2e::seal`] needs no claimed keys).
    pub fn has_session(&self, device: DeviceId) -> bool {
        self.peers
            .get(&device)
            .is_some_and(|p| !p.sessions.is_empty())
    }

    /// Forgets everything about `device`: its sessions and its pinned identity (to accept a
    /// new identity after the user has checked it).
    pub fn forget(&mut self, device: DeviceId) {
        self.peers.remove(&device);
    }

    fn touch(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// Makes room for one more peer: drops the least recently used one at [`PEERS_MAX`].
    fn reserve_peer(&mut self, device: DeviceId) {
        if self.peers.len() < PEERS_MAX || self.peers.contains_key(&device) {
            return;
        }
        if let Some(oldest) = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.used)
            .map(|(id, _)| *id)
        {
            self.peers.remove(&oldest);
        }
    }

    /// Encrypts `plaintext` for `to` into an envelope body. Uses the most recently used
    /// session with `to`; without one, starts one from `claimed` (its keys for `to`, as
    /// `POST /v1/keys/claim` returned them: the one-time key's signature is checked and the
    /// identity pinned).
    pub fn seal(
        &mut self,
        to: DeviceId,
        claimed: Option<&ClaimedKeys>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, E2eError> {
        if plaintext.len() > PLAINTEXT_LEN_MAX {
            return Err(E2eError::PlaintextTooLong);
        }
        if !self.has_session(to) {
            let claimed = claimed.ok_or(E2eError::NoSession)?;
            self.start_session(to, claimed)?;
        }
        let tick = self.touch();
        let peer = self.peers.get_mut(&to).ok_or(E2eError::NoSession)?;
        peer.used = tick;
        let session = peer.sessions.first_mut().ok_or(E2eError::NoSession)?;
        // The only failure is a non-contributory (low-order) key in the session's ratchet.
        let message = session
            .encrypt(plaintext)
            .map_err(|_| E2eError::InvalidKey)?;
        let (kind, bytes) = message.to_parts();
        let kind = if kind == 0 {
            OLM_TYPE_PRE_KEY
        } else {
            OLM_TYPE_NORMAL
        };
        let mut body = Vec::with_capacity(2 + bytes.len());
        body.push(BODY_VERSION);
        body.push(kind);
        body.extend_from_slice(&bytes);
        debug_assert!(body.len() <= BODY_LEN_MAX);
        Ok(body)
    }

    fn start_session(&mut self, to: DeviceId, claimed: &ClaimedKeys) -> Result<(), E2eError> {
        if claimed.device() != Some(to) {
            return Err(E2eError::ClaimedForAnotherDevice);
        }
        let curve25519 = Curve25519PublicKey::from_base64(&claimed.identity.curve25519)
            .map_err(|_| E2eError::InvalidKey)?;
        let ed25519 = Ed25519PublicKey::from_base64(&claimed.identity.ed25519)
            .map_err(|_| E2eError::InvalidKey)?;
        let one_time = Curve25519PublicKey::from_base64(&claimed.one_time_key.key)
            .map_err(|_| E2eError::InvalidKey)?;
        let signature = Ed25519Signature::from_base64(&claimed.one_time_key.signature)
            .map_err(|_| E2eError::InvalidSignature)?;
        ed25519
            .verify(&signed_message(&one_time), &signature)
            .map_err(|_| E2eError::InvalidSignature)?;
        if let Some(peer) = self.peers.get(&to) {
            let same_ed = peer.ed25519.is_none_or(|k| k == ed25519);
            if peer.curve25519 != curve25519 || !same_ed {
                return Err(E2eError::IdentityChanged);
            }
        }
        let session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), curve25519, one_time)
            .map_err(|_| E2eError::SessionCreation)?;
        self.reserve_peer(to);
        let tick = self.touch();
        let peer = self.peers.entry(to).or_insert_with(|| Peer {
            curve25519,
            ed25519: None,
            sessions: Vec::new(),
            used: tick,
        });
        peer.ed25519 = Some(ed25519);
        push_session(peer, session);
        Ok(())
    }

    /// Decrypts an envelope body from `from` (the sender the server authenticated). A pre-key
    /// message from a device without a matching session starts an inbound session (and pins the
    /// sender's identity key if none is pinned yet). A replayed message fails with
    /// [`E2eError::Decrypt`]: its message key is used up.
    pub fn open(&mut self, from: DeviceId, body: &[u8]) -> Result<Vec<u8>, E2eError> {
        let message = parse_body(body)?;
        let tick = self.touch();
        match message {
            OlmMessage::Normal(_) => {
                let peer = self.peers.get_mut(&from).ok_or(E2eError::NoSession)?;
                let (index, plaintext) = peer
                    .sessions
                    .iter_mut()
                    .enumerate()
                    .find_map(|(i, s)| s.decrypt(&message).ok().map(|p| (i, p)))
                    .ok_or(E2eError::Decrypt)?;
                peer.used = tick;
                let session = peer.sessions.remove(index);
                peer.sessions.insert(0, session);
                Ok(plaintext)
            }
            OlmMessage::PreKey(ref pre_key) => {
                let identity = pre_key.identity_key();
                if let Some(peer) = self.peers.get_mut(&from) {
                    if peer.curve25519 != identity {
                        return Err(E2eError::IdentityChanged);
                    }
                    let session_id = pre_key.session_id();
                    if let Some(index) = peer
                        .sessions
                        .iter()
                        .position(|s| s.session_id() == session_id)
                    {
                        // A later pre-key message of a session we already have (the sender
                        // has not heard from us yet), or a replay: the session decides.
                        let plaintext = peer.sessions[index]
                            .decrypt(&message)
                            .map_err(|_| E2eError::Decrypt)?;
                        peer.used = tick;
                        let session = peer.sessions.remove(index);
                        peer.sessions.insert(0, session);
                        return Ok(plaintext);
                    }
                }
                let created = self
                    .account
                    .create_inbound_session(SessionConfig::version_1(), identity, pre_key)
                    .map_err(|_| E2eError::SessionCreation)?;
                self.reserve_peer(from);
                let peer = self.peers.entry(from).or_insert_with(|| Peer {
                    curve25519: identity,
                    ed25519: None,
                    sessions: Vec::new(),
                    used: tick,
                });
                peer.used = tick;
                push_session(peer, created.session);
                Ok(created.plaintext)
            }
        }
    }

    /// The whole state (account, sessions, pinned identities), encrypted with XChaCha20-Poly1305
    /// under `key` with a random nonce, as text. Store it; [`E2e::from_pickle`] restores it.
    /// Empty (and refused by [`E2e::from_pickle`]) only if the random source failed; see
    /// [`E2e::try_pickle`].
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.try_pickle(key).unwrap_or_default()
    }

    /// [`E2e::pickle`], with the random source's failure as an error.
    pub fn try_pickle(&self, key: &[u8; 32]) -> Result<String, E2eError> {
        let state = PickledState {
            account: self.account.pickle(),
            peers: self
                .peers
                .iter()
                .map(|(id, p)| PickledPeer {
                    device: hex::encode(id.0),
                    curve25519: p.curve25519.to_base64(),
                    ed25519: p.ed25519.map(|k| k.to_base64()),
                    sessions: p.sessions.iter().map(Session::pickle).collect(),
                    used: p.used,
                })
                .collect(),
            tick: self.tick,
            groups: self.groups.to_pickle(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&state).map_err(|_| E2eError::Pickle)?);
        let mut nonce = [0u8; PICKLE_NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| E2eError::Random)?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &json,
                    aad: PICKLE_AAD,
                },
            )
            .map_err(|_| E2eError::Pickle)?;
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PICKLE_PREFIX}{}", vodozemac::base64_encode(out)))
    }

    /// Restores the state [`E2e::pickle`] wrote under the same `key`.
    pub fn from_pickle(pickled: &str, key: &[u8; 32]) -> Result<Self, E2eError> {
        if pickled.len() > PICKLE_LEN_MAX {
            return Err(E2eError::Pickle);
        }
        let text = pickled
            .strip_prefix(PICKLE_PREFIX)
            .ok_or(E2eError::Pickle)?;
        let raw = vodozemac::base64_decode(text).map_err(|_| E2eError::Pickle)?;
        if raw.len() < PICKLE_NONCE_LEN {
            return Err(E2eError::Pickle);
        }
        let (nonce, sealed) = raw.split_at(PICKLE_NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(key.into());
        let json = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: PICKLE_AAD,
                    },
                )
                .map_err(|_| E2eError::Pickle)?,
        );
        let state: PickledState = serde_json::from_slice(&json).map_err(|_| E2eError::Pickle)?;
        if state.peers.len() > PEERS_MAX {
            return Err(E2eError::Pickle);
        }
        let mut peers = BTreeMap::new();
        for p in state.peers {
            let device = hex::decode(&p.device)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(DeviceId)
                .ok_or(E2eError::Pickle)?;
            if p.sessions.len() > SESSIONS_PER_PEER_MAX {
                return Err(E2eError::Pickle);
            }
            let peer = Peer {
                curve25519: Curve25519PublicKey::from_base64(&p.curve25519)
                    .map_err(|_| E2eError::Pickle)?,
                ed25519: p
                    .ed25519
                    .map(|k| Ed25519PublicKey::from_base64(&k))
                    .transpose()
                    .map_err(|_| E2eError::Pickle)?,
                sessions: p.sessions.into_iter().map(Session::from_pickle).collect(),
                used: p.used,
            };
            peers.insert(device, peer);
        }
        Ok(Self {
            account: Account::from_pickle(state.account),
            peers,
            tick: state.tick,
            groups: Groups::from_pickle(state.groups).ok_or(E2eError::Pickle)?,
        })
    }
}

/// Adds a new session in front, dropping the least recently used past the bound.
fn push_session(peer: &mut Peer, session: Session) {
    peer.sessions.insert(0, session);
    peer.sessions.truncate(SESSIONS_PER_PEER_MAX);
}

/// Parses a version-1 body into its Olm message (no decryption).
fn parse_body(body: &[u8]) -> Result<OlmMessage, E2eError> {
    if body.len() > BODY_LEN_MAX {
        return Err(E2eError::BodyTooLong);
    }
    let [version, kind, message @ ..] = body else {
        return Err(E2eError::Malformed);
    };
    if *version != BODY_VERSION {
        return Err(E2eError::UnknownVersion(*version));
    }
    let kind = match *kind {
        OLM_TYPE_PRE_KEY => 0,
        OLM_TYPE_NORMAL => 1,
        _ => return Err(E2eError::Malformed),
    };
    OlmMessage::from_parts(kind, message).map_err(|_| E2eError::Malformed)
}

#[derive(Serialize, Deserialize)]
struct PickledPeer {
    device: String,
    curve25519: String,
    ed25519: Option<String>,
    sessions: Vec<SessionPickle>,
    used: u64,
}

#[derive(Serialize, Deserialize)]
struct PickledState {
    account: AccountPickle,
    peers: Vec<PickledPeer>,
    tick: u64,
    #[serde(default)]
    groups: GroupsPickle,
}
