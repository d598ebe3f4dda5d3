//! The responder takes any bytes as a handshake packet without panicking, and a refused packet
//! leaves no pending state behind. Flag bit 1 makes the target recompute `mac1` (which needs
//! only the server's public key, as an attacker can) so that mutated initiations reach the
//! Noise code instead of stopping at the MAC check.
#![no_main]

use dp_core::{Instant, SeededRng};
use dp_noise::cookie::{mac, mac1_key};
use dp_noise::{Responder, ResponderConfig, StaticKeypair};
use libfuzzer_sys::fuzz_target;

/// The responder static key of the test vectors in docs/PROTOCOL.md §10, so that the seed
/// corpus (the vectors' Initiations) passes `mac1` and reaches the Noise code.
const RESPONDER_PRIVATE: &str = "20272e353c434a51585f666d747b828990979ea5acb3bac1c8cfd6dde4ebf2f9";

fuzz_target!(|data: &[u8]| {
    let private: [u8; 32] = decode_hex(RESPONDER_PRIVATE);
    let mut rng = SeededRng::new(1);
    let mut responder = Responder::new(
        Instant(1),
        ResponderConfig::default(),
        StaticKeypair::from_private(private),
        &mut rng,
    );
    // The first byte picks the load state, so both the cookie path and the Noise path run.
    let (flags, packet) = data.split_first().map_or((0, data), |(f, rest)| (*f, rest));
    responder.set_under_load(flags & 1 == 1);
    let mut packet = packet.to_vec();
    if flags & 2 == 2 && packet.first() == Some(&0x01) && packet.len() >= 40 {
        let mac1_at = packet.len() - 32;
        let key = mac1_key(responder.static_public());
        let mac1 = mac(&key, &packet[..mac1_at]);
        packet[mac1_at..mac1_at + 16].copy_from_slice(&mac1);
    }
    let from = "192.0.2.1:1".parse().unwrap();
    let mut out = [0u8; 2048];
    let before = responder.pending_len();
    if responder
        .handle_packet(Instant(2), from, &packet, &mut out, &mut rng)
        .is_err()
    {
        assert_eq!(
            responder.pending_len(),
            before,
            "a refused packet kept state"
        );
    }
});

fn decode_hex(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
