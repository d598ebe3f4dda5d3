//! Goal: the connection speaks the protocol the real shard speaks, for every suite, and fails
//! closed on bad input. Method: drive `Connection`s against an in-memory `dp_shard::Shard`
//! (both sans-IO), pumping bytes by hand with a fixed clock.

use super::*;
use core::net::SocketAddr;
use dp_core::SeededRng;
use dp_noise::{Cipher, Pattern};
use dp_shard::{ConnId, ControlEvent, ControlRequest, Shard, ShardConfig, ShardEvent, ShardId};

const NOW: Instant = Instant(1_000);

struct Net {
    shard: Shard<SeededRng>,
    /// Refuse every `Store` (as a shard without link credit to control would), instead of
    /// dropping it; each refused id is recorded.
    refuse_stores: bool,
    refused: Vec<MessageId>,
    server: [u8; 32],
    clients: Vec<(ConnId, Connection<SeededRng>)>,
}

impl Net {
    fn new(seed: u64) -> Self {
        let mut rng = SeededRng::new(seed);
        let key = StaticKeypair::generate(&mut rng);
        let server = *key.public();
        let config = ShardConfig::new(ShardId(0), 1, 7).unwrap();
        Self {
            shard: Shard::new(NOW, config, key, rng),
            refuse_stores: false,
            refused: Vec::new(),
            server,
            clients: Vec::new(),
        }
    }

    fn connect(&mut self, suite: Suite, seed: u64) -> usize {
        self.connect_with(suite, seed, true)
    }

    fn connect_with(&mut self, suite: Suite, seed: u64, resend_refused: bool) -> usize {
        self.connect_configured(suite, seed, |config| config.resend_refused = resend_refused)
    }

    fn connect_configured(
        &mut self,
        suite: Suite,
        seed: u64,
        configure: impl FnOnce(&mut ConnectionConfig),
    ) -> usize {
        let mut rng = SeededRng::new(seed);
        let key = StaticKeypair::generate(&mut rng);
        let mut config = ConnectionConfig::new(key, self.server);
        config.suite = suite;
        config.timestamp_ms = 1;
        configure(&mut config);
        let conn = Connection::new(NOW, config, rng).unwrap();
        let peer: SocketAddr = ([127, 0, 0, 1], 1000 + self.clients.len() as u16).into();
        let id = self.shard.handle_connect(NOW, peer).unwrap();
        self.clients.push((id, conn));
        self.pump();
        self.clients.len() - 1
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self) {
        self.pump_at(NOW);
    }

