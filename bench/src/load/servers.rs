//! The servers under load: a plain TCP echo (a thread of this process), `commucat serve` (a
//! child process, an already running one, or in-process for tests) and `nats-server` (a child
//! process). Each says which tasks' CPU time counts as the server's.

use super::sys;
use anyhow::{Context, Result, bail};
use dp_noise::StaticKeypair;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Name prefix of the echo server's thread.
const ECHO_THREAD: &str = "bench-echo";

/// A server the load runs against.
#[derive(Debug)]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// CommuCat's public key (zero for the others).
    pub server_key: [u8; 32],
    /// CommuCat's REST API, where it is served (the `fanout` scenario sets up its group there).
    pub api: Option<SocketAddr>,
    /// The process whose CPU time and memory are the server's, and the task-name prefix
    /// within it (`None`: all its tasks).
    pub pid: Option<u32>,
    prefix: Option<&'static str>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Echo {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
    Child(Child, Option<PathBuf>),
    InProcess(Option<dp_io::Server>),
    External,
}

impl Target {
    /// A server at `addr` that `serve` runs on a thread of this process named `thread` (its
    /// CPU is counted by the name's `prefix`) until its stop flag is set; `what` names it in
    /// the error that ends it.
    pub(super) fn in_thread(
        addr: SocketAddr,
        thread: String,
        prefix: &'static str,
        what: &'static str,
        serve: impl FnOnce(&AtomicBool) -> std::io::Result<()> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name(thread).spawn(move || {
            if let Err(error) = serve(&thread_stop) {
                eprintln!("{what}: {error}");
            }
        })?;
        Ok(Self {
            addr,
            server_key: [0; 32],
            api: None,
            pid: Some(std::process::id()),
            prefix: Some(prefix),
            kind: Kind::Echo {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// CPU time used so far by the server, in ns.
    pub fn cpu_ns(&self) -> Option<u64> {
        self.pid.map(|pid| sys::cpu_ns(pid, self.prefix))
    }

    /// Resident memory of the server process, in KiB (not for in-process servers).
    pub fn rss_kib(&self) -> Option<u64> {
        match self.kind {
            Kind::Child(..) | Kind::External => self.pid.and_then(sys::vm_rss_kib),
            Kind::Echo { .. } | Kind::InProcess(_) => None,
        }
    }

    /// Pins the server's tasks to `cpu`.
    pub fn pin(&self, cpu: usize) -> Result<()> {
        let Some(pid) = self.pid else { return Ok(()) };
        match self.prefix {
            None => sys::pin_task(pid, cpu, true)?,
            Some(prefix) => {
                for tid in sys::tasks(pid, Some(prefix)) {
                    sys::pin_task(tid, cpu, false)?;
                }
            }
        }
        Ok(())
    }

    /// Stops the server (SIGTERM for a child, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        match &mut self.kind {
            Kind::Echo { stop, thread } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Kind::Child(child, dir) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                for _ in 0..50 {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
                if let Some(dir) = dir.take() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Kind::InProcess(server) => {
                if let Some(server) = server.take() {
                    server.shutdown();
                }
            }
            Kind::External => {}
        }
    }
}

/// Starts the plain TCP echo server: one thread, one epoll loop, like one shard.
pub fn start_echo() -> Result<Target> {
    let mut listener = TcpListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    Target::in_thread(
        addr,
        format!("{ECHO_THREAD}-0"),
        ECHO_THREAD,
        "echo server",
        move |stop| echo_loop(&mut listener, stop),
    )
}

struct EchoConn {
    stream: TcpStream,
    out: Vec<u8>,
}

fn echo_loop(listener: &mut TcpListener, stop: &AtomicBool) -> std::io::Result<()> {
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
                    poll.registry().register(
                        &mut stream,
                        Token(next),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(
                        next,
                        EchoConn {
                            stream,
                            out: Vec::new(),
                        },
                    );
                    next += 1;
                }
                continue;
            }
            let token = event.token().0;
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            if echo_conn(conn, &mut buf).is_err() {
                conns.remove(&token);
            }
        }
    }
    Ok(())
}

