//! The `fanout` scenario: one sender publishes to a group of N recipients, and every delivered
//! copy is timed from the message's intended send time.
//!
//! - **echo**: the kernel's limit, a tiny fan-out server in this process (one thread): it reads
//!   the sender's bytes and writes them to every recipient connection.
//! - **nats**: one publisher and N subscribers on one subject.
//! - **commucat**: a group conversation with N member devices besides the sender's; the sender
//!   sends `Recipient::Conversation(id)` once and the server fans it out. Set-up registers the
//!   devices, makes the recipients the sender's friends and invites them (session operations
//!   of [`commucat_client::ops`], then [`commucat_client::api`]),
//!   then sends one probe: a server that refuses conversation sends stops the run with a clear
//!   message instead of a report of nothing.

use super::lanes::{self, Pipe, SETUP_TIMEOUT};
use super::servers::Target;
use anyhow::{Context, Result, bail};
use commucat_client::api::{Api, RateLimitRetry};
use commucat_client::{Client, Clock, Connection, ConnectionConfig, Event, SendStatus, Suite, ops};
use dp_core::{ConversationId, MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::Recipient;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The most recipients in a group: CommuCat's default group bound is 1 000 members, the
/// sender included.
pub const GROUP_MAX: usize = 999;
/// Name prefix of the fan-out echo server's thread.
pub const FANOUT_ECHO_THREAD: &str = "bench-fanout";
/// Bytes the fan-out echo server holds for one recipient before it cuts it off as a slow
/// consumer (NATS's default `max_pending`, and what `bench` gives CommuCat).
pub const FANOUT_OUT_BYTES_MAX: usize = 64 << 20;
/// The byte a connection to the fan-out echo server sends first: it publishes.
pub const ROLE_SENDER: u8 = b'S';
/// The byte a connection to the fan-out echo server sends first: it receives.
pub const ROLE_RECIPIENT: u8 = b'R';
/// The fan-out echo server's answer once it has taken a connection's role.
const ROLE_TAKEN: u8 = b'k';
/// How long the probe conversation send may take to reach every member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks `--group`: 1 to [`GROUP_MAX`] recipients.
pub fn check_group(group: usize) -> Result<()> {
    if !(1..=GROUP_MAX).contains(&group) {
        bail!("--group is 1 to {GROUP_MAX} recipients (a CommuCat group holds 1 000 members)");
    }
    Ok(())
}

/// One sender and its group.
#[derive(Debug)]
pub struct FanoutLane {
    side: Side,
    size: usize,
    scratch: Vec<u8>,
}

#[derive(Debug)]
enum Side {
    Echo {
        sender: Pipe,
        recipients: Vec<Pipe>,
    },
    Nats {
        publisher: Pipe,
        subscribers: Vec<Pipe>,
        header: Vec<u8>,
    },
    Commucat(Box<CommucatGroup>),
}

#[derive(Debug)]
struct CommucatGroup {
    sender: Connection<SeededRng>,
    sender_stream: TcpStream,
    recipients: Vec<(Connection<SeededRng>, TcpStream)>,
    conversation: ConversationId,
    body: Vec<u8>,
    seq: u64,
}

/// Connects to the fan-out echo server at `addr` as `role` and waits until it took the role.
pub fn echo_connect(addr: SocketAddr, role: u8) -> io::Result<std::net::TcpStream> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)?;
    stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
    stream.write_all(&[role])?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer)?;
    if answer[0] != ROLE_TAKEN {
        return Err(io::Error::other("the fan-out echo server refused the role"));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

impl FanoutLane {
    /// A sender and `group` recipients on the fan-out echo server at `addr`.
    pub fn echo(addr: SocketAddr, group: usize, size: usize) -> io::Result<Self> {
        let recipients = (0..group)
            .map(|_| Pipe::new(echo_connect(addr, ROLE_RECIPIENT)?))
            .collect::<io::Result<_>>()?;
        let sender = Pipe::new(echo_connect(addr, ROLE_SENDER)?)?;
        Ok(Self::new(Side::Echo { sender, recipients }, size))
    }

    /// A publisher and `group` subscribers on one NATS subject.
    pub fn nats(addr: SocketAddr, group: usize, size: usize) -> io::Result<Self> {
        let size = size.max(8);
        let subject = "fanout.0";
        let subscribers = (0..group)
            .map(|_| Pipe::new(lanes::nats_connect(addr, Some(subject))?))
            .collect::<io::Result<_>>()?;
        let publisher = Pipe::new(lanes::nats_connect(addr, None)?)?;
        let header = format!("PUB {subject} {size}\r\n").into_bytes();
        Ok(Self::new(
            Side::Nats {
                publisher,
                subscribers,
                header,
            },
            size,
        ))
    }

    /// A sender device and `group` recipient devices in one CommuCat group conversation, set
    /// up over the REST API at `api`.
    pub fn commucat(
        target: &Target,
        api: SocketAddr,
        suite: Suite,
        group: usize,
        size: usize,
        clock: Clock,
    ) -> Result<Self> {
        let size = size.max(8);
        let (sender, sender_stream, recipients, conversation) =
            commucat_group(target, api, suite, group, clock)?;
        Ok(Self::new(
            Side::Commucat(Box::new(CommucatGroup {
                sender,
                sender_stream,
                recipients,
                conversation,
                body: vec![0x5a; size],
                seq: 0,
            })),
            size,
        ))
    }

    fn new(side: Side, size: usize) -> Self {
        Self {
            side,
            size: size.max(8),
            scratch: vec![0u8; lanes::READ_CHUNK],
        }
    }

    /// Copies delivered per message sent: the group's size.
    pub fn copies(&self) -> u64 {
        let n = match &self.side {
            Side::Echo { recipients, .. } => recipients.len(),
            Side::Nats { subscribers, .. } => subscribers.len(),
            Side::Commucat(g) => g.recipients.len(),
        };
        n as u64
    }

    /// Registers the sender under `base` and recipient `i` under `base + 1 + i`.
    pub fn register(&mut self, registry: &mio::Registry, base: usize) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut self.side {
            Side::Echo { sender, recipients } => {
                registry.register(&mut sender.stream, Token(base), interest)?;
                for (i, r) in recipients.iter_mut().enumerate() {
                    registry.register(&mut r.stream, Token(base + 1 + i), interest)?;
                }
            }
            Side::Nats {
                publisher,
                subscribers,
                ..
            } => {
                registry.register(&mut publisher.stream, Token(base), interest)?;
                for (i, s) in subscribers.iter_mut().enumerate() {
                    registry.register(&mut s.stream, Token(base + 1 + i), interest)?;
                }
            }
            Side::Commucat(g) => {
                registry.register(&mut g.sender_stream, Token(base), interest)?;
                for (i, (_, stream)) in g.recipients.iter_mut().enumerate() {
                    registry.register(stream, Token(base + 1 + i), interest)?;
                }
            }
        }
        Ok(())
    }

    /// Queues one message stamped `stamp`; false when the sender's output is full.
    pub fn queue(&mut self, clock: Clock, stamp: u64) -> bool {
        let stamp = stamp.to_le_bytes();
        match &mut self.side {
            Side::Echo { sender, .. } => {
                if sender.pending() > lanes::OUT_BYTES_MAX {
                    return false;
                }
                sender.out.extend_from_slice(&stamp);
                sender.out.resize(sender.out.len() + self.size - 8, 0);
                true
            }
            Side::Nats {
                publisher, header, ..
            } => {
                if publisher.pending() > lanes::OUT_BYTES_MAX {
                    return false;
                }
                publisher.out.extend_from_slice(header);
                publisher.out.extend_from_slice(&stamp);
                publisher.out.resize(publisher.out.len() + self.size - 8, 0);
                publisher.out.extend_from_slice(b"\r\n");
                true
            }
            Side::Commucat(g) => {
                if g.sender.outbound_len() > lanes::OUT_BYTES_MAX {
                    return false;
                }
                g.body[..8].copy_from_slice(&stamp);
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(b"fanout\0\0");
                id[8..].copy_from_slice(&g.seq.to_be_bytes());
                g.seq += 1;
                g.sender
                    .send(
                        clock.now(),
                        MessageId(id),
                        Recipient::Conversation(g.conversation),
                        &g.body,
                    )
                    .is_ok()
            }
        }
    }

    /// Writes what is queued on every socket, without blocking.
    pub fn flush(&mut self, clock: Clock) -> io::Result<()> {
        match &mut self.side {
            Side::Echo { sender, .. } => sender.write_out(),
            Side::Nats {
                publisher,
                subscribers,
                ..
            } => {
                publisher.write_out()?;
                subscribers.iter_mut().try_for_each(Pipe::write_out)
            }
            Side::Commucat(g) => {
                lanes::write_conn(&mut g.sender, &mut g.sender_stream, clock)?;
                for (conn, stream) in &mut g.recipients {
                    lanes::write_conn(conn, stream, clock)?;
                }
                Ok(())
            }
        }
    }

    /// Socket `which` (0 the sender, `1 + i` recipient `i`) is readable: reads it and pushes
    /// the stamps of the copies that arrived.
    pub fn on_readable(
        &mut self,
        clock: Clock,
        which: usize,
        arrived: &mut Vec<u64>,
    ) -> io::Result<()> {
        let size = self.size;
        match &mut self.side {
            Side::Echo { sender, .. } if which == 0 => {
                // The server never writes to the sender; drop anything that comes.
                sender.read_in(&mut self.scratch)?;
                sender.input.clear();
                Ok(())
            }
            Side::Echo { recipients, .. } => {
                let Some(pipe) = recipients.get_mut(which - 1) else {
                    return Ok(());
                };
                pipe.read_in(&mut self.scratch)?;
                let whole = pipe.input.len() / size * size;
                for message in pipe.input[..whole].chunks_exact(size) {
                    arrived.extend(lanes::stamp_of(message));
                }
                pipe.input.drain(..whole);
                Ok(())
            }
            Side::Nats { publisher, .. } if which == 0 => {
                publisher.read_in(&mut self.scratch)?;
                lanes::nats_parse(publisher, arrived)
            }
            Side::Nats { subscribers, .. } => {
                let Some(pipe) = subscribers.get_mut(which - 1) else {
                    return Ok(());
                };
                pipe.read_in(&mut self.scratch)?;
                lanes::nats_parse(pipe, arrived)
            }
            Side::Commucat(g) if which == 0 => {
                let mut refused = None;
                lanes::read_conn(
                    &mut g.sender,
                    &mut g.sender_stream,
                    clock,
                    &mut self.scratch,
                    |event| {
                        if let Event::Error { code, .. } = event {
                            refused = Some(code);
                        }
                    },
                )?;
                match refused {
                    Some(code) => Err(io::Error::other(format!(
                        "the server refused a conversation send: {code:?}"
                    ))),
                    None => Ok(()),
                }
            }
            Side::Commucat(g) => {
                let Some((conn, stream)) = g.recipients.get_mut(which - 1) else {
                    return Ok(());
                };
                lanes::read_conn(conn, stream, clock, &mut self.scratch, |event| {
                    if let Event::Delivered(d) = event {
                        arrived.extend(lanes::stamp_of(&d.body));
                    }
                })
            }
        }
    }
}

