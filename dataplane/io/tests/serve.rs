//! Goal: the server relays over real loopback sockets across two shards — between every pair of
//! devices, to a device that went offline and came back, and says GoAway on shutdown — on both
//! backends (io_uring and epoll), and the backend choice does what it says. Method: start a
//! two-shard server on 127.0.0.1:0 and drive blocking clients on the real protocol (Noise XK,
//! stream records, frames); every scenario runs once per backend. Every read has a deadline,
//! so a failure fails, never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use core::time::Duration;
use dp_core::{DeviceId, Instant, MessageId, SeededRng};
use dp_io::{Backend, Server, ServerConfig, StartError, UringUnavailable};
use dp_noise::{
    Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, StaticKeypair, StreamSession,
    Suite,
};
use dp_proto::{
    Capabilities, DeliveryAck, ErrorCode, Frame, FrameAssembler, Hello, MessageIds, Recipient,
    SendFrame, SendStatus, Versions,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Welcome,
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    GoAway(ErrorCode),
    Other,
}

struct Client {
    stream: TcpStream,
    session: StreamSession,
    assembler: FrameAssembler,
    rx: Vec<u8>,
    device: DeviceId,
    /// Frames decoded but not yet returned (a record may carry several).
    pending: std::collections::VecDeque<Got>,
}

fn now() -> Instant {
    Instant(1)
}

impl Client {
    fn connect(
        addr: SocketAddr,
        server: &[u8; 32],
        key: &StaticKeypair,
        rng: &mut SeededRng,
    ) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = InitiatorConfig {
            suite: Suite::new(Pattern::Xk, Cipher::ChaChaPoly, true),
            local: key.clone(),
            remote_static: *server,
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(now(), config);
        let mut buf = [0u8; 2048];
        let n = initiator.write_initiation(now(), rng, &mut buf).unwrap();
        write_packet(&mut stream, &buf[..n]);
        let response = read_packet(&mut stream);
        let InitiatorEvent::Established {
            finish_len: Some(f),
            session,
        } = initiator.handle_packet(now(), &response, &mut buf).unwrap()
        else {
            panic!("XK established with a Finish")
        };
        write_packet(&mut stream, &buf[..f]);
        let mut client = Self {
            stream,
            session: StreamSession::new(&session, now()),
            assembler: FrameAssembler::new(1 << 20),
            rx: Vec::new(),
            device: dp_noise::device_id(key.public()),
            pending: std::collections::VecDeque::new(),
        };
        client.send(&Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: Capabilities::HYBRID_PQ,
            frame_len_max: 1 << 20,
        }));
        assert_eq!(client.next(), Got::Welcome);
        client
    }

    fn send(&mut self, frame: &Frame<'_>) {
        let mut plain = Vec::new();
        frame.encode_append(&mut plain).unwrap();
        let mut out = vec![0u8; StreamSession::sealed_len_max(plain.len())];
        let n = self.session.seal_record(now(), &plain, &mut out).unwrap();
        self.stream.write_all(&out[..n]).unwrap();
    }

    /// The next frame; acknowledges every Deliver, like the client library will.
    fn next(&mut self) -> Got {
        loop {
            if let Some(got) = self.pending.pop_front() {
                return got;
            }
            if let Some(record) = self.session.open_record(&mut self.rx).unwrap() {
                let plaintext = self.rx[record.plaintext.clone()].to_vec();
                self.rx.drain(..record.consumed);
                let mut got = Vec::new();
                let mut frames = self.assembler.push(&plaintext);
                while let Some(frame) = frames.next_frame() {
                    got.push(match frame.unwrap() {
                        Frame::Welcome(_) => Got::Welcome,
                        Frame::SendAck(a) => Got::SendAck(a.message, a.status),
                        Frame::Deliver(d) => Got::Deliver(d.message, d.sender, d.body.to_vec()),
                        Frame::GoAway(g) => Got::GoAway(g.code),
                        _ => Got::Other,
                    });
                }
                drop(frames);
                for g in &got {
                    if let Got::Deliver(id, ..) = g {
                        let ids = [*id];
                        self.send(&Frame::DeliveryAck(DeliveryAck {
                            messages: MessageIds::new(&ids),
                        }));
                    }
                }
                self.pending.extend(got);
                continue;
            }
            let mut buf = [0u8; 65536];
            let n = match self.stream.read(&mut buf) {
                // A read with a deadline returns EINTR instead of restarting.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => read.expect("a frame before the deadline"),
            };
            assert!(n > 0, "server closed the connection");
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    fn send_to(&mut self, to: DeviceId, id: u8, body: &[u8]) -> MessageId {
        let message = MessageId([id; 16]);
        self.send(&Frame::Send(SendFrame {
            message,
            recipient: Recipient::Device(to),
            body,
        }));
        message
    }
}

fn write_packet(stream: &mut TcpStream, packet: &[u8]) {
    let mut bytes = (packet.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(packet);
    stream.write_all(&bytes).unwrap();
}

fn read_packet(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut packet).unwrap();
    packet
}

fn config(backend: Backend) -> (ServerConfig, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(7);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    config.backend = backend;
    (config, *key.public(), rng)
}

fn server(backend: Backend) -> (Server, [u8; 32], SeededRng) {
    let (config, public, rng) = config(backend);
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), backend, "runs on the backend asked for");
    (server, public, rng)
}

