//! The QUIC carrier in a shard (`docs/design/0008-quic-carrier.md`): a `dp_quic::QuicServer`
//! bridged to the shard's connections the way a TCP socket is, without the socket. The
//! backend owns the UDP socket and hands datagrams in ([`QuicBridge::handle_datagram`]) and
//! out ([`QuicBridge::transmit`]); everything else is here.
//!
//! - A connection's first stream opens a shard connection (`handle_connect`); stream bytes go
//!   to `handle_received`, the shard's output is written to the stream (a write that QUIC's
//!   send window refuses waits for `Writable`, as a TCP write waits for `EPOLLOUT`).
//! - `ShardEvent::Close` writes out what is left, then closes QUIC with the code of
//!   `docs/PROTOCOL.md` §11.3 (the carrier lingers until those bytes are acknowledged).
//! - `ShardEvent::HandOff`: the session moves to its home shard with `take_handoff`, the QUIC
//!   connection stays here (its state belongs to this shard's endpoint), and the stream bytes
//!   are relayed over the shard links ([`Relay`]). Each direction of a relayed connection
//!   has at most [`RELAY_WINDOW`] bytes in flight between the shards; the receiving side
//!   returns credit as it consumes them, so a slow side stops the other, and QUIC's flow
//!   control then stops the client.

use crate::link::{PeerMsg, ShardLinks};
use crate::{Clock, OsRng, ServerConfig};
use core::net::SocketAddr;
use core::time::Duration;
use dp_core::{Instant, Rng};
use dp_quic::{
    Certificate, CloseCode, QuicConfig, QuicConnId, QuicEvent, QuicServer, QuicStats, TimeBase,
    Transmit,
};
use dp_shard::{CloseReason, ConnId, HandOff, Shard, ShardEvent, ShardId};
use std::collections::HashMap;
use std::io;

/// Stream bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes of one relayed connection in flight between two shards, per direction.
pub(crate) const RELAY_WINDOW: usize = 256 * 1024;
/// Connections one shard's QUIC server holds (established and handshaking).
pub(crate) const QUIC_CONNS_MAX: usize = 1 << 18;

/// A QUIC relay message between the shard that holds a QUIC connection (accepting) and the
/// shard that holds its session (home). `QuicConnId`s are the accepting shard's.
pub(crate) enum Relay {
    /// accepting → home: the session to adopt.
    HandOff(Box<HandOff>, QuicConnId),
    /// accepting → home: bytes read from the stream.
    Received(QuicConnId, Vec<u8>),
    /// accepting → home: the QUIC connection is gone.
    Gone(QuicConnId),
    /// accepting → home: this many relayed bytes were taken by the QUIC stream (credit).
    Written(QuicConnId, usize),
    /// home → accepting: bytes the session wrote.
    Write(QuicConnId, Vec<u8>),
    /// home → accepting: close after writing out what was relayed (also: adoption refused).
    Close(QuicConnId, CloseCode),
    /// home → accepting: this many received bytes were fed to the shard (credit).
    Consumed(QuicConnId, usize),
}

/// A QUIC connection with an open stream on this shard.
enum Entry {
    /// Its session runs on this shard.
    Local {
        conn: ConnId,
        /// The shard closed it; QUIC closes once its output is written.
        closing: Option<CloseCode>,
    },
    /// Its session runs on shard `home`; this shard relays.
    Relayed {
        home: usize,
        /// Bytes from the home shard that the QUIC stream has not taken yet.
        pending: Vec<u8>,
        /// Bytes relayed to the home shard and not yet consumed there.
        in_flight: usize,
        closing: Option<CloseCode>,
    },
}

/// A session on this shard whose QUIC connection another shard holds.
struct Remote {
    from: usize,
    quic: QuicConnId,
    /// Bytes sent to the accepting shard and not yet taken by its QUIC stream.
    unacked: usize,
}

/// Counters of the bridge, published with the shard's.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QuicGauges {
    /// QUIC connections held (established, handshaking or closing).
    pub(crate) conns: u64,
    /// Connections whose session moved to another shard and is relayed there.
    pub(crate) relayed: u64,
    pub(crate) datagrams_in: u64,
    pub(crate) datagrams_out: u64,
    /// Datagrams that reached no connection.
    pub(crate) datagrams_dropped: u64,
    /// Datagrams the socket did not take (QUIC sends them again).
    pub(crate) send_failed: u64,
    /// Batches sent with one `sendmsg` (`UDP_SEGMENT`).
    pub(crate) gso_batches: u64,
}

