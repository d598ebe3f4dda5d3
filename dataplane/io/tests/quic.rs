//! Goal: `dp-io` serves the QUIC carrier: QUIC and TCP clients relay envelopes both ways
//! through a two-shard server, a QUIC session whose device is homed on the shard that did not
//! accept it works through the relay to its home shard, a client that goes away ends its
//! session, and shutdown says GoAway on QUIC as on TCP, then ends the QUIC connection, on the
//! io_uring and epoll backends. Method: a real server on 127.0.0.1 with QUIC on
//! an ephemeral UDP port, blocking clients of the client library (`QuicClient` and `Client`);
//! the shard that accepts a QUIC connection is the kernel's choice (`SO_REUSEPORT` hash), so
//! QUIC clients are added until the server's counters show a relayed one. Every wait has a
//! deadline, so a failure fails, never hangs. The scenarios run once per backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Got, client_config, got, scrape, total, wait_for};
use commucat_client::{Client, Event, QuicClient};
use core::time::Duration;
use dp_core::{DeviceId, MessageId, SeededRng};
use dp_io::{Backend, Server, ServerConfig};
use dp_noise::StaticKeypair;
use dp_proto::{ErrorCode, Recipient, SendStatus};

/// A client on either carrier.
enum Device {
    Tcp(Box<Client<SeededRng>>),
    Quic(Box<QuicClient<SeededRng>>),
}

impl Device {
    fn device(&self) -> DeviceId {
        match self {
            Self::Tcp(c) => c.device(),
            Self::Quic(c) => c.device(),
        }
    }

    fn next(&mut self) -> Got {
        let event = match self {
            Self::Tcp(c) => c.next_event(Duration::from_secs(10)),
            Self::Quic(c) => c.next_event(Duration::from_secs(10)),
        };
        let kind = match self {
            Self::Tcp(_) => "tcp",
            Self::Quic(_) => "quic",
        };
        got(event
            .unwrap_or_else(|error| panic!("{kind}: {error}"))
            .expect("an event before the deadline"))
    }

    fn send(&mut self, to: DeviceId, id: u8, body: &[u8]) -> MessageId {
        let message = MessageId([id; 16]);
        let recipient = Recipient::Device(to);
        match self {
            Self::Tcp(c) => c.send_with_id(message, recipient, body).unwrap(),
            Self::Quic(c) => c.send_with_id(message, recipient, body).unwrap(),
        }
        message
    }
}

fn config(backend: Backend) -> (ServerConfig, [u8; 32], SeededRng) {
    let mut rng = SeededRng::new(17);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    config.backend = backend;
    config.quic_listen = Some("127.0.0.1:0".parse().unwrap());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    (config, *key.public(), rng)
}

/// Sends from `from` to `to` and checks the delivery and the acknowledgement.
fn relay(devices: &mut [Device], from: usize, to: usize, id: u8) {
    let target = devices[to].device();
    let sender = devices[from].device();
    let body = vec![id; 700];
    let message = devices[from].send(target, id, &body);
    assert_eq!(devices[to].next(), Got::Deliver(message, sender, body));
    // Delivered, or Stored if it went through storage because `to` had only just connected
    // (order per recipient, docs/design/0009); delivered either way.
    let ack = devices[from].next();
    assert!(
        ack == Got::SendAck(message, SendStatus::Delivered)
            || ack == Got::SendAck(message, SendStatus::Stored),
        "{ack:?}"
    );
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
    quic_and_tcp_clients_relay_across_shards_and_shutdown_says_goaway,
    a_quic_client_that_goes_away_ends_its_session,
    an_idle_quic_session_is_closed_as_on_tcp,
    large_envelopes_reach_a_quic_client_in_gso_batches,
);

fn quic_and_tcp_clients_relay_across_shards_and_shutdown_says_goaway(backend: Backend) {
    let (config, public, mut rng) = config(backend);
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), backend);
    let quic_addr = server.quic_addr().expect("QUIC is served");
    assert_ne!(quic_addr.port(), 0);

    let tcp_key = StaticKeypair::generate(&mut rng);
    let (tcp_config, tcp_rng) = client_config(&public, &tcp_key);
    let tcp = Client::connect(server.local_addr(), tcp_config, tcp_rng).unwrap();
    let mut devices = vec![Device::Tcp(Box::new(tcp))];

    // QUIC clients until one landed on a shard that is not its device's home (each does with
    // probability 1/2; 16 tries all failing is a 1-in-65536 event).
    let mut relayed = 0;
    for _ in 0..16 {
        let key = StaticKeypair::generate(&mut rng);
        let (config, client_rng) = client_config(&public, &key);
        let client = QuicClient::connect(quic_addr, config, client_rng).unwrap();
        devices.push(Device::Quic(Box::new(client)));
        relayed = wait_for(
            server.metrics_addr().unwrap(),
            "commucat_quic_relayed_total",
            |_| true,
        );
        if relayed > 0 && devices.len() >= 3 {
            break;
        }
    }
    assert!(relayed > 0, "no QUIC session was relayed to its home shard");
    let quic_conns = wait_for(server.metrics_addr().unwrap(), "commucat_quic_conns", |n| {
        n == devices.len() as u64 - 1
    });
    assert_eq!(quic_conns, devices.len() as u64 - 1);

    // Every QUIC client with the TCP one, both ways, and the first two QUIC clients together.
    let mut id = 0u8;
    for quic in 1..devices.len() {
        for (from, to) in [(quic, 0), (0, quic)] {
            id += 1;
            relay(&mut devices, from, to, id);
        }
    }
    relay(&mut devices, 1, 2, 200);
    relay(&mut devices, 2, 1, 201);
    assert!(
        total(
            &scrape(server.metrics_addr().unwrap(), "/metrics"),
            "commucat_quic_datagrams_in_total"
        ) > 0
    );

    server.shutdown();
    for (index, device) in devices.iter_mut().enumerate() {
        assert_eq!(
            device.next(),
            Got::GoAway(ErrorCode::SHUTTING_DOWN),
            "device {index}"
        );
    }
    // After GoAway the QUIC connection ends (the stream is finished, then closed).
    for device in &mut devices[1..] {
        let Device::Quic(client) = device else {
            unreachable!()
        };
        let end = client.next_event(Duration::from_secs(10));
        assert!(
            matches!(
                end,
                Err(commucat_client::Error::Eof) | Ok(Some(Event::Closed(_)))
            ),
            "{end:?}"
        );
    }
}

