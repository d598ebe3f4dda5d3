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
    /// The latency distribution: (quantile, µs) at [`CURVE_QUANTILES`], for the plot.
    #[serde(default)]
    pub latency_curve_us: Vec<(f64, f64)>,
}

/// The quantiles of [`RunResult::latency_curve_us`].
pub const CURVE_QUANTILES: [f64; 14] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0,
];

/// (quantile, µs) at each of [`CURVE_QUANTILES`].
pub fn latency_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    CURVE_QUANTILES
        .iter()
        .map(|&q| (q, histogram.value_at_quantile(q) as f64 / 1000.0))
        .collect()
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
            "| target | mode | rate asked | sent msg/s | received msg/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | server CPU µs/msg | lost | msg/s ÷ first | p99 ÷ first | CPU/msg ÷ first |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
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
                "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                r.target,
                r.mode,
                r.rate_target
                    .map_or_else(|| "max".into(), |x| format!("{x:.0}")),
                r.sent_per_s,
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

/// CommuCat against one baseline of the same report and mode: each figure is CommuCat's ÷
/// the baseline's.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratio {
    /// The scenario.
    pub scenario: String,
    /// The mode (`open-loop`, `closed-loop`, ...).
    pub mode: String,
    /// The baseline's target name (`nats`, `echo-tcp`, ...).
    pub baseline: String,
    /// Received messages (copies) per second.
    pub throughput: f64,
    /// Median latency.
    pub p50: f64,
    /// 99th percentile latency.
    pub p99: f64,
    /// 99.9th percentile latency.
    pub p999: f64,
    /// Server CPU per received message, where both were measured.
    pub cpu_per_msg: Option<f64>,
}

/// The ratios CommuCat ÷ each other target of the same mode in `report` (CommuCat/NATS,
/// CommuCat/echo), in result order.
pub fn ratios(report: &Report) -> Vec<Ratio> {
    let div = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    let mut out = Vec::new();
    for base in report.results.iter().filter(|r| r.target != "commucat") {
        let Some(ours) = report
            .results
            .iter()
            .find(|r| r.target == "commucat" && r.mode == base.mode)
        else {
            continue;
        };
        let (a, b) = (ours.latency_us, base.latency_us);
        out.push(Ratio {
            scenario: report.scenario.clone(),
            mode: base.mode.clone(),
            baseline: base.target.clone(),
            throughput: div(ours.received_per_s, base.received_per_s),
            p50: div(a.p50, b.p50),
            p99: div(a.p99, b.p99),
            p999: div(a.p999, b.p999),
            cpu_per_msg: match (ours.server_cpu_us_per_msg, base.server_cpu_us_per_msg) {
                (Some(x), Some(y)) => Some(div(x, y)),
                _ => None,
            },
        });
    }
    out
}

/// One Markdown table of every result of `reports`, then the table of ratios CommuCat ÷ each
/// baseline (NATS, the echo) per scenario and mode.
pub fn summary(reports: &[Report]) -> String {
    let mut out = String::new();
    if let Some(first) = reports.first() {
        let _ = writeln!(
            out,
            "{} ({} CPUs), kernel {}, commit `{}`\n",
            first.machine.cpu, first.machine.nproc, first.machine.kernel, first.commit
        );
    }
    let _ = writeln!(
        out,
        "| scenario | target | mode | rate asked | sent msg/s | received msg/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/msg | lost |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        for r in &report.results {
            let l = r.latency_us;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                report.scenario,
                r.target,
                r.mode,
                r.rate_target
                    .map_or_else(|| "max".into(), |x| format!("{x:.0}")),
                r.sent_per_s,
                r.received_per_s,
                l.p50,
                l.p99,
                l.p999,
                r.server_cpu_us_per_msg
                    .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
                r.lost
            );
        }
        let failed = report.settings.get("failed").and_then(|f| f.as_array());
        for failure in failed.into_iter().flatten().filter_map(|f| f.as_str()) {
            let (target, why) = failure.split_once(": ").unwrap_or(("?", failure));
            let why = why.replace('|', "/");
            let _ = writeln!(
                out,
                "| {} | {target} | failed: {why} | | | | | | | | |",
                report.scenario
            );
        }
    }
    let all: Vec<Ratio> = reports.iter().flat_map(ratios).collect();
    if all.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nRatios CommuCat ÷ baseline (throughput above 1 and latency or CPU below 1 favour CommuCat):\n"
    );
    let _ = writeln!(
        out,
        "| scenario | mode | CommuCat ÷ | received msg/s | p50 | p99 | p99.9 | server CPU/msg |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.2}")
        } else {
            "–".into()
        }
    };
    for r in &all {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.mode,
            r.baseline,
            f(r.throughput),
            f(r.p50),
            f(r.p99),
            f(r.p999),
            r.cpu_per_msg.map_or_else(|| "–".into(), f)
        );
    }
    out
}

/// An SVG plot of every result's latency distribution: latency (log scale) against the
/// percentile, on the usual HdrHistogram axis where each step right is another nine
/// (50 %, 90 %, 99 %, 99.9 %, …).
pub fn svg(report: &Report) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 180.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 50.0;
    const NINES_MAX: f64 = 5.0;
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let nines = |q: f64| (-(1.0 - q).max(1e-5).log10()).min(NINES_MAX);
    let curves: Vec<&RunResult> = report
        .results
        .iter()
        .filter(|r| !r.latency_curve_us.is_empty())
        .collect();
    let (mut lo, mut hi) = (f64::MAX, 1.0_f64);
    for r in &curves {
        for &(_, us) in &r.latency_curve_us {
            lo = lo.min(us.max(1.0));
            hi = hi.max(us);
        }
    }
    let lo = 10f64.powf(lo.min(hi).log10().floor());
    let hi = 10f64.powf(hi.log10().ceil().max(lo.log10() + 1.0));
    let x = |q: f64| LEFT + nines(q) / NINES_MAX * (W - LEFT - RIGHT);
    let y = |us: f64| {
        let t = (us.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10());
        H - BOTTOM - t * (H - TOP - BOTTOM)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(out, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"18\">{} — latency by percentile, commit {}</text>",
        report.scenario, report.commit
    );
    for (i, label) in ["0", "90", "99", "99.9", "99.99", "99.999"]
        .iter()
        .enumerate()
    {
        let px = LEFT + i as f64 / NINES_MAX * (W - LEFT - RIGHT);
        let _ = writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}%</text>",
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    let mut tick = lo;
    while tick <= hi * 1.001 {
        let py = y(tick);
        let label = if tick >= 1000.0 {
            format!("{} ms", tick / 1000.0)
        } else {
            format!("{tick} µs")
        };
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0
        );
        tick *= 10.0;
    }
    for (i, r) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = r
            .latency_curve_us
            .iter()
            .map(|&(q, us)| format!("{:.1},{:.1}", x(q), y(us)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = TOP + 16.0 * i as f64 + 10.0;
        let rate = r
            .rate_target
            .map_or_else(|| "max".into(), |x| format!("{x:.0}/s"));
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{ly:.1}\" fill=\"{color}\">{} {} {rate}</text>",
            W - RIGHT + 10.0,
            r.target,
            r.mode
        );
    }
    let _ = writeln!(out, "</svg>");
    out
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

#[cfg(test)]
mod tests;
