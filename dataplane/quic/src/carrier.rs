//! The endpoint machinery shared by [`QuicServer`] and [`QuicClient`]: a quinn-proto
//! `Endpoint`, its `Connection`s in a slab indexed like the endpoint's handles, one CCP-2 stream
//! per connection, a round-robin send queue and a timer set.

use crate::cert::Certificate;
use crate::cid::ShardCidGenerator;
use crate::config::{CloseCode, QuicConfig};
use crate::error::{Error, StreamError};
use crate::time::{TimeBase, WallClock};
use bytes::{Bytes, BytesMut};
use core::net::{IpAddr, SocketAddr};
use dp_core::{Instant, Rng};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint,
    Endpoint, EndpointConfig, Event, Incoming, ReadError, ReadableError, ServerConfig, StreamEvent,
    StreamId, ValidationTokenConfig, WriteError,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Stateless answers (version negotiation, retry, refusal, reset) queued at most; more are
/// dropped and counted, since a flood of them is someone else's attack.
const RESPONSES_MAX: usize = 1024;

/// A connection on one carrier: its slot and the slot's generation, so that an id never
/// names a later connection that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuicConnId {
    index: u32,
    generation: u32,
}

/// One batch of datagrams to send, written into the caller's buffer by `poll_transmit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// ECN bits to set, if any.
    pub ecn: Option<EcnCodepoint>,
    /// Bytes written to the buffer.
    pub len: usize,
    /// `Some(size)`: the buffer holds several datagrams of `size` bytes (the last may be
    /// shorter), to send as one GSO batch (`UDP_SEGMENT`) or one by one.
    pub segment_size: Option<usize>,
    /// The local address to send from, when the datagram answered one sent to a specific
    /// address.
    pub src_ip: Option<IpAddr>,
}

impl Transmit {
    fn from_quinn(transmit: &quinn_proto::Transmit) -> Self {
        Self {
            destination: transmit.destination,
            ecn: transmit.ecn,
            len: transmit.size,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        }
    }

    /// How many datagrams the batch holds.
    pub fn datagrams(&self) -> usize {
        match self.segment_size {
            Some(size) if size > 0 => self.len.div_ceil(size),
            _ => 1,
        }
    }
}

/// Why a connection ended without the application closing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed it with this CCP-2 code ([`CloseCode`]).
    Application(u64),
    /// The peer broke QUIC's rules or the TLS handshake failed here (a QUIC transport error
    /// code, RFC 9000 §20.1; TLS alerts are `0x100 + alert`).
    Transport(u64),
    /// The peer's QUIC stack closed it with this transport error code.
    PeerTransport(u64),
    /// The peer reset it (a stateless reset: it lost the connection's state).
    Reset,
    /// Nothing was heard within the idle timeout.
    TimedOut,
    /// The peer speaks no QUIC version we do.
    VersionMismatch,
    /// No connection ids left.
    CidsExhausted,
}

impl CloseReason {
    fn from_quinn(error: ConnectionError) -> Self {
        match error {
            ConnectionError::ApplicationClosed(close) => {
                Self::Application(close.error_code.into_inner())
            }
            ConnectionError::TransportError(error) => Self::Transport(u64::from(error.code)),
            ConnectionError::ConnectionClosed(close) => {
                Self::PeerTransport(u64::from(close.error_code))
            }
            ConnectionError::Reset => Self::Reset,
            // quinn reports no loss for a local close, and the carrier reports none either; a
            // `LocallyClosed` here would be a connection quinn closed on its own, by timer.
            ConnectionError::TimedOut | ConnectionError::LocallyClosed => Self::TimedOut,
            ConnectionError::VersionMismatch => Self::VersionMismatch,
            ConnectionError::CidsExhausted => Self::CidsExhausted,
        }
    }
}