fn a_quic_client_that_goes_away_ends_its_session(backend: Backend) {
    let (config, public, mut rng) = config(backend);
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), backend);
    let quic_addr = server.quic_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let key = StaticKeypair::generate(&mut rng);
        let (config, client_rng) = client_config(&public, &key);
        clients.push(QuicClient::connect(quic_addr, config, client_rng).unwrap());
    }
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_sessions", |n| n
            == 4),
        4
    );
    // Some of these are relayed (their sessions live on the other shard): closing them has
    // to reach the home shard too.
    for client in clients.drain(..3) {
        client.abort();
    }
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_sessions", |n| n
            == 1),
        1
    );
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_conns", |n| n == 1),
        1
    );
    server.shutdown();
}

fn an_idle_quic_session_is_closed_as_on_tcp(backend: Backend) {
    let (mut config, public, mut rng) = config(backend);
    config.idle_timeout = Duration::from_secs(1);
    let server = Server::start(config).unwrap();
    let key = StaticKeypair::generate(&mut rng);
    let (mut client_config, client_rng) = client_config(&public, &key);
    client_config.keepalive = None;
    let mut client = QuicClient::connect(server.quic_addr().unwrap(), client_config, client_rng)
        .expect("connects");
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_sessions", |n| n
            == 1),
        1
    );
    // Nothing is sent: the server closes the session (and its QUIC connection) at its idle
    // timeout, and the client hears the end.
    loop {
        match client.next_event(Duration::from_secs(10)) {
            // The server ended the stream and the connection (TIMEOUT), as it closes a TCP
            // socket.
            Err(commucat_client::Error::Eof) | Ok(Some(Event::Closed(_))) => break,
            Ok(Some(_)) => {}
            Ok(None) => panic!("no end within 10 s"),
            Err(error) => panic!("ended by {error}, not by the server"),
        }
    }
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_sessions", |n| n
            == 0),
        0
    );
    assert_eq!(
        wait_for(server.metrics_addr().unwrap(), "commucat_quic_conns", |n| n
            == 0),
        0
    );
    server.shutdown();
}

fn large_envelopes_reach_a_quic_client_in_gso_batches(backend: Backend) {
    let (config, public, mut rng) = config(backend);
    let server = Server::start(config).unwrap();
    let tcp_key = StaticKeypair::generate(&mut rng);
    let (tcp_config, tcp_rng) = client_config(&public, &tcp_key);
    let tcp = Client::connect(server.local_addr(), tcp_config, tcp_rng).unwrap();
    let quic_key = StaticKeypair::generate(&mut rng);
    let (quic_config, quic_rng) = client_config(&public, &quic_key);
    let quic = QuicClient::connect(server.quic_addr().unwrap(), quic_config, quic_rng).unwrap();
    let mut devices = [Device::Tcp(Box::new(tcp)), Device::Quic(Box::new(quic))];
    let target = devices[1].device();
    let sender = devices[0].device();
    // 1 MiB in 200 KiB envelopes: far more than one QUIC packet, so the server's carrier
    // sends batches of datagrams.
    let mut sent = Vec::new();
    for id in 1..=5u8 {
        let body = vec![id; 200 * 1024];
        sent.push((devices[0].send(target, id, &body), body));
    }
    for (message, body) in sent {
        assert_eq!(devices[1].next(), Got::Deliver(message, sender, body));
    }
    let batches = wait_for(
        server.metrics_addr().unwrap(),
        "commucat_quic_gso_batches_total",
        |n| n > 0,
    );
    assert!(batches > 0, "no datagram batch went out as one sendmsg");
    server.shutdown();
}

#[test]
fn auto_serves_quic_on_the_backend_it_picks() {
    let (mut config, public, mut rng) = config(Backend::Auto);
    config.uring_probe = || Ok(());
    let server = Server::start(config).unwrap();
    assert_eq!(server.backend(), Backend::Uring);
    let key = StaticKeypair::generate(&mut rng);
    let (client_config, client_rng) = client_config(&public, &key);
    let client = QuicClient::connect(server.quic_addr().unwrap(), client_config, client_rng);
    let mut client = Device::Quic(Box::new(client.unwrap()));
    let me = client.device();
    let message = client.send(me, 1, b"to myself");
    let mut both = [client.next(), client.next()];
    both.sort_by_key(|g| matches!(g, Got::SendAck(..)));
    assert_eq!(both[0], Got::Deliver(message, me, b"to myself".to_vec()));
    server.shutdown();
}
