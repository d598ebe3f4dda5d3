//! The handshake machines: [`Initiator`] (clients) and [`Responder`] (one per shard).
//!
//! Both are sans-IO: packets come in as byte slices with the current [`Instant`], replies are
//! written into caller buffers, and randomness comes from the caller's [`Rng`]. Driving rule:
//! after each `handle_*`, send what it wrote, then call `handle_timeout` no later than
//! `poll_timeout`.
//!
//! ```text
//! XK (hybrid: XKpsk3)                          IK (hybrid: IKpsk2)
//! I -> R  Initiation  e, es      [ek]          I -> R  Initiation  e, es, s, ss  [ek]
//! R -> I  Response    e, ee      [ct]          R -> I  Response    ct | e, ee, se, psk
//! I -> R  Finish      s, se, psk                       (done; R waits for key confirmation)
//! ```

use crate::HandshakeError;
use crate::cookie::{self, CookieSecret, MAC_LEN, constant_time_eq};
use crate::kem::{
    KEM_CIPHERTEXT_LEN, KEM_ENCAPS_SEED_LEN, KEM_KEYGEN_SEED_LEN, KEM_PUBLIC_KEY_LEN, Kem,
    MlKem768, MlKem768DecapsulationKey,
};
use crate::keys::{KEY_LEN, PeerAuthenticated, StaticKeypair};
use crate::packet::{self, INITIATION_HEADER_LEN, PacketType, REPLY_HEADER_LEN};
use crate::resolver::Resolver;
use crate::session::SessionKeys;
use crate::suite::{Pattern, Suite};
use core::net::SocketAddr;
use core::time::Duration;
use dp_core::limits::{COOKIE_SECRET_ROTATE_TIME, HANDSHAKE_TIMEOUT, STATIC_KEYS_MAX};
use dp_core::{Instant, Rng, SessionIndex};
use snow::HandshakeState;
use std::collections::BTreeMap;

/// The version byte that opens every handshake payload.
pub const PAYLOAD_VERSION: u8 = 0x01;
/// Every handshake payload starts with the version and the sender's index, which must equal
/// the index in the clear header: so the header's indices are authenticated too.
const PAYLOAD_PREFIX_LEN: usize = 1 + 4;
/// Length of the initiation payload without the hybrid key: prefix and timestamp.
const INITIATION_PAYLOAD_LEN: usize = PAYLOAD_PREFIX_LEN + 8;
/// Payloads are at most this long (initiation with an ML-KEM key).
const PAYLOAD_LEN_MAX: usize = INITIATION_PAYLOAD_LEN + KEM_PUBLIC_KEY_LEN;

/// Which side of the handshake this end was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sent the first message (the client).
    Initiator,
    /// Answered it (the server).
    Responder,
}

/// A completed handshake: the authenticated peer and the transport keys.
#[derive(Debug)]
pub struct Established {
    /// The peer, authenticated by the handshake transcript.
    pub peer: PeerAuthenticated,
    /// The suite that was used.
    pub suite: Suite,
    /// This end's role.
    pub role: Role,
    /// The index this end chose; the peer puts it in datagrams it sends here.
    pub local_index: SessionIndex,
    /// The index the peer chose; this end puts it in datagrams it sends there.
    pub remote_index: SessionIndex,
    /// The Noise handshake hash `h`, for channel binding.
    pub handshake_hash: [u8; 32],
    /// The initiator's wall-clock timestamp from the initiation (ms since the Unix epoch). A
    /// server keeps the latest per device and refuses older ones, so a replayed IK initiation
    /// cannot displace a live session.
    pub timestamp_ms: u64,
    pub(crate) keys: SessionKeys,
}

/// The raw transport keys of a handshake, for the protocol test vectors.
#[derive(Debug, PartialEq, Eq)]
pub struct DangerRawKeys {
    /// Initiator-to-responder key.
    pub initiator_to_responder: [u8; 32],
    /// Responder-to-initiator key.
    pub responder_to_initiator: [u8; 32],
}

impl Established {
    /// The transport keys in the clear: only for publishing test vectors.
    pub fn danger_raw_keys(&self) -> DangerRawKeys {
        let (send, recv) = (*self.keys.send, *self.keys.recv);
        match self.role {
            Role::Initiator => DangerRawKeys {
                initiator_to_responder: send,
                responder_to_initiator: recv,
            },
            Role::Responder => DangerRawKeys {
                initiator_to_responder: recv,
                responder_to_initiator: send,
            },
        }
    }
}

