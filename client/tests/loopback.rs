//! Goal: the client library works against the real server over real loopback sockets — every
//! handshake suite, send/deliver/acknowledge, deduplication across a reconnect, GoAway on
//! shutdown. Method: start dp-io's `Server` in-process on 127.0.0.1:0 and drive blocking
//! `Client`s. Every wait has a deadline, so a failure fails, never hangs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use commucat_client::{
    Client, Clock, ConnectionConfig, Event, Recipient, SendStatus, StaticKeypair, Suite,
};
use core::time::Duration;
use dp_core::SeededRng;
use dp_io::{Server, ServerConfig};
use dp_proto::ErrorCode;
use std::io::Read;

const WAIT: Duration = Duration::from_secs(10);

fn server(shards: u16) -> (Server, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(11);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = shards;
    (Server::start(config).unwrap(), *key.public(), rng)
}

fn connect(
    server: &Server,
    public: [u8; 32],
    key: &StaticKeypair,
    suite: Suite,
) -> Client<SeededRng> {
    let mut config = ConnectionConfig::new(key.clone(), public);
    config.suite = suite;
    let seed = u64::from_le_bytes(key.public()[..8].try_into().unwrap());
    Client::connect(server.local_addr(), config, SeededRng::new(seed)).unwrap()
}

/// The next event that is not a keepalive Pong, within `WAIT`.
fn next(client: &mut Client<SeededRng>) -> Event {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no event within {WAIT:?}");
        if let Some(event) = client.next_event(left).unwrap() {
            return event;
        }
    }
}

#[test]
fn every_suite_connects_and_relays_both_ways() {
    let (server, public, mut rng) = server(2);
    for suite in Suite::ALL {
        let a_key = StaticKeypair::generate(&mut rng);
        let b_key = StaticKeypair::generate(&mut rng);
        let mut a = connect(&server, public, &a_key, suite);
        let mut b = connect(&server, public, &b_key, suite);
        let Some(Event::Connected { device, .. }) = a.welcome() else {
            panic!("{suite:?}: no Welcome")
        };
        assert_eq!(*device, a.device(), "{suite:?}");
        relay(&mut a, &mut b, suite);
        relay(&mut b, &mut a, suite);
    }
    server.shutdown();
}

