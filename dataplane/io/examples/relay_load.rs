//! A first relay measurement, until the `bench` tool exists: one server shard relays 1 KiB
//! envelopes between pairs of devices over loopback, each sender keeping a window of envelopes
//! in flight; beside it, in the same run, a plain TCP echo of the same bytes on the same
//! machine (the kernel's limit). Prints messages per second for both and the ratio.
//!
//! The `bench` tool (`bench relay --max`) supersedes it with open-loop load and latency.
//!
//! `cargo run --release -p dp-io --example relay_load -- [pairs] [seconds] [window]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use commucat_client::{Client, Clock, Connection, ConnectionConfig, Event};
use core::time::Duration;
use dp_core::{DeviceId, MessageId, SeededRng};
use dp_io::{Server, ServerConfig};
use dp_noise::{Cipher, Pattern, StaticKeypair, Suite};
use dp_proto::Recipient;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BODY: usize = 1024;

/// A session of the client library, driven here on a blocking socket with a read timeout.
struct Conn {
    stream: TcpStream,
    conn: Connection<SeededRng>,
    clock: Clock,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr, server: [u8; 32], key: &StaticKeypair, seed: u64) -> Self {
        let mut config = ConnectionConfig::new(key.clone(), server);
        config.suite = Suite::new(Pattern::Xk, Cipher::AesGcm, false);
        let client = Client::connect(addr, config, SeededRng::new(seed)).unwrap();
        let (stream, conn, clock) = client.into_parts();
        Self {
            stream,
            conn,
            clock,
            buf: vec![0u8; 65536],
        }
    }

    fn send(&mut self, message: MessageId, to: DeviceId, body: &[u8]) {
        let now = self.clock.now();
        self.conn
            .send(now, message, Recipient::Device(to), body)
            .unwrap();
    }

    fn flush(&mut self) {
        let out = self.conn.poll_transmit(self.clock.now()).unwrap();
        let n = out.len();
        self.stream.write_all(out).unwrap();
        self.conn.handle_written(n);
    }

    /// Reads what is available; returns (SendAcks, deliveries). The library queues the
    /// DeliveryAcks; `flush` writes them.
    fn read(&mut self) -> (usize, usize) {
        let n = self.stream.read(&mut self.buf).unwrap();
        assert!(n > 0, "server closed");
        self.conn
            .handle_input(self.clock.now(), &self.buf[..n])
            .unwrap();
        let (mut acks, mut delivered) = (0, 0);
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::SendAck { .. } => acks += 1,
                Event::Delivered(_) => delivered += 1,
                _ => {}
            }
        }
        (acks, delivered)
    }
}

fn relay(pairs: usize, seconds: u64, window: usize) -> f64 {
    let mut rng = SeededRng::new(1);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 1;
    let server = Server::start(config).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for pair in 0..pairs {
        let sender_key = StaticKeypair::generate(&mut rng);
        let recipient_key = StaticKeypair::generate(&mut rng);
        let recipient_id: DeviceId = dp_noise::device_id(recipient_key.public());
        let server_key = *key.public();
        let (stop_r, delivered_r) = (Arc::clone(&stop), Arc::clone(&delivered));
        let mut recipient = Conn::connect(addr, server_key, &recipient_key, 100 + pair as u64);
        recipient
            .stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        threads.push(std::thread::spawn(move || {
            while !stop_r.load(Ordering::Relaxed) {
                // A read timeout or the server going away at the end of the run ends the thread.
                let Ok((_, delivered)) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recipient.read()))
                else {
                    return;
                };
                if delivered > 0 {
                    delivered_r.fetch_add(delivered as u64, Ordering::Relaxed);
                    recipient.flush();
                }
            }
        }));
        let stop_s = Arc::clone(&stop);
        let mut sender = Conn::connect(addr, server_key, &sender_key, 200 + pair as u64);
        threads.push(std::thread::spawn(move || {
            let body = vec![0x5au8; BODY];
            let mut next = 0u64;
            let mut in_flight = 0usize;
            sender
                .stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while !stop_s.load(Ordering::Relaxed) {
                while in_flight < window {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&next.to_be_bytes());
                    next += 1;
                    sender.send(MessageId(id), recipient_id, &body);
                    in_flight += 1;
                }
                sender.flush();
                let Ok((acks, _)) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sender.read()))
                else {
                    return;
                };
                in_flight -= acks.min(in_flight);
            }
        }));
    }
    // Warm up, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let start = delivered.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let count = delivered.load(Ordering::Relaxed) - start;
    let rate = count as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    server.shutdown();
    for t in threads {
        let _ = t.join();
    }
    rate
}

/// The same bytes through a plain TCP echo: a record-sized write, read back.
fn echo(pairs: usize, seconds: u64, window: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let message = BODY + 64;
    let mut threads = Vec::new();
    for _ in 0..pairs {
        let (stop, echoed) = (Arc::clone(&stop), Arc::clone(&echoed));
        threads.push(std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            let batch = vec![0u8; message * window];
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&batch).unwrap();
                let mut got = 0;
                while got < batch.len() {
                    got += stream.read(&mut buf).unwrap();
                }
                echoed.fetch_add(window as u64, Ordering::Relaxed);
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let start = echoed.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let rate = (echoed.load(Ordering::Relaxed) - start) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    rate
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let pairs = args.first().copied().unwrap_or(4);
    let seconds = args.get(1).copied().unwrap_or(5) as u64;
    let window = args.get(2).copied().unwrap_or(64);
    println!("pairs {pairs}, window {window}, {seconds} s, body {BODY} B, one server shard");
    let relayed = relay(pairs, seconds, window);
    let echoed = echo(pairs, seconds, window);
    println!("relay: {relayed:.0} msg/s (encrypted, acknowledged end to end)");
    println!("echo:  {echoed:.0} msg/s (plain TCP echo of the same sizes)");
    println!("ratio relay/echo: {:.2}", relayed / echoed);
}
