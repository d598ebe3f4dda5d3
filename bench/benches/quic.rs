//! Bytes through the QUIC carrier, client to server in memory, in 1 KiB writes, beside a
//! baseline measured in the same run: the same bytes through the Noise stream record seal
//! alone (1 KiB records). A third case is the real path: 1 KiB Noise records written to the
//! QUIC stream (seal, then QUIC's own packet protection and framing).
//!
//! Both endpoints run in this thread and hand datagrams to each other directly, with the real
//! clock as `now` (quinn paces by time); the server reads everything, and its ACKs and window
//! updates go back. Each iteration moves 1 MiB over a connection set up beforehand.
//!
//! `cargo bench -p commucat-bench --bench quic`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
// A benchmark reads the clock to drive the carriers, as the IO layer does.
#![allow(clippy::disallowed_methods)]

use commucat_bench::handshake;
use core::net::SocketAddr;
use core::time::Duration;
use divan::Bencher;
use divan::counter::BytesCount;
use dp_core::{Instant, SeededRng};
use dp_noise::{Cipher, Pattern, StreamSession, Suite};
use dp_quic::{Certificate, QuicClient, QuicConfig, QuicConnId, QuicEvent, QuicServer, TimeBase};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const TOTAL: usize = 1 << 20;
const WRITE: usize = 1024;

struct Pair {
    epoch: std::time::Instant,
    server: QuicServer,
    client: QuicClient,
    client_conn: QuicConnId,
    server_conn: Option<QuicConnId>,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    buf: Vec<u8>,
    read_buf: Vec<u8>,
}

impl Pair {
    fn now(&self) -> Instant {
        Instant(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap())
    }

    fn new() -> Self {
        let epoch = std::time::Instant::now();
        let time = TimeBase::new(epoch, Duration::from_secs(1_800_000_000));
        let mut rng = SeededRng::new(9);
        let cert = Certificate::generate(&mut rng).unwrap();
        let config = QuicConfig::default();
        let server = QuicServer::new(config, &cert, time, 0, &mut rng).unwrap();
        let mut client = QuicClient::new(config, time, &mut rng).unwrap();
        let server_addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let client_conn = client.connect(Instant(1), server_addr).unwrap();
        let mut pair = Self {
            epoch,
            server,
            client,
            client_conn,
            server_conn: None,
            server_addr,
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            buf: Vec::with_capacity(64 * 1024),
            read_buf: vec![0u8; 64 * 1024],
        };
        // Handshake, then one byte so the server sees the stream.
        let mut sent = false;
        while pair.server_conn.is_none() {
            if !sent && pair.client.write(client_conn, b"x").is_ok_and(|n| n == 1) {
                sent = true;
            }
            pair.exchange();
            pair.read_server();
        }
        pair
    }

    /// Moves every pending datagram each way once, and runs due timers.
    fn exchange(&mut self) {
        let now = self.now();
        while let Some(transmit) = self.client.poll_transmit(now, &mut self.buf) {
            let size = transmit.segment_size.unwrap_or(transmit.len);
            for datagram in self.buf[..transmit.len].chunks(size) {
                self.server
                    .handle_datagram(now, self.client_addr, None, None, datagram);
            }
        }
        while let Some(transmit) = self.server.poll_transmit(now, &mut self.buf) {
            let size = transmit.segment_size.unwrap_or(transmit.len);
            for datagram in self.buf[..transmit.len].chunks(size) {
                self.client
                    .handle_datagram(now, self.server_addr, None, None, datagram);
            }
        }
        for (due, carrier) in [
            (self.server.poll_timeout(), 0),
            (self.client.poll_timeout(), 1),
        ] {
            if due.is_some_and(|due| due <= now) {
                match carrier {
                    0 => self.server.handle_timeout(now),
                    _ => self.client.handle_timeout(now),
                }
            }
        }
    }

    /// Reads everything the server has; returns the byte count.
    fn read_server(&mut self) -> usize {
        while let Some(event) = self.server.poll_event() {
            if let QuicEvent::StreamOpened { conn, .. } = event {
                self.server_conn = Some(conn);
            }
        }
        while self.client.poll_event().is_some() {}
        let Some(conn) = self.server_conn else {
            return 0;
        };
        let mut total = 0;
        loop {
            match self.server.read(conn, &mut self.read_buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    }

    /// Writes `TOTAL / WRITE` chunks made by `next` (which fills a chunk and returns its
    /// length) and waits until the server has read every byte written.
    fn transfer(&mut self, mut next: impl FnMut(&mut [u8]) -> usize) {
        let mut chunk = vec![0u8; 2 * WRITE];
        let (mut chunk_len, mut chunk_at) = (0, 0);
        let mut chunks = 0;
        let (mut written, mut received) = (0, 0);
        loop {
            loop {
                if chunk_at == chunk_len {
                    if chunks == TOTAL / WRITE {
                        break;
                    }
                    chunk_len = next(&mut chunk);
                    chunk_at = 0;
                    chunks += 1;
                }
                let n = self
                    .client
                    .write(self.client_conn, &chunk[chunk_at..chunk_len])
                    .unwrap();
                if n == 0 {
                    break;
                }
                chunk_at += n;
                written += n;
            }
            self.exchange();
            received += self.read_server();
            if chunks == TOTAL / WRITE && chunk_at == chunk_len && received == written {
                return;
            }
        }
    }
}

/// Raw bytes through QUIC: 1 KiB writes, read at the server.
#[divan::bench(sample_count = 30)]
fn quic_stream_1k_writes(bencher: Bencher<'_, '_>) {
    let mut pair = Pair::new();
    let payload = [0x5au8; WRITE];
    bencher.counter(BytesCount::new(TOTAL)).bench_local(|| {
        pair.transfer(|chunk| {
            chunk[..WRITE].copy_from_slice(&payload);
            WRITE
        });
    });
}

/// The real path: each 1 KiB is sealed as a Noise stream record, and the record goes to QUIC.
#[divan::bench(sample_count = 30)]
fn quic_stream_noise_records_1k(bencher: Bencher<'_, '_>) {
    let mut pair = Pair::new();
    let (client, _) = handshake(Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false), 4).unwrap();
    let mut tx = StreamSession::new(&client, Instant(1));
    let plaintext = [0x5au8; WRITE];
    bencher.counter(BytesCount::new(TOTAL)).bench_local(|| {
        pair.transfer(|chunk| tx.seal_record(Instant(2), &plaintext, chunk).unwrap());
    });
}

/// Baseline: the same bytes through the Noise stream record seal alone, 1 KiB records.
#[divan::bench(sample_count = 30)]
fn baseline_noise_record_seal_1k(bencher: Bencher<'_, '_>) {
    let (client, _) = handshake(Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false), 4).unwrap();
    let mut tx = StreamSession::new(&client, Instant(1));
    let plaintext = [0x5au8; WRITE];
    let mut out = vec![0u8; StreamSession::sealed_len_max(WRITE)];
    bencher.counter(BytesCount::new(TOTAL)).bench_local(|| {
        for _ in 0..TOTAL / WRITE {
            divan::black_box(
                tx.seal_record(Instant(2), divan::black_box(&plaintext), &mut out)
                    .unwrap(),
            );
        }
    });
}
