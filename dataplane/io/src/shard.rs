//! One shard's thread: its listener, its connections and its links, driving a `Shard`; with
//! QUIC on, also its UDP socket and the QUIC bridge (`quic.rs`).

use crate::link::{ShardLinks, WAKER};
use crate::metrics::{self, Metrics};
use crate::quic::{QuicBridge, QuicGauges};
use crate::{Clock, OsRng, ServerConfig};
use core::net::SocketAddr;
use dp_core::Instant;
use dp_shard::{ConnId, Shard, ShardConfig, ShardEvent, ShardId};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const LISTENER: Token = Token(0);
/// The QUIC socket's token (connection tokens count up from 1).
const UDP: Token = Token(usize::MAX - 1);
/// Datagrams received per loop iteration; more wait for the next one.
const DATAGRAM_BUDGET: usize = 1024;
/// Kernel buffers asked for on each QUIC socket, each way, so a burst of handshakes is not
/// dropped before the shard reads it (the kernel caps it at `net.core.rmem_max`/`wmem_max`).
const UDP_BUFFER_BYTES: usize = 4 << 20;
/// Messages taken from each link per loop iteration.
const LINK_BUDGET: usize = 1024;
/// Connections accepted per loop iteration.
const ACCEPT_BUDGET: usize = 256;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// A listening socket with `SO_REUSEPORT`, so every shard can own one on the same port and the
/// kernel spreads connections between them.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A UDP socket with `SO_REUSEPORT`, so every shard can own one on the same port; the kernel
/// spreads clients between them by their address.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Best effort: a smaller buffer only means more loss under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The QUIC side of a shard thread: its socket and the bridge.
struct QuicIo {
    bridge: QuicBridge,
    socket: UdpSocket,
    /// The receive budget ran out with datagrams possibly left: look again without sleeping.
    more: bool,
}

/// Shard `index` of the server, configured and told the wall-clock time.
pub(crate) fn new_shard(
    index: usize,
    config: &ServerConfig,
    routing_key: u64,
    clock: Clock,
) -> io::Result<Shard<OsRng>> {
    let id = ShardId(u16::try_from(index).unwrap_or(u16::MAX));
    let mut shard_config = ShardConfig::new(id, config.shards, routing_key)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shard out of range"))?;
    shard_config.idle_timeout = config.idle_timeout;
    shard_config.outbound_bytes_max = config.outbound_bytes_max;
    shard_config.inflight_max = config.inflight_max;
    shard_config.conns_per_source_max = config.conns_per_source_max;
    let now = clock.now();
    let mut shard = match &config.previous_key {
        // Start on the previous key, then rotate to the current one: the previous stays
        // accepted for what is left of its grace period.
        Some((previous, grace)) => {
            let mut shard = Shard::new(now, shard_config, previous.clone(), OsRng);
            shard
                .responder_mut()
                .rotate_static(now, config.key.clone(), *grace);
            shard
        }
        None => Shard::new(now, shard_config, config.key.clone(), OsRng),
    };
    shard.handle_wall_clock(now, Clock::unix_ms());
    Ok(shard)
}

struct Socket {
    stream: TcpStream,
    token: Token,
    /// Output is waiting for the socket to become writable.
    blocked: bool,
}

pub(crate) struct ShardThread {
    index: usize,
    shard: Shard<OsRng>,
    clock: Clock,
    listener: TcpListener,
    poll: Poll,
    links: ShardLinks,
    sockets: HashMap<ConnId, Socket>,
    tokens: HashMap<Token, ConnId>,
    next_token: usize,
    read_buf: Vec<u8>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    drain_deadline: core::time::Duration,
    quic: Option<QuicIo>,
}