/// What a carrier tells its IO layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicEvent {
    /// The connection's CCP-2 stream is open: on a server, the client's first bidirectional
    /// stream arrived (a new shard connection from `peer`); on a client, the stream is ready
    /// for the Initiation.
    StreamOpened {
        /// The connection.
        conn: QuicConnId,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// The stream has bytes (or its end) to `read`.
    Readable(QuicConnId),
    /// A `write` that returned 0 may now make progress.
    Writable(QuicConnId),
    /// The connection is gone, not by a local `close`; its id is void from now on.
    Closed {
        /// The connection.
        conn: QuicConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Counters a carrier publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// Datagrams handed in.
    pub datagrams_in: u64,
    /// Datagrams that reached no connection and got no answer: not QUIC, for an unknown or
    /// another shard's connection, or otherwise unusable.
    pub datagrams_dropped: u64,
    /// Datagrams handed out (a GSO batch counts each of its datagrams).
    pub datagrams_out: u64,
    /// Stateless answers dropped because too many were queued.
    pub responses_dropped: u64,
    /// Connections accepted (server) or started (client).
    pub conns_accepted: u64,
    /// Connections refused at [`QuicConfig::conns_max`] or
    /// [`QuicConfig::conns_per_source_max`].
    pub conns_refused: u64,
    /// Connection attempts that failed before a connection existed.
    pub conns_failed: u64,
    /// Retry packets sent (address validation).
    pub retries_sent: u64,
    /// Streams beyond the first that were refused.
    pub streams_refused: u64,
    /// Connections that ended without a local close (each reported as `Closed`).
    pub conns_lost: u64,
}

struct Closing {
    code: CloseCode,
    linger_until: Instant,
    sent: bool,
}

struct Slot {
    id: QuicConnId,
    conn: Connection,
    peer: SocketAddr,
    /// The per-source key this server connection counts against.
    source: Option<IpAddr>,
    stream: Option<StreamId>,
    /// In the send queue.
    queued: bool,
    /// The deadline this slot has in the timer set.
    timer: Option<Instant>,
    write_blocked: bool,
    closing: Option<Closing>,
    lost: bool,
}

impl Slot {
    fn usable(&self) -> bool {
        !self.lost && self.closing.is_none()
    }
}

/// The shared engine. Side-specific set-up is in [`QuicServer::new`] and [`QuicClient::new`].
struct Core {
    endpoint: Endpoint,
    client: Option<ClientConfig>,
    server: bool,
    config: QuicConfig,
    time: TimeBase,
    clock: Arc<WallClock>,
    now_last: Instant,
    slots: Vec<Option<Box<Slot>>>,
    live: usize,
    /// Server connections per source key.
    sources: BTreeMap<IpAddr, u32>,
    generation: u32,
    events: VecDeque<QuicEvent>,
    responses: VecDeque<(Transmit, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    send_queue: VecDeque<QuicConnId>,
    timers: BTreeSet<(Instant, u32, u32)>,
    due: Vec<(u32, u32)>,
    scratch: Vec<u8>,
    stats: QuicStats,
}

/// The key that per-source limits count by: the IPv4 address, or the IPv6 /64 (as the shard's).
fn source_key(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(ip) => {
            let mut octets = ip.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Seeds drawn from the caller's generator for everything quinn would otherwise take from the
/// OS: the endpoint's generator, connection ids, the stateless-reset key.
fn endpoint_config(rng: &mut impl Rng, shard: u16) -> EndpointConfig {
    let mut reset_key = [0u8; 64];
    rng.private_fill(&mut reset_key);
    let mut endpoint_seed = [0u8; 32];
    rng.private_fill(&mut endpoint_seed);
    let mut cid_seed = [0u8; 32];
    rng.private_fill(&mut cid_seed);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
    let mut config = EndpointConfig::new(Arc::new(key));
    config
        .cid_generator(move || Box::new(ShardCidGenerator::new(shard, cid_seed)))
        .rng_seed(Some(endpoint_seed));
    config
}

impl Core {
    fn new(
        endpoint: Endpoint,
        client: Option<ClientConfig>,
        config: QuicConfig,
        time: TimeBase,
        clock: Arc<WallClock>,
    ) -> Self {
        Self {
            server: client.is_none(),
            endpoint,
            client,
            config,
            time,
            clock,
            now_last: Instant::ZERO,
            slots: Vec::new(),
            live: 0,
            sources: BTreeMap::new(),
            generation: 0,
            events: VecDeque::new(),
            responses: VecDeque::new(),
            spare: Vec::new(),
            send_queue: VecDeque::new(),
            timers: BTreeSet::new(),
            due: Vec::new(),
            scratch: Vec::new(),
            stats: QuicStats::default(),
        }
    }

    fn tick(&mut self, now: Instant) {
        debug_assert!(now >= self.now_last, "time went backwards");
        self.now_last = self.now_last.max(now);
        self.clock.set(self.time.unix(now));
    }

    fn slot(&mut self, id: QuicConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)?
            .as_deref_mut()
            .filter(|slot| slot.id == id)
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        bytes: &[u8],
    ) {
        self.tick(now);
        self.stats.datagrams_in += 1;
        let at = self.time.to_std(now);
        // quinn-proto owns each datagram (stream data is kept as slices of it), so this copy
        // is the carrier's one allocation per datagram received.
        let data = BytesMut::from(bytes);
        self.scratch.clear();
        match self
            .endpoint
            .handle(at, from, local_ip, ecn, data, &mut self.scratch)
        {
            None => self.stats.datagrams_dropped += 1,
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(slot) = self.slots.get_mut(handle.0).and_then(Option::as_deref_mut) {
                    slot.conn.handle_event(event);
                    self.drive(handle.0, now);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming),
            Some(DatagramEvent::Response(transmit)) => self.queue_response(&transmit),
        }
    }

    fn queue_response(&mut self, transmit: &quinn_proto::Transmit) {
        if self.responses.len() >= RESPONSES_MAX {
            self.stats.responses_dropped += 1;
            return;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&self.scratch[..transmit.size]);
        self.responses
            .push_back((Transmit::from_quinn(transmit), bytes));
    }

    /// A client's first packet: refuse at the limit, validate its address if configured, or
    /// accept it.
    fn incoming(&mut self, now: Instant, incoming: Incoming) {
        if !self.server {
            self.endpoint.ignore(incoming);
            self.stats.conns_refused += 1;
            return;
        }
        self.scratch.clear();
        let source = source_key(incoming.remote_address());
        let from_source = self.sources.get(&source).copied().unwrap_or(0);
        if self.live >= self.config.conns_max || from_source >= self.config.conns_per_source_max {
            let transmit = self.endpoint.refuse(incoming, &mut self.scratch);
            self.queue_response(&transmit);
            self.stats.conns_refused += 1;
            return;
        }
        if self.config.retry && !incoming.remote_address_validated() && incoming.may_retry() {
            match self.endpoint.retry(incoming, &mut self.scratch) {
                Ok(transmit) => {
                    self.queue_response(&transmit);
                    self.stats.retries_sent += 1;
                }
                Err(error) => self.endpoint.ignore(error.into_incoming()),
            }
            return;
        }
        let at = self.time.to_std(now);
        match self.endpoint.accept(incoming, at, &mut self.scratch, None) {
            Ok((handle, conn)) => {
                self.stats.conns_accepted += 1;
                *self.sources.entry(source).or_insert(0) += 1;
                self.insert(now, handle, conn, Some(source));
            }
            Err(error) => {
                self.stats.conns_failed += 1;
                if let Some(transmit) = error.response {
                    self.queue_response(&transmit);
                }
            }
        }
    }

    fn insert(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        conn: Connection,
        source: Option<IpAddr>,
    ) -> QuicConnId {
        let index = handle.0;
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.generation = self.generation.wrapping_add(1);
        let id = QuicConnId {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            generation: self.generation,
        };
        let peer = conn.remote_address();
        debug_assert!(self.slots[index].is_none(), "quinn reused a live handle");
        self.slots[index] = Some(Box::new(Slot {
            id,
            conn,
            peer,
            source,
            stream: None,
            queued: false,
            timer: None,
            write_blocked: false,
            closing: None,
            lost: false,
        }));
        self.live += 1;
        self.drive(index, now);
        id
    }

    /// After any input to connection `index`: hand its endpoint events over, turn its events
    /// into ours, free it once drained, and re-arm its timer and send-queue place.
    fn drive(&mut self, index: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_deref_mut) else {
            return;
        };
        let handle = ConnectionHandle(index);
        while let Some(event) = slot.conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(handle, event) {
                slot.conn.handle_event(event);
            }
        }
        let at = self.time.to_std(now);
        while let Some(event) = slot.conn.poll() {
            match event {
                Event::Connected => {
                    if !self.server && slot.stream.is_none() && slot.usable() {
                        slot.stream = slot.conn.streams().open(Dir::Bi);
                        if slot.stream.is_some() {
                            self.events.push_back(QuicEvent::StreamOpened {
                                conn: slot.id,
                                peer: slot.peer,
                            });
                        }
                    }
                }
                Event::ConnectionLost { reason } => {
                    if slot.usable() {
                        slot.lost = true;
                        self.stats.conns_lost += 1;
                        self.events.push_back(QuicEvent::Closed {
                            conn: slot.id,
                            reason: CloseReason::from_quinn(reason),
                        });
                    }
                }
                Event::Stream(event) => {
                    Self::stream_event(slot, event, at, &mut self.events, &mut self.stats);
                }
                Event::HandshakeDataReady | Event::DatagramReceived | Event::DatagramsUnblocked => {
                }
            }
        }
        if slot.conn.is_drained() {
            if let Some(when) = slot.timer {
                self.timers
                    .remove(&(when, slot.id.index, slot.id.generation));
            }
            if slot.usable() {
                // Drained without a reported loss: still tell the IO layer exactly once.
                self.stats.conns_lost += 1;
                self.events.push_back(QuicEvent::Closed {
                    conn: slot.id,
                    reason: CloseReason::TimedOut,
                });
            }
            if let Some(source) = slot.source
                && let Some(count) = self.sources.get_mut(&source)
            {
                *count -= 1;
                if *count == 0 {
                    self.sources.remove(&source);
                }
            }
            self.slots[index] = None;
            self.live -= 1;
            return;
        }
        if !slot.queued {
            slot.queued = true;
            self.send_queue.push_back(slot.id);
        }
        Self::rearm(slot, &self.time, &mut self.timers);
    }

    fn stream_event(
        slot: &mut Slot,
        event: StreamEvent,
        at: std::time::Instant,
        events: &mut VecDeque<QuicEvent>,
        stats: &mut QuicStats,
    ) {
        let ours = |id| slot.stream == Some(id);
        match event {
            StreamEvent::Opened { dir } => {
                while let Some(id) = slot.conn.streams().accept(dir) {
                    if dir == Dir::Bi && slot.stream.is_none() && slot.usable() {
                        slot.stream = Some(id);
                        events.push_back(QuicEvent::StreamOpened {
                            conn: slot.id,
                            peer: slot.peer,
                        });
                        events.push_back(QuicEvent::Readable(slot.id));
                    } else {
                        let code = CloseCode::EXCESS_STREAM.varint();
                        let _ = slot.conn.recv_stream(id).stop(code);
                        if dir == Dir::Bi {
                            let _ = slot.conn.send_stream(id).reset(code);
                        }
                        stats.streams_refused += 1;
                    }
                }
            }
            StreamEvent::Readable { id } if ours(id) && slot.usable() => {
                events.push_back(QuicEvent::Readable(slot.id));
            }
            StreamEvent::Writable { id } | StreamEvent::Stopped { id, .. }
                if ours(id) && slot.usable() && slot.write_blocked =>
            {
                slot.write_blocked = false;
                events.push_back(QuicEvent::Writable(slot.id));
            }
            StreamEvent::Finished { id } if ours(id) => {
                // Everything written before `close` is acknowledged: close now.
                if let Some(closing) = slot.closing.as_mut().filter(|c| !c.sent) {
                    closing.sent = true;
                    slot.conn.close(at, closing.code.varint(), Bytes::new());
                }
            }
            _ => {}
        }
    }

    fn rearm(slot: &mut Slot, time: &TimeBase, timers: &mut BTreeSet<(Instant, u32, u32)>) {
        let mut next = slot.conn.poll_timeout().map(|at| time.from_std(at));
        if let Some(closing) = slot.closing.as_ref().filter(|c| !c.sent) {
            next = Some(next.map_or(closing.linger_until, |n| n.min(closing.linger_until)));
        }
        if next != slot.timer {
            if let Some(old) = slot.timer {
                timers.remove(&(old, slot.id.index, slot.id.generation));
            }
            if let Some(new) = next {
                timers.insert((new, slot.id.index, slot.id.generation));
            }
            slot.timer = next;
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        let at = self.time.to_std(now);
        self.due.clear();
        while let Some(&(when, index, generation)) = self.timers.first() {
            if when > now {
                break;
            }
            self.timers.pop_first();
            self.due.push((index, generation));
        }
        for position in 0..self.due.len() {
            let (index, generation) = self.due[position];
            let id = QuicConnId { index, generation };
            let Some(slot) = self.slot(id) else {
                continue;
            };
            slot.timer = None;
            slot.conn.handle_timeout(at);
            if let Some(closing) = slot.closing.as_mut()
                && !closing.sent
                && closing.linger_until <= now
            {
                closing.sent = true;
                slot.conn.close(at, closing.code.varint(), Bytes::new());
            }
            self.drive(index as usize, now);
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((transmit, bytes)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            if self.spare.len() < RESPONSES_MAX {
                self.spare.push(bytes);
            }
            self.stats.datagrams_out += 1;
            return Some(transmit);
        }
        let at = self.time.to_std(now);
        let segments = self.config.gso_segments_max;
        while let Some(id) = self.send_queue.pop_front() {
            let Some(slot) = self
                .slots
                .get_mut(id.index as usize)
                .and_then(Option::as_deref_mut)
                .filter(|slot| slot.id == id)
            else {
                continue;
            };
            slot.queued = false;
            buf.clear();
            let transmit = slot.conn.poll_transmit(at, segments, buf);
            Self::rearm(slot, &self.time, &mut self.timers);
            if let Some(transmit) = transmit {
                // It may have more: back of the queue, so connections take turns.
                slot.queued = true;
                self.send_queue.push_back(id);
                let transmit = Transmit::from_quinn(&transmit);
                self.stats.datagrams_out += transmit.datagrams() as u64;
                return Some(transmit);
            }
        }
        None
    }

    fn read(&mut self, id: QuicConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let slot = self.slot(id).ok_or(StreamError::UnknownConnection)?;
        if !slot.usable() {
            return Err(StreamError::Closed);
        }
        let stream = slot.stream.ok_or(StreamError::NotOpen)?;
        let mut recv = slot.conn.recv_stream(stream);
        let mut chunks = match recv.read(true) {
            Ok(chunks) => chunks,
            Err(ReadableError::ClosedStream) => return Err(StreamError::Finished),
            Err(ReadableError::IllegalOrderedRead) => return Err(StreamError::Closed),
        };
        let mut filled = 0;
        let mut end = None;
        while filled < buf.len() {
            match chunks.next(buf.len() - filled) {
                Ok(Some(chunk)) => {
                    buf[filled..filled + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                    filled += chunk.bytes.len();
                }
                Ok(None) => {
                    end = Some(StreamError::Finished);
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(code)) => {
                    end = Some(StreamError::Reset(code.into_inner()));
                    break;
                }
            }
        }
        // Reading freed flow-control credit: the connection may have a window update to send.
        let _ = chunks.finalize();
        self.queue_send(id);
        match end {
            Some(error) if filled == 0 => Err(error),
            _ => Ok(filled),
        }
    }

    fn queue_send(&mut self, id: QuicConnId) {
        if let Some(slot) = self.slot(id)
            && !slot.queued
        {
            slot.queued = true;
            self.send_queue.push_back(id);
        }
    }

    fn write(&mut self, id: QuicConnId, bytes: &[u8]) -> Result<usize, StreamError> {
        let slot = self.slot(id).ok_or(StreamError::UnknownConnection)?;
        if !slot.usable() {
            return Err(StreamError::Closed);
        }
        let stream = slot.stream.ok_or(StreamError::NotOpen)?;
        let written = match slot.conn.send_stream(stream).write(bytes) {
            Ok(written) => written,
            Err(WriteError::Blocked) => {
                slot.write_blocked = true;
                return Ok(0);
            }
            Err(WriteError::Stopped(code)) => return Err(StreamError::Stopped(code.into_inner())),
            Err(WriteError::ClosedStream) => return Err(StreamError::Closed),
        };
        self.queue_send(id);
        Ok(written)
    }

    fn close(&mut self, now: Instant, id: QuicConnId, code: CloseCode) {
        self.tick(now);
        let at = self.time.to_std(now);
        let linger_until = now.saturating_add(self.config.close_linger);
        let Some(slot) = self.slot(id) else {
            return;
        };
        if !slot.usable() {
            return;
        }
        let finished = slot.stream.is_some_and(|stream| {
            let _ = slot.conn.recv_stream(stream).stop(code.varint());
            slot.conn.send_stream(stream).finish().is_ok()
        });
        if !finished {
            slot.conn.close(at, code.varint(), Bytes::new());
        }
        slot.closing = Some(Closing {
            code,
            linger_until,
            sent: !finished,
        });
        self.drive(id.index as usize, now);
    }

    fn connect(&mut self, now: Instant, server: SocketAddr) -> Result<QuicConnId, Error> {
        self.tick(now);
        if self.live >= self.config.conns_max {
            return Err(Error::ConnectionsExhausted);
        }
        let config = self.client.clone().ok_or(Error::InvalidAddress)?;
        let at = self.time.to_std(now);
        let (handle, conn) = self
            .endpoint
            .connect(at, config, server, crate::SERVER_NAME)
            .map_err(|error| match error {
                quinn_proto::ConnectError::CidsExhausted => Error::CidsExhausted,
                _ => Error::InvalidAddress,
            })?;
        self.stats.conns_accepted += 1;
        Ok(self.insert(now, handle, conn, None))
    }

    fn debug(&self, name: &str, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct(name)
            .field("conns", &self.live)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The methods both sides share, with one set of docs.
macro_rules! carrier_methods {
    ($ty:ident) => {
        impl $ty {
            /// A datagram arrived from `from` (to `local_ip`, with `ecn`, where the IO layer
            /// knows them). Anything that is not QUIC or not for a live connection is dropped
            /// and counted; nothing here panics on any input.
            pub fn handle_datagram(
                &mut self,
                now: Instant,
                from: SocketAddr,
                local_ip: Option<IpAddr>,
                ecn: Option<EcnCodepoint>,
                bytes: &[u8],
            ) {
                self.core.handle_datagram(now, from, local_ip, ecn, bytes);
            }

            /// Runs every timer due at `now` (loss detection, idle timeouts, close lingers).
            pub fn handle_timeout(&mut self, now: Instant) {
                self.core.handle_timeout(now);
            }

            /// The next datagram batch to send, written into `buf` (cleared first, reused by
            /// the caller). Stateless answers go first, then connections take turns. Call until
            /// it returns `None`.
            pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
                self.core.poll_transmit(now, buf)
            }

            /// The next event for the IO layer.
            pub fn poll_event(&mut self) -> Option<QuicEvent> {
                self.core.events.pop_front()
            }

            /// When [`Self::handle_timeout`] is next due, if ever.
            pub fn poll_timeout(&self) -> Option<Instant> {
                self.core.timers.first().map(|&(when, ..)| when)
            }

            /// Reads stream bytes into `buf`: `Ok(n)` with `n > 0`, or `Ok(0)` when nothing is
            /// buffered now (a `Readable` event follows when more arrives). The end of the
            /// peer's side is [`StreamError::Finished`], after all its bytes were read.
            pub fn read(&mut self, conn: QuicConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
                self.core.read(conn, buf)
            }

            /// Writes as much of `bytes` as flow control and the send window allow, like a
            /// non-blocking socket: `Ok(n)` may be short, and `Ok(0)` means blocked until a
            /// `Writable` event.
            pub fn write(&mut self, conn: QuicConnId, bytes: &[u8]) -> Result<usize, StreamError> {
                self.core.write(conn, bytes)
            }

            /// Closes the connection with `code`: what was written is still delivered (the
            /// stream is finished and the close waits, at most [`QuicConfig::close_linger`],
            /// for its acknowledgement), then `CONNECTION_CLOSE` goes out. No `Closed` event
            /// follows; the id is void at once.
            pub fn close(&mut self, now: Instant, conn: QuicConnId, code: CloseCode) {
                self.core.close(now, conn, code);
            }

            /// The peer's address of a live connection.
            pub fn peer(&mut self, conn: QuicConnId) -> Option<SocketAddr> {
                self.core.slot(conn).map(|slot| slot.peer)
            }

            /// Live connections (including closing ones not yet drained).
            pub fn conns_len(&self) -> usize {
                self.core.live
            }

            /// Counters.
            pub fn stats(&self) -> QuicStats {
                self.core.stats
            }
        }

        impl core::fmt::Debug for $ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                self.core.debug(stringify!($ty), f)
            }
        }
    };
}

/// The server side of the carrier: accepts connections, takes each one's first bidirectional
/// stream as its CCP-2 byte stream and refuses any other stream (`EXCESS_STREAM`).
///
/// One per shard. Its connection ids start with the shard's number (see [`crate::cid_shard`]),
/// and it drops, rather than resets, short-header packets that name another shard.
/// Connection migration is off until the IO layer steers by connection id
/// (`docs/design/0008-quic-carrier.md`).
pub struct QuicServer {
    core: Core,
}

impl QuicServer {
    /// A server for shard `shard` presenting `cert`. Every secret and seed it needs (reset
    /// key, token key, connection ids, the endpoint's generator) is drawn from `rng`.
    pub fn new(
        config: QuicConfig,
        cert: &Certificate,
        time: TimeBase,
        shard: u16,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        config.check()?;
        let clock = WallClock::new();
        let crypto = crate::tls::server(cert, clock.clone())?;
        let mut token_secret = [0u8; 64];
        rng.private_fill(&mut token_secret);
        let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token_secret);
        let mut server = ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
        let mut tokens = ValidationTokenConfig::default();
        tokens.sent(0);
        server
            .transport_config(Arc::new(config.transport(true)?))
            .migration(false)
            .max_incoming(config.incoming_max)
            .validation_token_config(tokens)
            .time_source(clock.clone());
        let endpoint = Endpoint::new(
            Arc::new(endpoint_config(rng, shard)),
            Some(Arc::new(server)),
            config.mtu_discovery,
            None,
        );
        Ok(Self {
            core: Core::new(endpoint, None, config, time, clock),
        })
    }
}

carrier_methods!(QuicServer);

/// The client side: connects to a server and opens the one CCP-2 stream
/// ([`QuicEvent::StreamOpened`]) once the QUIC handshake is done. Used by the client library,
/// the load generator and the tests.
pub struct QuicClient {
    core: Core,
}

impl QuicClient {
    /// A client endpoint (it may hold several connections). Connection ids and the endpoint's
    /// generator come from `rng`.
    pub fn new(config: QuicConfig, time: TimeBase, rng: &mut impl Rng) -> Result<Self, Error> {
        config.check()?;
        let clock = WallClock::new();
        let crypto = crate::tls::client(clock.clone())?;
        let mut initial_seed = [0u8; 32];
        rng.private_fill(&mut initial_seed);
        // Initial destination ids carry shard 0xffff, "no hint": out of range for any server.
        let initial = Mutex::new(ShardCidGenerator::new(u16::MAX, initial_seed));
        let mut client = ClientConfig::new(Arc::new(crypto));
        client
            .transport_config(Arc::new(config.transport(false)?))
            .initial_dst_cid_provider(Arc::new(move || match initial.lock() {
                Ok(mut generator) => generator.next_cid(),
                Err(poisoned) => poisoned.into_inner().next_cid(),
            }));
        let endpoint = Endpoint::new(
            Arc::new(endpoint_config(rng, u16::MAX)),
            None,
            config.mtu_discovery,
            None,
        );
        Ok(Self {
            core: Core::new(endpoint, Some(client), config, time, clock),
        })
    }

    /// Starts a connection to `server`; its first datagrams come out of `poll_transmit`.
    pub fn connect(&mut self, now: Instant, server: SocketAddr) -> Result<QuicConnId, Error> {
        self.core.connect(now, server)
    }
}

carrier_methods!(QuicClient);
