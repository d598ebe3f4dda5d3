//! Deterministic simulation: devices on two shards connect, send to each other, stall, vanish
//! and come back, and time jumps, all drawn from a seed. Invariants are checked after every
//! step, and at the end every device returns and everything drains:
//!
//! - a delivered envelope names its true sender (identity comes from the handshake only);
//! - a sender gets at most one acknowledgement per envelope;
//! - every envelope whose sender was acknowledged reaches its recipient (at least once; the
//!   client's dedup by id makes it exactly once for the application), and storage ends empty.
//!
//! `DP_SIM_SEED=<n>` replays one seed; `DP_SIM_SEEDS=<n>` sweeps seeds 0..n (default 64).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use core::time::Duration;
use dp_core::{DeviceId, MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::{Frame, Recipient, SendFrame, SendStatus};
use dp_shard::{CloseReason, ShardConfig};
use std::collections::{BTreeMap, BTreeSet};

const DEVICES: usize = 6;
const STEPS: usize = 250;

struct Run {
    w: World,
    rng: SeededRng,
    keys: Vec<StaticKeypair>,
    /// The live client of each device, if connected.
    live: Vec<Option<usize>>,
    /// message → (sender, recipient)
    sent: BTreeMap<MessageId, (DeviceId, DeviceId)>,
    next_id: u32,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut w = World::with(|config: &mut ShardConfig| {
            config.outbound_bytes_max = 24 * 1024;
            config.idle_timeout = Duration::from_secs(60);
        });
        let mut rng = SeededRng::new(seed);
        let keys: Vec<StaticKeypair> = (0..DEVICES)
            .map(|i| w.key_homed_on((i % 2) as u16))
            .collect();
        let live = vec![None; DEVICES];
        let _ = &mut rng;
        Self {
            w,
            rng,
            keys,
            live,
            sent: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn connect(&mut self, device: usize) {
        let via = self.pick(2);
        let client = self.w.handshake(self.keys[device].clone(), via, xk());
        self.w.hello(client);
        self.live[device] = Some(client);
    }

    fn step(&mut self) {
        let device = self.pick(DEVICES);
        match self.pick(10) {
            0 | 1 => {
                if self.live_client(device).is_none() {
                    self.connect(device);
                }
            }
            2 => {
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
            _ => {
                if let Some(c) = self.live_client(device) {
                    let to = self.pick(DEVICES);
                    let message =
                        MessageId(self.next_id.to_be_bytes().repeat(4).try_into().unwrap());
                    self.next_id += 1;
                    let recipient = dp_noise::device_id(self.keys[to].public());
                    let sender = dp_noise::device_id(self.keys[device].public());
                    self.sent.insert(message, (sender, recipient));
                    let body = vec![to as u8; 512 + self.pick(4096)];
                    let frame = Frame::Send(SendFrame {
                        message,
                        recipient: Recipient::Device(recipient),
                        body: &body,
                    });
                    self.w.send(c, &frame);
                }
            }
        }
    }

    fn live_client(&mut self, device: usize) -> Option<usize> {
        let c = self.live[device]?;
        if self.w.clients[c].closed.is_some() {
            self.live[device] = None;
            return None;
        }
        Some(c)
    }

    /// Acknowledgements per message across all client instances, and deliveries per message.
    fn tally(
        &self,
    ) -> (
        BTreeMap<MessageId, usize>,
        BTreeMap<MessageId, BTreeSet<DeviceId>>,
    ) {
        let mut acks = BTreeMap::new();
        let mut delivered: BTreeMap<MessageId, BTreeSet<DeviceId>> = BTreeMap::new();
        for client in &self.w.clients {
            let me = dp_noise::device_id(client.key.public());
            for got in &client.got {
                match got {
                    Got::SendAck(id, SendStatus::Delivered | SendStatus::Stored) => {
                        *acks.entry(*id).or_insert(0) += 1;
                    }
                    Got::Deliver(id, sender, _) => {
                        let (true_sender, recipient) = self.sent[id];
                        assert_eq!(*sender, true_sender, "delivered under a false sender");
                        assert_eq!(me, recipient, "delivered to the wrong device");
                        delivered.entry(*id).or_default().insert(me);
                    }
                    _ => {}
                }
            }
        }
        (acks, delivered)
    }

    fn check(&self) {
        let (acks, _) = self.tally();
        for (id, count) in acks {
            assert_eq!(count, 1, "message {id:?} acknowledged {count} times");
        }
    }

    fn finish(&mut self) {
        for device in 0..DEVICES {
            if let Some(c) = self.live_client(device) {
                self.w.clients[c].reading = true;
            }
        }
        self.w.pump();
        for device in 0..DEVICES {
            if self.live_client(device).is_none() {
                self.connect(device);
            }
        }
        self.w.pump();
        // Control's retry timer fires until storage drains (bounded).
        for _ in 0..100 {
            if self.w.stored.is_empty() {
                break;
            }
            self.w.retry_stored();
        }
        let (acks, delivered) = self.tally();
        for id in acks.keys() {
            assert!(
                delivered.contains_key(id),
                "acknowledged message {id:?} never delivered"
            );
        }
        assert!(
            self.w.stored.is_empty(),
            "{} envelopes left in storage",
            self.w.stored.len()
        );
    }
}

fn run(seed: u64) {
    let mut run = Run::new(seed);
    for device in 0..DEVICES {
        run.connect(device);
    }
    for _ in 0..STEPS {
        run.step();
        run.check();
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
