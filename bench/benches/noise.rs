//! Noise handshakes (responder side) and transport seal/open, each beside a baseline measured
//! in the same run: a bare ring AEAD seal and open of the same size.
//!
//! `cargo bench -p commucat-bench --bench noise`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use commucat_bench::{Keys, PACKET_BUF, handshake};
use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use dp_core::{Instant, SeededRng};
use dp_noise::{
    Cipher, DatagramSession, InitiatorEvent, Pattern, ResponderEvent, StreamSession, Suite,
};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const SUITES: [(&str, Pattern, bool); 4] = [
    ("xk_classic", Pattern::Xk, false),
    ("xk_hybrid", Pattern::Xk, true),
    ("ik_classic", Pattern::Ik, false),
    ("ik_hybrid", Pattern::Ik, true),
];

fn suite(name: &str) -> Suite {
    let (_, pattern, hybrid) = SUITES.iter().find(|(n, ..)| *n == name).copied().unwrap();
    Suite::new(pattern, Cipher::ChaChaPoly, hybrid)
}

/// The whole responder-side work of one handshake. For XK that is message 1 (read the
/// initiation, write the response) plus message 3 (read the finish); the initiator's work in
/// between is done in the untimed set-up of a second benchmark, so here message 1 is timed and
/// `responder_xk_finish` times message 3. For IK, message 1 is all of it.
#[divan::bench(args = ["xk_classic", "xk_hybrid", "ik_classic", "ik_hybrid"])]
fn responder_initiation(bencher: Bencher<'_, '_>, name: &str) {
    let suite = suite(name);
    let keys = Keys::new(1);
    let mut seed = 0u64;
    bencher
        .counter(ItemsCount::new(1usize))
        .with_inputs(|| {
            seed += 1;
            let mut rng = SeededRng::new(seed);
            let responder = keys.responder(&mut rng);
            let mut initiator = keys.initiator(suite);
            let mut packet = vec![0u8; PACKET_BUF];
            let n = initiator
                .write_initiation(Instant(1), &mut rng, &mut packet)
                .unwrap();
            packet.truncate(n);
            (responder, packet, rng, vec![0u8; PACKET_BUF])
        })
        .bench_local_values(|(mut responder, packet, mut rng, mut out)| {
            let event = responder.handle_packet(Instant(1), keys.from, &packet, &mut out, &mut rng);
            assert!(matches!(
                event,
                Ok(ResponderEvent::Continue { .. } | ResponderEvent::Established { .. })
            ));
            (responder, out)
        });
}

/// The responder's work on an XK Finish (message 3), the rest of `responder_initiation`.
#[divan::bench(args = ["xk_classic", "xk_hybrid"])]
fn responder_xk_finish(bencher: Bencher<'_, '_>, name: &str) {
    let suite = suite(name);
    let keys = Keys::new(1);
    let mut seed = 0u64;
    bencher
        .counter(ItemsCount::new(1usize))
        .with_inputs(|| {
            seed += 1;
            let mut rng = SeededRng::new(seed);
            let mut responder = keys.responder(&mut rng);
            let mut initiator = keys.initiator(suite);
            let (mut a, mut b) = (vec![0u8; PACKET_BUF], vec![0u8; PACKET_BUF]);
            let n = initiator
                .write_initiation(Instant(1), &mut rng, &mut a)
                .unwrap();
            let Ok(ResponderEvent::Continue { len }) =
                responder.handle_packet(Instant(1), keys.from, &a[..n], &mut b, &mut rng)
            else {
                panic!("XK response")
            };
            let Ok(InitiatorEvent::Established {
                finish_len: Some(f),
                ..
            }) = initiator.handle_packet(Instant(1), &b[..len], &mut a)
            else {
                panic!("XK finish")
            };
            a.truncate(f);
            (responder, a, rng, b)
        })
        .bench_local_values(|(mut responder, finish, mut rng, mut out)| {
            let event = responder.handle_packet(Instant(1), keys.from, &finish, &mut out, &mut rng);
            assert!(matches!(event, Ok(ResponderEvent::Established { .. })));
            responder
        });
}

/// Baseline: one X25519 scalar multiplication (the ladder every Noise `DH()` runs). A responder
/// does three per XK handshake (es, ee, se) and four per IK (es, ss, ee, se), plus a cheaper
/// fixed-base one for its ephemeral key.
#[divan::bench]
fn baseline_x25519_dh(bencher: Bencher<'_, '_>) {
    let point = curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped([9u8; 32]);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        divan::black_box(divan::black_box(point).mul_clamped(divan::black_box([7u8; 32])))
    });
}

/// Baseline: one fixed-base X25519 multiplication (making an ephemeral public key).
#[divan::bench]
fn baseline_x25519_base(bencher: Bencher<'_, '_>) {
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        divan::black_box(
            curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(divan::black_box(
                [7u8; 32],
            )),
        )
    });
}

