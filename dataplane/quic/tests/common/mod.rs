//! A test network: one QUIC server and some clients exchanging datagrams in one thread, in
//! simulated time, with a fixed one-way delay and a switch that drops everything (quinn's
//! `Pair`, generalised to several clients).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use dp_core::{Instant, SeededRng};
use dp_quic::{
    Certificate, EcnCodepoint, QuicClient, QuicConfig, QuicConnId, QuicEvent, QuicServer,
    StreamError, TimeBase, Transmit,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The one clock reading a test makes, as the IO layer does at start.
pub fn time_base() -> TimeBase {
    #[allow(clippy::disallowed_methods)]
    let epoch = std::time::Instant::now();
    TimeBase::new(epoch, Duration::from_secs(1_800_000_000))
}

/// The calls the network makes on either side.
pub trait Carrier {
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        bytes: &[u8],
    );
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<QuicEvent>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn read(&mut self, conn: QuicConnId, buf: &mut [u8]) -> Result<usize, StreamError>;
    fn write(&mut self, conn: QuicConnId, bytes: &[u8]) -> Result<usize, StreamError>;
}

macro_rules! carrier {
    ($ty:ty) => {
        impl Carrier for $ty {
            fn handle_datagram(
                &mut self,
                now: Instant,
                from: SocketAddr,
                local_ip: Option<IpAddr>,
                ecn: Option<EcnCodepoint>,
                bytes: &[u8],
            ) {
                <$ty>::handle_datagram(self, now, from, local_ip, ecn, bytes)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$ty>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
                <$ty>::poll_transmit(self, now, buf)
            }
            fn poll_event(&mut self) -> Option<QuicEvent> {
                <$ty>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$ty>::poll_timeout(self)
            }
            fn read(&mut self, conn: QuicConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
                <$ty>::read(self, conn, buf)
            }
            fn write(&mut self, conn: QuicConnId, bytes: &[u8]) -> Result<usize, StreamError> {
                <$ty>::write(self, conn, bytes)
            }
        }
    };
}
carrier!(QuicServer);
carrier!(QuicClient);

/// One side with its address, what it was told, and per-connection byte buffers.
pub struct Host<C> {
    pub carrier: C,
    pub addr: SocketAddr,
    pub events: Vec<QuicEvent>,
    /// Bytes read from each connection's stream.
    pub rx: BTreeMap<QuicConnId, Vec<u8>>,
    /// Bytes waiting to be written to each connection's stream.
    pub tx: BTreeMap<QuicConnId, VecDeque<u8>>,
    /// Connections whose peer finished the stream.
    pub finished: BTreeSet<QuicConnId>,
    /// Read streams as soon as they are readable.
    pub auto_read: bool,
    pub writes_blocked: u64,
}

impl<C: Carrier> Host<C> {
    fn new(carrier: C, addr: SocketAddr) -> Self {
        Self {
            carrier,
            addr,
            events: Vec::new(),
            rx: BTreeMap::new(),
            tx: BTreeMap::new(),
            finished: BTreeSet::new(),
            auto_read: true,
            writes_blocked: 0,
        }
    }

