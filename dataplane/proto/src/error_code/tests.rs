use super::ErrorCode;

/// Goal: the table matches the spec and names round-trip. Method: spot-check values and names,
/// and check that every defined code has a distinct value.
#[test]
fn codes_match_the_spec() {
    assert_eq!(ErrorCode::MALFORMED_FRAME.0, 0x0001);
    assert_eq!(ErrorCode::TOO_MANY_SESSIONS.0, 0x0023);
    assert_eq!(ErrorCode::HYBRID_REQUIRED.0, 0x0050);
    assert_eq!(ErrorCode::SHUTTING_DOWN.name(), Some("SHUTTING_DOWN"));
    assert_eq!(ErrorCode(0x0006).name(), None);
    assert_eq!(ErrorCode::ALL.len(), 21);
    let mut values: Vec<u16> = ErrorCode::ALL.iter().map(|code| code.0).collect();
    values.dedup();
    assert_eq!(values.len(), ErrorCode::ALL.len());
    assert!(ErrorCode::OK.is_ok() && !ErrorCode::INTERNAL.is_ok());
}

/// Goal: unknown codes stay printable. Method: format a known and an unknown code.
#[test]
fn formatting_names_known_codes_and_hexes_unknown_ones() {
    assert_eq!(
        format!("{:?}", ErrorCode::RATE_LIMITED),
        "ErrorCode::RATE_LIMITED"
    );
    assert_eq!(format!("{}", ErrorCode(0x0bad)), "0x0bad");
    assert_eq!(format!("{:?}", ErrorCode(0x0bad)), "ErrorCode(0x0bad)");
}
