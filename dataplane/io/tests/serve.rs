//! Goal: the server relays over real loopback sockets across two shards — between every pair of
//! devices, to a device that went offline and came back, and says GoAway on shutdown — on both
//! backends (io_uring and epoll), and the backend choice does what it says. Method: start a
//! two-shard server on 127.0.0.1:0 and drive blocking clients of the client library
//! (`commucat-client`: Noise XK hybrid, stream records, frames); every scenario runs once per
//! backend. Every read has a deadline, so a failure fails, never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Got, client_config, got};
use commucat_client::{Client, Event};
use core::time::Duration;
use dp_core::{ConversationId, DeviceId, MessageId, SeededRng};
use dp_io::{Backend, Server, ServerConfig, StartError, UringUnavailable};
use dp_noise::StaticKeypair;
use dp_proto::{ErrorCode, Recipient, SendStatus};

fn connect(
    addr: std::net::SocketAddr,
    server: &[u8; 32],
    key: &StaticKeypair,
) -> Client<SeededRng> {
    let (config, rng) = client_config(server, key);
    Client::connect(addr, config, rng).unwrap()
}

/// The next event (the client library acknowledges every delivery itself).
fn next(client: &mut Client<SeededRng>) -> Got {
    let event = client
        .next_event(Duration::from_secs(10))
        .unwrap()
        .expect("an event before the deadline");
    got(event)
}

fn send_to(client: &mut Client<SeededRng>, to: DeviceId, id: u8, body: &[u8]) -> MessageId {
    let message = MessageId([id; 16]);
    client
        .send_with_id(message, Recipient::Device(to), body)
        .unwrap();
    message
}

fn config(backend: Backend) -> (ServerConfig, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(7);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    config.backend = backend;
    (config, *key.public(), rng)
}

fn server(backend: Backend) -> (Server, [u8; 32], SeededRng) {
    let (config, public, rng) = config(backend);
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), backend, "runs on the backend asked for");
    (server, public, rng)
}

/// Runs a scenario once per backend: `name::uring` and `name::epoll`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn uring() {
                super::$scenario(dp_io::Backend::Uring);
            }

            #[test]
            fn epoll() {
                super::$scenario(dp_io::Backend::Epoll);
            }
        }
    )*};
}

on_both_backends!(
    conversation_fans_out_across_shards_in_sequence,
    relay_between_every_pair_across_two_shards,
    offline_recipient_gets_its_backlog_and_shutdown_says_goaway,
);

fn relay_between_every_pair_across_two_shards(backend: Backend) {
    let (server, public, mut rng) = server(backend);
    let keys: Vec<StaticKeypair> = (0..6).map(|_| StaticKeypair::generate(&mut rng)).collect();
    let mut clients: Vec<Client<SeededRng>> = keys
        .iter()
        .map(|k| connect(server.local_addr(), &public, k))
        .collect();
    let mut id = 0u8;
    for from in 0..clients.len() {
        for to in 0..clients.len() {
            if from == to {
                continue;
            }
            id += 1;
            let target = clients[to].device();
            let body = vec![id; 1024];
            let message = send_to(&mut clients[from], target, id, &body);
            let sender = clients[from].device();
            assert_eq!(next(&mut clients[to]), Got::Deliver(message, sender, body));
            // Delivered, or Stored if it went through storage because `to` had only just
            // connected (order per recipient, docs/design/0009); delivered either way.
            let ack = next(&mut clients[from]);
            assert!(
                ack == Got::SendAck(message, SendStatus::Delivered)
                    || ack == Got::SendAck(message, SendStatus::Stored),
                "{ack:?}"
            );
        }
    }
    server.shutdown();
}

fn offline_recipient_gets_its_backlog_and_shutdown_says_goaway(backend: Backend) {
    let (server, public, mut rng) = server(backend);
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = connect(server.local_addr(), &public, &a_key);
    let b_device = dp_noise::device_id(b_key.public());
    let sent: Vec<MessageId> = (1..=5u8)
        .map(|i| send_to(&mut a, b_device, i, b"while away"))
        .collect();
    for message in &sent {
        assert_eq!(next(&mut a), Got::SendAck(*message, SendStatus::Stored));
    }
    let mut b = connect(server.local_addr(), &public, &b_key);
    let mut received = Vec::new();
    while received.len() < sent.len() {
        if let Got::Deliver(id, sender, _) = next(&mut b) {
            assert_eq!(sender, a.device());
            // The library already drops duplicates; a repeat here would be a library bug.
            assert!(!received.contains(&id), "delivered twice: {id:?}");
            received.push(id);
        }
    }
    assert_eq!(received, sent);
    server.shutdown();
    assert_eq!(next(&mut a), Got::GoAway(ErrorCode::SHUTTING_DOWN));
    assert_eq!(next(&mut b), Got::GoAway(ErrorCode::SHUTTING_DOWN));
}

