use super::Capabilities;

/// Goal: bit positions match the spec. Method: compare each constant with its bit.
#[test]
fn bits_match_the_spec() {
    assert_eq!(Capabilities::HYBRID_PQ.0, 1 << 0);
    assert_eq!(Capabilities::DATAGRAM.0, 1 << 1);
    assert_eq!(Capabilities::FEC.0, 1 << 2);
    assert_eq!(Capabilities::MULTIPATH.0, 1 << 3);
    assert_eq!(Capabilities::OPUS.0, 1 << 4);
    assert_eq!(Capabilities::VP8.0, 1 << 5);
    assert_eq!(Capabilities::RAW_MEDIA.0, 1 << 6);
    assert_eq!(Capabilities::QUIC.0, 1 << 7);
    assert_eq!(Capabilities::OBFUSCATION.0, 1 << 8);
    assert_eq!(Capabilities::KNOWN.0, 0x1ff);
}

/// Goal: the effective set drops unknown bits while the raw value keeps them. Method: intersect
/// two sets that share a known and an unknown bit.
#[test]
fn intersection_ignores_unknown_bits() {
    let a = Capabilities(Capabilities::FEC.0 | Capabilities::OPUS.0 | 1 << 40);
    let b = Capabilities(Capabilities::FEC.0 | Capabilities::QUIC.0 | 1 << 40);
    assert_eq!(a.intersection(b), Capabilities::FEC);
    assert_eq!(a.unknown(), Capabilities(1 << 40));
    assert!(a.contains(Capabilities::FEC | Capabilities::OPUS));
    assert!(!a.contains(Capabilities::QUIC));
}

/// Goal: debug output names known bits and shows unknown ones. Method: format a mixed set.
#[test]
fn debug_lists_names() {
    let caps = Capabilities::HYBRID_PQ | Capabilities::VP8 | Capabilities(1 << 63);
    assert_eq!(
        format!("{caps:?}"),
        "Capabilities(HYBRID_PQ | VP8 | 0x8000000000000000)"
    );
    assert_eq!(format!("{:?}", Capabilities::EMPTY), "Capabilities()");
}
