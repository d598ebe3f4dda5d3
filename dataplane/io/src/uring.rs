//! The io_uring backend: each shard is a glommio `LocalExecutor` pinned to its core, with its
//! own `SO_REUSEPORT` listener and connections, driving the same sans-IO `Shard` by the same
//! rule as the epoll backend.
//!
//! Tasks of one shard (all on its one thread):
//! - the **main task** owns the turn: drain the links, expire timers, route the shard's events,
//!   write what `poll_transmit` gives for every dirty connection, flush the links; then sleep
//!   until `poll_timeout`, a local kick, or the doorbell of a link ([`TaskBell`], rung from other
//!   threads through glommio's cross-executor wake-up: an eventfd the sleeping ring waits on);
//! - the **accept task** accepts connections;
//! - one **connection task** per socket, woken by io_uring readiness: it reads into the shard's
//!   one read buffer, feeds the shard and kicks the main task; when a write would block it is
//!   the task that resumes the write once the socket is writable.
//!
//! glommio's sockets submit readiness polls through io_uring and move bytes with non-blocking
//! `recv`/`send`, so no read is ever in flight with a buffer the kernel still owns: a socket
//! can be handed to another shard at any point between reads.
//!
//! With QUIC on, a **datagram task** receives on the shard's UDP socket (glommio's
//! `recv_from`: a direct `recvmsg` first, io_uring when nothing is there) into the QUIC bridge
//! (`quic.rs`, shared with epoll) and kicks the main task, which sends what the bridge has with
//! non-blocking `send_to` on a duplicate of the socket.

use crate::backend::{StartError, UringUnavailable};
use crate::link::{ShardLinks, TaskBell};
use crate::metrics::{self, Metrics};
use crate::quic::{QuicBridge, QuicGauges};
use crate::{Clock, OsRng, ServerConfig};
use core::cell::RefCell;
use core::net::SocketAddr;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use dp_core::Instant;
use dp_shard::{ConnId, Shard, ShardEvent};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Messages taken from each link per turn.
const LINK_BUDGET: usize = 1024;
/// Bytes read per `recv`.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection task makes before it lets the others run.
const READ_BUDGET: usize = 16;
/// The longest sleep (the stop flag and the wall clock are looked at after it).
const IDLE_MAX: Duration = Duration::from_millis(250);
/// Submission-queue entries per ring (glommio makes three rings per executor). Within the
/// 2048 that keeps the rings inside a small locked-memory limit.
const RING_DEPTH: usize = 1024;
/// Registered IO memory per executor. glommio uses it for file IO only (its sockets move bytes
/// with `recv`/`send`), so the floor it accepts is enough; it also fits a small
/// `RLIMIT_MEMLOCK` for a non-root process, whose rings and buffers count against it.
const IO_MEMORY: usize = 512 * 1024;
/// How long the main task steps aside when its links still hold work: long enough that the
/// executor runs out of tasks and reaps io_uring completions (the sockets' readiness), as
/// `epoll_wait` with a zero timeout does in the epoll backend. A plain yield would not: glommio
/// reaps completions only when no task is runnable or its preemption timer fires (100 ms).
const BUSY_PAUSE: Duration = Duration::from_micros(10);

/// One shard before its executor starts.
pub(crate) struct UringShard {
    index: usize,
    shard: Shard<OsRng>,
    /// With QUIC on: the bridge and the shard's UDP socket.
    quic: Option<(QuicBridge, std::net::UdpSocket)>,
    clock: Clock,
    listen: SocketAddr,
    links: ShardLinks,
    metrics: Arc<Metrics>,
    bell: Arc<TaskBell>,
    stop: Arc<AtomicBool>,
    drain_deadline: Duration,
}