impl ShardThread {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        config: &ServerConfig,
        routing_key: u64,
        clock: Clock,
        mut listener: TcpListener,
        poll: Poll,
        links: ShardLinks,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        udp: Option<std::net::UdpSocket>,
    ) -> io::Result<Self> {
        let shard = new_shard(index, config, routing_key, clock)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let quic = match udp {
            Some(socket) => {
                let mut socket = UdpSocket::from_std(socket);
                poll.registry()
                    .register(&mut socket, UDP, Interest::READABLE)?;
                Some(QuicIo {
                    bridge: QuicBridge::new(index, config, clock)?,
                    socket,
                    more: false,
                })
            }
            None => None,
        };
        Ok(Self {
            index,
            shard,
            clock,
            listener,
            poll,
            links,
            sockets: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            read_buf: vec![0u8; READ_CHUNK],
            metrics,
            stop,
            drain_deadline: config.drain_deadline,
            quic,
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut wall_clock_at = self.clock.now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                self.shut_down();
                return;
            }
            self.publish_metrics();
            let now = self.clock.now();
            let mut wake = self.shard.poll_timeout();
            if let Some(at) = self.quic.as_ref().and_then(|q| q.bridge.poll_timeout()) {
                wake = wake.min(at);
            }
            let timeout = if self.quic.as_ref().is_some_and(|q| q.more) {
                core::time::Duration::ZERO
            } else {
                wake.saturating_duration_since(now)
            };
            let idle = self
                .links
                .from_shards
                .iter()
                .flatten()
                .all(|inbox| inbox.park())
                && self.links.from_control.park();
            let timeout = if idle {
                timeout.min(core::time::Duration::from_millis(250))
            } else {
                core::time::Duration::ZERO
            };
            if let Err(error) = self.poll.poll(&mut events, Some(timeout))
                && error.kind() != io::ErrorKind::Interrupted
            {
                eprintln!("shard {}: poll failed: {error}", self.index);
                return;
            }
            let now = self.clock.now();
            if now.saturating_duration_since(wall_clock_at).as_secs() >= 10 {
                self.shard.handle_wall_clock(now, Clock::unix_ms());
                wall_clock_at = now;
            }
            let mut writable = Vec::new();
            if self.quic.as_ref().is_some_and(|q| q.more) {
                self.quic_receive(now);
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    UDP => self.quic_receive(now),
                    token => {
                        let Some(&id) = self.tokens.get(&token) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() {
                            self.read(now, id);
                        }
                        if event.is_writable() {
                            writable.push(id);
                        }
                    }
                }
            }
            self.drain_links(now);
            if let Some(quic) = self.quic.as_mut() {
                quic.bridge.handle_timeout(now);
                quic.bridge
                    .handle_events(now, &mut self.shard, &mut self.links);
            }
            if self.shard.poll_timeout() <= now {
                self.shard.handle_timeout(now);
            }
            self.route_events(now);
            for id in writable {
                self.write(now, id);
            }
            while let Some(id) = self.shard.poll_dirty() {
                self.write(now, id);
            }
            self.route_events(now);
            self.quic_transmit(now);
            for outbox in self.links.to_shards.iter_mut().flatten() {
                outbox.flush();
            }
            self.links.to_control.flush();
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let Some(id) = self.shard.handle_connect(now, peer) else {
                        continue;
                    };
                    if self.register(id, stream).is_err() {
                        self.shard.handle_closed(id);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    fn register(&mut self, id: ConnId, mut stream: TcpStream) -> io::Result<()> {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)?;
        let _ = stream.set_nodelay(true);
        self.tokens.insert(token, id);
        self.sockets.insert(
            id,
            Socket {
                stream,
                token,
                blocked: false,
            },
        );
        Ok(())
    }

    fn forget(&mut self, id: ConnId) -> Option<TcpStream> {
        let mut socket = self.sockets.remove(&id)?;
        self.tokens.remove(&socket.token);
        let _ = self.poll.registry().deregister(&mut socket.stream);
        Some(socket.stream)
    }

    fn read(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(socket) = self.sockets.get_mut(&id) else {
                return;
            };
            match socket.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.forget(id);
                    self.shard.handle_closed(id);
                    return;
                }
                Ok(n) => self.shard.handle_received(now, id, &self.read_buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.forget(id);
                    self.shard.handle_closed(id);
                    return;
                }
            }
        }
    }

    /// Writes what the shard has for `id`; returns false if the connection failed.
    fn write(&mut self, now: Instant, id: ConnId) -> bool {
        if let Some(quic) = self.quic.as_mut()
            && quic.bridge.flush(now, id, &mut self.shard, &mut self.links)
        {
            return true;
        }
        loop {
            let Some(socket) = self.sockets.get_mut(&id) else {
                return false;
            };
            let bytes = self.shard.poll_transmit(now, id);
            if bytes.is_empty() {
                if socket.blocked {
                    socket.blocked = false;
                    let _ = self.poll.registry().reregister(
                        &mut socket.stream,
                        socket.token,
                        Interest::READABLE,
                    );
                }
                return true;
            }
            match socket.stream.write(bytes) {
                Ok(0) => return false,
                Ok(n) => self.shard.handle_written(id, n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if !socket.blocked {
                        socket.blocked = true;
                        let _ = self.poll.registry().reregister(
                            &mut socket.stream,
                            socket.token,
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.forget(id);
                    self.shard.handle_closed(id);
                    return false;
                }
            }
        }
    }

    fn drain_links(&mut self, now: Instant) {
        let mut relays = Vec::new();
        let handoffs = self
            .links
            .drain(&mut self.shard, now, LINK_BUDGET, &mut relays);
        if let Some(quic) = self.quic.as_mut() {
            for (from, relay) in relays {
                quic.bridge
                    .handle_relay(now, from, relay, &mut self.shard, &mut self.links);
            }
        }
        for (handoff, stream) in handoffs {
            match self.shard.adopt(now, *handoff) {
                Some(id) => {
                    let stream = stream
                        .set_nonblocking(true)
                        .map(|()| TcpStream::from_std(stream));
                    if stream.and_then(|stream| self.register(id, stream)).is_err() {
                        self.shard.handle_closed(id);
                    }
                }
                None => drop(stream),
            }
        }
    }

    /// Publishes this shard's counters (once per loop iteration, before it may sleep).
    fn publish_metrics(&self) {
        let quic = self
            .quic
            .as_ref()
            .map_or_else(QuicGauges::default, |q| q.bridge.gauges());
        metrics::publish_shard(&self.metrics, self.index, &self.shard, &self.links, quic);
    }

    /// Takes datagrams from the QUIC socket, up to the budget.
    fn quic_receive(&mut self, now: Instant) {
        let Some(quic) = self.quic.as_mut() else {
            return;
        };
        quic.more = false;
        for _ in 0..DATAGRAM_BUDGET {
            match quic.socket.recv_from(&mut self.read_buf) {
                Ok((n, from)) => quic.bridge.handle_datagram(now, from, &self.read_buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors for earlier sends, interruptions: the next datagram may be fine.
                Err(_) => {}
            }
        }
        quic.more = true;
    }

    /// Sends what the QUIC server has (GSO batches as one `sendmsg` where the kernel can).
    fn quic_transmit(&mut self, now: Instant) {
        if let Some(quic) = self.quic.as_mut() {
            quic.bridge.transmit(now, &quic.socket);
        }
    }

    fn route_events(&mut self, now: Instant) {
        while let Some(event) = self.shard.poll_event() {
            if let Some(quic) = self.quic.as_mut() {
                let taken = match &event {
                    ShardEvent::Close { conn, reason } => quic.bridge.handle_close(
                        now,
                        *conn,
                        *reason,
                        &mut self.shard,
                        &mut self.links,
                    ),
                    ShardEvent::HandOff { conn, to } => quic.bridge.handle_handoff(
                        now,
                        *conn,
                        *to,
                        &mut self.shard,
                        &mut self.links,
                    ),
                    _ => false,
                };
                if taken {
                    continue;
                }
            }
            match event {
                ShardEvent::Close { conn, .. } => {
                    self.write(now, conn);
                    self.forget(conn);
                    self.shard.handle_closed(conn);
                }
                ShardEvent::HandOff { conn, to } => {
                    // The handshake reply must reach the client before the socket moves.
                    self.write(now, conn);
                    let stream = self.forget(conn).map(Into::into);
                    self.links.hand_off(&mut self.shard, conn, to, stream);
                }
                event @ (ShardEvent::ToShard { .. } | ShardEvent::ToControl(_)) => {
                    self.links.route(&mut self.shard, event);
                }
            }
        }
    }

    fn shut_down(&mut self) {
        let _ = self.poll.registry().deregister(&mut self.listener);
        if let Some(quic) = self.quic.as_mut() {
            quic.bridge.stop_accepting();
        }
        self.shard.handle_shutdown(1_000);
        let deadline = std::time::Instant::now() + self.drain_deadline;
        let ids: Vec<ConnId> = self.sockets.keys().copied().collect();
        for id in &ids {
            let _ = self.sockets.get_mut(id).map(|s| s.stream.set_nodelay(true));
        }
        // Write out GoAway and anything pending, within the deadline.
        while std::time::Instant::now() < deadline {
            let now = self.clock.now();
            let mut pending = false;
            for id in &ids {
                if self.write(now, *id) && !self.shard.poll_transmit(now, *id).is_empty() {
                    pending = true;
                }
            }
            if self.quic.is_some() && self.quic_shutdown_step(now) {
                pending = true;
            }
            if !pending {
                break;
            }
            // Wait for sockets to drain (writable events), not longer than a few ms.
            let mut events = Events::with_capacity(64);
            let _ = self
                .poll
                .poll(&mut events, Some(core::time::Duration::from_millis(5)));
            for event in &events {
                if let Some(&id) = self.tokens.get(&event.token())
                    && event.is_writable()
                {
                    self.write(now, id);
                }
            }
        }
        if let Some(quic) = self.quic.as_mut() {
            let _ = self.poll.registry().deregister(&mut quic.socket);
        }
        for id in ids {
            self.forget(id);
            self.shard.handle_closed(id);
        }
        self.links.to_control.flush();
    }

    /// One turn of shutting down QUIC: GoAway and what else is queued goes out on every QUIC
    /// connection (relayed ones through their accepting shard), then each closes with
    /// `SHUTTING_DOWN`. TCP connections' closes are left to the caller's loop. True while
    /// this shard still holds QUIC connections (closing ones wait for their acknowledgements).
    fn quic_shutdown_step(&mut self, now: Instant) -> bool {
        self.quic_receive(now);
        self.drain_links(now);
        let Some(quic) = self.quic.as_mut() else {
            return false;
        };
        quic.bridge
            .drive_shutdown(now, &mut self.shard, &mut self.links);
        self.quic_transmit(now);
        for outbox in self.links.to_shards.iter_mut().flatten() {
            outbox.flush();
        }
        self.quic.as_ref().is_some_and(|q| q.bridge.busy())
    }
}
