//! Durable envelopes stored per second: group commit against one envelope per transaction,
//! measured in the same run, on SQLite and (given a URL) PostgreSQL.
//!
//! ```text
//! url=$(scripts/postgres.sh start)
//! cargo run --release -p control-store --example envelope_throughput -- --postgres "$url"
//! scripts/postgres.sh stop "$url"
//! ```
//!
//! Options: `--seconds S` per measurement (default 5), `--submitters N` concurrent submitters
//! (default 4), `--in-flight W` stores each submitter keeps outstanding (default 2048),
//! `--body BYTES` (default 1024), `--batch N` envelopes per group transaction at most
//! (default 4096), `--wait-us U` bounded wait of a group (default 1000), `--writers W`
//! committer connections for PostgreSQL (default 2; SQLite always has one), `--dir PATH` where
//! the SQLite files go (default a temporary directory), `--postgres URL`.
//!
//! Every store is acknowledged only after COMMIT (SQLite `synchronous=FULL` in WAL mode,
//! PostgreSQL `synchronous_commit=on`), so both modes are equally durable; they differ only in
//! how many envelopes share a commit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // a benchmark

use control_store::{Backend, CommitConfig, Envelope, GroupCommitter, Store, StoreConfig};
use dp_core::{DeviceId, MessageId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Options {
    seconds: u64,
    submitters: u32,
    in_flight: u32,
    body: usize,
    batch: usize,
    wait: Duration,
    writers: usize,
    dir: Option<std::path::PathBuf>,
    postgres: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        submitters: 4,
        in_flight: 2048,
        body: 1024,
        batch: 4096,
        wait: Duration::from_micros(1000),
        writers: 2,
        dir: None,
        postgres: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seconds" => o.seconds = value().parse().unwrap(),
            "--submitters" => o.submitters = value().parse().unwrap(),
            "--in-flight" => o.in_flight = value().parse().unwrap(),
            "--body" => o.body = value().parse().unwrap(),
            "--batch" => o.batch = value().parse().unwrap(),
            "--wait-us" => o.wait = Duration::from_micros(value().parse().unwrap()),
            "--writers" => o.writers = value().parse().unwrap(),
            "--dir" => o.dir = Some(value().into()),
            "--postgres" => o.postgres = Some(value()),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

struct Run {
    stored: u64,
    elapsed: Duration,
    batches: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.stored as f64 / self.elapsed.as_secs_f64()
    }
}

/// Stores for `seconds` from `submitters` × `in_flight` concurrent stores and counts the
/// acknowledged ones.
async fn measure(store: &Store, commit: CommitConfig, o: &Options, tag: u8) -> Run {
    let committer = Arc::new(GroupCommitter::start(store, commit).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicU64::new(0));
    let body = vec![0xa5u8; o.body];
    let mut tasks = tokio::task::JoinSet::new();
    for submitter in 0..o.submitters {
        for lane in 0..o.in_flight {
            let (committer, stop, stored, body) = (
                Arc::clone(&committer),
                Arc::clone(&stop),
                Arc::clone(&stored),
                body.clone(),
            );
            tasks.spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut id = [tag; 16];
                    id[1..5].copy_from_slice(&submitter.to_be_bytes());
                    id[5..9].copy_from_slice(&lane.to_be_bytes());
                    id[9..13].copy_from_slice(&n.to_be_bytes());
                    let recipient = (lane * 31 + n) % 1000;
                    let mut device = [0u8; 16];
                    device[..4].copy_from_slice(&recipient.to_be_bytes());
                    let envelope = Envelope {
                        message: MessageId(id),
                        sender: DeviceId([0xee; 16]),
                        recipient: DeviceId(device),
                        conversation: None,
                        conversation_seq: 0,
                        sent_at_ms: 1_800_000_000_000,
                        expires_at_ms: 1_800_086_400_000,
                        body: body.clone(),
                    };
                    committer.store(envelope).await.unwrap();
                    stored.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            });
        }
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start, base, batches_base) = (
        Instant::now(),
        stored.load(Ordering::Relaxed),
        committer.stats().batches,
    );
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let run = Run {
        stored: stored.load(Ordering::Relaxed) - base,
        elapsed: start.elapsed(),
        batches: committer.stats().batches - batches_base,
    };
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    run
}

async fn backend(name: &str, config_of: impl Fn(&str) -> StoreConfig, o: &Options) {
    let group = CommitConfig {
        batch_envelopes_max: o.batch,
        batch_wait: o.wait,
        queue_depth: 16_384,
        writers: o.writers,
    };
    let single = CommitConfig {
        batch_envelopes_max: 1,
        batch_wait: Duration::ZERO,
        queue_depth: 16_384,
        writers: o.writers,
    };
    let mut runs = Vec::new();
    for (mode, commit, tag) in [("single", single, 1u8), ("group", group, 2u8)] {
        let mut config = config_of(mode);
        config.inbox_pending_max = u64::MAX;
        let store = Store::open(&config).await.unwrap();
        let run = measure(&store, commit, o, tag).await;
        println!(
            "| {name} | {mode} | {} | {:.2} | {:.0} | {:.1} |",
            run.stored,
            run.elapsed.as_secs_f64(),
            run.rate(),
            run.stored as f64 / run.batches.max(1) as f64,
        );
        runs.push(run);
    }
    println!(
        "| {name} | group/single | | | **{:.1}×** | |",
        runs[1].rate() / runs[0].rate()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    println!(
        "{} submitters × {} in flight, {}-byte bodies, group batch ≤ {}, wait {} µs, \
         {} PostgreSQL writers, {} s per run",
        o.submitters,
        o.in_flight,
        o.body,
        o.batch,
        o.wait.as_micros(),
        o.writers,
        o.seconds
    );
    println!();
    println!("| backend | mode | envelopes | seconds | envelopes/s | envelopes per commit |");
    println!("|---|---|---:|---:|---:|---:|");
    let temp = tempfile::tempdir().unwrap();
    let dir = o.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    backend(
        "SQLite",
        |mode| {
            StoreConfig::with_backend(Backend::Sqlite {
                path: dir.join(format!("bench-{mode}-{}.sqlite3", std::process::id())),
            })
        },
        &o,
    )
    .await;
    if let Some(url) = &o.postgres {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let pid = std::process::id();
        for mode in ["single", "group"] {
            client
                .batch_execute(&format!("CREATE DATABASE bench_{mode}_{pid}"))
                .await
                .unwrap();
        }
        backend(
            "PostgreSQL",
            |mode| {
                StoreConfig::with_backend(Backend::Postgres {
                    url: with_dbname(url, &format!("bench_{mode}_{pid}")),
                })
            },
            &o,
        )
        .await;
        drop(client);
        let _ = driver.await;
    } else {
        println!(
            "\n(PostgreSQL skipped: pass --postgres URL, e.g. from scripts/postgres.sh start)"
        );
    }
}

fn with_dbname(url: &str, dbname: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{dbname}{query}")
}
