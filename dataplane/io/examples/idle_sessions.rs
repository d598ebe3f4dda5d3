//! Opens N sessions to a running server (Noise XK handshake, `Hello` and `Welcome` each, through
//! the client library) and holds them idle until standard input closes, so the server's memory
//! per idle session can be read from `/proc/PID/status` before and after. `bench idle` does the
//! same and reads the memory itself.
//!
//! `cargo run --release -p dp-io --example idle_sessions -- HOST:PORT SERVER_PUBLIC_KEY_HEX N`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use commucat_client::{Client, ConnectionConfig};
use dp_core::SeededRng;
use dp_noise::StaticKeypair;
use std::io::Read;
use std::net::ToSocketAddrs;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .expect("HOST:PORT")
        .to_socket_addrs()
        .unwrap()
        .next()
        .expect("an address");
    let server: [u8; 32] = hex::decode(args.get(1).expect("server public key"))
        .unwrap()
        .try_into()
        .unwrap();
    let count: usize = args.get(2).map_or(1000, |n| n.parse().unwrap());
    let mut rng = SeededRng::new(9);
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let key = StaticKeypair::generate(&mut rng);
        let mut config = ConnectionConfig::new(key, server);
        // Idle means idle: no keepalive traffic while the memory is read.
        config.keepalive = None;
        let client = Client::connect(addr, config, SeededRng::new(i as u64)).unwrap();
        held.push(client.into_parts().0);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} sessions", i + 1);
        }
    }
    println!("holding {count} idle sessions; close stdin to release them");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
}
