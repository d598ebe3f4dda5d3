//! Goal: a group of three users set up through the REST API gets every message to the group
//! fanned out by the server to the other members' devices, numbered in order, and a member
//! removed through the REST API stops receiving and may no longer send, while a stranger to the
//! group hears what it would hear for a group that does not exist (DESIGN.md §6.3). Method: the
//! real `commucat serve` (SQLite, REST API on a free port, two shards), clients of the client
//! library that register over their sessions, and the library's REST client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

mod common;

use common::Serve;
use commucat_client::api::Api;
use commucat_client::{Client, ConnectionConfig, Event, ops};
use dp_core::{ConversationId, MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::{ErrorCode, Recipient, SendStatus};
use std::time::Duration;

/// Attempts to see a removal take effect (the change reaches the data plane asynchronously).
const REMOVAL_ATTEMPTS: u8 = 50;
/// How long one poll of a client waits (a poll interval, not an expectation).
const POLL: Duration = Duration::from_millis(20);
/// Polls before a missing acknowledgement fails the test.
const POLLS_MAX: u32 = 1000;

/// A user with one device: connected, registered, and the REST API with its token.
fn user(server: &Serve, seed: u64, handle: &str) -> (Client<SeededRng>, Api) {
    let key = StaticKeypair::generate(&mut SeededRng::new(seed));
    let config = ConnectionConfig::new(key, server.public);
    let mut client = Client::connect(server.listen, config, SeededRng::new(seed + 1)).unwrap();
    ops::register(&mut client, handle, "phone").unwrap();
    let token = ops::issue_token(&mut client).unwrap().token;
    let mut api = Api::new(&format!("http://{}/v1", server.api)).unwrap();
    api.set_token(Some(token));
    (client, api)
}

/// The next event that is not a keepalive or a response.
fn next(client: &mut Client<SeededRng>) -> Event {
    loop {
        match client.next_event(Duration::from_secs(10)).unwrap() {
            Some(Event::Pong { .. } | Event::Response { .. }) => {}
            Some(event) => return event,
            None => panic!("no event before the deadline"),
        }
    }
}

fn send(client: &mut Client<SeededRng>, conversation: ConversationId, id: u8) -> MessageId {
    let message = MessageId([id; 16]);
    client
        .send_with_id(message, Recipient::Conversation(conversation), &[id; 100])
        .unwrap();
    message
}

/// The sender's acknowledgement: Delivered or Stored (a copy may have gone through storage
/// while a recipient's session was still draining), with the sequence number.
fn acked(client: &mut Client<SeededRng>, message: MessageId) -> u64 {
    match next(client) {
        Event::SendAck {
            message: m,
            status: SendStatus::Delivered | SendStatus::Stored,
            seq,
        } if m == message && seq > 0 => seq,
        other => panic!("{other:?}"),
    }
}

fn delivered(client: &mut Client<SeededRng>) -> (MessageId, ConversationId, u64) {
    match next(client) {
        Event::Delivered(d) => (d.message, d.conversation, d.seq),
        other => panic!("{other:?}"),
    }
}

#[test]
fn group_messages_fan_out_and_a_removed_member_stops_receiving() {
    let dir = std::env::temp_dir().join(format!("commucat-conv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::serve(&dir.join("data"), &[]);
    let (mut alice, alice_api) = user(&server, 10, "alice");
    let (mut bob, bob_api) = user(&server, 20, "bob");
    let (mut carol, carol_api) = user(&server, 30, "carol");
    let (mut mallory, _) = user(&server, 40, "mallory");

    // Alice befriends Bob and Carol, makes a group and invites them.
    for (friend, api) in [("bob", &bob_api), ("carol", &carol_api)] {
        alice_api.request_friend(friend).unwrap();
        api.accept_friend("alice").unwrap();
    }
    let id = alice_api.create_group("plans").unwrap();
    let conversation = ConversationId(id);
    for member in ["bob", "carol"] {
        alice_api.add_member(id, member).unwrap();
    }

    // Every member's message reaches the two others, with one increasing number per message.
    let mut last = 0;
    for (i, from) in [0usize, 1, 2, 0].into_iter().enumerate() {
        let mut members = [&mut alice, &mut bob, &mut carol];
        let message = send(members[from], conversation, u8::try_from(i).unwrap() + 1);
        let mut seq = None;
        for (to, client) in members.iter_mut().enumerate() {
            if to == from {
                continue;
            }
            let (got, conv, s) = delivered(client);
            assert_eq!((got, conv), (message, conversation));
            assert!(seq.is_none_or(|seq| seq == s), "every copy has one number");
            seq = Some(s);
        }
        let seq = seq.unwrap();
        assert_eq!(acked(members[from], message), seq);
        assert!(seq > last, "numbers increase: {seq} after {last}");
        last = seq;
    }

    // Mallory is no member: the same answer as for a conversation that does not exist.
    for target in [conversation, ConversationId(id + 1000)] {
        mallory
            .send_with_id(MessageId([0xee; 16]), Recipient::Conversation(target), b"?")
            .unwrap();
        match next(&mut mallory) {
            Event::Error { code, frame_type } => {
                assert_eq!((code, frame_type), (ErrorCode::NOT_FOUND, 0x10));
            }
            other => panic!("{other:?}"),
        }
    }

    // Alice removes Carol. The change reaches the data plane asynchronously, so Alice sends
    // until a message skips Carol; once one has, none may reach her again. Alice's
    // acknowledgement comes once every copy is delivered (Carol's client, polled meanwhile,
    // acknowledges hers) or stored; a direct marker to Carol sent after it then arrives after
    // any stored copy (order per recipient).
    alice_api.remove_member(id, "carol").unwrap();
    let carol_device = carol.device();
    let mut removed_at = None;
    for round in 0..REMOVAL_ATTEMPTS {
        let message = send(&mut alice, conversation, 100 + round);
        assert_eq!(delivered(&mut bob).0, message);
        let mut got_group_copy = false;
        let mut polls = 0;
        loop {
            polls += 1;
            assert!(
                polls < POLLS_MAX,
                "no acknowledgement for the group message"
            );
            match alice.next_event(POLL).unwrap() {
                Some(Event::SendAck { message: m, .. }) if m == message => break,
                Some(Event::Pong { .. }) | None => {}
                Some(other) => panic!("{other:?}"),
            }
            match carol.next_event(POLL).unwrap() {
                Some(Event::Delivered(d)) => {
                    assert_eq!((d.message, d.conversation), (message, conversation));
                    got_group_copy = true;
                }
                Some(Event::Pong { .. }) | None => {}
                Some(other) => panic!("{other:?}"),
            }
        }
        let mut marker = MessageId([0xf0; 16]);
        marker.0[1] = round;
        alice
            .send_with_id(marker, Recipient::Device(carol_device), b"marker")
            .unwrap();
        loop {
            let (got, conv, _) = delivered(&mut carol);
            if got == marker {
                break;
            }
            assert_eq!((got, conv), (message, conversation));
            got_group_copy = true;
        }
        match next(&mut alice) {
            Event::SendAck { message: m, .. } if m == marker => {}
            other => panic!("{other:?}"),
        }
        if got_group_copy {
            assert!(removed_at.is_none(), "a removed member received again");
        } else if removed_at.is_none() {
            removed_at = Some(round);
        }
        if removed_at.is_some_and(|at| round >= at + 3) {
            break;
        }
    }
    assert!(removed_at.is_some(), "the removal never took effect");
    // And Carol may no longer send to the group.
    carol
        .send_with_id(
            MessageId([0xcc; 16]),
            Recipient::Conversation(conversation),
            b"hi",
        )
        .unwrap();
    match next(&mut carol) {
        Event::Error { code, .. } => assert_eq!(code, ErrorCode::NOT_FOUND),
        other => panic!("{other:?}"),
    }
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
