use dp_core::limits::{
    ACKS_PER_FRAME_MAX, CALL_SIGNAL_BODY_LEN_MAX, ENVELOPE_BODY_LEN_MAX, FRAME_LEN_MAX,
    REASON_LEN_MAX, RECEIPTS_PER_FRAME_MAX, REQUEST_BODY_LEN_MAX, VERSIONS_MAX,
};
use dp_core::{CallId, ConversationId, DeviceId, MessageId};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::sample::{Material, encode, material};
use crate::{Capabilities, ErrorCode};

const DEVICE: DeviceId = DeviceId([0xd1; 16]);
const MESSAGE: MessageId = MessageId([0x3e; 16]);

/// One frame of every type, with non-trivial field values.
fn one_of_each<'a>(ids: &'a [MessageId], body: &'a [u8]) -> Vec<Frame<'a>> {
    let frames = vec![
        Frame::Hello(Hello {
            versions: Versions::new(&[2, 1]).unwrap(),
            capabilities: Capabilities::HYBRID_PQ | Capabilities::FEC,
            frame_len_max: 1 << 20,
        }),
        Frame::Welcome(Welcome {
            version: 2,
            capabilities: Capabilities(u64::MAX),
            frame_len_max: 65_536,
            device: DEVICE,
            server_time_ms: 1_700_000_000_000,
        }),
        Frame::Capabilities(CapabilitiesFrame {
            capabilities: Capabilities(1 << 63),
        }),
        Frame::Ping(Ping { nonce: 7 }),
        Frame::Pong(Pong { nonce: u64::MAX }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::NOT_FOUND,
            frame_type: 0x10,
            reference: 99,
            reason: "no such device ✓",
        }),
        Frame::GoAway(GoAway {
            code: ErrorCode::SHUTTING_DOWN,
            reconnect_after_ms: 250,
            reason: "",
        }),
        Frame::Send(SendFrame {
            message: MESSAGE,
            recipient: Recipient::Conversation(ConversationId(5)),
            body,
        }),
        Frame::SendAck(SendAck {
            message: MESSAGE,
            status: SendStatus::Stored,
            seq: 12,
        }),
        Frame::Deliver(Deliver {
            message: MESSAGE,
            sender: DEVICE,
            conversation: ConversationId(0),
            seq: 1,
            sent_at_ms: 2,
            body,
        }),
        Frame::DeliveryAck(DeliveryAck {
            messages: MessageIds::new(ids),
        }),
        Frame::Receipt(Receipt {
            conversation: ConversationId(3),
            kind: ReceiptKind::Read,
            messages: MessageIds::new(ids),
        }),
        Frame::ReceiptFrom(ReceiptFrom {
            from: DEVICE,
            conversation: ConversationId(3),
            kind: ReceiptKind::Delivered,
            messages: MessageIds::new(ids),
        }),
        Frame::PresenceSet(PresenceSet {
            state: PresenceState::Busy,
        }),
        Frame::Presence(Presence {
            device: DEVICE,
            state: PresenceState::Offline,
            last_seen_ms: 9,
        }),
        Frame::Typing(Typing {
            conversation: ConversationId(4),
            state: TypingState::Typing,
        }),
        Frame::TypingFrom(TypingFrom {
            device: DEVICE,
            conversation: ConversationId(4),
            state: TypingState::Stopped,
        }),
        Frame::CallSignal(CallSignal {
            call: CallId(0),
            conversation: ConversationId(4),
            kind: CallSignalKind::Invite,
            body,
        }),
        Frame::CallSignalFrom(CallSignalFrom {
            from: DEVICE,
            call: CallId(8),
            conversation: ConversationId(4),
            kind: CallSignalKind::TransportUpdate,
            body,
        }),
        Frame::Request(Request {
            request_id: 1,
            op: 0x0102,
            body,
        }),
        Frame::Response(Response {
            request_id: 1,
            status: ErrorCode::OK,
            body: &[],
        }),
    ];
    assert_eq!(frames.len(), FrameType::ALL.len());
    frames
}