    /// `pump` at time `now`.
    fn pump_at(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            for (id, conn) in &mut self.clients {
                let out = conn.poll_transmit(now).unwrap().to_vec();
                if !out.is_empty() {
                    conn.handle_written(out.len());
                    self.shard.handle_received(now, *id, &out);
                    moved = true;
                }
            }
            while let Some(id) = self.shard.poll_dirty() {
                let out = self.shard.poll_transmit(now, id).to_vec();
                self.shard.handle_written(id, out.len());
                if let Some((_, conn)) = self.clients.iter_mut().find(|(c, _)| *c == id)
                    && !out.is_empty()
                    && conn.state() != State::Closed
                {
                    conn.handle_input(now, &out).unwrap();
                    moved = true;
                }
            }
            while let Some(event) = self.shard.poll_event() {
                if let ShardEvent::ToControl(ControlRequest::Store(envelope)) = event {
                    if self.refuse_stores {
                        self.refused.push(envelope.message);
                        self.shard.handle_refused(envelope);
                        moved = true;
                    }
                    continue;
                }
                // A control with nothing stored: every new session is drained at once.
                if let ShardEvent::ToControl(ControlRequest::SessionOpened { device, session }) =
                    event
                {
                    let drained = ControlEvent::Drained {
                        device,
                        session,
                        stores: 0,
                    };
                    self.shard.handle_control(now, drained);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn events(&mut self, client: usize) -> Vec<Event> {
        let conn = &mut self.clients[client].1;
        core::iter::from_fn(|| conn.poll_event()).collect()
    }
}

#[test]
fn every_suite_reaches_ready_with_the_device_id_of_its_key() {
    for (i, suite) in Suite::ALL.iter().enumerate() {
        let mut net = Net::new(1);
        let a = net.connect(*suite, 10 + i as u64);
        assert_eq!(net.clients[a].1.state(), State::Ready, "{suite:?}");
        let device = net.clients[a].1.device();
        let events = net.events(a);
        assert!(
            matches!(events.as_slice(), [Event::Connected { device: d, version: PROTOCOL_VERSION, .. }] if *d == device),
            "{suite:?}: {events:?}"
        );
    }
}

#[test]
fn a_message_is_delivered_once_acknowledged_and_reported_delivered_to_its_sender() {
    let mut net = Net::new(2);
    let suite = Suite::new(Pattern::Ik, Cipher::AesGcm, false);
    let a = net.connect(suite, 20);
    let b = net.connect(suite, 21);
    net.events(a);
    net.events(b);
    let to = Recipient::Device(net.clients[b].1.device());
    let id = net.clients[a].1.new_message_id();
    net.clients[a].1.send(NOW, id, to, b"hello").unwrap();
    net.pump();
    let got = net.events(b);
    assert_eq!(got.len(), 1, "{got:?}");
    let Event::Delivered(delivery) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(delivery.message, id);
    assert_eq!(delivery.sender, net.clients[a].1.device());
    assert_eq!(delivery.body, b"hello");
    // B's DeliveryAck went out during the pump, so A hears Delivered (not Stored).
    assert_eq!(
        net.events(a),
        vec![Event::SendAck {
            message: id,
            status: SendStatus::Delivered,
            seq: 0
        }]
    );
    assert_eq!(net.clients[a].1.stats().send_acks, 1);
    assert_eq!(net.clients[b].1.stats().delivered, 1);
}

#[test]
fn a_ping_is_answered() {
    let mut net = Net::new(3);
    let a = net.connect(Suite::new(Pattern::Xk, Cipher::ChaChaPoly, true), 30);
    net.events(a);
    net.clients[a].1.ping(NOW, 77).unwrap();
    net.pump();
    assert_eq!(net.events(a), vec![Event::Pong { nonce: 77 }]);
}

#[test]
fn garbage_from_the_server_closes_the_connection_without_panicking() {
    let mut rng = SeededRng::new(4);
    let server = *StaticKeypair::generate(&mut rng).public();
    let key = StaticKeypair::generate(&mut rng);
    for garbage in [&[0u8, 3, 1, 2, 3][..], &[0xff, 0xff], &[0, 64, 2, 0, 0, 0]] {
        let mut conn =
            Connection::new(NOW, ConnectionConfig::new(key.clone(), server), rng.clone()).unwrap();
        let result = conn.handle_input(NOW, garbage);
        let mut padded = garbage.to_vec();
        padded.resize(2 + 64, 0);
        let result = result.and_then(|()| conn.handle_input(NOW, &padded));
        assert!(result.is_err(), "{garbage:?}");
        assert_eq!(conn.state(), State::Closed);
        assert!(matches!(conn.poll_event(), Some(Event::Closed(_))));
        assert_eq!(
            conn.send(
                NOW,
                MessageId([1; 16]),
                Recipient::Device(DeviceId([2; 16])),
                b"x"
            ),
            Err(ClientError::Closed)
        );
    }
}

#[test]
fn a_handshake_without_an_answer_times_out() {
    let mut rng = SeededRng::new(5);
    let server = *StaticKeypair::generate(&mut rng).public();
    let key = StaticKeypair::generate(&mut rng);
    let mut conn = Connection::new(NOW, ConnectionConfig::new(key, server), rng).unwrap();
    let deadline = conn.poll_timeout().unwrap();
    assert!(deadline > NOW);
    conn.handle_timeout(Instant(deadline.0 - 1));
    assert_eq!(conn.state(), State::Handshaking);
    conn.handle_timeout(deadline);
    assert_eq!(
        conn.poll_event(),
        Some(Event::Closed(CloseReason::HandshakeTimeout))
    );
}

#[test]
fn sends_past_the_outbound_bound_are_refused() {
    let mut rng = SeededRng::new(6);
    let server = *StaticKeypair::generate(&mut rng).public();
    let key = StaticKeypair::generate(&mut rng);
    let mut conn = Connection::new(NOW, ConnectionConfig::new(key, server), rng).unwrap();
    let body = vec![0u8; 200 * 1024];
    let to = Recipient::Device(DeviceId([9; 16]));
    let mut accepted = 0;
    let refused = loop {
        match conn.send(NOW, MessageId([accepted as u8; 16]), to, &body) {
            Ok(()) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 1000, "never refused");
    };
    assert_eq!(refused, ClientError::OutboundFull);
    assert!(conn.outbound_len() <= OUTBOUND_BYTES_MAX);
    assert!(accepted >= 30);
}

#[test]
fn the_outbound_buffer_stays_bounded_under_partial_writes() {
    let mut net = Net::new(7);
    let a = net.connect(Suite::ALL[0], 70);
    let conn = &mut net.clients[a].1;
    let to = Recipient::Device(DeviceId([3; 16]));
    let body = vec![1u8; 1000];
    let mut largest = 0;
    for i in 0..5_000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        conn.send(NOW, MessageId(id), to, &body).unwrap();
        // The socket takes a little less than what is queued each time: never fully drained.
        let pending = conn.poll_transmit(NOW).unwrap().len();
        conn.handle_written(pending.saturating_sub(600));
        largest = largest.max(conn.outbound.len());
    }
    assert!(conn.outbound_len() < 2_000, "{}", conn.outbound_len());
    assert!(largest < 200 * 1024, "the buffer grew to {largest} bytes");
}

#[test]
fn keepalive_pings_are_sent_when_due_and_their_pongs_are_not_reported() {
    let mut net = Net::new(8);
    let a = net.connect(Suite::ALL[0], 80);
    net.events(a);
    let due = net.clients[a].1.poll_timeout().unwrap();
    assert!(due > NOW, "a keepalive is scheduled");
    // Handle the timeout at the keepalive time; the shard answers the Ping.
    let conn = &mut net.clients[a].1;
    conn.handle_timeout(due);
    let out = conn.poll_transmit(due).unwrap().to_vec();
    assert!(!out.is_empty(), "a Ping was queued");
    conn.handle_written(out.len());
    let id = net.clients[a].0;
    net.shard.handle_received(due, id, &out);
    let reply = net.shard.poll_transmit(due, id).to_vec();
    net.shard.handle_written(id, reply.len());
    assert!(!reply.is_empty(), "the shard answered");
    let conn = &mut net.clients[a].1;
    conn.handle_input(due, &reply).unwrap();
    assert_eq!(conn.poll_event(), None, "a keepalive Pong is not an event");
    assert!(
        conn.poll_timeout().unwrap() > due,
        "the next keepalive is scheduled"
    );
}

/// Goal: a send the server refuses with `SendAck(Retry)` is kept and sent again with the same
/// id after a pause, and the `Retry` is not reported; with `resend_refused` off it is reported.
#[test]
fn a_refused_send_is_sent_again_after_a_pause() {
    let mut net = Net::new(9);
    let a = net.connect(Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false), 90);
    net.events(a);
    // A recipient that is not connected: the shard stores, and here storing is refused.
    let offline = Recipient::Device(DeviceId([7; 16]));
    net.refuse_stores = true;
    let id = net.clients[a].1.new_message_id();
    net.clients[a].1.send(NOW, id, offline, b"later").unwrap();
    net.pump();
    assert_eq!(net.refused, vec![id]);
    assert!(net.events(a).is_empty(), "Retry is handled, not reported");
    assert_eq!(net.clients[a].1.stats().refused, 1);
    let due = net.clients[a].1.poll_timeout().unwrap();
    assert!(due > NOW && due <= NOW.saturating_add(Duration::from_millis(15)));
    // Before the pause is over nothing is sent again; after it, the same id goes again.
    net.clients[a].1.handle_timeout(NOW);
    net.pump();
    assert_eq!(net.refused, vec![id]);
    net.clients[a].1.handle_timeout(due);
    net.pump_at(due);
    assert_eq!(net.refused, vec![id, id]);
    // The second pause is longer.
    let again = net.clients[a].1.poll_timeout().unwrap();
    assert!(again.saturating_duration_since(due) >= Duration::from_millis(20));

    // Without resending, the Retry reaches the application.
    let mut net = Net::new(10);
    let b = net.connect_with(
        Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false),
        91,
        false,
    );
    net.events(b);
    net.refuse_stores = true;
    let id = net.clients[b].1.new_message_id();
    net.clients[b].1.send(NOW, id, offline, b"x").unwrap();
    net.pump();
    assert_eq!(
        net.events(b),
        vec![Event::SendAck {
            message: id,
            status: SendStatus::Retry,
            seq: 0
        }]
    );
}

