//! A real Noise IK handshake in memory, so that tests obtain a `PeerAuthenticated` the only
//! way production code can: from a completed handshake with the device's own key.

use dp_core::{Instant, SeededRng};
use dp_noise::{
    Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, PeerAuthenticated, Responder,
    ResponderConfig, ResponderEvent, StaticKeypair, Suite,
};

/// The device key of test device `seed` (its private half never leaves the "client").
pub fn keypair(seed: u64) -> StaticKeypair {
    StaticKeypair::generate(&mut SeededRng::new(seed.wrapping_mul(0x9e37_79b9) ^ 0x5eed))
}

/// Runs an IK handshake of the device with key `client` against a server and returns what the
/// server learned about the peer.
pub fn handshake(client: &StaticKeypair) -> PeerAuthenticated {
    let now = Instant(1);
    let mut rng = SeededRng::new(7);
    let server = StaticKeypair::generate(&mut rng);
    let mut responder = Responder::new(now, ResponderConfig::default(), server.clone(), &mut rng);
    let mut initiator = Initiator::new(
        now,
        InitiatorConfig {
            suite: Suite::new(Pattern::Ik, Cipher::ChaChaPoly, false),
            local: client.clone(),
            remote_static: *server.public(),
            timestamp_ms: 1_767_225_600_000,
        },
    );
    let mut crng = SeededRng::new(11);
    let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
    let n = initiator.write_initiation(now, &mut crng, &mut a).unwrap();
    let from = "192.0.2.1:1".parse().unwrap();
    match responder.handle_packet(now, from, &a[..n], &mut b, &mut rng) {
        Ok(ResponderEvent::Established {
            reply_len: Some(m),
            session,
        }) => {
            let Ok(InitiatorEvent::Established { .. }) =
                initiator.handle_packet(now, &b[..m], &mut a)
            else {
                panic!("IK response refused")
            };
            assert_eq!(session.peer.static_key(), client.public());
            session.peer
        }
        other => panic!("initiation refused: {other:?}"),
    }
}

/// A fresh device: its key pair and the server's view of it after a handshake.
pub fn device(seed: u64) -> (StaticKeypair, PeerAuthenticated) {
    let key = keypair(seed);
    let peer = handshake(&key);
    (key, peer)
}
