//! Datagram sessions under arbitrary sequences of genuine, replayed, mutated and forged
//! datagrams: nothing panics, and no counter is ever accepted twice.
#![no_main]

use dp_core::{Instant, SeededRng};
use dp_noise::{
    Cipher, DatagramSession, Established, Initiator, InitiatorConfig, InitiatorEvent, Pattern,
    Responder, ResponderConfig, ResponderEvent, StaticKeypair, Suite,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::sync::OnceLock;

fn established() -> &'static (Box<Established>, Box<Established>) {
    static PAIR: OnceLock<(Box<Established>, Box<Established>)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let mut rng = SeededRng::new(7);
        let client = StaticKeypair::generate(&mut rng);
        let server = StaticKeypair::generate(&mut rng);
        let now = Instant(1);
        let mut responder =
            Responder::new(now, ResponderConfig::default(), server.clone(), &mut rng);
        let suite = Suite::new(Pattern::Ik, Cipher::ChaChaPoly, false);
        let config = InitiatorConfig {
            suite,
            local: client,
            remote_static: *server.public(),
            timestamp_ms: 1,
        };
        let mut initiator = Initiator::new(now, config);
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let n = initiator.write_initiation(now, &mut rng, &mut a).unwrap();
        let from = "192.0.2.1:1".parse().unwrap();
        let Ok(ResponderEvent::Established {
            reply_len: Some(m),
            session: server,
        }) = responder.handle_packet(now, from, &a[..n], &mut b, &mut rng)
        else {
            panic!("handshake")
        };
        let Ok(InitiatorEvent::Established {
            session: client, ..
        }) = initiator.handle_packet(now, &b[..m], &mut a)
        else {
            panic!("handshake")
        };
        (client, server)
    })
}

fuzz_target!(|data: &[u8]| {
    let (client, server) = established();
    let mut now = Instant(2);
    let mut tx = DatagramSession::new(client, now);
    let mut rx = DatagramSession::new(server, now);
    let mut history: Vec<Vec<u8>> = Vec::new();
    let mut accepted = BTreeSet::new();
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let mut packet = match op % 5 {
            // A genuine datagram; the op's high bits skip counters by sealing and discarding.
            0 => {
                let mut buf = [0u8; 128];
                for _ in 0..(op >> 5) {
                    let _ = tx.seal(now, b"skip", &mut buf);
                }
                let n = tx.seal(now, b"payload", &mut buf).unwrap();
                history.push(buf[..n].to_vec());
                buf[..n].to_vec()
            }
            // A replay of an earlier datagram.
            1 if !history.is_empty() => history[usize::from(op) % history.len()].clone(),
            // An earlier datagram with one byte changed.
            2 if !history.is_empty() => {
                let mut p = history[usize::from(op) % history.len()].clone();
                let (&at, rest) = input.split_first().unwrap_or((&0, &[]));
                input = rest;
                let i = usize::from(at) % p.len();
                p[i] ^= at | 1;
                p
            }
            // Time moves on (past the rekey time, so epochs advance).
            3 => {
                now = now.saturating_add(core::time::Duration::from_secs(u64::from(op)));
                rx.handle_timeout(now);
                continue;
            }
            // Raw forged bytes.
            _ => {
                let len = usize::from(op).min(input.len());
                let (raw, rest) = input.split_at(len);
                input = rest;
                raw.to_vec()
            }
        };
        let counter = packet
            .get(8..16)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()));
        if rx.open(now, &mut packet).is_ok() {
            let counter = counter.unwrap();
            assert!(accepted.insert(counter), "counter {counter} accepted twice");
        }
    }
});
