//! Goal: a device's presence reaches its audience (friends' devices and its own other devices)
//! and nobody else, `Offline` follows when its session ends, a changed audience is looked up
//! again, and a full recipient queue drops updates (counted) instead of cutting the recipient
//! off. Method: two shards and in-memory clients (tests/common), with a stand-in control that
//! answers audience lookups from a map the test sets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use dp_proto::{Frame, PresenceSet, PresenceState};
use dp_shard::{CloseReason, ShardStats};

fn set_presence(w: &mut World, c: usize, state: PresenceState) {
    w.send(c, &Frame::PresenceSet(PresenceSet { state }));
}

fn drop_client(w: &mut World, c: usize) {
    let (shard, conn) = (w.clients[c].shard, w.clients[c].conn);
    w.shards[shard].handle_closed(conn);
    w.clients[c].closed = Some(CloseReason::Peer);
}

fn total(w: &World, f: impl Fn(&ShardStats) -> u64) -> u64 {
    w.shards.iter().map(|s| f(&s.stats())).sum()
}

/// bob's audience is alice (a friend, on the other shard), carol (a friend, on bob's shard)
/// and bob2 (bob's other device); mallory is nobody's friend.
#[test]
fn presence_reaches_friends_and_own_devices_only() {
    for bob_home in [0u16, 1] {
        let mut w = World::new();
        let bob = w.connect(bob_home, 0, xk());
        let alice = w.connect(1 - bob_home, 1, xk());
        let carol = w.connect(bob_home, 1, xk());
        let bob2 = w.connect(1 - bob_home, 0, xk());
        let mallory = w.connect(bob_home, 0, xk());
        w.set_audience(bob, &[alice, carol, bob2]);
        set_presence(&mut w, bob, PresenceState::Away);
        let bob_id = w.device(bob);
        for c in [alice, carol, bob2] {
            assert_eq!(w.presences(c), vec![(bob_id, PresenceState::Away)], "{c}");
        }
        assert!(w.presences(mallory).is_empty());
        assert!(w.presences(bob).is_empty(), "not to itself");
        assert_eq!(w.audience_lookups, 1);
        // A second update comes from the cache.
        set_presence(&mut w, bob, PresenceState::Busy);
        assert_eq!(
            w.presences(alice).last(),
            Some(&(bob_id, PresenceState::Busy))
        );
        assert_eq!(w.audience_lookups, 1);
        assert_eq!(total(&w, |s| s.presence_in), 2);
        assert_eq!(total(&w, |s| s.presence_out), 6);
        assert_eq!(total(&w, |s| s.presence_dropped), 0);
    }
}

#[test]
fn offline_goes_to_the_audience_when_the_session_ends() {
    let mut w = World::new();
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    let mallory = w.connect(1, 1, xk());
    w.set_audience(bob, &[alice]);
    set_presence(&mut w, bob, PresenceState::Online);
    drop_client(&mut w, bob);
    w.pump();
    let bob_id = w.device(bob);
    assert_eq!(
        w.presences(alice),
        vec![
            (bob_id, PresenceState::Online),
            (bob_id, PresenceState::Offline)
        ]
    );
    assert!(w.presences(mallory).is_empty());
}

#[test]
fn a_session_that_never_set_presence_is_not_announced() {
    let mut w = World::new();
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    w.set_audience(bob, &[alice]);
    drop_client(&mut w, bob);
    w.pump();
    assert!(w.presences(alice).is_empty());
    assert_eq!(w.audience_lookups, 0);
}

#[test]
fn unfriending_invalidates_the_cached_audience() {
    let mut w = World::new();
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    let carol = w.connect(0, 1, xk());
    w.set_audience(bob, &[alice, carol]);
    set_presence(&mut w, bob, PresenceState::Online);
    assert_eq!(w.presences(alice).len(), 1);
    // alice and bob are no longer friends: control says bob's audience changed.
    w.set_audience(bob, &[carol]);
    set_presence(&mut w, bob, PresenceState::Away);
    assert_eq!(w.audience_lookups, 2);
    assert_eq!(w.presences(alice).len(), 1, "alice hears nothing more");
    assert_eq!(
        w.presences(carol).last(),
        Some(&(w.device(bob), PresenceState::Away))
    );
}

#[test]
fn an_unknown_device_is_heard_by_nobody() {
    let mut w = World::new();
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    set_presence(&mut w, bob, PresenceState::Online);
    assert!(w.presences(alice).is_empty());
    assert_eq!(total(&w, |s| s.presence_dropped), 1);
}

#[test]
fn a_full_recipient_queue_drops_presence_and_keeps_the_session() {
    let mut w = World::with(|config| config.outbound_bytes_max = 1024);
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    w.set_audience(bob, &[alice]);
    w.clients[alice].reading = false;
    let updates = 200;
    for i in 0..updates {
        let state = if i % 2 == 0 {
            PresenceState::Away
        } else {
            PresenceState::Online
        };
        set_presence(&mut w, bob, state);
    }
    let out = total(&w, |s| s.presence_out);
    let dropped = total(&w, |s| s.presence_dropped);
    assert!(dropped > 0, "the queue filled");
    assert_eq!(out + dropped, updates);
    assert_eq!(w.clients[alice].closed, None, "not cut off for presence");
    assert_eq!(total(&w, |s| s.slow_consumers), 0);
    // Once alice reads again she gets what was queued, and later updates arrive.
    w.clients[alice].reading = true;
    w.pump();
    set_presence(&mut w, bob, PresenceState::Busy);
    assert_eq!(
        w.presences(alice).last(),
        Some(&(w.device(bob), PresenceState::Busy))
    );
    assert_eq!(w.presences(alice).len() as u64, out + 1);
}

/// The friendship ends from the other side: control lists only alice's devices as changed, and
/// bob's cached audience, which lists alice, is forgotten too.
#[test]
fn a_change_naming_a_listed_device_invalidates_the_audience_that_lists_it() {
    let mut w = World::new();
    let bob = w.connect(0, 0, xk());
    let alice = w.connect(1, 1, xk());
    w.set_audience(bob, &[alice]);
    set_presence(&mut w, bob, PresenceState::Online);
    assert_eq!(w.presences(alice).len(), 1);
    let (bob_id, alice_id) = (w.device(bob), w.device(alice));
    w.audiences.insert(bob_id, Vec::new());
    for s in 0..usize::from(SHARDS) {
        w.from_control[s]
            .queue
            .push_back(dp_shard::ControlEvent::AudienceChanged {
                devices: vec![alice_id],
            });
    }
    w.pump();
    set_presence(&mut w, bob, PresenceState::Away);
    assert_eq!(w.audience_lookups, 2);
    assert_eq!(w.presences(alice).len(), 1, "alice hears nothing more");
}
