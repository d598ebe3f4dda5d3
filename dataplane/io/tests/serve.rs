//! Goal: the server relays over real loopback sockets across two shards — between every pair of
//! devices, to a device that went offline and came back, and says GoAway on shutdown. Method:
//! start a two-shard server on 127.0.0.1:0 and drive blocking clients of the client library
//! (`commucat-client`: Noise XK hybrid, stream records, frames). Every read has a deadline, so
//! a failure fails, never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use commucat_client::{Client, ConnectionConfig, Event};
use core::time::Duration;
use dp_core::{DeviceId, MessageId, SeededRng};
use dp_io::{Server, ServerConfig};
use dp_noise::{Cipher, Pattern, StaticKeypair, Suite};
use dp_proto::{ErrorCode, Recipient, SendStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    SendAck(MessageId, SendStatus),
    Deliver(MessageId, DeviceId, Vec<u8>),
    GoAway(ErrorCode),
    Other,
}

fn connect(
    addr: std::net::SocketAddr,
    server: &[u8; 32],
    key: &StaticKeypair,
) -> Client<SeededRng> {
    let mut config = ConnectionConfig::new(key.clone(), *server);
    config.suite = Suite::new(Pattern::Xk, Cipher::ChaChaPoly, true);
    let seed = u64::from_le_bytes(key.public()[..8].try_into().unwrap());
    Client::connect(addr, config, SeededRng::new(seed)).unwrap()
}

/// The next event (the client library acknowledges every delivery itself).
fn next(client: &mut Client<SeededRng>) -> Got {
    let event = client
        .next_event(Duration::from_secs(10))
        .unwrap()
        .expect("an event before the deadline");
    match event {
        Event::SendAck {
            message, status, ..
        } => Got::SendAck(message, status),
        Event::Delivered(d) => Got::Deliver(d.message, d.sender, d.body),
        Event::GoAway { code, .. } => Got::GoAway(code),
        _ => Got::Other,
    }
}

fn send_to(client: &mut Client<SeededRng>, to: DeviceId, id: u8, body: &[u8]) -> MessageId {
    let message = MessageId([id; 16]);
    client
        .send_with_id(message, Recipient::Device(to), body)
        .unwrap();
    message
}

fn server() -> (Server, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(7);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    (Server::start(config).unwrap(), *key.public(), rng)
}

#[test]
fn relay_between_every_pair_across_two_shards() {
    let (server, public, mut rng) = server();
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

#[test]
fn offline_recipient_gets_its_backlog_and_shutdown_says_goaway() {
    let (server, public, mut rng) = server();
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
