//! A blocking driver over `std::net::TcpStream`, for simple programs and tests.
//!
//! This module owns a clock and reads the OS's randomness, so it opts out of the workspace's
//! sans-IO bans; the protocol itself is [`Connection`].
#![allow(clippy::disallowed_methods)]

use crate::connection::{
    ClientError, CloseReason, Connection, ConnectionConfig, Event, HANDSHAKE_PACKET_LEN_MAX,
};
use crate::dedup::Dedup;
use core::time::Duration;
use dp_core::limits::HANDSHAKE_TIMEOUT;
use dp_core::{ConversationId, DeviceId, Instant, MessageId, Rng};
use dp_proto::{PresenceState, ReceiptKind, Recipient, TypingState};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Randomness from the operating system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl Rng for OsRng {
    fn public_fill(&mut self, dest: &mut [u8]) {
        os_fill(dest);
    }

    fn private_fill(&mut self, dest: &mut [u8]) {
        os_fill(dest);
    }
}

fn os_fill(dest: &mut [u8]) {
    // Without OS randomness no key or nonce can be made safely: stop rather than go on.
    if let Err(error) = getrandom::getrandom(dest) {
        eprintln!("fatal: the operating system gave no randomness: {error}");
        std::process::abort();
    }
}

/// A monotonic clock giving [`dp_core::Instant`]s from its creation, and the wall clock. Copy
/// it to share one epoch between threads.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now(self) -> Instant {
        Instant(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Why a blocking call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed.
    Io(io::Error),
    /// The protocol failed.
    Client(ClientError),
    /// The connection closed before the call could complete.
    Closed(CloseReason),
    /// The server closed the socket.
    Eof,
    /// The handshake and `Welcome` did not arrive in time.
    Timeout,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io(error) => write!(f, "socket error: {error}"),
            Self::Client(error) => write!(f, "protocol error: {error}"),
            Self::Closed(reason) => write!(f, "connection closed: {reason:?}"),
            Self::Eof => write!(f, "the server closed the connection"),
            Self::Timeout => write!(f, "no answer from the server in time"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<ClientError> for Error {
    fn from(error: ClientError) -> Self {
        Self::Client(error)
    }
}

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// The session commands of a blocking driver (`Client`, `QuicClient`): each queues on the
/// driver's `conn` with the time of its `clock`, then writes with its `flush`.
macro_rules! session_commands {
    () => {
        /// Sends `body` to `recipient` under a fresh random message id, which it returns.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn send(&mut self, recipient: Recipient, body: &[u8]) -> Result<MessageId, Error> {
            let id = self.conn.new_message_id();
            self.send_with_id(id, recipient, body)?;
            Ok(id)
        }

        /// Sends `body` to `recipient` under the id `message`.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn send_with_id(
            &mut self,
            message: MessageId,
            recipient: Recipient,
            body: &[u8],
        ) -> Result<(), Error> {
            self.conn.send(self.clock.now(), message, recipient, body)?;
            self.flush()
        }

        /// Sends a `Ping`; the answer arrives as [`Event::Pong`].
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn ping(&mut self, nonce: u64) -> Result<(), Error> {
            self.conn.ping(self.clock.now(), nonce)?;
            self.flush()
        }

        /// Sends a control operation (`Request`); its answer arrives as [`Event::Response`].
        ///
        /// # Errors
        ///
        /// The connection is closed, or the socket failed.
        pub fn request(&mut self, request_id: u32, op: u16, body: &[u8]) -> Result<(), Error> {
            self.conn.request(self.clock.now(), request_id, op, body)?;
            self.flush()
        }

        /// Acknowledges a delivery the application has stored (see
        /// [`crate::AckMode::Application`]); the `DeliveryAck` goes out with the next write.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn ack(&mut self, message: MessageId) -> Result<(), Error> {
            self.conn.ack(self.clock.now(), message)?;
            self.flush()
        }

        /// Sends a typing indicator for `conversation`.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn typing(
            &mut self,
            conversation: ConversationId,
            state: TypingState,
        ) -> Result<(), Error> {
            self.conn.typing(self.clock.now(), conversation, state)?;
            self.flush()
        }

        /// Sends delivered or read receipts for `messages` of `conversation`.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn receipt(
            &mut self,
            conversation: ConversationId,
            kind: ReceiptKind,
            messages: &[MessageId],
        ) -> Result<(), Error> {
            self.conn
                .receipt(self.clock.now(), conversation, kind, messages)?;
            self.flush()
        }

        /// Sets this device's presence.
        ///
        /// # Errors
        ///
        /// The connection is closed or the socket failed.
        pub fn set_presence(&mut self, state: PresenceState) -> Result<(), Error> {
            self.conn.set_presence(self.clock.now(), state)?;
            self.flush()
        }
    };
}
pub(crate) use session_commands;

