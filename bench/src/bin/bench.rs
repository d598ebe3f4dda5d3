//! `bench`: CommuCat's load generator. Scenarios `relay`, `fanout`, `offline`, `echo-tcp`,
//! `echo-udp`, `handshake`, `idle`; `compare` for two reports and `summary` for the combined
//! table of several. See `docs/benchmarks.md` for how to run each and
//! `docs/design/0007-client-and-bench.md` for the method.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use commucat_bench::load::engine::Pace;
use commucat_bench::load::report::{self, Report, RunResult, compare};
use commucat_bench::load::servers::{self, CommuCat, Target};
use commucat_bench::load::{self, LoadSettings, TargetKind, fanout, jetstream, offline, sys};
use commucat_client::{Cipher, Clock, Pattern, Suite};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CommuCat's load generator: open-loop load with latency from intended send times, server CPU
/// per message, and baselines (a plain TCP echo, NATS) measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N sender→recipient pairs through the server, at a rate or at the closed-loop maximum;
    /// `--target commucat,echo,nats` runs the baselines in the same run.
    Relay(RelayArgs),
    /// One sender publishes to a group of N recipients (a CommuCat group conversation, N NATS
    /// subscribers of one subject, or a fan-out echo); latency per delivered copy.
    Fanout(FanoutArgs),
    /// With the recipient offline, store M envelopes (each acknowledged `Stored`), then
    /// connect the recipient and drain them.
    Offline(OfflineArgs),
    /// The plain TCP echo baseline alone (`relay --target echo`).
    EchoTcp(RelayArgs),
    /// The plain UDP echo baseline alone (`relay --target echo-udp`): one datagram per message.
    EchoUdp(RelayArgs),
    /// New sessions per second (connect, handshake, Hello/Welcome, close), per suite.
    Handshake(HandshakeArgs),
    /// Opens N idle sessions and reports the server's resident memory per session.
    Idle(IdleArgs),
    /// Prints the ratios b/a of two reports.
    Compare {
        /// The baseline report.
        a: PathBuf,
        /// The report compared with it.
        b: PathBuf,
    },
    /// Prints one table of several reports with the ratios CommuCat/NATS and CommuCat/echo.
    Summary {
        /// The reports (JSON written with --out).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

#[derive(Debug, Args, serde::Serialize)]
struct ServerArgs {
    /// A running CommuCat server to load instead of starting one.
    #[arg(long, requires = "server_key")]
    server: Option<SocketAddr>,
    /// Its public key (64 hex digits).
    #[arg(long)]
    server_key: Option<String>,
    /// Its process id, for CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Its REST API (`fanout` sets up its group there).
    #[arg(long, requires = "server")]
    server_api: Option<SocketAddr>,
    /// The `commucat` binary to start (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Run the server inside this process (dp-io's `Server`; for tests).
    #[arg(long)]
    in_process: bool,
    /// Server shards.
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Pin the server (every thread) to this CPU.
    #[arg(long)]
    pin_server: Option<usize>,
    /// Pin the load threads to this CPU.
    #[arg(long)]
    pin_load: Option<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args, serde::Serialize)]
