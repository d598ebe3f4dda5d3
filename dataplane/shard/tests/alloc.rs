//! Goal: relaying a message on the shard path allocates nothing at steady state (DESIGN.md §2).
//! Method: a counting global allocator, armed only around the shard's own calls — taking the
//! sender's record in, sealing the Deliver for the recipient (and keeping its copy until
//! acknowledged), taking the recipient's DeliveryAck in, and sealing the SendAck for the
//! sender — while two devices exchange 1 KiB messages after a warm-up, on one shard and across
//! two (where the envelope crosses in a recycled box and the box comes back with the outcome),
//! and for a conversation message fanned out to two members on the conversation's home shard.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use dp_core::{ConversationId, MessageId, SeededRng};
use dp_noise::StreamSession;
use dp_proto::{DeliveryAck, Frame, MessageIds, Recipient, SendFrame};
use dp_shard::{Shard, ShardEvent, conversation_home};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = COUNT.try_with(|count| count.set(count.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the same arguments; counting
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn message_id(i: u32) -> MessageId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    MessageId(id)
}

/// Seals `frame` as a record from client `c`, outside the count.
fn seal(w: &mut World, c: usize, frame: &Frame<'_>) -> Vec<u8> {
    let mut plain = Vec::new();
    frame.encode_append(&mut plain).unwrap();
    let stream = w.clients[c].stream.as_mut().unwrap();
    let mut out = vec![0u8; StreamSession::sealed_len_max(plain.len())];
    let len = stream.seal_record(w.now, &plain, &mut out).unwrap();
    out.truncate(len);
    out
}

/// For messages `first..first + n`: the sender's Send records and the recipient's
/// DeliveryAck records.
fn records(w: &mut World, from: usize, to: usize, first: u32, n: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let recipient = Recipient::Device(w.device(to));
    let body = vec![0x42u8; 1024];
    (first..first + n)
        .map(|i| {
            let ids = [message_id(i)];
            let send = Frame::Send(SendFrame {
                message: ids[0],
                recipient,
                body: &body,
            });
            let ack = Frame::DeliveryAck(DeliveryAck {
                messages: MessageIds::new(&ids),
            });
            (seal(w, from, &send), seal(w, to, &ack))
        })
        .collect()
}

/// Feeds each Send and its DeliveryAck to the shard and drains both connections' output;
/// returns the allocations the shard made meanwhile.
fn relay(w: &mut World, from: usize, to: usize, records: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let (shard, a, b) = (
        w.clients[from].shard,
        w.clients[from].conn,
        w.clients[to].conn,
    );
    assert_eq!(shard, w.clients[to].shard);
    let now = w.now;
    let s = &mut w.shards[shard];
    COUNT.with(|count| count.set(0));
    for (send, ack) in records {
        ARMED.with(|armed| armed.set(true));
        s.handle_received(now, a, send);
        let deliver = s.poll_transmit(now, b).len();
        s.handle_written(b, deliver);
        s.handle_received(now, b, ack);
        let send_ack = s.poll_transmit(now, a).len();
        s.handle_written(a, send_ack);
        ARMED.with(|armed| armed.set(false));
        assert!(
            deliver > 1024 && send_ack > 0,
            "a Deliver and a SendAck went out"
        );
        assert!(s.poll_event().is_none(), "a local relay raises no event");
    }
    COUNT.with(Cell::get)
}

#[test]
fn relaying_allocates_nothing_at_steady_state() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let b = w.connect(0, 0, xk());
    let warm_up = records(&mut w, a, b, 0, 64);
    relay(&mut w, a, b, &warm_up);
    let steady = records(&mut w, a, b, 64, 2_000);
    let allocations = relay(&mut w, a, b, &steady);
    assert_eq!(allocations, 0, "allocations while relaying 2 000 messages");
    assert_eq!(w.shards[0].stats().delivered_local, 2_064);
}