/// What one socket does with a `Transmit`: a batch of several datagrams goes out as one
/// `sendmsg` with `UDP_SEGMENT` (GSO) while the kernel accepts it, otherwise (and for single
/// datagrams) one `sendto` each.
#[derive(Debug)]
pub(crate) struct UdpSender {
    gso: bool,
    pub(crate) gso_batches: u64,
}

impl UdpSender {
    pub(crate) fn new() -> Self {
        Self {
            gso: true,
            gso_batches: 0,
        }
    }

    /// Sends `bytes` as `transmit` says; returns how many datagrams the socket did not take.
    pub(crate) fn send(
        &mut self,
        socket: &impl std::os::fd::AsRawFd,
        transmit: &Transmit,
        bytes: &[u8],
    ) -> u64 {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg, sendto};
        let fd = socket.as_raw_fd();
        let to = SockaddrStorage::from(transmit.destination);
        let size = transmit.segment_size.unwrap_or(bytes.len()).max(1);
        if self.gso
            && bytes.len() > size
            && let Ok(segment) = u16::try_from(size)
        {
            let iov = [io::IoSlice::new(bytes)];
            let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
            match sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to)) {
                Ok(_) => {
                    self.gso_batches += 1;
                    return 0;
                }
                // No GSO on this kernel, socket or device: one datagram at a time from now on.
                Err(nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)
                | Err(nix::errno::Errno::EOPNOTSUPP) => self.gso = false,
                // A full buffer or another transient failure: QUIC sends them again.
                Err(_) => return bytes.len().div_ceil(size) as u64,
            }
        }
        let mut failed = 0;
        for datagram in bytes.chunks(size) {
            if sendto(fd, datagram, &to, MsgFlags::empty()).is_err() {
                failed += 1;
            }
        }
        failed
    }
}

/// One shard's QUIC server and its table of connections.
pub(crate) struct QuicBridge {
    server: QuicServer,
    conns: HashMap<QuicConnId, Entry>,
    /// Shard connections whose stream is a local QUIC connection.
    local: HashMap<ConnId, QuicConnId>,
    /// Home side: (accepting shard, its QUIC id) → the session's connection here, and back.
    remote: HashMap<(usize, QuicConnId), ConnId>,
    remote_of: HashMap<ConnId, Remote>,
    accepting: bool,
    read_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    sender: UdpSender,
    relayed: u64,
    send_failed: u64,
}

/// The carrier settings for a server configuration.
pub(crate) fn quic_config(config: &ServerConfig) -> QuicConfig {
    QuicConfig {
        conns_max: QUIC_CONNS_MAX,
        conns_per_source_max: config.conns_per_source_max,
        idle_timeout: config.idle_timeout,
        // Servers send no keep-alives; the client's keep the path open.
        keep_alive: None,
        ..QuicConfig::default()
    }
}

/// The code a QUIC connection closes with, for each reason a shard gives (§11.3).
pub(crate) fn close_code(reason: CloseReason) -> CloseCode {
    match reason {
        CloseReason::Peer => CloseCode::NO_ERROR,
        CloseReason::Crypto => CloseCode::CRYPTO,
        CloseReason::Protocol(_) => CloseCode::PROTOCOL,
        CloseReason::Idle | CloseReason::HandshakeTimeout => CloseCode::TIMEOUT,
        CloseReason::SlowConsumer => CloseCode::SLOW_CONSUMER,
        CloseReason::ShuttingDown => CloseCode::SHUTTING_DOWN,
        _ => CloseCode::INTERNAL,
    }
}

fn send(links: &mut ShardLinks, to: usize, relay: Relay) {
    if let Some(outbox) = links.to_shards.get_mut(to).and_then(Option::as_mut) {
        outbox.send(PeerMsg::Quic(relay));
    }
}

impl QuicBridge {
    /// Shard `index`'s QUIC server, with a certificate of its own and the server's clock.
    pub(crate) fn new(index: usize, config: &ServerConfig, clock: Clock) -> io::Result<Self> {
        let mut rng = OsRng;
        let cert = Certificate::generate(&mut rng).map_err(io::Error::other)?;
        let unix_now = Duration::from_millis(Clock::unix_ms());
        let since_epoch = Duration::from_nanos(clock.now().as_nanos());
        let time = TimeBase::new(clock.epoch, unix_now.saturating_sub(since_epoch));
        let shard = u16::try_from(index).unwrap_or(u16::MAX);
        let server = QuicServer::new(quic_config(config), &cert, time, shard, &mut rng)
            .map_err(io::Error::other)?;
        Ok(Self {
            server,
            conns: HashMap::new(),
            local: HashMap::new(),
            remote: HashMap::new(),
            remote_of: HashMap::new(),
            accepting: true,
            read_buf: vec![0u8; READ_CHUNK],
            tx_buf: Vec::new(),
            sender: UdpSender::new(),
            relayed: 0,
            send_failed: 0,
        })
    }