fn relay(from: &mut Client<SeededRng>, to: &mut Client<SeededRng>, suite: Suite) {
    {
        {
            let body = vec![suite.to_byte(); 1000];
            let id = from.send(Recipient::Device(to.device()), &body).unwrap();
            match next(to) {
                Event::Delivered(d) => {
                    assert_eq!((d.message, d.sender, &d.body), (id, from.device(), &body));
                }
                other => panic!("{suite:?}: {other:?}"),
            }
            // The recipient's DeliveryAck goes out on its next call.
            assert!(to.next_event(Duration::from_millis(1)).unwrap().is_none());
            // Delivered, or Stored: right after a device connects, its first envelopes may go
            // through storage until control confirms it holds nothing older for it (order per
            // recipient, docs/design/0009).
            match next(from) {
                Event::SendAck {
                    message,
                    status: SendStatus::Delivered | SendStatus::Stored,
                    seq: 0,
                } => assert_eq!(message, id, "{suite:?}"),
                other => panic!("{suite:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_redelivered_message_is_acknowledged_but_not_reported_twice() {
    let (server, public, mut rng) = server(1);
    let suite = Suite::ALL[0];
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = connect(&server, public, &a_key, suite);
    let b = connect(&server, public, &b_key, suite);
    let id = a.send(Recipient::Device(b.device()), b"once").unwrap();
    // B reads the delivery on its own loop and goes away before its DeliveryAck is written:
    // the server stores the message, tells A so, and delivers it again to B's next session.
    let (mut stream, mut conn, clock) = b.into_parts();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 65536];
    let first = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "server closed");
        conn.handle_input(clock.now(), &buf[..n]).unwrap();
        if let Some(Event::Delivered(d)) =
            core::iter::from_fn(|| conn.poll_event()).find(|e| matches!(e, Event::Delivered(_)))
        {
            break d;
        }
    };
    assert_eq!(first.message, id);
    let dedup = conn.take_dedup();
    assert!(dedup.contains(id));
    drop(stream);
    assert_eq!(
        next(&mut a),
        Event::SendAck {
            message: id,
            status: SendStatus::Stored,
            seq: 0
        }
    );
    let mut config = ConnectionConfig::new(b_key.clone(), public);
    config.suite = suite;
    let mut b = Client::connect_with(
        server.local_addr(),
        config,
        SeededRng::new(99),
        Clock::new(),
        Some(dedup),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while b.connection().stats().duplicates == 0 {
        assert!(std::time::Instant::now() < deadline, "no redelivery");
        if let Some(event) = b.next_event(Duration::from_millis(50)).unwrap() {
            assert!(
                !matches!(event, Event::Delivered(_)),
                "a duplicate reached the application: {event:?}"
            );
        }
    }
    assert_eq!(b.connection().stats().delivered, 0);
    // The duplicate was acknowledged: a third session gets nothing more.
    assert!(b.next_event(Duration::from_millis(1)).unwrap().is_none());
    b.abort();
    assert_eq!(
        a.connection().stats().send_acks,
        1,
        "one SendAck per message"
    );
    let mut b3 = connect(&server, public, &b_key, suite);
    assert!(b3.next_event(Duration::from_millis(300)).unwrap().is_none());
    server.shutdown();
}

#[test]
fn shutdown_sends_goaway_and_closes() {
    let (server, public, mut rng) = server(2);
    let key = StaticKeypair::generate(&mut rng);
    let mut client = connect(&server, public, &key, Suite::ALL[3]);
    server.shutdown();
    assert!(matches!(
        next(&mut client),
        Event::GoAway {
            code: ErrorCode::SHUTTING_DOWN,
            ..
        }
    ));
    assert!(matches!(next(&mut client), Event::Closed(_)));
    assert_eq!(client.connection().state(), commucat_client::State::Closed);
    assert!(
        client
            .send(Recipient::Device(client.device()), b"late")
            .is_err()
    );
}

/// Bursts of 64 one-KiB messages per write, in records of at most `record_len_max` bytes.
fn bursts(record_len_max: usize) {
    let (server, public, mut rng) = server(1);
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut b = connect(&server, public, &b_key, Suite::ALL[0]);
    let mut config = ConnectionConfig::new(a_key, public);
    config.record_len_max = record_len_max;
    let a = Client::connect(server.local_addr(), config, SeededRng::new(5)).unwrap();
    let (mut stream, mut conn, clock) = a.into_parts();
    let body = vec![7u8; 1024];
    for _ in 0..20 {
        for _ in 0..64 {
            let id = conn.new_message_id();
            conn.send(clock.now(), id, Recipient::Device(b.device()), &body)
                .unwrap();
        }
        let out = conn.poll_transmit(clock.now()).unwrap().to_vec();
        std::io::Write::write_all(&mut stream, &out).unwrap();
        conn.handle_written(out.len());
        let mut delivered = 0;
        while delivered < 64 {
            if let Event::Delivered(_) = next(&mut b) {
                delivered += 1;
            }
        }
    }
    server.shutdown();
}

#[test]
fn bursts_in_default_records_are_relayed() {
    bursts(commucat_client::RECORD_LEN_MAX_DEFAULT);
}

/// Records of the largest size PROTOCOL.md allows, in bursts: a read that lands on a partial
/// full-size record must not count as too much input.
#[test]
fn full_size_records_in_bursts_are_accepted() {
    bursts(dp_core::limits::RECORD_PLAINTEXT_LEN_MAX);
}

/// Goal: session operations (`commucat_client::ops`) keep the server's refusal, hand the
/// events that arrive before the answer to the handler, and stop when the handler fails.
/// Method: dp-io's in-memory control, which has no accounts and answers every operation
/// `NOT_FOUND`; a `Ping` sent first is answered by the shard before the operation's
/// `Response` comes back from control, so its `Pong` always arrives meanwhile.
#[test]
fn session_operations_keep_refusals_and_hand_over_what_arrives_meanwhile() {
    use commucat_client::{OpError, Ops, ops};
    let (server, public, mut rng) = server(1);
    let key = StaticKeypair::generate(&mut rng);
    let mut client = connect(&server, public, &key, Suite::ALL[0]);

    let error = ops::issue_token(&mut client).unwrap_err();
    assert_eq!(error.status(), Some(ErrorCode::NOT_FOUND), "{error}");
    assert_eq!(error.code(), None, "{error:?}");

    client.ping(7).unwrap();
    let mut seen = Vec::new();
    let error = Ops::new(&mut client)
        .wait(WAIT)
        .on_event(|event| {
            seen.push(event);
            Ok(())
        })
        .register("alice", "phone")
        .unwrap_err();
    assert!(
        matches!(
            error,
            OpError::Refused {
                status: ErrorCode::NOT_FOUND,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Pong { nonce: 7, .. })),
        "{seen:?}"
    );

    client.ping(8).unwrap();
    let error = Ops::new(&mut client)
        .on_event(|_| Err("the inbox is full".into()))
        .claim_pairing_code("ABCDE-FGHIJ", "phone")
        .unwrap_err();
    assert!(matches!(error, OpError::Handler(_)), "{error:?}");
    assert_eq!(error.to_string(), "the inbox is full");
    server.shutdown();
}

/// Goal: a client polled only with a zero timeout (an event loop that never blocks on one
/// client, as `bench` polls many) still reads its socket: the delivery arrives and is
/// acknowledged. Method: the recipient calls `next_event(Duration::ZERO)` between short
/// pauses until the delivery appears, under a deadline; the sender then gets its acknowledgement.
#[test]
fn polling_with_a_zero_timeout_reads_the_socket() {
    let (server, public, mut rng) = server(1);
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = connect(&server, public, &a_key, Suite::ALL[0]);
    let mut b = connect(&server, public, &b_key, Suite::ALL[0]);
    let id = a.send(Recipient::Device(b.device()), b"zero").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let delivered = loop {
        assert!(std::time::Instant::now() < deadline, "nothing read");
        match b.next_event(Duration::ZERO).unwrap() {
            Some(Event::Delivered(d)) => break d,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    assert_eq!((delivered.message, &delivered.body[..]), (id, &b"zero"[..]));
    // The acknowledgement goes out on the next poll, and the sender hears of it.
    let ack = loop {
        assert!(std::time::Instant::now() < deadline, "no acknowledgement");
        let _ = b.next_event(Duration::ZERO).unwrap();
        if let Some(Event::SendAck {
            message, status, ..
        }) = a.next_event(Duration::from_millis(5)).unwrap()
        {
            break (message, status);
        }
    };
    // Right after a connect an envelope may go through storage first (`Stored`).
    assert_eq!(ack.0, id);
    assert!(
        matches!(ack.1, SendStatus::Delivered | SendStatus::Stored),
        "{ack:?}"
    );
    server.shutdown();
}
