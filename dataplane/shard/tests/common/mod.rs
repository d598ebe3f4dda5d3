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
use dp_core::{ConversationId, DeviceId, Instant, MessageId};
use dp_noise::StaticKeypair;
use dp_noise::{Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, Suite};
use dp_proto::{
    DeliveryAck, Frame, FrameAssembler, Hello, MessageIds, Recipient, SendFrame, Versions,
};
use dp_proto::{ErrorCode, SendStatus};
use dp_shard::{
    CloseReason, ConnId, ControlEvent, ControlRequest, ConversationAnswer, ConversationInfo,
    Envelope, Member, Shard, ShardConfig, ShardEvent, ShardId, ShardMessage, conversation_home,
    home_shard,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const SHARDS: u16 = 2;
pub const KEY: u64 = 0x5eed;
/// Stored envelopes control keeps in flight per device while draining.
pub const DRAIN_WINDOW: usize = 4;
/// Sequence numbers control hands out per lookup (small, so blocks run out in tests).
pub const SEQ_BLOCK: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Welcome(DeviceId),
    Pong(u64),
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    Error(ErrorCode),
    /// A SendAck with a sequence number: message, status, seq.
    SeqAck(MessageId, SendStatus, u64),
    /// A Deliver in a conversation: message, sender, conversation, seq, body.
    ConvDeliver(MessageId, DeviceId, u64, u64, Vec<u8>),
    /// An Error about a Send: code, reference (the conversation).
    SendError(ErrorCode, u64),
    /// TypingFrom: device, conversation, typing.
    Typing(DeviceId, u64, bool),
    /// ReceiptFrom: device, conversation, messages.
    Receipt(DeviceId, u64, Vec<MessageId>),
    /// Presence: device, state, last seen (ms).
    Presence(DeviceId, dp_proto::PresenceState, u64),
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

/// A link between two parties, like the IO layer's: FIFO, with credits for envelopes.
pub struct Ring<T> {
    pub queue: VecDeque<T>,
    pub credits: u32,
}

impl<T> Ring<T> {
    fn new(credits: u32) -> Self {
        Self {
            queue: VecDeque::new(),
            credits,
        }
    }
}

/// Control's view of one device.
#[derive(Default)]
pub struct ControlDevice {
    /// Its live session (from `SessionOpened`), if any.
    pub session: Option<u64>,
    /// `Store`s taken since that `SessionOpened`.
    pub stores: u64,
    /// Stored envelopes sent to its current session, not yet acknowledged.
    pub draining: BTreeSet<MessageId>,
}

pub struct World {
    pub now: Instant,
    pub shards: Vec<Shard<SeededRng>>,
    pub server: StaticKeypair,
    pub clients: Vec<Client>,
    pub stored: Vec<Envelope>,
    pub devices: BTreeMap<DeviceId, ControlDevice>,
    /// `shard_rings[from][to]`.
    pub shard_rings: Vec<Vec<Ring<ShardMessage>>>,
    pub to_control: Vec<Ring<ControlRequest>>,
    pub from_control: Vec<Ring<ControlEvent>>,
    /// Credits each ring grants for envelopes.
    pub credits: u32,
    /// When set, `pump` moves only some ring messages per round and may stop before the rings
    /// are empty, both chosen by `rng`, so ring deliveries interleave with everything else.
    pub chaos: bool,
    pub rng: SeededRng,
    /// The stand-in control's conversations: member devices (all may send unless listed in
    /// `muted`).
    pub conversations: BTreeMap<u64, Vec<DeviceId>>,
    pub muted: BTreeSet<DeviceId>,
    /// The next sequence number control hands out per conversation.
    pub seq_next: BTreeMap<u64, u64>,
    /// Lookups control answered.
    pub lookups: u64,
    /// Sequence numbers control hands out per lookup.
    pub seq_block: u64,
    /// Control answers lookups `Unavailable` (its store is down).
    pub lookups_fail: bool,
    /// The stand-in control's presence audiences per device.
    pub audiences: BTreeMap<DeviceId, Vec<DeviceId>>,
    /// Audience lookups control answered.
    pub audience_lookups: u64,
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
        let credits = 4096;
        let n = usize::from(SHARDS);
        Self {
            now,
            shards,
            server,
            clients: Vec::new(),
            stored: Vec::new(),
            devices: BTreeMap::new(),
            shard_rings: (0..n)
                .map(|_| (0..n).map(|_| Ring::new(credits)).collect())
                .collect(),
            to_control: (0..n).map(|_| Ring::new(credits)).collect(),
            from_control: (0..n).map(|_| Ring::new(credits)).collect(),
            credits,
            chaos: false,
            rng,
            conversations: BTreeMap::new(),
            muted: BTreeSet::new(),
            seq_next: BTreeMap::new(),
            lookups: 0,
            seq_block: SEQ_BLOCK,
            lookups_fail: false,
            audiences: BTreeMap::new(),
            audience_lookups: 0,
        }
    }

    /// Sets the envelope credits of every ring.
    pub fn set_credits(&mut self, credits: u32) {
        self.credits = credits;
        for ring in self.shard_rings.iter_mut().flatten() {
            ring.credits = credits;
        }
        for ring in &mut self.to_control {
            ring.credits = credits;
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
        if self.chaos {
            // TCP segments at arbitrary points: feed the record in two reads.
            let cut = (self.rng.next_u64() % (n as u64 + 1)) as usize;
            self.shards[shard].handle_received(self.now, conn, &out[..cut]);
            self.shards[shard].handle_received(self.now, conn, &out[cut..n]);
        } else {
            self.shards[shard].handle_received(self.now, conn, &out[..n]);
        }
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

    /// Defines (or redefines) conversation `id` with these clients' devices as members, and
    /// tells its home shard that it changed.
    pub fn set_conversation(&mut self, id: u64, members: &[usize]) {
        let devices = members.iter().map(|&c| self.device(c)).collect();
        self.conversations.insert(id, devices);
        let home = conversation_home(ConversationId(id), SHARDS, KEY).0;
        self.control_to_shard(
            home,
            ControlEvent::ConversationChanged {
                conversation: ConversationId(id),
            },
        );
        self.pump();
    }

    /// Sets (or replaces) client `c`'s presence audience at control, and tells every shard
    /// it changed.
    pub fn set_audience(&mut self, c: usize, audience: &[usize]) {
        let devices = audience.iter().map(|&a| self.device(a)).collect();
        let device = self.device(c);
        self.audiences.insert(device, devices);
        for shard in 0..SHARDS {
            self.control_to_shard(
                shard,
                ControlEvent::AudienceChanged {
                    devices: vec![device],
                },
            );
        }
        self.pump();
    }

    /// Client `c`'s `Presence` frames received.
    pub fn presences(&self, c: usize) -> Vec<(DeviceId, dp_proto::PresenceState)> {
        self.clients[c]
            .got
            .iter()
            .filter_map(|g| match g {
                Got::Presence(d, state, _) => Some((*d, *state)),
                _ => None,
            })
            .collect()
    }

    pub fn send_to_conversation(
        &mut self,
        from: usize,
        conversation: u64,
        id: u8,
        body: &[u8],
    ) -> MessageId {
        let message = MessageId([id; 16]);
        self.send(
            from,
            &Frame::Send(SendFrame {
                message,
                recipient: Recipient::Conversation(ConversationId(conversation)),
                body,
            }),
        );
        message
    }

    pub fn pump(&mut self) {
        // In chaos mode a pump may stop early, so the next step runs with messages still in
        // the rings.
        let rounds = if self.chaos {
            1 + self.rng.next_u64() % 8
        } else {
            256
        };
        for _round in 0..rounds {
            let mut busy = self.drain_events();
            busy |= self.move_rings();
            busy |= self.drain_events();
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
            if !busy && self.rings_empty() {
                return;
            }
        }
        assert!(self.chaos, "no quiescence");
    }

    fn drain_events(&mut self) -> bool {
        let mut busy = false;
        for s in 0..self.shards.len() {
            while let Some(event) = self.shards[s].poll_event() {
                busy = true;
                self.handle_event(s, event);
            }
        }
        busy
    }

    pub fn rings_empty(&self) -> bool {
        self.shard_rings
            .iter()
            .flatten()
            .all(|ring| ring.queue.is_empty())
            && self.to_control.iter().all(|ring| ring.queue.is_empty())
            && self.from_control.iter().all(|ring| ring.queue.is_empty())
    }

    /// Takes the next message of each ring (all of them unless in chaos mode, where each ring
    /// moves with probability 1/2) and hands it to its receiver; returns whether any moved.
    fn move_rings(&mut self) -> bool {
        let n = self.shards.len();
        let mut moved = false;
        for from in 0..n {
            for to in 0..n {
                if !self.ring_turn() {
                    continue;
                }
                if let Some(message) = self.shard_rings[from][to].queue.pop_front() {
                    moved = true;
                    if matches!(message, ShardMessage::Envelope(_)) {
                        self.shard_rings[from][to].credits += 1;
                    }
                    self.shards[to].handle_shard_message(self.now, message);
                }
            }
        }
        for s in 0..n {
            if self.ring_turn()
                && let Some(request) = self.to_control[s].queue.pop_front()
            {
                moved = true;
                if matches!(request, ControlRequest::Store(_)) {
                    self.to_control[s].credits += 1;
                }
                self.control(s, request);
            }
            if self.ring_turn()
                && let Some(event) = self.from_control[s].queue.pop_front()
            {
                moved = true;
                self.shards[s].handle_control(self.now, event);
            }
        }
        moved
    }

    fn ring_turn(&mut self) -> bool {
        !self.chaos || self.rng.next_u64().is_multiple_of(2)
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
                let ring = &mut self.shard_rings[s][usize::from(to.0)];
                match message {
                    ShardMessage::Envelope(envelope) if ring.credits == 0 => {
                        self.shards[s].handle_refused(envelope);
                    }
                    message => {
                        if matches!(message, ShardMessage::Envelope(_)) {
                            ring.credits -= 1;
                        }
                        ring.queue.push_back(message);
                    }
                }
            }
            ShardEvent::ToControl(request) => {
                let ring = &mut self.to_control[s];
                match request {
                    ControlRequest::Store(envelope) if ring.credits == 0 => {
                        self.shards[s].handle_refused(envelope);
                    }
                    request => {
                        if matches!(request, ControlRequest::Store(_)) {
                            ring.credits -= 1;
                        }
                        ring.queue.push_back(request);
                    }
                }
            }
        }
    }

    /// The stand-in control: stores in memory, drains paced, reports `Drained`.
    pub fn control(&mut self, s: usize, request: ControlRequest) {
        match request {
            ControlRequest::Store(envelope) => {
                let origin = envelope.origin;
                let message = envelope.message;
                let recipient = envelope.recipient;
                self.stored.push(*envelope);
                self.devices.entry(recipient).or_default().stores += 1;
                self.control_to_shard(origin.shard.0, ControlEvent::Stored { origin, message });
                self.drain(recipient);
            }
            ControlRequest::SessionOpened { device, session } => {
                let home = usize::from(home_shard(device, SHARDS, KEY).0);
                assert_eq!(home, s, "sessions open on their home shard");
                let entry = self.devices.entry(device).or_default();
                entry.session = Some(session);
                entry.stores = 0;
                entry.draining.clear();
                self.drain(device);
            }
            ControlRequest::Acknowledged { device, messages } => {
                self.stored
                    .retain(|e| !(e.recipient == device && messages.contains(&e.message)));
                if let Some(entry) = self.devices.get_mut(&device) {
                    entry.draining.retain(|m| !messages.contains(m));
                }
                self.drain(device);
            }
            ControlRequest::Operation(operation) => {
                // Echoes the operation's arguments as its result.
                let response = ControlEvent::Response {
                    origin: operation.origin,
                    request_id: operation.request_id,
                    status: ErrorCode::OK,
                    body: operation.body,
                };
                self.control_to_shard(operation.origin.shard.0, response);
            }
            ControlRequest::SessionClosed { device } => {
                let entry = self.devices.entry(device).or_default();
                entry.session = None;
                entry.draining.clear();
            }
            ControlRequest::LookupAudience { device } => {
                self.audience_lookups += 1;
                let answer = match self.audiences.get(&device) {
                    _ if self.lookups_fail => dp_shard::AudienceAnswer::Unavailable,
                    Some(devices) => dp_shard::AudienceAnswer::Found(devices.clone()),
                    None => dp_shard::AudienceAnswer::NotFound,
                };
                let shard = u16::try_from(s).unwrap();
                self.control_to_shard(shard, ControlEvent::Audience { device, answer });
            }
            ControlRequest::LookupConversation { conversation } => {
                self.lookups += 1;
                let answer = match self.conversations.get(&conversation.0) {
                    _ if self.lookups_fail => ConversationAnswer::Unavailable,
                    Some(devices) => {
                        let next = self.seq_next.entry(conversation.0).or_insert(1);
                        let seq = *next..*next + self.seq_block;
                        *next += self.seq_block;
                        let members = devices
                            .iter()
                            .map(|&device| Member {
                                device,
                                may_send: !self.muted.contains(&device),
                            })
                            .collect();
                        ConversationAnswer::Found(Box::new(ConversationInfo { members, seq }))
                    }
                    None => ConversationAnswer::NotFound,
                };
                let shard = u16::try_from(s).unwrap();
                self.control_to_shard(
                    shard,
                    ControlEvent::Conversation {
                        conversation,
                        answer,
                    },
                );
            }
        }
    }

    fn control_to_shard(&mut self, shard: u16, event: ControlEvent) {
        self.from_control[usize::from(shard)].queue.push_back(event);
    }

    /// Control's paced drain: keeps up to `DRAIN_WINDOW` stored envelopes sent to the device's
    /// session and not yet acknowledged.
    pub fn drain(&mut self, device: DeviceId) {
        let home = home_shard(device, SHARDS, KEY).0;
        let entry = self.devices.entry(device).or_default();
        let Some(session) = entry.session else {
            return;
        };
        let window = &mut entry.draining;
        let mut pending = self
            .stored
            .iter()
            .filter(|e| e.recipient == device)
            .peekable();
        if pending.peek().is_none() {
            let stores = entry.stores;
            self.control_to_shard(
                home,
                ControlEvent::Drained {
                    device,
                    session,
                    stores,
                },
            );
            return;
        }
        let next: Vec<Envelope> = pending
            .filter(|e| !window.contains(&e.message))
            .take(DRAIN_WINDOW.saturating_sub(window.len()))
            .cloned()
            .collect();
        window.extend(next.iter().map(|e| e.message));
        for envelope in next {
            self.control_to_shard(
                home,
                ControlEvent::Deliver {
                    envelope: Box::new(envelope),
                    session,
                },
            );
        }
    }

    /// Control's retry timer: resend each online device's drain window.
    pub fn retry_stored(&mut self) {
        let devices: Vec<DeviceId> = self.devices.keys().copied().collect();
        for device in devices {
            if let Some(entry) = self.devices.get_mut(&device) {
                entry.draining.clear();
            }
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
                    Frame::SendAck(a) if a.seq != 0 => Got::SeqAck(a.message, a.status, a.seq),
                    Frame::SendAck(a) => Got::SendAck(a.message, a.status),
                    Frame::Deliver(d) if d.conversation.0 != 0 => {
                        client.unacked.push(d.message);
                        Got::ConvDeliver(
                            d.message,
                            d.sender,
                            d.conversation.0,
                            d.seq,
                            d.body.to_vec(),
                        )
                    }
                    Frame::Deliver(d) => {
                        client.unacked.push(d.message);
                        Got::Deliver(d.message, d.sender, d.body.to_vec())
                    }
                    Frame::Error(e) if e.frame_type == 0x10 => Got::SendError(e.code, e.reference),
                    Frame::Error(e) => Got::Error(e.code),
                    Frame::TypingFrom(t) => Got::Typing(
                        t.device,
                        t.conversation.0,
                        t.state == dp_proto::TypingState::Typing,
                    ),
                    Frame::ReceiptFrom(r) => {
                        Got::Receipt(r.from, r.conversation.0, r.messages.iter().collect())
                    }
                    Frame::Presence(p) => Got::Presence(p.device, p.state, p.last_seen_ms),
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
    }
}
