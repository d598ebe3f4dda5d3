//! Per-shard counters, published without locks, and their Prometheus text exposition.
//!
//! Each shard owns one cache-line-aligned row of atomics and is its only writer: once per
//! event-loop iteration (not per packet) it stores its [`ShardStats`] and gauges with relaxed
//! stores. Readers (the metrics endpoint) load them relaxed; a scrape may mix two iterations'
//! values, which Prometheus counters tolerate.

use dp_shard::ShardStats;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What a shard's IO loop knows beyond [`ShardStats`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gauges {
    pub(crate) conns: u64,
    pub(crate) sessions: u64,
    /// Messages held back on outgoing links for lack of credit.
    pub(crate) link_backlog: u64,
    /// Messages shed because a link backlog was full.
    pub(crate) link_shed: u64,
    pub(crate) quic: crate::quic::QuicGauges,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Every published series: name, help, kind, and how to read it.
type Field = (
    &'static str,
    &'static str,
    Kind,
    fn(&ShardStats, &Gauges) -> u64,
);

const FIELDS: &[Field] = &[
    (
        "commucat_conns_accepted_total",
        "Connections accepted.",
        Kind::Counter,
        |s, _| s.conns_accepted,
    ),
    (
        "commucat_conns_refused_total",
        "Connections refused at a limit.",
        Kind::Counter,
        |s, _| s.conns_refused,
    ),
    (
        "commucat_handshakes_total",
        "Handshakes completed.",
        Kind::Counter,
        |s, _| s.handshakes,
    ),
    (
        "commucat_handshakes_failed_total",
        "Handshake packets refused.",
        Kind::Counter,
        |s, _| s.handshakes_failed,
    ),
    (
        "commucat_frames_in_total",
        "Frames received.",
        Kind::Counter,
        |s, _| s.frames_in,
    ),
    (
        "commucat_frames_out_total",
        "Frames sent.",
        Kind::Counter,
        |s, _| s.frames_out,
    ),
    (
        "commucat_bytes_in_total",
        "Bytes received from connections.",
        Kind::Counter,
        |s, _| s.bytes_in,
    ),
    (
        "commucat_bytes_out_total",
        "Bytes written to connections.",
        Kind::Counter,
        |s, _| s.bytes_out,
    ),
    (
        "commucat_delivered_local_total",
        "Envelopes delivered to a session on this shard.",
        Kind::Counter,
        |s, _| s.delivered_local,
    ),
    (
        "commucat_routed_remote_total",
        "Envelopes sent to another shard.",
        Kind::Counter,
        |s, _| s.routed_remote,
    ),
    (
        "commucat_stored_total",
        "Envelopes sent to control for storage.",
        Kind::Counter,
        |s, _| s.stored,
    ),
    (
        "commucat_refused_total",
        "Envelopes refused for lack of link credit (SendAck Retry).",
        Kind::Counter,
        |s, _| s.refused,
    ),
    (
        "commucat_slow_consumers_total",
        "Recipients disconnected for not reading.",
        Kind::Counter,
        |s, _| s.slow_consumers,
    ),
    (
        "commucat_closed_protocol_total",
        "Connections closed for a protocol or decryption failure.",
        Kind::Counter,
        |s, _| s.closed_protocol,
    ),
    (
        "commucat_closed_timeout_total",
        "Connections closed by the idle or handshake timeout.",
        Kind::Counter,
        |s, _| s.closed_timeout,
    ),
    (
        "commucat_conversation_sends_total",
        "Conversation messages fanned out (on the conversation's home shard).",
        Kind::Counter,
        |s, _| s.conversation_sends,
    ),
    (
        "commucat_conversation_copies_total",
        "Copies of conversation messages made for member devices.",
        Kind::Counter,
        |s, _| s.conversation_copies,
    ),
    (
        "commucat_conversation_refused_total",
        "Conversation messages and signals refused (not a member, unknown, may not send).",
        Kind::Counter,
        |s, _| s.conversation_refused,
    ),
    (
        "commucat_conversation_lookups_total",
        "Conversation membership lookups sent to control.",
        Kind::Counter,
        |s, _| s.conversation_lookups,
    ),
    (
        "commucat_signals_forwarded_total",
        "Typing indicators and receipts forwarded to member sessions.",
        Kind::Counter,
        |s, _| s.signals_forwarded,
    ),
    (
        "commucat_signals_dropped_total",
        "Typing indicators and receipts dropped (best effort).",
        Kind::Counter,
        |s, _| s.signals_dropped,
    ),
    (
        "commucat_presence_in_total",
        "PresenceSet frames received.",
        Kind::Counter,
        |s, _| s.presence_in,
    ),
    (
        "commucat_presence_out_total",
        "Presence frames written to sessions.",
        Kind::Counter,
        |s, _| s.presence_out,
    ),
    (
        "commucat_presence_dropped_total",
        "Presence updates dropped (best effort).",
        Kind::Counter,
        |s, _| s.presence_dropped,
    ),
    (
        "commucat_audience_lookups_total",
        "Presence audience lookups sent to control.",
        Kind::Counter,
        |s, _| s.audience_lookups,
    ),
    (
        "commucat_link_shed_total",
        "Link messages shed because a backlog was full.",
        Kind::Counter,
        |_, g| g.link_shed,
    ),
    (
        "commucat_quic_relayed_total",
        "QUIC connections whose session moved to another shard (stream bytes relayed there).",
        Kind::Counter,
        |_, g| g.quic.relayed,
    ),
    (
        "commucat_quic_datagrams_in_total",
        "QUIC datagrams received.",
        Kind::Counter,
        |_, g| g.quic.datagrams_in,
    ),
    (
        "commucat_quic_datagrams_out_total",
        "QUIC datagrams sent.",
        Kind::Counter,
        |_, g| g.quic.datagrams_out,
    ),
    (
        "commucat_quic_datagrams_dropped_total",
        "QUIC datagrams that reached no connection.",
        Kind::Counter,
        |_, g| g.quic.datagrams_dropped,
    ),
    (
        "commucat_quic_send_failed_total",
        "QUIC datagrams the socket did not take.",
        Kind::Counter,
        |_, g| g.quic.send_failed,
    ),
    (
        "commucat_quic_gso_batches_total",
        "QUIC datagram batches sent with one sendmsg (UDP_SEGMENT).",
        Kind::Counter,
        |_, g| g.quic.gso_batches,
    ),
    (
        "commucat_quic_conns",
        "QUIC connections held (handshaking, open or closing).",
        Kind::Gauge,
        |_, g| g.quic.conns,
    ),
    (
        "commucat_conns",
        "Open connections.",
        Kind::Gauge,
        |_, g| g.conns,
    ),
    (
        "commucat_sessions",
        "Devices online.",
        Kind::Gauge,
        |_, g| g.sessions,
    ),
    (
        "commucat_link_backlog",
        "Link messages waiting for credit.",
        Kind::Gauge,
        |_, g| g.link_backlog,
    ),
];

