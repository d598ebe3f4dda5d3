//! A blocking driver over QUIC (`docs/PROTOCOL.md` §11): the same [`Connection`] as
//! [`crate::Client`], its bytes carried on one QUIC stream (`dp-quic`'s client side) over a
//! `std::net::UdpSocket` of its own, for networks that prefer QUIC to TCP.
//!
//! [`QuicClient`] has the methods of [`crate::Client`]. Two sans-IO machines are driven here:
//! the carrier turns datagrams into the stream, the connection turns the stream into frames.
//! Each has its own clock origin (they share no instants, only durations).
//!
//! This module owns a clock and a socket, so it opts out of the workspace's sans-IO bans.
#![allow(clippy::disallowed_methods)]

use crate::blocking::{Clock, Error, OsRng};
use crate::connection::{Connection, ConnectionConfig, Event, HANDSHAKE_PACKET_LEN_MAX};
use crate::dedup::Dedup;
use core::time::Duration;
use dp_core::limits::HANDSHAKE_TIMEOUT;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_proto::{PresenceState, ReceiptKind, Recipient, TypingState};
use dp_quic::{CloseCode, QuicConfig, QuicConnId, QuicEvent, TimeBase};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Bytes read from the stream per `read` call, and the largest datagram received.
const READ_CHUNK: usize = 64 * 1024;
/// Datagrams taken from the socket per wake-up before the machines run again.
const DATAGRAM_BUDGET: usize = 64;
/// How often the carrier sends a keep-alive, so NATs keep the path.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A connected client over QUIC: a [`Connection`] on a `dp_quic::QuicClient` stream, driven
/// over a blocking [`UdpSocket`].
///
/// [`QuicClient::connect`] returns once `Welcome` has arrived. Sending queues and writes at
/// once; [`QuicClient::next_event`] writes what is queued, then reads until an event arrives or
/// the timeout passes.
pub struct QuicClient<R: Rng = OsRng> {
    socket: UdpSocket,
    quic: dp_quic::QuicClient,
    stream: QuicConnId,
    quic_epoch: std::time::Instant,
    open: bool,
    /// The server finished the stream or the QUIC connection ended.
    ended: bool,
    conn: Connection<R>,
    clock: Clock,
    events: VecDeque<Event>,
    welcome: Option<Event>,
    recv_buf: Vec<u8>,
    read_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl<R: Rng> core::fmt::Debug for QuicClient<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QuicClient")
            .field("socket", &self.socket)
            .field("open", &self.open)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

fn quic_error(error: dp_quic::Error) -> Error {
    Error::Io(io::Error::other(error))
}

impl<R: Rng> QuicClient<R> {
    /// Connects to the server's QUIC address `addr`, opens the stream, runs the handshake and
    /// `Hello`, and waits for `Welcome` (at most the handshake timeout).
    /// `config.timestamp_ms` is set from the wall clock when it is 0.
    ///
    /// # Errors
    ///
    /// The socket failed, QUIC or the Noise handshake failed or was refused ([`Error::Eof`]),
    /// or no `Welcome` came in time ([`Error::Timeout`]).
    pub fn connect(addr: SocketAddr, config: ConnectionConfig, rng: R) -> Result<Self, Error> {
        Self::connect_with(addr, config, rng, Clock::new(), None)
    }

