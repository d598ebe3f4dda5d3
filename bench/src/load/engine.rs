//! The load engine: client threads, each owning many lanes (a sender and a receiver socket)
//! on one non-blocking `mio` poll, sending at a constant rate (open loop) or keeping a window
//! in flight (closed loop).
//!
//! Open loop (wrk2's method): message `k` of a lane has an intended send time
//! `start + offset + k * interval`, and its latency is measured from that time, not from when
//! it was actually written. A stalled server therefore shows up in the percentiles instead of
//! silently slowing the load (no coordinated omission). Every message carries its stamp (the
//! intended time, ns since the run's clock epoch) in its first 8 bytes.

use super::lanes::{Lane, SOCKETS_PER_LANE_MAX};
use super::sys;
use commucat_client::Clock;
use hdrhistogram::Histogram;
use mio::{Events, Poll, Token};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Highest latency the histograms track: 60 s in ns.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// How messages are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Constant rate: this many messages per second over all lanes.
    Open {
        /// Messages per second in total.
        rate: f64,
    },
    /// Closed loop: each lane keeps this many messages in flight.
    Closed {
        /// Messages in flight per lane.
        window: u32,
    },
}

/// When a run starts, measures and stops (ns on the shared clock).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The shared clock.
    pub clock: Clock,
    /// Sending starts.
    pub start: u64,
    /// Messages stamped from here on are measured (the warm-up ends).
    pub measure_from: u64,
    /// Sending stops.
    pub end: u64,
    /// How long to wait after `end` for messages still in flight.
    pub drain: Duration,
    /// Pacing.
    pub pace: Pace,
    /// Lanes in the whole run (for the per-lane interval).
    pub lanes_total: usize,
}

/// Counters the progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages received.
    pub received: AtomicU64,
    /// Set when a thread failed.
    pub failed: AtomicBool,
}

/// What one load thread measured.
#[derive(Debug)]
pub struct ThreadResult {
    /// Latencies (ns) of measured messages.
    pub histogram: Histogram<u64>,
    /// Measured messages sent.
    pub sent: u64,
    /// Measured messages received.
    pub received: u64,
    /// An error that ended the thread early.
    pub error: Option<String>,
    /// This thread's CPU time over the measured interval, ns.
    pub cpu_ns: u64,
}

struct LaneState {
    next_due: u64,
    in_flight: u64,
}

/// Runs `lanes` on this thread per `plan`; `first_lane` is the global index of `lanes[0]`.
pub fn run_thread(
    mut lanes: Vec<Lane>,
    first_lane: usize,
    plan: Plan,
    progress: &Progress,
    pin: Option<usize>,
) -> ThreadResult {
    if let Some(cpu) = pin {
        let _ = sys::pin_current_thread(cpu);
    }
    let mut result = ThreadResult {
        histogram: new_histogram(),
        sent: 0,
        received: 0,
        error: None,
        cpu_ns: 0,
    };
    if let Err(error) = drive(&mut lanes, first_lane, plan, progress, &mut result) {
        progress.failed.store(true, Ordering::Relaxed);
        result.error = Some(error.to_string());
    }
    result
}

