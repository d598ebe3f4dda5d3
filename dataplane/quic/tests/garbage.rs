//! Goal: no datagram, however random or mangled, makes the server panic, and none disturbs a
//! live connection (a mangled packet cannot authenticate). Method: proptest draws random
//! datagrams and mutations (byte flips, truncations, extensions) of real ones captured from a
//! handshake and a data exchange, including short-header packets that carry a live connection
//! id; all go to the server, then the live connection must still carry bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Net;
use dp_quic::QuicConfig;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Mangle {
    Random(Vec<u8>),
    Flip { pick: usize, at: usize, xor: u8 },
    Truncate { pick: usize, len: usize },
    Extend { pick: usize, tail: Vec<u8> },
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1500).prop_map(Mangle::Random),
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(pick, at, xor)| Mangle::Flip {
            pick,
            at,
            xor
        }),
        (any::<usize>(), any::<usize>()).prop_map(|(pick, len)| Mangle::Truncate { pick, len }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(pick, tail)| Mangle::Extend { pick, tail }),
    ]
}

fn apply(mangle: &Mangle, captured: &[Vec<u8>]) -> Vec<u8> {
    let pick = |i: usize| captured[i % captured.len()].clone();
    match mangle {
        Mangle::Random(bytes) => bytes.clone(),
        Mangle::Flip { pick: p, at, xor } => {
            let mut bytes = pick(*p);
            let at = at % bytes.len();
            bytes[at] ^= xor;
            bytes
        }
        Mangle::Truncate { pick: p, len } => {
            let mut bytes = pick(*p);
            bytes.truncate(len % bytes.len());
            bytes
        }
        Mangle::Extend { pick: p, tail } => {
            let mut bytes = pick(*p);
            bytes.extend_from_slice(tail);
            bytes
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mangled_datagrams_never_panic_nor_break_a_live_connection(
        mangles in proptest::collection::vec(mangle(), 1..24),
        from_client in any::<bool>(),
    ) {
        let mut net = Net::new(QuicConfig::default());
        let c = net.add_client();
        let conn = net.connect(c);
        net.run();
        net.clients[c].send(conn, b"first");
        net.run();
        let captured = net.to_server.clone();
        prop_assert!(captured.len() >= 3);
        // From the client's own address (as a spoofer on path would) or from a stranger.
        let from = if from_client {
            net.clients[c].addr
        } else {
            "203.0.113.5:999".parse().unwrap()
        };
        let now = net.now;
        for m in &mangles {
            let bytes = apply(m, &captured);
            net.server.carrier.handle_datagram(now, from, None, None, &bytes);
        }
        net.run();
        net.clients[c].send(conn, b" second");
        net.run();
        let sconn = net.server.opened()[0];
        prop_assert_eq!(&net.server.rx[&sconn], b"first second");
        prop_assert_eq!(net.server.closed(sconn), None);
        prop_assert_eq!(net.clients[c].closed(conn), None);
    }
}
