//! Goal: records and datagrams round-trip, are refused when replayed, forged, reordered past
//! the window or sent under an unknown key epoch, and rekeying keeps both ends in step.
//! Method: sessions from a real handshake, driven directly with explicit time.

use super::*;
use crate::handshake::tests::{complete, pair};
use crate::handshake::{Established, ResponderConfig};
use crate::suite::{Cipher, Pattern, Suite};
use core::time::Duration;
use dp_core::limits::REPLAY_WINDOW_BITS;
use proptest::prelude::*;

fn established(suite: Suite) -> (Box<Established>, Box<Established>) {
    complete(&mut pair(suite, ResponderConfig::default(), 21), Instant(1))
}

fn xk() -> Suite {
    Suite::new(Pattern::Xk, Cipher::ChaChaPoly, false)
}

#[test]
fn records_span_every_size_and_split_anywhere() {
    for cipher in [Cipher::ChaChaPoly, Cipher::AesGcm] {
        let (c, s) = established(Suite::new(Pattern::Xk, cipher, false));
        let now = Instant(2);
        let mut tx = StreamSession::new(&c, now);
        let mut rx = StreamSession::new(&s, now);
        let mut wire = vec![0u8; StreamSession::sealed_len_max(RECORD_PLAINTEXT_LEN_MAX)];
        for len in [1usize, 2, 100, 1200, RECORD_PLAINTEXT_LEN_MAX] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let n = tx.seal_record(now, &plaintext, &mut wire).unwrap();
            // Incomplete input asks for more and changes nothing.
            assert_eq!(rx.open_record(&mut wire[..1]).unwrap(), None);
            assert_eq!(rx.open_record(&mut wire[..n - 1]).unwrap(), None);
            let rec = rx.open_record(&mut wire[..n]).unwrap().unwrap();
            assert_eq!(rec.consumed, n);
            assert_eq!(&wire[rec.plaintext], &plaintext[..]);
        }
        assert_eq!(
            tx.seal_record(now, &[], &mut wire),
            Err(SealError::TooLarge)
        );
        let big = vec![0u8; RECORD_PLAINTEXT_LEN_MAX + 1];
        assert_eq!(
            tx.seal_record(now, &big, &mut wire),
            Err(SealError::TooLarge)
        );
    }
}

#[test]
fn stream_key_update_keeps_both_ends_in_step() {
    let (c, s) = established(xk());
    let mut now = Instant(2);
    let mut tx = StreamSession::new(&c, now);
    let mut rx = StreamSession::new(&s, now);
    let mut wire = [0u8; 256];
    let n = tx.force_key_update(now, &mut wire).unwrap();
    let rec = rx.open_record(&mut wire[..n]).unwrap().unwrap();
    assert!(rec.plaintext.is_empty());
    // A time-driven rekey emits the key update record in front of the data.
    now = now.saturating_add(REKEY_AFTER_TIME);
    let n = tx.seal_record(now, b"after", &mut wire).unwrap();
    assert_eq!(n, RECORD_OVERHEAD + RECORD_OVERHEAD + 5);
    let first = rx.open_record(&mut wire[..n]).unwrap().unwrap();
    assert!(first.plaintext.is_empty());
    let (_, rest) = wire[..n].split_at_mut(first.consumed);
    let second = rx.open_record(rest).unwrap().unwrap();
    assert_eq!(&rest[second.plaintext], b"after");
}

#[test]
fn tampered_record_is_refused() {
    let (c, s) = established(xk());
    let mut tx = StreamSession::new(&c, Instant(2));
    let mut rx = StreamSession::new(&s, Instant(2));
    let mut wire = [0u8; 64];
    let n = tx.seal_record(Instant(2), b"payload", &mut wire).unwrap();
    wire[5] ^= 1;
    assert_eq!(rx.open_record(&mut wire[..n]), Err(OpenError::Decrypt));
    let mut short = [0u8, 3, 0, 0, 0];
    assert_eq!(rx.open_record(&mut short), Err(OpenError::Malformed));
}

fn datagram_pair(suite: Suite) -> (DatagramSession, DatagramSession) {
    let (c, s) = established(suite);
    (
        DatagramSession::new(&c, Instant(2)),
        DatagramSession::new(&s, Instant(2)),
    )
}

#[test]
fn datagram_replay_and_reorder() {
    let (mut tx, mut rx) = datagram_pair(xk());
    let now = Instant(3);
    let mut sent = Vec::new();
    for i in 0..(REPLAY_WINDOW_BITS + 10) {
        let mut buf = [0u8; 64];
        let n = tx.seal(now, &i.to_be_bytes(), &mut buf).unwrap();
        sent.push(buf[..n].to_vec());
    }
    // Newest first, then an old one still inside the window, then duplicates, then one that
    // fell behind the window.
    let last = sent.len() - 1;
    let mut newest = sent[last].clone();
    assert!(rx.open(now, &mut newest).is_ok());
    let mut inside = sent[last - 100].clone();
    assert!(rx.open(now, &mut inside).is_ok());
    let mut again = sent[last - 100].clone();
    assert_eq!(rx.open(now, &mut again), Err(OpenError::Replay));
    let mut again = sent[last].clone();
    assert_eq!(rx.open(now, &mut again), Err(OpenError::Replay));
    let mut too_old = sent[0].clone();
    assert_eq!(rx.open(now, &mut too_old), Err(OpenError::Replay));
}

