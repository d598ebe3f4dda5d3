//! Frame encode and decode beside a plain copy of the same bytes, measured in the same run.
//!
//! `cargo bench -p commucat-bench --bench frame`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::Bencher;
use divan::counter::BytesCount;
use dp_core::{DeviceId, MessageId};
use dp_proto::{DeliveryAck, Frame, MessageIds, Ping, Recipient, SendFrame};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let body = vec![0xa5u8; 1024];
    let ids: Vec<MessageId> = (0..64u8).map(|i| MessageId([i; 16])).collect();
    let frames = [
        (
            "send_1k",
            Frame::Send(SendFrame {
                message: MessageId([1; 16]),
                recipient: Recipient::Device(DeviceId([2; 16])),
                body: &body,
            }),
        ),
        ("ping", Frame::Ping(Ping { nonce: 42 })),
        (
            "delivery_ack_64",
            Frame::DeliveryAck(DeliveryAck {
                messages: MessageIds::new(&ids),
            }),
        ),
    ];
    frames
        .iter()
        .map(|(name, frame)| {
            let mut out = Vec::new();
            frame.encode_append(&mut out).unwrap();
            (*name, out)
        })
        .collect()
}

fn sample(name: &str) -> Vec<u8> {
    samples().into_iter().find(|(n, _)| *n == name).unwrap().1
}

/// Decode (zero copy: the frame borrows the input).
#[divan::bench(args = ["send_1k", "ping", "delivery_ack_64"])]
fn decode(bencher: Bencher<'_, '_>, name: &str) {
    let bytes = sample(name);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench_local(|| {
            let (frame, n) = Frame::decode(divan::black_box(&bytes)).unwrap();
            divan::black_box((frame, n));
        });
}

/// Encode into a reused buffer.
#[divan::bench(args = ["send_1k", "ping", "delivery_ack_64"])]
fn encode(bencher: Bencher<'_, '_>, name: &str) {
    let bytes = sample(name);
    let frame = Frame::decode_exact(&bytes).unwrap();
    let mut out = vec![0u8; bytes.len()];
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench_local(|| {
            divan::black_box(divan::black_box(&frame).encode(&mut out).unwrap());
        });
}

/// Baseline: copying the same bytes.
#[divan::bench(args = ["send_1k", "ping", "delivery_ack_64"])]
fn baseline_copy(bencher: Bencher<'_, '_>, name: &str) {
    let bytes = sample(name);
    let mut out = vec![0u8; bytes.len()];
    bencher
        .counter(BytesCount::new(bytes.len()))
        .bench_local(|| {
            out.copy_from_slice(divan::black_box(&bytes));
            divan::black_box(&out);
        });
}
