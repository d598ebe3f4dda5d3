//! Goal: a `ReconnectingClient` survives its connection being cut: it reports the drop and the
//! reconnect, resends what the server had not confirmed, and the receiver gets every message
//! exactly once. Method: dp-io's `Server` in-process on loopback, behind a TCP proxy whose
//! connections the test cuts; every wait has a deadline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use commucat_client::{
    AckMode, ConnectionConfig, Event, MessageId, Recipient, ReconnectEvent, ReconnectingClient,
    SendStatus, StaticKeypair,
};
use core::time::Duration;
use dp_core::SeededRng;
use dp_io::{Server, ServerConfig};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const WAIT: Duration = Duration::from_secs(20);

/// A TCP proxy to `target` whose live connections [`Proxy::cut`] closes.
struct Proxy {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
    target: Arc<Mutex<SocketAddr>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = live.clone();
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let to = *current.lock().unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let mut list = registry.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { addr, live, target }
    }

    /// Forwards new connections to `target` from now on.
    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Closes every connection open now.
    fn cut(&self) {
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[derive(Default)]
struct Seen {
    delivered: Vec<MessageId>,
    acked: Vec<MessageId>,
    /// Messages answered `SendAck(Delivered)` (the recipient acknowledged them live).
    acked_delivered: Vec<MessageId>,
    disconnects: usize,
    reconnects: usize,
}

fn pump(client: &mut ReconnectingClient, seen: &mut Seen) {
    while let Some(event) = client.next_event(Duration::from_millis(20)).unwrap() {
        match event {
            ReconnectEvent::Event(Event::Delivered(d)) => seen.delivered.push(d.message),
            ReconnectEvent::Event(Event::SendAck {
                message, status, ..
            }) if status != SendStatus::Retry => {
                seen.acked.push(message);
                if status == SendStatus::Delivered {
                    seen.acked_delivered.push(message);
                }
            }
            ReconnectEvent::Disconnected { .. } => seen.disconnects += 1,
            ReconnectEvent::Reconnected { .. } => seen.reconnects += 1,
            _ => {}
        }
    }
}

#[test]
fn a_cut_connection_comes_back_and_every_message_arrives_once() {
    let mut rng = SeededRng::new(5);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    let server = Server::start(config).unwrap();
    let proxy = Proxy::start(server.local_addr());
    let public = *key.public();
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = ReconnectingClient::connect(proxy.addr, ConnectionConfig::new(a_key, public), None)
        .unwrap();
    let mut b = ReconnectingClient::connect(proxy.addr, ConnectionConfig::new(b_key, public), None)
        .unwrap();
    let (mut sa, mut sb) = (Seen::default(), Seen::default());
    let to_b = Recipient::Device(b.device());

    let first = a.send(to_b, b"before the cut").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !sb.delivered.contains(&first) || !sa.acked.contains(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "first message not relayed"
        );
        pump(&mut a, &mut sa);
        pump(&mut b, &mut sb);
    }

    proxy.cut();
    // Sent into a connection that is already gone: kept and sent again after the reconnect.
    let second = a.send(to_b, b"across the cut").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !sb.delivered.contains(&second) || !sa.acked.contains(&second) {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: a {} drops {} reconnects, b {} drops {} reconnects",
            sa.disconnects,
            sa.reconnects,
            sb.disconnects,
            sb.reconnects
        );
        pump(&mut a, &mut sa);
        pump(&mut b, &mut sb);
    }
    assert!(
        sa.disconnects >= 1 && sa.reconnects >= 1,
        "a reported the drop and the reconnect"
    );
    assert!(
        sb.disconnects >= 1 && sb.reconnects >= 1,
        "b reported the drop and the reconnect"
    );
    assert_eq!(a.unacknowledged(), 0, "nothing left to resend");
    assert_eq!(
        sb.delivered.iter().filter(|m| **m == second).count(),
        1,
        "delivered once"
    );
    assert_eq!(sb.delivered.len(), 2, "{:?}", sb.delivered);
    assert!(a.reconnects() >= 1 && a.is_connected());
    server.shutdown();
}