    /// Drains events, reads what is readable, writes what is queued. Returns whether anything
    /// happened.
    pub fn pump(&mut self) -> bool {
        let mut busy = false;
        while let Some(event) = self.carrier.poll_event() {
            busy = true;
            self.events.push(event);
            if let QuicEvent::Readable(conn) = event
                && self.auto_read
            {
                self.read_all(conn);
            }
        }
        let conns: Vec<QuicConnId> = self
            .tx
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            busy |= self.flush(conn);
        }
        busy
    }

    pub fn read_all(&mut self, conn: QuicConnId) {
        let mut buf = [0u8; 4096];
        loop {
            match self.carrier.read(conn, &mut buf) {
                Ok(0) => return,
                Ok(n) => self
                    .rx
                    .entry(conn)
                    .or_default()
                    .extend_from_slice(&buf[..n]),
                Err(StreamError::Finished) => {
                    self.finished.insert(conn);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn flush(&mut self, conn: QuicConnId) -> bool {
        let queue = self.tx.get_mut(&conn).unwrap();
        let mut moved = false;
        while !queue.is_empty() {
            let (front, _) = queue.as_slices();
            match self.carrier.write(conn, front) {
                Ok(0) => {
                    self.writes_blocked += 1;
                    break;
                }
                Ok(n) => {
                    queue.drain(..n);
                    moved = true;
                }
                Err(_) => break,
            }
        }
        moved
    }

    pub fn send(&mut self, conn: QuicConnId, bytes: &[u8]) {
        self.tx
            .entry(conn)
            .or_default()
            .extend(bytes.iter().copied());
        self.pump();
    }

    /// The connection ids of every `StreamOpened` so far.
    pub fn opened(&self) -> Vec<QuicConnId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                QuicEvent::StreamOpened { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self, conn: QuicConnId) -> Option<dp_quic::CloseReason> {
        self.events.iter().find_map(|e| match e {
            QuicEvent::Closed { conn: c, reason } if *c == conn => Some(*reason),
            _ => None,
        })
    }
}

pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

pub struct Net {
    pub now: Instant,
    pub server: Host<QuicServer>,
    pub clients: Vec<Host<QuicClient>>,
    /// In flight, by (arrival time, sequence).
    pub wire: BTreeMap<(Instant, u64), Datagram>,
    seq: u64,
    pub delay: Duration,
    /// Drop every datagram while set.
    pub cut: bool,
    pub config: QuicConfig,
    pub time: TimeBase,
    pub rng: SeededRng,
    pub delivered: u64,
    /// Every datagram delivered to the server, in order.
    pub to_server: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl Net {
    pub fn new(config: QuicConfig) -> Self {
        let mut rng = SeededRng::new(7);
        let time = time_base();
        let cert = Certificate::generate(&mut rng).unwrap();
        let server = QuicServer::new(config, &cert, time, 3, &mut rng).unwrap();
        Self {
            now: Instant(1_000_000),
            server: Host::new(server, "192.0.2.1:443".parse().unwrap()),
            clients: Vec::new(),
            wire: BTreeMap::new(),
            seq: 0,
            delay: Duration::from_millis(5),
            cut: false,
            config,
            time,
            rng,
            delivered: 0,
            to_server: Vec::new(),
            buf: Vec::new(),
        }
    }

    pub fn add_client(&mut self) -> usize {
        let port = 5000 + self.clients.len() as u16;
        self.add_client_at(SocketAddr::new([198, 51, 100, 7].into(), port))
    }

    pub fn add_client_at(&mut self, addr: SocketAddr) -> usize {
        let client = QuicClient::new(self.config, self.time, &mut self.rng).unwrap();
        self.clients.push(Host::new(client, addr));
        self.clients.len() - 1
    }

    /// Client `c` connects and the handshake runs until its stream is open; returns the
    /// client-side and server-side ids.
    pub fn connect(&mut self, c: usize) -> QuicConnId {
        let server = self.server.addr;
        self.clients[c].carrier.connect(self.now, server).unwrap()
    }

    fn collect<C: Carrier>(
        host: &mut Host<C>,
        now: Instant,
        buf: &mut Vec<u8>,
        out: &mut Vec<Datagram>,
    ) {
        while let Some(transmit) = host.carrier.poll_transmit(now, buf) {
            let size = transmit.segment_size.unwrap_or(transmit.len);
            for chunk in buf[..transmit.len].chunks(size) {
                out.push(Datagram {
                    from: host.addr,
                    to: transmit.destination,
                    bytes: chunk.to_vec(),
                });
            }
        }
    }

    /// Everything every side has to send goes on the wire. Returns whether anything did.
    fn send_all(&mut self) -> bool {
        let mut out = Vec::new();
        let mut buf = core::mem::take(&mut self.buf);
        Self::collect(&mut self.server, self.now, &mut buf, &mut out);
        for client in &mut self.clients {
            Self::collect(client, self.now, &mut buf, &mut out);
        }
        self.buf = buf;
        let busy = !out.is_empty();
        for datagram in out {
            if !self.cut {
                self.seq += 1;
                self.wire
                    .insert((self.now.saturating_add(self.delay), self.seq), datagram);
            }
        }
        busy
    }

    pub fn deliver(&mut self, datagram: &Datagram) {
        self.delivered += 1;
        let now = self.now;
        if datagram.to == self.server.addr {
            self.to_server.push(datagram.bytes.clone());
            self.server
                .carrier
                .handle_datagram(now, datagram.from, None, None, &datagram.bytes);
        } else if let Some(client) = self.clients.iter_mut().find(|c| c.addr == datagram.to) {
            client
                .carrier
                .handle_datagram(now, datagram.from, None, None, &datagram.bytes);
        }
    }

    fn pump_all(&mut self) -> bool {
        let mut busy = self.server.pump();
        for client in &mut self.clients {
            busy |= client.pump();
        }
        busy
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.wire.keys().next().map(|(at, _)| *at);
        let timers = core::iter::once(self.server.carrier.poll_timeout())
            .chain(self.clients.iter().map(|c| c.carrier.poll_timeout()))
            .flatten();
        for at in timers {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// Runs the network until nothing is in flight and nothing is due before `limit` from now
    /// (timers that far out, such as idle timeouts, are left pending).
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now.saturating_add(limit);
        for _ in 0..1_000_000 {
            self.pump_all();
            self.send_all();
            while let Some(entry) = self.wire.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let datagram = entry.remove();
                self.deliver(&datagram);
            }
            if self.pump_all() | self.send_all() {
                continue;
            }
            let Some(next) = self.next_deadline() else {
                return;
            };
            if next > end {
                return;
            }
            self.now = self.now.max(next);
            self.server.carrier.handle_timeout(self.now);
            for client in &mut self.clients {
                client.carrier.handle_timeout(self.now);
            }
        }
        panic!("no quiescence");
    }

    /// Runs until quiet, with timers up to a second out.
    pub fn run(&mut self) {
        self.run_for(Duration::from_secs(1));
    }
}