/// Runs a scenario once per backend: `name::uring` and `name::epoll`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn uring() {
                super::$scenario(dp_io::Backend::Uring);
            }

            #[test]
            fn epoll() {
                super::$scenario(dp_io::Backend::Epoll);
            }
        }
    )*};
}

on_both_backends!(
    relay_between_every_pair_across_two_shards,
    offline_recipient_gets_its_backlog_and_shutdown_says_goaway,
);

fn relay_between_every_pair_across_two_shards(backend: Backend) {
    let (server, public, mut rng) = server(backend);
    let keys: Vec<StaticKeypair> = (0..6).map(|_| StaticKeypair::generate(&mut rng)).collect();
    let mut clients: Vec<Client> = keys
        .iter()
        .map(|k| Client::connect(server.local_addr(), &public, k, &mut rng))
        .collect();
    let mut id = 0u8;
    for from in 0..clients.len() {
        for to in 0..clients.len() {
            if from == to {
                continue;
            }
            id += 1;
            let target = clients[to].device;
            let body = vec![id; 1024];
            let message = clients[from].send_to(target, id, &body);
            let sender = clients[from].device;
            assert_eq!(clients[to].next(), Got::Deliver(message, sender, body));
            assert_eq!(
                clients[from].next(),
                Got::SendAck(message, SendStatus::Delivered)
            );
        }
    }
    server.shutdown();
}

fn offline_recipient_gets_its_backlog_and_shutdown_says_goaway(backend: Backend) {
    let (server, public, mut rng) = server(backend);
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = Client::connect(server.local_addr(), &public, &a_key, &mut rng);
    let b_device = dp_noise::device_id(b_key.public());
    let sent: Vec<MessageId> = (1..=5u8)
        .map(|i| a.send_to(b_device, i, b"while away"))
        .collect();
    for message in &sent {
        assert_eq!(a.next(), Got::SendAck(*message, SendStatus::Stored));
    }
    let mut b = Client::connect(server.local_addr(), &public, &b_key, &mut rng);
    let mut received = Vec::new();
    while received.len() < sent.len() {
        if let Got::Deliver(id, sender, _) = b.next() {
            assert_eq!(sender, a.device);
            if !received.contains(&id) {
                received.push(id);
            }
        }
    }
    assert_eq!(received, sent);
    let (mut a_stream, mut b_stream) = (a, b);
    server.shutdown();
    assert_eq!(a_stream.next(), Got::GoAway(ErrorCode::SHUTTING_DOWN));
    assert_eq!(b_stream.next(), Got::GoAway(ErrorCode::SHUTTING_DOWN));
}

/// A client that completes the handshake and gets `Welcome` proves the server serves.
fn serves(server: &Server, public: &[u8; 32], rng: &mut SeededRng) {
    let key = StaticKeypair::generate(rng);
    let mut client = Client::connect(server.local_addr(), public, &key, rng);
    let me = client.device;
    let message = client.send_to(me, 1, b"to myself");
    let mut got = [client.next(), client.next()];
    got.sort_by_key(|g| matches!(g, Got::SendAck(..)));
    assert_eq!(got[0], Got::Deliver(message, me, b"to myself".to_vec()));
    assert_eq!(got[1], Got::SendAck(message, SendStatus::Delivered));
}

fn no_uring() -> Result<(), UringUnavailable> {
    Err(UringUnavailable::PermissionDenied)
}

#[test]
fn forced_epoll_runs_on_epoll_even_where_uring_works() {
    let (mut config, public, mut rng) = config(Backend::Epoll);
    config.uring_probe = || Ok(());
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Epoll);
    assert_eq!(server.fallback_reason(), None);
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn uring_refuses_to_start_without_io_uring_and_says_why() {
    let (mut config, _, _) = config(Backend::Uring);
    config.uring_probe = no_uring;
    let error = Server::start(config).unwrap_err();
    let StartError::Uring(reason) = &error else {
        panic!("a typed io_uring error, not {error:?}")
    };
    assert_eq!(*reason, UringUnavailable::PermissionDenied);
    let text = error.to_string();
    assert!(text.contains("seccomp"), "says why: {text}");
    assert!(
        text.contains("--backend epoll"),
        "says what to change: {text}"
    );
}

#[test]
fn auto_falls_back_to_epoll_without_io_uring() {
    let (mut config, public, mut rng) = config(Backend::Auto);
    config.uring_probe = no_uring;
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Epoll);
    assert_eq!(
        server.fallback_reason(),
        Some(&UringUnavailable::PermissionDenied)
    );
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn auto_picks_uring_where_the_probe_passes() {
    let (mut config, public, mut rng) = config(Backend::Auto);
    config.uring_probe = || Ok(());
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Uring);
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn the_real_probe_passes_on_this_machine() {
    // The machines this project builds and tests on run io_uring (kernel 6.x, not disabled);
    // if this fails, the uring tests above cannot pass either, and this says why.
    if let Err(reason) = dp_io::probe_uring() {
        panic!("io_uring is unavailable here: {reason}");
    }
}
