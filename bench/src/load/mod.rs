//! The `bench` load generator (DESIGN.md §7): scenarios against CommuCat, a plain TCP echo
//! (the kernel's limit) and NATS, open or closed loop, with latency histograms, server CPU per
//! message and JSON/Markdown reports. `docs/design/0007-client-and-bench.md` explains the
//! method.
//!
//! This is IO code: it owns threads, clocks and sockets, so it opts out of the sans-IO bans.
#![allow(clippy::disallowed_methods)]

pub mod engine;
pub mod fanout;
pub mod idle_quic;
pub mod jetstream;
pub mod lanes;
pub mod offline;
pub mod report;
pub mod servers;
pub mod sys;

use anyhow::{Result, bail};
use commucat_client::{Client, Clock, ConnectionConfig, Suite};
use dp_core::SeededRng;
use dp_noise::StaticKeypair;
use engine::{Pace, Plan, Progress, ThreadResult};
use fanout::FanoutLane;
use hdrhistogram::Histogram;
use lanes::Lane;
use report::{Percentiles, RunResult};
use servers::Target;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What a load run is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TargetKind {
    /// CommuCat: device to device through the server, encrypted, acknowledged end to end.
    Commucat,
    /// A plain TCP echo server in this process (one thread): the kernel's limit.
    Echo,
    /// NATS publish/subscribe through `nats-server`, plaintext, no acknowledgements.
    Nats,
    /// A plain UDP echo server in this process (one thread): one datagram per message, lost
    /// datagrams counted.
    EchoUdp,
}

impl TargetKind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Commucat => "commucat",
            Self::Echo => "echo-tcp",
            Self::Nats => "nats",
            Self::EchoUdp => "echo-udp",
        }
    }
}

/// Settings of a load run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LoadSettings {
    /// Sender→receiver pairs (lanes).
    pub pairs: usize,
    /// Client threads the lanes are spread over.
    pub threads: usize,
    /// Message (body) size in bytes.
    pub size: usize,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up before it.
    pub warmup: Duration,
    /// CPU the client threads are pinned to.
    pub pin_load: Option<usize>,
    /// The CommuCat handshake suite byte.
    pub suite: u8,
    /// `fanout`: one lane, a sender and this many recipients; `None`: `pairs` pairs.
    pub group: Option<usize>,
}

fn make_lane(
    kind: TargetKind,
    target: &Target,
    settings: &LoadSettings,
    lane: u64,
    clock: Clock,
) -> Result<Lane> {
    let suite = Suite::from_byte(settings.suite).map_err(|e| anyhow::anyhow!("suite: {e}"))?;
    if let Some(group) = settings.group {
        let size = settings.size;
        let lane = match kind {
            TargetKind::Echo => FanoutLane::echo(target.addr, group, size)?,
            TargetKind::Nats => FanoutLane::nats(target.addr, group, size)?,
            TargetKind::Commucat => {
                let Some(api) = target.api else {
                    bail!(
                        "fanout sets up its CommuCat group over the REST API: start the \
                         server with bench (not --in-process), or give --server-api"
                    );
                };
                FanoutLane::commucat(target, api, suite, group, size, clock)?
            }
            TargetKind::EchoUdp => bail!("fanout has no UDP echo target"),
        };
        return Ok(Lane::Fanout(Box::new(lane)));
    }
    Ok(match kind {
        TargetKind::Echo => Lane::echo(target.addr, settings.size)?,
        TargetKind::Commucat => Lane::relay(
            target.addr,
            target.server_key,
            suite,
            lane,
            settings.size,
            clock,
        )?,
        TargetKind::Nats => Lane::nats(target.addr, lane, settings.size)?,
        TargetKind::EchoUdp => Lane::echo_udp(target.addr, settings.size)?,
    })
}