/// Like `relay`, for a sender on shard 0 and a recipient on shard 1: the envelope and its
/// outcome cross between the shards as the IO layer would carry them.
fn relay_across(w: &mut World, from: usize, to: usize, records: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let (a, b) = (w.clients[from].conn, w.clients[to].conn);
    assert_eq!((w.clients[from].shard, w.clients[to].shard), (0, 1));
    let now = w.now;
    let (left, right) = w.shards.split_at_mut(1);
    let (s0, s1) = (&mut left[0], &mut right[0]);
    COUNT.with(|count| count.set(0));
    for (send, ack) in records {
        ARMED.with(|armed| armed.set(true));
        s0.handle_received(now, a, send);
        let Some(ShardEvent::ToShard { message, .. }) = s0.poll_event() else {
            panic!("the envelope goes to the recipient's shard")
        };
        s1.handle_shard_message(now, message);
        let deliver = s1.poll_transmit(now, b).len();
        s1.handle_written(b, deliver);
        s1.handle_received(now, b, ack);
        let Some(ShardEvent::ToShard { message, .. }) = s1.poll_event() else {
            panic!("the outcome goes back to the sender's shard")
        };
        s0.handle_shard_message(now, message);
        let send_ack = s0.poll_transmit(now, a).len();
        s0.handle_written(a, send_ack);
        ARMED.with(|armed| armed.set(false));
        assert!(
            deliver > 1024 && send_ack > 0,
            "a Deliver and a SendAck went out"
        );
        assert!(s0.poll_event().is_none() && s1.poll_event().is_none());
    }
    COUNT.with(Cell::get)
}

#[test]
fn relaying_across_shards_allocates_nothing_at_steady_state() {
    let mut w = World::new();
    let a = w.connect(0, 0, xk());
    let b = w.connect(1, 1, xk());
    let warm_up = records(&mut w, a, b, 0, 64);
    relay_across(&mut w, a, b, &warm_up);
    let steady = records(&mut w, a, b, 64, 2_000);
    let allocations = relay_across(&mut w, a, b, &steady);
    assert_eq!(allocations, 0, "allocations while relaying 2 000 messages");
    assert_eq!(w.shards[0].stats().routed_remote, 2_064);
    assert_eq!(w.shards[1].stats().delivered_local, 2_064);
}

#[test]
fn fanning_out_a_conversation_message_allocates_nothing_at_steady_state() {
    let mut w = World::new();
    // Enough sequence numbers that no lookup happens while counting.
    w.seq_block = 1 << 20;
    let a = w.connect(0, 0, xk());
    let b = w.connect(0, 0, xk());
    let c = w.connect(0, 0, xk());
    let conv = (1..)
        .find(|&id| conversation_home(ConversationId(id), SHARDS, KEY).0 == 0)
        .unwrap();
    w.set_conversation(conv, &[a, b, c]);
    // Warm-up through the world (the first message asks control for the members).
    for i in 0..64u8 {
        w.send_to_conversation(a, conv, i, &[0x42; 1024]);
    }
    let body = vec![0x42u8; 1024];
    let mut records = Vec::new();
    for i in 1_000..3_000u32 {
        let ids = [message_id(i)];
        let send = Frame::Send(SendFrame {
            message: ids[0],
            recipient: Recipient::Conversation(ConversationId(conv)),
            body: &body,
        });
        let ack = Frame::DeliveryAck(DeliveryAck {
            messages: MessageIds::new(&ids),
        });
        let records_for = (
            seal(&mut w, a, &send),
            seal(&mut w, b, &ack),
            seal(&mut w, c, &ack),
        );
        records.push(records_for);
    }
    let (ca, cb, cc) = (w.clients[a].conn, w.clients[b].conn, w.clients[c].conn);
    let now = w.now;
    let s = &mut w.shards[0];
    let sends_before = s.stats().conversation_sends;
    COUNT.with(|count| count.set(0));
    for (send, ack_b, ack_c) in &records {
        ARMED.with(|armed| armed.set(true));
        s.handle_received(now, ca, send);
        let to_b = s.poll_transmit(now, cb).len();
        s.handle_written(cb, to_b);
        let to_c = s.poll_transmit(now, cc).len();
        s.handle_written(cc, to_c);
        s.handle_received(now, cb, ack_b);
        s.handle_received(now, cc, ack_c);
        let send_ack = s.poll_transmit(now, ca).len();
        s.handle_written(ca, send_ack);
        ARMED.with(|armed| armed.set(false));
        assert!(
            to_b > 1024 && to_c > 1024 && send_ack > 0,
            "two Delivers and a SendAck"
        );
        assert!(s.poll_event().is_none(), "a local fan-out raises no event");
    }
    let allocations = COUNT.with(Cell::get);
    assert_eq!(
        allocations, 0,
        "allocations while fanning out 2 000 messages"
    );
    assert_eq!(s.stats().conversation_sends - sends_before, 2_000);
}

