//! Goal: shards relay envelopes between devices on the same and on different shards, store
//! them for offline devices and deliver them on return, acknowledge only what was delivered or
//! stored, and isolate slow or misbehaving peers. Method: two shards and in-memory clients on
//! the real handshake, session and frame code, pumped to quiescence with a stand-in control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use core::time::Duration;
use dp_core::{DeviceId, MessageId};
use dp_noise::{Cipher, Pattern, Suite};
use dp_proto::{DeliveryAck, ErrorCode, Frame, MessageIds, Ping, Recipient, SendFrame, SendStatus};
use dp_shard::{CloseReason, ShardEvent, home_shard};

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
    let mut w = World::with(|config| config.outbound_bytes_max = 64 * 1024);
    let a = w.connect(0, 0, xk());
    let b = w.connect(0, 1, xk());
    w.clients[b].reading = false;
    let body = vec![7u8; 4096];
    let sent: Vec<MessageId> = (0..40u8).map(|i| w.send_envelope(a, b, i, &body)).collect();
    // b never read: it was cut off, and everything it held went to storage, so every message
    // was acknowledged to a (as stored), exactly once, and none was lost.
    assert_eq!(w.clients[b].closed, Some(CloseReason::SlowConsumer));
    let acked: Vec<MessageId> = w.clients[a]
        .got
        .iter()
        .filter_map(|g| match g {
            Got::SendAck(id, SendStatus::Stored) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(acked, sent);
    let stored: Vec<MessageId> = w.stored.iter().map(|e| e.message).collect();
    assert_eq!(stored, sent);
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

/// Goal: a connection that keeps talking outlives its first deadline (the timer refiles it),
/// and times out one idle period after it goes quiet; a stalled handshake times out too.
#[test]
fn deadlines_move_with_traffic() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let b = w.connect_without_hello(0);
    w.shards[0]
        .handle_connect(w.now, "192.0.2.7:1".parse().unwrap())
        .unwrap();
    for nonce in 0..3 {
        w.now = w.now.saturating_add(Duration::from_secs(60));
        let now = w.now;
        w.shards[0].handle_timeout(now);
        w.pump();
        w.send(a, &Frame::Ping(Ping { nonce }));
        assert_eq!(w.clients[a].got.last(), Some(&Got::Pong(nonce)));
    }
    assert_eq!(w.clients[a].closed, None, "talking keeps it open");
    assert_eq!(w.clients[b].closed, Some(CloseReason::Idle));
    let next = w.shards[0].poll_timeout();
    assert!(next <= w.now.saturating_add(Duration::from_secs(91)));
    w.now = w.now.saturating_add(Duration::from_secs(91));
    let now = w.now;
    w.shards[0].handle_timeout(now);
    w.pump();
    assert_eq!(w.clients[a].closed, Some(CloseReason::Idle));
    assert_eq!(w.shards[0].conns_len(), 0);
    // The stalled handshake, b, then a.
    assert_eq!(w.shards[0].stats().closed_timeout, 3);
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

/// The attack: one address opens connection after connection (a new source port each time, as
/// the original's ip:port-keyed limiter allowed, S11). Past the per-source cap they are refused;
/// other addresses are not affected, and closing one makes room again.
#[test]
fn connections_are_capped_per_source_address_not_per_port() {
    let mut w = World::with(|config| config.conns_per_source_max = 2);
    let now = w.now;
    let shard = &mut w.shards[0];
    let a1 = shard.handle_connect(now, "198.51.100.1:1000".parse().unwrap());
    let a2 = shard.handle_connect(now, "198.51.100.1:1001".parse().unwrap());
    assert!(a1.is_some() && a2.is_some());
    assert_eq!(
        shard.handle_connect(now, "198.51.100.1:1002".parse().unwrap()),
        None
    );
    assert!(
        shard
            .handle_connect(now, "198.51.100.2:1000".parse().unwrap())
            .is_some()
    );
    // IPv6 counts by /64: another address in the same /64 is the same source.
    assert!(
        shard
            .handle_connect(now, "[2001:db8::1]:1".parse().unwrap())
            .is_some()
    );
    assert!(
        shard
            .handle_connect(now, "[2001:db8::2]:1".parse().unwrap())
            .is_some()
    );
    assert_eq!(
        shard.handle_connect(now, "[2001:db8::3]:1".parse().unwrap()),
        None
    );
    assert!(
        shard
            .handle_connect(now, "[2001:db8:0:1::1]:1".parse().unwrap())
            .is_some()
    );
    shard.handle_closed(a1.unwrap());
    assert!(
        shard
            .handle_connect(now, "198.51.100.1:1003".parse().unwrap())
            .is_some()
    );
    assert_eq!(shard.stats().conns_refused, 2);
}

/// Goal: an envelope the server has no link credit for is refused upstream with
/// `SendAck(Retry)`, holds nothing, and goes through when sent again after credit returns.
#[test]
fn out_of_credit_envelopes_are_refused_with_retry() {
    for (home_b, offline) in [(1, false), (0, true)] {
        let mut w = World::new();
        let a = w.connect(0, 0, xk());
        let b = w.connect(home_b, 1, xk());
        if offline {
            // b is offline: its envelopes need control's (credited) link.
            let (shard, conn) = (w.clients[b].shard, w.clients[b].conn);
            w.clients[b].closed = Some(CloseReason::Peer);
            w.shards[shard].handle_closed(conn);
            w.pump();
        }
        w.set_credits(0);
        let m = w.send_envelope(a, b, 1, b"later");
        assert_eq!(
            w.clients[a].got.last(),
            Some(&Got::SendAck(m, SendStatus::Retry))
        );
        assert!(w.stored.is_empty());
        assert_eq!(w.shards[0].stats().refused, 1);
        w.set_credits(4);
        let m = w.send_envelope(a, b, 1, b"later");
        let expected = if offline {
            SendStatus::Stored
        } else {
            SendStatus::Delivered
        };
        assert_eq!(w.clients[a].got.last(), Some(&Got::SendAck(m, expected)));
        assert_eq!(w.stored.len(), usize::from(offline));
    }
}

/// Goal: while control still drains a device's stored envelopes, a new envelope to it is
/// stored behind them rather than delivered past them (order per recipient).
#[test]
fn new_envelopes_wait_behind_the_stored_backlog() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let b = w.connect(1, 1, xk());
    let b_key = w.clients[b].key.clone();
    let (shard, conn) = (w.clients[b].shard, w.clients[b].conn);
    w.clients[b].closed = Some(CloseReason::Peer);
    w.shards[shard].handle_closed(conn);
    w.pump();
    let first = w.send_envelope(a, b, 1, b"first");
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::SendAck(first, SendStatus::Stored))
    );
    // b returns but does not read yet: its drain stays unacknowledged.
    let b2 = w.handshake(b_key, 1, xk());
    w.clients[b2].reading = false;
    w.hello(b2);
    let second = w.send_envelope(a, b, 2, b"second");
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::SendAck(second, SendStatus::Stored)),
        "the second envelope must queue behind the first"
    );
    w.clients[b2].reading = true;
    w.pump();
    w.retry_stored();
    let delivered: Vec<MessageId> = w.clients[b2]
        .got
        .iter()
        .filter_map(|g| match g {
            Got::Deliver(id, _, _) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![first, second]);
    assert!(w.stored.is_empty());
    // Drained: live delivery resumes.
    let third = w.send_envelope(a, b, 3, b"third");
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::SendAck(third, SendStatus::Delivered))
    );
}

/// Goal: control's revocation ends the device's live session at once, with a typed error, and
/// what it had in flight is kept (stored) for its senders.
#[test]
fn revoked_device_is_disconnected_with_a_typed_error() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let b = w.connect(1, 1, xk());
    w.clients[b].auto_ack = false;
    let m = w.send_envelope(a, b, 1, b"unacknowledged");
    let device = w.device(b);
    w.shards[1].handle_control(w.now, dp_shard::ControlEvent::Revoke { device });
    w.pump();
    assert_eq!(
        w.clients[b].closed,
        Some(CloseReason::Protocol(ErrorCode::DEVICE_REVOKED))
    );
    assert!(
        w.clients[b]
            .got
            .contains(&Got::Error(ErrorCode::DEVICE_REVOKED))
    );
    assert!(!w.shards[1].is_online(device));
    assert_eq!(
        w.clients[a].got.last(),
        Some(&Got::SendAck(m, SendStatus::Stored))
    );
}
