//! Goal: a group of three users set up through the REST API gets every message to the group
//! fanned out by the server to the other members' devices, numbered in order, and a member
//! removed through the REST API stops receiving and may no longer send, while a stranger to the
//! group hears what it would hear for a group that does not exist (DESIGN.md §6.3). Method: the
//! real `commucat serve` (SQLite, REST API on a free port, two shards), clients of the client
//! library that register over their sessions, and plain HTTP/1.1 over TCP for the API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // a test of a real process: its own clock and threads

use commucat_client::{Client, ConnectionConfig, Event};
use dp_core::{ConversationId, MessageId, SeededRng};
use dp_noise::StaticKeypair;
use dp_proto::{ErrorCode, Recipient, SendStatus};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OP_REGISTER: u16 = 0x0001;
const OP_ISSUE_TOKEN: u16 = 0x0003;
/// Attempts to see a removal take effect (the change reaches the data plane asynchronously).
const REMOVAL_ATTEMPTS: u8 = 50;
/// How long one poll of a client waits (a poll interval, not an expectation).
const POLL: Duration = Duration::from_millis(20);
/// Polls before a missing acknowledgement fails the test.
const POLLS_MAX: u32 = 1000;

struct Serve {
    child: Child,
    listen: SocketAddr,
    api: SocketAddr,
    public: [u8; 32],
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix).map(|at| &line[at + prefix.len()..])
}

fn serve(data: &std::path::Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_commucat"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--shards", "2", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut listen, mut api, mut public) = (None, None, None);
    for line in lines {
        let line = line.unwrap();
        if let Some(rest) = after(&line, "listening on ") {
            listen = rest.split(' ').next().map(|a| a.parse().unwrap());
        }
        if let Some(rest) = after(&line, "REST API at http://") {
            api = rest.split('/').next().map(|a| a.parse().unwrap());
        }
        if let Some(rest) = after(&line, "(give it to clients): ") {
            public = Some(hex::decode(rest.trim()).unwrap().try_into().unwrap());
        }
        if listen.is_some() && api.is_some() && public.is_some() {
            break;
        }
    }
    Serve {
        child,
        listen: listen.expect("serve said where it listens"),
        api: api.expect("serve said where the API is"),
        public: public.expect("serve printed its key"),
    }
}

/// One request over a fresh connection; returns the status code and the body.
fn http(api: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn ok(reply: (u16, String)) -> String {
    assert!((200..300).contains(&reply.0), "{} {}", reply.0, reply.1);
    reply.1
}

/// Sends a request and waits for its response.
fn request(client: &mut Client<SeededRng>, id: u32, op: u16, body: &str) -> (ErrorCode, String) {
    client.request(id, op, body.as_bytes()).unwrap();
    loop {
        match client.next_event(Duration::from_secs(10)).unwrap() {
            Some(Event::Response {
                request_id,
                status,
                body,
            }) if request_id == id => return (status, String::from_utf8(body).unwrap()),
            Some(_) => {}
            None => panic!("no response to request {id}"),
        }
    }
}

/// A user with one device: connected, registered, with a REST token.
fn user(server: &Serve, seed: u64, handle: &str) -> (Client<SeededRng>, String) {
    let key = StaticKeypair::generate(&mut SeededRng::new(seed));
    let config = ConnectionConfig::new(key, server.public);
    let mut client = Client::connect(server.listen, config, SeededRng::new(seed + 1)).unwrap();
    let register = format!(r#"{{"handle":"{handle}","device_name":"phone"}}"#);
    let (status, body) = request(&mut client, 1, OP_REGISTER, &register);
    assert_eq!(status, ErrorCode::OK, "{body}");
    let (status, body) = request(&mut client, 2, OP_ISSUE_TOKEN, "{}");
    assert_eq!(status, ErrorCode::OK, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    (client, reply["token"].as_str().unwrap().to_string())
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
    let server = serve(&dir.join("data"));
    let (mut alice, alice_token) = user(&server, 10, "alice");
    let (mut bob, bob_token) = user(&server, 20, "bob");
    let (mut carol, carol_token) = user(&server, 30, "carol");
    let (mut mallory, _) = user(&server, 40, "mallory");

    // Alice befriends Bob and Carol, makes a group and invites them.
    let handle = |h: &str| format!(r#"{{"handle":"{h}"}}"#);
    for (friend, token) in [("bob", &bob_token), ("carol", &carol_token)] {
        ok(http(
            server.api,
            "POST",
            "/v1/friends/requests",
            &alice_token,
            &handle(friend),
        ));
        ok(http(
            server.api,
            "POST",
            "/v1/friends/requests/alice/accept",
            token,
            "",
        ));
    }
    let group = ok(http(
        server.api,
        "POST",
        "/v1/conversations/groups",
        &alice_token,
        r#"{"title":"plans"}"#,
    ));
    let group: serde_json::Value = serde_json::from_str(&group).unwrap();
    let id = group["id"].as_u64().unwrap();
    let conversation = ConversationId(id);
    for member in ["bob", "carol"] {
        ok(http(
            server.api,
            "POST",
            &format!("/v1/conversations/{id}/members"),
            &alice_token,
            &handle(member),
        ));
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
    ok(http(
        server.api,
        "DELETE",
        &format!("/v1/conversations/{id}/members/carol"),
        &alice_token,
        "",
    ));
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
