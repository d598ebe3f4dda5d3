//! Goal: typing indicators and receipts reach the other members of a conversation as events,
//! and application-acknowledged deliveries are delivered again until the application acks
//! them, then never again. Method: dp-io's `Server` in-process on 127.0.0.1:0 (its in-memory
//! control defines the conversation) and blocking `Client`s. Every wait has a deadline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use commucat_client::{
    AckMode, Client, Clock, ConnectionConfig, ConversationId, Dedup, Event, MessageId, ReceiptKind,
    Recipient, StaticKeypair, TypingState,
};
use core::time::Duration;
use dp_core::SeededRng;
use dp_io::{Server, ServerConfig};

const WAIT: Duration = Duration::from_secs(10);

fn server() -> (Server, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(23);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    (Server::start(config).unwrap(), *key.public(), rng)
}

fn config(key: &StaticKeypair, public: [u8; 32], ack: AckMode) -> ConnectionConfig {
    let mut config = ConnectionConfig::new(key.clone(), public);
    config.ack = ack;
    config
}

fn connect(server: &Server, config: ConnectionConfig, dedup: Option<Dedup>) -> Client<SeededRng> {
    let seed = u64::from_le_bytes(config.key.public()[..8].try_into().unwrap());
    Client::connect_with(
        server.local_addr(),
        config,
        SeededRng::new(seed),
        Clock::new(),
        dedup,
    )
    .unwrap()
}

/// The next event other than a `SendAck`, within `WAIT`.
fn next(client: &mut Client<SeededRng>) -> Event {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no event within {WAIT:?}");
        match client.next_event(left).unwrap() {
            Some(Event::SendAck { .. }) | None => {}
            Some(event) => return event,
        }
    }
}

#[test]
fn typing_and_receipts_reach_the_other_members_as_events() {
    let (server, public, mut rng) = server();
    let keys: Vec<StaticKeypair> = (0..3).map(|_| StaticKeypair::generate(&mut rng)).collect();
    let mut clients: Vec<Client<SeededRng>> = keys
        .iter()
        .map(|k| connect(&server, config(k, public, AckMode::Automatic), None))
        .collect();
    let conversation = ConversationId(41);
    // The third device is not a member: it gets nothing.
    let members = [clients[0].device(), clients[1].device()];
    assert!(server.conversations().unwrap().set(conversation, &members));

    clients[0]
        .typing(conversation, TypingState::Typing)
        .unwrap();
    assert_eq!(
        next(&mut clients[1]),
        Event::TypingFrom {
            device: members[0],
            conversation,
            state: TypingState::Typing,
        }
    );
    let read = [MessageId([1; 16]), MessageId([2; 16])];
    clients[1]
        .receipt(conversation, ReceiptKind::Read, &read)
        .unwrap();
    assert_eq!(
        next(&mut clients[0]),
        Event::ReceiptFrom {
            from: members[1],
            conversation,
            kind: ReceiptKind::Read,
            messages: read.to_vec(),
        }
    );
    let outsider = clients[2].next_event(Duration::from_millis(300)).unwrap();
    assert!(outsider.is_none(), "a non-member got {outsider:?}");
    server.shutdown();
}

/// Reads until a delivery arrives on `client`, within `WAIT`.
fn delivered(client: &mut Client<SeededRng>) -> MessageId {
    match next(client) {
        Event::Delivered(d) => d.message,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[test]
fn an_unacknowledged_delivery_comes_again_until_the_application_acks_it() {
    let (server, public, mut rng) = server();
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = connect(&server, config(&a_key, public, AckMode::Automatic), None);
    let b_config = config(&b_key, public, AckMode::Application);
    let mut b = connect(&server, b_config.clone(), None);
    let id = a.send(Recipient::Device(b.device()), b"keep me").unwrap();

    // First session: reported, not acknowledged, then the session ends.
    assert_eq!(delivered(&mut b), id);
    assert_eq!(b.connection().app_unacked(), 1);
    let dedup = b.take_dedup();
    assert!(
        !dedup.contains(id),
        "an unacknowledged id is not in the dedup window"
    );
    b.abort();

    // Second session with the carried window: reported again (not swallowed as a duplicate).
    let mut b = connect(&server, b_config.clone(), Some(dedup));
    assert_eq!(delivered(&mut b), id);
    b.ack(id).unwrap();
    assert_eq!(b.connection().stats().app_acks, 1);
    assert_eq!(b.connection().app_unacked(), 0);
    // Let the DeliveryAck reach the server before the session ends.
    b.ping(7).unwrap();
    assert_eq!(next(&mut b), Event::Pong { nonce: 7 });
    let dedup = b.take_dedup();
    assert!(dedup.contains(id));
    b.abort();

    // Third session, even without the window: nothing more.
    let mut b = connect(&server, b_config, None);
    let third = b.next_event(Duration::from_millis(500)).unwrap();
    assert!(third.is_none(), "delivered a third time: {third:?}");
    server.shutdown();
}

#[test]
fn under_automatic_acks_a_delivery_is_not_delivered_again() {
    let (server, public, mut rng) = server();
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = connect(&server, config(&a_key, public, AckMode::Automatic), None);
    let b_config = config(&b_key, public, AckMode::Automatic);
    let mut b = connect(&server, b_config.clone(), None);
    let id = a.send(Recipient::Device(b.device()), b"once").unwrap();
    assert_eq!(delivered(&mut b), id);
    b.ping(7).unwrap();
    assert_eq!(next(&mut b), Event::Pong { nonce: 7 });
    b.abort();
    let mut b = connect(&server, b_config, None);
    let again = b.next_event(Duration::from_millis(500)).unwrap();
    assert!(again.is_none(), "delivered again: {again:?}");
    server.shutdown();
}
