//! Prints the handshake test vectors of `docs/PROTOCOL.md` §Test vectors.
//! `cargo run -p dp-noise --example protocol_vectors`.

// A developer tool: failing loudly is right.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/vector.rs"]
mod vector;

fn main() {
    for suite in dp_noise::Suite::ALL {
        println!("{}", vector::render(suite));
    }
}
