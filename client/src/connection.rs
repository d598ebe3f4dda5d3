//! The client side of one CCP-2 session over a byte stream, as a sans-IO state machine.

use crate::dedup::Dedup;
use core::time::Duration;
use dp_core::limits::{
    ACKS_PER_FRAME_MAX, FRAME_LEN_MAX, RECEIPTS_PER_FRAME_MAX, RECORD_PLAINTEXT_LEN_MAX,
};
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_noise::{
    HandshakeError, Initiator, InitiatorConfig, InitiatorEvent, OpenError, SealError,
    StaticKeypair, StreamSession, Suite,
};
use dp_proto::{
    Capabilities, DecodeError, DeliveryAck, EncodeError, ErrorCode, ErrorFrame, Frame,
    FrameAssembler, Hello, MessageIds, PROTOCOL_VERSION, Ping, Pong, PresenceSet, PresenceState,
    Receipt, ReceiptKind, Recipient, SendFrame, SendStatus, Typing, TypingState, Versions,
};
use std::collections::{BTreeSet, VecDeque};

/// The most bytes a connection keeps queued for the server (frames not yet written out).
/// Past it, [`Connection::send`] refuses with [`ClientError::OutboundFull`] until the driver
/// has written more.
pub const OUTBOUND_BYTES_MAX: usize = 8 << 20;
/// The most received bytes held unprocessed: one whole record plus a handshake packet.
pub const INBOUND_BYTES_MAX: usize = 2 + u16::MAX as usize + HANDSHAKE_PACKET_LEN_MAX;
/// The largest handshake packet on a stream (a hybrid Response is about 1.3 KB).
pub const HANDSHAKE_PACKET_LEN_MAX: usize = 2048;
/// Written bytes at the front of the outbound buffer are dropped once there are at least this
/// many and they are at least half of it.
const OUTBOUND_COMPACT_AT: usize = 64 * 1024;
/// The default largest plaintext per record this client seals.
///
/// PROTOCOL.md allows up to [`RECORD_PLAINTEXT_LEN_MAX`] (65 519 bytes), but today's server
/// (`dp-shard` as of this commit) refuses a read that would leave more than one record plus
/// 2 KiB unprocessed, *before* it processes the read: with its 64 KiB reads, a partial record
/// of more than 2 049 bytes left from the previous read gets the connection closed. Records of
/// at most 2 032 plaintext bytes (2 050 on the wire) never leave such a partial record. Raise it
/// with [`ConnectionConfig::record_len_max`] once the server checks its bound after processing.
pub const RECORD_LEN_MAX_DEFAULT: usize = 2_032;
/// The default window of delivered message ids remembered for deduplication.
pub const DEDUP_WINDOW_DEFAULT: usize = 65_536;
/// The most deliveries reported to the application and not yet acknowledged by it that a
/// connection tracks under [`AckMode::Application`] (to drop the server's repeats of them on
/// the same connection). Past it a delivery is still reported but not tracked: a repeat of it
/// on the same connection is reported again.
pub const APP_UNACKED_MAX: usize = 65_536;

/// Who acknowledges deliveries to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckMode {
    /// The connection sends `DeliveryAck` as soon as it has decoded a `Deliver` (the
    /// default). A crash between that and the application storing the message loses it.
    #[default]
    Automatic,
    /// The connection acknowledges a delivery only when the application calls
    /// [`Connection::ack`] (after storing it). Until then the server keeps it and delivers it
    /// again on the next connection, where it is reported again.
    Application,
}

const _: () = {
    assert!(INBOUND_BYTES_MAX > RECORD_PLAINTEXT_LEN_MAX);
    assert!(OUTBOUND_BYTES_MAX >= FRAME_LEN_MAX);
};

/// What a connection needs to start.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// The handshake suite: XK or IK, ChaChaPoly or AESGCM, classic or hybrid.
    pub suite: Suite,
    /// This device's static key pair (the device *is* this key).
    pub key: StaticKeypair,
    /// The server's static public key, from the invite.
    pub server: [u8; 32],
    /// Wall-clock milliseconds since the Unix epoch, sent in the initiation (servers refuse
    /// replayed initiations by it).
    pub timestamp_ms: u64,
    /// Capabilities offered in `Hello`.
    pub capabilities: Capabilities,
    /// How many delivered message ids to remember for deduplication.
    pub dedup_window: usize,
    /// Send a `Ping` after this long without one, to keep the server's idle timer from
    /// firing; `None`: never.
    pub keepalive: Option<Duration>,
    /// The largest plaintext per sealed record, clamped to `1..=RECORD_PLAINTEXT_LEN_MAX`
    /// (see [`RECORD_LEN_MAX_DEFAULT`]).
    pub record_len_max: usize,
    /// Keep every sent body until the server takes responsibility for it, and send it again
    /// (same id, after a growing pause) when the server answers `SendAck(Retry)`; the `Retry`
    /// itself is then not reported. Off: bodies are not kept and `Retry` is reported as is
    /// (a load generator that counts what arrives does not need the copies).
    pub resend_refused: bool,
    /// Who acknowledges deliveries: the connection on receipt (default) or the application.
    pub ack: AckMode,
}