/// Goal: under `AckMode::Application` a delivery the application has not acknowledged when
/// the connection drops is reported again after the reconnect (the carried dedup window must
/// not swallow it), and once acknowledged it is not delivered a third time.
#[test]
fn an_unacknowledged_delivery_is_reported_again_after_a_reconnect_and_not_after_its_ack() {
    let mut rng = SeededRng::new(8);
    let key = StaticKeypair::generate(&mut rng);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    config.shards = 2;
    let server = Server::start(config).unwrap();
    let proxy = Proxy::start(server.local_addr());
    let public = *key.public();
    let a_key = StaticKeypair::generate(&mut rng);
    let b_key = StaticKeypair::generate(&mut rng);
    let mut a = ReconnectingClient::connect(proxy.addr, ConnectionConfig::new(a_key, public), None)
        .unwrap();
    let mut b_config = ConnectionConfig::new(b_key, public);
    b_config.ack = AckMode::Application;
    let mut b = ReconnectingClient::connect(proxy.addr, b_config, None).unwrap();
    let (mut sa, mut sb) = (Seen::default(), Seen::default());
    let id = a
        .send(Recipient::Device(b.device()), b"ack me later")
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while sb.delivered.is_empty() {
        assert!(std::time::Instant::now() < deadline, "not delivered");
        pump(&mut a, &mut sa);
        pump(&mut b, &mut sb);
    }
    assert_eq!(sb.delivered, vec![id]);
    // No DeliveryAck went out, so no SendAck(Delivered) (a SendAck(Stored) may come: right
    // after b connects, envelopes for it may go through storage).
    assert!(sa.acked_delivered.is_empty(), "{:?}", sa.acked_delivered);

    proxy.cut();
    let deadline = std::time::Instant::now() + WAIT;
    while sb.delivered.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered again: b {} drops {} reconnects",
            sb.disconnects,
            sb.reconnects
        );
        pump(&mut a, &mut sa);
        pump(&mut b, &mut sb);
    }
    assert_eq!(
        sb.delivered,
        vec![id, id],
        "reported again after the reconnect"
    );
    assert!(sb.reconnects >= 1);
    b.ack(id);
    // A Ping behind the ack: once its Pong is back, the server has taken the ack, and a
    // later session of b gets nothing more.
    b.client_mut().expect("connected").ping(9).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "no Pong");
        match b.next_event(Duration::from_millis(20)).unwrap() {
            Some(ReconnectEvent::Event(Event::Pong { nonce: 9 })) => break,
            Some(ReconnectEvent::Event(Event::Delivered(d))) => sb.delivered.push(d.message),
            Some(ReconnectEvent::Disconnected { .. }) => panic!("dropped before the Pong"),
            _ => {}
        }
    }
    proxy.cut();
    let deadline = std::time::Instant::now() + WAIT;
    while sb.reconnects < 2 {
        assert!(std::time::Instant::now() < deadline, "no second reconnect");
        pump(&mut b, &mut sb);
    }
    let settle = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < settle {
        pump(&mut b, &mut sb);
    }
    assert_eq!(sb.delivered, vec![id, id], "not delivered a third time");
    let duplicates = b.client_mut().map(|c| c.connection().stats().duplicates);
    assert_eq!(duplicates, Some(0), "the server let go of it after the ack");
    server.shutdown();
}

/// Goal: a server restart (`GoAway`, then nothing listening for a while) is survived: the
/// client reports the drop, keeps trying with backoff while the server is down, and comes
/// back to the new server, where its message is delivered.
#[test]
fn a_server_restart_is_survived_with_backoff() {
    let mut rng = SeededRng::new(9);
    let key = StaticKeypair::generate(&mut rng);
    let start = |key: &StaticKeypair| {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
        config.shards = 1;
        Server::start(config).unwrap()
    };
    let server = start(&key);
    let proxy = Proxy::start(server.local_addr());
    let public = *key.public();
    let a_key = StaticKeypair::generate(&mut rng);
    let mut a = ReconnectingClient::connect(proxy.addr, ConnectionConfig::new(a_key, public), None)
        .unwrap();
    let mut sa = Seen::default();
    server.shutdown();
    // The old server is gone: wait until a reconnect attempt has failed at least once.
    let deadline = std::time::Instant::now() + WAIT;
    let mut failed_attempts = 0;
    while failed_attempts == 0 {
        assert!(std::time::Instant::now() < deadline, "no reconnect attempt");
        if let Some(ReconnectEvent::Disconnected { reason, .. }) =
            a.next_event(Duration::from_millis(20)).unwrap()
            && reason.starts_with("reconnect failed")
        {
            failed_attempts += 1;
        }
    }
    assert!(!a.is_connected());
    let to_self = Recipient::Device(a.device());
    let kept = a.send(to_self, b"kept while down").unwrap();
    assert_eq!(a.unacknowledged(), 1);
    let server = start(&key);
    proxy.retarget(server.local_addr());
    let deadline = std::time::Instant::now() + WAIT;
    while !sa.delivered.contains(&kept) || !sa.acked.contains(&kept) {
        assert!(
            std::time::Instant::now() < deadline,
            "not back after the restart"
        );
        pump(&mut a, &mut sa);
    }
    assert!(sa.reconnects >= 1);
    assert_eq!(a.unacknowledged(), 0);
    server.shutdown();
}