type Session = (Connection<SeededRng>, TcpStream);

/// How often a rate-limited (429) REST call is tried before giving up; the API's default
/// allows bursts of 100 per address and 60 per device, then 20 and 10 per second.
const RATE_LIMITED_TRIES_MAX: u32 = 200;
/// The pause after a 429 answer without `Retry-After`.
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause after a 429 answer, whatever its `Retry-After` says.
const RATE_LIMITED_PAUSE_MAX: Duration = Duration::from_secs(5);
/// The device name the bench registers its devices under.
const DEVICE_NAME: &str = "bench";

/// Registers the session's device as the first device of a new account `handle`, then gets
/// its REST token; returns a REST client with that token.
fn register_with_api(client: &mut Client<SeededRng>, handle: &str, rest: &Api) -> Result<Api> {
    ops::register(client, handle, DEVICE_NAME)
        .map_err(|e| anyhow::anyhow!("register {handle} over the session: {e}"))?;
    let issued =
        ops::issue_token(client).map_err(|e| anyhow::anyhow!("a REST token for {handle}: {e}"))?;
    let mut api = rest.clone();
    api.set_token(Some(issued.token));
    Ok(api)
}

/// Registers a sender and `group` recipients, makes them friends, creates the group and
/// invites them, then proves with one probe message that the server fans conversation sends
/// out. Returns the sender, its socket, the recipients and the conversation.
fn commucat_group(
    target: &Target,
    api: SocketAddr,
    suite: Suite,
    group: usize,
    clock: Clock,
) -> Result<(
    Connection<SeededRng>,
    TcpStream,
    Vec<Session>,
    ConversationId,
)> {
    // Handles unique per run, so a long-running server can be loaded again.
    let run = Clock::unix_ms() % 1_000_000_000;
    let mut rng = SeededRng::new(0xfa_0000 ^ run);
    let connect = |rng: &mut SeededRng| -> Result<Client<SeededRng>> {
        let key = StaticKeypair::generate(rng);
        let mut config = ConnectionConfig::new(key, target.server_key);
        config.suite = suite;
        config.keepalive = None;
        config.resend_refused = false;
        let seed = rng.next_u64();
        Client::connect_with(target.addr, config, SeededRng::new(seed), clock, None)
            .map_err(|e| anyhow::anyhow!("CommuCat session: {e}"))
    };
    let mut rest = Api::new(&format!("http://{api}/v1"))?;
    rest.set_rate_limit_retry(Some(RateLimitRetry {
        tries: RATE_LIMITED_TRIES_MAX,
        pause: RATE_LIMITED_PAUSE,
        pause_max: RATE_LIMITED_PAUSE_MAX,
    }));
    let owner = format!("bench-{run}-owner");
    let mut sender = connect(&mut rng)?;
    let sender_api = register_with_api(&mut sender, &owner, &rest)?;
    let conversation = ConversationId(
        sender_api
            .create_group("bench fanout")
            .context("create the group")?,
    );
    let mut recipients = Vec::with_capacity(group);
    for i in 0..group {
        let handle = format!("bench-{run}-r{i}");
        let mut client = connect(&mut rng)?;
        let member_api = register_with_api(&mut client, &handle, &rest)?;
        sender_api
            .request_friend(&handle)
            .with_context(|| format!("friend request to {handle}"))?;
        member_api
            .accept_friend(&owner)
            .with_context(|| format!("{handle} accepts the friend request"))?;
        sender_api
            .add_member(conversation.0, &handle)
            .with_context(|| format!("add {handle} to the group"))?;
        recipients.push(client);
        if (i + 1) % 50 == 0 {
            eprintln!("[fanout] {} of {group} members set up", i + 1);
        }
    }
    probe(&mut sender, &mut recipients, conversation)?;
    let (stream, sender, _) = sender.into_parts();
    let sender_stream = Pipe::new(stream)?.stream;
    let recipients = recipients
        .into_iter()
        .map(|client| {
            let (stream, conn, _) = client.into_parts();
            Ok((conn, Pipe::new(stream)?.stream))
        })
        .collect::<io::Result<_>>()?;
    Ok((sender, sender_stream, recipients, conversation))
}

