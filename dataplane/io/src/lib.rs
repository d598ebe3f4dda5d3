//! The IO layer: one thread per shard driving a [`dp_shard::Shard`] on real sockets, the links
//! between shards and to control, and the control thread.
//!
//! Two backends ([`Backend`]), chosen at start:
//! - **io_uring**: each shard thread is a glommio `LocalExecutor` pinned to its core, with its
//!   own `SO_REUSEPORT` listener and connections; readiness and timers come from the
//!   executor's io_uring, and a shard asleep in it is woken from other threads through
//!   glommio's cross-executor notification;
//! - **epoll** (via `mio`): each shard thread owns an `SO_REUSEPORT` listener, its connections
//!   and a waker.
//!
//! Both follow the shard's driving rule — read, feed the shard, write what it queued, route its
//! events, sleep until its next deadline or a wake-up. [`Backend::Auto`] probes io_uring
//! ([`probe_uring`]) and falls back to epoll with a logged reason. Shards talk only through
//! bounded `dp-link` rings (credited, so must-deliver messages are never dropped; a sender
//! without credit keeps them in order in a local backlog), woken at most once per flush.
//! Connections move between shards with their socket (`HandOff`).
//!
//! QUIC ([`ServerConfig::quic_listen`], both backends): each shard also owns an
//! `SO_REUSEPORT` UDP socket and a `dp_quic::QuicServer`; a QUIC stream is bridged to a shard
//! connection like a TCP socket, and a session homed elsewhere moves while its QUIC
//! connection stays and its stream bytes are relayed over the links (design note 0008).
//!
//! [`Server::start`] runs an in-memory control thread (stored envelopes in memory; for tests
//! and benchmarks). `commucat serve` uses [`Server::start_with_control`] and serves the
//! [`ControlPort`] with the durable control side (`control-delivery`).
//!
//! This crate owns the clock, the OS randomness and the threads, so it opts out of the
//! workspace's sans-IO bans.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod control;
mod link;
mod metrics;
mod port;
mod quic;
mod shard;
mod uring;

pub use backend::{Backend, StartError, UringUnavailable, probe_uring};
pub use control::{
    ACCOUNT_DEVICES_MAX, ACCOUNTS_DEFINED_MAX, CONVERSATIONS_DEFINED_MAX, Conversations,
    FRIENDS_MAX, Friendships,
};
pub use port::ControlPort;

use core::net::SocketAddr;
use core::time::Duration;
use dp_core::{Instant, Rng};
use dp_noise::StaticKeypair;
use link::{Doorbell, TaskBell};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// What `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where to serve the QUIC carrier (UDP; port 0 picks a free port), if anywhere. Both
    /// backends serve it.
    pub quic_listen: Option<SocketAddr>,
    /// Shards (threads), at least 1.
    pub shards: u16,
    /// The server's static key.
    pub key: StaticKeypair,
    /// The key it replaced and how much longer clients may still use it (after
    /// `commucat rotate-keys`); handshakes to it are accepted until then.
    pub previous_key: Option<(StaticKeypair, Duration)>,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Bytes that may wait for one slow connection before it is cut off.
    pub outbound_bytes_max: usize,
    /// Envelopes one connection may hold unacknowledged before it is cut off.
    pub inflight_max: usize,
    /// Connections one source (IPv4 address or IPv6 /64) may hold on each shard.
    pub conns_per_source_max: u32,
    /// How long shutdown waits for output to drain.
    pub drain_deadline: Duration,
    /// Where to serve `GET /metrics` (Prometheus text), if anywhere. It needs no credential:
    /// bind it to a private address.
    pub metrics_listen: Option<SocketAddr>,
    /// The IO backend.
    pub backend: Backend,
    /// Tells whether io_uring can be used ([`probe_uring`]); replace it to simulate a machine
    /// without io_uring.
    pub uring_probe: fn() -> Result<(), UringUnavailable>,
}