#[test]
fn under_application_acks_the_sender_hears_delivered_only_after_the_application_acks() {
    let mut net = Net::new(5);
    let suite = Suite::ALL[0];
    let a = net.connect(suite, 50);
    let b = net.connect_configured(suite, 51, |config| config.ack = AckMode::Application);
    net.events(a);
    net.events(b);
    let to = Recipient::Device(net.clients[b].1.device());
    let id = net.clients[a].1.new_message_id();
    net.clients[a]
        .1
        .send(NOW, id, to, b"store me first")
        .unwrap();
    net.pump();
    let got = net.events(b);
    assert!(
        matches!(got.as_slice(), [Event::Delivered(d)] if d.message == id),
        "{got:?}"
    );
    assert_eq!(net.clients[b].1.app_unacked(), 1);
    // No DeliveryAck went out: the sender has no answer yet.
    assert_eq!(net.events(a), vec![]);
    net.clients[b].1.ack(NOW, id).unwrap();
    assert_eq!(net.clients[b].1.app_unacked(), 0);
    net.pump();
    assert_eq!(
        net.events(a),
        vec![Event::SendAck {
            message: id,
            status: SendStatus::Delivered,
            seq: 0
        }]
    );
    assert_eq!(net.clients[b].1.stats().app_acks, 1);
    // Acknowledging again sends nothing more and counts nothing.
    net.clients[b].1.ack(NOW, id).unwrap();
    assert_eq!(net.clients[b].1.stats().app_acks, 1);
}

#[test]
fn typing_receipt_and_presence_frames_are_encoded_and_bounded() {
    let mut net = Net::new(6);
    let a = net.connect(Suite::ALL[0], 60);
    net.events(a);
    let conn = &mut net.clients[a].1;
    let before = conn.outbound_len();
    conn.typing(NOW, ConversationId(3), TypingState::Typing)
        .unwrap();
    conn.set_presence(NOW, PresenceState::Away).unwrap();
    assert!(conn.outbound_len() > before);
    // More ids than one frame holds go in several frames; none is an error.
    let ids: Vec<MessageId> = (0..=RECEIPTS_PER_FRAME_MAX as u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            MessageId(id)
        })
        .collect();
    let before = conn.outbound_len();
    conn.receipt(NOW, ConversationId(3), ReceiptKind::Delivered, &ids)
        .unwrap();
    assert!(conn.outbound_len() >= before + ids.len() * 16);
    conn.receipt(NOW, ConversationId(3), ReceiptKind::Read, &[])
        .unwrap();
    conn.close();
    assert_eq!(
        conn.typing(NOW, ConversationId(3), TypingState::Stopped),
        Err(ClientError::Closed)
    );
}
