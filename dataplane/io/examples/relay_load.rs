//! A first relay measurement, until the `bench` tool exists: one server shard relays 1 KiB
//! envelopes between pairs of devices over loopback, each sender keeping a window of envelopes
//! in flight (closed loop). The server runs in a child process pinned with `taskset` to
//! `server_cpu`, once on each backend (epoll, then io_uring), and its CPU time (utime + stime
//! of the whole process, from `/proc/PID/stat`) is read over the measured interval. Beside
//! them, in the same run, a plain TCP echo of the same bytes (the kernel's limit). Prints
//! messages per second, server CPU time per message, and the ratios.
//!
//! `taskset -c 0 cargo run --release -p dp-io --example relay_load -- [pairs] [seconds]
//! [window] [server_cpu]` (the load on core 0, the server on `server_cpu`, default 1).
//! `RELAY_ONLY=uring` (or `epoll`) measures one backend alone, without the echo.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use core::time::Duration;
use dp_core::{DeviceId, Instant, MessageId, SeededRng};
use dp_io::{Server, ServerConfig};
use dp_noise::{
    Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, StaticKeypair, StreamSession,
    Suite,
};
use dp_proto::{
    Capabilities, DeliveryAck, Frame, FrameAssembler, Hello, MessageIds, Recipient, SendFrame,
    Versions,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BODY: usize = 1024;

struct Conn {
    stream: TcpStream,
    session: StreamSession,
    assembler: FrameAssembler,
    rx: Vec<u8>,
    out: Vec<u8>,
}

fn now() -> Instant {
    Instant(1)
}

fn packet(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).unwrap();
}

fn read_packet(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut p).unwrap();
    p
}

impl Conn {
    fn connect(addr: SocketAddr, server: [u8; 32], key: &StaticKeypair, seed: u64) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut rng = SeededRng::new(seed);
        let config = InitiatorConfig {
            suite: Suite::new(Pattern::Xk, Cipher::AesGcm, false),
            local: key.clone(),
            remote_static: server,
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(now(), config);
        let mut buf = [0u8; 2048];
        let n = initiator
            .write_initiation(now(), &mut rng, &mut buf)
            .unwrap();
        packet(&mut stream, &buf[..n]);
        let response = read_packet(&mut stream);
        let InitiatorEvent::Established {
            finish_len: Some(f),
            session,
        } = initiator.handle_packet(now(), &response, &mut buf).unwrap()
        else {
            panic!("handshake")
        };
        packet(&mut stream, &buf[..f]);
        let mut conn = Self {
            stream,
            session: StreamSession::new(&session, now()),
            assembler: FrameAssembler::new(1 << 20),
            rx: Vec::new(),
            out: Vec::new(),
        };
        conn.queue(&Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: Capabilities::EMPTY,
            frame_len_max: 1 << 20,
        }));
        conn.flush();
        conn
    }

    fn queue(&mut self, frame: &Frame<'_>) {
        let mut plain = Vec::with_capacity(frame.encoded_len());
        frame.encode_append(&mut plain).unwrap();
        let at = self.out.len();
        self.out
            .resize(at + StreamSession::sealed_len_max(plain.len()), 0);
        let n = self
            .session
            .seal_record(now(), &plain, &mut self.out[at..])
            .unwrap();
        self.out.truncate(at + n);
    }

    /// Writes what was queued; false once the server is gone.
    fn flush(&mut self) -> bool {
        let ok = self.stream.write_all(&self.out).is_ok();
        self.out.clear();
        ok
    }

    /// Reads what is available and calls `f` for every frame kind: (is_ack, is_deliver, id).
    fn read(&mut self, mut f: impl FnMut(bool, Option<MessageId>)) -> Got {
        let mut buf = [0u8; 65536];
        let n = loop {
            match self.stream.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Timeout;
                }
                Ok(0) | Err(_) => return Got::Closed,
                Ok(n) => break n,
            }
        };
        self.rx.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Some(record) = self.session.open_record(&mut self.rx[at..]).unwrap() {
            let plain = self.rx[at + record.plaintext.start..at + record.plaintext.end].to_vec();
            at += record.consumed;
            let mut frames = self.assembler.push(&plain);
            while let Some(frame) = frames.next_frame() {
                match frame.unwrap() {
                    Frame::SendAck(_) => f(true, None),
                    Frame::Deliver(d) => f(false, Some(d.message)),
                    _ => {}
                }
            }
        }
        self.rx.drain(..at);
        Got::Data
    }
}

/// What a client read gave.
enum Got {
    Data,
    /// Nothing for the read timeout (200 ms): a stall.
    Timeout,
    /// The server closed the connection (the end of the run).
    Closed,
}

/// Child mode: one shard on `backend`; prints `listening ADDR KEY`, serves until stdin closes.
fn serve(backend: &str) {
    let mut rng = SeededRng::new(1);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 1;
    config.backend = backend.parse().unwrap();
    let server = Server::start(config).unwrap();
    assert_eq!(
        server.backend().name(),
        backend,
        "runs on the backend asked for"
    );
    println!(
        "listening {} {}",
        server.local_addr(),
        hex::encode(key.public())
    );
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    server.shutdown();
}

