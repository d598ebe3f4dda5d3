//! Goal: `bench` runs end to end and writes a report with every field the docs promise.
//! Method: run the real binary briefly at a tiny rate against its own echo server and an
//! in-process CommuCat server (and NATS when `nats-server` is installed), then read the JSON.
//! The figures are not judged (no timing assertions), only that the run measured something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn out_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "commucat-bench-smoke-{name}-{}.json",
        std::process::id()
    ))
}

fn run(args: &[&str], name: &str) -> Value {
    let out = out_path(name);
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("| target | mode |"),
        "no Markdown table:\n{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let plot = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert_eq!(
        plot.matches("<polyline").count(),
        report["results"].as_array().unwrap().len(),
        "one latency curve per result"
    );
    std::fs::remove_file(out.with_extension("svg")).unwrap();
    for field in ["scenario", "machine", "commit", "settings", "results"] {
        assert!(!report[field].is_null(), "report has no {field}: {report}");
    }
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    report
}

fn check_result(result: &Value, target: &str) {
    assert_eq!(result["target"], target, "{result}");
    assert!(
        result["messages"].as_u64().unwrap() > 0,
        "nothing measured: {result}"
    );
    for p in ["p50", "p90", "p99", "p999", "max"] {
        let value = result["latency_us"][p].as_f64().unwrap();
        assert!(value > 0.0, "{target} {p} = {value}");
    }
    assert!(
        result["server_cpu_us_per_msg"].as_f64().is_some(),
        "{target}: no CPU per message: {result}"
    );
}

#[test]
fn relay_and_both_echoes_write_a_complete_report() {
    let report = run(
        &[
            "relay",
            "--target",
            "commucat,echo,echo-udp",
            "--in-process",
            "--pairs",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "relay",
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    check_result(&results[0], "commucat");
    check_result(&results[1], "echo-tcp");
    check_result(&results[2], "echo-udp");
    assert_eq!(results[0]["mode"], "open-loop");
    assert_eq!(results[0]["rate_target"].as_f64(), Some(200.0));
}

#[test]
fn closed_loop_max_then_half_runs_both_modes() {
    let report = run(
        &[
            "relay",
            "--target",
            "commucat",
            "--in-process",
            "--pairs",
            "1",
            "--half-max",
            "--window",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "half-max",
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["mode"], "closed-loop");
    assert_eq!(results[1]["mode"], "open-loop");
    let max = results[0]["received_per_s"].as_f64().unwrap();
    let asked = results[1]["rate_target"].as_f64().unwrap();
    assert!((asked - max / 2.0).abs() < 1.0, "asked {asked}, max {max}");
}

#[test]
fn handshake_counts_sessions_for_each_suite() {
    let report = run(
        &[
            "handshake",
            "--in-process",
            "--suites",
            "ik-aes,xk-hybrid",
            "--threads",
            "1",
            "--duration",
            "1",
        ],
        "handshake",
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["target"], "commucat ik-aes");
    assert!(results[1]["messages"].as_u64().unwrap() > 0);
}

#[test]
fn nats_relay_runs_when_nats_server_is_installed() {
    let installed = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok();
    if !installed {
        eprintln!("nats-server is not installed: skipped (scripts/test.sh installs it)");
        return;
    }
    let report = run(
        &[
            "relay",
            "--target",
            "nats",
            "--pairs",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "nats",
    );
    check_result(&report["results"][0], "nats");
}

#[test]
fn compare_prints_ratios() {
    let a = out_path("cmp-a");
    let b = out_path("cmp-b");
    for path in [&a, &b] {
        let status = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args([
                "echo-tcp",
                "--pairs",
                "1",
                "--rate",
                "100",
                "--duration",
                "1",
                "--warmup",
                "0",
                "--out",
            ])
            .arg(path)
            .output()
            .unwrap()
            .status;
        assert!(status.success());
    }
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("compare")
        .args([&a, &b])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("| echo-tcp | open-loop |"), "{text}");
    for path in [a, b] {
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(path.with_extension("svg")).unwrap();
    }
}

#[test]
fn a_failing_target_is_reported_and_the_others_still_run() {
    let out = out_path("failing");
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unreachable.local_addr().unwrap();
    drop(unreachable);
    let key = "00".repeat(32);
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["relay", "--target", "commucat,echo", "--server"])
        .arg(addr.to_string())
        .args(["--server-key", &key, "--pairs", "1", "--rate", "100"])
        .args(["--duration", "1", "--warmup", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a failed target must fail the command"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    check_result(&results[0], "echo-tcp");
    let failed = report["settings"]["failed"].as_array().unwrap();
    assert!(
        failed[0].as_str().unwrap().starts_with("commucat"),
        "{failed:?}"
    );
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(out.with_extension("svg")).unwrap();
}
