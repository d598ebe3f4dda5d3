//! A test world: shards and in-memory clients on the real handshake, session and frame code,
//! pumped to quiescence, with a stand-in control that stores envelopes in memory.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use dp_core::SeededRng;
use dp_core::{DeviceId, Instant, MessageId};
use dp_noise::StaticKeypair;
use dp_noise::{Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, Suite};
use dp_proto::{
    DeliveryAck, Frame, FrameAssembler, Hello, MessageIds, Recipient, SendFrame, Versions,
};
use dp_proto::{ErrorCode, SendStatus};
use dp_shard::{
    CloseReason, ConnId, ControlEvent, ControlRequest, Envelope, Shard, ShardConfig, ShardEvent,
    ShardId, home_shard,
};
use std::collections::{BTreeMap, BTreeSet};

pub const SHARDS: u16 = 2;
pub const KEY: u64 = 0x5eed;
/// Stored envelopes control keeps in flight per device while draining.
pub const DRAIN_WINDOW: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Welcome(DeviceId),
    Pong(u64),
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    Error(ErrorCode),
}

pub struct Client {
    pub key: StaticKeypair,
    pub initiator: Initiator,
    pub stream: Option<StreamSession>,
    pub assembler: FrameAssembler,
    pub shard: usize,
    pub conn: ConnId,
    pub rx: Vec<u8>,
    pub got: Vec<Got>,
    pub closed: Option<CloseReason>,
    pub reading: bool,
    /// Acknowledge every Deliver at once (a well-behaved client).
    pub auto_ack: bool,
    /// Delivered ids not yet acknowledged.
    pub unacked: Vec<MessageId>,
}

pub struct World {
    pub now: Instant,
    pub shards: Vec<Shard<SeededRng>>,
    pub server: StaticKeypair,
    pub clients: Vec<Client>,
    pub stored: Vec<Envelope>,
    /// Per device: stored envelopes sent to its current session, not yet acknowledged.
    pub draining: BTreeMap<DeviceId, BTreeSet<MessageId>>,
    pub rng: SeededRng,
}

use dp_noise::StreamSession;

pub fn xk() -> Suite {
    Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false)
}