fn params(suite: Suite) -> Result<snow::params::NoiseParams, HandshakeError> {
    suite
        .noise_name()
        .parse()
        .map_err(|_| HandshakeError::UnknownSuite)
}

fn build(
    suite: Suite,
    local: &StaticKeypair,
    remote: Option<&[u8; KEY_LEN]>,
    ephemeral: [u8; 32],
    initiator: bool,
) -> Result<HandshakeState, HandshakeError> {
    let prologue = suite.prologue();
    let mut builder =
        snow::Builder::with_resolver(params(suite)?, Box::new(Resolver::new(ephemeral, local)))
            .local_private_key(local.private())
            .and_then(|b| b.prologue(&prologue))
            .map_err(|_| HandshakeError::Noise)?;
    if let Some(remote) = remote {
        builder = builder
            .remote_public_key(remote)
            .map_err(|_| HandshakeError::Noise)?;
    }
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state.map_err(|_| HandshakeError::Noise)
}

fn split(mut state: HandshakeState, role: Role) -> Result<(SessionKeys, [u8; 32]), HandshakeError> {
    let mut hash = [0u8; 32];
    let h = state.get_handshake_hash();
    if h.len() != 32 {
        return Err(HandshakeError::Noise);
    }
    hash.copy_from_slice(h);
    let (i2r, r2i) = state.dangerously_get_raw_split();
    let keys = match role {
        Role::Initiator => SessionKeys::new(i2r, r2i),
        Role::Responder => SessionKeys::new(r2i, i2r),
    };
    Ok((keys, hash))
}

fn write_prefix(payload: &mut [u8], sender: [u8; 4]) {
    payload[0] = PAYLOAD_VERSION;
    payload[1..PAYLOAD_PREFIX_LEN].copy_from_slice(&sender);
}

/// Checks the version and that the authenticated sender index equals the header's; returns the
/// rest of the payload.
fn check_prefix(payload: &[u8], header_sender: u32) -> Result<&[u8], HandshakeError> {
    match payload {
        [PAYLOAD_VERSION, a, b, c, d, rest @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) == header_sender =>
        {
            Ok(rest)
        }
        _ => Err(HandshakeError::BadPayload),
    }
}

fn remote_static(state: &HandshakeState) -> Result<[u8; KEY_LEN], HandshakeError> {
    state
        .get_remote_static()
        .and_then(|key| <[u8; KEY_LEN]>::try_from(key).ok())
        .ok_or(HandshakeError::Noise)
}

// ---------------------------------------------------------------------------------------------
// Initiator
// ---------------------------------------------------------------------------------------------

/// What the initiator needs to start.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    /// The suite to offer.
    pub suite: Suite,
    /// This device's static key pair.
    pub local: StaticKeypair,
    /// The server's static public key, from the invite or config.
    pub remote_static: [u8; KEY_LEN],
    /// Wall-clock milliseconds since the Unix epoch, sent so the server can refuse replays.
    pub timestamp_ms: u64,
}

/// What an incoming packet did to the initiator.
#[derive(Debug)]
pub enum InitiatorEvent {
    /// The responder is under load and sent a cookie: call
    /// [`Initiator::write_initiation`] again (it will carry `mac2`).
    Retry,
    /// The handshake is complete. For XK, `finish_len` bytes of the output buffer hold the
    /// Finish packet, which must be sent before any transport data.
    Established {
        /// Bytes of the Finish packet written to the output buffer (XK), or `None` (IK).
        finish_len: Option<usize>,
        /// The session.
        session: Box<Established>,
    },
}

/// The client side of a handshake.
///
/// Use: [`Initiator::new`], [`Initiator::write_initiation`] and send it, then feed every packet
/// from the server to [`Initiator::handle_packet`]. On [`InitiatorEvent::Retry`], write and send
/// a new initiation. Give up at [`Initiator::poll_timeout`].
pub struct Initiator {
    config: InitiatorConfig,
    state: Option<HandshakeState>,
    kem: Option<MlKem768DecapsulationKey>,
    local_index: u32,
    mac1_last: [u8; MAC_LEN],
    cookie: Option<([u8; MAC_LEN], Instant)>,
    deadline: Instant,
}