impl UringShard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        config: &ServerConfig,
        routing_key: u64,
        clock: Clock,
        listen: SocketAddr,
        links: ShardLinks,
        metrics: Arc<Metrics>,
        bell: Arc<TaskBell>,
        stop: Arc<AtomicBool>,
        udp: Option<std::net::UdpSocket>,
    ) -> io::Result<Self> {
        let shard = crate::shard::new_shard(index, config, routing_key, clock)?;
        let quic = match udp {
            Some(socket) => Some((QuicBridge::new(index, config, clock)?, socket)),
            None => None,
        };
        Ok(Self {
            index,
            shard,
            quic,
            clock,
            listen,
            links,
            metrics,
            bell,
            stop,
            drain_deadline: config.drain_deadline,
        })
    }

    /// Starts the shard's thread: it builds a glommio executor pinned to `cpu`, binds the
    /// listener and reports on `ready` before it serves.
    pub(crate) fn spawn(
        self,
        cpu: Option<usize>,
        ready: mpsc::Sender<Result<(), StartError>>,
    ) -> io::Result<JoinHandle<()>> {
        let name = format!("commucat-shard-{}", self.index);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
                let builder = LocalExecutorBuilder::new(placement)
                    .name(&name)
                    .ring_depth(RING_DEPTH)
                    .io_memory(IO_MEMORY);
                let executor = match builder.make() {
                    Ok(executor) => executor,
                    Err(error) => {
                        let _ = ready.send(Err(StartError::Uring(executor_error(&error))));
                        return;
                    }
                };
                executor.run(self.run(ready));
            })
    }

    async fn run(self, ready: mpsc::Sender<Result<(), StartError>>) {
        let listener = match TcpListener::bind(self.listen) {
            Ok(listener) => listener,
            Err(error) => {
                let error = io::Error::other(format!("shard {}: {error}", self.index));
                let _ = ready.send(Err(StartError::Io(error)));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        let Self {
            index,
            shard,
            quic,
            clock,
            links,
            metrics,
            bell,
            stop,
            drain_deadline,
            ..
        } = self;
        let (quic, udp) = match quic {
            Some((bridge, socket)) => match socket.try_clone() {
                Ok(sender) => {
                    let receiver = glommio::net::UdpSocket::from(socket2_04::Socket::from(socket));
                    (Some(bridge), Some((sender, receiver)))
                }
                Err(error) => {
                    eprintln!("shard {index}: QUIC socket: {error}");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let (udp_send, udp_receive) = match udp {
            Some((sender, receiver)) => (Some(sender), Some(receiver)),
            None => (None, None),
        };
        let driver = Rc::new(RefCell::new(Driver {
            index,
            shard,
            quic,
            udp_send,
            clock,
            links,
            metrics,
            sockets: HashMap::new(),
            read_buf: vec![0u8; READ_CHUNK],
            kicked: false,
            main_waker: None,
            adopted: Vec::new(),
            wall_clock_at: clock.now(),
        }));
        let acceptor = glommio::spawn_local(accept_loop(Rc::clone(&driver), listener));
        let receiver = udp_receive
            .map(|socket| glommio::spawn_local(datagram_loop(Rc::clone(&driver), socket)));
        main_loop(&driver, &bell, &stop).await;
        // Dropping the accept task cancels it and closes the listener.
        drop(acceptor);
        shut_down(&driver, drain_deadline).await;
        // QUIC needed its datagrams (acknowledgements) until the end of the shutdown.
        drop(receiver);
    }
}

fn executor_error(error: &glommio::GlommioError<()>) -> UringUnavailable {
    let message = error.to_string();
    if message.to_ascii_lowercase().contains("memlock") {
        return UringUnavailable::MemlockTooLow {
            limit: crate::backend::memlock_limit().unwrap_or(0),
            needed: crate::backend::MEMLOCK_NEEDED,
        };
    }
    UringUnavailable::Other {
        errno: None,
        message: format!("glommio executor: {message}"),
    }
}

/// A connection's socket and its task.
struct Socket {
    stream: TcpStream,
    /// The connection task's waker (set on its first poll).
    waker: Option<Waker>,
    /// A write would have blocked: the connection task resumes it when writable.
    blocked: bool,
}

/// The state every task of the shard shares (one thread: `RefCell`, borrowed only between
/// awaits).
struct Driver {
    index: usize,
    shard: Shard<OsRng>,
    quic: Option<QuicBridge>,
    /// The QUIC socket's duplicate that the main task sends on (non-blocking).
    udp_send: Option<std::net::UdpSocket>,
    clock: Clock,
    links: ShardLinks,
    metrics: Arc<Metrics>,
    sockets: HashMap<ConnId, Socket>,
    read_buf: Vec<u8>,
    /// A connection task fed the shard since the main task's last turn.
    kicked: bool,
    main_waker: Option<Waker>,
    /// Connections adopted this turn, whose tasks the main task starts.
    adopted: Vec<ConnId>,
    wall_clock_at: Instant,
}

async fn main_loop(driver: &Rc<RefCell<Driver>>, bell: &TaskBell, stop: &AtomicBool) {
    let mut timer = Timer::new(IDLE_MAX);
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let (sleep, adopted) = {
            let mut d = driver.borrow_mut();
            let sleep = d.turn();
            (sleep, core::mem::take(&mut d.adopted))
        };
        for id in adopted {
            glommio::spawn_local(conn_task(Rc::clone(driver), id)).detach();
        }
        timer.reset(sleep.unwrap_or(BUSY_PAUSE));
        core::future::poll_fn(|cx| {
            bell.register(cx.waker());
            {
                let mut d = driver.borrow_mut();
                if core::mem::take(&mut d.kicked) {
                    return Poll::Ready(());
                }
                if !d
                    .main_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    d.main_waker = Some(cx.waker().clone());
                }
            }
            if bell.take() || stop.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            Pin::new(&mut timer).poll(cx).map(|_| ())
        })
        .await;
    }
}

async fn accept_loop(driver: Rc<RefCell<Driver>>, listener: TcpListener) {
    let mut backoff = Timer::new(Duration::from_millis(10));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let accepted = driver.borrow_mut().accept(stream);
                if let Some(id) = accepted {
                    glommio::spawn_local(conn_task(Rc::clone(&driver), id)).detach();
                }
            }
            Err(error) => {
                // Out of descriptors or memory: let connections close before trying again.
                eprintln!("shard {}: accept failed: {error}", driver.borrow().index);
                backoff.reset(Duration::from_millis(10));
                (&mut backoff).await;
            }
        }
    }
}