/// Sends one conversation message (stamp 0, never measured) and waits until the sender has
/// its acknowledgement and every recipient its copy.
fn probe(
    sender: &mut Client<SeededRng>,
    recipients: &mut [Client<SeededRng>],
    conversation: ConversationId,
) -> Result<()> {
    const NOT_YET: &str = "this server does not fan out conversation sends yet";
    let mut body = vec![0u8; 8];
    body.extend_from_slice(b"probe");
    sender
        .send_with_id(
            MessageId([0xfe; 16]),
            Recipient::Conversation(conversation),
            &body,
        )
        .map_err(|e| anyhow::anyhow!("probe: {e}"))?;
    let clock = sender.clock();
    let deadline = clock.now().saturating_add(PROBE_TIMEOUT);
    let (mut acked, mut got) = (false, vec![false; recipients.len()]);
    let step = Duration::from_millis(5);
    while !(acked && got.iter().all(|&g| g)) {
        if clock.now() >= deadline {
            let copies = got.iter().filter(|&&g| g).count();
            bail!(
                "{NOT_YET}: no answer to a conversation send within {PROBE_TIMEOUT:?} \
                 (acknowledged: {acked}, copies delivered: {copies} of {})",
                recipients.len()
            );
        }
        if !acked {
            match sender
                .next_event(step)
                .map_err(|e| anyhow::anyhow!("probe: {e}"))?
            {
                Some(Event::Error { code, .. }) => {
                    bail!("{NOT_YET}: it answered a conversation send with {code:?}")
                }
                Some(Event::SendAck {
                    status: SendStatus::Retry,
                    ..
                }) => {
                    bail!("{NOT_YET}: it refused a conversation send (Retry)")
                }
                Some(Event::SendAck { .. }) => acked = true,
                Some(Event::Closed(reason)) => {
                    bail!("probe: the sender's session closed: {reason:?}")
                }
                _ => {}
            }
        }
        for (client, got) in recipients.iter_mut().zip(&mut got) {
            if *got {
                continue;
            }
            if let Some(Event::Delivered(_)) = client
                .next_event(Duration::ZERO)
                .map_err(|e| anyhow::anyhow!("probe: {e}"))?
            {
                *got = true;
            }
        }
    }
    Ok(())
}