impl core::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Initiator")
            .field("suite", &self.config.suite)
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// A new handshake, to complete before `now + HANDSHAKE_TIMEOUT`.
    pub fn new(now: Instant, config: InitiatorConfig) -> Self {
        Self {
            config,
            state: None,
            kem: None,
            local_index: 0,
            mac1_last: [0; MAC_LEN],
            cookie: None,
            deadline: now.saturating_add(HANDSHAKE_TIMEOUT),
        }
    }

    /// The deadline of the handshake.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Writes a fresh initiation (new ephemeral key, new index) into `out`; returns its length.
    ///
    /// Randomness is drawn in this order: index (4 bytes, public), ephemeral private key
    /// (32, private), and for hybrid suites the ML-KEM seed `d || z` (64, private).
    pub fn write_initiation(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        out: &mut [u8],
    ) -> Result<usize, HandshakeError> {
        let suite = self.config.suite;
        let mut index = [0u8; 4];
        rng.public_fill(&mut index);
        let mut ephemeral = [0u8; 32];
        rng.private_fill(&mut ephemeral);
        let mut payload = [0u8; PAYLOAD_LEN_MAX];
        write_prefix(&mut payload, index);
        payload[PAYLOAD_PREFIX_LEN..INITIATION_PAYLOAD_LEN]
            .copy_from_slice(&self.config.timestamp_ms.to_be_bytes());
        let mut payload_len = INITIATION_PAYLOAD_LEN;
        self.kem = None;
        if suite.hybrid {
            let mut seed = zeroize::Zeroizing::new([0u8; KEM_KEYGEN_SEED_LEN]);
            rng.private_fill(&mut seed[..]);
            let (dk, ek) = MlKem768::generate(&seed);
            payload[payload_len..payload_len + KEM_PUBLIC_KEY_LEN].copy_from_slice(&ek);
            payload_len += KEM_PUBLIC_KEY_LEN;
            self.kem = Some(dk);
        }
        let mut state = build(
            suite,
            &self.config.local,
            Some(&self.config.remote_static),
            ephemeral,
            true,
        )?;
        self.local_index = u32::from_be_bytes(index);
        if out.len() < INITIATION_HEADER_LEN + 2 * MAC_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let noise_end = out.len() - 2 * MAC_LEN;
        packet::write_initiation_header(out, suite, self.local_index);
        let noise_len = state
            .write_message(
                &payload[..payload_len],
                &mut out[INITIATION_HEADER_LEN..noise_end],
            )
            .map_err(|_| HandshakeError::BufferTooSmall)?;
        let mac1_at = INITIATION_HEADER_LEN + noise_len;
        let mac1 = cookie::mac(
            &cookie::mac1_key(&self.config.remote_static),
            &out[..mac1_at],
        );
        out[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        let mac2_at = mac1_at + MAC_LEN;
        let mac2 = match self.cookie {
            Some((cookie, received))
                if now.saturating_duration_since(received) < COOKIE_SECRET_ROTATE_TIME =>
            {
                cookie::mac(&cookie, &out[..mac2_at])
            }
            _ => [0u8; MAC_LEN],
        };
        out[mac2_at..mac2_at + MAC_LEN].copy_from_slice(&mac2);
        self.mac1_last = mac1;
        self.state = Some(state);
        Ok(mac2_at + MAC_LEN)
    }

    /// Handles a packet from the responder: a cookie reply or the response.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<InitiatorEvent, HandshakeError> {
        if now >= self.deadline {
            return Err(HandshakeError::Timeout);
        }
        match PacketType::of(packet) {
            Some(PacketType::CookieReply) => self.handle_cookie(now, packet),
            Some(PacketType::Response) => self.handle_response(packet, out),
            _ => Err(HandshakeError::UnexpectedPacket),
        }
    }

    fn handle_cookie(
        &mut self,
        now: Instant,
        packet: &[u8],
    ) -> Result<InitiatorEvent, HandshakeError> {
        let reply = packet::parse_cookie_reply(packet)?;
        if reply.receiver != self.local_index || self.state.is_none() {
            return Err(HandshakeError::UnknownIndex);
        }
        let key = cookie::cookie_key(&self.config.remote_static);
        let cookie = cookie::open_cookie(&key, &reply.nonce, &reply.sealed, &self.mac1_last)
            .ok_or(HandshakeError::Noise)?;
        self.cookie = Some((cookie, now));
        self.state = None;
        Ok(InitiatorEvent::Retry)
    }

    fn handle_response(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<InitiatorEvent, HandshakeError> {
        let suite = self.config.suite;
        let reply = packet::parse_reply(packet, PacketType::Response)?;
        if reply.receiver != self.local_index {
            return Err(HandshakeError::UnknownIndex);
        }
        if reply.suite != suite {
            return Err(HandshakeError::Malformed);
        }
        let mut state = self.state.take().ok_or(HandshakeError::UnexpectedPacket)?;
        let mut noise = reply.body;
        if suite.hybrid && suite.pattern == Pattern::Ik {
            let ct = noise
                .get(..KEM_CIPHERTEXT_LEN)
                .ok_or(HandshakeError::Malformed)?;
            self.mix_kem(&mut state, ct)?;
            noise = &noise[KEM_CIPHERTEXT_LEN..];
        }
        let mut payload = [0u8; PAYLOAD_LEN_MAX];
        let payload_len = state
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        let rest = check_prefix(&payload[..payload_len], reply.sender)?;
        match (suite.pattern, suite.hybrid) {
            (Pattern::Xk, true) => {
                if rest.len() != KEM_CIPHERTEXT_LEN {
                    return Err(HandshakeError::BadPayload);
                }
                self.mix_kem(&mut state, rest)?;
            }
            _ if !rest.is_empty() => return Err(HandshakeError::BadPayload),
            _ => {}
        }
        let finish_len = match suite.pattern {
            Pattern::Ik => None,
            Pattern::Xk => {
                if out.len() < REPLY_HEADER_LEN {
                    return Err(HandshakeError::BufferTooSmall);
                }
                packet::write_reply_header(
                    out,
                    PacketType::Finish,
                    suite,
                    self.local_index,
                    reply.sender,
                );
                let mut finish_payload = [0u8; PAYLOAD_PREFIX_LEN];
                write_prefix(&mut finish_payload, self.local_index.to_be_bytes());
                let len = state
                    .write_message(&finish_payload, &mut out[REPLY_HEADER_LEN..])
                    .map_err(|_| HandshakeError::BufferTooSmall)?;
                Some(REPLY_HEADER_LEN + len)
            }
        };
        let (keys, handshake_hash) = split(state, Role::Initiator)?;
        let session = Established {
            peer: PeerAuthenticated::new(self.config.remote_static),
            suite,
            role: Role::Initiator,
            local_index: SessionIndex(self.local_index),
            remote_index: SessionIndex(reply.sender),
            handshake_hash,
            timestamp_ms: self.config.timestamp_ms,
            keys,
        };
        Ok(InitiatorEvent::Established {
            finish_len,
            session: Box::new(session),
        })
    }

    fn mix_kem(&mut self, state: &mut HandshakeState, ct: &[u8]) -> Result<(), HandshakeError> {
        let dk = self.kem.take().ok_or(HandshakeError::UnexpectedPacket)?;
        let ct: &[u8; KEM_CIPHERTEXT_LEN] = ct.try_into().map_err(|_| HandshakeError::Malformed)?;
        let secret = MlKem768::decapsulate(&dk, ct);
        state
            .set_psk(usize::from(self.config.suite.psk_location()), &secret[..])
            .map_err(|_| HandshakeError::Noise)
    }
}