#[test]
fn forged_datagram_does_not_move_the_window() {
    let (mut tx, mut rx) = datagram_pair(xk());
    let now = Instant(3);
    let mut buf = [0u8; 64];
    let n = tx.seal(now, b"x", &mut buf).unwrap();
    // A forged datagram with a far-future counter fails and must not push the window forward.
    let mut forged = buf[..n].to_vec();
    forged[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(rx.open(now, &mut forged), Err(OpenError::Decrypt));
    assert!(rx.open(now, &mut buf[..n]).is_ok());
    // Wrong receiver index, wrong type, reserved bits and short input are malformed.
    for (at, value) in [(4usize, 0xffu8), (0, 0x04), (2, 1)] {
        let mut bad = buf[..n].to_vec();
        bad[at] ^= value;
        assert_eq!(rx.open(now, &mut bad), Err(OpenError::Malformed));
    }
    assert_eq!(
        rx.open(now, &mut buf[..DATAGRAM_OVERHEAD - 1]),
        Err(OpenError::Malformed)
    );
}

#[test]
fn datagram_rekey_with_reordering_across_epochs() {
    let (mut tx, mut rx) = datagram_pair(Suite::new(Pattern::Xk, Cipher::AesGcm, true));
    let t0 = Instant(3);
    let mut old = [0u8; 64];
    let n_old = tx.seal(t0, b"epoch0", &mut old).unwrap();
    let t1 = t0.saturating_add(REKEY_AFTER_TIME);
    let mut new = [0u8; 64];
    let n_new = tx.seal(t1, b"epoch1", &mut new).unwrap();
    assert_eq!(new[1], 1, "the sender moved to epoch 1");
    // The new-epoch datagram arrives first: the receiver derives the next key.
    let r = rx.open(t1, &mut new[..n_new]).unwrap();
    assert_eq!(&new[r], b"epoch1");
    // The late old-epoch datagram still opens while the previous key is kept...
    let mut late = old;
    let r = rx.open(t1, &mut late[..n_old]).unwrap();
    assert_eq!(&late[r], b"epoch0");
    // ...but not after the keep time.
    let mut stale = [0u8; 64];
    let (mut tx2, mut rx2) = datagram_pair(xk());
    let n = tx2.seal(t0, b"a", &mut stale).unwrap();
    let mut fresh = [0u8; 64];
    let m = tx2.seal(t1, b"b", &mut fresh).unwrap();
    rx2.open(t1, &mut fresh[..m]).unwrap();
    let t2 = t1.saturating_add(PREVIOUS_KEY_KEEP_TIME);
    rx2.handle_timeout(t2);
    assert_eq!(rx2.open(t2, &mut stale[..n]), Err(OpenError::UnknownEpoch));
    // An epoch two ahead is unknown.
    let mut skip = [0u8; 64];
    let k = tx2.seal(t1, b"c", &mut skip).unwrap();
    skip[1] = skip[1].wrapping_add(1);
    assert!(matches!(
        rx2.open(t2, &mut skip[..k]),
        Err(OpenError::UnknownEpoch | OpenError::Decrypt)
    ));
}

#[test]
fn ik_responder_waits_for_key_confirmation() {
    let (c, s) = established(Suite::new(Pattern::Ik, Cipher::ChaChaPoly, false));
    let now = Instant(2);
    let mut client = DatagramSession::new(&c, now);
    let mut server = DatagramSession::new(&s, now);
    let mut buf = [0u8; 64];
    assert_eq!(
        server.seal(now, b"early", &mut buf),
        Err(SealError::NotConfirmed)
    );
    let n = client.seal(now, b"hi", &mut buf).unwrap();
    server.open(now, &mut buf[..n]).unwrap();
    assert!(server.seal(now, b"now ok", &mut buf).is_ok());
}

#[test]
fn datagram_size_limits() {
    let (mut tx, _) = datagram_pair(xk());
    let mut buf = vec![0u8; 2048];
    let max = vec![0u8; DATAGRAM_PLAINTEXT_LEN_MAX];
    assert_eq!(
        tx.seal(Instant(3), &max, &mut buf).unwrap(),
        DATAGRAM_LEN_MAX
    );
    let over = vec![0u8; DATAGRAM_PLAINTEXT_LEN_MAX + 1];
    assert_eq!(
        tx.seal(Instant(3), &over, &mut buf),
        Err(SealError::TooLarge)
    );
    assert_eq!(
        tx.seal(Instant(3), b"x", &mut buf[..DATAGRAM_OVERHEAD]),
        Err(SealError::BufferTooSmall)
    );
    assert!(tx.poll_timeout() >= Instant(2).saturating_add(Duration::from_secs(1)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single-byte change or truncation of a valid datagram is refused, and the original
    /// still opens afterwards (nothing moved).
    #[test]
    fn mutated_datagram_is_refused(at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
        let (mut tx, mut rx) = datagram_pair(xk());
        let mut buf = [0u8; 128];
        let n = tx.seal(Instant(3), b"some media payload", &mut buf).unwrap();
        let mut mutated = buf[..n].to_vec();
        mutated[at.index(n)] ^= flip;
        prop_assert!(rx.open(Instant(3), &mut mutated).is_err());
        let mut truncated = buf[..cut.index(n)].to_vec();
        prop_assert!(rx.open(Instant(3), &mut truncated).is_err());
        prop_assert!(rx.open(Instant(3), &mut buf[..n]).is_ok());
    }
}