/// Starts the fan-out echo server: one thread, one epoll loop.
pub fn start_echo() -> Result<Target> {
    let mut listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    Target::in_thread(
        addr,
        format!("{FANOUT_ECHO_THREAD}-0"),
        FANOUT_ECHO_THREAD,
        "fan-out echo server",
        move |stop| echo_loop(&mut listener, stop),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Unknown,
    Sender,
    Recipient,
}

struct EchoConn {
    stream: TcpStream,
    role: Role,
    out: Vec<u8>,
}

impl EchoConn {
    /// Writes what it can of `out`.
    fn write_out(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn echo_loop(listener: &mut TcpListener, stop: &AtomicBool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(listener, Token(0), Interest::READABLE)?;
    let mut conns: HashMap<usize, EchoConn> = HashMap::new();
    let mut next = 1;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            if event.token() == Token(0) {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    poll.registry()
                        .register(&mut stream, Token(next), interest)?;
                    let (role, out) = (Role::Unknown, Vec::new());
                    conns.insert(next, EchoConn { stream, role, out });
                    next += 1;
                }
                continue;
            }
            let token = event.token().0;
            if let Err(_gone) = echo_event(&mut conns, token, &mut buf) {
                conns.remove(&token);
            }
        }
    }
    Ok(())
}