impl ConnectionConfig {
    /// Defaults: XK, ChaChaPoly, classic; no capabilities; a dedup window of
    /// [`DEDUP_WINDOW_DEFAULT`]; a keepalive every 30 s; records of at most
    /// [`RECORD_LEN_MAX_DEFAULT`] plaintext bytes.
    pub fn new(key: StaticKeypair, server: [u8; 32]) -> Self {
        Self {
            suite: Suite::new(dp_noise::Pattern::Xk, dp_noise::Cipher::ChaChaPoly, false),
            key,
            server,
            timestamp_ms: 0,
            capabilities: Capabilities::EMPTY,
            dedup_window: DEDUP_WINDOW_DEFAULT,
            keepalive: Some(Duration::from_secs(30)),
            record_len_max: RECORD_LEN_MAX_DEFAULT,
            resend_refused: true,
            ack: AckMode::Automatic,
        }
    }
}

/// The most body bytes kept for sends the server has not yet taken; past it `send` refuses
/// with [`ClientError::OutboundFull`].
pub const UNACKED_BYTES_MAX: usize = 8 << 20;
/// The first pause before a refused send goes again; it doubles per refusal up to
/// [`RESEND_PAUSE_MAX`], plus up to half again of random jitter.
const RESEND_PAUSE_MIN: Duration = Duration::from_millis(10);
const RESEND_PAUSE_MAX: Duration = Duration::from_secs(1);

/// A sent envelope the server has not yet taken responsibility for.
struct Unacked {
    recipient: Recipient,
    body: Vec<u8>,
    refusals: u32,
    /// When to send it again, after a `Retry`.
    resend_at: Option<Instant>,
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The Noise handshake is in progress.
    Handshaking,
    /// The handshake is done and `Hello` is queued or sent; waiting for `Welcome`.
    AwaitingWelcome,
    /// `Welcome` arrived: the session is routable.
    Ready,
    /// Over: nothing more is sent or accepted.
    Closed,
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server said `GoAway` with this code.
    GoAway(ErrorCode),
    /// A protocol error, ours or the server's (it sent a fatal `Error`, or broke framing).
    Protocol(ErrorCode),
    /// A handshake packet or record failed to authenticate or decode.
    Crypto,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The application closed it.
    Local,
}

/// An envelope delivered to this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The sender's message id.
    pub message: MessageId,
    /// The sending device.
    pub sender: DeviceId,
    /// The conversation, 0 for a direct device message.
    pub conversation: ConversationId,
    /// The per-conversation sequence number.
    pub seq: u64,
    /// When the server accepted it, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// The opaque body.
    pub body: Vec<u8>,
}

