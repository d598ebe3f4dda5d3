//! The IO layer: one thread per shard driving a [`dp_shard::Shard`] on real sockets, the links
//! between shards and to control, and the control thread.
//!
//! This is the **epoll backend** (via `mio`): each shard thread owns an `SO_REUSEPORT` listener,
//! its connections and a waker, and follows the shard's driving rule — read, feed the shard,
//! write what it queued, route its events, sleep until its next deadline or a wake-up. Shards
//! talk only through bounded `dp-link` rings (credited, so must-deliver messages are never
//! dropped; a sender without credit keeps them in order in a local backlog). Connections move
//! between shards with their socket (`HandOff`).
//!
//! The control thread here keeps stored envelopes **in memory**: durable storage (SQLite,
//! PostgreSQL) comes with the control plane.
//!
//! This crate owns the clock, the OS randomness and the threads, so it opts out of the
//! workspace's sans-IO bans.
#![allow(clippy::disallowed_methods)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod control;
mod link;
mod metrics;
mod shard;

use core::net::SocketAddr;
use core::time::Duration;
use dp_core::{Instant, Rng};
use dp_noise::StaticKeypair;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// What `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Shards (threads), at least 1.
    pub shards: u16,
    /// The server's static key.
    pub key: StaticKeypair,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Bytes that may wait for one slow connection before it is cut off.
    pub outbound_bytes_max: usize,
    /// Connections one source (IPv4 address or IPv6 /64) may hold on each shard.
    pub conns_per_source_max: u32,
    /// How long shutdown waits for output to drain.
    pub drain_deadline: Duration,
    /// Where to serve `GET /metrics` (Prometheus text), if anywhere. It needs no credential:
    /// bind it to a private address.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Defaults: one shard per available core.
    pub fn new(listen: SocketAddr, key: StaticKeypair) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            listen,
            shards: u16::try_from(cores).unwrap_or(u16::MAX),
            key,
            idle_timeout: Duration::from_secs(90),
            outbound_bytes_max: 1 << 20,
            conns_per_source_max: 4096,
            drain_deadline: Duration::from_secs(5),
            metrics_listen: None,
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
    metrics_addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every shard's listener, starts the shard threads and the control thread.
    pub fn start(config: ServerConfig) -> io::Result<Self> {
        if config.shards == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at least one shard",
            ));
        }
        let clock = Clock::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut key_bytes = [0u8; 8];
        OsRng.private_fill(&mut key_bytes);
        let routing_key = u64::from_le_bytes(key_bytes);

        // The first listener fixes the port (when 0 was asked for); the others share it.
        let mut listeners = Vec::new();
        let mut local_addr = config.listen;
        for _ in 0..config.shards {
            let listener = shard::listen(local_addr)?;
            local_addr = listener.local_addr()?;
            listeners.push(listener);
        }

        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        for _ in 0..=config.shards {
            let poll = mio::Poll::new()?;
            wakers.push(Arc::new(mio::Waker::new(poll.registry(), link::WAKER)?));
            polls.push(poll);
        }
        let mut mesh = link::Mesh::new(usize::from(config.shards), &wakers);
        let metrics = Arc::new(metrics::Metrics::new(usize::from(config.shards)));
        let metrics_listener = config.metrics_listen.map(metrics::bind).transpose()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;

        let mut threads = Vec::new();
        let control_poll = polls.remove(0);
        let control_links = mesh.take_control();
        let control_stop = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name("commucat-control".into())
                .spawn(move || control::run(control_poll, control_links, control_stop))?,
        );
        for (index, (listener, poll)) in listeners.into_iter().zip(polls).enumerate() {
            let links = mesh.take_shard(index);
            let thread = shard::ShardThread::new(
                index,
                &config,
                routing_key,
                clock,
                listener,
                poll,
                links,
                Arc::clone(&metrics),
                Arc::clone(&stop),
            )?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("commucat-shard-{index}"))
                    .spawn(move || thread.run())?,
            );
        }
        if let Some(listener) = metrics_listener {
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name("commucat-metrics".into())
                    .spawn(move || metrics::serve(listener, metrics, stop))?,
            );
        }
        Ok(Self {
            local_addr,
            metrics_addr,
            stop,
            wakers,
            threads,
        })
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, tells clients to reconnect (`GoAway`), drains output within the
    /// configured deadline, and joins every thread.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
