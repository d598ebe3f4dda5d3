//! Goal: CCP-2 runs unchanged over the QUIC carrier: Noise XK handshakes and stream records
//! between `dp_noise::Initiator`s and real `dp_shard::Shard`s, `Welcome`, and an envelope
//! relayed between two QUIC clients and acknowledged as `Delivered`. Method: the in-memory
//! network of `common`, with the server's QUIC stream bridged to shard connections exactly as
//! the IO layer bridges a TCP socket (`dataplane/io/src/shard.rs`): `StreamOpened` →
//! `handle_connect`, stream bytes → `handle_received`, `poll_transmit` → `write` →
//! `handle_written`, `Close` → `close`. Two shards: a device homed on the shard that did not
//! accept its QUIC connection is handed over while its QUIC state stays put, and its stream
//! bytes are relayed to the home shard (the proxy approach of design note 0008).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Net;
use dp_core::{DeviceId, Instant, MessageId, SeededRng};
use dp_noise::{
    Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, StaticKeypair, StreamSession,
    Suite,
};
use dp_proto::{
    DeliveryAck, Frame, FrameAssembler, Hello, MessageIds, Recipient, SendFrame, SendStatus,
    Versions,
};
use dp_quic::{CloseCode, CloseReason as QuicCloseReason, QuicConfig, QuicConnId, QuicEvent};
use dp_shard::{
    CloseReason, ConnId, ControlEvent, ControlRequest, Shard, ShardConfig, ShardEvent, ShardId,
    home_shard,
};
use std::collections::BTreeMap;

const SHARDS: u16 = 2;
const KEY: u64 = 0x5eed;

