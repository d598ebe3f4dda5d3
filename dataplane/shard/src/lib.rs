//! A shard: the per-core composition of handshakes, encrypted sessions, frames and message
//! routing (quinn's `Endpoint`, one level up). One `Shard` runs on each core's thread.
//!
//! This crate performs no I/O and reads no clock. The IO layer feeds it connections and bytes
//! and writes out what it produces. Driving rule: after any `handle_*` call, drain
//! [`Shard::poll_event`] and write [`Shard::poll_transmit`] for every connection that
//! [`Shard::poll_dirty`] names, until both are empty, then wait no longer than
//! [`Shard::poll_timeout`].
//!
//! Inputs: [`Shard::handle_connect`], [`Shard::handle_received`], [`Shard::handle_written`],
//! [`Shard::handle_closed`], [`Shard::handle_shard_message`], [`Shard::handle_control`],
//! [`Shard::handle_refused`] (an envelope the IO layer had no link credit for),
//! [`Shard::adopt`] (a connection handed over from another shard), [`Shard::handle_timeout`],
//! [`Shard::handle_wall_clock`], [`Shard::handle_shutdown`].
//! Outputs: [`Shard::poll_dirty`], [`Shard::poll_transmit`], [`Shard::poll_event`],
//! [`Shard::poll_timeout`].
//!
//! Envelopes are the only must-deliver work a shard can refuse: the IO layer sends
//! [`ShardMessage::Envelope`] and [`ControlRequest::Store`] only with a link credit and hands
//! the envelope back through [`Shard::handle_refused`] when it has none; the sender then gets
//! `SendAck(Retry)`. Everything else on the links is small and bounded by what the shard
//! holds, and is always sent.
//!
//! Order per recipient: a device's envelopes reach it in the order its home shard took them.
//! While control may still hold stored envelopes for an online device, new ones are stored
//! behind them instead of delivered past them, until control reports
//! [`ControlEvent::Drained`].
//!
//! Sessions are pinned: a device's home shard is [`home_shard`], a keyed function of its id, so
//! any shard routes to any device without a directory. A connection whose handshake completes
//! on another shard is handed to the home shard ([`ShardEvent::HandOff`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod conversation;
mod presence;
mod route;
mod timers;

pub use conn::{ConnId, HandOff};
pub use conversation::{
    CACHED_MEMBER_DEVICES_MAX, CONVERSATION_CACHE_TTL, CONVERSATION_LOOKUPS_MAX,
    CONVERSATIONS_CACHED_MAX, ConversationAnswer, ConversationInfo, FANOUTS_MAX,
    MEMBER_DEVICES_MAX, Member, REFRESH_AHEAD_AGE, REFRESH_AHEAD_FRACTION, REFRESH_AHEAD_INTERVAL,
    SENDS_WAITING_PER_CONVERSATION_MAX, conversation_home,
};
pub use presence::{
    AUDIENCE_CACHE_TTL, AUDIENCE_DEVICES_MAX, AUDIENCE_LOOKUPS_MAX, AUDIENCES_CACHED_MAX,
    AudienceAnswer, CACHED_AUDIENCE_DEVICES_MAX, PresenceBatch,
};
pub use route::{Envelope, Origin, home_shard};

use conn::{Conn, ConnState, Established};
use core::net::SocketAddr;
use core::time::Duration;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_noise::{HandshakeError, Responder, ResponderConfig, ResponderEvent, StaticKeypair};
use dp_proto::{ErrorCode, FrameAssembler, SendStatus};
use std::collections::{BTreeMap, VecDeque};

