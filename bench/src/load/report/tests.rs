//! Goal: the ratios CommuCat ÷ baseline are computed per mode against the right rows, and
//! the summary prints them. Method: a hand-made report with known figures.

use super::*;
use crate::load::sys::Machine;

fn result(target: &str, mode: &str, received: f64, p99: f64, cpu: Option<f64>) -> RunResult {
    RunResult {
        target: target.into(),
        mode: mode.into(),
        rate_target: Some(1000.0),
        sent_per_s: received,
        received_per_s: received,
        messages: 10,
        lost: 0,
        latency_us: Percentiles {
            p50: p99 / 2.0,
            p90: p99,
            p99,
            p999: p99 * 2.0,
            max: p99 * 4.0,
            mean: p99 / 2.0,
        },
        server_cpu_us_per_msg: cpu,
        server_cpu_percent: None,
        extra: serde_json::Value::Null,
        latency_curve_us: Vec::new(),
    }
}

fn report(results: Vec<RunResult>) -> Report {
    Report {
        scenario: "fanout".into(),
        machine: Machine {
            cpu: "test".into(),
            nproc: 2,
            kernel: "6".into(),
        },
        commit: "abc".into(),
        started_unix_ms: 0,
        settings: serde_json::json!({}),
        results,
    }
}

#[test]
fn ratios_divide_commucat_by_each_baseline_of_the_same_mode() {
    let report = report(vec![
        result("commucat", "open-loop", 900.0, 300.0, Some(6.0)),
        result("echo-tcp", "open-loop", 1000.0, 100.0, Some(2.0)),
        result("nats", "open-loop", 1000.0, 150.0, None),
        // A closed-loop baseline without a CommuCat row of its mode gets no ratio.
        result("nats", "closed-loop", 5000.0, 50.0, Some(1.0)),
    ]);
    let ratios = ratios(&report);
    assert_eq!(ratios.len(), 2);
    assert_eq!(ratios[0].baseline, "echo-tcp");
    assert!((ratios[0].throughput - 0.9).abs() < 1e-9);
    assert!((ratios[0].p99 - 3.0).abs() < 1e-9);
    assert!((ratios[0].p999 - 3.0).abs() < 1e-9);
    assert_eq!(ratios[0].cpu_per_msg, Some(3.0));
    assert_eq!(ratios[1].baseline, "nats");
    assert!((ratios[1].p50 - 2.0).abs() < 1e-9);
    assert_eq!(ratios[1].cpu_per_msg, None, "NATS CPU was not measured");
}

#[test]
fn a_report_without_commucat_has_no_ratios_and_the_summary_says_so() {
    let only_nats = report(vec![result("nats", "open-loop", 1000.0, 150.0, None)]);
    assert!(ratios(&only_nats).is_empty());
    let text = summary(&[only_nats]);
    assert!(text.contains("| fanout | nats | open-loop |"), "{text}");
    assert!(!text.contains("Ratios"), "{text}");
}

#[test]
fn the_summary_lists_every_row_and_the_ratios() {
    let text = summary(&[report(vec![
        result("commucat", "open-loop", 900.0, 300.0, Some(6.0)),
        result("nats", "open-loop", 1000.0, 150.0, Some(2.0)),
    ])]);
    assert!(
        text.contains("| fanout | commucat | open-loop | 1000 |"),
        "{text}"
    );
    assert!(
        text.contains("| fanout | open-loop | nats | 0.90 | 2.00 | 2.00 | 2.00 | 3.00 |"),
        "{text}"
    );
}

#[test]
fn a_failed_target_gets_its_own_row_in_the_summary() {
    let mut failing = report(vec![result("nats", "open-loop", 1000.0, 150.0, None)]);
    failing.settings["failed"] = serde_json::json!(["commucat: this server does not fan out"]);
    let text = summary(&[failing]);
    assert!(
        text.contains("| fanout | commucat | failed: this server does not fan out |"),
        "{text}"
    );
}
