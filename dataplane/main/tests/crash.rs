//! Goal: an envelope acknowledged to its sender survives the server being killed (DESIGN.md
//! §4: "killing the server at any moment loses no acknowledged envelope"), on SQLite and on
//! PostgreSQL. Method: a sender sends to an offline device at a steady pace through the real
//! `commucat serve`; the server is killed with SIGKILL at random moments (from a seeded
//! generator, printed) and started again on the same data, several times; then the recipient
//! connects, and every envelope whose sender heard `Stored` (or `Delivered`) must reach it,
//! exactly once after its dedup by message id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

use commucat_client::{Client, ConnectionConfig, Event};
use dp_core::{MessageId, Rng, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::{Recipient, SendStatus};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 4;
/// Envelopes sent between two looks at the acknowledgements.
const BURST: usize = 32;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("commucat-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `commucat serve` and waits until it accepts connections.
fn start(data: &Path, port: u16, store: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commucat"));
    command
        .args(["serve", "--no-api", "--shards", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null());
    if let Some(url) = store {
        command.args(["--store", url]);
    }
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn connect(port: u16, server: &[u8; 32], key: &StaticKeypair, seed: u64) -> Client<SeededRng> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = ConnectionConfig::new(key.clone(), *server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(addr, config.clone(), SeededRng::new(seed)) {
            Ok(client) => return client,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot connect: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn server_public(data: &Path) -> [u8; 32] {
    let out = Command::new(env!("CARGO_BIN_EXE_commucat"))
        .args(["pubkey", "--key"])
        .arg(data.join("server.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("public key:"))
        .unwrap();
    hex::decode(line.trim()).unwrap().try_into().unwrap()
}

/// Reads the events already there and keeps the ids acknowledged as delivered or stored.
fn collect_acks(client: &mut Client<SeededRng>, acked: &mut BTreeSet<MessageId>) {
    while let Ok(Some(event)) = client.next_event(Duration::from_millis(1)) {
        if let Event::SendAck {
            message,
            status: SendStatus::Stored | SendStatus::Delivered,
            ..
        } = event
        {
            acked.insert(message);
        }
    }
}

fn kill_at_random_moments(name: &str, store: Option<&str>) {
    let seed = u64::from(std::process::id());
    println!("{name}: seed {seed}");
    let mut rng = SeededRng::new(seed);
    let dir = temp_dir(name);
    let data = dir.join("data");
    let port = free_port();
    let sender = StaticKeypair::generate(&mut rng);
    let recipient = StaticKeypair::generate(&mut rng);
    let to = Recipient::Device(dp_noise::device_id(recipient.public()));

    let mut acked = BTreeSet::new();
    let mut sent = 0u64;
    let mut server = start(&data, port, store);
    let public = server_public(&data);
    for round in 0..KILLS {
        let mut client = connect(port, &public, &sender, seed + round as u64);
        let mut buf = [0u8; 8];
        rng.public_fill(&mut buf);
        let kill_after = Duration::from_millis(100 + u64::from_le_bytes(buf) % 700);
        let started = Instant::now();
        // Send in bursts and collect acknowledgements until the kill, which so lands while
        // envelopes are in flight and being committed.
        while started.elapsed() < kill_after {
            for _ in 0..BURST {
                if client.send(to, &sent.to_le_bytes().repeat(64)).is_err() {
                    break;
                }
                sent += 1;
            }
            collect_acks(&mut client, &mut acked);
        }
        // One more burst, and the kill right behind it, while those are being committed.
        for _ in 0..BURST {
            if client.send(to, &sent.to_le_bytes().repeat(64)).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(u64::from(buf[0]) * 4));
        server.kill().unwrap();
        server.wait().unwrap();
        // What arrived before the kill is still read; the connection is gone now.
        collect_acks(&mut client, &mut acked);
        client.abort();
        server = start(&data, port, store);
    }
    assert!(
        !acked.is_empty(),
        "{name}: no envelope was acknowledged ({sent} sent)"
    );

    // The recipient comes online and reads until everything acknowledged has arrived.
    let mut client = connect(port, &public, &recipient, seed ^ 0xff);
    let mut delivered: Vec<MessageId> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = acked.len();
    while missing > 0 && Instant::now() < deadline {
        if let Ok(Some(Event::Delivered(delivery))) = client.next_event(Duration::from_millis(100))
        {
            if acked.contains(&delivery.message) {
                missing -= 1;
            }
            delivered.push(delivery.message);
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let unique: BTreeSet<MessageId> = delivered.iter().copied().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "{name}: delivered twice after dedup"
    );
    let lost: Vec<&MessageId> = acked.difference(&unique).collect();
    assert!(
        lost.is_empty(),
        "{name}: {} of {} acknowledged envelopes lost ({sent} sent, seed {seed})",
        lost.len(),
        acked.len()
    );
    println!(
        "{name}: {sent} sent, {} acknowledged, {} delivered, {KILLS} kills",
        acked.len(),
        unique.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sqlite_server_killed_at_random_moments_loses_no_acknowledged_envelope() {
    kill_at_random_moments("sqlite", None);
}

/// PostgreSQL: the server that `scripts/test.sh` starts (`COMMUCAT_TEST_POSTGRES_URL`), or a
/// throwaway one started here.
#[test]
fn postgres_server_killed_at_random_moments_loses_no_acknowledged_envelope() {
    #[allow(clippy::disallowed_methods)] // the test runner's own knob
    let url = std::env::var("COMMUCAT_TEST_POSTGRES_URL").ok();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let (url, own) = match url {
        Some(url) => (url, false),
        None => {
            let out = Command::new(&script).arg("start").output().unwrap();
            assert!(
                out.status.success(),
                "scripts/postgres.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8(out.stdout).unwrap().trim().to_string(),
                true,
            )
        }
    };
    let result = std::panic::catch_unwind(|| kill_at_random_moments("postgres", Some(&url)));
    if own {
        let _ = Command::new(&script).args(["stop", &url]).status();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