struct RelayArgs {
    /// Sender→recipient pairs.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    #[command(flatten)]
    #[serde(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args, serde::Serialize)]
struct FanoutArgs {
    /// Recipients in the group (besides the sender).
    #[arg(long, default_value_t = 16)]
    group: usize,
    #[command(flatten)]
    #[serde(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args, serde::Serialize)]
struct OfflineArgs {
    /// Targets, one after the other: commucat, and nats for NATS JetStream (file store).
    #[arg(long, value_delimiter = ',', default_value = "commucat")]
    target: Vec<TargetKind>,
    /// Envelopes to store, then drain.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Envelopes sent and not yet acknowledged, at most.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// CommuCat handshake suite (see `relay --suite`).
    #[arg(long, default_value = "xk-aes")]
    suite: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args, serde::Serialize)]
struct LoadArgs {
    /// Targets, run one after the other in this order (ratios are against the first).
    #[arg(long, value_delimiter = ',', default_value = "commucat")]
    target: Vec<TargetKind>,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Open loop: messages sent per second (over all pairs; `fanout`: published).
    #[arg(long, conflicts_with_all = ["max", "half_max"])]
    rate: Option<f64>,
    /// Closed loop: as fast as the window allows, for every target.
    #[arg(long, conflicts_with = "half_max")]
    max: bool,
    /// Closed loop on the first target, then open loop at half its rate on every target.
    #[arg(long)]
    half_max: bool,
    /// Messages in flight per pair in closed loop.
    #[arg(long, default_value_t = 64)]
    window: u32,
    /// Measured seconds per run (at most 30).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// CommuCat handshake suite: xk or ik, with -aes and/or -hybrid (e.g. xk-aes).
    #[arg(long, default_value = "xk-aes")]
    suite: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args, serde::Serialize)]
