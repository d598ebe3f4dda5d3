//! Opens N sessions to a running server (Noise XK handshake and Hello each) and holds them
//! idle until standard input closes, so the server's memory per idle session can be read from
//! `/proc/PID/status` before and after.
//!
//! `cargo run --release -p dp-io --example idle_sessions -- HOST:PORT SERVER_PUBLIC_KEY_HEX N`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use dp_core::{Instant, SeededRng};
use dp_noise::{
    Cipher, Initiator, InitiatorConfig, InitiatorEvent, Pattern, StaticKeypair, StreamSession,
    Suite,
};
use dp_proto::{Capabilities, Frame, Hello, Versions};
use std::io::{Read, Write};
use std::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().expect("HOST:PORT").clone();
    let server: [u8; 32] = hex::decode(args.get(1).expect("server public key"))
        .unwrap()
        .try_into()
        .unwrap();
    let count: usize = args.get(2).map_or(1000, |n| n.parse().unwrap());
    let mut rng = SeededRng::new(9);
    let now = Instant(1);
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let key = StaticKeypair::generate(&mut rng);
        let mut stream = TcpStream::connect(&addr).unwrap();
        let config = InitiatorConfig {
            suite: Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false),
            local: key,
            remote_static: server,
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(now, config);
        let mut buf = [0u8; 2048];
        let n = initiator.write_initiation(now, &mut rng, &mut buf).unwrap();
        let mut framed = (n as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&buf[..n]);
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut response).unwrap();
        let InitiatorEvent::Established {
            finish_len: Some(f),
            session,
        } = initiator.handle_packet(now, &response, &mut buf).unwrap()
        else {
            panic!("handshake")
        };
        let mut out = (f as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&buf[..f]);
        let mut stream_session = StreamSession::new(&session, now);
        let mut plain = Vec::new();
        Frame::Hello(Hello {
            versions: Versions::new(&[dp_proto::PROTOCOL_VERSION]).unwrap(),
            capabilities: Capabilities::EMPTY,
            frame_len_max: 1 << 20,
        })
        .encode_append(&mut plain)
        .unwrap();
        let at = out.len();
        out.resize(at + StreamSession::sealed_len_max(plain.len()), 0);
        let sealed = stream_session
            .seal_record(now, &plain, &mut out[at..])
            .unwrap();
        out.truncate(at + sealed);
        stream.write_all(&out).unwrap();
        // Wait for the Welcome record so the session is complete on the server.
        let mut welcome = [0u8; 256];
        let _ = stream.read(&mut welcome).unwrap();
        held.push(stream);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} sessions", i + 1);
        }
    }
    println!("holding {count} idle sessions; close stdin to release them");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
}