/// Goal: each frame type round-trips, reports its own type and length, and the type table is in
/// spec order. Method: encode and decode one frame of every type.
#[test]
fn every_frame_type_round_trips() {
    let ids = [MessageId([1; 16]), MessageId([2; 16])];
    for (frame, &frame_type) in one_of_each(&ids, b"ciphertext").iter().zip(FrameType::ALL) {
        assert_eq!(frame.frame_type(), frame_type);
        let bytes = encode(frame);
        assert_eq!(bytes.len(), frame.encoded_len(), "{frame_type:?}");
        assert_eq!(bytes[0], frame_type.as_u8());
        assert_eq!(
            Frame::decode(&bytes),
            Ok((*frame, bytes.len())),
            "{frame_type:?}"
        );
        assert_eq!(Frame::decode_exact(&bytes), Ok(*frame));
        assert_eq!(FrameType::try_from(bytes[0]), Ok(frame_type));
    }
    let bytes: Vec<u8> = FrameType::ALL.iter().map(|t| t.as_u8()).collect();
    assert_eq!(
        hex::encode(bytes),
        "010203040506071011121314151617181920213031"
    );
}

/// Goal: the fixed-size bodies have the sizes the spec gives. Method: compare `body_len`.
#[test]
fn fixed_body_sizes_match_the_spec() {
    let ids = [MESSAGE];
    let frames = one_of_each(&ids, &[]);
    let sizes: Vec<(FrameType, usize)> = frames
        .iter()
        .map(|frame| (frame.frame_type(), frame.body_len()))
        .collect();
    let expected = [
        (FrameType::Hello, 1 + 2 * 2 + 8 + 4),
        (FrameType::Welcome, 2 + 8 + 4 + 16 + 8),
        (FrameType::Capabilities, 8),
        (FrameType::Ping, 8),
        (FrameType::Pong, 8),
        (FrameType::Error, 2 + 1 + 8 + 1 + "no such device ✓".len()),
        (FrameType::GoAway, 2 + 4 + 1),
        (FrameType::Send, 16 + 1 + 8 + 1),
        (FrameType::SendAck, 16 + 1 + 8),
        (FrameType::Deliver, 16 + 16 + 8 + 8 + 8 + 1),
        (FrameType::DeliveryAck, 1 + 16),
        (FrameType::Receipt, 8 + 1 + 1 + 16),
        (FrameType::ReceiptFrom, 16 + 8 + 1 + 1 + 16),
        (FrameType::PresenceSet, 1),
        (FrameType::Presence, 16 + 1 + 8),
        (FrameType::Typing, 8 + 1),
        (FrameType::TypingFrom, 16 + 8 + 1),
        (FrameType::CallSignal, 8 + 8 + 1 + 1),
        (FrameType::CallSignalFrom, 16 + 8 + 8 + 1 + 1),
        (FrameType::Request, 4 + 2 + 1),
        (FrameType::Response, 4 + 2 + 1),
    ];
    assert_eq!(sizes, expected);
}

/// Goal: an unknown type is reported with its byte, and `peek_header` lets the receiver skip
/// it. Method: a frame of type 0x7f with a 3-byte body followed by a Ping.
#[test]
fn unknown_frame_type_can_be_skipped() {
    let mut stream = vec![0x7f, 0x03, 0xaa, 0xbb, 0xcc];
    let ping = Frame::Ping(Ping { nonce: 1 });
    stream.extend(encode(&ping));
    assert_eq!(
        Frame::decode(&stream),
        Err(DecodeError::UnknownFrameType(0x7f))
    );
    assert_eq!(
        DecodeError::UnknownFrameType(0x7f).error_code(),
        ErrorCode::UNKNOWN_FRAME_TYPE
    );
    let header = peek_header(&stream).unwrap();
    assert_eq!(
        header,
        FrameHeader {
            type_byte: 0x7f,
            body_len: 3,
            header_len: 2
        }
    );
    assert_eq!(header.frame_type(), None);
    assert_eq!(Frame::decode_exact(&stream[header.frame_len()..]), Ok(ping));
    // Every unassigned type byte is unknown.
    for byte in 0..=u8::MAX {
        let known = FrameType::ALL.iter().any(|t| t.as_u8() == byte);
        assert_eq!(FrameType::from_u8(byte).is_some(), known);
    }
}