struct HandshakeArgs {
    /// Suites to measure, one run each (see `relay --suite`).
    #[arg(long, value_delimiter = ',', default_value = "xk,xk-hybrid")]
    suites: Vec<String>,
    /// Client threads, each handshaking in a loop.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured seconds per suite (at most 30).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args, serde::Serialize)]
struct IdleArgs {
    /// Sessions to open; over TCP at most 18 000 here, since this process and the server each
    /// hold one descriptor per session and the file limit is 20 000 per process; over QUIC at
    /// most 200 000 (no descriptor per session).
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// The carrier: tcp, or quic (the server is started with `--quic-listen`; sessions share
    /// `--sockets` UDP sockets).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "quic"])]
    carrier: String,
    /// UDP sockets the QUIC sessions are spread over (each a QUIC endpoint); the kernel spreads
    /// them over the server's shards by address.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Handshake suite.
    #[arg(long, default_value = "xk")]
    suite: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// The most idle sessions: the hard file limit here is 20 000 per process, and both this
/// process and the server hold one descriptor per session, plus some to spare.
const IDLE_SESSIONS_MAX: usize = 18_000;
/// The most idle sessions over QUIC (held in this process's memory as well as the server's).
const IDLE_QUIC_SESSIONS_MAX: usize = 200_000;
/// The most UDP sockets for `idle --carrier quic`.
const IDLE_QUIC_SOCKETS_MAX: usize = 256;
/// The longest measured run.
const DURATION_MAX_S: u64 = 30;

fn parse_suite(name: &str) -> Result<Suite> {
    let pattern = if name.starts_with("ik") {
        Pattern::Ik
    } else if name.starts_with("xk") {
        Pattern::Xk
    } else {
        bail!("suite {name:?}: start with xk or ik, e.g. xk, ik-aes, xk-aes-hybrid");
    };
    let cipher = if name.contains("aes") {
        Cipher::AesGcm
    } else {
        Cipher::ChaChaPoly
    };
    Ok(Suite::new(pattern, cipher, name.contains("hybrid")))
}

fn idle_quic(args: &IdleArgs) -> Result<()> {
    if args.sessions > IDLE_QUIC_SESSIONS_MAX {
        bail!("--sessions is at most {IDLE_QUIC_SESSIONS_MAX} over QUIC");
    }
    if args.sockets == 0 || args.sockets > IDLE_QUIC_SOCKETS_MAX {
        bail!("--sockets is 1 to {IDLE_QUIC_SOCKETS_MAX}");
    }
    let suite = parse_suite(&args.suite)?;
    let CommuCat::Spawn { binary, shards, .. } = commucat_how(&args.server, false)? else {
        bail!("idle --carrier quic starts the server itself (no --server, no --in-process)");
    };
    let mut report = new_report("idle", serde_json::to_value(args)?);
    let (target, quic) = servers::spawn_commucat_quic(&binary, shards)?;
    if let Some(cpu) = args.server.pin_server {
        target.pin(cpu)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let result = load::idle_quic::run_idle_quic(&target, quic, args.sessions, args.sockets, suite);
    target.stop();
    let result = result?;
    println!(
        "idle QUIC sessions: {} from {} sockets, server VmRSS {} → {} KiB, {:.2} KiB per session",
        args.sessions,
        args.sockets,
        result.extra["rss_before_kib"],
        result.extra["rss_after_kib"],
        result.extra["rss_per_session_kib"].as_f64().unwrap_or(0.0)
    );
    report.results.push(result);
    if let Some(path) = &args.server.out {
        report.write(path)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Relay(args) => relay("relay", &args),
        Command::EchoTcp(mut args) => {
            args.load.target = vec![TargetKind::Echo];
            relay("echo-tcp", &args)
        }
        Command::EchoUdp(mut args) => {
            args.load.target = vec![TargetKind::EchoUdp];
            relay("echo-udp", &args)
        }
        Command::Fanout(args) => fanout(&args),
        Command::Offline(args) => offline(&args),
        Command::Summary { reports } => {
            let reports = reports
                .iter()
                .map(|path| Report::read(path))
                .collect::<Result<Vec<_>>>()?;
            print!("{}", report::summary(&reports));
            Ok(())
        }
        Command::Handshake(args) => handshake(&args),
        Command::Idle(args) => idle(&args),
        Command::Compare { a, b } => {
            print!("{}", compare(&Report::read(&a)?, &Report::read(&b)?));
            Ok(())
        }
    }
}

fn commucat_how(args: &ServerArgs, api: bool) -> Result<CommuCat> {
    if let Some(addr) = args.server {
        let hex_key = args
            .server_key
            .as_deref()
            .context("--server needs --server-key")?;
        let key = hex::decode(hex_key.trim())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .context("--server-key: 64 hex digits")?;
        return Ok(CommuCat::External {
            addr,
            key,
            pid: args.server_pid,
            api: args.server_api,
        });
    }
    if args.in_process && !api {
        return Ok(CommuCat::InProcess {
            shards: args.shards,
        });
    }
    Ok(CommuCat::Spawn {
        binary: args
            .server_bin
            .clone()
            .unwrap_or_else(servers::default_commucat_binary),
        shards: args.shards,
        api,
    })
}

/// Which server a scenario needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Pairs (`relay`, `handshake`, `idle`).
    Pairs,
    /// `fanout`: CommuCat with its REST API, the fan-out echo.
    Fanout,
    /// `offline`: CommuCat with its durable store (never in-process).
    Offline,
}

fn start(kind: TargetKind, args: &ServerArgs, scenario: Scenario) -> Result<Target> {
    let target = match kind {
        TargetKind::Commucat => {
            if args.in_process && scenario != Scenario::Pairs {
                bail!("--in-process has no REST API or durable store: leave it out here");
            }
            servers::start_commucat(&commucat_how(args, scenario == Scenario::Fanout)?)?
        }
        TargetKind::Echo if scenario == Scenario::Fanout => fanout::start_echo()?,
        TargetKind::Echo => servers::start_echo()?,
        TargetKind::Nats => servers::start_nats(scenario == Scenario::Offline)?,
        TargetKind::EchoUdp => servers::start_echo_udp()?,
    };
    if let Some(cpu) = args.pin_server {
        target.pin(cpu)?;
    }
    Ok(target)
}

fn new_report(scenario: &str, settings: serde_json::Value) -> Report {
    Report {
        scenario: scenario.into(),
        machine: sys::machine(),
        commit: sys::git_commit(),
        started_unix_ms: Clock::unix_ms(),
        settings,
        results: Vec::new(),
    }
}

fn finish(report: &Report, out: Option<&PathBuf>) -> Result<()> {
    print!("{}", report.markdown());
    if let Some(path) = out {
        report.write(path)?;
        let plot = path.with_extension("svg");
        std::fs::write(&plot, report::svg(report))
            .with_context(|| format!("cannot write {}", plot.display()))?;
        eprintln!("report: {} and {}", path.display(), plot.display());
    }
    Ok(())
}

/// A target's failure, said on stderr and kept for the report.
fn failure(kind: TargetKind, error: &anyhow::Error) -> String {
    let line = format!("{}: {error:#}", kind.name());
    eprintln!("{line}");
    line
}

/// Records the targets that failed in the report, writes it, and fails when any did.
fn finish_targets(report: &mut Report, failed: &[String], out: Option<&PathBuf>) -> Result<()> {
    if !failed.is_empty() {
        report.settings["failed"] = serde_json::json!(failed);
    }
    finish(report, out)?;
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} target(s) failed: {}", failed.len(), failed.join("; "))
    }
}

