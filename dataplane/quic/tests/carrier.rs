//! Goal: the carrier opens one stream per connection, moves bytes both ways under flow
//! control, closes after delivering what was written, times idle connections out, refuses
//! past its limit, validates addresses with Retry when asked, and shrugs off garbage. Method: a
//! server and clients on an in-memory network in simulated time (`common::Net`), no sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Net;
use core::time::Duration;
use dp_quic::{CloseCode, CloseReason, QuicConfig, QuicEvent};

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

#[test]
fn connect_opens_the_stream_and_bytes_flow_both_ways() {
    let mut net = Net::new(QuicConfig::default());
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    // The client's stream opens once the QUIC handshake is done; the server sees it only
    // when the first byte arrives (CCP-2 clients always speak first).
    assert_eq!(net.clients[c].opened(), vec![conn]);
    assert!(net.server.opened().is_empty());
    net.clients[c].send(conn, b"initiation");
    net.run();
    let opened = net.server.opened();
    assert_eq!(opened.len(), 1);
    let sconn = opened[0];
    assert!(matches!(
        net.server.events[0],
        QuicEvent::StreamOpened { peer, .. } if peer == net.clients[c].addr
    ));
    assert_eq!(net.server.rx[&sconn], b"initiation");
    net.server.send(sconn, b"response");
    net.run();
    assert_eq!(net.clients[c].rx[&conn], b"response");
    assert_eq!(net.server.carrier.conns_len(), 1);
    assert_eq!(net.server.carrier.stats().conns_accepted, 1);
}

#[test]
fn large_transfers_both_ways_are_flow_controlled_and_complete() {
    let config = QuicConfig {
        stream_receive_window: 64 * 1024,
        receive_window: 128 * 1024,
        send_window: 64 * 1024,
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    net.clients[c].send(conn, b"hello");
    net.run();
    let sconn = net.server.opened()[0];
    net.server.rx.clear();
    // The server stops reading: the client can put no more than the stream window on the
    // wire, and its writes block.
    net.server.auto_read = false;
    let up = pattern(4 << 20, 1);
    net.clients[c].send(conn, &up);
    net.run();
    let stuck = net.clients[c].tx[&conn].len();
    assert!(stuck > 0, "writes were not blocked");
    assert!(
        up.len() - stuck <= config.stream_receive_window as usize,
        "{} bytes accepted beyond the peer's window",
        up.len() - stuck
    );
    assert!(net.clients[c].writes_blocked > 0);
    // Reading again lets everything through, in order, while the server sends 1 MiB back.
    net.server.auto_read = true;
    net.server.read_all(sconn);
    let down = pattern(1 << 20, 2);
    net.server.send(sconn, &down);
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.server.rx[&sconn].len(), up.len());
    assert!(net.server.rx[&sconn] == up);
    assert!(net.clients[c].rx[&conn] == down);
    assert!(
        net.server.writes_blocked > 0,
        "64 KiB windows must block a 1 MiB write"
    );
}

#[test]
fn close_delivers_what_was_written_then_closes_with_the_code() {
    let mut net = Net::new(QuicConfig::default());
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    net.clients[c].send(conn, b"hi");
    net.run();
    let sconn = net.server.opened()[0];
    // Like the shard's last Error frame before a close: written, then closed at once.
    let last = pattern(100_000, 9);
    net.server.send(sconn, &last);
    assert!(net.server.tx[&sconn].is_empty(), "send window holds 100 kB");
    net.server
        .carrier
        .close(net.now, sconn, CloseCode::PROTOCOL);
    net.run_for(Duration::from_secs(10));
    assert!(net.clients[c].rx[&conn] == last);
    assert!(net.clients[c].finished.contains(&conn));
    assert_eq!(
        net.clients[c].closed(conn),
        Some(CloseReason::Application(u64::from(CloseCode::PROTOCOL.0)))
    );
    // A local close reports nothing, and the id is void at once.
    assert_eq!(net.server.closed(sconn), None);
    assert!(net.server.carrier.write(sconn, b"x").is_err());
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.server.carrier.conns_len(), 0);
}

#[test]
fn idle_connections_time_out_and_keep_alives_prevent_it() {
    let config = QuicConfig {
        idle_timeout: Duration::from_secs(10),
        keep_alive: Some(Duration::from_secs(3)),
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    net.clients[c].send(conn, b"hi");
    net.run();
    let sconn = net.server.opened()[0];
    // A minute of silence with keep-alives: still up.
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.server.closed(sconn), None);
    assert_eq!(net.clients[c].closed(conn), None);
    // Cut the path: both sides give up after the idle timeout.
    net.cut = true;
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.server.closed(sconn), Some(CloseReason::TimedOut));
    assert_eq!(net.clients[c].closed(conn), Some(CloseReason::TimedOut));
    assert_eq!(net.server.carrier.conns_len(), 0);
    assert_eq!(net.server.carrier.stats().conns_lost, 1);
}