/// A latency histogram: 1 ns to [`LATENCY_NS_MAX`], 3 significant digits.
#[allow(clippy::expect_used)]
pub fn new_histogram() -> Histogram<u64> {
    // Fails only for invalid bounds, and these are valid constants.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

fn interval_ns(plan: &Plan) -> u64 {
    match plan.pace {
        Pace::Open { rate } => {
            let per_lane = rate / plan.lanes_total.max(1) as f64;
            (1e9 / per_lane.max(1e-3)) as u64
        }
        Pace::Closed { .. } => 0,
    }
}

fn drive(
    lanes: &mut [Lane],
    first_lane: usize,
    plan: Plan,
    progress: &Progress,
    result: &mut ThreadResult,
) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, lane) in lanes.iter_mut().enumerate() {
        lane.register(poll.registry(), i * SOCKETS_PER_LANE_MAX)?;
    }
    let interval = interval_ns(&plan);
    let mut states: Vec<LaneState> = (0..lanes.len())
        .map(|i| {
            // Spread the lanes' send times evenly over one interval.
            let offset = interval * (first_lane + i) as u64 / plan.lanes_total.max(1) as u64;
            LaneState {
                next_due: plan.start + offset,
                in_flight: 0,
            }
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut arrived = Vec::with_capacity(1024);
    let drain_until = plan.end + u64::try_from(plan.drain.as_nanos()).unwrap_or(u64::MAX);
    let (mut cpu_from, mut cpu_done) = (None, false);
    loop {
        let now = plan.clock.now().0;
        if cpu_from.is_none() && now >= plan.measure_from {
            cpu_from = Some(sys::thread_cpu_ns());
        }
        if !cpu_done && now >= plan.end {
            cpu_done = true;
            result.cpu_ns = sys::thread_cpu_ns().saturating_sub(cpu_from.unwrap_or(0));
        }
        let outstanding: u64 = states.iter().map(|s| s.in_flight).sum();
        if now >= plan.end && (outstanding == 0 || now >= drain_until) {
            return Ok(());
        }
        let mut sent = 0;
        if now < plan.end {
            for (lane, state) in lanes.iter_mut().zip(&mut states) {
                sent += schedule(lane, state, &plan, now, interval, result);
            }
        }
        if sent > 0 {
            progress.sent.fetch_add(sent, Ordering::Relaxed);
        }
        for lane in lanes.iter_mut() {
            lane.flush(plan.clock)?;
        }
        let timeout = match plan.pace {
            Pace::Open { .. } if now < plan.end => {
                let next = states.iter().map(|s| s.next_due).min().unwrap_or(now);
                Duration::from_nanos(next.saturating_sub(now).min(1_000_000))
            }
            _ => Duration::from_millis(1),
        };
        poll.poll(&mut events, Some(timeout))?;
        for event in &events {
            let Token(token) = event.token();
            let (index, which) = (token / SOCKETS_PER_LANE_MAX, token % SOCKETS_PER_LANE_MAX);
            let Some(lane) = lanes.get_mut(index) else {
                continue;
            };
            if !event.is_readable() && !event.is_read_closed() {
                continue;
            }
            arrived.clear();
            lane.on_readable(plan.clock, which, &mut arrived)
                .map_err(|e| {
                    let side = if which == 0 { "sender" } else { "receiver" };
                    let side = format!("{side} {which}");
                    std::io::Error::other(format!(
                        "lane {} {side}: {e} (a server that closes a receiver is usually \
                         cutting off a slow consumer: the load is past what it can take)",
                        first_lane + index
                    ))
                })?;
            let at = plan.clock.now().0;
            for &stamp in &arrived {
                states[index].in_flight = states[index].in_flight.saturating_sub(1);
                if stamp >= plan.measure_from && stamp < plan.end {
                    result.received += 1;
                    let latency = at.saturating_sub(stamp).clamp(1, LATENCY_NS_MAX);
                    let _ = result.histogram.record(latency);
                }
            }
            if !arrived.is_empty() {
                progress
                    .received
                    .fetch_add(arrived.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The intended send times due at `now` on a lane whose next message is due at `next`: every
/// one up to `now` (and before `end`), however late. Each is sent stamped with its intended
/// time, never with `now`, so lateness counts as latency (no coordinated omission).
pub fn due(next: u64, now: u64, end: u64, interval: u64) -> impl Iterator<Item = u64> {
    let interval = interval.max(1);
    (0..)
        .map(move |k: u64| next.saturating_add(k.saturating_mul(interval)))
        .take_while(move |&t| t <= now && t < end)
}

/// Queues what is due on one lane; returns how many messages were queued.
fn schedule(
    lane: &mut Lane,
    state: &mut LaneState,
    plan: &Plan,
    now: u64,
    interval: u64,
    result: &mut ThreadResult,
) -> u64 {
    let mut sent = 0;
    // A fan-out message is in flight until every copy has arrived.
    let copies = lane.copies().max(1);
    match plan.pace {
        Pace::Open { .. } => {
            // Everything due is sent, late or not; a full buffer leaves it due, so its
            // latency keeps counting from its intended time.
            for stamp in due(state.next_due, now, plan.end, interval) {
                if !lane.queue(plan.clock, stamp) {
                    break;
                }
                if stamp >= plan.measure_from {
                    result.sent += 1;
                }
                state.next_due = stamp + interval;
                state.in_flight += copies;
                sent += 1;
            }
        }
        Pace::Closed { window } => {
            while state.in_flight < u64::from(window) * copies {
                if !lane.queue(plan.clock, now) {
                    break;
                }
                if now >= plan.measure_from {
                    result.sent += 1;
                }
                state.in_flight += copies;
                sent += 1;
            }
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_lane_sends_everything_due_stamped_with_its_intended_times() {
        // Due at 1 000 every 1 000 ns, but the thread only runs again at 10 500.
        let stamps: Vec<u64> = due(1_000, 10_500, u64::MAX, 1_000).collect();
        assert_eq!(stamps, (1..=10).map(|k| k * 1_000).collect::<Vec<_>>());
        // Nothing due yet, and nothing at or after the end.
        assert_eq!(due(5_000, 4_999, u64::MAX, 1_000).count(), 0);
        assert_eq!(
            due(1_000, 10_500, 3_000, 1_000).collect::<Vec<_>>(),
            [1_000, 2_000]
        );
    }

    #[test]
    fn the_lanes_interval_spreads_the_total_rate() {
        let plan = Plan {
            clock: Clock::new(),
            start: 0,
            measure_from: 0,
            end: 1,
            drain: Duration::ZERO,
            pace: Pace::Open { rate: 80_000.0 },
            lanes_total: 8,
        };
        // 8 lanes sharing 80 000 msg/s: 10 000 msg/s each, one every 100 µs.
        assert_eq!(interval_ns(&plan), 100_000);
    }
}