/// Receives QUIC datagrams into the bridge, one at a time, kicking the main task.
async fn datagram_loop(driver: Rc<RefCell<Driver>>, socket: glommio::net::UdpSocket) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut backoff = Timer::new(Duration::from_millis(1));
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let mut d = driver.borrow_mut();
                let now = d.clock.now();
                if let Some(quic) = d.quic.as_mut() {
                    quic.handle_datagram(now, from, &buf[..n]);
                }
                d.kick();
            }
            // An ICMP error for an earlier send: the next datagram may be fine. Anything
            // else: pause, so a failing socket cannot spin the executor.
            Err(_) => {
                backoff.reset(Duration::from_millis(1));
                (&mut backoff).await;
            }
        }
    }
}

async fn conn_task(driver: Rc<RefCell<Driver>>, id: ConnId) {
    core::future::poll_fn(|cx| driver.borrow_mut().poll_conn(cx, id)).await;
}

impl Driver {
    /// One turn of the driving rule; `Some(timeout)` when the shard may sleep that long.
    fn turn(&mut self) -> Option<Duration> {
        let now = self.clock.now();
        self.kicked = false;
        if now.saturating_duration_since(self.wall_clock_at).as_secs() >= 10 {
            self.shard.handle_wall_clock(now, Clock::unix_ms());
            self.wall_clock_at = now;
        }
        self.drain_links(now);
        if let Some(quic) = self.quic.as_mut() {
            quic.handle_timeout(now);
            quic.handle_events(now, &mut self.shard, &mut self.links);
        }
        if self.shard.poll_timeout() <= now {
            self.shard.handle_timeout(now);
        }
        self.route_events(now);
        while let Some(id) = self.shard.poll_dirty() {
            self.write(now, id);
        }
        self.route_events(now);
        self.quic_transmit(now);
        for outbox in self.links.to_shards.iter_mut().flatten() {
            outbox.flush();
        }
        self.links.to_control.flush();
        let quic = self
            .quic
            .as_ref()
            .map_or_else(QuicGauges::default, QuicBridge::gauges);
        metrics::publish_shard(&self.metrics, self.index, &self.shard, &self.links, quic);
        let idle = self
            .links
            .from_shards
            .iter()
            .flatten()
            .all(|inbox| inbox.park())
            && self.links.from_control.park();
        if !idle || !self.adopted.is_empty() {
            return None;
        }
        let now = self.clock.now();
        let mut wake = self.shard.poll_timeout();
        if let Some(at) = self.quic.as_ref().and_then(QuicBridge::poll_timeout) {
            wake = wake.min(at);
        }
        Some(wake.saturating_duration_since(now).min(IDLE_MAX))
    }