/// The code the IO layer closes a QUIC connection with, for each reason a shard gives.
fn close_code(reason: CloseReason) -> CloseCode {
    match reason {
        CloseReason::Peer => CloseCode::NO_ERROR,
        CloseReason::Crypto => CloseCode::CRYPTO,
        CloseReason::Protocol(_) => CloseCode::PROTOCOL,
        CloseReason::Idle | CloseReason::HandshakeTimeout => CloseCode::TIMEOUT,
        CloseReason::SlowConsumer => CloseCode::SLOW_CONSUMER,
        CloseReason::ShuttingDown => CloseCode::SHUTTING_DOWN,
        _ => CloseCode::INTERNAL,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Welcome(DeviceId),
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    Other(dp_proto::FrameType),
}

struct Device {
    client: usize,
    conn: QuicConnId,
    key: StaticKeypair,
    initiator: Initiator,
    stream: Option<StreamSession>,
    rx: Vec<u8>,
    assembler: FrameAssembler,
    got: Vec<Got>,
}

/// The server: QUIC on one UDP socket, two shards behind it.
struct World {
    net: Net,
    shards: Vec<Shard<SeededRng>>,
    server_key: StaticKeypair,
    /// QUIC connection → (shard, shard connection), and back.
    routes: BTreeMap<QuicConnId, (usize, ConnId)>,
    quic_of: BTreeMap<(usize, ConnId), QuicConnId>,
    events_seen: usize,
    devices: Vec<Device>,
    rng: SeededRng,
    stored: usize,
}

impl World {
    fn new() -> Self {
        let mut rng = SeededRng::new(11);
        let server_key = StaticKeypair::generate(&mut rng);
        let mut net = Net::new(QuicConfig::default());
        net.server.auto_read = false;
        let shards = (0..SHARDS)
            .map(|i| {
                let config = ShardConfig::new(ShardId(i), SHARDS, KEY).unwrap();
                Shard::new(
                    net.now,
                    config,
                    server_key.clone(),
                    SeededRng::new(u64::from(i) + 100),
                )
            })
            .collect();
        Self {
            net,
            shards,
            server_key,
            routes: BTreeMap::new(),
            quic_of: BTreeMap::new(),
            events_seen: 0,
            devices: Vec::new(),
            rng,
            stored: 0,
        }
    }

    fn key_homed_on(&mut self, home: u16) -> StaticKeypair {
        loop {
            let key = StaticKeypair::generate(&mut self.rng);
            if home_shard(dp_noise::device_id(key.public()), SHARDS, KEY) == ShardId(home) {
                return key;
            }
        }
    }

    /// A device homed on `home` connects over QUIC and runs XK to Welcome.
    fn connect(&mut self, home: u16) -> usize {
        let key = self.key_homed_on(home);
        let client = self.net.add_client();
        let conn = self.net.connect(client);
        self.net.run();
        assert_eq!(self.net.clients[client].opened(), vec![conn]);
        let config = InitiatorConfig {
            suite: Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false),
            local: key.clone(),
            remote_static: *self.server_key.public(),
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(self.net.now, config);
        let mut packet = [0u8; 2048];
        let len = initiator
            .write_initiation(self.net.now, &mut self.rng, &mut packet)
            .unwrap();
        let mut bytes = (len as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(&packet[..len]);
        self.net.clients[client].send(conn, &bytes);
        self.devices.push(Device {
            client,
            conn,
            key,
            initiator,
            stream: None,
            rx: Vec::new(),
            assembler: FrameAssembler::new(dp_core::limits::FRAME_LEN_MAX),
            got: Vec::new(),
        });
        let index = self.devices.len() - 1;
        self.settle();
        assert!(self.devices[index].stream.is_some(), "handshake incomplete");
        let hello = Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: dp_proto::Capabilities::EMPTY,
            frame_len_max: 1 << 20,
        });
        self.send(index, &hello);
        index
    }

    fn device_id(&self, d: usize) -> DeviceId {
        dp_noise::device_id(self.devices[d].key.public())
    }

    fn send(&mut self, d: usize, frame: &Frame<'_>) {
        let mut plain = Vec::new();
        frame.encode_append(&mut plain).unwrap();
        let device = &mut self.devices[d];
        let stream = device.stream.as_mut().unwrap();
        let mut out = vec![0u8; StreamSession::sealed_len_max(plain.len())];
        let n = stream.seal_record(self.net.now, &plain, &mut out).unwrap();
        let (client, conn) = (device.client, device.conn);
        self.net.clients[client].send(conn, &out[..n]);
        self.settle();
    }

    /// Runs network, shards and devices until none has anything left to do.
    fn settle(&mut self) {
        for _ in 0..1000 {
            self.net.run();
            let busy = self.serve() | self.devices_receive();
            if !busy {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Writes what shard `s` has for `id` to its QUIC stream, as far as flow control allows.
    fn flush(&mut self, s: usize, id: ConnId) {
        let Some(&quic) = self.quic_of.get(&(s, id)) else {
            return;
        };
        let now = self.net.now;
        loop {
            let bytes = self.shards[s].poll_transmit(now, id);
            if bytes.is_empty() {
                return;
            }
            match self.net.server.carrier.write(quic, bytes) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.shards[s].handle_written(id, n),
            }
        }
    }

    fn forget(&mut self, s: usize, id: ConnId) -> Option<QuicConnId> {
        let quic = self.quic_of.remove(&(s, id))?;
        self.routes.remove(&quic);
        Some(quic)
    }

    /// The IO layer's part: QUIC events into the shards, shard output into QUIC.
    fn serve(&mut self) -> bool {
        let now = self.net.now;
        let events = self.net.server.events[self.events_seen..].to_vec();
        self.events_seen = self.net.server.events.len();
        let mut busy = !events.is_empty();
        for event in events {
            match event {
                QuicEvent::StreamOpened { conn, peer } => {
                    // The accepting shard (here always 0) runs the handshake.
                    match self.shards[0].handle_connect(now, peer) {
                        Some(id) => {
                            self.routes.insert(conn, (0, id));
                            self.quic_of.insert((0, id), conn);
                        }
                        None => self.net.server.carrier.close(now, conn, CloseCode::REFUSED),
                    }
                }
                QuicEvent::Readable(conn) => {
                    let mut buf = [0u8; 4096];
                    while let Some(&(s, id)) = self.routes.get(&conn) {
                        match self.net.server.carrier.read(conn, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => self.shards[s].handle_received(now, id, &buf[..n]),
                            Err(_) => {
                                self.forget(s, id);
                                self.shards[s].handle_closed(id);
                                self.net
                                    .server
                                    .carrier
                                    .close(now, conn, CloseCode::NO_ERROR);
                                break;
                            }
                        }
                    }
                }
                QuicEvent::Writable(conn) => {
                    if let Some(&(s, id)) = self.routes.get(&conn) {
                        self.flush(s, id);
                    }
                }
                QuicEvent::Closed { conn, .. } => {
                    if let Some((s, id)) = self.routes.remove(&conn) {
                        self.quic_of.remove(&(s, id));
                        self.shards[s].handle_closed(id);
                    }
                }
            }
        }
        for s in 0..self.shards.len() {
            while let Some(event) = self.shards[s].poll_event() {
                busy = true;
                self.shard_event(s, event);
            }
            while let Some(id) = self.shards[s].poll_dirty() {
                busy = true;
                self.flush(s, id);
            }
        }
        busy
    }

    fn shard_event(&mut self, s: usize, event: ShardEvent) {
        let now = self.net.now;
        match event {
            ShardEvent::Close { conn, reason } => {
                self.flush(s, conn);
                if let Some(quic) = self.forget(s, conn) {
                    self.net.server.carrier.close(now, quic, close_code(reason));
                }
                self.shards[s].handle_closed(conn);
            }
            ShardEvent::HandOff { conn, to } => {
                // The handshake reply goes out first; then the session moves to its home
                // shard, and the QUIC stream (which cannot move) is relayed to it.
                self.flush(s, conn);
                let quic = self.forget(s, conn).unwrap();
                let handoff = self.shards[s].take_handoff(conn).unwrap();
                let to = usize::from(to.0);
                let id = self.shards[to].adopt(now, *handoff).unwrap();
                self.routes.insert(quic, (to, id));
                self.quic_of.insert((to, id), quic);
            }
            ShardEvent::ToShard { to, message } => {
                self.shards[usize::from(to.0)].handle_shard_message(now, message);
            }
            ShardEvent::ToControl(ControlRequest::Store(envelope)) => {
                self.stored += 1;
                let (origin, message) = (envelope.origin, envelope.message);
                self.shards[usize::from(origin.shard.0)]
                    .handle_control(now, ControlEvent::Stored { origin, message });
            }
            ShardEvent::ToControl(ControlRequest::SessionOpened { device, session }) => {
                // Nothing was stored for it before: live delivery may start.
                let drained = ControlEvent::Drained {
                    device,
                    session,
                    stores: 0,
                };
                self.shards[s].handle_control(now, drained);
            }
            ShardEvent::ToControl(_) => {}
        }
    }

    /// The clients' part: Noise and frames on bytes read from their QUIC streams.
    fn devices_receive(&mut self) -> bool {
        let mut busy = false;
        for d in 0..self.devices.len() {
            let (client, conn) = (self.devices[d].client, self.devices[d].conn);
            let Some(bytes) = self.net.clients[client].rx.get_mut(&conn) else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            busy = true;
            let bytes = core::mem::take(bytes);
            self.devices[d].rx.extend_from_slice(&bytes);
            self.device_receive(d);
        }
        busy
    }

    fn device_receive(&mut self, d: usize) {
        let now: Instant = self.net.now;
        let device = &mut self.devices[d];
        if device.stream.is_none() {
            if device.rx.len() < 2 {
                return;
            }
            let len = usize::from(u16::from_be_bytes([device.rx[0], device.rx[1]]));
            if device.rx.len() < 2 + len {
                return;
            }
            let packet = device.rx[2..2 + len].to_vec();
            device.rx.drain(..2 + len);
            let mut finish = [0u8; 2048];
            let InitiatorEvent::Established {
                finish_len,
                session,
            } = device
                .initiator
                .handle_packet(now, &packet, &mut finish)
                .unwrap()
            else {
                panic!("cookie")
            };
            device.stream = Some(StreamSession::new(&session, now));
            let finish_len = finish_len.expect("XK has a Finish");
            let mut bytes = (finish_len as u16).to_be_bytes().to_vec();
            bytes.extend_from_slice(&finish[..finish_len]);
            let (client, conn) = (device.client, device.conn);
            self.net.clients[client].send(conn, &bytes);
            if !self.devices[d].rx.is_empty() {
                self.device_receive(d);
            }
            return;
        }
        let stream = device.stream.as_mut().unwrap();
        while let Some(record) = stream.open_record(&mut device.rx).unwrap() {
            let plaintext = device.rx[record.plaintext.clone()].to_vec();
            device.rx.drain(..record.consumed);
            let mut frames = device.assembler.push(&plaintext);
            while let Some(frame) = frames.next_frame() {
                device.got.push(match frame.unwrap() {
                    Frame::Welcome(w) => Got::Welcome(w.device),
                    Frame::SendAck(a) => Got::SendAck(a.message, a.status),
                    Frame::Deliver(m) => Got::Deliver(m.message, m.sender, m.body.to_vec()),
                    other => Got::Other(other.frame_type()),
                });
            }
        }
    }
}

#[test]
fn noise_handshake_welcome_and_a_relayed_envelope_over_quic() {
    let mut w = World::new();
    // a is homed on the accepting shard; b on the other one, so b's session is handed over
    // while its QUIC connection stays where it was accepted.
    let a = w.connect(0);
    let b = w.connect(1);
    assert_eq!(w.devices[a].got, vec![Got::Welcome(w.device_id(a))]);
    assert_eq!(w.devices[b].got, vec![Got::Welcome(w.device_id(b))]);
    assert!(w.shards[0].is_online(w.device_id(a)));
    assert!(w.shards[1].is_online(w.device_id(b)));
    assert_eq!(w.shards[0].stats().handshakes, 2);

    for (from, to, id, body) in [(a, b, 1u8, &b"over quic"[..]), (b, a, 2, b"and back")] {
        let message = MessageId([id; 16]);
        let recipient = Recipient::Device(w.device_id(to));
        w.send(
            from,
            &Frame::Send(SendFrame {
                message,
                recipient,
                body,
            }),
        );
        assert_eq!(
            w.devices[to].got.last(),
            Some(&Got::Deliver(message, w.device_id(from), body.to_vec()))
        );
        let ids = [message];
        w.send(
            to,
            &Frame::DeliveryAck(DeliveryAck {
                messages: MessageIds::new(&ids),
            }),
        );
        assert_eq!(
            w.devices[from].got.last(),
            Some(&Got::SendAck(message, SendStatus::Delivered))
        );
    }
    assert_eq!(w.stored, 0, "both were online: nothing went to storage");
    assert_eq!(w.net.server.carrier.conns_len(), 2);
}

#[test]
fn a_forged_record_closes_the_quic_connection_with_crypto() {
    let mut w = World::new();
    let a = w.connect(0);
    let (client, conn) = (w.devices[a].client, w.devices[a].conn);
    // A record whose tag cannot verify: the shard closes; the IO layer closes QUIC with CRYPTO.
    let mut forged = 32u16.to_be_bytes().to_vec();
    forged.extend_from_slice(&[0xab; 32]);
    w.net.clients[client].send(conn, &forged);
    w.settle();
    w.net.run_for(core::time::Duration::from_secs(5));
    assert_eq!(
        w.net.clients[client].closed(conn),
        Some(QuicCloseReason::Application(u64::from(CloseCode::CRYPTO.0)))
    );
    assert!(!w.shards[0].is_online(w.device_id(a)));
    assert_eq!(w.shards[0].conns_len(), 0);
}