// ---------------------------------------------------------------------------------------------
// Responder
// ---------------------------------------------------------------------------------------------

/// Responder policy and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponderConfig {
    /// Refuse classic suites: only hybrid post-quantum handshakes are accepted.
    pub hybrid_required: bool,
    /// The most XK handshakes waiting for their Finish.
    pub pending_max: usize,
    /// Past this many initiations within one second, every initiation must carry a valid
    /// `mac2` (a cookie), so that a flood costs no DH work and no state.
    pub initiations_per_second_max: u32,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            hybrid_required: false,
            pending_max: 4096,
            initiations_per_second_max: 20_000,
        }
    }
}

/// What a packet made the responder do.
#[derive(Debug)]
pub enum ResponderEvent {
    /// Under load: a cookie reply of `len` bytes is in the output buffer; no state was kept.
    CookieSent {
        /// Bytes written.
        len: usize,
    },
    /// XK: the response of `len` bytes is in the output buffer; the Finish is awaited.
    Continue {
        /// Bytes written.
        len: usize,
    },
    /// The handshake is complete. For IK, `reply_len` bytes of the response are in the output
    /// buffer and must be sent.
    Established {
        /// Bytes of the response written (IK), or `None` (XK Finish).
        reply_len: Option<usize>,
        /// The session.
        session: Box<Established>,
    },
}

