//! `idle --carrier quic`: many idle sessions over QUIC from a few UDP sockets. A QUIC session
//! needs no file descriptor on either side, so this reaches counts that TCP cannot here (the
//! per-process descriptor limit caps TCP at about 18 000). Each socket is one `dp_quic`
//! client endpoint holding many connections, each with its own sans-IO `Connection`; one
//! thread drives them all, with a bounded number of handshakes in flight.

use super::report::{Percentiles, RunResult};
use super::servers::Target;
use anyhow::{Context, Result, bail};
use commucat_client::{Clock, Connection, ConnectionConfig, Event, Suite};
use dp_core::{Instant, SeededRng};
use dp_noise::StaticKeypair;
use dp_quic::{QuicClient, QuicConfig, QuicConnId, QuicEvent, TimeBase};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Handshakes in flight at once, over all sockets.
const HANDSHAKES_IN_FLIGHT: usize = 512;
/// Bytes read per stream `read`, and the largest datagram.
const BUF_LEN: usize = 64 * 1024;
/// A run fails when no session completes for this long.
const STALL_MAX: Duration = Duration::from_secs(30);
/// The carrier's idle timeout: longer than any run, and no keep-alives, so the sessions stay
/// idle (the server's `idle_timeout_secs` is an hour too).
const QUIC_IDLE: Duration = Duration::from_secs(3600);

struct Session {
    conn: Connection<SeededRng>,
    open: bool,
}

/// One UDP socket and the QUIC endpoint on it.
struct Endpoint {
    socket: UdpSocket,
    quic: QuicClient,
    sessions: HashMap<QuicConnId, Session>,
    /// Sessions still handshaking.
    pending: HashSet<QuicConnId>,
    tx: Vec<u8>,
}

/// Where the run stands.
struct Progress {
    ready: usize,
    /// Reads, handshakes or datagrams happened in this turn.
    busy: bool,
}

impl Endpoint {
    fn new(time: TimeBase, seed: u64) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let config = QuicConfig {
            idle_timeout: QUIC_IDLE,
            keep_alive: None,
            conns_max: 1 << 20,
            ..QuicConfig::default()
        };
        let quic = QuicClient::new(config, time, &mut SeededRng::new(seed))
            .map_err(|e| anyhow::anyhow!("QUIC client: {e}"))?;
        Ok(Self {
            socket,
            quic,
            sessions: HashMap::new(),
            pending: HashSet::new(),
            tx: Vec::new(),
        })
    }

    /// One turn: datagrams in, carrier events, connections' output, datagrams out.
    fn turn(
        &mut self,
        qnow: impl Fn() -> Instant,
        clock: Clock,
        buf: &mut [u8],
        progress: &mut Progress,
    ) -> Result<()> {
        loop {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => {
                    progress.busy = true;
                    self.quic
                        .handle_datagram(qnow(), from, None, None, &buf[..n]);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.quic.handle_timeout(qnow());
        let now = clock.now();
        while let Some(event) = self.quic.poll_event() {
            match event {
                QuicEvent::StreamOpened { conn, .. } => {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.open = true;
                    }
                }
                QuicEvent::Readable(conn) => {
                    let Some(session) = self.sessions.get_mut(&conn) else {
                        continue;
                    };
                    loop {
                        match self.quic.read(conn, buf) {
                            Ok(0) => break,
                            Ok(n) => session
                                .conn
                                .handle_input(now, &buf[..n])
                                .map_err(|e| anyhow::anyhow!("session: {e}"))?,
                            Err(e) => bail!("a session's stream ended: {e}"),
                        }
                    }
                }
                QuicEvent::Writable(_) => {}
                QuicEvent::Closed { reason, .. } => bail!("a QUIC connection closed: {reason:?}"),
            }
        }
        let mut done = Vec::new();
        for &id in &self.pending {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            session.conn.handle_timeout(now);
            if session.open {
                loop {
                    let out = session
                        .conn
                        .poll_transmit(now)
                        .map_err(|e| anyhow::anyhow!("session: {e}"))?;
                    if out.is_empty() {
                        break;
                    }
                    match self.quic.write(id, out) {
                        Ok(0) => break,
                        Ok(n) => session.conn.handle_written(n),
                        Err(e) => bail!("a session's stream failed: {e}"),
                    }
                }
            }
            while let Some(event) = session.conn.poll_event() {
                match event {
                    Event::Connected { .. } => done.push(id),
                    Event::Closed(reason) => bail!("a session closed: {reason:?}"),
                    _ => {}
                }
            }
        }
        for id in done {
            self.pending.remove(&id);
            progress.ready += 1;
            progress.busy = true;
        }
        while let Some(transmit) = self.quic.poll_transmit(qnow(), &mut self.tx) {
            let len = transmit.len.min(self.tx.len());
            let size = transmit.segment_size.unwrap_or(len).max(1);
            for datagram in self.tx[..len].chunks(size) {
                // A datagram the socket does not take is QUIC's to send again.
                let _ = self.socket.send_to(datagram, transmit.destination);
            }
        }
        Ok(())
    }
}