    /// Sends what the QUIC bridge has with non-blocking sends on the socket's duplicate (GSO
    /// batches as one `sendmsg` where the kernel can).
    fn quic_transmit(&mut self, now: Instant) {
        if let (Some(quic), Some(socket)) = (self.quic.as_mut(), self.udp_send.as_ref()) {
            quic.transmit(now, socket);
        }
    }

    fn kick(&mut self) {
        if !self.kicked {
            self.kicked = true;
            if let Some(waker) = &self.main_waker {
                waker.wake_by_ref();
            }
        }
    }

    fn accept(&mut self, stream: TcpStream) -> Option<ConnId> {
        let peer = stream.peer_addr().ok()?;
        let id = self.shard.handle_connect(self.clock.now(), peer)?;
        let _ = stream.set_nodelay(true);
        self.sockets.insert(
            id,
            Socket {
                stream,
                waker: None,
                blocked: false,
            },
        );
        Some(id)
    }

    /// A connection task's poll: resume a blocked write, read what is there, feed the shard.
    fn poll_conn(&mut self, cx: &mut Context<'_>, id: ConnId) -> Poll<()> {
        let now = self.clock.now();
        let Some(socket) = self.sockets.get_mut(&id) else {
            return Poll::Ready(());
        };
        if socket.waker.is_none() {
            socket.waker = Some(cx.waker().clone());
        }
        if socket.blocked {
            socket.blocked = false;
            if !self.write(now, id) {
                self.kick();
                return Poll::Ready(());
            }
        }
        for _ in 0..READ_BUDGET {
            let Some(socket) = self.sockets.get_mut(&id) else {
                return Poll::Ready(());
            };
            match Pin::new(&mut socket.stream).poll_read(cx, &mut self.read_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.forget(id);
                    self.shard.handle_closed(id);
                    self.kick();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => {
                    self.shard.handle_received(now, id, &self.read_buf[..n]);
                    self.kick();
                }
                Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(_)) => {
                    self.forget(id);
                    self.shard.handle_closed(id);
                    self.kick();
                    return Poll::Ready(());
                }
            }
        }
        // More may be waiting: let the other connections and the main task run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Removes a socket and lets its task finish.
    fn forget(&mut self, id: ConnId) -> Option<TcpStream> {
        let socket = self.sockets.remove(&id)?;
        if let Some(waker) = socket.waker {
            waker.wake();
        }
        Some(socket.stream)
    }

    /// Writes what the shard has for `id`; returns false if the connection failed.
    fn write(&mut self, now: Instant, id: ConnId) -> bool {
        if let Some(quic) = self.quic.as_mut()
            && quic.flush(now, id, &mut self.shard, &mut self.links)
        {
            return true;
        }
        loop {
            let Some(socket) = self.sockets.get_mut(&id) else {
                return false;
            };
            let bytes = self.shard.poll_transmit(now, id);
            if bytes.is_empty() {
                socket.blocked = false;
                return true;
            }
            // A write that would block registers the connection task for writability.
            let waker = socket.waker.as_ref().unwrap_or(Waker::noop());
            let mut cx = Context::from_waker(waker);
            match Pin::new(&mut socket.stream).poll_write(&mut cx, bytes) {
                Poll::Ready(Ok(0)) => return false,
                Poll::Ready(Ok(n)) => self.shard.handle_written(id, n),
                Poll::Pending => {
                    // Resumed by the connection task (on its first poll if it has not run).
                    socket.blocked = true;
                    return true;
                }
                Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(_)) => {
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
                quic.handle_relay(now, from, relay, &mut self.shard, &mut self.links);
            }
        }
        for (handoff, stream) in handoffs {
            let Some(id) = self.shard.adopt(now, *handoff) else {
                continue;
            };
            // The socket becomes this executor's: its readiness polls go to this ring.
            let stream = TcpStream::from(socket2_04::Socket::from(stream));
            self.sockets.insert(
                id,
                Socket {
                    stream,
                    waker: None,
                    blocked: false,
                },
            );
            self.adopted.push(id);
        }
    }

