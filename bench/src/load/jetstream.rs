//! The `offline` comparison: NATS JetStream with a file store (`nats-server -js -sd DIR`).
//! Store: each message is published with a reply subject and counts as stored when its
//! `PubAck` arrives. Drain: an ephemeral push consumer (deliver everything, no acks) is
//! created and the time from its creation to each delivery is recorded, as for CommuCat's
//! recipient connecting.
//!
//! Durability is not equal: nats-server 2.9 acknowledges a message once it is written to its
//! file store without an fsync per message (it syncs periodically), whereas CommuCat's
//! `Stored` follows a committed SQLite transaction (`synchronous=FULL`).

use super::offline::{OfflineSettings, row};
use super::report::RunResult;
use super::servers::Target;
use super::{TargetKind, engine, lanes::SETUP_TIMEOUT};
use anyhow::{Context, Result, bail};
use commucat_client::Clock;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// The stream's name and subjects.
const STREAM: &str = "BENCH";
/// The subject messages are published on.
const SUBJECT: &str = "offline.bench";
/// Replies come to `INBOX.N` (`INBOX.create`, `INBOX.consumer` for the API calls).
const INBOX: &str = "_INBOX.bench";
/// Where the consumer delivers.
const DELIVER: &str = "drain.bench";
/// The subscription id of [`DELIVER`] (deliveries keep the subject they were published on).
const DELIVER_SID: &str = "2";
/// What the store row says about durability.
const STORE_NOTE: &str = "JetStream file store, no fsync per message (nats-server 2.9 default)";
/// The longest MSG payload read (a PubAck or API answer; deliveries are the body size).
const PAYLOAD_MAX: usize = 16 << 20;

struct Nats {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
}

/// One `MSG`: its subject, subscription id and payload.
struct Msg {
    subject: String,
    sid: String,
    payload: Vec<u8>,
}

impl Nats {
    fn connect(target: &Target) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&target.addr, SETUP_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let mut nats = Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            line: String::new(),
        };
        nats.writer.write_all(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"bench\"}}\r\n\
                 SUB {INBOX}.> 1\r\nSUB {DELIVER} {DELIVER_SID}\r\nPING\r\n"
            )
            .as_bytes(),
        )?;
        loop {
            nats.read_line()?;
            match nats.line.trim_end() {
                "PONG" => return Ok(nats),
                line if line.starts_with("-ERR") => bail!("NATS: {line}"),
                _ => {}
            }
        }
    }

    fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            bail!("NATS closed the connection");
        }
        Ok(())
    }

    fn publish(&mut self, subject: &str, reply: &str, payload: &[u8]) -> Result<()> {
        let mut out = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out)?;
        Ok(())
    }

    /// The next `MSG` (answering `PING`s, failing on `-ERR`).
    fn next_msg(&mut self) -> Result<Msg> {
        loop {
            self.read_line()?;
            let line = self.line.trim_end();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
                continue;
            }
            if line.starts_with("-ERR") {
                bail!("NATS: {line}");
            }
            let Some(rest) = line.strip_prefix("MSG ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (Some(subject), Some(sid), Some(len)) =
                (fields.first(), fields.get(1), fields.last())
            else {
                bail!("NATS: bad MSG line {line:?}");
            };
            let len: usize = len.parse().context("NATS: bad MSG length")?;
            if len > PAYLOAD_MAX {
                bail!("NATS: a {len}-byte message");
            }
            let (subject, sid) = ((*subject).to_string(), (*sid).to_string());
            let mut payload = vec![0u8; len + 2];
            self.reader.read_exact(&mut payload)?;
            payload.truncate(len);
            return Ok(Msg {
                subject,
                sid,
                payload,
            });
        }
    }

    /// A JetStream API call: its JSON answer, failing on an `error` in it.
    fn api(&mut self, subject: &str, reply: &str, body: &serde_json::Value) -> Result<()> {
        self.publish(subject, reply, body.to_string().as_bytes())?;
        loop {
            let msg = self.next_msg()?;
            if msg.subject != reply {
                continue;
            }
            let answer: serde_json::Value = serde_json::from_slice(&msg.payload)
                .with_context(|| format!("JetStream {subject}: not JSON"))?;
            if !answer["error"].is_null() {
                bail!("JetStream {subject}: {}", answer["error"]);
            }
            return Ok(());
        }
    }
}