/// Starts the server child pinned to `cpu`; returns it, its address and its public key.
fn spawn_server(backend: &str, cpu: usize) -> (Child, SocketAddr, [u8; 32]) {
    let mut child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(std::env::current_exe().unwrap())
        .args(["--serve", backend])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("taskset and the example binary run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut words = line.split_whitespace().skip(1);
    let addr = words
        .next()
        .expect("the server says where")
        .parse()
        .unwrap();
    let key = hex::decode(words.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (child, addr, key)
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Measured {
    rate: f64,
    /// Server CPU time per relayed message, microseconds.
    cpu_us_per_msg: f64,
    /// Client reads that waited 200 ms for nothing, during the warm-up and the measurement.
    stalls: u64,
}

fn relay(backend: &str, server_cpu: usize, pairs: usize, seconds: u64, window: usize) -> Measured {
    let (mut child, addr, server_key) = spawn_server(backend, server_cpu);
    let mut rng = SeededRng::new(2);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let stalls = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for pair in 0..pairs {
        let sender_key = StaticKeypair::generate(&mut rng);
        let recipient_key = StaticKeypair::generate(&mut rng);
        let recipient_id: DeviceId = dp_noise::device_id(recipient_key.public());
        let (stop_r, delivered_r) = (Arc::clone(&stop), Arc::clone(&delivered));
        let (stalls_r, stalls_s) = (Arc::clone(&stalls), Arc::clone(&stalls));
        let mut recipient = Conn::connect(addr, server_key, &recipient_key, 100 + pair as u64);
        recipient
            .stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        threads.push(std::thread::spawn(move || {
            while !stop_r.load(Ordering::Relaxed) {
                let mut ids = Vec::new();
                match recipient.read(|_, id| ids.extend(id)) {
                    Got::Data => {}
                    Got::Timeout => {
                        stalls_r.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Got::Closed => return,
                }
                if !ids.is_empty() {
                    delivered_r.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    for chunk in ids.chunks(256) {
                        recipient.queue(&Frame::DeliveryAck(DeliveryAck {
                            messages: MessageIds::new(chunk),
                        }));
                    }
                    if !recipient.flush() {
                        return;
                    }
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
                    sender.queue(&Frame::Send(SendFrame {
                        message: MessageId(id),
                        recipient: Recipient::Device(recipient_id),
                        body: &body,
                    }));
                    in_flight += 1;
                }
                if !sender.flush() {
                    return;
                }
                let mut acks = 0;
                match sender.read(|ack, _| acks += usize::from(ack)) {
                    Got::Data => {}
                    Got::Timeout => {
                        stalls_s.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Got::Closed => return,
                }
                in_flight -= acks.min(in_flight);
            }
        }));
    }
    // Warm up, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let start = delivered.load(Ordering::Relaxed);
    let ticks_start = cpu_ticks(child.id());
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let count = delivered.load(Ordering::Relaxed) - start;
    let ticks = cpu_ticks(child.id()) - ticks_start;
    let stalled = stalls.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drop(child.stdin.take());
    child.wait().unwrap();
    for t in threads {
        let _ = t.join();
    }
    let cpu_s = ticks as f64 / clock_ticks_per_second() as f64;
    Measured {
        rate: count as f64 / elapsed,
        cpu_us_per_msg: cpu_s * 1e6 / count.max(1) as f64,
        stalls: stalled,
    }
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        serve(&args[1]);
        return;
    }
    let args: Vec<usize> = args.iter().map(|a| a.parse().unwrap()).collect();
    let pairs = args.first().copied().unwrap_or(4);
    let seconds = args.get(1).copied().unwrap_or(5) as u64;
    let window = args.get(2).copied().unwrap_or(64);
    let server_cpu = args.get(3).copied().unwrap_or(1);
    println!(
        "pairs {pairs}, window {window}, {seconds} s, body {BODY} B, one server shard on cpu \
         {server_cpu}"
    );
    if let Ok(backend) = std::env::var("RELAY_ONLY") {
        let m = relay(&backend, server_cpu, pairs, seconds, window);
        println!(
            "relay {backend}: {:.0} msg/s, {:.2} us/msg, {} stalls",
            m.rate, m.cpu_us_per_msg, m.stalls
        );
        return;
    }
    let epoll = relay("epoll", server_cpu, pairs, seconds, window);
    let uring = relay("uring", server_cpu, pairs, seconds, window);
    let echoed = echo(pairs, seconds, window);
    for (name, m) in [("epoll", &epoll), ("uring", &uring)] {
        println!(
            "relay {name}: {:.0} msg/s, server CPU {:.2} us/msg, {} stalls (encrypted, \
             acknowledged end to end)",
            m.rate, m.cpu_us_per_msg, m.stalls
        );
    }
    println!("echo:        {echoed:.0} msg/s (plain TCP echo of the same sizes, in-process)");
    println!("ratio uring/epoll: {:.2} msg/s", uring.rate / epoll.rate);
    println!(
        "ratio uring/epoll: {:.2} CPU per message",
        uring.cpu_us_per_msg / epoll.cpu_us_per_msg
    );
    println!(
        "ratio relay/echo: epoll {:.2}, uring {:.2}",
        epoll.rate / echoed,
        uring.rate / echoed
    );
}