    /// As [`QuicClient::connect`], with a shared clock and the dedup window of an earlier
    /// connection of this device.
    ///
    /// # Errors
    ///
    /// As [`QuicClient::connect`].
    pub fn connect_with(
        addr: SocketAddr,
        mut config: ConnectionConfig,
        rng: R,
        clock: Clock,
        dedup: Option<Dedup>,
    ) -> Result<Self, Error> {
        if config.timestamp_ms == 0 {
            config.timestamp_ms = Clock::unix_ms();
        }
        let local: SocketAddr = if addr.is_ipv4() {
            (core::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (core::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        let quic_epoch = std::time::Instant::now();
        let unix = Duration::from_millis(Clock::unix_ms());
        let quic_config = QuicConfig {
            keep_alive: Some(QUIC_KEEP_ALIVE),
            ..QuicConfig::default()
        };
        let mut quic =
            dp_quic::QuicClient::new(quic_config, TimeBase::new(quic_epoch, unix), &mut OsRng)
                .map_err(quic_error)?;
        let stream = quic.connect(Instant::ZERO, addr).map_err(quic_error)?;
        let mut conn = Connection::new(clock.now(), config, rng)?;
        if let Some(dedup) = dedup {
            conn.set_dedup(dedup);
        }
        let mut client = Self {
            socket,
            quic,
            stream,
            quic_epoch,
            open: false,
            ended: false,
            conn,
            clock,
            events: VecDeque::new(),
            welcome: None,
            recv_buf: vec![0u8; READ_CHUNK],
            read_buf: vec![0u8; READ_CHUNK.max(HANDSHAKE_PACKET_LEN_MAX)],
            tx_buf: Vec::new(),
        };
        let deadline = clock.now().saturating_add(HANDSHAKE_TIMEOUT);
        loop {
            let left = deadline.saturating_duration_since(clock.now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            match client.next_event(left)? {
                Some(event @ Event::Connected { .. }) => {
                    client.welcome = Some(event);
                    return Ok(client);
                }
                Some(Event::Closed(reason)) => return Err(Error::Closed(reason)),
                Some(other) => client.events.push_back(other),
                None => return Err(Error::Timeout),
            }
        }
    }

    fn quic_now(&self) -> Instant {
        Instant(u64::try_from(self.quic_epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The `Connected` event that `Welcome` produced.
    pub fn welcome(&self) -> Option<&Event> {
        self.welcome.as_ref()
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.conn.device()
    }

    /// The connection.
    pub fn connection(&self) -> &Connection<R> {
        &self.conn
    }

    /// The clock this client uses.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The local address of its UDP socket.
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.socket.local_addr()?)
    }

    crate::blocking::session_commands!();

    /// Writes what is queued onto the stream, as far as QUIC's send window allows, and sends
    /// the datagrams that makes.
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.open && !self.ended {
            loop {
                let out = self.conn.poll_transmit(self.clock.now())?;
                if out.is_empty() {
                    break;
                }
                match self.quic.write(self.stream, out) {
                    Ok(0) => break,
                    Ok(n) => self.conn.handle_written(n),
                    Err(_) => {
                        self.ended = true;
                        break;
                    }
                }
            }
        }
        self.send_datagrams()
    }

    fn send_datagrams(&mut self) -> Result<(), Error> {
        let now = self.quic_now();
        while let Some(transmit) = self.quic.poll_transmit(now, &mut self.tx_buf) {
            let len = transmit.len.min(self.tx_buf.len());
            let size = transmit.segment_size.unwrap_or(len).max(1);
            for datagram in self.tx_buf[..len].chunks(size) {
                match self.socket.send_to(datagram, transmit.destination) {
                    Ok(_) => {}
                    // A lost datagram is QUIC's to send again.
                    Err(error)
                        if matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(error) => return Err(Error::Io(error)),
                }
            }
        }
        Ok(())
    }

    /// The carrier's events: the stream opens, has bytes, or ends.
    fn pump(&mut self) -> Result<(), Error> {
        while let Some(event) = self.quic.poll_event() {
            match event {
                QuicEvent::StreamOpened { conn, .. } if conn == self.stream => self.open = true,
                QuicEvent::Readable(conn) if conn == self.stream => loop {
                    match self.quic.read(self.stream, &mut self.read_buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let now = self.clock.now();
                            self.conn.handle_input(now, &self.read_buf[..n])?;
                        }
                        Err(_) => {
                            self.ended = true;
                            break;
                        }
                    }
                },
                QuicEvent::Closed { conn, .. } if conn == self.stream => self.ended = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes the datagrams waiting on the socket, blocking at most `wait` for the first, and
    /// feeds the stream to the connection.
    fn receive(&mut self, wait: Duration) -> Result<(), Error> {
        if wait.is_zero() {
            self.socket.set_nonblocking(true)?;
        } else {
            self.socket.set_read_timeout(Some(wait))?;
        }
        for taken in 0..DATAGRAM_BUDGET {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    let now = self.quic_now();
                    self.quic
                        .handle_datagram(now, from, None, None, &self.recv_buf[..n]);
                    // Read the stream after each datagram: a connection that a later datagram
                    // closes keeps no data to read, and the server's last frames (GoAway)
                    // may be in the one before.
                    self.pump()?;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error for an earlier datagram (port unreachable): QUIC times out.
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(error) => return Err(Error::Io(error)),
            }
            if taken == 0 {
                self.socket.set_nonblocking(true)?;
            }
        }
        self.socket.set_nonblocking(false)?;
        Ok(())
    }

    /// Writes what is queued, then returns the next event, waiting for it at most `timeout`
    /// (`None` when it passed). After [`Event::Closed`] every call returns `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// The socket failed, the server ended the stream or the QUIC connection
    /// ([`Error::Eof`], after every event that arrived before), or the server broke the
    /// protocol.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let deadline = self.clock.now().saturating_add(timeout);
        let mut peeked = false;
        loop {
            let now = self.clock.now();
            self.conn.handle_timeout(now);
            self.quic.handle_timeout(self.quic_now());
            self.pump()?;
            self.flush()?;
            self.pump()?;
            while let Some(event) = self.conn.poll_event() {
                self.events.push_back(event);
            }
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.conn.state() == crate::State::Closed {
                return Ok(None);
            }
            if self.ended {
                return Err(Error::Eof);
            }
            let mut wait = self
                .conn
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline))
                .saturating_duration_since(now);
            if let Some(at) = self.quic.poll_timeout() {
                wait = wait.min(at.saturating_duration_since(self.quic_now()));
            }
            if wait.is_zero() {
                if now >= deadline {
                    // Out of time (or a zero timeout): still take, once, what the socket
                    // already holds, so that polling with `Duration::ZERO` makes progress.
                    if peeked {
                        return Ok(None);
                    }
                    peeked = true;
                    self.receive(Duration::ZERO)?;
                    continue;
                }
                // A timer is due: run it without sleeping (the socket gets a 1 ms look).
                wait = Duration::from_millis(1);
            }
            self.receive(wait)?;
        }
    }

    /// Takes the dedup window, to carry it to this device's next connection.
    pub fn take_dedup(&mut self) -> Dedup {
        self.conn.take_dedup()
    }

    /// Closes the QUIC connection at once (`NO_ERROR`), without writing what is still queued.
    pub fn abort(mut self) {
        let now = self.quic_now();
        self.quic.close(now, self.stream, CloseCode::NO_ERROR);
        let _ = self.send_datagrams();
    }
}