/// Reads what is there and writes it back; keeps what the socket would not take.
fn echo_conn(conn: &mut EchoConn, buf: &mut [u8]) -> std::io::Result<()> {
    loop {
        if !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
            if !conn.out.is_empty() {
                return Ok(());
            }
        }
        match conn.stream.read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => match conn.stream.write(&buf[..n]) {
                Ok(written) => conn.out.extend_from_slice(&buf[written..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.out.extend_from_slice(&buf[..n]);
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Name of the UDP echo server's thread.
const ECHO_UDP_THREAD: &str = "bench-uecho";

/// Starts the plain UDP echo server: one thread, one socket, each datagram sent back.
pub fn start_echo_udp() -> Result<Target> {
    let mut socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse()?)?;
    let addr = socket.local_addr()?;
    Target::in_thread(
        addr,
        ECHO_UDP_THREAD.into(),
        ECHO_UDP_THREAD,
        "UDP echo server",
        move |stop| echo_udp_loop(&mut socket, stop),
    )
}

fn echo_udp_loop(socket: &mut mio::net::UdpSocket, stop: &AtomicBool) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(socket, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        loop {
            match socket.recv_from(&mut buf) {
                // A reply the socket cannot take now is dropped, as a real UDP server would.
                Ok((n, from)) => {
                    let _ = socket.send_to(&buf[..n], from);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// How to reach CommuCat.
#[derive(Clone, Debug)]
pub enum CommuCat {
    /// Start this `commucat` binary (`serve`) with this many shards.
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Shards.
        shards: u16,
        /// Serve the REST API too (on a free loopback port).
        api: bool,
    },
    /// An already running server; `pid` for its CPU time and memory, if known.
    External {
        /// Its address.
        addr: SocketAddr,
        /// Its public key.
        key: [u8; 32],
        /// Its process id.
        pid: Option<u32>,
        /// Its REST API, if the scenario needs it.
        api: Option<SocketAddr>,
    },
    /// dp-io's `Server` inside this process (for tests).
    InProcess {
        /// Shards.
        shards: u16,
    },
}

/// The default `commucat` binary: beside this one (both in `target/release`).
pub fn default_commucat_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("commucat")))
        .unwrap_or_else(|| PathBuf::from("commucat"))
}

/// Starts or reaches CommuCat. Every session of the run comes from 127.0.0.1, so a started
/// server gets a per-source connection cap above the process's file limit, and an output
/// bound per connection of 64 MiB (NATS's default).
pub fn start_commucat(how: &CommuCat) -> Result<Target> {
    match how {
        CommuCat::Spawn {
            binary,
            shards,
            api,
        } => spawn_commucat(binary, *shards, *api, false).map(|(target, _)| target),
        CommuCat::External {
            addr,
            key,
            pid,
            api,
        } => Ok(Target {
            addr: *addr,
            server_key: *key,
            api: *api,
            pid: *pid,
            prefix: None,
            kind: Kind::External,
        }),
        CommuCat::InProcess { shards } => {
            let mut rng = dp_core::SeededRng::new(0x5e);
            let key = StaticKeypair::generate(&mut rng);
            let mut config = dp_io::ServerConfig::new("127.0.0.1:0".parse()?, key.clone());
            config.shards = *shards;
            config.conns_per_source_max = 1 << 20;
            config.outbound_bytes_max = 64 << 20;
            config.inflight_max = 1 << 16;
            config.idle_timeout = Duration::from_secs(3600);
            let server = dp_io::Server::start(config)?;
            Ok(Target {
                addr: server.local_addr(),
                server_key: *key.public(),
                api: None,
                pid: Some(std::process::id()),
                prefix: Some("commucat-"),
                kind: Kind::InProcess(Some(server)),
            })
        }
    }
}

/// Starts `commucat serve` with QUIC on as well (`--quic-listen`), for `idle --carrier quic`;
/// returns the server and its QUIC address.
pub fn spawn_commucat_quic(binary: &Path, shards: u16) -> Result<(Target, SocketAddr)> {
    let (target, quic) = spawn_commucat(binary, shards, false, true)?;
    let quic = quic.context("commucat serve printed no QUIC address")?;
    Ok((target, quic))
}

fn spawn_commucat(
    binary: &Path,
    shards: u16,
    with_api: bool,
    quic: bool,
) -> Result<(Target, Option<SocketAddr>)> {
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p commucat`, or pass \
             --server-bin, or --server ADDR --server-key HEX for a running server",
            binary.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("commucat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        // The output bound per recipient matches NATS's default `max_pending` (64 MiB), and
        // the unacknowledged envelopes it may hold fill it (65 536 of 1 KiB), so a load thread
        // that the shared machine deschedules for a moment gets the same slack from both
        // servers before it is cut off as a slow consumer.
        "idle_timeout_secs = 3600\nconns_per_source_max = 1000000\ndrain_deadline_secs = 2\n\
         outbound_bytes_max = 67108864\ninflight_max = 65536\n",
    )?;
    let api_args: &[&str] = if with_api {
        &["--api-listen", "127.0.0.1:0"]
    } else {
        &["--no-api"]
    };
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &shards.to_string(),
        ])
        .args(api_args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .args(if quic {
            &["--quic-listen", "127.0.0.1:0"][..]
        } else {
            &[]
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut key, mut api, mut quic_addr) = (None, None, None, None);
    while addr.is_none()
        || key.is_none()
        || (with_api && api.is_none())
        || (quic && quic_addr.is_none())
    {
        let Some(line) = lines.next().transpose()? else {
            let _ = child.kill();
            bail!("commucat serve exited before it was ready");
        };
        if let Some(rest) = line.strip_prefix("CommuCat listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("REST API at http://") {
            api = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("QUIC on udp ") {
            quic_addr = rest.trim().parse().ok();
        }
        if let Some(hex_key) = line.strip_prefix("server public key (give it to clients): ") {
            key = hex::decode(hex_key.trim())
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok());
        }
    }
    // Keep reading its output so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let (Some(addr), Some(key)) = (addr, key) else {
        bail!("commucat serve printed no address or key");
    };
    let target = Target {
        addr,
        server_key: key,
        api,
        pid: Some(child.id()),
        prefix: None,
        kind: Kind::Child(child, Some(dir)),
    };
    Ok((target, quic_addr))
}

/// Starts `nats-server` on a free loopback port (installs nothing: say how if it is missing);
/// with `jetstream`, JetStream on a file store in a private temporary directory.
pub fn start_nats(jetstream: bool) -> Result<Target> {
    let port = sys::free_port()?;
    let mut command = Command::new("nats-server");
    command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    let dir = if jetstream {
        let dir = std::env::temp_dir().join(format!("commucat-bench-js-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        command.arg("-js").arg("-sd").arg(&dir);
        Some(dir)
    } else {
        None
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "cannot start nats-server: install it (Debian: apt-get install nats-server) or \
             leave out --target nats",
        )?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(Target {
                addr,
                server_key: [0; 32],
                api: None,
                pid: Some(child.id()),
                prefix: None,
                kind: Kind::Child(child, dir),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = child;
    let _ = child.kill();
    bail!("nats-server did not start listening on {addr}")
}