/// Opens `count` idle sessions to `server` (QUIC) from `sockets` UDP sockets and reports the
/// server's resident memory before and after, per session.
pub fn run_idle_quic(
    target: &Target,
    server: SocketAddr,
    count: usize,
    sockets: usize,
    suite: Suite,
) -> Result<RunResult> {
    let Some(before) = target.rss_kib() else {
        bail!("idle needs a server process whose memory can be read");
    };
    let clock = Clock::new();
    let epoch = std::time::Instant::now();
    let unix = Duration::from_millis(Clock::unix_ms());
    let time = TimeBase::new(epoch, unix);
    let qnow = || Instant(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let mut endpoints = (0..sockets.max(1))
        .map(|i| Endpoint::new(time, 0x9e11 + i as u64))
        .collect::<Result<Vec<_>>>()?;
    let mut rng = SeededRng::new(0x1d1e);
    let mut buf = vec![0u8; BUF_LEN];
    let mut progress = Progress {
        ready: 0,
        busy: false,
    };
    let mut started = 0usize;
    let mut last_ready = (0usize, std::time::Instant::now());
    let t0 = clock.now().0;
    while progress.ready < count {
        while started < count && started - progress.ready < HANDSHAKES_IN_FLIGHT {
            let key = StaticKeypair::generate(&mut rng);
            let mut config = ConnectionConfig::new(key, target.server_key);
            config.suite = suite;
            config.keepalive = None;
            config.resend_refused = false;
            let slot = started % endpoints.len();
            let endpoint = &mut endpoints[slot];
            let conn = Connection::new(clock.now(), config, SeededRng::new(started as u64))
                .map_err(|e| anyhow::anyhow!("session {started}: {e}"))?;
            let id = endpoint
                .quic
                .connect(qnow(), server)
                .map_err(|e| anyhow::anyhow!("session {started}: {e}"))?;
            endpoint.sessions.insert(id, Session { conn, open: false });
            endpoint.pending.insert(id);
            started += 1;
        }
        progress.busy = false;
        let before_turn = progress.ready;
        for endpoint in &mut endpoints {
            endpoint
                .turn(qnow, clock, &mut buf, &mut progress)
                .context("idle over QUIC")?;
        }
        if progress.ready / 10_000 > before_turn / 10_000 {
            eprintln!("[idle quic] {} sessions", progress.ready);
        }
        if progress.ready > last_ready.0 {
            last_ready = (progress.ready, std::time::Instant::now());
        } else if last_ready.1.elapsed() > STALL_MAX {
            bail!(
                "no session completed for {} s ({} of {count} open)",
                STALL_MAX.as_secs(),
                progress.ready
            );
        }
        if !progress.busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let open_s = (clock.now().0 - t0) as f64 / 1e9;
    // Let the last acknowledgements go both ways, then read the server's memory.
    let settle = std::time::Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        for endpoint in &mut endpoints {
            endpoint.turn(qnow, clock, &mut buf, &mut progress)?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let after = target.rss_kib().unwrap_or(before);
    let per_session = (after.saturating_sub(before)) as f64 / count.max(1) as f64;
    Ok(RunResult {
        target: "commucat".into(),
        mode: "idle-quic".into(),
        rate_target: None,
        sent_per_s: count as f64 / open_s.max(1e-9),
        received_per_s: 0.0,
        messages: count as u64,
        lost: 0,
        latency_us: Percentiles::default(),
        latency_curve_us: Vec::new(),
        server_cpu_us_per_msg: None,
        server_cpu_percent: None,
        extra: serde_json::json!({
            "carrier": "quic",
            "sockets": sockets,
            "sessions": count,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_per_session_kib": per_session,
        }),
    })
}