impl ServerConfig {
    /// Defaults: one shard per available core.
    pub fn new(listen: SocketAddr, key: StaticKeypair) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            listen,
            quic_listen: None,
            shards: u16::try_from(cores).unwrap_or(u16::MAX),
            key,
            previous_key: None,
            idle_timeout: Duration::from_secs(90),
            outbound_bytes_max: 1 << 20,
            inflight_max: 4096,
            conns_per_source_max: 4096,
            drain_deadline: Duration::from_secs(5),
            metrics_listen: None,
            backend: Backend::Auto,
            uring_probe: probe_uring,
        }
    }
}

/// Randomness from the operating system.
#[derive(Debug, Default)]
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

/// The process clock: monotonic nanoseconds from the server's start, and the wall clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(self) -> Instant {
        Instant(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    pub(crate) fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    bells: Vec<Doorbell>,
    threads: Vec<JoinHandle<()>>,
    backend: Backend,
    fallback: Option<UringUnavailable>,
    /// The in-memory control's conversations (none with another control side).
    conversations: Option<Conversations>,
    /// The in-memory control's accounts and friendships (none with another control side).
    friendships: Option<Friendships>,
}

impl Server {
    /// Chooses the backend ([`ServerConfig::backend`]), binds every shard's listener, starts
    /// the shard threads and the control thread.
    ///
    /// With [`Backend::Uring`] it fails with [`StartError::Uring`] when io_uring cannot be
    /// used; with [`Backend::Auto`] it then runs on epoll and says why on stderr.
    pub fn start(config: ServerConfig) -> Result<Self, StartError> {
        Self::start_with(config, ControlSide::InMemory)
    }

    /// Like [`Server::start`], with the caller's control side instead of the in-memory one:
    /// `attach` gets the [`ControlPort`] once the shards run (they may already have sent on
    /// it) and must keep serving it, for as long as the server runs and after
    /// [`Server::shutdown`] until the port is empty, so what the shards stored on the way
    /// out is committed.
    pub fn start_with_control(
        config: ServerConfig,
        attach: impl FnOnce(ControlPort) + Send + 'static,
    ) -> Result<Self, StartError> {
        Self::start_with(config, ControlSide::Attach(Box::new(attach)))
    }

