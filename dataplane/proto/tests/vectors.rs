//! Spec vectors: `tests/vectors/frames.txt` holds one encoded frame per line (`name: hex`), the
//! same vectors as `docs/PROTOCOL.md` §Frames. Each must decode to the expected value below and
//! re-encode to the same bytes. The file was produced by an encoder written separately from
//! this crate, from the spec text.

// Test code: a failed unwrap here is a failed test (clippy's `allow-unwrap-in-tests` covers only
// `#[test]` functions, not their helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dp_core::{CallId, ConversationId, DeviceId, MessageId};
use dp_proto::{
    CallSignal, CallSignalFrom, CallSignalKind, Capabilities, CapabilitiesFrame, Deliver,
    DeliveryAck, ErrorCode, ErrorFrame, Frame, GoAway, Hello, MessageIds, Ping, Pong, Presence,
    PresenceSet, PresenceState, Receipt, ReceiptFrom, ReceiptKind, Recipient, Request, Response,
    SendAck, SendFrame, SendStatus, Typing, TypingFrom, TypingState, Versions, Welcome,
};

const DEVICE_A: DeviceId = DeviceId([
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
]);
const DEVICE_B: DeviceId = DeviceId([
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
]);
const MESSAGE_1: MessageId = MessageId([
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x01,
]);
const MESSAGE_2: MessageId = MessageId([
    0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x02,
]);
const CONVERSATION: ConversationId = ConversationId(42);
const BOTH: &[MessageId] = &[MESSAGE_1, MESSAGE_2];
const DELIVER_BODY: [u8; 64] = {
    let mut body = [0; 64];
    let mut index = 0;
    while index < 64 {
        body[index] = index as u8;
        index += 1;
    }
    body
};

/// The expected value of every vector, by name.
fn expected() -> Vec<(&'static str, Frame<'static>)> {
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                versions: Versions::new(&[0x0002, 0x0001]).unwrap(),
                capabilities: Capabilities::HYBRID_PQ | Capabilities::DATAGRAM | Capabilities::FEC,
                frame_len_max: 1 << 20,
            }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                version: dp_proto::PROTOCOL_VERSION,
                capabilities: Capabilities::HYBRID_PQ
                    | Capabilities::DATAGRAM
                    | Capabilities::OBFUSCATION,
                frame_len_max: 1 << 20,
                device: DEVICE_A,
                server_time_ms: 1_700_000_000_000,
            }),
        ),
        (
            "capabilities",
            Frame::Capabilities(CapabilitiesFrame {
                capabilities: Capabilities::HYBRID_PQ | Capabilities::OPUS | Capabilities(1 << 63),
            }),
        ),
        (
            "ping",
            Frame::Ping(Ping {
                nonce: 0x0123_4567_89ab_cdef,
            }),
        ),
        (
            "pong",
            Frame::Pong(Pong {
                nonce: 0x0123_4567_89ab_cdef,
            }),
        ),
        (
            "error",
            Frame::Error(ErrorFrame {
                code: ErrorCode::UNKNOWN_FRAME_TYPE,
                frame_type: 0x7f,
                reference: 0,
                reason: "unknown frame type",
            }),
        ),
        (
            "go_away",
            Frame::GoAway(GoAway {
                code: ErrorCode::SHUTTING_DOWN,
                reconnect_after_ms: 5000,
                reason: "restart",
            }),
        ),
        (
            "send_device",
            Frame::Send(SendFrame {
                message: MESSAGE_1,
                recipient: Recipient::Device(DEVICE_B),
                body: &[0xde, 0xad, 0xbe, 0xef],
            }),
        ),
        (
            "send_conversation",
            Frame::Send(SendFrame {
                message: MESSAGE_2,
                recipient: Recipient::Conversation(CONVERSATION),
                body: &[0xca, 0xfe],
            }),
        ),
        (
            "send_ack",
            Frame::SendAck(SendAck {
                message: MESSAGE_2,
                status: SendStatus::Stored,
                seq: 7,
            }),
        ),
        (
            "deliver",
            Frame::Deliver(Deliver {
                message: MESSAGE_2,
                sender: DEVICE_A,
                conversation: CONVERSATION,
                seq: 7,
                sent_at_ms: 1_700_000_000_123,
                body: &DELIVER_BODY,
            }),
        ),
        (
            "delivery_ack",
            Frame::DeliveryAck(DeliveryAck {
                messages: MessageIds::new(BOTH),
            }),
        ),
        (
            "receipt",
            Frame::Receipt(Receipt {
                conversation: CONVERSATION,
                kind: ReceiptKind::Read,
                messages: MessageIds::new(BOTH),
            }),
        ),
        (
            "receipt_from",
            Frame::ReceiptFrom(ReceiptFrom {
                from: DEVICE_B,
                conversation: CONVERSATION,
                kind: ReceiptKind::Delivered,
                messages: MessageIds::new(&[MESSAGE_1]),
            }),
        ),
        (
            "presence_set",
            Frame::PresenceSet(PresenceSet {
                state: PresenceState::Away,
            }),
        ),
        (
            "presence",
            Frame::Presence(Presence {
                device: DEVICE_B,
                state: PresenceState::Online,
                last_seen_ms: 1_700_000_000_000,
            }),
        ),
        (
            "typing",
            Frame::Typing(Typing {
                conversation: CONVERSATION,
                state: TypingState::Typing,
            }),
        ),
        (
            "typing_from",
            Frame::TypingFrom(TypingFrom {
                device: DEVICE_B,
                conversation: CONVERSATION,
                state: TypingState::Stopped,
            }),
        ),
        (
            "call_signal",
            Frame::CallSignal(CallSignal {
                call: CallId(0),
                conversation: CONVERSATION,
                kind: CallSignalKind::Invite,
                body: b"v=0\r\n",
            }),
        ),
        (
            "call_signal_from",
            Frame::CallSignalFrom(CallSignalFrom {
                from: DEVICE_B,
                call: CallId(9),
                conversation: CONVERSATION,
                kind: CallSignalKind::Candidate,
                body: b"candidate",
            }),
        ),
        (
            "request",
            Frame::Request(Request {
                request_id: 1,
                op: 0x0001,
                body: b"{}",
            }),
        ),
        (
            "response",
            Frame::Response(Response {
                request_id: 1,
                status: ErrorCode::OK,
                body: br#"{"ok":true}"#,
            }),
        ),
    ]
}