fn conversation_fans_out_across_shards_in_sequence(backend: Backend) {
    let (server, public, mut rng) = server(backend);
    let keys: Vec<StaticKeypair> = (0..4).map(|_| StaticKeypair::generate(&mut rng)).collect();
    let mut clients: Vec<Client<SeededRng>> = keys
        .iter()
        .map(|k| connect(server.local_addr(), &public, k))
        .collect();
    let conversation = ConversationId(77);
    let members: Vec<DeviceId> = clients[..3].iter().map(Client::device).collect();
    assert!(server.conversations().unwrap().set(conversation, &members));
    let mut last_seq = 0;
    for i in 1..=5u8 {
        let from = usize::from(i) % 3;
        let message = MessageId([i; 16]);
        clients[from]
            .send_with_id(message, Recipient::Conversation(conversation), &[i])
            .unwrap();
        let sender = clients[from].device();
        let mut seq = 0;
        for (to, client) in clients[..3].iter_mut().enumerate() {
            if to == from {
                continue;
            }
            let event = client
                .next_event(Duration::from_secs(10))
                .unwrap()
                .expect("a delivery");
            let Event::Delivered(d) = event else {
                panic!("{event:?}");
            };
            assert_eq!(
                (d.message, d.sender, d.conversation),
                (message, sender, conversation)
            );
            assert!(seq == 0 || seq == d.seq, "one number for every copy");
            seq = d.seq;
        }
        assert!(seq > last_seq, "sequence numbers increase");
        last_seq = seq;
        let ack = clients[from]
            .next_event(Duration::from_secs(10))
            .unwrap()
            .expect("an ack");
        assert!(
            matches!(ack, Event::SendAck { message: m, status: SendStatus::Delivered | SendStatus::Stored, seq: s } if m == message && s == seq),
            "{ack:?}"
        );
    }
    // The fourth device is no member: the same answer as for a conversation that does not
    // exist.
    for id in [conversation, ConversationId(78)] {
        clients[3]
            .send_with_id(MessageId([9; 16]), Recipient::Conversation(id), b"?")
            .unwrap();
        let event = clients[3].next_event(Duration::from_secs(10)).unwrap();
        assert_eq!(
            event,
            Some(Event::Error {
                code: ErrorCode::NOT_FOUND,
                frame_type: 0x10
            })
        );
    }
    server.shutdown();
}

fn serves(server: &Server, public: &[u8; 32], rng: &mut SeededRng) {
    let key = StaticKeypair::generate(rng);
    let mut client = connect(server.local_addr(), public, &key);
    let me = client.device();
    let message = send_to(&mut client, me, 1, b"to myself");
    let mut got = [next(&mut client), next(&mut client)];
    got.sort_by_key(|g| matches!(g, Got::SendAck(..)));
    assert_eq!(got[0], Got::Deliver(message, me, b"to myself".to_vec()));
    // Stored if it went through storage because the session had only just opened.
    assert!(
        got[1] == Got::SendAck(message, SendStatus::Delivered)
            || got[1] == Got::SendAck(message, SendStatus::Stored),
        "{:?}",
        got[1]
    );
}

fn no_uring() -> Result<(), UringUnavailable> {
    Err(UringUnavailable::PermissionDenied)
}

#[test]
fn forced_epoll_runs_on_epoll_even_where_uring_works() {
    let (mut config, public, mut rng) = config(Backend::Epoll);
    config.uring_probe = || Ok(());
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Epoll);
    assert_eq!(server.fallback_reason(), None);
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn uring_refuses_to_start_without_io_uring_and_says_why() {
    let (mut config, _, _) = config(Backend::Uring);
    config.uring_probe = no_uring;
    let error = Server::start(config).unwrap_err();
    let StartError::Uring(reason) = &error else {
        panic!("a typed io_uring error, not {error:?}")
    };
    assert_eq!(*reason, UringUnavailable::PermissionDenied);
    let text = error.to_string();
    assert!(text.contains("seccomp"), "says why: {text}");
    assert!(
        text.contains("--backend epoll"),
        "says what to change: {text}"
    );
}

#[test]
fn auto_falls_back_to_epoll_without_io_uring() {
    let (mut config, public, mut rng) = config(Backend::Auto);
    config.uring_probe = no_uring;
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Epoll);
    assert_eq!(
        server.fallback_reason(),
        Some(&UringUnavailable::PermissionDenied)
    );
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn auto_picks_uring_where_the_probe_passes() {
    let (mut config, public, mut rng) = config(Backend::Auto);
    config.uring_probe = || Ok(());
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Uring);
    serves(&server, &public, &mut rng);
    server.shutdown();
}

#[test]
fn the_real_probe_passes_on_this_machine() {
    // The machines this project builds and tests on run io_uring (kernel 6.x, not disabled);
    // if this fails, the uring tests above cannot pass either, and this says why.
    if let Err(reason) = dp_io::probe_uring() {
        panic!("io_uring is unavailable here: {reason}");
    }
}