/// What the connection tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `Welcome` arrived: the session is ready.
    Connected {
        /// This device's id as the server computed it.
        device: DeviceId,
        /// The protocol version in use.
        version: u16,
        /// The effective capabilities.
        capabilities: Capabilities,
        /// The server's clock, ms since the Unix epoch.
        server_time_ms: u64,
    },
    /// The server's answer to a sent message.
    SendAck {
        /// The message.
        message: MessageId,
        /// Delivered (the recipient acknowledged it) or stored: the server took
        /// responsibility for it. `Retry`: it did not (no room on the message's path); send it
        /// again with the same id after a pause.
        status: SendStatus,
        /// Its per-conversation sequence number, 0 if none.
        seq: u64,
    },
    /// A new message (duplicates are acknowledged but not reported). Under
    /// [`AckMode::Application`] it is acknowledged when the application calls
    /// [`Connection::ack`].
    Delivered(Delivery),
    /// Another device's typing indicator in a conversation this device is in.
    TypingFrom {
        /// The typing device.
        device: DeviceId,
        /// The conversation.
        conversation: ConversationId,
        /// Typing or stopped.
        state: TypingState,
    },
    /// Another device's delivered or read receipt.
    ReceiptFrom {
        /// The device that sent the receipt.
        from: DeviceId,
        /// The conversation the messages belong to.
        conversation: ConversationId,
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages (at most `RECEIPTS_PER_FRAME_MAX`).
        messages: Vec<MessageId>,
    },
    /// A friend's (or this account's other device's) presence.
    Presence {
        /// The device.
        device: DeviceId,
        /// Its presence.
        state: PresenceState,
        /// When it was last seen online, ms since the Unix epoch.
        last_seen_ms: u64,
    },
    /// The answer to [`Connection::request`].
    Response {
        /// The request's id.
        request_id: u32,
        /// `OK`, or why it failed.
        status: ErrorCode,
        /// The result (or, on failure, the server's precise error code as JSON).
        body: Vec<u8>,
    },
    /// The answer to [`Connection::ping`] (keepalive answers are not reported).
    Pong {
        /// The nonce sent.
        nonce: u64,
    },
    /// The server reported an error.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// The type byte of the offending frame, 0 if none.
        frame_type: u8,
    },
    /// The server is going away; reconnect after this long (plus jitter).
    GoAway {
        /// Why.
        code: ErrorCode,
        /// The server's suggested delay before reconnecting.
        reconnect_after_ms: u32,
    },
    /// The connection is over (always the last event).
    Closed(CloseReason),
}

/// Why a call failed. `Copy`, by class: the peer misbehaved (`Handshake`, `Open`, `Decode`),
/// a local limit (`OutboundFull`, `InboundTooLarge`, `Seal`), or the caller (`Closed`,
/// `Encode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// A handshake packet from the server was refused.
    Handshake(HandshakeError),
    /// A record from the server failed to open.
    Open(OpenError),
    /// A record could not be sealed.
    Seal(SealError),
    /// The server broke framing.
    Decode(DecodeError),
    /// A frame could not be encoded (a field over its limit).
    Encode(EncodeError),
    /// The connection is closed.
    Closed,
    /// Too much is queued for the server; write some out first.
    OutboundFull,
    /// The server sent more than one record's worth of bytes that do not form a record.
    InboundTooLarge,
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for ClientError {}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// `Send` frames queued.
    pub sent: u64,
    /// `SendAck`s received.
    pub send_acks: u64,
    /// New messages delivered to the application.
    pub delivered: u64,
    /// Deliveries dropped as duplicates (acknowledged again, or under
    /// [`AckMode::Application`] repeats of one the application has not acknowledged yet).
    pub duplicates: u64,
    /// Deliveries the application acknowledged with [`Connection::ack`].
    pub app_acks: u64,
    /// Sends the server refused with `Retry` (each sent again when `resend_refused`).
    pub refused: u64,
    /// Records opened.
    pub records_in: u64,
    /// Records sealed.
    pub records_out: u64,
}

/// The client side of one session: handshake, `Hello`/`Welcome`, sending with message ids,
/// deliveries with automatic `DeliveryAck` and deduplication, `Ping`/`Pong`, `GoAway`.
///
/// It performs no I/O and reads no clock: bytes and `now` come in, bytes and events go out.
///
/// - Input: [`Connection::handle_input`] (bytes read from the socket),
///   [`Connection::handle_timeout`].
/// - Output, in this order: [`Connection::poll_transmit`] (bytes to write; report what was
///   written with [`Connection::handle_written`]), [`Connection::poll_event`],
///   [`Connection::poll_timeout`].
/// - Commands: [`Connection::send`], [`Connection::ping`], [`Connection::close`].
///
/// Driving rule: after any input or command, write out `poll_transmit` and drain `poll_event`
/// until both are empty, then wait for input no longer than `poll_timeout`. `now` never goes
/// backwards.
pub struct Connection<R: Rng> {
    rng: R,
    state: State,
    suite: Suite,
    device: DeviceId,
    initiator: Option<Initiator>,
    session: Option<StreamSession>,
    assembler: FrameAssembler,
    inbound: Vec<u8>,
    /// Encoded frames not yet sealed (sealed once the session exists).
    plain: Vec<u8>,
    /// Sealed bytes (and handshake packets) not yet written; `outbound_at` bytes are written.
    outbound: Vec<u8>,
    outbound_at: usize,
    events: VecDeque<Event>,
    dedup: Dedup,
    /// Delivered ids (new or duplicate) to acknowledge.
    acks: Vec<MessageId>,
    ack_mode: AckMode,
    /// Under [`AckMode::Application`]: ids reported on this connection and not yet
    /// acknowledged by the application (at most [`APP_UNACKED_MAX`]).
    app_unacked: BTreeSet<MessageId>,
    scratch: Vec<u8>,
    keepalive: Option<Duration>,
    record_len_max: usize,
    next_ping: Instant,
    ping_nonce: u64,
    /// The nonce of the keepalive `Ping` not yet answered; its `Pong` is not reported.
    keepalive_pending: Option<u64>,
    now_last: Instant,
    stats: ConnectionStats,
    resend_refused: bool,
    unacked: std::collections::BTreeMap<MessageId, Unacked>,
    unacked_bytes: usize,
}

