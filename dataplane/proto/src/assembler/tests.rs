use dp_core::limits::{FRAME_LEN_MAX, RECORD_PLAINTEXT_LEN_MAX};
use dp_core::{ConversationId, DeviceId, MessageId};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::frame::{Deliver, Ping, PresenceSet, PresenceState, Recipient, SendFrame};
use crate::sample::{encode, material};
use crate::{Field, FrameHeader, peek_header};

/// What the assembler yielded, owned: each frame re-encoded, or the error.
type Yield = Result<Vec<u8>, DecodeError>;

/// Push each record and drain it; collect everything yielded.
fn run(assembler: &mut FrameAssembler, records: &[&[u8]]) -> Vec<Yield> {
    let mut yielded = Vec::new();
    for record in records {
        let mut frames = assembler.push(record);
        while let Some(item) = frames.next_frame() {
            yielded.push(item.map(|frame| encode(&frame)));
        }
    }
    yielded
}

fn deliver(body: &[u8]) -> Frame<'_> {
    Frame::Deliver(Deliver {
        message: MessageId([7; 16]),
        sender: DeviceId([9; 16]),
        conversation: ConversationId(3),
        seq: 4,
        sent_at_ms: 5,
        body,
    })
}

fn ping(nonce: u64) -> Vec<u8> {
    encode(&Frame::Ping(Ping { nonce }))
}

/// Goal: a frame spanning one, two and three records comes out whole, and only the spanning
/// ones are buffered. Method: Deliver frames of sizes that need 1, 2 and 3 records.
#[test]
fn frames_spanning_one_two_and_three_records() {
    for body_len in [
        100,
        RECORD_PLAINTEXT_LEN_MAX,
        2 * RECORD_PLAINTEXT_LEN_MAX + 1,
    ] {
        let body = vec![0x5a; body_len.min(dp_core::limits::ENVELOPE_BODY_LEN_MAX)];
        let frame = encode(&deliver(&body));
        let records: Vec<&[u8]> = record_chunks(&frame, RECORD_PLAINTEXT_LEN_MAX).collect();
        let expected_records = frame.len().div_ceil(RECORD_PLAINTEXT_LEN_MAX);
        assert_eq!(records.len(), expected_records);
        let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
        let mut yielded = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let mut frames = assembler.push(record);
            while let Some(item) = frames.next_frame() {
                yielded.push(item.map(|frame| encode(&frame)));
            }
            if index + 1 < records.len() {
                assert!(yielded.is_empty());
                assert_eq!(
                    assembler.buffered_len(),
                    (index + 1) * RECORD_PLAINTEXT_LEN_MAX
                );
            }
        }
        assert_eq!(
            yielded,
            vec![Ok(frame.clone())],
            "{expected_records} records"
        );
        assert!(assembler.is_at_frame_boundary());
    }
}

/// Goal: several frames in one record all come out, decoded in place without buffering.
/// Method: 200 Pings in one record; check the buffer stays empty and was never reserved.
#[test]
fn many_frames_in_one_record() {
    let stream: Vec<u8> = (0..200).flat_map(ping).collect();
    let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
    let yielded = run(&mut assembler, &[&stream]);
    assert_eq!(yielded, (0..200).map(|n| Ok(ping(n))).collect::<Vec<_>>());
    assert_eq!(assembler.buffer.capacity(), 0, "nothing was copied");
    assert!(assembler.is_at_frame_boundary());
}

/// A stream of varied frames: tiny (3 bytes), small, a header with a 2-byte length, larger.
fn mixed_stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let body: Vec<u8> = (0..=255).collect();
    let frames = vec![
        encode(&Frame::PresenceSet(PresenceSet {
            state: PresenceState::Away,
        })),
        ping(1),
        encode(&deliver(&body[..40])),
        encode(&Frame::PresenceSet(PresenceSet {
            state: PresenceState::Online,
        })),
        encode(&deliver(&body)),
        encode(&Frame::Send(SendFrame {
            message: MessageId([1; 16]),
            recipient: Recipient::Conversation(ConversationId(2)),
            body: &body[..3],
        })),
        ping(2),
    ];
    (frames.concat(), frames)
}

