//! The protocol test vectors: fixed keys and randomness in, every packet and key out.
//! Shared by `tests/vectors.rs` (which checks `docs/PROTOCOL.md`) and
//! `examples/protocol_vectors.rs` (which prints the blocks for it).

use dp_core::{Instant, Rng};
use dp_noise::{
    DatagramSession, Initiator, InitiatorConfig, InitiatorEvent, Responder, ResponderConfig,
    ResponderEvent, StaticKeypair, StreamSession, Suite,
};
use std::collections::VecDeque;
use std::fmt::Write;

/// Hands out scripted byte strings in draw order and panics on any unplanned draw.
pub(crate) struct ScriptedRng(pub(crate) VecDeque<Vec<u8>>);

impl ScriptedRng {
    fn take(&mut self, dest: &mut [u8]) {
        let next = self.0.pop_front().expect("an unplanned random draw");
        assert_eq!(next.len(), dest.len(), "draw of the wrong length");
        dest.copy_from_slice(&next);
    }
}

impl Rng for ScriptedRng {
    fn public_fill(&mut self, dest: &mut [u8]) {
        self.take(dest);
    }
    fn private_fill(&mut self, dest: &mut [u8]) {
        self.take(dest);
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
        .collect()
}

fn key(seed: u8) -> [u8; 32] {
    bytes(seed, 32).try_into().unwrap()
}

/// The ordered `name = hex` lines of one vector.
pub(crate) fn generate(suite: Suite) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let mut put = |name: &str, value: &[u8]| lines.push((name.to_string(), hex::encode(value)));
    let initiator_static = StaticKeypair::from_private(key(0x10));
    let responder_static = StaticKeypair::from_private(key(0x20));
    let initiator_index = vec![0x11, 0x22, 0x33, 0x44];
    let initiator_ephemeral = key(0x30);
    let initiator_kem_seed = bytes(0x40, 64);
    let responder_index = vec![0x55, 0x66, 0x77, 0x88];
    let responder_ephemeral = key(0x50);
    let responder_kem_m = bytes(0x60, 32);
    let timestamp_ms: u64 = 1_767_225_600_000;

    put("suite", &[suite.to_byte()]);
    put("prologue", &suite.prologue());
    put("initiator_static_private", initiator_static.private());
    put("initiator_static_public", initiator_static.public());
    put("responder_static_private", responder_static.private());
    put("responder_static_public", responder_static.public());
    put("initiator_index", &initiator_index);
    put("initiator_ephemeral_private", &initiator_ephemeral);
    let mut initiator_draws: VecDeque<Vec<u8>> =
        [initiator_index.clone(), initiator_ephemeral.to_vec()].into();
    let mut responder_draws: VecDeque<Vec<u8>> =
        [responder_index.clone(), responder_ephemeral.to_vec()].into();
    if suite.hybrid {
        put("initiator_kem_seed", &initiator_kem_seed);
        initiator_draws.push_back(initiator_kem_seed.clone());
    }
    put("responder_index", &responder_index);
    put("responder_ephemeral_private", &responder_ephemeral);
    if suite.hybrid {
        put("responder_kem_m", &responder_kem_m);
        responder_draws.push_back(responder_kem_m.clone());
    }
    put("timestamp_ms", &timestamp_ms.to_be_bytes());

    let now = Instant(1);
    let mut setup = dp_core::SeededRng::new(0);
    let mut responder = Responder::new(
        now,
        ResponderConfig::default(),
        responder_static.clone(),
        &mut setup,
    );
    let mut initiator = Initiator::new(
        now,
        InitiatorConfig {
            suite,
            local: initiator_static,
            remote_static: *responder_static.public(),
            timestamp_ms,
        },
    );
    let mut irng = ScriptedRng(initiator_draws);
    let mut rrng = ScriptedRng(responder_draws);
    let from = "192.0.2.1:1".parse().unwrap();
    let mut a = [0u8; 2048];
    let mut b = [0u8; 2048];
    let n = initiator.write_initiation(now, &mut irng, &mut a).unwrap();
    put("initiation", &a[..n]);
    let (client, server) = match responder.handle_packet(now, from, &a[..n], &mut b, &mut rrng) {
        Ok(ResponderEvent::Established {
            reply_len: Some(m),
            session,
        }) => {
            put("response", &b[..m]);
            let Ok(InitiatorEvent::Established {
                session: client, ..
            }) = initiator.handle_packet(now, &b[..m], &mut a)
            else {
                panic!("IK response refused")
            };
            (client, session)
        }
        Ok(ResponderEvent::Continue { len: m }) => {
            put("response", &b[..m]);
            let Ok(InitiatorEvent::Established {
                finish_len: Some(f),
                session: client,
            }) = initiator.handle_packet(now, &b[..m], &mut a)
            else {
                panic!("XK response refused")
            };
            put("finish", &a[..f]);
            let Ok(ResponderEvent::Established { session, .. }) =
                responder.handle_packet(now, from, &a[..f], &mut b, &mut rrng)
            else {
                panic!("finish refused")
            };
            (client, session)
        }
        other => panic!("initiation refused: {other:?}"),
    };
    assert!(
        irng.0.is_empty() && rrng.0.is_empty(),
        "planned randomness left over"
    );
    assert_eq!(client.handshake_hash, server.handshake_hash);
    let keys = client.danger_raw_keys();
    assert_eq!(keys, server.danger_raw_keys());
    put("handshake_hash", &client.handshake_hash);
    put("key_initiator_to_responder", &keys.initiator_to_responder);
    put("key_responder_to_initiator", &keys.responder_to_initiator);

    let plaintext = b"CommuCat test vector";
    let mut out = [0u8; 256];
    let n = DatagramSession::new(&client, now)
        .seal(now, plaintext, &mut out)
        .unwrap();
    put("transport_plaintext", plaintext);
    put("datagram_initiator_to_responder", &out[..n]);
    let n = StreamSession::new(&client, now)
        .seal_record(now, plaintext, &mut out)
        .unwrap();
    put("record_initiator_to_responder", &out[..n]);
    lines
}

/// The name of the vector of `suite`, as used in the heading of its block.
pub(crate) fn name(suite: Suite) -> String {
    suite.noise_name().to_string()
}

/// The Markdown block of one vector.
pub(crate) fn render(suite: Suite) -> String {
    let mut out = format!("```text vector {}\n", name(suite));
    for (field, value) in generate(suite) {
        writeln!(out, "{field} = {value}").unwrap();
    }
    out.push_str("```\n");
    out
}