    fn route_events(&mut self, now: Instant) {
        while let Some(event) = self.shard.poll_event() {
            if let Some(quic) = self.quic.as_mut() {
                let (shard, links) = (&mut self.shard, &mut self.links);
                let taken = match &event {
                    ShardEvent::Close { conn, reason } => {
                        quic.handle_close(now, *conn, *reason, shard, links)
                    }
                    ShardEvent::HandOff { conn, to } => {
                        quic.handle_handoff(now, *conn, *to, shard, links)
                    }
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
                    let stream = self.forget(conn).and_then(|stream| {
                        // The socket leaves glommio as a duplicate descriptor; glommio closes
                        // its own when `stream` drops here.
                        socket2_04::SockRef::from(&stream).try_clone().ok()
                    });
                    let stream = stream.map(Into::into);
                    self.links.hand_off(&mut self.shard, conn, to, stream);
                }
                event @ (ShardEvent::ToShard { .. } | ShardEvent::ToControl(_)) => {
                    self.links.route(&mut self.shard, event);
                }
            }
        }
    }
}

async fn shut_down(driver: &Rc<RefCell<Driver>>, drain_deadline: Duration) {
    let ids: Vec<ConnId> = {
        let mut d = driver.borrow_mut();
        if let Some(quic) = d.quic.as_mut() {
            quic.stop_accepting();
        }
        d.shard.handle_shutdown(1_000);
        d.sockets.keys().copied().collect()
    };
    let deadline = std::time::Instant::now() + drain_deadline;
    let mut pause = Timer::new(Duration::from_millis(5));
    // Write out GoAway and anything pending, within the deadline.
    while std::time::Instant::now() < deadline {
        let pending = {
            let mut d = driver.borrow_mut();
            let now = d.clock.now();
            let mut pending = false;
            for id in &ids {
                if d.write(now, *id) && !d.shard.poll_transmit(now, *id).is_empty() {
                    pending = true;
                }
            }
            if d.quic.is_some() && d.quic_shutdown_step(now) {
                pending = true;
            }
            pending
        };
        if !pending {
            break;
        }
        pause.reset(Duration::from_millis(5));
        (&mut pause).await;
    }
    let mut d = driver.borrow_mut();
    for id in ids {
        d.forget(id);
        d.shard.handle_closed(id);
    }
    d.links.to_control.flush();
}

impl Driver {
    /// One turn of shutting down QUIC (see the epoll backend's): true while this shard still
    /// holds QUIC connections.
    fn quic_shutdown_step(&mut self, now: Instant) -> bool {
        self.drain_links(now);
        let Some(quic) = self.quic.as_mut() else {
            return false;
        };
        quic.drive_shutdown(now, &mut self.shard, &mut self.links);
        self.quic_transmit(now);
        for outbox in self.links.to_shards.iter_mut().flatten() {
            outbox.flush();
        }
        self.quic.as_ref().is_some_and(QuicBridge::busy)
    }
}

/// Which CPU shard `index` is pinned to: the process's allowed CPUs, round robin.
pub(crate) fn cpu_for(index: usize, allowed: &[usize]) -> Option<usize> {
    (!allowed.is_empty()).then(|| allowed[index % allowed.len()])
}

/// The placeholder that fixes the port for every shard's listener (port 0 asked): bound with
/// `SO_REUSEPORT` but never listening, so it joins no accept queue; dropped once the shards
/// have bound theirs.
pub(crate) fn reserve_port(addr: SocketAddr) -> io::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    Ok((socket, local))
}