/// One connection is ready: take its role, or fan the sender's bytes out, or write a
/// recipient's backlog. A recipient past [`FANOUT_OUT_BYTES_MAX`] is cut off.
fn echo_event(
    conns: &mut HashMap<usize, EchoConn>,
    token: usize,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let Some(conn) = conns.get_mut(&token) else {
            return Ok(());
        };
        conn.write_out()?;
        let n = match conn.stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        if conn.role == Role::Unknown {
            conn.role = match data[0] {
                ROLE_SENDER => Role::Sender,
                ROLE_RECIPIENT => Role::Recipient,
                _ => return Err(io::Error::other("unknown role")),
            };
            conn.out.push(ROLE_TAKEN);
            conn.write_out()?;
            data = &data[1..];
        }
        if conn.role != Role::Sender || data.is_empty() {
            // Recipients send nothing after their role; whatever comes is dropped.
            continue;
        }
        let mut slow = Vec::new();
        for (&t, r) in conns.iter_mut() {
            if r.role != Role::Recipient {
                continue;
            }
            if r.out.len() + data.len() > FANOUT_OUT_BYTES_MAX {
                slow.push(t);
                continue;
            }
            r.out.extend_from_slice(data);
            if r.write_out().is_err() {
                slow.push(t);
            }
        }
        for t in slow {
            conns.remove(&t);
        }
    }
}

#[cfg(test)]
mod tests;