/// One shard's row, alone on its cache lines.
#[repr(align(128))]
struct Row {
    values: [AtomicU64; FIELDS.len()],
}

/// The counters of every shard.
pub(crate) struct Metrics {
    rows: Box<[Row]>,
}

impl Metrics {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            rows: (0..shards)
                .map(|_| Row {
                    values: core::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
        }
    }

    /// Shard `shard` publishes its numbers (it alone writes its row).
    pub(crate) fn publish(&self, shard: usize, stats: &ShardStats, gauges: &Gauges) {
        if let Some(row) = self.rows.get(shard) {
            for (slot, (_, _, _, read)) in row.values.iter().zip(FIELDS) {
                slot.store(read(stats, gauges), Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4), one series per shard.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(FIELDS.len() * (128 + 48 * self.rows.len()));
        for (index, (name, help, kind, _)) in FIELDS.iter().enumerate() {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (shard, row) in self.rows.iter().enumerate() {
                let value = row.values[index].load(Ordering::Relaxed);
                out.push_str(&format!("{name}{{shard=\"{shard}\"}} {value}\n"));
            }
        }
        out
    }
}

/// Publishes shard `index`'s counters and gauges (its IO loop calls this once per turn).
pub(crate) fn publish_shard<R: dp_core::Rng>(
    metrics: &Metrics,
    index: usize,
    shard: &dp_shard::Shard<R>,
    links: &crate::link::ShardLinks,
    quic: crate::quic::QuicGauges,
) {
    let (link_backlog, link_shed) = links.backlog_and_shed();
    let gauges = Gauges {
        conns: shard.conns_len() as u64,
        sessions: shard.sessions_len() as u64,
        link_backlog,
        link_shed,
        quic,
    };
    metrics.publish(index, &shard.stats(), &gauges);
}

/// The most bytes of a request the endpoint reads.
const REQUEST_LEN_MAX: usize = 4096;
/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the endpoint pauses after a failed `accept` (for example out of file descriptors)
/// before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Binds the metrics endpoint (`GET /metrics`). Operators bind it to a private address: it
/// needs no credential.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves scrapes one at a time until `stop`. `accept` blocks; [`wake`] unblocks it once
/// `stop` is set.
pub(crate) fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                if let Err(error) = answer(stream, &metrics) {
                    eprintln!("metrics: {error}");
                }
            }
            Err(error) => {
                eprintln!("metrics: accept failed: {error}");
                std::thread::sleep(ACCEPT_RETRY);
            }
        }
    }
}

/// Unblocks [`serve`]'s `accept` after `stop` was set, by connecting to the endpoint.
pub(crate) fn wake(addr: SocketAddr) {
    let addr = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    if let Err(error) = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT) {
        eprintln!("metrics: cannot wake the endpoint to stop it: {error}");
    }
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = [0u8; REQUEST_LEN_MAX];
    let mut len = 0;
    while !request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == request.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "");
        }
        let n = stream.read(&mut request[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = request[..len].split(|&b| b == b'\r').next().unwrap_or(&[]);
    if line.starts_with(b"GET /metrics ") || line == b"GET /metrics" {
        respond(&mut stream, "200 OK", &metrics.render())
    } else {
        respond(
            &mut stream,
            "404 Not Found",
            "only GET /metrics is served here\n",
        )
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_help_type_and_one_series_per_shard() {
        let metrics = Metrics::new(2);
        let stats = ShardStats {
            frames_in: 7,
            ..ShardStats::default()
        };
        let gauges = Gauges {
            sessions: 3,
            ..Gauges::default()
        };
        metrics.publish(1, &stats, &gauges);
        let text = metrics.render();
        assert!(text.contains("# TYPE commucat_frames_in_total counter\n"));
        assert!(text.contains("commucat_frames_in_total{shard=\"0\"} 0\n"));
        assert!(text.contains("commucat_frames_in_total{shard=\"1\"} 7\n"));
        assert!(text.contains("# TYPE commucat_sessions gauge\n"));
        assert!(text.contains("commucat_sessions{shard=\"1\"} 3\n"));
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(series, FIELDS.len() * 2);
    }
}
