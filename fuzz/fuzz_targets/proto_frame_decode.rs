//! Any bytes decode to a frame or a typed error without panicking, and every frame that
//! decodes re-encodes to exactly the bytes it came from (strict, canonical decoding).
#![no_main]

use dp_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, consumed)) = Frame::decode(data) {
        assert_eq!(frame.encoded_len(), consumed);
        let mut out = vec![0u8; consumed];
        let written = frame.encode(&mut out).expect("a decoded frame re-encodes");
        assert_eq!(written, consumed);
        assert_eq!(&out[..], &data[..consumed], "decoding is not canonical");
        let (again, _) = Frame::decode(&out).expect("re-encoded frame decodes");
        assert_eq!(again, frame);
    }
});