/// Goal: a frame over FRAME_LEN_MAX fails from its header alone, whatever follows. Method:
/// headers declaring the largest allowed and one more byte of body, and the largest varint.
#[test]
fn frame_length_limit_is_checked_on_the_header() {
    // body_len needs a 4-byte varint, so the largest body is FRAME_LEN_MAX - 5.
    let mut header = [0; 5];
    let body_len = (FRAME_LEN_MAX - 5) as u64;
    header[0] = 0x10;
    Writer::new(&mut header[1..]).varint(body_len).unwrap();
    assert_eq!(peek_header(&header).unwrap().frame_len(), FRAME_LEN_MAX);
    assert_eq!(Frame::decode(&header), Err(DecodeError::Truncated));

    Writer::new(&mut header[1..]).varint(body_len + 1).unwrap();
    let too_long = DecodeError::TooLong {
        field: Field::Frame,
        len: FRAME_LEN_MAX as u64 + 1,
        max: FRAME_LEN_MAX as u64,
    };
    assert_eq!(peek_header(&header), Err(too_long));
    assert_eq!(Frame::decode(&header), Err(too_long));
    assert_eq!(too_long.error_code(), ErrorCode::FRAME_TOO_LARGE);

    let huge = hex::decode("10ffffffffffffffff").unwrap();
    assert!(matches!(
        Frame::decode(&huge),
        Err(DecodeError::TooLong {
            field: Field::Frame,
            ..
        })
    ));
    assert_eq!(
        peek_header_with_max(&[0x04, 0x08], 9),
        Err(DecodeError::TooLong {
            field: Field::Frame,
            len: 10,
            max: 9
        })
    );
}

/// Goal: the body must be consumed exactly, and a field running past the body's end is
/// `BodyTruncated`, not `Truncated` (more bytes cannot help). Method: a Ping with 9 and with 7
/// body bytes; a Send whose body length points past the frame.
#[test]
fn body_must_be_consumed_exactly() {
    let long = hex::decode("0409000000000000000100").unwrap();
    assert_eq!(Frame::decode(&long), Err(DecodeError::TrailingBytes));
    let short = hex::decode("04070000000000000001").unwrap();
    assert_eq!(Frame::decode(&short), Err(DecodeError::BodyTruncated));
    let mut send = encode(&Frame::Send(SendFrame {
        message: MESSAGE,
        recipient: Recipient::Device(DEVICE),
        body: b"abc",
    }));
    let body_len_at = send.len() - 4;
    send[body_len_at] = 4;
    assert_eq!(Frame::decode(&send), Err(DecodeError::BodyTruncated));
    assert_eq!(
        DecodeError::BodyTruncated.error_code(),
        ErrorCode::MALFORMED_FRAME
    );
    // Trailing data after a whole frame is not the frame's business, except in decode_exact.
    let mut two = encode(&Frame::Ping(Ping { nonce: 1 }));
    two.push(0);
    assert_eq!(Frame::decode(&two).unwrap().1, two.len() - 1);
    assert_eq!(Frame::decode_exact(&two), Err(DecodeError::TrailingBytes));
}