/// Runs one load against `target` and measures it.
pub fn run_load(
    kind: TargetKind,
    target: &Target,
    settings: &LoadSettings,
    pace: Pace,
) -> Result<RunResult> {
    let clock = Clock::new();
    let threads = settings.threads.clamp(1, settings.pairs.max(1));
    let mut copies = 1;
    let mut per_thread: Vec<Vec<Lane>> = (0..threads).map(|_| Vec::new()).collect();
    for index in 0..settings.pairs {
        let lane = make_lane(kind, target, settings, index as u64, clock)?;
        copies = lane.copies();
        per_thread[index * threads / settings.pairs.max(1)].push(lane);
    }
    let start = clock.now().0 + 200_000_000;
    let measure_from = start + nanos(settings.warmup);
    let end = measure_from + nanos(settings.duration);
    let plan = Plan {
        clock,
        start,
        measure_from,
        end,
        drain: Duration::from_secs(2),
        pace,
        lanes_total: settings.pairs,
    };
    let progress = Arc::new(Progress::default());
    let mut handles = Vec::new();
    let mut first = 0;
    for (t, lanes) in per_thread.into_iter().enumerate() {
        let count = lanes.len();
        let progress = Arc::clone(&progress);
        let pin = settings.pin_load;
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-load-{t}"))
                .spawn(move || engine::run_thread(lanes, first, plan, &progress, pin))?,
        );
        first += count;
    }
    let label = format!("{} {}", kind.name(), pace_name(pace));
    let (cpu_ns, wall_ns) = watch(&label, target, &plan, &progress);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, engine::LATENCY_NS_MAX, 3)?;
    let (mut sent, mut received, mut load_ns) = (0, 0, 0);
    for handle in handles {
        let result: ThreadResult = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        if let Some(error) = result.error {
            bail!("{label}: a load thread failed: {error}");
        }
        histogram.add(&result.histogram)?;
        sent += result.sent;
        received += result.received;
        load_ns += result.cpu_ns;
    }
    let seconds = settings.duration.as_secs_f64();
    Ok(RunResult {
        target: kind.name().into(),
        mode: pace_name(pace).into(),
        rate_target: match pace {
            Pace::Open { rate } => Some(rate),
            Pace::Closed { .. } => None,
        },
        sent_per_s: sent as f64 / seconds,
        received_per_s: received as f64 / seconds,
        messages: received,
        lost: (sent * copies).saturating_sub(received),
        latency_us: Percentiles::of(&histogram),
        latency_curve_us: report::latency_curve(&histogram),
        server_cpu_us_per_msg: cpu_ns.map(|ns| ns as f64 / 1000.0 / received.max(1) as f64),
        server_cpu_percent: cpu_ns.map(|ns| 100.0 * ns as f64 / wall_ns.max(1) as f64),
        extra: serde_json::json!({
            "pace": pace_json(pace),
            "load_cpu_us_per_msg": load_ns as f64 / 1000.0 / received.max(1) as f64,
            "load_cpu_percent": 100.0 * load_ns as f64 / wall_ns.max(1) as f64,
            "copies_per_message": copies,
            "server_cpu_us_per_sent": cpu_ns.map(|ns| ns as f64 / 1000.0 / sent.max(1) as f64),
        }),
    })
}

fn pace_name(pace: Pace) -> &'static str {
    match pace {
        Pace::Open { .. } => "open-loop",
        Pace::Closed { .. } => "closed-loop",
    }
}

