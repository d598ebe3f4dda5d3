//! The `offline` scenario: with the recipient offline, a sender sends M envelopes, each
//! acknowledged `Stored` (durably committed by the server's store); then the recipient
//! connects and drains them. Reported: the store rate (acknowledgements per second) with the
//! latency of each acknowledgement from its send, and the drain rate (deliveries per second)
//! with the time from the recipient's connect to each delivery.

use super::report::{self, Percentiles, RunResult};
use super::servers::Target;
use super::{TargetKind, engine};
use anyhow::{Result, bail};
use commucat_client::{Client, Clock, ConnectionConfig, Event, SendStatus, Suite};
use dp_core::{MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::Recipient;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::Duration;

/// The most envelopes one run stores.
pub const MESSAGES_MAX: usize = 1_000_000;
/// The longest wait for the next acknowledgement or delivery before the run fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the report says about the comparison.
pub const NATS_NOTE: &str = "the baseline is NATS JetStream (nats-server -js, file store; \
    nats-server 2.9 acknowledges without an fsync per message, CommuCat after a committed \
    SQLite transaction); a plain echo stores nothing, so it is not comparable";

/// Checks `--messages`: 1 to [`MESSAGES_MAX`].
pub fn check_messages(messages: usize) -> Result<()> {
    if !(1..=MESSAGES_MAX).contains(&messages) {
        bail!("--messages is 1 to {MESSAGES_MAX}");
    }
    Ok(())
}

/// What the `offline` scenario does.
#[derive(Clone, Copy, Debug)]
pub struct OfflineSettings {
    /// Envelopes stored, then drained.
    pub messages: usize,
    /// Body size in bytes (at least 8).
    pub size: usize,
    /// Envelopes sent and not yet acknowledged, at most.
    pub window: usize,
    /// The handshake suite.
    pub suite: Suite,
}

fn client(
    target: &Target,
    key: StaticKeypair,
    suite: Suite,
    seed: u64,
) -> Result<Client<SeededRng>> {
    let mut config = ConnectionConfig::new(key, target.server_key);
    config.suite = suite;
    config.keepalive = None;
    // A refused envelope is sent again by the client; its wait counts in its latency.
    config.resend_refused = true;
    Client::connect_with(
        target.addr,
        config,
        SeededRng::new(seed),
        Clock::new(),
        None,
    )
    .map_err(|e| anyhow::anyhow!("CommuCat session: {e}"))
}

/// Runs the scenario against CommuCat: the store row, then the drain row.
pub fn run(target: &Target, settings: &OfflineSettings) -> Result<Vec<RunResult>> {
    let mut rng = SeededRng::new(0x000f_f11e);
    let recipient_key = StaticKeypair::generate(&mut rng);
    let recipient = dp_noise::device_id(recipient_key.public());
    let mut sender = client(target, StaticKeypair::generate(&mut rng), settings.suite, 1)?;
    let clock = sender.clock();
    let mut histogram = engine::new_histogram();
    let mut body = vec![0x0f; settings.size.max(8)];
    let mut sent_at: HashMap<MessageId, u64> = HashMap::with_capacity(settings.window);
    let (cpu0, t0) = (target.cpu_ns(), clock.now().0);
    let (mut next, mut stored) = (0usize, 0usize);
    eprintln!("[offline] storing {} envelopes", settings.messages);
    while stored < settings.messages {
        while next < settings.messages && sent_at.len() < settings.window {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(next as u64).to_be_bytes());
            let now = clock.now().0;
            body[..8].copy_from_slice(&now.to_le_bytes());
            sender
                .send_with_id(MessageId(id), Recipient::Device(recipient), &body)
                .map_err(|e| anyhow::anyhow!("send: {e}"))?;
            sent_at.insert(MessageId(id), now);
            next += 1;
        }
        let event = sender
            .next_event(STALL_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("sender: {e}"))?;
        match event {
            Some(Event::SendAck {
                message, status, ..
            }) => {
                if status == SendStatus::Delivered {
                    bail!("an envelope was delivered, not stored: is the recipient online?");
                }
                if let Some(at) = sent_at.remove(&message) {
                    let latency = clock.now().0.saturating_sub(at);
                    let _ = histogram.record(latency.clamp(1, engine::LATENCY_NS_MAX));
                    stored += 1;
                }
            }
            Some(Event::Closed(reason)) => bail!("the sender's session closed: {reason:?}"),
            Some(Event::Error { code, .. }) => bail!("the server answered a send with {code:?}"),
            Some(_) => {}
            None => bail!(
                "no acknowledgement for {STALL_TIMEOUT:?} after {stored} of {} stored",
                settings.messages
            ),
        }
    }
    let (cpu1, t1) = (target.cpu_ns(), clock.now().0);
    drop(sender);
    let store = row(
        TargetKind::Commucat,
        "store",
        settings.messages,
        t1 - t0,
        (cpu0, cpu1),
        &histogram,
        serde_json::json!({ "latency_from": "send" }),
    );
    eprintln!(
        "[offline] stored {} in {:.2} s; the recipient connects",
        settings.messages,
        (t1 - t0) as f64 / 1e9
    );
    let mut histogram = engine::new_histogram();
    let (cpu0, t0) = (target.cpu_ns(), clock.now().0);
    let mut recipient = client(target, recipient_key, settings.suite, 2)?;
    let mut drained = 0;
    while drained < settings.messages {
        match recipient
            .next_event(STALL_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("recipient: {e}"))?
        {
            Some(Event::Delivered(_)) => {
                drained += 1;
                let latency = clock.now().0.saturating_sub(t0);
                let _ = histogram.record(latency.clamp(1, engine::LATENCY_NS_MAX));
            }
            Some(Event::Closed(reason)) => bail!("the recipient's session closed: {reason:?}"),
            Some(_) => {}
            None => bail!(
                "no delivery for {STALL_TIMEOUT:?} after {drained} of {}",
                settings.messages
            ),
        }
    }
    let (cpu1, t1) = (target.cpu_ns(), clock.now().0);
    // Let the last acknowledgements reach the server before the session goes.
    let _ = recipient.flush();
    let drain = row(
        TargetKind::Commucat,
        "drain",
        settings.messages,
        t1 - t0,
        (cpu0, cpu1),
        &histogram,
        serde_json::json!({ "latency_from": "the recipient's connect" }),
    );
    Ok(vec![store, drain])
}

/// One row of the report: `messages` over `wall_ns`, server CPU between the two readings.
pub(super) fn row(
    target: TargetKind,
    mode: &str,
    messages: usize,
    wall_ns: u64,
    cpu: (Option<u64>, Option<u64>),
    histogram: &Histogram<u64>,
    extra: serde_json::Value,
) -> RunResult {
    let seconds = (wall_ns as f64 / 1e9).max(1e-9);
    let cpu = match cpu {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let rate = messages as f64 / seconds;
    let mut extra = extra;
    extra["seconds"] = serde_json::json!(seconds);
    RunResult {
        target: target.name().into(),
        mode: mode.into(),
        rate_target: None,
        sent_per_s: rate,
        received_per_s: rate,
        messages: messages as u64,
        lost: 0,
        latency_us: Percentiles::of(histogram),
        latency_curve_us: report::latency_curve(histogram),
        server_cpu_us_per_msg: cpu.map(|ns| ns as f64 / 1000.0 / messages.max(1) as f64),
        server_cpu_percent: cpu.map(|ns| 100.0 * ns as f64 / wall_ns.max(1) as f64),
        extra,
    }
}