/// Moves every `ToShard` message between the two shards until neither has one; any other
/// event fails the test.
fn shuttle(now: dp_core::Instant, s0: &mut Shard<SeededRng>, s1: &mut Shard<SeededRng>) {
    loop {
        let mut moved = false;
        while let Some(event) = s0.poll_event() {
            let ShardEvent::ToShard { message, .. } = event else {
                panic!("only shard messages: {event:?}");
            };
            s1.handle_shard_message(now, message);
            moved = true;
        }
        while let Some(event) = s1.poll_event() {
            let ShardEvent::ToShard { message, .. } = event else {
                panic!("only shard messages: {event:?}");
            };
            s0.handle_shard_message(now, message);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn fanning_out_across_shards_allocates_nothing_at_steady_state() {
    let mut w = World::new();
    w.seq_block = 1 << 20;
    // The sender and two members on shard 0, the conversation and a third member on shard 1:
    // the message crosses to its home, a batch comes back for the two, outcomes cross again.
    let a = w.connect(0, 0, xk());
    let b = w.connect(0, 0, xk());
    let c = w.connect(0, 0, xk());
    let d = w.connect(1, 1, xk());
    let conv = (1..)
        .find(|&id| conversation_home(ConversationId(id), SHARDS, KEY).0 == 1)
        .unwrap();
    w.set_conversation(conv, &[a, b, c, d]);
    for i in 0..64u8 {
        w.send_to_conversation(a, conv, i, &[0x42; 1024]);
    }
    let body = vec![0x42u8; 1024];
    let mut records = Vec::new();
    for i in 1_000..3_000u32 {
        let ids = [message_id(i)];
        let send = Frame::Send(SendFrame {
            message: ids[0],
            recipient: Recipient::Conversation(ConversationId(conv)),
            body: &body,
        });
        let ack = Frame::DeliveryAck(DeliveryAck {
            messages: MessageIds::new(&ids),
        });
        let acks = [
            seal(&mut w, b, &ack),
            seal(&mut w, c, &ack),
            seal(&mut w, d, &ack),
        ];
        records.push((seal(&mut w, a, &send), acks));
    }
    let conns = [a, b, c, d].map(|x| w.clients[x].conn);
    let now = w.now;
    let (left, right) = w.shards.split_at_mut(1);
    let (s0, s1) = (&mut left[0], &mut right[0]);
    let copies_before = s0.stats().conversation_copies + s1.stats().conversation_copies;
    COUNT.with(|count| count.set(0));
    for (send, [ack_b, ack_c, ack_d]) in &records {
        ARMED.with(|armed| armed.set(true));
        s0.handle_received(now, conns[0], send);
        shuttle(now, s0, s1);
        let mut delivered = 0;
        for conn in [conns[1], conns[2]] {
            let n = s0.poll_transmit(now, conn).len();
            s0.handle_written(conn, n);
            delivered += usize::from(n > 1024);
        }
        let n = s1.poll_transmit(now, conns[3]).len();
        s1.handle_written(conns[3], n);
        delivered += usize::from(n > 1024);
        s0.handle_received(now, conns[1], ack_b);
        s0.handle_received(now, conns[2], ack_c);
        s1.handle_received(now, conns[3], ack_d);
        shuttle(now, s0, s1);
        let send_ack = s0.poll_transmit(now, conns[0]).len();
        s0.handle_written(conns[0], send_ack);
        ARMED.with(|armed| armed.set(false));
        assert!(
            delivered == 3 && send_ack > 0,
            "three Delivers and a SendAck"
        );
    }
    let allocations = COUNT.with(Cell::get);
    assert_eq!(
        allocations, 0,
        "allocations while fanning out 2 000 messages"
    );
    let copies = s0.stats().conversation_copies + s1.stats().conversation_copies;
    assert_eq!(copies - copies_before, 6_000);
}
