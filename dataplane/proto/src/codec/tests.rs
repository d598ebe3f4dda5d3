use proptest::prelude::*;

use super::*;

fn encode_varint(value: u64) -> Vec<u8> {
    let mut out = [0; 8];
    let mut writer = Writer::new(&mut out);
    writer.varint(value).unwrap();
    writer.written().to_vec()
}

/// Goal: the varint matches RFC 9000 §16 at every length boundary. Method: encode each edge
/// value, compare with the expected bytes, decode back.
#[test]
fn varint_edge_values() {
    let cases: &[(u64, &str)] = &[
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (16_383, "7fff"),
        (16_384, "80004000"),
        ((1 << 30) - 1, "bfffffff"),
        (1 << 30, "c000000040000000"),
        (VARINT_MAX, "ffffffffffffffff"),
        // RFC 9000 appendix A.1 examples.
        (151_288_809_941_952_652, "c2197c5eff14e88c"),
        (494_878_333, "9d7f3e7d"),
        (15_293, "7bbd"),
        (37, "25"),
    ];
    for &(value, hex_bytes) in cases {
        let bytes = hex::decode(hex_bytes).unwrap();
        assert_eq!(encode_varint(value), bytes, "encoding {value}");
        assert_eq!(varint_len(value), bytes.len(), "length of {value}");
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.varint(), Ok(value), "decoding {hex_bytes}");
        assert!(reader.is_empty());
    }
}

/// Goal: a decoder rejects every non-minimal encoding. Method: encode small values in each
/// longer form, including RFC 9000's two-byte 37 (`4025`).
#[test]
fn varint_rejects_non_minimal() {
    for hex_bytes in [
        "4025",
        "4000",
        "403f",
        "80000000",
        "80003fff",
        "c000000000000000",
        "c00000003fffffff",
    ] {
        let bytes = hex::decode(hex_bytes).unwrap();
        assert_eq!(
            Reader::new(&bytes).varint(),
            Err(DecodeError::NonMinimalVarint),
            "{hex_bytes}"
        );
    }
}

/// Goal: out-of-range values are refused, not wrapped. Method: encode 2^62.
#[test]
fn varint_refuses_values_above_max() {
    let mut out = [0; 8];
    assert_eq!(
        Writer::new(&mut out).varint(1 << 62),
        Err(EncodeError::VarintOutOfRange)
    );
}

/// Goal: a varint cut short is `Truncated`. Method: every strict prefix of each length.
#[test]
fn varint_truncated() {
    for value in [64, 16_384, 1 << 30] {
        let bytes = encode_varint(value);
        for len in 0..bytes.len() {
            assert_eq!(
                Reader::new(&bytes[..len]).varint(),
                Err(DecodeError::Truncated)
            );
        }
    }
}

/// Goal: writes past the end fail without writing. Method: a 3-byte buffer, then a u32.
#[test]
fn writer_reports_buffer_too_small() {
    let mut out = [0; 3];
    let mut writer = Writer::new(&mut out);
    writer.u16(0xabcd).unwrap();
    assert_eq!(writer.u32(1), Err(EncodeError::BufferTooSmall));
    assert_eq!(writer.position(), 2);
    assert_eq!(writer.remaining(), 1);
    writer.u8(0xef).unwrap();
    assert_eq!(writer.written(), [0xab, 0xcd, 0xef]);
    assert_eq!(writer.u8(0), Err(EncodeError::BufferTooSmall));
}

/// Goal: length limits apply before slicing, on both sides. Method: a `bytes(4)` field holding
/// 4 and 5 bytes; a declared length of 2^62−1 with no data behind it.
#[test]
fn bytes_field_limits() {
    let mut out = [0; 16];
    let mut writer = Writer::new(&mut out);
    writer.bytes(Field::Body, 4, b"abcd").unwrap();
    assert_eq!(
        writer.bytes(Field::Body, 4, b"abcde"),
        Err(EncodeError::TooLong {
            field: Field::Body,
            len: 5,
            max: 4
        })
    );
    assert_eq!(writer.written(), b"\x04abcd");
    assert_eq!(
        Reader::new(b"\x04abcd").bytes(Field::Body, 4),
        Ok(&b"abcd"[..])
    );
    assert_eq!(
        Reader::new(b"\x05abcde").bytes(Field::Body, 4),
        Err(DecodeError::TooLong {
            field: Field::Body,
            len: 5,
            max: 4
        })
    );
    assert_eq!(
        Reader::new(&hex::decode("ffffffffffffffff").unwrap()).bytes(Field::Body, 4),
        Err(DecodeError::TooLong {
            field: Field::Body,
            len: VARINT_MAX,
            max: 4
        })
    );
    assert_eq!(
        Reader::new(b"\x04abc").bytes(Field::Body, 4),
        Err(DecodeError::Truncated)
    );
}

/// Goal: text must be UTF-8. Method: a lone continuation byte.
#[test]
fn str_field_rejects_invalid_utf8() {
    assert_eq!(
        Reader::new(b"\x02h\x80").str(Field::Reason, 8),
        Err(DecodeError::InvalidUtf8 {
            field: Field::Reason
        })
    );
    assert_eq!(Reader::new(b"\x02hi").str(Field::Reason, 8), Ok("hi"));
}

/// Goal: `decode_exact` rejects trailing data. Method: a u16 followed by one more byte.
#[test]
fn decode_exact_rejects_trailing_bytes() {
    assert_eq!(u16::decode_exact(&[1, 2]), Ok(0x0102));
    assert_eq!(
        u16::decode_exact(&[1, 2, 3]),
        Err(DecodeError::TrailingBytes)
    );
    assert_eq!(u16::decode_exact(&[1]), Err(DecodeError::Truncated));
}

/// Goal: reason truncation never splits a character. Method: cut a multi-byte string at every
/// length.
#[test]
fn truncate_utf8_respects_char_boundaries() {
    let text = "aé€😀";
    for len_max in 0..=text.len() + 1 {
        let cut = truncate_utf8(text, len_max);
        assert!(cut.len() <= len_max);
        assert!(text.starts_with(cut));
    }
    assert_eq!(truncate_utf8(text, 2), "a");
    assert_eq!(truncate_utf8(text, 3), "aé");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Goal: every encodable value round-trips and takes `varint_len` bytes. Method: values of
    /// each length class.
    #[test]
    fn varint_round_trips(
        value in prop_oneof![0..64_u64, 0..16_384_u64, 0..1_u64 << 30, 0..=VARINT_MAX],
    ) {
        let bytes = encode_varint(value);
        prop_assert_eq!(bytes.len(), varint_len(value));
        let mut reader = Reader::new(&bytes);
        prop_assert_eq!(reader.varint(), Ok(value));
        prop_assert!(reader.is_empty());
    }

    /// Goal: decoding arbitrary bytes as a varint never panics, and whatever decodes re-encodes
    /// to the same bytes (minimality makes the encoding canonical). Method: random 0–9 bytes.
    #[test]
    fn varint_decode_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..10)) {
        let mut reader = Reader::new(&bytes);
        if let Ok(value) = reader.varint() {
            let used = bytes.len() - reader.remaining();
            prop_assert_eq!(encode_varint(value), &bytes[..used]);
        }
    }
}
