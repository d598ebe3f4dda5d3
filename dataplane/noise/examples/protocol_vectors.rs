//! Prints the handshake test vectors of `docs/PROTOCOL.md` §Test vectors.
//! `cargo run -p dp-noise --example protocol_vectors`.

#[path = "../tests/common/vector.rs"]
mod vector;

fn main() {
    for suite in dp_noise::Suite::ALL {
        println!("{}", vector::render(suite));
    }
}