/// Goal: record boundaries carry no meaning. Method: split a multi-frame stream at every
/// point, and at every pair of points, and compare with the frames it was built from.
#[test]
fn every_split_point_yields_the_same_frames() {
    let (stream, frames) = mixed_stream();
    let expected: Vec<Yield> = frames.into_iter().map(Ok).collect();
    let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
    for split in 0..=stream.len() {
        let (a, b) = stream.split_at(split);
        assert_eq!(run(&mut assembler, &[a, b]), expected, "split at {split}");
        assert!(assembler.is_at_frame_boundary());
    }
    for first in (0..=stream.len()).step_by(3) {
        for second in first..=stream.len() {
            let (a, rest) = stream.split_at(first);
            let (b, c) = rest.split_at(second - first);
            assert_eq!(
                run(&mut assembler, &[a, b, c]),
                expected,
                "split at {first}, {second}"
            );
        }
    }
    // One byte per record.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&mut assembler, &bytes), expected);
}

/// Goal: a frame over the limit fails as soon as its header is complete, without buffering its
/// body, and poisons the assembler. Method: a header declaring FRAME_LEN_MAX + 1 bytes; a
/// 2 KiB frame against a 1 KiB assembler, header split across records.
#[test]
fn oversized_frame_fails_early() {
    let mut header = vec![0x12];
    let mut len = [0; 8];
    let mut writer = crate::Writer::new(&mut len);
    writer.varint((FRAME_LEN_MAX - 4) as u64).unwrap();
    header.extend_from_slice(writer.written());
    let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
    let yielded = run(&mut assembler, &[&header]);
    assert!(matches!(
        yielded.as_slice(),
        [Err(DecodeError::TooLong { field: Field::Frame, len, .. })]
            if *len == FRAME_LEN_MAX as u64 + 1
    ));
    assert_eq!(assembler.buffer.capacity(), 0, "nothing was buffered");
    assert_eq!(
        yielded[0].clone().unwrap_err().error_code(),
        crate::ErrorCode::FRAME_TOO_LARGE
    );

    let body = vec![0; 2048];
    let frame = encode(&deliver(&body));
    let mut small = FrameAssembler::new(1024);
    // The header is 3 bytes (type + 2-byte varint); deliver it one byte per record.
    assert!(run(&mut small, &[&frame[..1], &frame[1..2]]).is_empty());
    let yielded = run(&mut small, &[&frame[2..3]]);
    assert_eq!(
        yielded.len(),
        1,
        "fails on the record that completes the header"
    );
    assert!(matches!(
        yielded[0],
        Err(DecodeError::TooLong {
            field: Field::Frame,
            max: 1024,
            ..
        })
    ));
    assert!(small.buffered_len() <= 3);
    // Poisoned: later records yield the error once and nothing else.
    let error = small.error().unwrap();
    assert_eq!(
        run(&mut small, &[&frame[3..], &ping(1)]),
        vec![Err(error); 2]
    );
}

/// Goal: after a malformed frame the assembler is poisoned and yields nothing more. Method: a
/// Ping with an extra body byte followed by a good Ping, in one record and split.
#[test]
fn malformed_frame_poisons() {
    let bad = hex::decode("0409000000000000000100").unwrap();
    let stream = [bad, ping(1)].concat();
    for split in 0..=stream.len() {
        let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
        let yielded = run(&mut assembler, &[&stream[..split], &stream[split..]]);
        assert_eq!(yielded[0], Err(DecodeError::TrailingBytes), "split {split}");
        assert!(
            yielded[1..]
                .iter()
                .all(|item| *item == Err(DecodeError::TrailingBytes))
        );
        assert_eq!(assembler.error(), Some(DecodeError::TrailingBytes));
        let mut frames = assembler.push(&[]);
        assert_eq!(
            frames.next_frame().map(|r| r.map(|_| ())),
            Some(Err(DecodeError::TrailingBytes))
        );
        assert!(frames.next_frame().is_none());
    }
}