/// The key that per-source limits count by: the IPv4 address, or the IPv6 /64.
fn source_key(peer: SocketAddr) -> core::net::IpAddr {
    match peer.ip() {
        core::net::IpAddr::V6(ip) => {
            let mut octets = ip.octets();
            octets[8..].fill(0);
            core::net::IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// A shard's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// Shard settings, valid by construction through [`ShardConfig::new`].
#[derive(Clone, Copy, Debug)]
pub struct ShardConfig {
    /// This shard.
    pub shard: ShardId,
    /// How many shards the process runs.
    pub shard_count: u16,
    /// The secret that keys [`home_shard`], the same on every shard of the process.
    pub routing_key: u64,
    /// The most connections this shard holds.
    pub conns_max: usize,
    /// The most connections this shard holds from one source: one IPv4 address, or one IPv6
    /// /64 (the port is not part of the key, so a new connection does not evade it).
    pub conns_per_source_max: u32,
    /// The most bytes waiting to be written to one connection; a recipient past it is
    /// disconnected with `SLOW_CONSUMER` and its messages go to storage.
    pub outbound_bytes_max: usize,
    /// The most envelopes queued to one connection and not yet acknowledged by it; past this
    /// the recipient counts as stuck and is disconnected (its envelopes are stored).
    pub inflight_max: usize,
    /// A connection that receives nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Handshake policy.
    pub responder: ResponderConfig,
}

impl ShardConfig {
    /// Defaults for shard `shard` of `shard_count`, or `None` if `shard` is out of range.
    pub fn new(shard: ShardId, shard_count: u16, routing_key: u64) -> Option<Self> {
        (shard.0 < shard_count).then_some(Self {
            shard,
            shard_count,
            routing_key,
            conns_max: 1 << 20,
            conns_per_source_max: 4096,
            outbound_bytes_max: 1 << 20,
            inflight_max: 4096,
            idle_timeout: Duration::from_secs(90),
            responder: ResponderConfig::default(),
        })
    }
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed it or the IO layer saw an error.
    Peer,
    /// A handshake packet or record failed; nothing more can be said to the peer.
    Crypto,
    /// The peer broke the framing rules.
    Protocol(ErrorCode),
    /// Nothing received within the idle timeout.
    Idle,
    /// Too much was waiting to be written to it.
    SlowConsumer,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The connection moved to its home shard.
    HandedOff,
    /// The server is shutting down (the client was sent `GoAway`).
    ShuttingDown,
}

/// What the shard asks of the IO layer and of its peers.
#[derive(Debug)]
pub enum ShardEvent {
    /// Write out what `poll_transmit` still has for this connection, then close it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Move this connection (its socket and [`Shard::take_handoff`]) to shard `to`.
    HandOff {
        /// The connection.
        conn: ConnId,
        /// Its home shard.
        to: ShardId,
    },
    /// Send `message` to shard `to` over the shard link.
    ToShard {
        /// The target shard.
        to: ShardId,
        /// The message.
        message: ShardMessage,
    },
    /// Send `message` to control.
    ToControl(ControlRequest),
}

/// Messages between shards.
#[derive(Debug)]
pub enum ShardMessage {
    /// An envelope for a device homed on the receiving shard.
    Envelope(Box<Envelope>),
    /// The outcome for an envelope that came from the receiving shard.
    Outcome {
        /// Where the envelope came from.
        origin: Origin,
        /// Its id.
        message: MessageId,
        /// Delivered or stored.
        status: SendStatus,
        /// The message's per-conversation sequence number, 0 if none.
        seq: u64,
        /// The spent copy, returned to the shard that made it for reuse.
        envelope: Option<Box<Envelope>>,
    },
    /// An envelope box sent back to the shard that made it, for reuse (a conversation's
    /// batch, once its copies are made), so boxes do not pile up on one shard.
    Spare(Box<Envelope>),
    /// A conversation message was refused by the conversation's home shard: its sender hears
    /// `Error(code)` (`NOT_FOUND` for a non-member and an unknown conversation alike).
    Rejected {
        /// Where the message came from.
        origin: Origin,
        /// The conversation.
        conversation: ConversationId,
        /// Why.
        code: ErrorCode,
    },
    /// A presence update for devices homed on the receiving shard (best effort: the IO layer
    /// drops it when the link is full and tells the sender through
    /// [`Shard::handle_presence_refused`]).
    Presence(Box<PresenceBatch>),
}

/// Requests from a shard to control.
#[derive(Debug)]
pub enum ControlRequest {
    /// Store this envelope durably; answer with [`ControlEvent::Stored`] to its origin shard.
    /// Needs a link credit (see [`Shard::handle_refused`]).
    Store(Box<Envelope>),
    /// The device acknowledged these stored envelopes; they may be deleted.
    Acknowledged {
        /// The device.
        device: DeviceId,
        /// The envelope ids.
        messages: Vec<MessageId>,
    },
    /// The device is online on this shard: drain its stored envelopes here, and count the
    /// `Store`s for it from now on for [`ControlEvent::Drained`].
    SessionOpened {
        /// The device.
        device: DeviceId,
        /// Which session, echoed in [`ControlEvent::Drained`].
        session: u64,
    },
    /// A control operation from a device's session (a `Request` frame); answer with
    /// [`ControlEvent::Response`] to `origin`.
    Operation(Box<Operation>),
    /// The device went offline.
    SessionClosed {
        /// The device.
        device: DeviceId,
    },
    /// Who is in this conversation, and the next block of its sequence numbers: answer with
    /// [`ControlEvent::Conversation`] to the asking shard (the conversation's home).
    LookupConversation {
        /// The conversation.
        conversation: ConversationId,
    },
    /// Who hears this device's presence: answer with [`ControlEvent::Audience`] to the asking
    /// shard (the device's home).
    LookupAudience {
        /// The device.
        device: DeviceId,
    },
}

/// A `Request` frame for control, with the handshake's proof of who sent it.
#[derive(Debug)]
pub struct Operation {
    /// Where the answer goes.
    pub origin: Origin,
    /// The sender, as its Noise handshake proved it.
    pub peer: dp_noise::PeerAuthenticated,
    /// The client's id for the request.
    pub request_id: u32,
    /// The operation.
    pub op: u16,
    /// Its arguments.
    pub body: Vec<u8>,
}

/// Events from control to a shard.
#[derive(Debug)]
pub enum ControlEvent {
    /// The envelope is durably stored: acknowledge it to its sender.
    Stored {
        /// Where it came from.
        origin: Origin,
        /// Its id.
        message: MessageId,
    },
    /// A stored envelope for a device homed here: delivered if the device is online (and
    /// not already in flight to it). A session that cannot take it is disconnected as a slow
    /// consumer, so no later envelope overtakes it; it stays stored either way until the
    /// device acknowledges it. Control paces the drain: a window of envelopes per device, more
    /// as [`ControlRequest::Acknowledged`] arrives, and a retry now and then.
    Deliver {
        /// The envelope.
        envelope: Box<Envelope>,
        /// The `session` of the `SessionOpened` it is drained for; it is dropped if that
        /// session has ended, so a drain meant for an older session never overtakes the new
        /// session's drain.
        session: u64,
    },
    /// Control holds nothing more for `device`, stored or being stored, counting `stores`
    /// [`ControlRequest::Store`]s for it since its last [`ControlRequest::SessionOpened`].
    /// Sent after `SessionOpened` and whenever the device's storage empties while it is
    /// online. The shard delivers live again once `stores` matches what it sent.
    Drained {
        /// The device.
        device: DeviceId,
        /// The `session` of that `SessionOpened`.
        session: u64,
        /// `Store`s for the device that control took since that `SessionOpened`.
        stores: u64,
    },
    /// The answer to an [`Operation`]: sent to its session as a `Response` frame.
    Response {
        /// The operation's origin.
        origin: Origin,
        /// The client's id for the request.
        request_id: u32,
        /// `OK` or the error.
        status: ErrorCode,
        /// The result.
        body: Vec<u8>,
    },
    /// Control could not store the envelope (the recipient's inbox is full, or storage is
    /// unavailable): its sender hears `SendAck(Retry)`.
    NotStored {
        /// Where it came from.
        origin: Origin,
        /// Its id.
        message: MessageId,
    },
    /// The device was revoked: end its live session on this shard, its home, with
    /// `Error(DEVICE_REVOKED)`. What it had in flight is stored. Sent to every shard: each
    /// forgets the cached conversations the device is a member of.
    Revoke {
        /// The device.
        device: DeviceId,
    },
    /// The answer to [`ControlRequest::LookupConversation`].
    Conversation {
        /// The conversation.
        conversation: ConversationId,
        /// Its members and sequence block, or why not.
        answer: ConversationAnswer,
    },
    /// The conversation's membership changed (or it was deleted): forget what is cached of
    /// it and ask again on its next message.
    ConversationChanged {
        /// The conversation.
        conversation: ConversationId,
    },
    /// The answer to [`ControlRequest::LookupAudience`].
    Audience {
        /// The device.
        device: DeviceId,
        /// Its audience, or why not.
        answer: AudienceAnswer,
    },
    /// These devices' presence audiences changed (a friendship began or ended, a device was
    /// added or revoked): forget what is cached of them and ask again on their next update.
    AudienceChanged {
        /// The devices.
        devices: Vec<DeviceId>,
    },
}

/// Counters a shard publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted.
    pub conns_accepted: u64,
    /// Connections refused at the limit.
    pub conns_refused: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshake packets refused.
    pub handshakes_failed: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Envelopes delivered to a local session.
    pub delivered_local: u64,
    /// Envelopes sent to another shard.
    pub routed_remote: u64,
    /// Envelopes sent to control for storage.
    pub stored: u64,
    /// Recipients disconnected for being too slow.
    pub slow_consumers: u64,
    /// Envelopes refused for lack of link credit (the sender got `SendAck(Retry)`).
    pub refused: u64,
    /// Bytes received from connections.
    pub bytes_in: u64,
    /// Bytes written to connections.
    pub bytes_out: u64,
    /// Connections closed for breaking the protocol or failing decryption.
    pub closed_protocol: u64,
    /// Connections closed by the idle or handshake timeout.
    pub closed_timeout: u64,
    /// Conversation messages fanned out (counted once, on the conversation's home shard).
    pub conversation_sends: u64,
    /// Copies of conversation messages made for member devices.
    pub conversation_copies: u64,
    /// Conversation messages and signals refused: not a member, unknown conversation, or no
    /// right to send.
    pub conversation_refused: u64,
    /// Membership lookups sent to control.
    pub conversation_lookups: u64,
    /// Typing indicators and receipts forwarded to a member device's session.
    pub signals_forwarded: u64,
    /// Typing indicators and receipts dropped (a full queue, a lookup limit, no member).
    pub signals_dropped: u64,
    /// `PresenceSet` frames received.
    pub presence_in: u64,
    /// `Presence` frames written to sessions.
    pub presence_out: u64,
    /// Presence updates dropped (a full session queue or shard link, a lookup limit, an
    /// audience control could not tell).
    pub presence_dropped: u64,
    /// Audience lookups sent to control.
    pub audience_lookups: u64,
}

/// A device's live session on its home shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Online {
    /// The session's connection.
    pub(crate) conn: ConnId,
    /// Control may hold stored envelopes for it: new ones are stored behind them, not
    /// delivered past them.
    pub(crate) backlog: bool,
    /// `Store`s sent for the device since its session opened.
    pub(crate) stores: u64,
    /// Which session this is (never 0), so a refused `Store` is uncounted only from the
    /// session that counted it.
    pub(crate) epoch: u64,
    /// The device set a presence other than `Offline`: its audience hears `Offline` when the
    /// session ends.
    pub(crate) announced: bool,
}

/// One shard. See the crate documentation for how to drive it.
pub struct Shard<R: Rng> {
    config: ShardConfig,
    responder: Responder,
    rng: R,
    conns: conn::Slab,
    /// Devices homed here with a live session.
    online: BTreeMap<DeviceId, Online>,
    events: VecDeque<ShardEvent>,
    stats: ShardStats,
    /// Reused buffer for handshake replies.
    scratch: Vec<u8>,
    /// Spent envelope boxes (with their bodies' capacity) for the next copies, so steady
    /// relaying allocates nothing. Boxed on purpose: the boxes themselves travel between
    /// shards, and reusing them is the point.
    #[allow(clippy::vec_box)]
    spare_envelopes: Vec<Box<Envelope>>,
    /// Connections with output queued since the IO layer last asked.
    dirty: Vec<ConnId>,
    /// Live connections per source (see [`ShardConfig::conns_per_source_max`]).
    sources: BTreeMap<core::net::IpAddr, u32>,
    /// A reading of the wall clock: (monotonic, Unix ms), for timestamps sent to clients.
    wall_clock: (Instant, u64),
    /// Sessions opened so far (the last [`Online::epoch`]).
    epochs: u64,
    /// Handshake and idle deadlines.
    timers: timers::Timers,
    /// Conversations homed here: cached membership, lookups, fan-outs.
    conversations: conversation::Table,
    /// Presence audiences of devices homed here.
    presence: presence::Table,
}

impl<R: Rng> core::fmt::Debug for Shard<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shard")
            .field("shard", &self.config.shard)
            .field("conns", &self.conns.len())
            .field("online", &self.online.len())
            .finish_non_exhaustive()
    }
}