/// The `(name, bytes)` pairs of the vector file, in file order.
fn vectors() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("vectors/frames.txt");
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, hex_bytes) = line.split_once(':').expect("`name: hex`");
            (
                name.trim().to_owned(),
                hex::decode(hex_bytes.trim()).expect("valid hex"),
            )
        })
        .collect()
}

/// Goal: the codec agrees with the spec's vectors in both directions. Method: decode each
/// vector, compare with the expected value, re-encode and compare bytes.
#[test]
fn vectors_decode_and_reencode() {
    let vectors = vectors();
    let expected = expected();
    let names: Vec<&str> = vectors.iter().map(|(name, _)| name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names, expected_names,
        "the file and the expected values list the same vectors"
    );
    for ((name, bytes), (_, frame)) in vectors.iter().zip(&expected) {
        let decoded = Frame::decode_exact(bytes);
        assert_eq!(decoded.as_ref(), Ok(frame), "decoding {name}");
        let mut out = vec![0; frame.encoded_len()];
        assert_eq!(frame.encode(&mut out), Ok(bytes.len()), "encoding {name}");
        assert_eq!(hex::encode(&out), hex::encode(bytes), "re-encoding {name}");
    }
}

/// Goal: the vectors cover every frame type. Method: collect the type byte of each vector.
#[test]
fn vectors_cover_every_frame_type() {
    let mut types: Vec<u8> = vectors().iter().map(|(_, bytes)| bytes[0]).collect();
    types.dedup();
    let all: Vec<u8> = dp_proto::FrameType::ALL.iter().map(|t| t.as_u8()).collect();
    assert_eq!(types, all);
}

/// The `(name, bytes)` pairs published in `docs/PROTOCOL.md` §10.2: a bullet naming the vector
/// in backticks, then a `text` block of hex, possibly wrapped over several lines.
fn published() -> Vec<(String, Vec<u8>)> {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let section = doc
        .split("### 10.2 Frames")
        .nth(1)
        .expect("PROTOCOL.md has §10.2");
    let mut out = Vec::new();
    let mut lines = section.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        let name = rest.split('`').next().expect("a vector name").to_owned();
        let mut hex_text = String::new();
        let mut in_block = false;
        for line in lines.by_ref() {
            if line.starts_with("```") {
                if in_block {
                    break;
                }
                in_block = true;
            } else if in_block {
                hex_text.push_str(line);
            }
        }
        out.push((
            name,
            hex::decode(&hex_text).expect("valid hex in PROTOCOL.md"),
        ));
    }
    out
}

/// Goal: the document and the vector file say the same thing, so what an independent
/// implementer reads is what the codec is tested against. Method: parse §10.2 of
/// `docs/PROTOCOL.md` and compare it with `frames.txt`, name by name and byte by byte.
#[test]
fn protocol_md_frame_vectors_match_the_file() {
    let published = published();
    let file = vectors();
    assert_eq!(published.len(), file.len(), "vector count");
    for ((doc_name, doc_bytes), (name, bytes)) in published.iter().zip(&file) {
        assert_eq!(doc_name, name);
        assert_eq!(hex::encode(doc_bytes), hex::encode(bytes), "{name}");
    }
}