struct ServerKey {
    pair: StaticKeypair,
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    retire_at: Option<Instant>,
}

impl ServerKey {
    fn new(pair: StaticKeypair) -> Self {
        Self {
            mac1_key: cookie::mac1_key(pair.public()),
            cookie_key: cookie::cookie_key(pair.public()),
            pair,
            retire_at: None,
        }
    }
}

struct Pending {
    state: HandshakeState,
    suite: Suite,
    remote_index: u32,
    timestamp_ms: u64,
    deadline: Instant,
}

/// Counters a shard exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Pending XK handshakes that timed out.
    pub pending_expired: u64,
}

/// The server side of handshakes, one per shard.
///
/// Inputs: [`Responder::handle_packet`] (initiations and finishes), [`Responder::handle_timeout`].
/// Commands: [`Responder::rotate_static`], [`Responder::set_under_load`]. Output: the event of
/// each `handle_packet`, and [`Responder::poll_timeout`].
///
/// An initiation is checked in this order, cheapest first: layout, `mac1` (proves the sender
/// knows one of our static keys; also tells which), load (under load a valid `mac2` is required,
/// else a cookie reply is written and nothing is kept), suite policy, then the Noise work.
pub struct Responder {
    config: ResponderConfig,
    keys: Vec<ServerKey>,
    cookie: CookieSecret,
    pending: BTreeMap<u32, Pending>,
    window_start: Instant,
    window_count: u32,
    forced_load: bool,
    stats: ResponderStats,
}

