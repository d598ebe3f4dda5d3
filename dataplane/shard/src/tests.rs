//! Goal: shards relay envelopes between devices on the same and on different shards, store
//! them for offline devices and deliver them on return, acknowledge only what was delivered or
//! stored, and isolate slow or misbehaving peers. Method: two shards and in-memory clients on
//! the real handshake, session and frame code, pumped to quiescence with a stand-in control.

use super::*;
use dp_core::SeededRng;
use dp_noise::{Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, Suite};
use dp_proto::{
    DeliveryAck, Frame, FrameAssembler, Hello, MessageIds, Ping, Recipient, SendFrame, Versions,
};

const SHARDS: u16 = 2;
const KEY: u64 = 0x5eed;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Welcome(DeviceId),
    Pong(u64),
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    Error(ErrorCode),
}

struct Client {
    key: StaticKeypair,
    initiator: Initiator,
    stream: Option<StreamSession>,
    assembler: FrameAssembler,
    shard: usize,
    conn: ConnId,
    rx: Vec<u8>,
    got: Vec<Got>,
    closed: Option<CloseReason>,
    reading: bool,
}

struct World {
    now: Instant,
    shards: Vec<Shard<SeededRng>>,
    server: StaticKeypair,
    clients: Vec<Client>,
    stored: Vec<Envelope>,
    rng: SeededRng,
}

use dp_noise::StreamSession;

impl World {
    fn new() -> Self {
        let mut rng = SeededRng::new(42);
        let server = StaticKeypair::generate(&mut rng);
        let now = Instant(1_000);
        let shards = (0..SHARDS)
            .map(|i| {
                let config = ShardConfig::new(ShardId(i), SHARDS, KEY).unwrap();
                Shard::new(
                    now,
                    config,
                    server.clone(),
                    SeededRng::new(u64::from(i) + 100),
                )
            })
            .collect();
        Self {
            now,
            shards,
            server,
            clients: Vec::new(),
            stored: Vec::new(),
            rng,
        }
    }

    /// A fresh key whose home shard is `home`.
    fn key_homed_on(&mut self, home: u16) -> StaticKeypair {
        loop {
            let key = StaticKeypair::generate(&mut self.rng);
            if home_shard(dp_noise::device_id(key.public()), SHARDS, KEY) == ShardId(home) {
                return key;
            }
        }
    }

    /// A client whose key's home shard is `home`, connecting (by the kernel's choice) to
    /// shard `via`, that has completed the handshake and Hello.
    fn connect(&mut self, home: u16, via: usize, suite: Suite) -> usize {
        let key = self.key_homed_on(home);
        let index = self.handshake(key, via, suite);
        self.hello(index);
        index
    }

    /// Like `connect`, but without sending Hello.
    fn connect_without_hello(&mut self, home: u16) -> usize {
        let key = self.key_homed_on(home);
        self.handshake(key, usize::from(home), xk())
    }

    /// Connects again with the key of an earlier client, through shard 0.
    fn reconnect(&mut self, old: usize) -> usize {
        let index = self.handshake(self.clients[old].key.clone(), 0, xk());
        self.hello(index);
        index
    }

    fn handshake(&mut self, key: StaticKeypair, via: usize, suite: Suite) -> usize {
        let config = InitiatorConfig {
            suite,
            local: key.clone(),
            remote_static: *self.server.public(),
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(self.now, config);
        let peer = "192.0.2.9:5000".parse().unwrap();
        let conn = self.shards[via].handle_connect(self.now, peer).unwrap();
        let mut packet = [0u8; 2048];
        let len = initiator
            .write_initiation(self.now, &mut self.rng, &mut packet)
            .unwrap();
        let mut bytes = (len as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(&packet[..len]);
        self.shards[via].handle_received(self.now, conn, &bytes);
        self.clients.push(Client {
            key,
            initiator,
            stream: None,
            assembler: FrameAssembler::new(dp_core::limits::FRAME_LEN_MAX),
            shard: via,
            conn,
            rx: Vec::new(),
            got: Vec::new(),
            closed: None,
            reading: true,
        });
        self.pump();
        self.clients.len() - 1
    }

    fn hello(&mut self, index: usize) {
        let hello = Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: dp_proto::Capabilities::EMPTY,
            frame_len_max: 1 << 20,
        });
        self.send(index, &hello);
    }

