//! Goal: the server relays over real loopback sockets across two shards — between every pair of
//! devices, to a device that went offline and came back, and says GoAway on shutdown. Method:
//! start a two-shard server on 127.0.0.1:0 and drive blocking clients on the real protocol
//! (Noise XK, stream records, frames). Every read has a deadline, so a failure fails, never
//! hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use core::time::Duration;
use dp_core::{DeviceId, Instant, MessageId, SeededRng};
use dp_io::{Server, ServerConfig};
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
            let n = self
                .stream
                .read(&mut buf)
                .expect("a frame before the deadline");
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

fn server() -> (Server, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(7);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    (Server::start(config).unwrap(), *key.public(), rng)
}

#[test]
fn relay_between_every_pair_across_two_shards() {
    let (server, public, mut rng) = server();
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

#[test]
fn offline_recipient_gets_its_backlog_and_shutdown_says_goaway() {
    let (server, public, mut rng) = server();
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
