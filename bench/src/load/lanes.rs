//! Lanes: one sender and one receiver socket each, for the three targets — a plain TCP echo,
//! CommuCat (two devices of the client library, relayed by the server) and NATS (a publisher
//! and a subscriber on one subject).

use super::fanout::FanoutLane;
use commucat_client::{Client, Clock, Connection, ConnectionConfig, DeviceId, Event, Suite};
use dp_core::{MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::Recipient;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// The most bytes a lane queues for one socket; past it the lane reports backpressure.
pub(super) const OUT_BYTES_MAX: usize = 4 << 20;
/// Tokens reserved per lane on a load thread's poll: lane `i`'s socket `k` (0 the sender)
/// has token `i * SOCKETS_PER_LANE_MAX + k`.
pub const SOCKETS_PER_LANE_MAX: usize = 1024;
const _: () = assert!(super::fanout::GROUP_MAX < SOCKETS_PER_LANE_MAX);
/// Bytes read per call.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Set-up (connect, handshake, subscribe) must finish within this.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A non-blocking socket with its unsent bytes and unparsed input.
#[derive(Debug)]
pub(super) struct Pipe {
    pub(super) stream: TcpStream,
    pub(super) out: Vec<u8>,
    out_at: usize,
    pub(super) input: Vec<u8>,
}

impl Pipe {
    pub(super) fn new(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream: TcpStream::from_std(stream),
            out: Vec::new(),
            out_at: 0,
            input: Vec::new(),
        })
    }

    pub(super) fn pending(&self) -> usize {
        self.out.len() - self.out_at
    }

    pub(super) fn write_out(&mut self) -> io::Result<()> {
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        } else if self.out_at >= 64 * 1024 && self.out_at * 2 >= self.out.len() {
            // Never fully written under backpressure: drop the written half.
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
        Ok(())
    }

    /// Reads everything available into `input`.
    pub(super) fn read_in(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes what `conn` has queued to `stream` without blocking.
pub(super) fn write_conn(
    conn: &mut Connection<SeededRng>,
    stream: &mut TcpStream,
    clock: Clock,
) -> io::Result<()> {
    loop {
        let out = conn
            .poll_transmit(clock.now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        if out.is_empty() {
            return Ok(());
        }
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.handle_written(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads what is available on `stream` into `conn`; calls `f` for each event.
pub(super) fn read_conn(
    conn: &mut Connection<SeededRng>,
    stream: &mut TcpStream,
    clock: Clock,
    scratch: &mut [u8],
    mut f: impl FnMut(Event),
) -> io::Result<()> {
    loop {
        match stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                conn.handle_input(clock.now(), &scratch[..n])
                    .map_err(|e| io::Error::other(e.to_string()))?;
                while let Some(event) = conn.poll_event() {
                    f(event);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn stamp_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// One load lane.
#[derive(Debug)]
pub enum Lane {
    /// A plain TCP echo: the same socket sends and receives.
    Echo(EchoLane),
    /// A CommuCat sender and recipient device.
    Relay(Box<RelayLane>),
    /// A NATS publisher and subscriber.
    Nats(NatsLane),
    /// A UDP echo: one datagram per message, the same socket sends and receives.
    EchoUdp(EchoUdpLane),
    /// One sender and a group of recipients (the `fanout` scenario).
    Fanout(Box<FanoutLane>),
}

/// See [`Lane::EchoUdp`].
#[derive(Debug)]
pub struct EchoUdpLane {
    socket: mio::net::UdpSocket,
    /// Whole messages not yet sent, back to back.
    out: Vec<u8>,
    out_at: usize,
    size: usize,
    scratch: Vec<u8>,
}

/// See [`Lane::Echo`].
#[derive(Debug)]
pub struct EchoLane {
    pipe: Pipe,
    size: usize,
    scratch: Vec<u8>,
}

/// See [`Lane::Relay`].
#[derive(Debug)]
pub struct RelayLane {
    sender: Connection<SeededRng>,
    sender_stream: TcpStream,
    recipient: Connection<SeededRng>,
    recipient_stream: TcpStream,
    to: DeviceId,
    body: Vec<u8>,
    lane: u64,
    seq: u64,
    scratch: Vec<u8>,
}

/// See [`Lane::Nats`].
#[derive(Debug)]
pub struct NatsLane {
    publisher: Pipe,
    subscriber: Pipe,
    header: Vec<u8>,
    size: usize,
    scratch: Vec<u8>,
}

impl Lane {
    /// A lane to the echo server at `addr`, with messages of `size` bytes (at least 8).
    pub fn echo(addr: SocketAddr, size: usize) -> io::Result<Self> {
        let stream = std::net::TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
        Ok(Self::Echo(EchoLane {
            pipe: Pipe::new(stream)?,
            size: size.max(8),
            scratch: vec![0u8; READ_CHUNK],
        }))
    }

    /// A lane to the UDP echo server at `addr`, one datagram of `size` bytes (8 to 1452) per
    /// message.
    pub fn echo_udp(addr: SocketAddr, size: usize) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Self::EchoUdp(EchoUdpLane {
            socket: mio::net::UdpSocket::from_std(socket),
            out: Vec::new(),
            out_at: 0,
            size: size.clamp(8, dp_core::limits::DATAGRAM_LEN_MAX),
            scratch: vec![0u8; READ_CHUNK],
        }))
    }

    /// A lane of two fresh devices on the CommuCat server at `addr`: handshakes with `suite`,
    /// `Hello`/`Welcome` on both, then bodies of `size` bytes (at least 8) from one to the other.
    pub fn relay(
        addr: SocketAddr,
        server: [u8; 32],
        suite: Suite,
        lane: u64,
        size: usize,
        clock: Clock,
    ) -> io::Result<Self> {
        let mut rng = SeededRng::new(0xbe_0000 + lane);
        let connect =
            |rng: &mut SeededRng| -> io::Result<(std::net::TcpStream, Connection<SeededRng>)> {
                let key = StaticKeypair::generate(rng);
                let mut config = ConnectionConfig::new(key, server);
                config.suite = suite;
                config.keepalive = None;
                config.resend_refused = false;
                let seed = rng.next_u64();
                let client = Client::connect_with(addr, config, SeededRng::new(seed), clock, None)
                    .map_err(|e| io::Error::other(format!("CommuCat session: {e}")))?;
                let (stream, conn, _) = client.into_parts();
                Ok((stream, conn))
            };
        let (recipient_stream, recipient) = connect(&mut rng)?;
        let (sender_stream, sender) = connect(&mut rng)?;
        let to = recipient.device();
        let sender_stream = Pipe::new(sender_stream)?.stream;
        let recipient_stream = Pipe::new(recipient_stream)?.stream;
        Ok(Self::Relay(Box::new(RelayLane {
            sender,
            sender_stream,
            recipient,
            recipient_stream,
            to,
            body: vec![0x5a; size.max(8)],
            lane,
            seq: 0,
            scratch: vec![0u8; READ_CHUNK],
        })))
    }

    /// A lane of a NATS publisher and subscriber on subject `bench.LANE`, payloads of `size`
    /// bytes (at least 8).
    pub fn nats(addr: SocketAddr, lane: u64, size: usize) -> io::Result<Self> {
        let size = size.max(8);
        let subject = format!("bench.{lane}");
        let subscriber = nats_connect(addr, Some(&subject))?;
        let publisher = nats_connect(addr, None)?;
        Ok(Self::Nats(NatsLane {
            publisher: Pipe::new(publisher)?,
            subscriber: Pipe::new(subscriber)?,
            header: format!("PUB {subject} {size}\r\n").into_bytes(),
            size,
            scratch: vec![0u8; READ_CHUNK],
        }))
    }

    /// Copies that arrive per message sent: 1, or the group's size for a fan-out lane.
    pub fn copies(&self) -> u64 {
        match self {
            Self::Fanout(l) => l.copies(),
            _ => 1,
        }
    }

    /// Registers the lane's sockets under tokens `base` (sender) and `base + 1` (receiver;
    /// a fan-out lane's recipient `i` under `base + 1 + i`).
    pub fn register(&mut self, registry: &Registry, base: usize) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Self::Fanout(l) => l.register(registry, base),
            Self::Echo(l) => registry.register(&mut l.pipe.stream, Token(base), interest),
            Self::Relay(l) => {
                registry.register(&mut l.sender_stream, Token(base), interest)?;
                registry.register(&mut l.recipient_stream, Token(base + 1), interest)
            }
            Self::Nats(l) => {
                registry.register(&mut l.publisher.stream, Token(base), interest)?;
                registry.register(&mut l.subscriber.stream, Token(base + 1), interest)
            }
            Self::EchoUdp(l) => registry.register(&mut l.socket, Token(base), interest),
        }
    }

    /// Queues one message stamped `stamp`; false when the lane's output is full (try later).
    pub fn queue(&mut self, clock: Clock, stamp: u64) -> bool {
        if let Self::Fanout(l) = self {
            return l.queue(clock, stamp);
        }
        let stamp = stamp.to_le_bytes();
        match self {
            Self::Fanout(_) => false,
            Self::Echo(l) => {
                if l.pipe.pending() > OUT_BYTES_MAX {
                    return false;
                }
                l.pipe.out.extend_from_slice(&stamp);
                l.pipe.out.resize(l.pipe.out.len() + l.size - 8, 0);
                true
            }
            Self::Relay(l) => {
                if l.sender.outbound_len() > OUT_BYTES_MAX {
                    return false;
                }
                l.body[..8].copy_from_slice(&stamp);
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&l.lane.to_be_bytes());
                id[8..].copy_from_slice(&l.seq.to_be_bytes());
                l.seq += 1;
                l.sender
                    .send(clock.now(), MessageId(id), Recipient::Device(l.to), &l.body)
                    .is_ok()
            }
            Self::Nats(l) => {
                if l.publisher.pending() > OUT_BYTES_MAX {
                    return false;
                }
                let out = &mut l.publisher.out;
                out.extend_from_slice(&l.header);
                out.extend_from_slice(&stamp);
                out.resize(out.len() + l.size - 8, 0);
                out.extend_from_slice(b"\r\n");
                true
            }
            Self::EchoUdp(l) => {
                if l.out.len() - l.out_at > OUT_BYTES_MAX {
                    return false;
                }
                l.out.extend_from_slice(&stamp);
                l.out.resize(l.out.len() + l.size - 8, 0);
                true
            }
        }
    }

    /// Writes what is queued, without blocking.
    pub fn flush(&mut self, clock: Clock) -> io::Result<()> {
        match self {
            Self::Fanout(l) => l.flush(clock),
            Self::Echo(l) => l.pipe.write_out(),
            Self::Relay(l) => {
                write_conn(&mut l.sender, &mut l.sender_stream, clock)?;
                write_conn(&mut l.recipient, &mut l.recipient_stream, clock)
            }
            Self::Nats(l) => {
                l.publisher.write_out()?;
                l.subscriber.write_out()
            }
            Self::EchoUdp(l) => {
                while l.out_at < l.out.len() {
                    match l.socket.send(&l.out[l.out_at..l.out_at + l.size]) {
                        Ok(_) => l.out_at += l.size,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // Loopback refuses a datagram now and then under load: it is lost,
                        // and counted as lost at the end.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            l.out_at += l.size;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if l.out_at == l.out.len() {
                    l.out.clear();
                    l.out_at = 0;
                }
                Ok(())
            }
        }
    }

    /// Socket `which` (0 sender, 1 receiver) is readable: reads it and pushes the stamps of
    /// the messages that arrived.
    pub fn on_readable(
        &mut self,
        clock: Clock,
        which: usize,
        arrived: &mut Vec<u64>,
    ) -> io::Result<()> {
        match self {
            Self::Fanout(l) => l.on_readable(clock, which, arrived),
            Self::Echo(l) => {
                l.pipe.read_in(&mut l.scratch)?;
                let whole = l.pipe.input.len() / l.size * l.size;
                for message in l.pipe.input[..whole].chunks_exact(l.size) {
                    arrived.extend(stamp_of(message));
                }
                l.pipe.input.drain(..whole);
                Ok(())
            }
            Self::Relay(l) if which == 0 => read_conn(
                &mut l.sender,
                &mut l.sender_stream,
                clock,
                &mut l.scratch,
                |_| {},
            ),
            Self::Relay(l) => read_conn(
                &mut l.recipient,
                &mut l.recipient_stream,
                clock,
                &mut l.scratch,
                |event| {
                    if let Event::Delivered(d) = event {
                        arrived.extend(stamp_of(&d.body));
                    }
                },
            ),
            Self::Nats(l) if which == 0 => {
                l.publisher.read_in(&mut l.scratch)?;
                nats_parse(&mut l.publisher, arrived)
            }
            Self::Nats(l) => {
                l.subscriber.read_in(&mut l.scratch)?;
                nats_parse(&mut l.subscriber, arrived)
            }
            Self::EchoUdp(l) => loop {
                match l.socket.recv(&mut l.scratch) {
                    Ok(n) => arrived.extend(stamp_of(&l.scratch[..n])),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
            },
        }
    }
}

/// Connects to NATS, says CONNECT (not verbose), optionally subscribes, and waits for the PONG
/// that confirms the server has processed it all.
pub(super) fn nats_connect(
    addr: SocketAddr,
    subscribe: Option<&str>,
) -> io::Result<std::net::TcpStream> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
    stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
    let mut hello = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"bench\"}\r\n",
    );
    if let Some(subject) = subscribe {
        hello.push_str(&format!("SUB {subject} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    stream.write_all(hello.as_bytes())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == b"PONG\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"-ERR") {
            return Err(io::Error::other(String::from_utf8_lossy(&seen).to_string()));
        }
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Parses NATS server output: MSG payloads (their stamps), PING (answered), the rest skipped.
pub(super) fn nats_parse(pipe: &mut Pipe, arrived: &mut Vec<u64>) -> io::Result<()> {
    let mut at = 0;
    loop {
        let rest = &pipe.input[at..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let line = &rest[..eol];
        if line.starts_with(b"MSG ") {
            let len: usize = core::str::from_utf8(line)
                .ok()
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| io::Error::other("bad MSG line from NATS"))?;
            let start = eol + 2;
            if rest.len() < start + len + 2 {
                break;
            }
            arrived.extend(stamp_of(&rest[start..start + len]));
            at += start + len + 2;
        } else {
            if line == b"PING" {
                pipe.out.extend_from_slice(b"PONG\r\n");
            } else if line.starts_with(b"-ERR") {
                return Err(io::Error::other(String::from_utf8_lossy(line).to_string()));
            }
            at += eol + 2;
        }
    }
    pipe.input.drain(..at);
    Ok(())
}