/// Goal: every enum-valued field rejects undefined values with `InvalidValue` naming the field.
/// Method: overwrite the enum byte of a valid frame with each undefined value.
#[test]
fn undefined_enum_values_are_invalid() {
    let ids = [MESSAGE];
    let frames = one_of_each(&ids, b"x");
    // (frame index, offset of the enum byte in the encoded frame, field, defined values)
    let cases: &[(FrameType, usize, Field, &[u8])] = &[
        (FrameType::Send, 2 + 16, Field::RecipientTag, &[1, 2]),
        (FrameType::SendAck, 2 + 16, Field::SendStatus, &[1, 2, 3]),
        (FrameType::Receipt, 2 + 8, Field::ReceiptKind, &[1, 2]),
        (
            FrameType::ReceiptFrom,
            2 + 16 + 8,
            Field::ReceiptKind,
            &[1, 2],
        ),
        (
            FrameType::PresenceSet,
            2,
            Field::PresenceState,
            &[0, 1, 2, 3],
        ),
        (
            FrameType::Presence,
            2 + 16,
            Field::PresenceState,
            &[0, 1, 2, 3],
        ),
        (FrameType::Typing, 2 + 8, Field::TypingState, &[0, 1]),
        (
            FrameType::TypingFrom,
            2 + 16 + 8,
            Field::TypingState,
            &[0, 1],
        ),
        (
            FrameType::CallSignal,
            2 + 16,
            Field::CallSignalKind,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ),
        (
            FrameType::CallSignalFrom,
            2 + 32,
            Field::CallSignalKind,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ),
    ];
    for &(frame_type, offset, field, defined) in cases {
        let frame = frames
            .iter()
            .find(|f| f.frame_type() == frame_type)
            .unwrap();
        let mut bytes = encode(frame);
        for value in 0..=u8::MAX {
            bytes[offset] = value;
            let result = Frame::decode(&bytes);
            if defined.contains(&value) {
                // Recipient tag 2 changes the layout (shorter), so only require no InvalidValue.
                assert_ne!(
                    result.err(),
                    Some(DecodeError::InvalidValue { field }),
                    "{frame_type:?} {value}"
                );
            } else {
                assert_eq!(
                    result,
                    Err(DecodeError::InvalidValue { field }),
                    "{frame_type:?} {value}"
                );
            }
        }
    }
}