const SIZES: [usize; 2] = [64, 1200];

fn datagram_pair(cipher: Cipher) -> (DatagramSession, DatagramSession) {
    let (client, server) = handshake(Suite::new(Pattern::Xk, cipher, false), 3).unwrap();
    (
        DatagramSession::new(&client, Instant(1)),
        DatagramSession::new(&server, Instant(1)),
    )
}

fn seal_open(bencher: Bencher<'_, '_>, cipher: Cipher, size: usize) {
    let (mut tx, mut rx) = datagram_pair(cipher);
    let plaintext = vec![0x5au8; size];
    let mut buf = vec![0u8; size + 64];
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        let n = tx
            .seal(Instant(2), divan::black_box(&plaintext), &mut buf)
            .unwrap();
        let range = rx.open(Instant(2), &mut buf[..n]).unwrap();
        divan::black_box(range);
    });
}

/// Datagram seal then open (both ends' work for one datagram), ChaCha20-Poly1305.
#[divan::bench(args = SIZES)]
fn datagram_seal_open_chachapoly(bencher: Bencher<'_, '_>, size: usize) {
    seal_open(bencher, Cipher::ChaChaPoly, size);
}

/// Datagram seal then open, AES-256-GCM.
#[divan::bench(args = SIZES)]
fn datagram_seal_open_aesgcm(bencher: Bencher<'_, '_>, size: usize) {
    seal_open(bencher, Cipher::AesGcm, size);
}

fn ring_seal_open(
    bencher: Bencher<'_, '_>,
    algorithm: &'static ring::aead::Algorithm,
    size: usize,
) {
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32]).unwrap());
    let mut buf = vec![0x5au8; size + 16];
    let mut counter = 0u64;
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; 16]),
                &mut buf[..size],
            )
            .unwrap();
        buf[size..].copy_from_slice(tag.as_ref());
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; 16]),
                &mut buf,
            )
            .unwrap();
        divan::black_box(opened.len());
    });
}

/// Baseline: a bare ring ChaCha20-Poly1305 seal and open of the same size.
#[divan::bench(args = SIZES)]
fn baseline_ring_seal_open_chachapoly(bencher: Bencher<'_, '_>, size: usize) {
    ring_seal_open(bencher, &CHACHA20_POLY1305, size);
}

/// Baseline: a bare ring AES-256-GCM seal and open of the same size.
#[divan::bench(args = SIZES)]
fn baseline_ring_seal_open_aesgcm(bencher: Bencher<'_, '_>, size: usize) {
    ring_seal_open(bencher, &AES_256_GCM, size);
}

const RECORD_SIZES: [usize; 2] = [1200, 16384];

fn record_seal(bencher: Bencher<'_, '_>, cipher: Cipher, size: usize) {
    let (client, _) = handshake(Suite::new(Pattern::Xk, cipher, false), 4).unwrap();
    let mut tx = StreamSession::new(&client, Instant(1));
    let plaintext = vec![0x5au8; size];
    let mut out = vec![0u8; StreamSession::sealed_len_max(size)];
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        divan::black_box(
            tx.seal_record(Instant(2), divan::black_box(&plaintext), &mut out)
                .unwrap(),
        );
    });
}

/// Stream record seal (length prefix, copy into the output buffer, AEAD with no associated
/// data), ChaCha20-Poly1305.
#[divan::bench(args = RECORD_SIZES)]
fn record_seal_chachapoly(bencher: Bencher<'_, '_>, size: usize) {
    record_seal(bencher, Cipher::ChaChaPoly, size);
}

/// Stream record seal, AES-256-GCM.
#[divan::bench(args = RECORD_SIZES)]
fn record_seal_aesgcm(bencher: Bencher<'_, '_>, size: usize) {
    record_seal(bencher, Cipher::AesGcm, size);
}

fn ring_seal(bencher: Bencher<'_, '_>, algorithm: &'static ring::aead::Algorithm, size: usize) {
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32]).unwrap());
    let mut buf = vec![0x5au8; size];
    let mut counter = 0u64;
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        // The tag is returned, so divan keeps it alive.
        key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            divan::black_box(&mut buf[..]),
        )
        .unwrap()
    });
}

/// Baseline for the record seals: a bare ring ChaCha20-Poly1305 seal in place, no associated
/// data.
#[divan::bench(args = RECORD_SIZES)]
fn baseline_ring_seal_chachapoly(bencher: Bencher<'_, '_>, size: usize) {
    ring_seal(bencher, &CHACHA20_POLY1305, size);
}

/// Baseline for the record seals: a bare ring AES-256-GCM seal in place.
#[divan::bench(args = RECORD_SIZES)]
fn baseline_ring_seal_aesgcm(bencher: Bencher<'_, '_>, size: usize) {
    ring_seal(bencher, &AES_256_GCM, size);
}
