//! Results: JSON for machines, a Markdown table for people, and `compare`.

use super::sys::Machine;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50: us(histogram.value_at_quantile(0.5)),
            p90: us(histogram.value_at_quantile(0.9)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// One measured run against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// `commucat`, `echo-tcp` or `nats`.
    pub target: String,
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// The rate asked for (open loop), messages per second.
    pub rate_target: Option<f64>,
    /// Measured messages sent per second.
    pub sent_per_s: f64,
    /// Measured messages received per second.
    pub received_per_s: f64,
    /// Measured messages received.
    pub messages: u64,
    /// Measured messages sent but not received by the end of the drain.
    pub lost: u64,
    /// Latency from intended send time (open loop) or send time (closed loop) to receipt.
    pub latency_us: Percentiles,
    /// Server CPU time per received message, microseconds.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Server CPU use over the measured interval, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Scenario-specific figures.
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A whole `bench` run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// The machine.
    pub machine: Machine,
    /// The commit.
    pub commit: String,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Every setting.
    pub settings: serde_json::Value,
    /// One entry per target and mode, in run order.
    pub results: Vec<RunResult>,
}

impl Report {
    /// Writes the JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a report written by [`Report::write`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench report", path.display()))
    }

    /// The Markdown table: one row per result, with the ratios of each to the first result
    /// of the same mode (put the target to compare against first).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "**{}** on {} ({} CPUs), commit `{}`\n",
            self.scenario, self.machine.cpu, self.machine.nproc, self.commit
        );
        let _ = writeln!(
            out,
            "| target | mode | rate asked | received msg/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | server CPU µs/msg | lost | msg/s ÷ first | p99 ÷ first | CPU/msg ÷ first |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let ratio = |x: f64, y: f64| {
            if y > 0.0 {
                format!("{:.2}", x / y)
            } else {
                "–".into()
            }
        };
        for r in &self.results {
            // Ratios against the first result of the same mode (the baseline of the run).
            let first = self.results.iter().find(|f| f.mode == r.mode).unwrap_or(r);
            let cpu_ratio = match (r.server_cpu_us_per_msg, first.server_cpu_us_per_msg) {
                (Some(x), Some(y)) => ratio(x, y),
                _ => "–".into(),
            };
            let l = r.latency_us;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                r.target,
                r.mode,
                r.rate_target
                    .map_or_else(|| "max".into(), |x| format!("{x:.0}")),
                r.received_per_s,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                r.server_cpu_us_per_msg
                    .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
                r.lost,
                ratio(r.received_per_s, first.received_per_s),
                ratio(l.p99, first.latency_us.p99),
                cpu_ratio
            );
        }
        out
    }
}

/// `bench compare a.json b.json`: for each result of `b` with a result of the same target and
/// mode in `a`, the ratios b/a.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ratios b/a — a: {} `{}`, b: {} `{}`\n",
        a.scenario, a.commit, b.scenario, b.commit
    );
    let _ = writeln!(
        out,
        "| target | mode | received msg/s | p50 | p90 | p99 | p99.9 | max | server CPU/msg |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let ratio = |x: f64, y: f64| {
        if y > 0.0 {
            format!("{:.2}", x / y)
        } else {
            "–".into()
        }
    };
    for rb in &b.results {
        let Some(ra) = a
            .results
            .iter()
            .find(|r| r.target == rb.target && r.mode == rb.mode)
        else {
            continue;
        };
        let (la, lb) = (ra.latency_us, rb.latency_us);
        let cpu = match (rb.server_cpu_us_per_msg, ra.server_cpu_us_per_msg) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rb.target,
            rb.mode,
            ratio(rb.received_per_s, ra.received_per_s),
            ratio(lb.p50, la.p50),
            ratio(lb.p90, la.p90),
            ratio(lb.p99, la.p99),
            ratio(lb.p999, la.p999),
            ratio(lb.max, la.max),
            cpu
        );
    }
    out
}
