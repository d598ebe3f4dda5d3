//! Deterministic simulation: devices on two shards connect, send to each other, stall, lose
//! their connections and come back, while ring messages between shards and control interleave
//! in an order drawn from the seed, links run out of credit, TCP reads split records at random
//! points, and time jumps. Clients behave like the client library: they resend every envelope
//! not yet acknowledged (after `SendAck(Retry)` and after a reconnect) with the same id, and
//! deduplicate deliveries by id.
//!
//! Invariants, checked after every step:
//! - a delivered envelope names its true sender and reaches only its recipient (identity comes
//!   from the handshake only);
//! - a sender gets at most one acknowledgement (`Delivered` or `Stored`) per envelope;
//! - order per recipient: if envelope A was acknowledged before envelope B from the same sender
//!   to the same recipient was first sent, the recipient's application sees A before B;
//! - every ring holds no more envelopes than its credits allow;
//! - a conversation message (every device is a member of one conversation) reaches only the
//!   other members, under its true sender, and each member's application sees the
//!   conversation's messages in increasing sequence numbers (docs/design/0013).
//!
//! And at the end, once every device is back and everything drains: every acknowledged
//! envelope reached its recipient's application exactly once (a conversation message: every
//! other member's), and storage is empty.
//!
//! `DP_SIM_SEED=<n>` replays one seed; `DP_SIM_SEEDS=<n>` sweeps seeds 0..n (default 64).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use core::time::Duration;
use dp_core::{ConversationId, DeviceId, MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::{Frame, Recipient, SendFrame, SendStatus};
use dp_shard::{CloseReason, ShardConfig, ShardMessage};
use std::collections::{BTreeMap, BTreeSet};

const DEVICES: usize = 6;
const STEPS: usize = 250;
/// `Sent::to` of a message to the conversation.
const CONV: usize = usize::MAX;
/// The conversation every device is a member of.
const CONV_ID: u64 = 5;

/// One envelope as its sending application sees it.
struct Sent {
    from: usize,
    to: usize,
    body_len: usize,
    /// Step of the first send.
    first_sent: u64,
    /// Step of the acknowledgement (Delivered or Stored), once there is one.
    acked: Option<u64>,
    /// Refused with `Retry`: to be sent again.
    retry: bool,
}

struct Run {
    w: World,
    rng: SeededRng,
    keys: Vec<StaticKeypair>,
    /// The live client of each device, if connected.
    live: Vec<Option<usize>>,
    sent: BTreeMap<MessageId, Sent>,
    /// Per device: envelopes its application received, in order, deduplicated by id.
    app: Vec<Vec<MessageId>>,
    /// Per client: how many of its `got` entries have been processed.
    seen: Vec<usize>,
    /// Per device: the sequence number of the last conversation message its application saw.
    last_seq: Vec<u64>,
    tick: u64,
    next_id: u32,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut w = World::with(|config: &mut ShardConfig| {
            config.outbound_bytes_max = 24 * 1024;
            config.idle_timeout = Duration::from_secs(60);
        });
        let mut rng = SeededRng::new(seed);
        w.rng = SeededRng::new(seed ^ 0x5151);
        w.chaos = true;
        w.set_credits(1 + (rng.next_u64() % 4) as u32);
        let keys: Vec<StaticKeypair> = (0..DEVICES)
            .map(|i| w.key_homed_on((i % 2) as u16))
            .collect();
        let members = keys
            .iter()
            .map(|k| dp_noise::device_id(k.public()))
            .collect();
        w.conversations.insert(CONV_ID, members);
        Self {
            w,
            rng,
            keys,
            live: vec![None; DEVICES],
            sent: BTreeMap::new(),
            app: vec![Vec::new(); DEVICES],
            seen: Vec::new(),
            last_seq: vec![0; DEVICES],
            tick: 0,
            next_id: 0,
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn device_index(&self, device: DeviceId) -> usize {
        (0..DEVICES)
            .find(|&i| dp_noise::device_id(self.keys[i].public()) == device)
            .unwrap()
    }

    /// Connects the device and resends everything it has not had acknowledged, in id order
    /// (the order it first sent them).
    fn connect(&mut self, device: usize) {
        let via = self.pick(2);
        let client = self.w.handshake(self.keys[device].clone(), via, xk());
        self.w.hello(client);
        self.live[device] = Some(client);
        self.observe();
        let pending: Vec<MessageId> = self
            .sent
            .iter()
            .filter(|(_, s)| s.from == device && s.acked.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.transmit(id);
        }
    }

    /// Sends envelope `id` on its sender's live connection, if it has one.
    fn transmit(&mut self, id: MessageId) {
        let (from, to, body_len) = {
            let s = &self.sent[&id];
            (s.from, s.to, s.body_len)
        };
        let Some(c) = self.live_client(from) else {
            return;
        };
        self.sent.get_mut(&id).unwrap().retry = false;
        let recipient = if to == CONV {
            Recipient::Conversation(ConversationId(CONV_ID))
        } else {
            Recipient::Device(dp_noise::device_id(self.keys[to].public()))
        };
        let body = vec![to as u8; body_len];
        let frame = Frame::Send(SendFrame {
            message: id,
            recipient,
            body: &body,
        });
        self.w.send(c, &frame);
        self.observe();
    }

    fn step(&mut self) {
        self.tick += 1;
        let device = self.pick(DEVICES);
        match self.pick(11) {
            0 | 1 => {
                if self.live_client(device).is_none() {
                    self.connect(device);
                }
            }
            2 => {
                // The connection drops: what either side had not read yet is lost.
                if let Some(c) = self.live_client(device) {
                    let (shard, conn) = (self.w.clients[c].shard, self.w.clients[c].conn);
                    self.w.clients[c].closed = Some(CloseReason::Peer);
                    self.w.shards[shard].handle_closed(conn);
                    self.w.pump();
                }
            }
            3 => {
                if let Some(c) = self.live_client(device) {
                    let reading = !self.w.clients[c].reading;
                    self.w.clients[c].reading = reading;
                    self.w.pump();
                }
            }
            4 => {
                self.w.now = self
                    .w
                    .now
                    .saturating_add(Duration::from_secs(self.pick(40) as u64));
                let now = self.w.now;
                for shard in &mut self.w.shards {
                    shard.handle_timeout(now);
                }
                self.w.pump();
                self.w.retry_stored();
            }
            5 => {
                let retry: Vec<MessageId> = self
                    .sent
                    .iter()
                    .filter(|(_, s)| s.from == device && s.retry)
                    .map(|(id, _)| *id)
                    .collect();
                for id in retry {
                    self.transmit(id);
                }
            }
            _ => {
                if self.live_client(device).is_some() {
                    let to = match self.pick(DEVICES + 1) {
                        DEVICES => CONV,
                        to => to,
                    };
                    let message =
                        MessageId(self.next_id.to_be_bytes().repeat(4).try_into().unwrap());
                    self.next_id += 1;
                    let body_len = 512 + self.pick(4096);
                    self.sent.insert(
                        message,
                        Sent {
                            from: device,
                            to,
                            body_len,
                            first_sent: self.tick,
                            acked: None,
                            retry: false,
                        },
                    );
                    self.transmit(message);
                }
            }
        }
        self.observe();
    }

    fn live_client(&mut self, device: usize) -> Option<usize> {
        let c = self.live[device]?;
        if self.w.clients[c].closed.is_some() {
            self.live[device] = None;
            return None;
        }
        Some(c)
    }

    /// Feeds what clients received since the last call to their applications.
    fn observe(&mut self) {
        self.seen.resize(self.w.clients.len(), 0);
        for c in 0..self.w.clients.len() {
            let me = self.device_index(dp_noise::device_id(self.w.clients[c].key.public()));
            let got = self.w.clients[c].got[self.seen[c]..].to_vec();
            self.seen[c] = self.w.clients[c].got.len();
            for got in got {
                match got {
                    Got::SendAck(id, SendStatus::Retry) | Got::SeqAck(id, SendStatus::Retry, _) => {
                        let sent = self.sent.get_mut(&id).unwrap();
                        assert!(sent.acked.is_none(), "{id:?}: Retry after an ack");
                        sent.retry = true;
                    }
                    Got::SeqAck(id, _, seq) => {
                        let sent = self.sent.get_mut(&id).unwrap();
                        assert_eq!(sent.to, CONV, "{id:?}: a sequence number for a device");
                        assert!(seq > 0);
                        assert_eq!(sent.from, me, "{id:?} acknowledged to another device");
                        assert!(sent.acked.is_none(), "{id:?} acknowledged twice");
                        sent.acked = Some(self.tick);
                    }
                    Got::ConvDeliver(id, sender, conversation, seq, _) => {
                        let sent = &self.sent[&id];
                        let true_sender = dp_noise::device_id(self.keys[sent.from].public());
                        assert_eq!(sender, true_sender, "delivered under a false sender");
                        assert_eq!((sent.to, conversation), (CONV, CONV_ID));
                        assert_ne!(sent.from, me, "a conversation message back to its sender");
                        if !self.app[me].contains(&id) {
                            assert!(
                                seq > self.last_seq[me],
                                "{id:?}: seq {seq} after {}",
                                self.last_seq[me]
                            );
                            self.last_seq[me] = seq;
                            self.check_order(me, id);
                            self.app[me].push(id);
                        }
                    }
                    Got::SendError(code, reference) => {
                        panic!("a member was refused: {code:?} {reference}")
                    }
                    Got::SendAck(id, _) => {
                        let sent = self.sent.get_mut(&id).unwrap();
                        assert_eq!(sent.from, me, "{id:?} acknowledged to another device");
                        assert!(sent.acked.is_none(), "{id:?} acknowledged twice");
                        sent.acked = Some(self.tick);
                    }
                    Got::Deliver(id, sender, _) => {
                        let sent = &self.sent[&id];
                        let true_sender = dp_noise::device_id(self.keys[sent.from].public());
                        assert_eq!(sender, true_sender, "delivered under a false sender");
                        assert_eq!(sent.to, me, "delivered to the wrong device");
                        if !self.app[me].contains(&id) {
                            self.check_order(me, id);
                            self.app[me].push(id);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// `id` reaches its recipient's application: every envelope from the same sender to the
    /// same recipient that was acknowledged before `id` was first sent must be there already.
    fn check_order(&self, recipient: usize, id: MessageId) {
        let new = &self.sent[&id];
        for (earlier_id, earlier) in &self.sent {
            let same_way = earlier.to == recipient || (earlier.to == CONV && new.to == CONV);
            if earlier.from == new.from
                && same_way
                && earlier.acked.is_some_and(|at| at < new.first_sent)
            {
                assert!(
                    self.app[recipient].contains(earlier_id),
                    "{id:?} delivered before {earlier_id:?}, which was acknowledged before it \
                     was sent"
                );
            }
        }
    }

    fn check_bounds(&self) {
        let credits = self.w.credits as usize;
        for ring in self.w.shard_rings.iter().flatten() {
            let envelopes = ring
                .queue
                .iter()
                .filter(|m| matches!(m, ShardMessage::Envelope(_)))
                .count();
            assert!(
                envelopes <= credits,
                "a shard ring holds {envelopes} envelopes"
            );
        }
    }

    fn finish(&mut self) {
        self.w.chaos = false;
        for device in 0..DEVICES {
            if let Some(c) = self.live_client(device) {
                self.w.clients[c].reading = true;
            }
        }
        self.w.pump();
        self.observe();
        for device in 0..DEVICES {
            if self.live_client(device).is_none() {
                self.connect(device);
            }
        }
        // Resends (bounded) until nothing is refused, then control's retry timer until
        // storage drains.
        for _ in 0..100 {
            let retry: Vec<MessageId> = self
                .sent
                .iter()
                .filter(|(_, s)| s.retry)
                .map(|(id, _)| *id)
                .collect();
            for id in retry {
                self.transmit(id);
            }
            self.w.retry_stored();
            self.observe();
            if self.w.stored.is_empty() && self.sent.values().all(|s| !s.retry) {
                break;
            }
        }
        for (id, sent) in &self.sent {
            if sent.acked.is_none() {
                continue;
            }
            let recipients: Vec<usize> = if sent.to == CONV {
                (0..DEVICES).filter(|&d| d != sent.from).collect()
            } else {
                vec![sent.to]
            };
            for to in recipients {
                let count = self.app[to].iter().filter(|m| *m == id).count();
                assert_eq!(
                    count, 1,
                    "acknowledged {id:?} reached recipient {to} {count} times"
                );
            }
        }
        assert!(
            self.w.stored.is_empty(),
            "{} envelopes left in storage",
            self.w.stored.len()
        );
        assert!(
            self.sent
                .values()
                .any(|s| s.to == CONV && s.acked.is_some()),
            "no conversation message went through"
        );
        for app in &self.app {
            let unique: BTreeSet<_> = app.iter().collect();
            assert_eq!(
                unique.len(),
                app.len(),
                "an application saw a message twice"
            );
        }
    }
}

fn run(seed: u64) {
    let mut run = Run::new(seed);
    for device in 0..DEVICES {
        run.connect(device);
    }
    for _ in 0..STEPS {
        run.step();
        run.check_bounds();
    }
    run.finish();
}

fn env_u64(name: &str) -> Option<u64> {
    #[allow(clippy::disallowed_methods)] // the test runner's own knobs
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeds() {
    if let Some(seed) = env_u64("DP_SIM_SEED") {
        run(seed);
        return;
    }
    let count = env_u64("DP_SIM_SEEDS").unwrap_or(64);
    for seed in 0..count {
        let result = std::panic::catch_unwind(|| run(seed));
        assert!(
            result.is_ok(),
            "seed {seed} failed; replay with DP_SIM_SEED={seed}"
        );
    }
}