impl<R: Rng> core::fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("suite", &self.suite)
            .field("device", &self.device)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<R: Rng> Connection<R> {
    /// Starts a handshake: the initiation is ready in [`Connection::poll_transmit`] and `Hello`
    /// is queued behind it.
    pub fn new(now: Instant, config: ConnectionConfig, mut rng: R) -> Result<Self, ClientError> {
        let device = dp_noise::device_id(config.key.public());
        let suite = config.suite;
        let mut initiator = Initiator::new(
            now,
            InitiatorConfig {
                suite,
                local: config.key,
                remote_static: config.server,
                timestamp_ms: config.timestamp_ms,
            },
        );
        let mut scratch = vec![0u8; HANDSHAKE_PACKET_LEN_MAX];
        let len = initiator
            .write_initiation(now, &mut rng, &mut scratch)
            .map_err(ClientError::Handshake)?;
        let mut conn = Self {
            rng,
            state: State::Handshaking,
            suite,
            device,
            initiator: Some(initiator),
            session: None,
            assembler: FrameAssembler::new(FRAME_LEN_MAX),
            inbound: Vec::new(),
            plain: Vec::new(),
            outbound: Vec::new(),
            outbound_at: 0,
            events: VecDeque::new(),
            dedup: Dedup::new(config.dedup_window),
            acks: Vec::new(),
            ack_mode: config.ack,
            app_unacked: BTreeSet::new(),
            scratch,
            keepalive: config.keepalive,
            record_len_max: config.record_len_max.clamp(1, RECORD_PLAINTEXT_LEN_MAX),
            next_ping: Instant(u64::MAX),
            ping_nonce: 0,
            keepalive_pending: None,
            now_last: now,
            stats: ConnectionStats::default(),
            resend_refused: config.resend_refused,
            unacked: std::collections::BTreeMap::new(),
            unacked_bytes: 0,
        };
        conn.push_handshake_packet(len);
        let frame_len_max = u32::try_from(FRAME_LEN_MAX).unwrap_or(u32::MAX);
        let versions = Versions::new(&[PROTOCOL_VERSION]).ok_or(ClientError::Closed)?;
        conn.queue_frame(&Frame::Hello(Hello {
            versions,
            capabilities: config.capabilities,
            frame_len_max,
        }))?;
        Ok(conn)
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// This device's id (from its static key).
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The suite in use.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Counters.
    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// A fresh random message id, from the connection's generator.
    pub fn new_message_id(&mut self) -> MessageId {
        let mut id = [0u8; 16];
        self.rng.public_fill(&mut id);
        MessageId(id)
    }

    /// Takes the deduplication window (to carry it over to the next connection of this device
    /// with [`Connection::set_dedup`]); leaves an empty one of the same size.
    pub fn take_dedup(&mut self) -> Dedup {
        let capacity = self.dedup.capacity();
        core::mem::replace(&mut self.dedup, Dedup::new(capacity))
    }

    /// Uses `dedup` (from an earlier connection of this device) from now on.
    pub fn set_dedup(&mut self, dedup: Dedup) {
        self.dedup = dedup;
    }

    /// Bytes queued for the server and not yet written (sealed or not).
    pub fn outbound_len(&self) -> usize {
        self.plain.len() + self.outbound.len() - self.outbound_at
    }

    fn advance(&mut self, now: Instant) {
        debug_assert!(now >= self.now_last, "time went backwards");
        self.now_last = self.now_last.max(now);
    }

    fn push_handshake_packet(&mut self, len: usize) {
        // Handshake packets are at most HANDSHAKE_PACKET_LEN_MAX, so the length fits a u16.
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.outbound.extend_from_slice(&len16.to_be_bytes());
        self.outbound.extend_from_slice(&self.scratch[..len]);
    }

    fn queue_frame(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        frame
            .encode_append(&mut self.plain)
            .map(|_| ())
            .map_err(ClientError::Encode)
    }

    /// Queues an envelope for `recipient` with id `message`. The server answers with
    /// [`Event::SendAck`] once the message is delivered or durably stored.
    pub fn send(
        &mut self,
        now: Instant,
        message: MessageId,
        recipient: Recipient,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        if self.outbound_len() + body.len() > OUTBOUND_BYTES_MAX
            || (self.resend_refused && self.unacked_bytes + body.len() > UNACKED_BYTES_MAX)
        {
            return Err(ClientError::OutboundFull);
        }
        self.queue_frame(&Frame::Send(SendFrame {
            message,
            recipient,
            body,
        }))?;
        self.stats.sent += 1;
        if self.resend_refused {
            let unacked = Unacked {
                recipient,
                body: body.to_vec(),
                refusals: 0,
                resend_at: None,
            };
            if let Some(old) = self.unacked.insert(message, unacked) {
                self.unacked_bytes -= old.body.len();
            }
            self.unacked_bytes += body.len();
        }
        Ok(())
    }

    /// A `SendAck`: forgets the kept body, or schedules a resend after `Retry`. Returns
    /// whether to report it.
    fn handle_send_ack(&mut self, message: MessageId, status: SendStatus) -> bool {
        if status == SendStatus::Retry {
            self.stats.refused += 1;
            let now = self.now_last;
            let Some(unacked) = self.unacked.get_mut(&message) else {
                return true;
            };
            unacked.refusals = unacked.refusals.saturating_add(1);
            let doubled = RESEND_PAUSE_MIN.saturating_mul(1 << (unacked.refusals - 1).min(10));
            let pause = doubled.min(RESEND_PAUSE_MAX);
            let mut jitter = [0u8; 4];
            self.rng.public_fill(&mut jitter);
            let half = u64::try_from(pause.as_nanos() / 2)
                .unwrap_or(u64::MAX)
                .max(1);
            let jitter = Duration::from_nanos(u64::from(u32::from_le_bytes(jitter)) % half);
            unacked.resend_at = Some(now.saturating_add(pause + jitter));
            return false;
        }
        if let Some(old) = self.unacked.remove(&message) {
            self.unacked_bytes -= old.body.len();
        }
        true
    }

    /// Sends again, with their ids, the refused envelopes whose pause is over.
    fn resend_due(&mut self, now: Instant) {
        let due: Vec<MessageId> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.resend_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for message in due {
            let Some(unacked) = self.unacked.get_mut(&message) else {
                continue;
            };
            unacked.resend_at = None;
            let (recipient, body) = (unacked.recipient, core::mem::take(&mut unacked.body));
            let _ = self.queue_frame(&Frame::Send(SendFrame {
                message,
                recipient,
                body: &body,
            }));
            if let Some(unacked) = self.unacked.get_mut(&message) {
                unacked.body = body;
            }
        }
    }

    /// Queues a `Ping` with `nonce`; the server's `Pong` comes back as [`Event::Pong`].
    pub fn ping(&mut self, now: Instant, nonce: u64) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.queue_frame(&Frame::Ping(Ping { nonce }))
    }

    /// Queues a control operation (`Request`); the server answers with [`Event::Response`]
    /// carrying the same `request_id`.
    pub fn request(
        &mut self,
        now: Instant,
        request_id: u32,
        op: u16,
        body: &[u8],
    ) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.queue_frame(&Frame::Request(dp_proto::Request {
            request_id,
            op,
            body,
        }))
    }

    /// Acknowledges a delivery the application has stored (under [`AckMode::Application`];
    /// under [`AckMode::Automatic`] deliveries are acknowledged already and this only
    /// remembers the id). The `DeliveryAck` goes out with the next
    /// [`Connection::poll_transmit`], batched with the others acknowledged since. A message
    /// reported on an earlier connection of this device may be acknowledged here too (carry
    /// the dedup window over with [`Connection::set_dedup`]).
    pub fn ack(&mut self, now: Instant, message: MessageId) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        if self.ack_mode == AckMode::Automatic {
            self.dedup.insert(message);
            return Ok(());
        }
        self.app_unacked.remove(&message);
        if self.dedup.insert(message) {
            self.stats.app_acks += 1;
            self.acks.push(message);
        }
        Ok(())
    }

    /// Deliveries reported under [`AckMode::Application`] and not yet acknowledged, on this
    /// connection.
    pub fn app_unacked(&self) -> usize {
        self.app_unacked.len()
    }

    /// Queues a typing indicator for `conversation`; the server forwards it to the
    /// conversation's other online members as [`Event::TypingFrom`].
    pub fn typing(
        &mut self,
        now: Instant,
        conversation: ConversationId,
        state: TypingState,
    ) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.queue_frame(&Frame::Typing(Typing {
            conversation,
            state,
        }))
    }

    /// Queues delivered or read receipts for `messages` of `conversation`, in frames of at
    /// most `RECEIPTS_PER_FRAME_MAX` ids; the server forwards them to the conversation's
    /// other online members as [`Event::ReceiptFrom`]. An empty list sends nothing.
    pub fn receipt(
        &mut self,
        now: Instant,
        conversation: ConversationId,
        kind: ReceiptKind,
        messages: &[MessageId],
    ) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        if self.outbound_len() + messages.len() * 16 > OUTBOUND_BYTES_MAX {
            return Err(ClientError::OutboundFull);
        }
        for chunk in messages.chunks(RECEIPTS_PER_FRAME_MAX) {
            self.queue_frame(&Frame::Receipt(Receipt {
                conversation,
                kind,
                messages: MessageIds::new(chunk),
            }))?;
        }
        Ok(())
    }

    /// Queues this device's presence; the server passes it on to the online devices of the
    /// account's friends and its own other devices as [`Event::Presence`].
    pub fn set_presence(&mut self, now: Instant, state: PresenceState) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.queue_frame(&Frame::PresenceSet(PresenceSet { state }))
    }

    /// Closes the connection locally: nothing more is sent; the last event is
    /// [`Event::Closed`] with [`CloseReason::Local`].
    pub fn close(&mut self) {
        self.set_closed(CloseReason::Local);
    }

    fn set_closed(&mut self, reason: CloseReason) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.plain.clear();
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// Bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ClientError> {
        self.advance(now);
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.inbound.extend_from_slice(bytes);
        let result = self.process_inbound(now);
        self.flush_acks();
        if result.is_ok() && self.state != State::Closed && self.inbound.len() > INBOUND_BYTES_MAX {
            self.set_closed(CloseReason::Crypto);
            return Err(ClientError::InboundTooLarge);
        }
        result
    }

    fn process_inbound(&mut self, now: Instant) -> Result<(), ClientError> {
        while self.state == State::Handshaking {
            let Some(header) = self.inbound.get(..2) else {
                return Ok(());
            };
            let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
            if len > HANDSHAKE_PACKET_LEN_MAX {
                let error = ClientError::Handshake(HandshakeError::Malformed);
                self.set_closed(CloseReason::Crypto);
                return Err(error);
            }
            if self.inbound.len() < 2 + len {
                return Ok(());
            }
            let packet: Vec<u8> = self.inbound.drain(..2 + len).skip(2).collect();
            if let Err(error) = self.handle_handshake_packet(now, &packet) {
                self.set_closed(CloseReason::Crypto);
                return Err(error);
            }
        }
        self.process_records(now)
    }

    fn handle_handshake_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), ClientError> {
        let Some(initiator) = self.initiator.as_mut() else {
            return Err(ClientError::Closed);
        };
        match initiator
            .handle_packet(now, packet, &mut self.scratch)
            .map_err(ClientError::Handshake)?
        {
            InitiatorEvent::Retry => {
                let len = initiator
                    .write_initiation(now, &mut self.rng, &mut self.scratch)
                    .map_err(ClientError::Handshake)?;
                self.push_handshake_packet(len);
            }
            InitiatorEvent::Established {
                finish_len,
                session,
            } => {
                if let Some(len) = finish_len {
                    self.push_handshake_packet(len);
                }
                self.session = Some(StreamSession::new(&session, now));
                self.initiator = None;
                self.state = State::AwaitingWelcome;
                if let Some(every) = self.keepalive {
                    self.next_ping = now.saturating_add(every);
                }
            }
        }
        Ok(())
    }

    fn process_records(&mut self, now: Instant) -> Result<(), ClientError> {
        let mut at = 0;
        let mut result = Ok(());
        while self.state != State::Closed {
            let Some(session) = self.session.as_mut() else {
                break;
            };
            let opened = match session.open_record(&mut self.inbound[at..]) {
                Ok(Some(opened)) => opened,
                Ok(None) => break,
                Err(error) => {
                    self.set_closed(CloseReason::Crypto);
                    result = Err(ClientError::Open(error));
                    break;
                }
            };
            self.stats.records_in += 1;
            let mut plaintext = core::mem::take(&mut self.scratch);
            plaintext.clear();
            plaintext.extend_from_slice(
                &self.inbound[at + opened.plaintext.start..at + opened.plaintext.end],
            );
            at += opened.consumed;
            let handled = self.handle_plaintext(now, &plaintext);
            self.scratch = plaintext;
            if let Err(error) = handled {
                result = Err(error);
                break;
            }
        }
        self.inbound.drain(..at.min(self.inbound.len()));
        result
    }

    fn handle_plaintext(&mut self, now: Instant, plaintext: &[u8]) -> Result<(), ClientError> {
        let mut assembler = core::mem::replace(&mut self.assembler, FrameAssembler::new(0));
        let mut result = Ok(());
        {
            let mut frames = assembler.push(plaintext);
            while let Some(frame) = frames.next_frame() {
                match frame {
                    Ok(frame) => self.handle_frame(now, frame),
                    Err(DecodeError::UnknownFrameType(_)) => {}
                    Err(error) => {
                        // Tell the server why, then stop.
                        let code = error.error_code();
                        let _ = self.queue_frame(&Frame::Error(ErrorFrame {
                            code,
                            frame_type: 0,
                            reference: 0,
                            reason: "",
                        }));
                        self.set_closed(CloseReason::Protocol(code));
                        result = Err(ClientError::Decode(error));
                        break;
                    }
                }
                if self.state == State::Closed {
                    break;
                }
            }
        }
        self.assembler = assembler;
        result
    }

    fn handle_frame(&mut self, _now: Instant, frame: Frame<'_>) {
        match frame {
            Frame::Welcome(welcome) if self.state == State::AwaitingWelcome => {
                self.state = State::Ready;
                self.events.push_back(Event::Connected {
                    device: welcome.device,
                    version: welcome.version,
                    capabilities: welcome.capabilities,
                    server_time_ms: welcome.server_time_ms,
                });
            }
            Frame::SendAck(ack) => {
                self.stats.send_acks += 1;
                if !self.handle_send_ack(ack.message, ack.status) {
                    return;
                }
                self.events.push_back(Event::SendAck {
                    message: ack.message,
                    status: ack.status,
                    seq: ack.seq,
                });
            }
            Frame::Deliver(deliver) if self.ack_mode == AckMode::Application => {
                // The dedup window holds what the application acknowledged: a repeat of one
                // is acknowledged again; a repeat of one reported on this connection and not
                // yet acknowledged waits for the application's ack; anything else (a
                // redelivery after a reconnect included) is reported.
                if self.dedup.contains(deliver.message) {
                    self.acks.push(deliver.message);
                    self.stats.duplicates += 1;
                } else if self.app_unacked.contains(&deliver.message) {
                    self.stats.duplicates += 1;
                } else {
                    if self.app_unacked.len() < APP_UNACKED_MAX {
                        self.app_unacked.insert(deliver.message);
                    }
                    self.stats.delivered += 1;
                    self.events.push_back(Event::Delivered(Delivery {
                        message: deliver.message,
                        sender: deliver.sender,
                        conversation: deliver.conversation,
                        seq: deliver.seq,
                        sent_at_ms: deliver.sent_at_ms,
                        body: deliver.body.to_vec(),
                    }));
                }
            }
            Frame::Deliver(deliver) => {
                self.acks.push(deliver.message);
                if self.dedup.insert(deliver.message) {
                    self.stats.delivered += 1;
                    self.events.push_back(Event::Delivered(Delivery {
                        message: deliver.message,
                        sender: deliver.sender,
                        conversation: deliver.conversation,
                        seq: deliver.seq,
                        sent_at_ms: deliver.sent_at_ms,
                        body: deliver.body.to_vec(),
                    }));
                } else {
                    self.stats.duplicates += 1;
                }
            }
            Frame::Ping(ping) => {
                let _ = self.queue_frame(&Frame::Pong(Pong { nonce: ping.nonce }));
            }
            Frame::Pong(pong) if self.keepalive_pending == Some(pong.nonce) => {
                self.keepalive_pending = None;
            }
            Frame::Pong(pong) => self.events.push_back(Event::Pong { nonce: pong.nonce }),
            Frame::Response(response) => self.events.push_back(Event::Response {
                request_id: response.request_id,
                status: response.status,
                body: response.body.to_vec(),
            }),
            Frame::Error(error) => self.events.push_back(Event::Error {
                code: error.code,
                frame_type: error.frame_type,
            }),
            Frame::GoAway(go_away) => {
                self.events.push_back(Event::GoAway {
                    code: go_away.code,
                    reconnect_after_ms: go_away.reconnect_after_ms,
                });
                self.set_closed(CloseReason::GoAway(go_away.code));
            }
            Frame::TypingFrom(typing) => self.events.push_back(Event::TypingFrom {
                device: typing.device,
                conversation: typing.conversation,
                state: typing.state,
            }),
            Frame::ReceiptFrom(receipt) => self.events.push_back(Event::ReceiptFrom {
                from: receipt.from,
                conversation: receipt.conversation,
                kind: receipt.kind,
                messages: receipt.messages.iter().collect(),
            }),
            Frame::Presence(presence) => self.events.push_back(Event::Presence {
                device: presence.device,
                state: presence.state,
                last_seen_ms: presence.last_seen_ms,
            }),
            // Frames of later features (calls) are not handled by this client yet; they are
            // well formed, so they are skipped.
            _ => {}
        }
    }

    /// Queues `DeliveryAck`s for everything delivered since the last call, in frames of at
    /// most [`ACKS_PER_FRAME_MAX`] ids.
    fn flush_acks(&mut self) {
        if self.state == State::Closed {
            self.acks.clear();
            return;
        }
        let acks = core::mem::take(&mut self.acks);
        for chunk in acks.chunks(ACKS_PER_FRAME_MAX) {
            let _ = self.queue_frame(&Frame::DeliveryAck(DeliveryAck {
                messages: MessageIds::new(chunk),
            }));
        }
        self.acks = acks;
        self.acks.clear();
    }

    /// Bytes to write to the socket, in order. After writing some, call
    /// [`Connection::handle_written`]. Frames queued since the last call are sealed here, in
    /// records of at most `record_len_max` plaintext bytes.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<&[u8], ClientError> {
        self.advance(now);
        if !self.acks.is_empty() {
            self.flush_acks();
        }
        if let Some(session) = self.session.as_mut()
            && !self.plain.is_empty()
        {
            for chunk in self.plain.chunks(self.record_len_max) {
                let at = self.outbound.len();
                self.outbound
                    .resize(at + StreamSession::sealed_len_max(chunk.len()), 0);
                match session.seal_record(now, chunk, &mut self.outbound[at..]) {
                    Ok(n) => self.outbound.truncate(at + n),
                    Err(error) => {
                        self.outbound.truncate(at);
                        self.set_closed(CloseReason::Local);
                        return Err(ClientError::Seal(error));
                    }
                }
                self.stats.records_out += 1;
            }
            self.plain.clear();
        }
        Ok(&self.outbound[self.outbound_at..])
    }

    /// `n` bytes of [`Connection::poll_transmit`] were written.
    pub fn handle_written(&mut self, n: usize) {
        self.outbound_at = (self.outbound_at + n).min(self.outbound.len());
        if self.outbound_at == self.outbound.len() {
            self.outbound.clear();
            self.outbound_at = 0;
        } else if self.outbound_at >= OUTBOUND_COMPACT_AT
            && self.outbound_at * 2 >= self.outbound.len()
        {
            // Under steady backpressure the buffer is never fully written: drop the written
            // prefix once it is at least half the buffer, so the buffer stays within twice
            // what is pending (amortised: each byte is moved at most once).
            self.outbound.drain(..self.outbound_at);
            self.outbound_at = 0;
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] next has work: the handshake deadline, or the next
    /// keepalive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking => self.initiator.as_ref().map(Initiator::poll_timeout),
            State::AwaitingWelcome | State::Ready => {
                let resend = self.unacked.values().filter_map(|u| u.resend_at).min();
                let ping = self.keepalive.is_some().then_some(self.next_ping);
                match (resend, ping) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Closed => None,
        }
    }

    /// Time passed: abandons a handshake past its deadline, sends a keepalive when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        match self.state {
            State::Handshaking => {
                if self
                    .initiator
                    .as_ref()
                    .is_some_and(|i| now >= i.poll_timeout())
                {
                    self.set_closed(CloseReason::HandshakeTimeout);
                }
            }
            State::AwaitingWelcome | State::Ready => {
                self.resend_due(now);
                if let Some(every) = self.keepalive
                    && now >= self.next_ping
                {
                    // Keepalive nonces count down from u64::MAX, away from the small
                    // numbers applications use, and their Pongs are not reported.
                    self.ping_nonce = self.ping_nonce.wrapping_add(1);
                    let nonce = u64::MAX - self.ping_nonce;
                    self.keepalive_pending = Some(nonce);
                    let _ = self.queue_frame(&Frame::Ping(Ping { nonce }));
                    self.next_ping = now.saturating_add(every);
                }
            }
            State::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests;