/// Goal: an unknown frame type is skipped — even when its body spans records — and the
/// frames after it still come out. Method: an unknown 100-byte frame between two Pings, split
/// at every point.
#[test]
fn unknown_frame_is_skipped_across_records() {
    let mut unknown = vec![0x7e, 0x40, 100];
    unknown.extend([0xee; 100]);
    assert_eq!(
        peek_header(&unknown),
        Ok(FrameHeader {
            type_byte: 0x7e,
            body_len: 100,
            header_len: 3
        })
    );
    let stream = [ping(1), unknown, ping(2)].concat();
    let expected = vec![
        Ok(ping(1)),
        Err(DecodeError::UnknownFrameType(0x7e)),
        Ok(ping(2)),
    ];
    let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
    for split in 0..=stream.len() {
        assert_eq!(
            run(&mut assembler, &[&stream[..split], &stream[split..]]),
            expected,
            "split {split}"
        );
        assert!(assembler.is_at_frame_boundary());
        assert!(assembler.error().is_none());
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&mut assembler, &bytes), expected);
}

/// Goal: the buffer stops growing once it has held one spanning frame (no allocation per frame
/// at steady state) and never grows past the limit. Method: stream many frames, each spanning
/// records, through a small assembler and watch the capacity.
#[test]
fn buffer_grows_once_and_stays_bounded() {
    let body = vec![1; 300];
    let frame = encode(&deliver(&body));
    let stream: Vec<u8> = frame.repeat(20);
    let mut assembler = FrameAssembler::new(512);
    let mut capacity = None;
    for record in record_chunks(&stream, 97) {
        let mut frames = assembler.push(record);
        while let Some(item) = frames.next_frame() {
            assert_eq!(encode(&item.unwrap()), frame);
        }
        assert!(assembler.buffered_len() <= 512);
        assert!(assembler.buffer.capacity() <= 512);
        if let Some(capacity) = capacity {
            assert_eq!(
                capacity,
                assembler.buffer.capacity(),
                "grew after the first frame"
            );
        } else if assembler.is_at_frame_boundary() && assembler.buffer.capacity() > 0 {
            capacity = Some(assembler.buffer.capacity());
        }
    }
    assert!(capacity.unwrap() >= frame.len());
}

/// Goal: `record_chunks` never produces an empty or oversized record. Method: clamp both ends.
#[test]
fn record_chunks_are_bounded() {
    let stream = vec![0; 3 * RECORD_PLAINTEXT_LEN_MAX + 5];
    let sizes: Vec<usize> = record_chunks(&stream, usize::MAX)
        .map(<[u8]>::len)
        .collect();
    assert_eq!(
        sizes,
        [
            RECORD_PLAINTEXT_LEN_MAX,
            RECORD_PLAINTEXT_LEN_MAX,
            RECORD_PLAINTEXT_LEN_MAX,
            5
        ]
    );
    assert_eq!(record_chunks(&[1, 2], 0).count(), 2);
    assert_eq!(record_chunks(&[], 10).count(), 0);
}

/// Goal: a stream that stops mid-frame is detectable. Method: push half a frame.
#[test]
fn partial_frame_is_not_at_boundary() {
    let frame = ping(5);
    let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
    assert!(run(&mut assembler, &[&frame[..4]]).is_empty());
    assert!(!assembler.is_at_frame_boundary());
    assert_eq!(assembler.buffered_len(), 4);
    assert_eq!(run(&mut assembler, &[&frame[4..]]), vec![Ok(frame)]);
    assert!(assembler.is_at_frame_boundary());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Goal: for any frames and any record sizes, the assembler yields exactly the frames that
    /// were sent. Method: arbitrary frames, cut into records of a random size.
    #[test]
    fn reassembles_arbitrary_streams(
        materials in vec(material(), 1..8),
        record_len in 1..700_usize,
    ) {
        let frames: Vec<Vec<u8>> = materials.iter().map(|m| encode(&m.frame())).collect();
        let stream = frames.concat();
        let records: Vec<&[u8]> = record_chunks(&stream, record_len).collect();
        let mut assembler = FrameAssembler::new(FRAME_LEN_MAX);
        let expected: Vec<Yield> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(run(&mut assembler, &records), expected);
        prop_assert!(assembler.is_at_frame_boundary());
    }

    /// Goal: garbage never panics the assembler and never makes it buffer past its limit.
    /// Method: random records into a small assembler.
    #[test]
    fn random_records_never_panic(records in vec(vec(any::<u8>(), 0..300), 0..10)) {
        let mut assembler = FrameAssembler::new(256);
        for record in &records {
            let mut frames = assembler.push(record);
            while frames.next_frame().is_some() {}
            prop_assert!(assembler.buffered_len() <= 256);
        }
    }
}