fn pace_json(pace: Pace) -> serde_json::Value {
    match pace {
        Pace::Open { rate } => serde_json::json!({ "open_loop_rate": rate }),
        Pace::Closed { window } => serde_json::json!({ "closed_loop_window": window }),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Prints a progress line every second until the run ends; samples the server's CPU time at
/// the start and the end of the measured interval. Returns (CPU ns, wall ns) of that interval.
fn watch(label: &str, target: &Target, plan: &Plan, progress: &Progress) -> (Option<u64>, u64) {
    let clock = plan.clock;
    let sleep_until = |t: u64| {
        let now = clock.now().0;
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    };
    let total_s = (plan.end - plan.start) / 1_000_000_000;
    let mut cpu_start = None;
    let mut wall_start = plan.measure_from;
    let (mut last_sent, mut last_received) = (0, 0);
    let mut tick = plan.start;
    loop {
        let next = (tick + 1_000_000_000).min(plan.end);
        if cpu_start.is_none() && next > plan.measure_from {
            sleep_until(plan.measure_from);
            wall_start = clock.now().0;
            cpu_start = target.cpu_ns();
        }
        sleep_until(next);
        tick = next;
        let sent = progress.sent.load(Ordering::Relaxed);
        let received = progress.received.load(Ordering::Relaxed);
        eprintln!(
            "[{label}] {:>3}/{total_s} s  sent {:>9}/s  received {:>9}/s{}",
            (tick - plan.start) / 1_000_000_000,
            sent - last_sent,
            received - last_received,
            if tick < plan.measure_from {
                "  (warm-up)"
            } else {
                ""
            }
        );
        (last_sent, last_received) = (sent, received);
        if tick >= plan.end || progress.failed.load(Ordering::Relaxed) {
            break;
        }
    }
    let wall = clock.now().0 - wall_start;
    let cpu = match (cpu_start, target.cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (cpu, wall)
}

/// `handshake`: new sessions per second with `suite`, closed loop over `threads` threads, each
/// connecting, completing the handshake and `Hello`/`Welcome`, and closing, for `duration`.
pub fn run_handshakes(
    target: &Target,
    suite: Suite,
    threads: usize,
    duration: Duration,
    pin_load: Option<usize>,
) -> Result<RunResult> {
    let clock = Clock::new();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..threads.max(1) {
        let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
        let (addr, server) = (target.addr, target.server_key);
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-hs-{t}"))
                .spawn(move || -> Result<Histogram<u64>> {
                    if let Some(cpu) = pin_load {
                        let _ = sys::pin_current_thread(cpu);
                    }
                    let mut histogram =
                        Histogram::<u64>::new_with_bounds(1, engine::LATENCY_NS_MAX, 3)?;
                    let mut rng = SeededRng::new(0x4a5 + t as u64);
                    let key = StaticKeypair::generate(&mut rng);
                    while !stop.load(Ordering::Relaxed) {
                        let mut config = ConnectionConfig::new(key.clone(), server);
                        config.suite = suite;
                        config.keepalive = None;
                        config.resend_refused = false;
                        let t0 = clock.now().0;
                        // A fresh generator per session: new ephemeral keys and indices.
                        let session_rng = SeededRng::new(rng.next_u64());
                        let client = Client::connect_with(addr, config, session_rng, clock, None)
                            .map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
                        let _ = histogram.record(clock.now().0.saturating_sub(t0).max(1));
                        count.fetch_add(1, Ordering::Relaxed);
                        drop(client);
                    }
                    Ok(histogram)
                })?,
        );
    }
    let warmup = Duration::from_secs(1);
    std::thread::sleep(warmup);
    let (c0, cpu0, t0) = (
        count.load(Ordering::Relaxed),
        target.cpu_ns(),
        clock.now().0,
    );
    let seconds = duration.as_secs().max(1);
    for s in 1..=seconds {
        let before = count.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        eprintln!(
            "[handshake {}] {s:>3}/{seconds} s  {:>7} sessions/s",
            suite.noise_name(),
            count.load(Ordering::Relaxed) - before
        );
    }
    let (c1, cpu1, t1) = (
        count.load(Ordering::Relaxed),
        target.cpu_ns(),
        clock.now().0,
    );
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, engine::LATENCY_NS_MAX, 3)?;
    for handle in handles {
        let h = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a handshake thread panicked"))??;
        histogram.add(&h)?;
    }
    let sessions = c1 - c0;
    let wall = (t1 - t0) as f64 / 1e9;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(RunResult {
        target: "commucat".into(),
        mode: "closed-loop".into(),
        rate_target: None,
        sent_per_s: sessions as f64 / wall,
        received_per_s: sessions as f64 / wall,
        messages: sessions,
        lost: 0,
        latency_us: Percentiles::of(&histogram),
        latency_curve_us: report::latency_curve(&histogram),
        server_cpu_us_per_msg: cpu.map(|ns| ns as f64 / 1000.0 / sessions.max(1) as f64),
        server_cpu_percent: cpu.map(|ns| 100.0 * ns as f64 / (wall * 1e9)),
        extra: serde_json::json!({ "suite": suite.noise_name(), "threads": threads }),
    })
}

/// `idle`: opens `count` idle sessions and reports the server's resident memory before and
/// after, per session.
pub fn run_idle(target: &Target, count: usize, suite: Suite) -> Result<RunResult> {
    let Some(before) = target.rss_kib() else {
        bail!("idle needs a server process whose memory can be read (not --in-process)");
    };
    let clock = Clock::new();
    let mut rng = SeededRng::new(0x1d1e);
    let mut held = Vec::with_capacity(count);
    let t0 = clock.now().0;
    for i in 0..count {
        let key = StaticKeypair::generate(&mut rng);
        let mut config = ConnectionConfig::new(key, target.server_key);
        config.suite = suite;
        config.keepalive = None;
        config.resend_refused = false;
        let client =
            Client::connect_with(target.addr, config, SeededRng::new(i as u64), clock, None)
                .map_err(|e| anyhow::anyhow!("session {i}: {e}"))?;
        held.push(client.into_parts().0);
        if (i + 1) % 1000 == 0 {
            eprintln!("[idle] {} sessions", i + 1);
        }
    }
    let open_s = (clock.now().0 - t0) as f64 / 1e9;
    std::thread::sleep(Duration::from_secs(1));
    let after = target.rss_kib().unwrap_or(before);
    drop(held);
    let per_session = (after.saturating_sub(before)) as f64 / count.max(1) as f64;
    Ok(RunResult {
        target: "commucat".into(),
        mode: "idle".into(),
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
            "sessions": count,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_per_session_kib": per_session,
        }),
    })
}
