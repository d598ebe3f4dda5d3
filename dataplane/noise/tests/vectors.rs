//! Goal: the hex vectors published in `docs/PROTOCOL.md` are exactly what the code produces,
//! for every suite (XK and IK, both ciphers, classic and hybrid). Method: parse every
//! `vector` block from the document, rerun the handshake with the same keys and randomness,
//! and compare each line.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::vector;
use std::collections::BTreeMap;

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
}

/// `name → [(field, hex)]` for every block opening with "```text vector NAME".
fn published() -> BTreeMap<String, Vec<(String, String)>> {
    let doc = protocol_md();
    let mut blocks = BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```text vector ") else {
            continue;
        };
        let mut fields = Vec::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            let (field, value) = line.split_once(" = ").expect("field = hex");
            fields.push((field.to_string(), value.to_string()));
        }
        blocks.insert(name.to_string(), fields);
    }
    blocks
}

#[test]
fn protocol_md_vectors_match_the_code() {
    let blocks = published();
    for suite in dp_noise::Suite::ALL {
        let name = vector::name(suite);
        let doc = blocks
            .get(&name)
            .unwrap_or_else(|| panic!("no vector for {name}"));
        let code = vector::generate(suite);
        assert_eq!(doc.len(), code.len(), "{name}: field count");
        for ((doc_field, doc_hex), (field, hex)) in doc.iter().zip(&code) {
            assert_eq!(doc_field, field, "{name}: field order");
            assert_eq!(doc_hex, hex, "{name}: {field}");
        }
    }
    assert_eq!(
        blocks.len(),
        dp_noise::Suite::ALL.len(),
        "unexpected extra vector blocks"
    );
    // And each block stands in the document exactly as the generator prints it.
    let doc = protocol_md();
    for suite in dp_noise::Suite::ALL {
        assert!(
            doc.contains(&vector::render(suite)),
            "{}: block differs",
            vector::name(suite)
        );
    }
}

#[test]
fn vector_packets_are_refused_after_any_bit_flip() {
    // The published initiation of each suite, with one bit flipped in the Noise message, must
    // not be accepted by a responder holding the published static key.
    use dp_core::{Instant, SeededRng};
    use dp_noise::{Responder, ResponderConfig, StaticKeypair};
    for suite in dp_noise::Suite::ALL {
        let fields: BTreeMap<_, _> = vector::generate(suite).into_iter().collect();
        let private: [u8; 32] = hex::decode(&fields["responder_static_private"])
            .unwrap()
            .try_into()
            .unwrap();
        let mut rng = SeededRng::new(1);
        let mut responder = Responder::new(
            Instant(1),
            ResponderConfig::default(),
            StaticKeypair::from_private(private),
            &mut rng,
        );
        let mut init = hex::decode(&fields["initiation"]).unwrap();
        init[12] ^= 0x01;
        let mut out = [0u8; 2048];
        let from = "192.0.2.1:1".parse().unwrap();
        assert!(
            responder
                .handle_packet(Instant(1), from, &init, &mut out, &mut rng)
                .is_err()
        );
    }
}