impl core::fmt::Debug for Responder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Responder")
            .field("config", &self.config)
            .field("keys", &self.keys.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder with one static key.
    pub fn new(
        now: Instant,
        config: ResponderConfig,
        key: StaticKeypair,
        rng: &mut impl Rng,
    ) -> Self {
        let mut keys = Vec::with_capacity(STATIC_KEYS_MAX);
        keys.push(ServerKey::new(key));
        Self {
            config,
            keys,
            cookie: CookieSecret::new(now, rng),
            pending: BTreeMap::new(),
            window_start: now,
            window_count: 0,
            forced_load: false,
            stats: ResponderStats::default(),
        }
    }

    /// The current static public key (the one new invites name).
    pub fn static_public(&self) -> &[u8; KEY_LEN] {
        // `keys` is never empty: `new` pushes one and `rotate_static` pushes before retiring.
        self.keys
            .first()
            .map_or(&[0; KEY_LEN], |key| key.pair.public())
    }

    /// Counters.
    pub fn stats(&self) -> ResponderStats {
        self.stats
    }

    /// Pending XK handshakes.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Makes `key` current. The previous keys stay accepted until `now + grace`; past
    /// [`STATIC_KEYS_MAX`] the oldest is dropped at once.
    pub fn rotate_static(&mut self, now: Instant, key: StaticKeypair, grace: Duration) {
        let retire_at = now.saturating_add(grace);
        for old in &mut self.keys {
            old.retire_at = Some(old.retire_at.map_or(retire_at, |at| at.min(retire_at)));
        }
        self.keys.insert(0, ServerKey::new(key));
        self.keys.truncate(STATIC_KEYS_MAX);
    }

    /// Forces cookie checks on or off regardless of the measured rate (the shard sets it when
    /// its own budgets run short).
    pub fn set_under_load(&mut self, under_load: bool) {
        self.forced_load = under_load;
    }

    /// The next time [`Responder::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.cookie.next_rotation();
        if let Some(deadline) = self.pending.values().map(|p| p.deadline).min() {
            next = next.min(deadline);
        }
        if let Some(retire) = self.keys.iter().filter_map(|k| k.retire_at).min() {
            next = next.min(retire);
        }
        next
    }

    /// Expires pending handshakes and retired keys, rotates the cookie secret.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl Rng) {
        self.cookie.handle_timeout(now, rng);
        let before = self.pending.len();
        self.pending.retain(|_, pending| pending.deadline > now);
        self.stats.pending_expired += (before - self.pending.len()) as u64;
        self.keys
            .retain(|key| key.retire_at.is_none_or(|at| at > now));
    }

    /// Handles an Initiation or a Finish from `from`, writing any reply into `out`.
    ///
    /// Randomness drawn for an accepted initiation, in order: index (4, public), ephemeral
    /// private key (32, private), and for hybrid suites the encapsulation randomness `m`
    /// (32, private). A cookie reply draws its nonce (24, public).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
        out: &mut [u8],
        rng: &mut impl Rng,
    ) -> Result<ResponderEvent, HandshakeError> {
        match PacketType::of(packet) {
            Some(PacketType::Initiation) => self.handle_initiation(now, from, packet, out, rng),
            Some(PacketType::Finish) => self.handle_finish(now, packet),
            _ => Err(HandshakeError::UnexpectedPacket),
        }
    }

    fn under_load(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(1);
        self.forced_load
            || self.window_count > self.config.initiations_per_second_max
            || self.pending.len() >= self.config.pending_max / 2
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
        out: &mut [u8],
        rng: &mut impl Rng,
    ) -> Result<ResponderEvent, HandshakeError> {
        let init = packet::parse_initiation(packet)?;
        let key_slot = self
            .keys
            .iter()
            .position(|key| {
                key.retire_at.is_none_or(|at| at > now)
                    && constant_time_eq(&cookie::mac(&key.mac1_key, init.mac1_input), &init.mac1)
            })
            .ok_or(HandshakeError::BadMac1)?;
        if self.under_load(now) && !self.cookie.check_mac2(from, init.mac2_input, &init.mac2) {
            return self.write_cookie_reply(from, &init, key_slot, out, rng);
        }
        let suite = init.suite;
        if self.config.hybrid_required && !suite.hybrid {
            return Err(HandshakeError::SuiteRefused);
        }
        if suite.pattern == Pattern::Xk && self.pending.len() >= self.config.pending_max {
            return Err(HandshakeError::PendingTableFull);
        }
        let mut index = [0u8; 4];
        rng.public_fill(&mut index);
        let mut local_index = u32::from_be_bytes(index);
        while self.pending.contains_key(&local_index) {
            local_index = local_index.wrapping_add(1);
        }
        let mut ephemeral = [0u8; 32];
        rng.private_fill(&mut ephemeral);
        let server_key = &self.keys[key_slot].pair;
        let mut state = build(suite, server_key, None, ephemeral, false)?;

        let mut payload = [0u8; PAYLOAD_LEN_MAX];
        let payload_len = state
            .read_message(init.noise, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        let payload = &payload[..payload_len];
        let expected_len =
            INITIATION_PAYLOAD_LEN + if suite.hybrid { KEM_PUBLIC_KEY_LEN } else { 0 };
        if payload.len() != expected_len {
            return Err(HandshakeError::BadPayload);
        }
        check_prefix(payload, init.sender)?;
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&payload[PAYLOAD_PREFIX_LEN..INITIATION_PAYLOAD_LEN]);
        let timestamp_ms = u64::from_be_bytes(timestamp);

        let mut ciphertext = None;
        if suite.hybrid {
            let mut m = zeroize::Zeroizing::new([0u8; KEM_ENCAPS_SEED_LEN]);
            rng.private_fill(&mut m[..]);
            let ek: &[u8; KEM_PUBLIC_KEY_LEN] = payload[INITIATION_PAYLOAD_LEN..]
                .try_into()
                .map_err(|_| HandshakeError::BadPayload)?;
            let (ct, secret) = MlKem768::encapsulate(ek, &m).ok_or(HandshakeError::BadKemKey)?;
            state
                .set_psk(usize::from(suite.psk_location()), &secret[..])
                .map_err(|_| HandshakeError::Noise)?;
            ciphertext = Some(ct);
        }

        if out.len() < REPLY_HEADER_LEN + KEM_CIPHERTEXT_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        packet::write_reply_header(out, PacketType::Response, suite, local_index, init.sender);
        let mut at = REPLY_HEADER_LEN;
        let mut reply_payload = [0u8; PAYLOAD_PREFIX_LEN + KEM_CIPHERTEXT_LEN];
        write_prefix(&mut reply_payload, local_index.to_be_bytes());
        let mut reply_payload_len = PAYLOAD_PREFIX_LEN;
        match (suite.pattern, ciphertext) {
            (Pattern::Ik, Some(ct)) => {
                out[at..at + KEM_CIPHERTEXT_LEN].copy_from_slice(&ct);
                at += KEM_CIPHERTEXT_LEN;
            }
            (Pattern::Xk, Some(ct)) => {
                reply_payload[PAYLOAD_PREFIX_LEN..].copy_from_slice(&ct);
                reply_payload_len += KEM_CIPHERTEXT_LEN;
            }
            (_, None) => {}
        }
        let noise_len = state
            .write_message(&reply_payload[..reply_payload_len], &mut out[at..])
            .map_err(|_| HandshakeError::BufferTooSmall)?;
        let len = at + noise_len;

        match suite.pattern {
            Pattern::Xk => {
                self.pending.insert(
                    local_index,
                    Pending {
                        state,
                        suite,
                        remote_index: init.sender,
                        timestamp_ms,
                        deadline: now.saturating_add(HANDSHAKE_TIMEOUT),
                    },
                );
                Ok(ResponderEvent::Continue { len })
            }
            Pattern::Ik => {
                let peer = PeerAuthenticated::new(remote_static(&state)?);
                let (keys, handshake_hash) = split(state, Role::Responder)?;
                self.stats.established += 1;
                let session = Established {
                    peer,
                    suite,
                    role: Role::Responder,
                    local_index: SessionIndex(local_index),
                    remote_index: SessionIndex(init.sender),
                    handshake_hash,
                    timestamp_ms,
                    keys,
                };
                Ok(ResponderEvent::Established {
                    reply_len: Some(len),
                    session: Box::new(session),
                })
            }
        }
    }

    fn write_cookie_reply(
        &mut self,
        from: SocketAddr,
        init: &packet::Initiation<'_>,
        key_slot: usize,
        out: &mut [u8],
        rng: &mut impl Rng,
    ) -> Result<ResponderEvent, HandshakeError> {
        if out.len() < packet::COOKIE_REPLY_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let mut nonce = [0u8; cookie::COOKIE_NONCE_LEN];
        rng.public_fill(&mut nonce);
        let sealed = cookie::seal_cookie(
            &self.keys[key_slot].cookie_key,
            &nonce,
            &self.cookie.cookie(from),
            &init.mac1,
        )
        .ok_or(HandshakeError::Noise)?;
        packet::write_cookie_reply(out, init.sender, &nonce, &sealed);
        self.stats.cookies_sent += 1;
        Ok(ResponderEvent::CookieSent {
            len: packet::COOKIE_REPLY_LEN,
        })
    }

    fn handle_finish(
        &mut self,
        now: Instant,
        packet: &[u8],
    ) -> Result<ResponderEvent, HandshakeError> {
        let finish = packet::parse_reply(packet, PacketType::Finish)?;
        let matches = self.pending.get(&finish.receiver).is_some_and(|pending| {
            pending.remote_index == finish.sender && pending.suite == finish.suite
        });
        if !matches {
            return Err(HandshakeError::UnknownIndex);
        }
        let Some(mut pending) = self.pending.remove(&finish.receiver) else {
            return Err(HandshakeError::UnknownIndex);
        };
        if now >= pending.deadline {
            self.stats.pending_expired += 1;
            return Err(HandshakeError::Timeout);
        }
        let mut payload = [0u8; 16];
        let payload_len = pending
            .state
            .read_message(finish.body, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        if !check_prefix(&payload[..payload_len], finish.sender)?.is_empty() {
            return Err(HandshakeError::BadPayload);
        }
        let peer = PeerAuthenticated::new(remote_static(&pending.state)?);
        let (keys, handshake_hash) = split(pending.state, Role::Responder)?;
        self.stats.established += 1;
        let session = Established {
            peer,
            suite: pending.suite,
            role: Role::Responder,
            local_index: SessionIndex(finish.receiver),
            remote_index: SessionIndex(finish.sender),
            handshake_hash,
            timestamp_ms: pending.timestamp_ms,
            keys,
        };
        Ok(ResponderEvent::Established {
            reply_len: None,
            session: Box::new(session),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