fn relay(scenario: &str, args: &RelayArgs) -> Result<()> {
    if args.pairs == 0 {
        bail!("give at least one pair");
    }
    let settings = load_settings(&args.load, args.pairs, None)?;
    run_targets(scenario, &args.load, &settings, serde_json::to_value(args)?)
}

fn fanout(args: &FanoutArgs) -> Result<()> {
    fanout::check_group(args.group)?;
    if args.load.target.contains(&TargetKind::EchoUdp) {
        bail!("fanout has no echo-udp target: use commucat, echo or nats");
    }
    let settings = load_settings(&args.load, 1, Some(args.group))?;
    run_targets("fanout", &args.load, &settings, serde_json::to_value(args)?)
}

fn load_settings(args: &LoadArgs, pairs: usize, group: Option<usize>) -> Result<LoadSettings> {
    if args.duration > DURATION_MAX_S {
        bail!("--duration is at most {DURATION_MAX_S} s");
    }
    if args.target.is_empty() {
        bail!("give at least one target");
    }
    if args
        .rate
        .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
    {
        bail!("--rate must be a positive number of messages per second");
    }
    let suite = parse_suite(&args.suite)?;
    Ok(LoadSettings {
        pairs,
        threads: args.threads,
        size: args.size,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        pin_load: args.server.pin_load,
        suite: suite.to_byte(),
        group,
    })
}

/// Runs every target of `args` in turn and writes the report.
fn run_targets(
    scenario: &str,
    args: &LoadArgs,
    settings: &LoadSettings,
    recorded: serde_json::Value,
) -> Result<()> {
    let kind_of = if settings.group.is_some() {
        Scenario::Fanout
    } else {
        Scenario::Pairs
    };
    let mut report = new_report(scenario, recorded);
    let mut rate = args.rate;
    if args.half_max {
        let first = args.target[0];
        let window = args.window;
        let max = run_one(
            first,
            &args.server,
            settings,
            Pace::Closed { window },
            kind_of,
        )?;
        // Fan-out: half of the peak of published messages.
        rate = Some((max.sent_per_s / 2.0).max(1.0));
        report.results.push(max);
    }
    // A target that fails (for example a server that cuts a receiver off) does not stop the
    // others: it is reported, and the command fails at the end.
    let mut failed = Vec::new();
    for &kind in &args.target {
        let pace = match (args.max, rate) {
            (true, _) => Pace::Closed {
                window: args.window,
            },
            (false, Some(rate)) => Pace::Open { rate },
            (false, None) => Pace::Open { rate: 10_000.0 },
        };
        match run_one(kind, &args.server, settings, pace, kind_of) {
            Ok(result) => report.results.push(result),
            Err(error) => failed.push(failure(kind, &error)),
        }
    }
    finish_targets(&mut report, &failed, args.server.out.as_ref())
}