impl World {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A world whose shard configurations `adjust` changes.
    pub fn with(adjust: impl Fn(&mut ShardConfig)) -> Self {
        let mut rng = SeededRng::new(42);
        let server = StaticKeypair::generate(&mut rng);
        let now = Instant(1_000);
        let shards = (0..SHARDS)
            .map(|i| {
                let mut config = ShardConfig::new(ShardId(i), SHARDS, KEY).unwrap();
                adjust(&mut config);
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
            draining: BTreeMap::new(),
            rng,
        }
    }

    /// A fresh key whose home shard is `home`.
    pub fn key_homed_on(&mut self, home: u16) -> StaticKeypair {
        loop {
            let key = StaticKeypair::generate(&mut self.rng);
            if home_shard(dp_noise::device_id(key.public()), SHARDS, KEY) == ShardId(home) {
                return key;
            }
        }
    }

    /// A client whose key's home shard is `home`, connecting (by the kernel's choice) to
    /// shard `via`, that has completed the handshake and Hello.
    pub fn connect(&mut self, home: u16, via: usize, suite: Suite) -> usize {
        let key = self.key_homed_on(home);
        let index = self.handshake(key, via, suite);
        self.hello(index);
        index
    }

    /// Like `connect`, but without sending Hello.
    pub fn connect_without_hello(&mut self, home: u16) -> usize {
        let key = self.key_homed_on(home);
        self.handshake(key, usize::from(home), xk())
    }

    /// Connects again with the key of an earlier client, through shard 0.
    pub fn reconnect(&mut self, old: usize) -> usize {
        let index = self.handshake(self.clients[old].key.clone(), 0, xk());
        self.hello(index);
        index
    }

    pub fn handshake(&mut self, key: StaticKeypair, via: usize, suite: Suite) -> usize {
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
            auto_ack: true,
            unacked: Vec::new(),
        });
        self.pump();
        self.clients.len() - 1
    }

    pub fn hello(&mut self, index: usize) {
        let hello = Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: dp_proto::Capabilities::EMPTY,
            frame_len_max: 1 << 20,
        });
        self.send(index, &hello);
    }

    pub fn device(&self, client: usize) -> DeviceId {
        dp_noise::device_id(self.clients[client].key.public())
    }

    pub fn send(&mut self, client: usize, frame: &Frame<'_>) {
        self.send_raw(client, frame);
        self.pump();
    }

    /// Seals `frame` from `client` and hands it to its shard, without pumping.
    pub fn send_raw(&mut self, client: usize, frame: &Frame<'_>) {
        let c = &mut self.clients[client];
        let mut plain = Vec::new();
        frame.encode_append(&mut plain).unwrap();
        let stream = c.stream.as_mut().expect("handshake done");
        let mut out = vec![0u8; StreamSession::sealed_len_max(plain.len())];
        let n = stream.seal_record(self.now, &plain, &mut out).unwrap();
        let (shard, conn) = (c.shard, c.conn);
        self.shards[shard].handle_received(self.now, conn, &out[..n]);
    }

    pub fn send_envelope(&mut self, from: usize, to: usize, id: u8, body: &[u8]) -> MessageId {
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

    pub fn pump(&mut self) {
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
                // Like the client library: acknowledge every envelope received.
                let acks = core::mem::take(&mut self.clients[c].unacked);
                if self.clients[c].auto_ack && !acks.is_empty() {
                    let ids = MessageIds::new(&acks);
                    self.send_raw(c, &Frame::DeliveryAck(DeliveryAck { messages: ids }));
                }
            }
            if !busy {
                return;
            }
        }
        panic!("no quiescence");
    }

    pub fn handle_event(&mut self, s: usize, event: ShardEvent) {
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
                    self.draining.remove(&device);
                    self.drain(device);
                }
                ControlRequest::Acknowledged { device, messages } => {
                    self.stored
                        .retain(|e| !(e.recipient == device && messages.contains(&e.message)));
                    if let Some(window) = self.draining.get_mut(&device) {
                        window.retain(|m| !messages.contains(m));
                    }
                    self.drain(device);
                }
                ControlRequest::SessionClosed { device } => {
                    self.draining.remove(&device);
                }
            },
        }
    }

    /// Control's paced drain: keeps up to `DRAIN_WINDOW` stored envelopes sent to the device's
    /// session and not yet acknowledged.
    pub fn drain(&mut self, device: DeviceId) {
        let s = usize::from(home_shard(device, SHARDS, KEY).0);
        if !self.shards[s].is_online(device) {
            return;
        }
        let window = self.draining.entry(device).or_default();
        let next: Vec<Envelope> = self
            .stored
            .iter()
            .filter(|e| e.recipient == device && !window.contains(&e.message))
            .take(DRAIN_WINDOW.saturating_sub(window.len()))
            .cloned()
            .collect();
        for envelope in next {
            window.insert(envelope.message);
            self.shards[s].handle_control(self.now, ControlEvent::Deliver(Box::new(envelope)));
        }
    }

    /// Control's retry timer: resend each online device's drain window.
    pub fn retry_stored(&mut self) {
        self.draining.clear();
        let devices: BTreeSet<DeviceId> = self.stored.iter().map(|e| e.recipient).collect();
        for device in devices {
            self.drain(device);
        }
        self.pump();
    }

    pub fn client_receive(&mut self, c: usize, bytes: &[u8]) {
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
                    Frame::Deliver(d) => {
                        client.unacked.push(d.message);
                        Got::Deliver(d.message, d.sender, d.body.to_vec())
                    }
                    Frame::Error(e) => Got::Error(e.code),
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
    }
}