    /// A datagram arrived on the shard's UDP socket.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.server.handle_datagram(now, from, None, None, bytes);
    }

    /// When the carrier's next timer is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    /// Runs the carrier's timers due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|at| at <= now) {
            self.server.handle_timeout(now);
        }
    }

    /// Sends every datagram batch the carrier has on `socket` (non-blocking; GSO where the
    /// kernel takes it). A datagram the socket does not take is counted; QUIC sends it again.
    pub(crate) fn transmit(&mut self, now: Instant, socket: &impl std::os::fd::AsRawFd) {
        while let Some(transmit) = self.server.poll_transmit(now, &mut self.tx_buf) {
            let len = transmit.len.min(self.tx_buf.len());
            self.send_failed += self.sender.send(socket, &transmit, &self.tx_buf[..len]);
        }
    }

    /// Whether the server still holds QUIC connections (closing ones included).
    pub(crate) fn busy(&self) -> bool {
        self.server.conns_len() > 0
    }

    /// Stops taking new connections (shutdown): a new stream is refused.
    pub(crate) fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    pub(crate) fn gauges(&self) -> QuicGauges {
        let stats: QuicStats = self.server.stats();
        QuicGauges {
            conns: self.server.conns_len() as u64,
            relayed: self.relayed,
            datagrams_in: stats.datagrams_in,
            datagrams_out: stats.datagrams_out,
            datagrams_dropped: stats.datagrams_dropped,
            send_failed: self.send_failed,
            gso_batches: self.sender.gso_batches,
        }
    }

    /// Routes the carrier's events to the shard (and the links, for relayed connections).
    pub(crate) fn handle_events<R: Rng>(
        &mut self,
        now: Instant,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) {
        while let Some(event) = self.server.poll_event() {
            match event {
                QuicEvent::StreamOpened { conn, peer } => {
                    let id = if self.accepting {
                        shard.handle_connect(now, peer)
                    } else {
                        None
                    };
                    match id {
                        Some(id) => {
                            self.conns.insert(
                                conn,
                                Entry::Local {
                                    conn: id,
                                    closing: None,
                                },
                            );
                            self.local.insert(id, conn);
                            self.read(now, conn, shard, links);
                        }
                        None => self.server.close(now, conn, CloseCode::REFUSED),
                    }
                }
                QuicEvent::Readable(conn) => self.read(now, conn, shard, links),
                QuicEvent::Writable(conn) => match self.conns.get(&conn) {
                    Some(Entry::Local { conn: id, .. }) => {
                        let id = *id;
                        self.flush_local(now, id, shard);
                    }
                    Some(Entry::Relayed { .. }) => self.write_pending(now, conn, links),
                    None => {}
                },
                QuicEvent::Closed { conn, .. } => self.gone(conn, shard, links),
            }
        }
    }

    /// Reads what the stream has into the shard, or relays it, within the relay window.
    fn read<R: Rng>(
        &mut self,
        now: Instant,
        quic: QuicConnId,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) {
        loop {
            let limit = match self.conns.get(&quic) {
                Some(Entry::Local { closing: None, .. }) => READ_CHUNK,
                Some(Entry::Relayed {
                    in_flight,
                    closing: None,
                    ..
                }) => READ_CHUNK.min(RELAY_WINDOW.saturating_sub(*in_flight)),
                _ => return,
            };
            if limit == 0 {
                return;
            }
            match self.server.read(quic, &mut self.read_buf[..limit]) {
                Ok(0) => return,
                Ok(n) => match self.conns.get_mut(&quic) {
                    Some(Entry::Local { conn, .. }) => {
                        shard.handle_received(now, *conn, &self.read_buf[..n]);
                    }
                    Some(Entry::Relayed {
                        home, in_flight, ..
                    }) => {
                        *in_flight += n;
                        let bytes = self.read_buf[..n].to_vec();
                        send(links, *home, Relay::Received(quic, bytes));
                    }
                    None => return,
                },
                // The client finished or reset its stream, or it is closing: as a TCP EOF.
                Err(_) => {
                    self.server.close(now, quic, CloseCode::NO_ERROR);
                    self.gone(quic, shard, links);
                    return;
                }
            }
        }
    }

    /// The QUIC connection is gone: its session closes, wherever it runs.
    fn gone<R: Rng>(&mut self, quic: QuicConnId, shard: &mut Shard<R>, links: &mut ShardLinks) {
        match self.conns.remove(&quic) {
            Some(Entry::Local { conn, .. }) => {
                self.local.remove(&conn);
                shard.handle_closed(conn);
            }
            Some(Entry::Relayed { home, .. }) => send(links, home, Relay::Gone(quic)),
            None => {}
        }
    }

    /// Writes what the shard has for local connection `id` to its stream; once a closing
    /// connection's output is all written, closes it.
    fn flush_local<R: Rng>(&mut self, now: Instant, id: ConnId, shard: &mut Shard<R>) {
        let Some(&quic) = self.local.get(&id) else {
            return;
        };
        loop {
            let bytes = shard.poll_transmit(now, id);
            if bytes.is_empty() {
                break;
            }
            match self.server.write(quic, bytes) {
                Ok(0) => return,
                Ok(n) => shard.handle_written(id, n),
                Err(_) => {
                    self.local.remove(&id);
                    self.conns.remove(&quic);
                    self.server.close(now, quic, CloseCode::INTERNAL);
                    shard.handle_closed(id);
                    return;
                }
            }
        }
        if let Some(Entry::Local {
            closing: Some(code),
            ..
        }) = self.conns.get(&quic)
        {
            let code = *code;
            self.conns.remove(&quic);
            self.local.remove(&id);
            self.server.close(now, quic, code);
            shard.handle_closed(id);
        }
    }

    /// Home side: sends what the shard has for relayed session `id` to the accepting shard,
    /// within the window (or all of it, when it closes).
    fn flush_remote<R: Rng>(
        &mut self,
        now: Instant,
        id: ConnId,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
        all: bool,
    ) {
        let Some(remote) = self.remote_of.get_mut(&id) else {
            return;
        };
        loop {
            let room = if all {
                usize::MAX
            } else {
                RELAY_WINDOW.saturating_sub(remote.unacked)
            };
            if room == 0 {
                return;
            }
            let bytes = shard.poll_transmit(now, id);
            if bytes.is_empty() {
                return;
            }
            let take = bytes.len().min(room);
            let chunk = bytes[..take].to_vec();
            shard.handle_written(id, take);
            remote.unacked += take;
            send(links, remote.from, Relay::Write(remote.quic, chunk));
        }
    }

    /// Writes what a shard marked dirty, if its connection is carried by QUIC; false if it is
    /// not (a TCP socket).
    pub(crate) fn flush<R: Rng>(
        &mut self,
        now: Instant,
        id: ConnId,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) -> bool {
        if self.local.contains_key(&id) {
            self.flush_local(now, id, shard);
            true
        } else if self.remote_of.contains_key(&id) {
            self.flush_remote(now, id, shard, links, false);
            true
        } else {
            false
        }
    }

    /// `ShardEvent::Close` for a QUIC connection: write out, then close. False if `conn` is
    /// not carried by QUIC.
    pub(crate) fn handle_close<R: Rng>(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: CloseReason,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) -> bool {
        let code = close_code(reason);
        if let Some(quic) = self.local.get(&conn) {
            if let Some(Entry::Local { closing, .. }) = self.conns.get_mut(quic) {
                *closing = Some(code);
            }
            self.flush_local(now, conn, shard);
            true
        } else if self.remote_of.contains_key(&conn) {
            self.flush_remote(now, conn, shard, links, true);
            if let Some(remote) = self.remote_of.remove(&conn) {
                self.remote.remove(&(remote.from, remote.quic));
                send(links, remote.from, Relay::Close(remote.quic, code));
            }
            shard.handle_closed(conn);
            true
        } else {
            false
        }
    }

    /// `ShardEvent::HandOff` for a QUIC connection: the session moves to `to`, the QUIC
    /// connection stays and is relayed. False if `conn` is not carried by QUIC.
    pub(crate) fn handle_handoff<R: Rng>(
        &mut self,
        now: Instant,
        conn: ConnId,
        to: ShardId,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) -> bool {
        if !self.local.contains_key(&conn) {
            return false;
        }
        // The handshake reply goes out before the session moves.
        self.flush_local(now, conn, shard);
        let Some(quic) = self.local.remove(&conn) else {
            return true;
        };
        let home = usize::from(to.0);
        let handoff = shard.take_handoff(conn);
        let reachable = links.to_shards.get(home).is_some_and(Option::is_some);
        match handoff {
            Some(handoff) if reachable => {
                self.conns.insert(
                    quic,
                    Entry::Relayed {
                        home,
                        pending: Vec::new(),
                        in_flight: 0,
                        closing: None,
                    },
                );
                self.relayed += 1;
                send(links, home, Relay::HandOff(handoff, quic));
            }
            _ => {
                self.conns.remove(&quic);
                self.server.close(now, quic, CloseCode::INTERNAL);
                shard.handle_closed(conn);
            }
        }
        true
    }

    /// Accepting side: writes bytes relayed from the home shard to the stream, returns the
    /// credit, and closes once a closing connection's bytes are all written.
    fn write_pending(&mut self, now: Instant, quic: QuicConnId, links: &mut ShardLinks) {
        let Some(Entry::Relayed {
            home,
            pending,
            closing,
            ..
        }) = self.conns.get_mut(&quic)
        else {
            return;
        };
        let home = *home;
        let mut written = 0;
        let mut failed = false;
        while written < pending.len() {
            match self.server.write(quic, &pending[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.conns.remove(&quic);
            self.server.close(now, quic, CloseCode::INTERNAL);
            send(links, home, Relay::Gone(quic));
            return;
        }
        pending.drain(..written);
        let done = pending.is_empty();
        let close = *closing;
        if written > 0 && close.is_none() {
            send(links, home, Relay::Written(quic, written));
        }
        if let (true, Some(code)) = (done, close) {
            self.conns.remove(&quic);
            self.server.close(now, quic, code);
        }
    }

    /// One turn of shutting down (after `Shard::handle_shutdown`): runs the carrier's timers
    /// and events, closes QUIC connections as the shard closes them (after their `GoAway`),
    /// writes what the shard has for them, and routes link-bound events. The shard's closes of
    /// TCP connections are left to the backend's own shutdown loop, which writes them out.
    pub(crate) fn drive_shutdown<R: Rng>(
        &mut self,
        now: Instant,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) {
        self.handle_timeout(now);
        self.handle_events(now, shard, links);
        while let Some(event) = shard.poll_event() {
            match event {
                ShardEvent::Close { conn, reason } => {
                    self.handle_close(now, conn, reason, shard, links);
                }
                ShardEvent::HandOff { conn, .. } => {
                    self.handle_close(now, conn, CloseReason::ShuttingDown, shard, links);
                }
                event @ (ShardEvent::ToShard { .. } | ShardEvent::ToControl(_)) => {
                    links.route(shard, event);
                }
            }
        }
        while let Some(id) = shard.poll_dirty() {
            self.flush(now, id, shard, links);
        }
    }

    /// A relay message from shard `from`.
    pub(crate) fn handle_relay<R: Rng>(
        &mut self,
        now: Instant,
        from: usize,
        relay: Relay,
        shard: &mut Shard<R>,
        links: &mut ShardLinks,
    ) {
        match relay {
            Relay::HandOff(handoff, quic) => match shard.adopt(now, *handoff) {
                Some(id) => {
                    self.remote.insert((from, quic), id);
                    self.remote_of.insert(
                        id,
                        Remote {
                            from,
                            quic,
                            unacked: 0,
                        },
                    );
                    self.flush_remote(now, id, shard, links, false);
                }
                None => send(links, from, Relay::Close(quic, CloseCode::REFUSED)),
            },
            Relay::Received(quic, bytes) => {
                if let Some(&id) = self.remote.get(&(from, quic)) {
                    shard.handle_received(now, id, &bytes);
                    send(links, from, Relay::Consumed(quic, bytes.len()));
                }
            }
            Relay::Gone(quic) => {
                if let Some(id) = self.remote.remove(&(from, quic)) {
                    self.remote_of.remove(&id);
                    shard.handle_closed(id);
                }
            }
            Relay::Written(quic, n) => {
                if let Some(&id) = self.remote.get(&(from, quic)) {
                    if let Some(remote) = self.remote_of.get_mut(&id) {
                        remote.unacked = remote.unacked.saturating_sub(n);
                    }
                    self.flush_remote(now, id, shard, links, false);
                }
            }
            Relay::Write(quic, bytes) => {
                if let Some(Entry::Relayed { pending, .. }) = self.conns.get_mut(&quic) {
                    pending.extend_from_slice(&bytes);
                    self.write_pending(now, quic, links);
                }
            }
            Relay::Close(quic, code) => {
                if let Some(Entry::Relayed { closing, .. }) = self.conns.get_mut(&quic) {
                    *closing = Some(code);
                    self.write_pending(now, quic, links);
                }
            }
            Relay::Consumed(quic, n) => {
                if let Some(Entry::Relayed { in_flight, .. }) = self.conns.get_mut(&quic) {
                    *in_flight = in_flight.saturating_sub(n);
                    self.read(now, quic, shard, links);
                }
            }
        }
    }
}