fn run_one(
    kind: TargetKind,
    server: &ServerArgs,
    settings: &LoadSettings,
    pace: Pace,
    scenario: Scenario,
) -> Result<RunResult> {
    let target = start(kind, server, scenario)?;
    let result = load::run_load(kind, &target, settings, pace);
    target.stop();
    result
}

fn offline(args: &OfflineArgs) -> Result<()> {
    offline::check_messages(args.messages)?;
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    let settings = offline::OfflineSettings {
        messages: args.messages,
        size: args.size,
        window: args.window,
        suite: parse_suite(&args.suite)?,
    };
    if args.target.is_empty() {
        bail!("give at least one target");
    }
    let mut report = new_report("offline", serde_json::to_value(args)?);
    report.settings["baseline"] = serde_json::json!(offline::NATS_NOTE);
    let mut failed = Vec::new();
    for &kind in &args.target {
        let result = match kind {
            TargetKind::Commucat | TargetKind::Nats => start(kind, &args.server, Scenario::Offline)
                .and_then(|target| {
                    // On its own thread, so that `--pin-load` pins the client side only
                    // (a server started later must not inherit the pinning).
                    let result = std::thread::scope(|scope| {
                        scope
                            .spawn(|| {
                                if let Some(cpu) = args.server.pin_load {
                                    let _ = sys::pin_current_thread(cpu);
                                }
                                if kind == TargetKind::Nats {
                                    jetstream::run(&target, &settings)
                                } else {
                                    offline::run(&target, &settings)
                                }
                            })
                            .join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the offline client panicked")))
                    });
                    target.stop();
                    result
                }),
            TargetKind::Echo | TargetKind::EchoUdp => Err(anyhow::anyhow!(
                "an echo stores nothing, so it is no baseline for offline delivery"
            )),
        };
        match result {
            Ok(rows) => report.results.extend(rows),
            Err(error) => failed.push(failure(kind, &error)),
        }
    }
    finish_targets(&mut report, &failed, args.server.out.as_ref())
}

fn handshake(args: &HandshakeArgs) -> Result<()> {
    if args.duration > DURATION_MAX_S {
        bail!("--duration is at most {DURATION_MAX_S} s");
    }
    let mut report = new_report("handshake", serde_json::to_value(args)?);
    for name in &args.suites {
        let suite = parse_suite(name)?;
        let target = start(TargetKind::Commucat, &args.server, Scenario::Pairs)?;
        let result = load::run_handshakes(
            &target,
            suite,
            args.threads,
            Duration::from_secs(args.duration),
            args.server.pin_load,
        );
        target.stop();
        let mut result = result?;
        result.target = format!("commucat {name}");
        report.results.push(result);
    }
    finish(&report, args.server.out.as_ref())
}

fn idle(args: &IdleArgs) -> Result<()> {
    if args.carrier == "quic" {
        return idle_quic(args);
    }
    if args.sessions > IDLE_SESSIONS_MAX {
        bail!(
            "--sessions is at most {IDLE_SESSIONS_MAX}: the file limit is 20 000 per process \
             and both bench and the server hold one descriptor per session"
        );
    }
    let suite = parse_suite(&args.suite)?;
    let mut report = new_report("idle", serde_json::to_value(args)?);
    let target = start(TargetKind::Commucat, &args.server, Scenario::Pairs)?;
    // Let the server settle before the first memory reading.
    std::thread::sleep(Duration::from_millis(500));
    let result = load::run_idle(&target, args.sessions, suite);
    target.stop();
    let result = result?;
    println!(
        "idle sessions: {}, server VmRSS {} → {} KiB, {:.2} KiB per session",
        args.sessions,
        result.extra["rss_before_kib"],
        result.extra["rss_after_kib"],
        result.extra["rss_per_session_kib"].as_f64().unwrap_or(0.0)
    );
    report.results.push(result);
    if let Some(path) = &args.server.out {
        report.write(path)?;
    }
    Ok(())
}