#[test]
fn connections_past_the_limit_are_refused() {
    let config = QuicConfig {
        conns_max: 1,
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let a = net.add_client();
    let b = net.add_client();
    let conn_a = net.connect(a);
    net.run();
    let conn_b = net.connect(b);
    net.run();
    assert_eq!(net.clients[a].opened(), vec![conn_a]);
    assert!(net.clients[b].opened().is_empty());
    // QUIC's CONNECTION_REFUSED (0x2).
    assert_eq!(
        net.clients[b].closed(conn_b),
        Some(CloseReason::PeerTransport(0x2))
    );
    assert_eq!(net.server.carrier.stats().conns_refused, 1);
    assert_eq!(net.server.carrier.conns_len(), 1);
}

#[test]
fn retry_validates_the_address_first() {
    let config = QuicConfig {
        retry: true,
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    net.clients[c].send(conn, b"after retry");
    net.run();
    assert_eq!(net.server.carrier.stats().retries_sent, 1);
    let sconn = net.server.opened()[0];
    assert_eq!(net.server.rx[&sconn], b"after retry");
}

#[test]
fn garbage_is_dropped_and_the_connection_goes_on() {
    let mut net = Net::new(QuicConfig::default());
    let c = net.add_client();
    let conn = net.connect(c);
    net.run();
    net.clients[c].send(conn, b"one");
    net.run();
    let from = net.clients[c].addr;
    let before = net.server.carrier.stats().datagrams_dropped;
    let now = net.now;
    for garbage in [
        &[][..],
        &[0x00][..],
        &[0x40; 40][..],
        &[0xff; 1200][..],
        b"\x16\x03\x01 not quic at all",
    ] {
        net.server
            .carrier
            .handle_datagram(now, from, None, None, garbage);
    }
    let after = net.server.carrier.stats().datagrams_dropped;
    assert!(after > before, "garbage was not counted as dropped");
    net.run();
    let sconn = net.server.opened()[0];
    net.clients[c].send(conn, b" two");
    net.run();
    assert_eq!(net.server.rx[&sconn], b"one two");
    assert_eq!(net.server.closed(sconn), None);
}

#[test]
fn a_run_is_reproducible_from_its_seeds() {
    // Connection ids, the endpoints' generators and the certificate come from the seeded Rng;
    // only TLS's own randoms do not, and they change no sizes or timings.
    let run = || {
        let mut net = Net::new(QuicConfig::default());
        let c = net.add_client();
        let conn = net.connect(c);
        net.run();
        net.clients[c].send(conn, &pattern(50_000, 3));
        net.run();
        (net.delivered, net.now, net.server.events.clone())
    };
    let (first, second) = (run(), run());
    assert_eq!(first.0, second.0);
    assert_eq!(first.1, second.1);
    assert_eq!(format!("{:?}", first.2), format!("{:?}", second.2));
}

#[test]
fn stream_calls_before_open_and_after_close_are_typed_errors() {
    use dp_quic::StreamError;
    let mut net = Net::new(QuicConfig::default());
    let c = net.add_client();
    let conn = net.connect(c);
    // Before the handshake completes the stream does not exist yet.
    assert_eq!(
        net.clients[c].carrier.write(conn, b"early"),
        Err(StreamError::NotOpen)
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        net.clients[c].carrier.read(conn, &mut buf),
        Err(StreamError::NotOpen)
    );
    net.run();
    assert_eq!(net.clients[c].carrier.write(conn, b"now"), Ok(3));
    // After a local close the id is void: reads and writes fail, a second close is harmless.
    let now = net.now;
    net.clients[c].carrier.close(now, conn, CloseCode::NO_ERROR);
    net.clients[c].carrier.close(now, conn, CloseCode::NO_ERROR);
    assert_eq!(
        net.clients[c].carrier.read(conn, &mut buf),
        Err(StreamError::Closed)
    );
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.clients[c].carrier.conns_len(), 0);
    assert_eq!(
        net.clients[c].carrier.write(conn, b"x"),
        Err(StreamError::UnknownConnection)
    );
}

#[test]
fn connections_are_capped_per_source_address_not_per_port() {
    let config = QuicConfig {
        conns_per_source_max: 1,
        ..QuicConfig::default()
    };
    let mut net = Net::new(config);
    let a = net.add_client();
    let same_address = net.add_client();
    let elsewhere = net.add_client_at("203.0.113.9:7000".parse().unwrap());
    let conns: Vec<_> = [a, same_address, elsewhere]
        .into_iter()
        .map(|c| {
            let conn = net.connect(c);
            net.run();
            conn
        })
        .collect();
    assert_eq!(net.clients[a].opened(), vec![conns[0]]);
    assert_eq!(
        net.clients[same_address].closed(conns[1]),
        Some(CloseReason::PeerTransport(0x2))
    );
    assert_eq!(net.clients[elsewhere].opened(), vec![conns[2]]);
    assert_eq!(net.server.carrier.stats().conns_refused, 1);
    // When the first connection is gone, its address may connect again.
    let now = net.now;
    net.clients[a]
        .carrier
        .close(now, conns[0], CloseCode::NO_ERROR);
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.server.carrier.conns_len(), 1);
    let again = net.connect(same_address);
    net.run();
    assert_eq!(net.clients[same_address].opened(), vec![again]);
}