impl<R: Rng> Shard<R> {
    /// A shard with the server's static key.
    pub fn new(now: Instant, config: ShardConfig, key: StaticKeypair, mut rng: R) -> Self {
        let responder = Responder::new(now, config.responder, key, &mut rng);
        Self {
            config,
            responder,
            rng,
            conns: conn::Slab::new(config.conns_max),
            online: BTreeMap::new(),
            events: VecDeque::new(),
            stats: ShardStats::default(),
            scratch: vec![0u8; 2048],
            spare_envelopes: Vec::new(),
            dirty: Vec::new(),
            sources: BTreeMap::new(),
            wall_clock: (now, 0),
            epochs: 0,
            timers: timers::Timers::default(),
            conversations: conversation::Table::default(),
            presence: presence::Table::default(),
        }
    }

    /// Tells the shard the wall-clock time (ms since the Unix epoch) at `now`; the IO layer
    /// calls this at start and now and then, since the shard reads no clock.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = (now, unix_ms);
    }

    /// Wall-clock milliseconds at `now`, from the last reading.
    pub(crate) fn unix_ms(&self, now: Instant) -> u64 {
        let (then, unix_ms) = self.wall_clock;
        let elapsed = now.saturating_duration_since(then).as_millis();
        unix_ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// Live connections.
    pub fn conns_len(&self) -> usize {
        self.conns.len()
    }

    /// Live sessions (devices online on this shard).
    pub fn sessions_len(&self) -> usize {
        self.online.len()
    }

    /// Whether `device` has a live session on this shard.
    pub fn is_online(&self, device: DeviceId) -> bool {
        self.online.contains_key(&device)
    }

    /// The responder, for key rotation and load control.
    pub fn responder_mut(&mut self) -> &mut Responder {
        &mut self.responder
    }

    /// A new TCP connection from `peer`. `None`: refused at the limit (close it at once).
    pub fn handle_connect(&mut self, now: Instant, peer: SocketAddr) -> Option<ConnId> {
        let source = source_key(peer);
        let from_source = self.sources.get(&source).copied().unwrap_or(0);
        let id = if from_source < self.config.conns_per_source_max {
            self.conns.insert(Conn::new(now, peer))
        } else {
            None
        };
        match id {
            Some(id) => {
                self.timers
                    .schedule(id, now.saturating_add(dp_core::limits::HANDSHAKE_TIMEOUT));
                self.stats.conns_accepted += 1;
                *self.sources.entry(source).or_insert(0) += 1;
            }
            None => self.stats.conns_refused += 1,
        }
        id
    }

    /// A connection from `peer` left this shard.
    fn source_left(&mut self, peer: SocketAddr) {
        let source = source_key(peer);
        if let Some(count) = self.sources.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.sources.remove(&source);
            }
        }
    }

    /// Bytes read from a connection.
    pub fn handle_received(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.last_rx = now;
        self.stats.bytes_in += bytes.len() as u64;
        // A read may hold many records: take what fits, process it, and go on, so only a
        // single record larger than the bound is refused.
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            let room = conn::INBOUND_BYTES_MAX.saturating_sub(conn.inbound.len());
            if room == 0 {
                self.close(id, CloseReason::Protocol(ErrorCode::FRAME_TOO_LARGE));
                return;
            }
            let (now_in, later) = rest.split_at(room.min(rest.len()));
            conn.inbound.extend_from_slice(now_in);
            rest = later;
            self.process_inbound(now, id);
        }
    }

    fn process_inbound(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            if conn.closing || conn.handing_off {
                return;
            }
            match &mut conn.state {
                ConnState::Handshaking => {
                    let Some(packet) = conn::take_handshake_packet(&mut conn.inbound) else {
                        return;
                    };
                    if !self.handle_handshake_packet(now, id, &packet) {
                        return;
                    }
                }
                ConnState::Established(_) => {
                    self.process_records(now, id);
                    return;
                }
            }
        }
    }

    /// Returns whether to go on reading the connection.
    fn handle_handshake_packet(&mut self, now: Instant, id: ConnId, packet: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let peer = conn.peer;
        let result =
            self.responder
                .handle_packet(now, peer, packet, &mut self.scratch, &mut self.rng);
        match result {
            Ok(ResponderEvent::CookieSent { len } | ResponderEvent::Continue { len }) => {
                conn.queue_handshake(&self.scratch[..len]);
                Self::mark_dirty(&mut self.dirty, conn, id);
                true
            }
            Ok(ResponderEvent::Established { reply_len, session }) => {
                if let Some(len) = reply_len {
                    conn.queue_handshake(&self.scratch[..len]);
                    Self::mark_dirty(&mut self.dirty, conn, id);
                }
                self.stats.handshakes += 1;
                let device = session.peer.device();
                conn.state = ConnState::Established(Box::new(Established::new(now, &session)));
                let home = home_shard(device, self.config.shard_count, self.config.routing_key);
                if home != self.config.shard {
                    // From now on bytes are only buffered: they belong to the home shard.
                    conn.handing_off = true;
                    self.events
                        .push_back(ShardEvent::HandOff { conn: id, to: home });
                    return false;
                }
                true
            }
            Err(error) => {
                self.stats.handshakes_failed += 1;
                let _: HandshakeError = error;
                self.close(id, CloseReason::Crypto);
                false
            }
        }
    }

    /// The device said Hello: its session is ready for deliveries (so `Welcome` is always the
    /// first frame a client reads). A newer session of the same device replaces the older one.
    pub(crate) fn session_opened(&mut self, id: ConnId, device: DeviceId) {
        if let Some(online) = self.online.get_mut(&device)
            && online.conn != id
        {
            let old = online.conn;
            // Replaced, not gone: the audience hears no `Offline`.
            online.announced = false;
            // Its envelopes in flight are stored (uncounted) and control hears it went away
            // before it hears of the new session.
            self.close(old, CloseReason::Protocol(ErrorCode::CONFLICT));
        }
        self.epochs += 1;
        let online = Online {
            conn: id,
            backlog: true,
            stores: 0,
            epoch: self.epochs,
            announced: false,
        };
        self.online.insert(device, online);
        self.events
            .push_back(ShardEvent::ToControl(ControlRequest::SessionOpened {
                device,
                session: self.epochs,
            }));
    }

    fn process_records(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            if conn.closing {
                return;
            }
            let ConnState::Established(session) = &mut conn.state else {
                return;
            };
            let opened = match session
                .stream
                .open_record(&mut conn.inbound[conn.inbound_at..])
            {
                Ok(Some(opened)) => opened,
                Ok(None) => {
                    conn.compact_inbound();
                    return;
                }
                Err(_) => {
                    self.close(id, CloseReason::Crypto);
                    return;
                }
            };
            let start = conn.inbound_at + opened.plaintext.start;
            let end = conn.inbound_at + opened.plaintext.end;
            conn.inbound_at += opened.consumed;
            // Move the plaintext out of the connection so frames can be handled while the
            // shard (and other connections) are mutated. The buffer is reused, not reallocated.
            let mut plaintext = core::mem::take(&mut conn.record_scratch);
            plaintext.clear();
            plaintext.extend_from_slice(&conn.inbound[start..end]);
            self.handle_plaintext(now, id, &plaintext);
            if let Some(conn) = self.conns.get_mut(id) {
                conn.record_scratch = plaintext;
            }
        }
    }

    fn handle_plaintext(&mut self, now: Instant, id: ConnId, plaintext: &[u8]) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Established(session) = &mut conn.state else {
            return;
        };
        let mut assembler = core::mem::replace(&mut session.assembler, FrameAssembler::new(0));
        {
            let mut frames = assembler.push(plaintext);
            while let Some(frame) = frames.next_frame() {
                if self.conns.get_mut(id).is_none_or(|conn| conn.closing) {
                    break;
                }
                self.stats.frames_in += 1;
                match frame {
                    Ok(frame) => route::handle_frame(self, now, id, frame),
                    Err(error) if error.is_fatal() => {
                        self.send_error(id, error.error_code(), 0);
                        self.close(id, CloseReason::Protocol(error.error_code()));
                    }
                    Err(error) => self.send_error(id, error.error_code(), 0),
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(id)
            && let ConnState::Established(session) = &mut conn.state
        {
            session.assembler = assembler;
        }
    }

    fn send_error(&mut self, id: ConnId, code: ErrorCode, reference: u64) {
        self.send_error_about(id, code, 0, reference);
    }

    fn send_error_about(&mut self, id: ConnId, code: ErrorCode, frame_type: u8, reference: u64) {
        let frame = dp_proto::Frame::Error(dp_proto::ErrorFrame {
            code,
            frame_type,
            reference,
            reason: "",
        });
        self.send_frame(id, &frame);
    }

    /// Queues `frame` on connection `id`; returns false (and disconnects the recipient) when
    /// its outbound bound is exceeded.
    fn send_frame(&mut self, id: ConnId, frame: &dp_proto::Frame<'_>) -> bool {
        let bound = self.config.outbound_bytes_max;
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.closing {
            return false;
        }
        if conn.pending_bytes() + frame.encoded_len() > bound {
            self.stats.slow_consumers += 1;
            self.close(id, CloseReason::SlowConsumer);
            return false;
        }
        let ok = conn.queue_frame(frame);
        Self::mark_dirty(&mut self.dirty, conn, id);
        if ok {
            self.stats.frames_out += 1;
        }
        ok
    }

    /// Queues a best-effort `frame` (typing, receipts, presence) on connection `id` if it
    /// fits under the outbound bound; returns false, and leaves the connection alone, if it
    /// does not. Unlike [`Shard::send_frame`], a full session drops it rather than being cut
    /// off for it.
    pub(crate) fn send_best_effort(&mut self, id: ConnId, frame: &dp_proto::Frame<'_>) -> bool {
        let bound = self.config.outbound_bytes_max;
        let room = self
            .conns
            .get_mut(id)
            .is_some_and(|c| !c.closing && c.pending_bytes() + frame.encoded_len() <= bound);
        room && self.send_frame(id, frame)
    }

    /// Bytes to write to connection `id`: sealed records (and handshake replies) in order.
    /// After writing some, call [`Shard::handle_written`].
    pub fn poll_transmit(&mut self, now: Instant, id: ConnId) -> &[u8] {
        match self.conns.get_mut(id) {
            Some(conn) => conn.seal_pending(now),
            None => &[],
        }
    }

    /// `n` bytes of [`Shard::poll_transmit`] were written.
    pub fn handle_written(&mut self, id: ConnId, n: usize) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.consume_outbound(n);
            self.stats.bytes_out += n as u64;
        }
    }

    /// The connection is gone (closed by the peer, an IO error, or after `Close`).
    pub fn handle_closed(&mut self, id: ConnId) {
        if let Some(mut conn) = self.conns.remove(id) {
            self.source_left(conn.peer);
            let inflight = core::mem::take(&mut conn.inflight);
            route::store_inflight(self, inflight.into_iter());
            if let ConnState::Established(session) = conn.state {
                self.go_offline(id, session.device, conn.last_rx);
            }
        }
    }

    /// If `id` is `device`'s live session, the device is offline now: tell control.
    /// `last_rx` is when it was last heard from.
    fn go_offline(&mut self, id: ConnId, device: DeviceId, last_rx: Instant) {
        if self
            .online
            .get(&device)
            .is_some_and(|online| online.conn == id)
        {
            if self.online.remove(&device).is_some_and(|o| o.announced) {
                presence::went_offline(self, device, self.unix_ms(last_rx));
            }
            self.events
                .push_back(ShardEvent::ToControl(ControlRequest::SessionClosed {
                    device,
                }));
        }
    }

    fn close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.closing
        {
            conn.closing = true;
            match reason {
                CloseReason::Crypto | CloseReason::Protocol(_) => self.stats.closed_protocol += 1,
                CloseReason::Idle | CloseReason::HandshakeTimeout => {
                    self.stats.closed_timeout += 1;
                }
                _ => {}
            }
            let device = match &conn.state {
                ConnState::Established(session) => Some(session.device),
                ConnState::Handshaking => None,
            };
            let last_rx = conn.last_rx;
            let inflight = core::mem::take(&mut conn.inflight);
            if let Some(device) = device {
                self.go_offline(id, device, last_rx);
            }
            // Store what it held before anything newer (order per sender is kept).
            self.events
                .push_back(ShardEvent::Close { conn: id, reason });
            route::store_inflight(self, inflight.into_iter());
        }
    }

    /// Starts a graceful shutdown: every session that said Hello is told `GoAway(SHUTTING_DOWN)`
    /// (reconnect after `reconnect_after_ms`), and every connection is closed once its output
    /// is written.
    pub fn handle_shutdown(&mut self, reconnect_after_ms: u32) {
        let ids: Vec<(ConnId, bool)> = self
            .conns
            .iter()
            .map(|(id, conn)| {
                let ready = matches!(&conn.state, ConnState::Established(s) if s.hello_done);
                (id, ready)
            })
            .collect();
        for (id, ready) in ids {
            if ready {
                let frame = dp_proto::Frame::GoAway(dp_proto::GoAway {
                    code: ErrorCode::SHUTTING_DOWN,
                    reconnect_after_ms,
                    reason: "",
                });
                self.send_frame(id, &frame);
            }
            self.close(id, CloseReason::ShuttingDown);
        }
    }

    /// Takes a connection that [`ShardEvent::HandOff`] named, for [`Shard::adopt`] on its home
    /// shard.
    pub fn take_handoff(&mut self, id: ConnId) -> Option<Box<HandOff>> {
        let conn = self.conns.remove(id)?;
        self.source_left(conn.peer);
        conn.into_handoff()
    }

    /// Adopts a connection handed over by another shard; `None` if this shard is full.
    pub fn adopt(&mut self, now: Instant, handoff: HandOff) -> Option<ConnId> {
        let conn = Conn::from_handoff(now, handoff);
        let peer = conn.peer;
        let id = self.conns.insert(conn)?;
        self.timers
            .schedule(id, now.saturating_add(self.config.idle_timeout));
        *self.sources.entry(source_key(peer)).or_insert(0) += 1;
        if let Some(conn) = self.conns.get_mut(id) {
            Self::mark_dirty(&mut self.dirty, conn, id);
        }
        self.process_records(now, id);
        Some(id)
    }

    /// A message from another shard.
    pub fn handle_shard_message(&mut self, now: Instant, message: ShardMessage) {
        match message {
            ShardMessage::Envelope(envelope) => route::from_shard(self, now, envelope),
            ShardMessage::Outcome {
                origin,
                message,
                status,
                seq,
                envelope,
            } => route::acknowledge_seq(self, origin, message, status, seq, envelope),
            ShardMessage::Rejected {
                origin,
                conversation,
                code,
            } => conversation::rejected(self, origin, conversation, code),
            ShardMessage::Spare(envelope) => route::recycle(self, envelope),
            ShardMessage::Presence(batch) => presence::from_shard(self, &batch),
        }
    }

    /// An event from control.
    pub fn handle_control(&mut self, now: Instant, event: ControlEvent) {
        match event {
            ControlEvent::Conversation {
                conversation,
                answer,
            } => conversation::answered(self, now, conversation, answer),
            ControlEvent::ConversationChanged { conversation } => {
                conversation::changed(self, conversation);
            }
            ControlEvent::Audience { device, answer } => {
                presence::answered(self, now, device, answer);
            }
            ControlEvent::AudienceChanged { devices } => presence::changed(self, &devices),
            ControlEvent::Stored { origin, message } => {
                route::acknowledge(self, origin, message, SendStatus::Stored, None);
            }
            ControlEvent::Deliver { envelope, session } => {
                if let Some(online) = self.online.get(&envelope.recipient)
                    && online.epoch == session
                {
                    // Already stored: if this fails the envelope simply stays in storage.
                    let _ = route::deliver_boxed(self, online.conn, envelope, true);
                }
            }
            ControlEvent::Response {
                origin,
                request_id,
                status,
                body,
            } => route::respond(self, origin, request_id, status, &body),
            ControlEvent::NotStored { origin, message } => {
                self.stats.refused += 1;
                route::acknowledge(self, origin, message, SendStatus::Retry, None);
            }
            ControlEvent::Revoke { device } => {
                conversation::device_revoked(self, device);
                presence::device_revoked(self, device);
                if let Some(online) = self.online.get(&device) {
                    let conn = online.conn;
                    self.send_error(conn, ErrorCode::DEVICE_REVOKED, 0);
                    self.close(conn, CloseReason::Protocol(ErrorCode::DEVICE_REVOKED));
                }
            }
            ControlEvent::Drained {
                device,
                session,
                stores,
            } => {
                if let Some(online) = self.online.get_mut(&device)
                    && online.epoch == session
                    && online.stores == stores
                {
                    online.backlog = false;
                }
            }
        }
    }

    /// The IO layer had no link credit for this envelope (from a
    /// [`ShardMessage::Envelope`] or a [`ControlRequest::Store`]), so it was not sent: its
    /// sender hears `SendAck(Retry)` and sends it again later.
    pub fn handle_refused(&mut self, envelope: Box<Envelope>) {
        route::refuse(self, &envelope);
        route::recycle(self, envelope);
    }

    /// The IO layer had no room on the shard link for this presence batch: it is dropped and
    /// counted.
    pub fn handle_presence_refused(&mut self, batch: Box<PresenceBatch>) {
        self.stats.presence_dropped += 1;
        drop(batch);
    }

    /// Devices whose presence audience this shard has cached.
    pub fn audiences_cached(&self) -> usize {
        self.presence.cached_len()
    }

    /// Conversations whose membership this shard has cached.
    pub fn conversations_cached(&self) -> usize {
        self.conversations.cached_len()
    }

    /// Expires idle connections and handshakes, rotates the responder's secrets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.responder.handle_timeout(now, &mut self.rng);
        let idle = self.config.idle_timeout;
        while let Some(ids) = self.timers.pop_due(now) {
            for &id in &ids {
                let Some(conn) = self.conns.get_mut(id) else {
                    continue;
                };
                match conn.expired(now, idle) {
                    Some(reason) => self.close(id, reason),
                    None => {
                        let deadline = conn.deadline(idle);
                        self.timers.schedule(id, deadline);
                    }
                }
            }
            self.timers.recycle(ids);
        }
    }

    /// The next time [`Shard::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        self.responder.poll_timeout().min(self.timers.next())
    }

    fn mark_dirty(dirty: &mut Vec<ConnId>, conn: &mut Conn, id: ConnId) {
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(id);
        }
    }

    /// The next connection with bytes to write since it was last returned here: write its
    /// [`Shard::poll_transmit`]. Each connection appears at most once until drained.
    pub fn poll_dirty(&mut self) -> Option<ConnId> {
        while let Some(id) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.dirty = false;
                return Some(id);
            }
        }
        None
    }

    /// The next event for the IO layer, peers or control.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }
}
