//! Crash safety at the storage level: no acknowledged envelope is lost when the process that
//! stored it is killed with SIGKILL at a random moment.
//!
//! Method: the test re-runs its own binary as a child (the ignored test `crash_child`), which
//! stores envelopes through a group committer (async tasks and a plain-thread submitter) and
//! prints each message id on stdout only after its store completed. The parent kills the child
//! with SIGKILL after a random number of acknowledgements, reopens the store and asserts that
//! every printed id is stored. Three kills per backend, on the same database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod support;

use control_store::{CommitConfig, Envelope, GroupCommitter, Store, StoreConfig};
use dp_core::{DeviceId, MessageId};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use support::Kind;

const CHILD_VAR: &str = "COMMUCAT_CRASH_CHILD_STORE";
const RECIPIENTS: u8 = 8;
const NOW: u64 = 1_800_000_000_000;
const ROUNDS: u8 = 3;
/// The child stops by itself after this many envelopes, so a parent that never kills it
/// still ends.
const CHILD_ENVELOPES_MAX: u32 = 200_000;

fn location(config: &StoreConfig) -> String {
    match &config.backend {
        control_store::Backend::Sqlite { path } => format!("sqlite:{}", path.display()),
        control_store::Backend::Postgres { url } => url.clone(),
    }
}

fn envelope(round: u8, writer: u8, n: u32) -> Envelope {
    let mut id = [0u8; 16];
    id[0] = round;
    id[1] = writer;
    id[2..6].copy_from_slice(&n.to_be_bytes());
    Envelope {
        message: MessageId(id),
        sender: DeviceId([0xee; 16]),
        recipient: DeviceId([(n % u32::from(RECIPIENTS)) as u8; 16]),
        conversation: None,
        conversation_seq: 0,
        sent_at_ms: NOW,
        expires_at_ms: NOW + 86_400_000,
        body: vec![round ^ writer; 1024],
    }
}

fn print_ack(id: &MessageId) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ack {}", hex::encode(id.0)).unwrap();
    out.flush().unwrap();
}

/// The child: runs only when the parent sets `COMMUCAT_CRASH_CHILD_STORE`.
#[test]
#[ignore = "run by the crash tests as their child process"]
fn crash_child() {
    let Ok(location) = std::env::var(CHILD_VAR) else {
        return;
    };
    let round: u8 = std::env::var("COMMUCAT_CRASH_CHILD_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut config = StoreConfig::from_location(Some(&location), std::path::Path::new("."));
        config.inbox_pending_max = u64::from(u32::MAX);
        let store = Store::open(&config).await.unwrap();
        let committer = Arc::new(GroupCommitter::start(&store, CommitConfig::default()).unwrap());
        let stored = Arc::new(AtomicU32::new(0));
        // A plain thread through the non-blocking submitter, as the control thread does.
        let mut submitter = committer.submitter(256, None);
        let plain_stored = Arc::clone(&stored);
        std::thread::spawn(move || {
            let mut n = 0u32;
            loop {
                while let Some(c) = submitter.poll_completion() {
                    c.result.unwrap();
                    let id = envelope(round, 0, u32::try_from(c.token).unwrap()).message;
                    print_ack(&id);
                }
                if plain_stored.load(Ordering::Relaxed) >= CHILD_ENVELOPES_MAX {
                    return;
                }
                match submitter.try_submit(u64::from(n), envelope(round, 0, n)) {
                    Ok(()) => {
                        n += 1;
                        plain_stored.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        // Async tasks, each with many stores in flight.
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 1..=4u8 {
            for lane in 0..32u32 {
                let committer = Arc::clone(&committer);
                let stored = Arc::clone(&stored);
                tasks.spawn(async move {
                    let mut n = lane;
                    while stored.fetch_add(1, Ordering::Relaxed) < CHILD_ENVELOPES_MAX {
                        let e = envelope(round, writer, n);
                        let id = e.message;
                        committer.store(e).await.unwrap();
                        print_ack(&id);
                        n += 32;
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// A seed for the kill moments, different per run, printed so that a failure can be traced.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

async fn kill_at_random_moments_loses_no_acknowledged_envelope(kind: Kind) {
    let (config, _guard) = support::fresh(kind).await;
    drop(Store::open(&config).await.unwrap()); // migrate before the first child
    let mut rng = dp_core::SeededRng::new(seed());
    let mut acked: BTreeSet<[u8; 16]> = BTreeSet::new();
    for round in 0..ROUNDS {
        // After 1..=2000 acknowledgements: sometimes within the first batch, sometimes later.
        let kill_after = 1 + (rng.next_u64() % 2000) as usize;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_VAR, location(&config))
            .env("COMMUCAT_CRASH_CHILD_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0usize;
        let mut round_acks = Vec::new();
        let mut killed = false;
        // Every complete line is an acknowledgement the child received before it died; a
        // line cut by the kill has no newline and is not counted.
        for line in stdout.split(b'\n') {
            let line = line.unwrap();
            if let Some(hex_id) = line.strip_prefix(b"ack ") {
                let id: [u8; 16] = hex::decode(hex_id).unwrap().try_into().unwrap();
                round_acks.push(id);
                seen += 1;
                if seen == kill_after && !killed {
                    child.kill().unwrap(); // SIGKILL
                    killed = true;
                }
            }
        }
        let status = child.wait().unwrap();
        if !killed {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the child ended ({status}) after {seen} acks, before the kill: {err}");
        }
        assert!(!status.success(), "killed by SIGKILL");
        eprintln!(
            "round {round}: killed after {kill_after} acks, {} read",
            round_acks.len()
        );
        assert!(round_acks.len() >= kill_after);
        acked.extend(round_acks);
    }
    // Reopen and look for every acknowledged id.
    let store = Store::open(&config).await.unwrap();
    let mut stored = BTreeSet::new();
    for r in 0..RECIPIENTS {
        let mut after = 0;
        loop {
            let page = store
                .fetch_pending(DeviceId([r; 16]), after, 1024, NOW)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            for s in page {
                assert!(stored.insert(s.envelope.message.0), "stored twice");
                assert_eq!(s.envelope.body.len(), 1024);
            }
        }
    }
    let lost: Vec<_> = acked.difference(&stored).map(hex::encode).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged envelopes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(acked.len() >= usize::from(ROUNDS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_at_random_moments_loses_no_acknowledged_envelope() {
    kill_at_random_moments_loses_no_acknowledged_envelope(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_at_random_moments_loses_no_acknowledged_envelope() {
    kill_at_random_moments_loses_no_acknowledged_envelope(Kind::Postgres).await;
}