/// A connected client: a [`Connection`] driven over a blocking [`TcpStream`].
///
/// [`Client::connect`] returns once `Welcome` has arrived. Sending queues and writes at once;
/// [`Client::next_event`] writes what is queued (acknowledgements included), then reads until
/// an event arrives or the timeout passes.
#[derive(Debug)]
pub struct Client<R: Rng = OsRng> {
    stream: TcpStream,
    conn: Connection<R>,
    clock: Clock,
    events: VecDeque<Event>,
    welcome: Option<Event>,
    read_buf: Vec<u8>,
}

impl<R: Rng> Client<R> {
    /// Connects to `addr`, runs the handshake and `Hello`, and waits for `Welcome` (at most the
    /// handshake timeout). `config.timestamp_ms` is set from the wall clock when it is 0.
    ///
    /// # Errors
    ///
    /// The socket failed, the handshake was refused (the server does not answer a refused
    /// handshake: that shows as [`Error::Eof`] or [`Error::Timeout`]) or timed out.
    pub fn connect(addr: SocketAddr, config: ConnectionConfig, rng: R) -> Result<Self, Error> {
        Self::connect_with(addr, config, rng, Clock::new(), None)
    }

    /// As [`Client::connect`], with a shared clock and the dedup window of an earlier
    /// connection of this device (see [`Client::take_dedup`]).
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
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
        let stream = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)?;
        stream.set_nodelay(true)?;
        let mut conn = Connection::new(clock.now(), config, rng)?;
        if let Some(dedup) = dedup {
            conn.set_dedup(dedup);
        }
        let mut client = Self {
            stream,
            conn,
            clock,
            events: VecDeque::new(),
            welcome: None,
            read_buf: vec![0u8; READ_CHUNK.max(HANDSHAKE_PACKET_LEN_MAX)],
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

    session_commands!();

    /// Writes everything queued.
    ///
    /// # Errors
    ///
    /// The socket failed.
    pub fn flush(&mut self) -> Result<(), Error> {
        let out = self.conn.poll_transmit(self.clock.now())?;
        if !out.is_empty() {
            self.stream.write_all(out)?;
            let n = out.len();
            self.conn.handle_written(n);
        }
        Ok(())
    }

    /// Writes what is queued, then returns the next event, waiting for it at most `timeout`
    /// (`None` when it passed). After [`Event::Closed`] every call returns `Ok(None)` at once.
    ///
    /// # Errors
    ///
    /// The socket failed, the server closed it ([`Error::Eof`]), or the server broke the
    /// protocol.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let deadline = self.clock.now().saturating_add(timeout);
        let mut peeked = false;
        loop {
            let now = self.clock.now();
            self.conn.handle_timeout(now);
            self.flush()?;
            while let Some(event) = self.conn.poll_event() {
                self.events.push_back(event);
            }
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.conn.state() == crate::State::Closed {
                return Ok(None);
            }
            let wake = self
                .conn
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            let wait = wake.saturating_duration_since(now);
            if wait.is_zero() {
                if now < deadline {
                    continue;
                }
                // Out of time (or a zero timeout): still take, once, what the socket already
                // holds, so that polling with `Duration::ZERO` makes progress.
                if peeked || !self.read_ready()? {
                    return Ok(None);
                }
                peeked = true;
                continue;
            }
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(&mut self.read_buf) {
                Ok(0) => return Err(Error::Eof),
                Ok(n) => {
                    let now = self.clock.now();
                    self.conn.handle_input(now, &self.read_buf[..n])?;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Error::Io(error)),
            }
        }
    }

    /// Reads what the socket holds now, without waiting; `true` if it read anything.
    fn read_ready(&mut self) -> Result<bool, Error> {
        self.stream.set_nonblocking(true)?;
        let read = self.stream.read(&mut self.read_buf);
        self.stream.set_nonblocking(false)?;
        match read {
            Ok(0) => Err(Error::Eof),
            Ok(n) => {
                let now = self.clock.now();
                self.conn.handle_input(now, &self.read_buf[..n])?;
                Ok(true)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(error) => Err(Error::Io(error)),
        }
    }

    /// Takes the dedup window, to carry it to this device's next connection
    /// ([`Client::connect_with`]).
    pub fn take_dedup(&mut self) -> Dedup {
        self.conn.take_dedup()
    }

    /// Closes the socket at once, without writing what is still queued (acknowledgements
    /// included).
    pub fn abort(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// A client over a socket and connection that a caller drove itself (the inverse of
    /// [`Client::into_parts`]).
    pub fn from_parts(stream: TcpStream, conn: Connection<R>, clock: Clock) -> Self {
        Self {
            stream,
            conn,
            clock,
            events: VecDeque::new(),
            welcome: None,
            read_buf: vec![0u8; READ_CHUNK],
        }
    }

    /// The socket, the connection and the clock, for a caller that drives them itself (for
    /// example on a non-blocking event loop). Events not yet returned are dropped.
    pub fn into_parts(self) -> (TcpStream, Connection<R>, Clock) {
        (self.stream, self.conn, self.clock)
    }
}