/// Runs the store and drain against NATS JetStream at `target` (started with `-js`).
pub fn run(target: &Target, settings: &OfflineSettings) -> Result<Vec<RunResult>> {
    let mut nats = Nats::connect(target)?;
    let config = serde_json::json!({
        "name": STREAM, "subjects": [SUBJECT], "storage": "file", "retention": "limits",
    });
    let create = format!("{INBOX}.create");
    nats.api(&format!("$JS.API.STREAM.CREATE.{STREAM}"), &create, &config)?;
    let clock = Clock::new();
    let mut histogram = engine::new_histogram();
    let mut body = vec![0x0f; settings.size.max(8)];
    let mut sent_at: HashMap<usize, u64> = HashMap::with_capacity(settings.window);
    let (cpu0, t0) = (target.cpu_ns(), clock.now().0);
    let (mut next, mut stored) = (0usize, 0usize);
    eprintln!("[offline nats] storing {} messages", settings.messages);
    while stored < settings.messages {
        while next < settings.messages && sent_at.len() < settings.window {
            let now = clock.now().0;
            body[..8].copy_from_slice(&now.to_le_bytes());
            nats.publish(SUBJECT, &format!("{INBOX}.{next}"), &body)?;
            sent_at.insert(next, now);
            next += 1;
        }
        let msg = nats.next_msg()?;
        let Some(n) = msg
            .subject
            .strip_prefix(INBOX)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if msg.payload.windows(7).any(|w| w == b"\"error\"") {
            bail!(
                "JetStream refused a message: {}",
                String::from_utf8_lossy(&msg.payload)
            );
        }
        if let Some(at) = sent_at.remove(&n) {
            let latency = clock.now().0.saturating_sub(at);
            let _ = histogram.record(latency.clamp(1, engine::LATENCY_NS_MAX));
            stored += 1;
        }
    }
    let (cpu1, t1) = (target.cpu_ns(), clock.now().0);
    let store = row(
        TargetKind::Nats,
        "store",
        settings.messages,
        t1 - t0,
        (cpu0, cpu1),
        &histogram,
        serde_json::json!({ "latency_from": "send", "store": STORE_NOTE }),
    );
    let mut histogram = engine::new_histogram();
    let (cpu0, t0) = (target.cpu_ns(), clock.now().0);
    let consumer = serde_json::json!({
        "stream_name": STREAM,
        "config": { "deliver_subject": DELIVER, "deliver_policy": "all", "ack_policy": "none" },
    });
    let reply = format!("{INBOX}.consumer");
    nats.publish(
        &format!("$JS.API.CONSUMER.CREATE.{STREAM}"),
        &reply,
        consumer.to_string().as_bytes(),
    )?;
    let mut drained = 0;
    while drained < settings.messages {
        let msg = nats.next_msg()?;
        if msg.subject == reply {
            if msg.payload.windows(7).any(|w| w == b"\"error\"") {
                bail!(
                    "JetStream consumer: {}",
                    String::from_utf8_lossy(&msg.payload)
                );
            }
            continue;
        }
        if msg.sid == DELIVER_SID {
            drained += 1;
            let latency = clock.now().0.saturating_sub(t0);
            let _ = histogram.record(latency.clamp(1, engine::LATENCY_NS_MAX));
        }
    }
    let (cpu1, t1) = (target.cpu_ns(), clock.now().0);
    let drain = row(
        TargetKind::Nats,
        "drain",
        settings.messages,
        t1 - t0,
        (cpu0, cpu1),
        &histogram,
        serde_json::json!({ "latency_from": "the consumer's creation", "store": STORE_NOTE }),
    );
    Ok(vec![store, drain])
}