    fn device(&self, client: usize) -> DeviceId {
        dp_noise::device_id(self.clients[client].key.public())
    }

    fn send(&mut self, client: usize, frame: &Frame<'_>) {
        let c = &mut self.clients[client];
        let mut plain = Vec::new();
        frame.encode_append(&mut plain).unwrap();
        let stream = c.stream.as_mut().expect("handshake done");
        let mut out = vec![0u8; StreamSession::sealed_len_max(plain.len())];
        let n = stream.seal_record(self.now, &plain, &mut out).unwrap();
        let (shard, conn) = (c.shard, c.conn);
        self.shards[shard].handle_received(self.now, conn, &out[..n]);
        self.pump();
    }

    fn send_envelope(&mut self, from: usize, to: usize, id: u8, body: &[u8]) -> MessageId {
        let message = MessageId([id; 16]);
        let recipient = Recipient::Device(self.device(to));
        self.send(
            from,
            &Frame::Send(SendFrame {
                message,
                recipient,
                body,
            }),
        );
        message
    }

    fn pump(&mut self) {
        for _round in 0..64 {
            let mut busy = false;
            for s in 0..self.shards.len() {
                while let Some(event) = self.shards[s].poll_event() {
                    busy = true;
                    self.handle_event(s, event);
                }
            }
            for c in 0..self.clients.len() {
                if self.clients[c].closed.is_some() || !self.clients[c].reading {
                    continue;
                }
                let (shard, conn) = (self.clients[c].shard, self.clients[c].conn);
                let bytes = self.shards[shard].poll_transmit(self.now, conn).to_vec();
                if bytes.is_empty() {
                    continue;
                }
                busy = true;
                self.shards[shard].handle_written(conn, bytes.len());
                self.client_receive(c, &bytes);
            }
            if !busy {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn handle_event(&mut self, s: usize, event: ShardEvent) {
        match event {
            ShardEvent::Close { conn, reason } => {
                // Like the IO layer: write what is still queued (the Error frame), then close.
                if let Some(c) = self
                    .clients
                    .iter()
                    .position(|c| c.shard == s && c.conn == conn)
                {
                    let bytes = self.shards[s].poll_transmit(self.now, conn).to_vec();
                    if self.clients[c].reading && !bytes.is_empty() {
                        self.client_receive(c, &bytes);
                    }
                    self.clients[c].closed = Some(reason);
                }
                self.shards[s].handle_closed(conn);
            }
            ShardEvent::HandOff { conn, to } => {
                let handoff = self.shards[s].take_handoff(conn).unwrap();
                let new = self.shards[usize::from(to.0)]
                    .adopt(self.now, *handoff)
                    .unwrap();
                let c = self
                    .clients
                    .iter_mut()
                    .find(|c| c.shard == s && c.conn == conn)
                    .unwrap();
                c.shard = usize::from(to.0);
                c.conn = new;
            }
            ShardEvent::ToShard { to, message } => {
                self.shards[usize::from(to.0)].handle_shard_message(self.now, message);
            }
            ShardEvent::ToControl(request) => match request {
                ControlRequest::Store(envelope) => {
                    let origin = envelope.origin;
                    let message = envelope.message;
                    self.stored.push(*envelope);
                    self.shards[usize::from(origin.shard.0)]
                        .handle_control(self.now, ControlEvent::Stored { origin, message });
                }
                ControlRequest::SessionOpened { device } => {
                    let home = usize::from(home_shard(device, SHARDS, KEY).0);
                    assert_eq!(home, s, "sessions open on their home shard");
                    for envelope in self.stored.iter().filter(|e| e.recipient == device) {
                        self.shards[s].handle_control(
                            self.now,
                            ControlEvent::Deliver(Box::new(envelope.clone())),
                        );
                    }
                }
                ControlRequest::Acknowledged { device, messages } => {
                    self.stored
                        .retain(|e| !(e.recipient == device && messages.contains(&e.message)));
                }
                ControlRequest::SessionClosed { .. } => {}
            },
        }
    }

    fn client_receive(&mut self, c: usize, bytes: &[u8]) {
        let now = self.now;
        let client = &mut self.clients[c];
        client.rx.extend_from_slice(bytes);
        if client.stream.is_none() {
            let len = usize::from(u16::from_be_bytes([client.rx[0], client.rx[1]]));
            let packet = client.rx[2..2 + len].to_vec();
            client.rx.drain(..2 + len);
            let mut finish = [0u8; 2048];
            let InitiatorEvent::Established {
                finish_len,
                session,
            } = client
                .initiator
                .handle_packet(now, &packet, &mut finish)
                .unwrap()
            else {
                panic!("cookie")
            };
            client.stream = Some(StreamSession::new(&session, now));
            if let Some(n) = finish_len {
                let mut bytes = (n as u16).to_be_bytes().to_vec();
                bytes.extend_from_slice(&finish[..n]);
                let (shard, conn) = (client.shard, client.conn);
                self.shards[shard].handle_received(now, conn, &bytes);
            }
            return;
        }
        let stream = client.stream.as_mut().unwrap();
        while let Some(record) = stream.open_record(&mut client.rx).unwrap() {
            let plaintext = client.rx[record.plaintext.clone()].to_vec();
            client.rx.drain(..record.consumed);
            let mut frames = client.assembler.push(&plaintext);
            while let Some(frame) = frames.next_frame() {
                client.got.push(match frame.unwrap() {
                    Frame::Welcome(w) => Got::Welcome(w.device),
                    Frame::Pong(p) => Got::Pong(p.nonce),
                    Frame::SendAck(a) => Got::SendAck(a.message, a.status),
                    Frame::Deliver(d) => Got::Deliver(d.message, d.sender, d.body.to_vec()),
                    Frame::Error(e) => Got::Error(e.code),
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
    }
}

fn xk() -> Suite {
    Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false)
}

#[test]
fn hello_welcome_and_ping() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    assert_eq!(w.clients[a].got, vec![Got::Welcome(w.device(a))]);
    w.send(a, &Frame::Ping(Ping { nonce: 77 }));
    assert_eq!(w.clients[a].got.last(), Some(&Got::Pong(77)));
}

#[test]
fn relay_on_one_shard_and_across_shards_both_ways() {
    for (home_a, home_b) in [(0, 0), (0, 1), (1, 0)] {
        let mut w = World::new();
        let a = w.connect(home_a, 0, xk());
        let b = w.connect(home_b, 1, Suite::new(Pattern::Ik, Cipher::AesGcm, true));
        let m = w.send_envelope(a, b, 1, b"hi b");
        assert_eq!(
            w.clients[a].got.last(),
            Some(&Got::SendAck(m, SendStatus::Delivered))
        );
        assert_eq!(
            w.clients[b].got.last(),
            Some(&Got::Deliver(m, w.device(a), b"hi b".to_vec()))
        );
        let m = w.send_envelope(b, a, 2, b"hi a");
        assert_eq!(
            w.clients[b].got.last(),
            Some(&Got::SendAck(m, SendStatus::Delivered))
        );
        assert_eq!(
            w.clients[a].got.last(),
            Some(&Got::Deliver(m, w.device(b), b"hi a".to_vec()))
        );
        assert!(w.stored.is_empty());
    }
}

#[test]
fn connection_on_the_wrong_shard_is_handed_home() {
    let mut w = World::new();
    let a = w.connect(1, 0, xk());
    assert_eq!(w.clients[a].shard, 1);
    assert!(w.shards[1].is_online(w.device(a)));
    assert_eq!(w.shards[0].conns_len(), 0);
    w.send(a, &Frame::Ping(Ping { nonce: 5 }));
    assert_eq!(w.clients[a].got.last(), Some(&Got::Pong(5)));
}

#[test]
fn offline_recipient_gets_the_backlog_on_return_and_ack_deletes_it() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    // b's key exists, but b is not connected: make one, note its id, and drop the client.
    let b = w.connect(1, 1, xk());
    let b_key = w.clients[b].key.clone();
    let (shard, conn) = (w.clients[b].shard, w.clients[b].conn);
    w.shards[shard].handle_closed(conn);
    w.clients[b].closed = Some(CloseReason::Peer);
    let m = w.send_envelope(a, b, 3, b"while away");
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::SendAck(m, SendStatus::Stored))
    );
    assert_eq!(w.stored.len(), 1);
    // b returns with the same key.
    let b2 = w.reconnect(b);
    assert_eq!(w.clients[b2].key.public(), b_key.public());
    let delivered: Vec<_> = w.clients[b2]
        .got
        .iter()
        .filter(|g| matches!(g, Got::Deliver(..)))
        .cloned()
        .collect();
    assert_eq!(
        delivered,
        vec![Got::Deliver(m, w.device(a), b"while away".to_vec())]
    );
    let ids = [m];
    w.send(
        b2,
        &Frame::DeliveryAck(DeliveryAck {
            messages: MessageIds::new(&ids),
        }),
    );
    assert!(w.stored.is_empty());
}

#[test]
fn stuck_recipient_is_cut_off_and_the_sender_keeps_going() {
    let mut w = World::new();
    for s in &mut w.shards {
        s.config.outbound_bytes_max = 64 * 1024;
    }
    let a = w.connect(0, 0, xk());
    let b = w.connect(0, 1, xk());
    w.clients[b].reading = false;
    let body = vec![7u8; 4096];
    let mut acks = 0;
    for i in 0..40u8 {
        let m = w.send_envelope(a, b, i, &body);
        match w.clients[a].got.last() {
            Some(Got::SendAck(id, SendStatus::Delivered | SendStatus::Stored)) if *id == m => {
                acks += 1
            }
            other => panic!("no ack for message {i}: {other:?}"),
        }
    }
    assert_eq!(acks, 40);
    assert_eq!(w.clients[b].closed, Some(CloseReason::SlowConsumer));
    assert!(!w.stored.is_empty(), "what b could not take was stored");
    assert!(w.shards[0].stats().slow_consumers >= 1);
}

#[test]
fn frames_before_hello_are_refused() {
    let mut w = World::new();
    let a = w.connect_without_hello(0);
    let message = MessageId([9; 16]);
    let recipient = Recipient::Device(w.device(a));
    w.send(
        a,
        &Frame::Send(SendFrame {
            message,
            recipient,
            body: b"x",
        }),
    );
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::Error(ErrorCode::UNEXPECTED_FRAME))
    );
    assert_eq!(
        w.clients[a].closed,
        Some(CloseReason::Protocol(ErrorCode::UNEXPECTED_FRAME))
    );
}