    fn start_with(config: ServerConfig, side: ControlSide) -> Result<Self, StartError> {
        if config.shards == 0 {
            return Err(StartError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one shard",
            )));
        }
        let (backend, fallback) = match config.backend {
            Backend::Epoll => (Backend::Epoll, None),
            Backend::Uring => match (config.uring_probe)() {
                Ok(()) => (Backend::Uring, None),
                Err(reason) => return Err(StartError::Uring(reason)),
            },
            Backend::Auto => match (config.uring_probe)() {
                Ok(()) => (Backend::Uring, None),
                Err(reason) => {
                    eprintln!("io_uring unavailable, running on epoll: {reason}");
                    (Backend::Epoll, Some(reason))
                }
            },
        };
        let metrics = Arc::new(metrics::Metrics::new(usize::from(config.shards)));
        let metrics_listener = config.metrics_listen.map(metrics::bind).transpose()?;
        let (control_bell, control_poll) = match &side {
            ControlSide::InMemory => {
                let poll = mio::Poll::new()?;
                let waker = mio::Waker::new(poll.registry(), link::WAKER)?;
                (Doorbell::Mio(Arc::new(waker)), Some(poll))
            }
            ControlSide::Attach(_) => (Doorbell::Task(Arc::new(TaskBell::default())), None),
        };
        let (mut server, control_links) = match backend {
            Backend::Uring => match Self::start_uring(&config, &metrics, &control_bell) {
                Ok(started) => started,
                // The probe passed but an executor could not be built: auto still falls back.
                Err(StartError::Uring(reason)) if config.backend == Backend::Auto => {
                    eprintln!("io_uring executors failed, running on epoll: {reason}");
                    let mut started = Self::start_epoll(&config, &metrics, &control_bell)?;
                    started.0.fallback = Some(reason);
                    started
                }
                Err(error) => return Err(error),
            },
            _ => {
                let mut started = Self::start_epoll(&config, &metrics, &control_bell)?;
                started.0.fallback = fallback;
                started
            }
        };
        match (side, control_poll, control_bell) {
            (ControlSide::InMemory, Some(poll), bell) => {
                let stop = Arc::clone(&server.stop);
                let friendships = Friendships::new(bell.clone());
                server.friendships = Some(friendships.clone());
                let conversations = Conversations::new(bell);
                server.conversations = Some(conversations.clone());
                let thread = std::thread::Builder::new()
                    .name("commucat-control".into())
                    .spawn(move || {
                        control::run(poll, control_links, stop, conversations, friendships)
                    })?;
                server.threads.push(thread);
            }
            (ControlSide::Attach(attach), _, Doorbell::Task(bell)) => {
                attach(ControlPort::new(control_links, bell));
            }
            _ => unreachable!("the control bell matches the control side"),
        }
        if let Some(listener) = metrics_listener {
            server.metrics_addr = Some(listener.local_addr()?);
            let stop = Arc::clone(&server.stop);
            let thread = std::thread::Builder::new()
                .name("commucat-metrics".into())
                .spawn(move || metrics::serve(listener, metrics, stop))?;
            server.threads.push(thread);
        }
        Ok(server)
    }

    fn start_epoll(
        config: &ServerConfig,
        metrics: &Arc<metrics::Metrics>,
        control_bell: &Doorbell,
    ) -> io::Result<(Self, link::ControlLinks)> {
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let routing_key = routing_key();

        // The first listener fixes the port (when 0 was asked for); the others share it.
        let mut listeners = Vec::new();
        let mut local_addr = config.listen;
        for _ in 0..config.shards {
            let listener = shard::listen(local_addr)?;
            local_addr = listener.local_addr()?;
            listeners.push(listener);
        }

        let (udp_sockets, quic_addr) = bind_quic(config)?;

        let mut polls = Vec::new();
        let mut bells = vec![control_bell.clone()];
        for _ in 0..config.shards {
            let poll = mio::Poll::new()?;
            bells.push(Doorbell::Mio(Arc::new(mio::Waker::new(
                poll.registry(),
                link::WAKER,
            )?)));
            polls.push(poll);
        }
        let mut mesh = link::Mesh::new(usize::from(config.shards), &bells);

        let control_links = mesh.take_control();
        let mut threads = Vec::new();
        let sockets = listeners.into_iter().zip(polls).zip(udp_sockets);
        for (index, ((listener, poll), udp)) in sockets.enumerate() {
            let links = mesh.take_shard(index);
            let thread = shard::ShardThread::new(
                index,
                config,
                routing_key,
                clock,
                listener,
                poll,
                links,
                Arc::clone(metrics),
                Arc::clone(&stop),
                udp,
            )?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("commucat-shard-{index}"))
                    .spawn(move || thread.run())?,
            );
        }
        let server = Self {
            local_addr,
            quic_addr,
            metrics_addr: None,
            stop,
            bells,
            threads,
            backend: Backend::Epoll,
            fallback: None,
            conversations: None,
            friendships: None,
        };
        Ok((server, control_links))
    }

    fn start_uring(
        config: &ServerConfig,
        metrics: &Arc<metrics::Metrics>,
        control_bell: &Doorbell,
    ) -> Result<(Self, link::ControlLinks), StartError> {
        log_library_warnings();
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let routing_key = routing_key();
        let (placeholder, local_addr) = uring::reserve_port(config.listen)?;
        let (mut udp_sockets, quic_addr) = bind_quic(config)?;

        let mut bells = vec![control_bell.clone()];
        for _ in 0..config.shards {
            bells.push(Doorbell::Task(Arc::new(TaskBell::default())));
        }
        let mut mesh = link::Mesh::new(usize::from(config.shards), &bells);
        let control_links = mesh.take_control();
        let mut server = Self {
            local_addr,
            quic_addr,
            metrics_addr: None,
            stop: Arc::clone(&stop),
            bells: bells.clone(),
            threads: Vec::new(),
            backend: Backend::Uring,
            fallback: None,
            conversations: None,
            friendships: None,
        };
        let cpus = backend::allowed_cpus();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        for index in 0..usize::from(config.shards) {
            let Doorbell::Task(bell) = &bells[1 + index] else {
                continue;
            };
            let shard = uring::UringShard::new(
                index,
                config,
                routing_key,
                clock,
                local_addr,
                mesh.take_shard(index),
                Arc::clone(metrics),
                Arc::clone(bell),
                Arc::clone(&stop),
                udp_sockets[index].take(),
            )?;
            match shard.spawn(uring::cpu_for(index, &cpus), ready_tx.clone()) {
                Ok(thread) => server.threads.push(thread),
                Err(error) => {
                    server.shutdown();
                    return Err(error.into());
                }
            }
        }
        drop(ready_tx);
        // Every executor reports once: its rings are set up and its listener bound.
        for _ in 0..config.shards {
            let report = ready.recv().unwrap_or_else(|_| {
                Err(StartError::Uring(UringUnavailable::Other {
                    errno: None,
                    message: "a shard's executor stopped before it started".into(),
                }))
            });
            if let Err(error) = report {
                server.shutdown();
                return Err(error);
            }
        }
        drop(placeholder);
        Ok((server, control_links))
    }

    /// The conversations of the in-memory control of [`Server::start`], to define for tests
    /// and benchmarks; `None` with another control side (which keeps its own).
    pub fn conversations(&self) -> Option<&Conversations> {
        self.conversations.as_ref()
    }

    /// The accounts and friendships of the in-memory control of [`Server::start`], for
    /// presence in tests; `None` with another control side.
    pub fn friendships(&self) -> Option<&Friendships> {
        self.friendships.as_ref()
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the QUIC carrier listens (UDP), if it does.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// Where `GET /metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The backend it runs on: [`Backend::Uring`] or [`Backend::Epoll`].
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why [`Backend::Auto`] fell back to epoll, if it did.
    pub fn fallback_reason(&self) -> Option<&UringUnavailable> {
        self.fallback.as_ref()
    }

    /// Stops accepting, tells clients to reconnect (`GoAway`), drains output within the
    /// configured deadline, and joins every thread.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for bell in &self.bells {
            bell.ring();
        }
        if let Some(addr) = self.metrics_addr {
            metrics::wake(addr);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Prints warnings of the libraries underneath (glommio says through `log` when it cannot
/// register its buffers or lock memory) on stderr, unless the program installed a logger.
struct StderrWarnings;

impl log::Log for StderrWarnings {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static STDERR_WARNINGS: StderrWarnings = StderrWarnings;

fn log_library_warnings() {
    if log::set_logger(&STDERR_WARNINGS).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Every shard's QUIC socket (`None`s without QUIC) and the address they share: the first
/// fixes the port (when 0 was asked for), the others join it with `SO_REUSEPORT`.
type QuicSockets = (Vec<Option<std::net::UdpSocket>>, Option<SocketAddr>);

fn bind_quic(config: &ServerConfig) -> io::Result<QuicSockets> {
    let mut sockets = Vec::new();
    let mut quic_addr = None;
    if let Some(mut addr) = config.quic_listen {
        for _ in 0..config.shards {
            let socket = shard::bind_udp(addr)?;
            addr = socket.local_addr()?;
            sockets.push(Some(socket));
        }
        quic_addr = Some(addr);
    }
    sockets.resize_with(usize::from(config.shards), || None);
    Ok((sockets, quic_addr))
}

fn routing_key() -> u64 {
    let mut key_bytes = [0u8; 8];
    OsRng.private_fill(&mut key_bytes);
    u64::from_le_bytes(key_bytes)
}

/// Who serves the control side of the links.
enum ControlSide {
    /// The in-memory control thread (`control.rs`).
    InMemory,
    /// The caller's, handed the [`ControlPort`].
    Attach(Box<dyn FnOnce(ControlPort) + Send>),
}