/// Goal: every length and count limit is enforced at exactly its maximum on both sides. Method:
/// each limited field at max (round-trips) and max + 1 (encode fails; a hand-built frame fails
/// to decode).
#[test]
fn field_limits_are_exact() {
    let big = vec![0xab; ENVELOPE_BODY_LEN_MAX + 1];
    let ids = vec![MESSAGE; ACKS_PER_FRAME_MAX.max(RECEIPTS_PER_FRAME_MAX) + 1];
    let reason_max = "r".repeat(REASON_LEN_MAX + 1);
    type Build<'a> = Box<dyn Fn(usize) -> Frame<'a> + 'a>;
    let cases: Vec<(Field, usize, Build<'_>)> = vec![
        (
            Field::Body,
            ENVELOPE_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::Send(SendFrame {
                    message: MESSAGE,
                    recipient: Recipient::Device(DEVICE),
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Body,
            ENVELOPE_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::Deliver(Deliver {
                    message: MESSAGE,
                    sender: DEVICE,
                    conversation: ConversationId(1),
                    seq: 1,
                    sent_at_ms: 1,
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Body,
            CALL_SIGNAL_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::CallSignal(CallSignal {
                    call: CallId(1),
                    conversation: ConversationId(1),
                    kind: CallSignalKind::Offer,
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Body,
            CALL_SIGNAL_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::CallSignalFrom(CallSignalFrom {
                    from: DEVICE,
                    call: CallId(1),
                    conversation: ConversationId(1),
                    kind: CallSignalKind::Offer,
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Body,
            REQUEST_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::Request(Request {
                    request_id: 1,
                    op: 1,
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Body,
            REQUEST_BODY_LEN_MAX,
            Box::new(|n| {
                Frame::Response(Response {
                    request_id: 1,
                    status: ErrorCode::OK,
                    body: &big[..n],
                })
            }),
        ),
        (
            Field::Reason,
            REASON_LEN_MAX,
            Box::new(|n| {
                Frame::Error(ErrorFrame {
                    code: ErrorCode::INTERNAL,
                    frame_type: 0,
                    reference: 0,
                    reason: &reason_max[..n],
                })
            }),
        ),
        (
            Field::Reason,
            REASON_LEN_MAX,
            Box::new(|n| {
                Frame::GoAway(GoAway {
                    code: ErrorCode::INTERNAL,
                    reconnect_after_ms: 0,
                    reason: &reason_max[..n],
                })
            }),
        ),
        (
            Field::Acks,
            ACKS_PER_FRAME_MAX,
            Box::new(|n| {
                Frame::DeliveryAck(DeliveryAck {
                    messages: MessageIds::new(&ids[..n]),
                })
            }),
        ),
        (
            Field::Receipts,
            RECEIPTS_PER_FRAME_MAX,
            Box::new(|n| {
                Frame::Receipt(Receipt {
                    conversation: ConversationId(1),
                    kind: ReceiptKind::Read,
                    messages: MessageIds::new(&ids[..n]),
                })
            }),
        ),
        (
            Field::Receipts,
            RECEIPTS_PER_FRAME_MAX,
            Box::new(|n| {
                Frame::ReceiptFrom(ReceiptFrom {
                    from: DEVICE,
                    conversation: ConversationId(1),
                    kind: ReceiptKind::Read,
                    messages: MessageIds::new(&ids[..n]),
                })
            }),
        ),
    ];
    for (field, max, build) in &cases {
        let at_max = build(*max);
        let bytes = encode(&at_max);
        assert_eq!(Frame::decode_exact(&bytes), Ok(at_max));

        let over = build(max + 1);
        let too_long = (*max as u64 + 1, *max as u64);
        let mut out = vec![0; over.encoded_len()];
        assert_eq!(
            over.encode(&mut out),
            Err(EncodeError::TooLong {
                field: *field,
                len: too_long.0,
                max: too_long.1
            })
        );
        let decoded = decode_over_limit(&at_max, *field, *max);
        assert_eq!(
            decoded,
            Err(DecodeError::TooLong {
                field: *field,
                len: too_long.0,
                max: too_long.1
            }),
            "{:?}",
            at_max.frame_type()
        );
    }
}

/// Re-encode `at_max`, whose last field holds exactly `max` items, with one item more, and
/// decode the result.
fn decode_over_limit(
    at_max: &Frame<'_>,
    field: Field,
    max: usize,
) -> Result<(Frame<'static>, usize), DecodeError> {
    let bytes = encode(at_max);
    let header = peek_header(&bytes).unwrap();
    let body = &bytes[header.header_len..];
    let item_len = if matches!(field, Field::Acks | Field::Receipts) {
        16
    } else {
        1
    };
    let items = &body[body.len() - max * item_len..];
    let prefix = &body[..body.len() - items.len() - varint_len(max as u64)];
    let mut new_body = prefix.to_vec();
    append_varint(&mut new_body, max as u64 + 1);
    new_body.extend_from_slice(items);
    new_body.extend(std::iter::repeat_n(0x61, item_len));
    let mut frame = vec![header.type_byte];
    append_varint(&mut frame, new_body.len() as u64);
    frame.extend(new_body);
    let leaked: &'static [u8] = Box::leak(frame.into_boxed_slice());
    Frame::decode(leaked)
}

fn append_varint(out: &mut Vec<u8>, value: u64) {
    let mut bytes = [0; 8];
    let mut writer = Writer::new(&mut bytes);
    writer.varint(value).unwrap();
    out.extend_from_slice(writer.written());
}

/// Goal: empty lists are refused on both sides. Method: encode an empty ack list; decode a
/// count of zero in DeliveryAck, Receipt and Hello; decode a Hello offering 9 versions.
#[test]
fn lists_must_not_be_empty() {
    let empty = Frame::DeliveryAck(DeliveryAck {
        messages: MessageIds::new(&[]),
    });
    let mut out = [0; 16];
    assert_eq!(
        empty.encode(&mut out),
        Err(EncodeError::InvalidValue { field: Field::Acks })
    );
    assert_eq!(
        Frame::decode(&[0x13, 0x01, 0x00]),
        Err(DecodeError::InvalidValue { field: Field::Acks })
    );
    let receipt = hex::decode("140a000000000000000102 00".replace(' ', "")).unwrap();
    assert_eq!(
        Frame::decode(&receipt),
        Err(DecodeError::InvalidValue {
            field: Field::Receipts
        })
    );
    let hello = hex::decode("010d00000000000000000000100000").unwrap();
    assert_eq!(
        Frame::decode(&hello),
        Err(DecodeError::InvalidValue {
            field: Field::Versions
        })
    );
    let mut hello9 = vec![0x01, 0x1f, 0x09];
    hello9.extend([0; 18 + 12]);
    assert_eq!(
        Frame::decode(&hello9),
        Err(DecodeError::TooLong {
            field: Field::Versions,
            len: 9,
            max: VERSIONS_MAX as u64
        })
    );
    assert!(Versions::new(&[]).is_none());
    assert!(Versions::new(&[1; VERSIONS_MAX + 1]).is_none());
    assert_eq!(
        Versions::new(&[1, 3, 2]).unwrap().highest_common(&[1, 2]),
        Some(2)
    );
    assert_eq!(Versions::new(&[1]).unwrap().highest_common(&[2]), None);
}

/// Goal: a non-minimal varint anywhere is rejected. Method: a PresenceSet with a 2-byte
/// body_len; a Request with a 2-byte body length.
#[test]
fn non_minimal_varints_are_rejected() {
    assert_eq!(
        Frame::decode(&[0x16, 0x40, 0x01, 0x01]),
        Err(DecodeError::NonMinimalVarint)
    );
    let request = hex::decode("3008000000010002400161").unwrap();
    assert_eq!(Frame::decode(&request), Err(DecodeError::NonMinimalVarint));
    assert_eq!(
        DecodeError::NonMinimalVarint.error_code(),
        ErrorCode::MALFORMED_FRAME
    );
}

/// Goal: encoding into a short buffer fails cleanly at every size, and `encode_append` leaves
/// the vector untouched on error. Method: every buffer size below the frame's length.
#[test]
fn encode_into_short_buffers() {
    let frame = Frame::Error(ErrorFrame {
        code: ErrorCode::INTERNAL,
        frame_type: 0,
        reference: 1,
        reason: "oops",
    });
    let len = frame.encoded_len();
    for size in 0..len {
        let mut out = vec![0; size];
        assert_eq!(
            frame.encode(&mut out),
            Err(EncodeError::BufferTooSmall),
            "size {size}"
        );
    }
    let mut out = vec![0; len + 3];
    assert_eq!(frame.encode(&mut out), Ok(len));
    let mut appended = vec![9];
    let bad = Frame::Receipt(Receipt {
        conversation: ConversationId(1),
        kind: ReceiptKind::Read,
        messages: MessageIds::new(&[]),
    });
    assert!(bad.encode_append(&mut appended).is_err());
    assert_eq!(appended, [9]);
    assert_eq!(frame.encode_append(&mut appended), Ok(len));
    assert_eq!(&appended[1..], &out[..len]);
}

/// Goal: unknown capability bits and unknown error codes survive a round trip. Method: decode
/// and compare raw values.
#[test]
fn unknown_bits_and_codes_are_preserved() {
    let frame = Frame::Capabilities(CapabilitiesFrame {
        capabilities: Capabilities(u64::MAX),
    });
    assert_eq!(Frame::decode_exact(&encode(&frame)), Ok(frame));
    let error = Frame::Error(ErrorFrame {
        code: ErrorCode(0xfffe),
        frame_type: 0xff,
        reference: 0,
        reason: "",
    });
    assert_eq!(Frame::decode_exact(&encode(&error)), Ok(error));
}

/// Goal: the borrowed id list reads the same from the wire as from a slice. Method: decode a
/// DeliveryAck and compare element-wise, by index and by iterator.
#[test]
fn message_ids_view_matches_slice() {
    let ids: Vec<MessageId> = (0..5_u8).map(|i| MessageId([i; 16])).collect();
    let bytes = encode(&Frame::DeliveryAck(DeliveryAck {
        messages: MessageIds::new(&ids),
    }));
    let Ok(Frame::DeliveryAck(ack)) = Frame::decode_exact(&bytes) else {
        panic!("not a DeliveryAck")
    };
    assert_eq!(ack.messages.len(), 5);
    assert_eq!(ack.messages.iter().collect::<Vec<_>>(), ids);
    assert_eq!(ack.messages.get(4), Some(MessageId([4; 16])));
    assert_eq!(ack.messages.get(5), None);
    assert_eq!(ack.messages.iter().len(), 5);
    assert_eq!(ack.messages, MessageIds::new(&ids));
    assert_ne!(ack.messages, MessageIds::new(&ids[..4]));
}

/// Every frame `Frame::decode` accepts re-encodes to exactly the bytes it consumed: the
/// encoding is canonical.
fn assert_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((frame, consumed)) = Frame::decode(bytes) {
        prop_assert_eq!(frame.encoded_len(), consumed);
        prop_assert_eq!(encode(&frame), &bytes[..consumed]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Goal: encode → decode is the identity and consumes exactly `encoded_len` bytes.
    /// Method: arbitrary frames of every type.
    #[test]
    fn round_trip(material in material()) {
        let frame = material.frame();
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(&bytes), Ok((frame, bytes.len())));
    }

    /// Goal: every strict prefix of a valid frame is `Truncated`, never a panic or another
    /// error. Method: all prefixes of an arbitrary frame.
    #[test]
    fn every_prefix_is_truncated(material in material()) {
        let bytes = encode(&material.frame());
        for len in 0..bytes.len() {
            let result = Frame::decode(&bytes[..len]);
            prop_assert_eq!(result, Err(DecodeError::Truncated), "prefix {}", len);
        }
    }

    /// Goal: any single-byte change to a valid frame decodes to a valid (canonical) frame or
    /// fails with an error — never panics. Method: at every position, XOR with a random
    /// non-zero byte.
    #[test]
    fn single_byte_mutations_never_panic(material in material(), flip in 1..=u8::MAX) {
        let bytes = encode(&material.frame());
        for index in 0..bytes.len() {
            let mut mutated = bytes.clone();
            mutated[index] ^= flip;
            assert_canonical(&mutated)?;
        }
    }

    /// Goal: arbitrary bytes never panic, and whatever decodes is canonical. Method: fully
    /// random input, and random bodies behind a valid header of a known type (to reach the
    /// body decoders).
    #[test]
    fn random_bytes_never_panic(
        noise in vec(any::<u8>(), 0..200),
        frame_type in prop::sample::select(FrameType::ALL),
        body in vec(any::<u8>(), 0..80),
    ) {
        assert_canonical(&noise)?;
        let mut framed = vec![frame_type.as_u8()];
        append_varint(&mut framed, body.len() as u64);
        framed.extend(&body);
        assert_canonical(&framed)?;
        let _ = Frame::decode_body(frame_type, &body);
    }
}

/// Goal: the sample strategy can build every frame type (guards `Material::frame`). Method:
/// build each type from one generated material.
#[test]
fn material_covers_every_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let base: Material = material().new_tree(&mut runner).unwrap().current();
    for &frame_type in FrameType::ALL {
        let mut sample = base.clone();
        sample.frame_type = frame_type;
        assert_eq!(sample.frame().frame_type(), frame_type);
    }
}