#[test]
fn garbage_handshake_closes_only_that_connection() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let bad = w.shards[0]
        .handle_connect(w.now, "192.0.2.10:1".parse().unwrap())
        .unwrap();
    w.shards[0].handle_received(
        w.now,
        bad,
        &[
            0, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
            23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
        ],
    );
    let mut closed = false;
    while let Some(event) = w.shards[0].poll_event() {
        if let ShardEvent::Close {
            conn,
            reason: CloseReason::Crypto,
        } = event
        {
            closed |= conn == bad;
        }
    }
    assert!(closed);
    w.send(a, &Frame::Ping(Ping { nonce: 1 }));
    assert_eq!(w.clients[a].got.last(), Some(&Got::Pong(1)));
}

#[test]
fn idle_connections_time_out() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let later = w.now.saturating_add(Duration::from_secs(91));
    assert!(w.shards[0].poll_timeout() <= later);
    w.now = later;
    w.shards[0].handle_timeout(later);
    w.pump();
    assert_eq!(w.clients[a].closed, Some(CloseReason::Idle));
    assert!(!w.shards[0].is_online(w.device(a)));
}

#[test]
fn home_shard_is_stable_keyed_and_spread() {
    let mut counts = [0u32; 4];
    let mut moved = 0;
    for i in 0..4000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        let id = DeviceId(
            dp_noise::device_id(&{
                let mut k = [0u8; 32];
                k[..16].copy_from_slice(&id);
                k
            })
            .0,
        );
        let shard = home_shard(id, 4, 1);
        assert_eq!(shard, home_shard(id, 4, 1));
        counts[usize::from(shard.0)] += 1;
        if home_shard(id, 4, 2) != shard {
            moved += 1;
        }
    }
    for count in counts {
        assert!((800..1200).contains(&count), "{counts:?}");
    }
    assert!(moved > 2000, "the key must change the mapping");
}
