//! Goal: the `fanout`, `offline` and `summary` commands run end to end, refuse bad arguments
//! with a clear message, and report what the docs promise. Method: the real binary, briefly,
//! at tiny rates; the fan-out echo always, NATS when `nats-server` is installed, and CommuCat
//! when the `commucat` binary sits beside `bench` (`cargo build -p commucat`). The figures are
//! not judged (no timing assertions), only that each run measured something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn out_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "commucat-bench-scenario-{name}-{}.json",
        std::process::id()
    ))
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// Runs `args` with `--out`; returns the report (if written), the output, and removes both
/// files.
fn run(args: &[&str], name: &str) -> (Option<Value>, Output) {
    let out = out_path(name);
    let mut all: Vec<&str> = args.to_vec();
    let out_text = out.to_str().unwrap().to_string();
    all.extend(["--out", &out_text]);
    let output = bench(&all);
    let report = std::fs::read_to_string(&out)
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(out.with_extension("svg"));
    (report, output)
}

fn nats_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok()
}

fn commucat_beside_bench() -> bool {
    PathBuf::from(env!("CARGO_BIN_EXE_bench"))
        .with_file_name("commucat")
        .exists()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, reason) in [
        (&["fanout", "--group", "0"][..], "--group is 1 to"),
        (&["fanout", "--group", "5000"][..], "--group is 1 to"),
        (
            &["fanout", "--target", "echo-udp"][..],
            "no echo-udp target",
        ),
        (&["fanout", "--rate", "0"][..], "--rate must be"),
        (&["fanout", "--duration", "31"][..], "--duration is at most"),
        (
            &["fanout", "--in-process"][..],
            "--in-process has no REST API",
        ),
        (&["offline", "--messages", "0"][..], "--messages is 1 to"),
        (&["offline", "--window", "0"][..], "--window must be"),
        (
            &["offline", "--in-process"][..],
            "--in-process has no REST API",
        ),
    ] {
        let output = bench(args);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(
            stderr(&output).contains(reason),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn fanout_delivers_a_copy_to_every_recipient_of_the_echo_and_nats() {
    let targets = if nats_installed() {
        "echo,nats"
    } else {
        "echo"
    };
    let (report, output) = run(
        &[
            "fanout",
            "--target",
            targets,
            "--group",
            "3",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "fanout",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report = report.unwrap();
    assert_eq!(report["scenario"], "fanout");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), targets.split(',').count());
    for result in results {
        assert_eq!(result["extra"]["copies_per_message"], 3, "{result}");
        assert!(result["messages"].as_u64().unwrap() > 0, "{result}");
        assert!(result["latency_us"]["p99"].as_f64().unwrap() > 0.0);
        assert!(result["server_cpu_us_per_msg"].as_f64().is_some());
    }
    assert_eq!(results[0]["target"], "echo-tcp");
}

#[test]
fn commucat_fanout_runs_or_says_the_server_does_not_fan_out_yet() {
    if !commucat_beside_bench() {
        eprintln!("no commucat binary beside bench: skipped (cargo build -p commucat)");
        return;
    }
    let (report, output) = run(
        &[
            "fanout",
            "--target",
            "commucat",
            "--group",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
        "fanout-commucat",
    );
    let report = report.expect("a report is written even when a target fails");
    if output.status.success() {
        let result = &report["results"][0];
        assert_eq!(result["target"], "commucat");
        assert_eq!(result["extra"]["copies_per_message"], 2, "{result}");
        assert!(result["messages"].as_u64().unwrap() > 0, "{result}");
    } else {
        // Set-up (accounts, friends, group) worked and the probe send was refused.
        let failed = report["settings"]["failed"][0].as_str().unwrap();
        assert!(
            failed.contains("this server does not fan out conversation sends yet"),
            "{failed}"
        );
    }
}

#[test]
fn offline_stores_then_drains_every_envelope() {
    let mut targets = Vec::new();
    if commucat_beside_bench() {
        targets.push("commucat");
    }
    if nats_installed() {
        targets.push("nats");
    }
    if targets.is_empty() {
        eprintln!("neither commucat beside bench nor nats-server: skipped");
        return;
    }
    let targets = targets.join(",");
    let (report, output) = run(
        &[
            "offline",
            "--target",
            &targets,
            "--messages",
            "200",
            "--size",
            "256",
        ],
        "offline",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report = report.unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * targets.split(',').count());
    for (pair, target) in results.chunks(2).zip(targets.split(',')) {
        assert_eq!(pair[0]["mode"], "store");
        assert_eq!(pair[1]["mode"], "drain");
        for result in pair {
            assert_eq!(result["target"], target);
            assert_eq!(result["messages"], 200, "{result}");
            assert!(result["received_per_s"].as_f64().unwrap() > 0.0);
            assert!(result["latency_us"]["p50"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn summary_prints_every_report_and_the_ratios() {
    let (a, b) = (out_path("sum-relay"), out_path("sum-fanout"));
    for (args, path) in [
        (
            &[
                "relay",
                "--target",
                "commucat,echo",
                "--in-process",
                "--pairs",
                "1",
            ][..],
            &a,
        ),
        (&["fanout", "--target", "echo", "--group", "2"][..], &b),
    ] {
        let mut all = args.to_vec();
        all.extend(["--rate", "100", "--duration", "1", "--warmup", "0", "--out"]);
        all.push(path.to_str().unwrap());
        let output = bench(&all);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let output = bench(&["summary", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("| relay | commucat | open-loop |"), "{text}");
    assert!(text.contains("| fanout | echo-tcp | open-loop |"), "{text}");
    assert!(
        text.contains("| relay | open-loop | echo-tcp |"),
        "ratio row: {text}"
    );
    for path in [a, b] {
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(path.with_extension("svg")).unwrap();
    }
}
