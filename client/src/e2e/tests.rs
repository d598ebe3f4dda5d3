//! Unit tests of [`E2e`]: two (or three) devices in memory with a pretend key directory (the
//! published keys, claimed once each), no server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

const ALICE: DeviceId = DeviceId([0xa1; 16]);
const BOB: DeviceId = DeviceId([0xb0; 16]);
const CAROL: DeviceId = DeviceId([0xc0; 16]);
const KEY: [u8; 32] = [7; 32];

/// What the directory would answer for `device` after it published `keys`: its identity and
/// its `index`th one-time key.
fn claimed(device: DeviceId, keys: &PublishKeys, index: usize) -> ClaimedKeys {
    ClaimedKeys {
        device_id: hex::encode(device.0),
        identity: keys.identity.clone(),
        one_time_key: keys.one_time_keys[index].clone(),
        fallback: false,
    }
}

/// Alice with an outbound session to Bob (not yet used), and Bob's published keys.
fn pair() -> (E2e, E2e, PublishKeys) {
    let alice = E2e::new();
    let mut bob = E2e::new();
    let keys = bob.keys_to_publish(5);
    (alice, bob, keys)
}

/// Goal: a round trip works from the first (pre-key) message on, in both directions, and the
/// body carries the documented header and never the plaintext. Method: Alice seals with Bob's
/// claimed keys, Bob opens; Bob answers over the new session; both keep talking.
#[test]
fn round_trip_pre_key_then_normal_messages() {
    let (mut alice, mut bob, keys) = pair();
    assert!(!alice.has_session(BOB));
    let plaintext = b"hello bob, this is a secret";
    let first = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), plaintext)
        .unwrap();
    assert!(alice.has_session(BOB));
    assert_eq!(first[0], BODY_VERSION);
    assert_eq!(first[1], 0x00, "the first message is a pre-key message");
    assert!(!contains(&first, plaintext));
    assert_eq!(bob.open(ALICE, &first).unwrap(), plaintext);
    assert!(bob.has_session(ALICE));

    // Until Alice hears back she keeps sending pre-key messages of the same session.
    let second = alice.seal(BOB, None, b"second").unwrap();
    assert_eq!(second[1], 0x00);
    assert_eq!(bob.open(ALICE, &second).unwrap(), b"second");

    let reply = bob.seal(ALICE, None, b"hi alice").unwrap();
    assert_eq!(reply[1], 0x01, "the session exists: a normal message");
    assert_eq!(alice.open(BOB, &reply).unwrap(), b"hi alice");
    for n in 0..20u32 {
        let text = format!("message {n}");
        let body = alice.seal(BOB, None, text.as_bytes()).unwrap();
        assert_eq!(body[1], 0x01);
        assert_eq!(bob.open(ALICE, &body).unwrap(), text.as_bytes());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Goal: messages may arrive out of order (the server's order is per conversation, resends
/// happen). Method: seal five, open them in reverse.
#[test]
fn out_of_order_messages_open() {
    let (mut alice, mut bob, keys) = pair();
    let first = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"0")
        .unwrap();
    bob.open(ALICE, &first).unwrap();
    let reply = bob.seal(ALICE, None, b"ack").unwrap();
    alice.open(BOB, &reply).unwrap();
    let bodies: Vec<_> = (1..=5u8)
        .map(|n| alice.seal(BOB, None, &[n]).unwrap())
        .collect();
    for (n, body) in bodies.iter().enumerate().rev() {
        assert_eq!(bob.open(ALICE, body).unwrap(), [n as u8 + 1]);
    }
}

/// Goal: a replayed message is rejected (its message key is used up), for normal and pre-key
/// messages alike, and the replay does not break the session. Method: open each body twice.
#[test]
fn replayed_messages_are_rejected() {
    let (mut alice, mut bob, keys) = pair();
    let pre_key = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"first")
        .unwrap();
    assert_eq!(bob.open(ALICE, &pre_key).unwrap(), b"first");
    assert_eq!(bob.open(ALICE, &pre_key), Err(E2eError::Decrypt));
    let reply = bob.seal(ALICE, None, b"r").unwrap();
    alice.open(BOB, &reply).unwrap();
    let normal = alice.seal(BOB, None, b"normal").unwrap();
    assert_eq!(bob.open(ALICE, &normal).unwrap(), b"normal");
    assert_eq!(bob.open(ALICE, &normal), Err(E2eError::Decrypt));
    // The session still works.
    let next = alice.seal(BOB, None, b"next").unwrap();
    assert_eq!(bob.open(ALICE, &next).unwrap(), b"next");
}

/// Goal: a flipped bit anywhere in the ciphertext is rejected without breaking the session.
/// Method: flip each byte of a normal and of a pre-key body in turn; then the untampered body
/// still opens.
#[test]
fn tampered_ciphertext_is_rejected() {
    let (mut alice, mut bob, keys) = pair();
    let pre_key = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"tamper me")
        .unwrap();
    for i in 2..pre_key.len() {
        let mut bad = pre_key.clone();
        bad[i] ^= 0x01;
        assert!(bob.open(ALICE, &bad).is_err(), "byte {i} of a pre-key body");
    }
    assert_eq!(bob.open(ALICE, &pre_key).unwrap(), b"tamper me");
    let normal = bob.seal(ALICE, None, b"and me").unwrap();
    for i in 2..normal.len() {
        let mut bad = normal.clone();
        bad[i] ^= 0x80;
        assert!(alice.open(BOB, &bad).is_err(), "byte {i} of a normal body");
    }
    assert_eq!(alice.open(BOB, &normal).unwrap(), b"and me");
}

/// Goal: the state survives a pickle round trip (account and sessions), the pickle holds no
/// key material in the clear, and a wrong key or a damaged pickle is refused. Method: pickle
/// both sides mid-conversation, restore, keep talking; search the pickle for the identity.
#[test]
fn pickle_round_trip_keeps_sessions_and_is_encrypted() {
    let (mut alice, mut bob, keys) = pair();
    let body = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"before")
        .unwrap();
    bob.open(ALICE, &body).unwrap();
    let identity = bob.identity();
    let pickled = bob.pickle(&KEY);
    assert!(!pickled.contains(&identity.curve25519));
    assert!(!pickled.contains(&hex::encode(ALICE.0)));
    let mut bob = E2e::from_pickle(&pickled, &KEY).unwrap();
    assert_eq!(bob.identity(), identity);
    assert!(bob.has_session(ALICE));
    let mut alice = E2e::from_pickle(&alice.pickle(&KEY), &KEY).unwrap();
    let body = alice.seal(BOB, None, b"after").unwrap();
    assert_eq!(bob.open(ALICE, &body).unwrap(), b"after");
    let reply = bob.seal(ALICE, None, b"reply").unwrap();
    assert_eq!(alice.open(BOB, &reply).unwrap(), b"reply");

    assert_eq!(
        E2e::from_pickle(&pickled, &[8; 32]).err(),
        Some(E2eError::Pickle)
    );
    let mut damaged = pickled.into_bytes();
    let last = damaged.len() - 3;
    damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).unwrap();
    assert_eq!(
        E2e::from_pickle(&damaged, &KEY).err(),
        Some(E2eError::Pickle)
    );
    for garbage in ["", "ccp-e2e-pickle-v1:", "ccp-e2e-pickle-v1:!!!", "{}"] {
        assert_eq!(
            E2e::from_pickle(garbage, &KEY).err(),
            Some(E2eError::Pickle)
        );
    }
}

/// Goal: a one-time key cannot be used twice: a second pre-key message on a consumed key (a
/// new session the server handed the same key to) fails to create a session. Method: two
/// senders claim the same one-time key; the second's first message fails.
#[test]
fn a_consumed_one_time_key_starts_no_second_session() {
    let (mut alice, mut bob, keys) = pair();
    let mut carol = E2e::new();
    let a = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"alice")
        .unwrap();
    let c = carol
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"carol")
        .unwrap();
    assert_eq!(bob.open(ALICE, &a).unwrap(), b"alice");
    assert_eq!(bob.open(CAROL, &c), Err(E2eError::SessionCreation));
    // Another one-time key works.
    let mut carol = E2e::new();
    let c = carol
        .seal(BOB, Some(&claimed(BOB, &keys, 1)), b"carol")
        .unwrap();
    assert_eq!(bob.open(CAROL, &c).unwrap(), b"carol");
}

/// Goal: the fallback key starts sessions once the one-time keys are gone, and stays usable
/// (several senders). Method: two senders start sessions with Bob's fallback key.
#[test]
fn fallback_key_starts_sessions() {
    let mut bob = E2e::new();
    let keys = bob.keys_to_publish(0);
    assert!(keys.one_time_keys.is_empty());
    for (sender, name) in [(ALICE, "alice"), (CAROL, "carol")] {
        let mut e2e = E2e::new();
        let claim = ClaimedKeys {
            device_id: hex::encode(BOB.0),
            identity: keys.identity.clone(),
            one_time_key: keys.fallback_key.clone(),
            fallback: true,
        };
        let body = e2e.seal(BOB, Some(&claim), name.as_bytes()).unwrap();
        assert_eq!(bob.open(sender, &body).unwrap(), name.as_bytes());
    }
}

/// Goal: claimed keys are checked before use: another device's keys, a bad signature, a
/// changed identity for a pinned device, or no keys at all are errors. Method: each once.
#[test]
fn claimed_keys_are_checked() {
    let (mut alice, mut bob, keys) = pair();
    assert_eq!(alice.seal(BOB, None, b"x"), Err(E2eError::NoSession));
    assert_eq!(
        alice.seal(CAROL, Some(&claimed(BOB, &keys, 0)), b"x"),
        Err(E2eError::ClaimedForAnotherDevice)
    );
    let mut forged = claimed(BOB, &keys, 0);
    forged.one_time_key.key = keys.one_time_keys[1].key.clone();
    assert_eq!(
        alice.seal(BOB, Some(&forged), b"x"),
        Err(E2eError::InvalidSignature)
    );
    let mut bad = claimed(BOB, &keys, 0);
    bad.identity.curve25519 = "not a key".to_string();
    assert_eq!(alice.seal(BOB, Some(&bad), b"x"), Err(E2eError::InvalidKey));
    // A server that answers with another identity for a device Alice already talks to.
    let body = alice
        .seal(BOB, Some(&claimed(BOB, &keys, 0)), b"x")
        .unwrap();
    bob.open(ALICE, &body).unwrap();
    let mut mallory = E2e::new();
    let impostor = mallory.keys_to_publish(1);
    let mut alice2 = E2e::from_pickle(&alice.pickle(&KEY), &KEY).unwrap();
    alice2.peers.get_mut(&BOB).unwrap().sessions.clear();
    assert_eq!(
        alice2.seal(BOB, Some(&claimed(BOB, &impostor, 0)), b"x"),
        Err(E2eError::IdentityChanged)
    );
    // An inbound pre-key message claiming to come from Alice's device with another identity.
    let mut fake_alice = E2e::new();
    let spoof = fake_alice
        .seal(BOB, Some(&claimed(BOB, &keys, 2)), b"spoof")
        .unwrap();
    assert_eq!(bob.open(ALICE, &spoof), Err(E2eError::IdentityChanged));
    // Forgetting the device accepts the new identity.
    bob.forget(ALICE);
    assert_eq!(bob.open(ALICE, &spoof).unwrap(), b"spoof");
}

/// Goal: bounds hold: a too-long plaintext or body is refused, sessions per peer and peers
/// are capped, and published one-time keys are at most the server's bound. Method: push each.
#[test]
fn bounds_are_enforced() {
    let (mut alice, mut bob, keys) = pair();
    assert_eq!(
        alice.seal(
            BOB,
            Some(&claimed(BOB, &keys, 0)),
            &vec![0; PLAINTEXT_LEN_MAX + 1]
        ),
        Err(E2eError::PlaintextTooLong)
    );
    let big = alice
        .seal(
            BOB,
            Some(&claimed(BOB, &keys, 0)),
            &vec![0x55; PLAINTEXT_LEN_MAX],
        )
        .unwrap();
    assert!(big.len() <= BODY_LEN_MAX, "{}", big.len());
    assert_eq!(bob.open(ALICE, &big).unwrap().len(), PLAINTEXT_LEN_MAX);
    assert_eq!(
        bob.open(ALICE, &vec![BODY_VERSION; BODY_LEN_MAX + 1]),
        Err(E2eError::BodyTooLong)
    );
    assert_eq!(
        bob.keys_to_publish(10_000).one_time_keys.len(),
        ONE_TIME_KEYS_PER_PUBLISH_MAX
    );
    // Many senders with sessions to Bob's single device id: sessions per peer stay capped.
    let keys = bob.keys_to_publish(ONE_TIME_KEYS_PER_PUBLISH_MAX);
    for i in 0..SESSIONS_PER_PEER_MAX + 3 {
        let mut a = E2e::from_pickle(&alice.pickle(&KEY), &KEY).unwrap();
        a.peers.get_mut(&BOB).unwrap().sessions.clear();
        let body = a.seal(BOB, Some(&claimed(BOB, &keys, i)), b"s").unwrap();
        bob.open(ALICE, &body).unwrap();
        assert!(bob.peers[&ALICE].sessions.len() <= SESSIONS_PER_PEER_MAX);
    }
    assert_eq!(bob.peers[&ALICE].sessions.len(), SESSIONS_PER_PEER_MAX);
}

/// Goal: the peer table is bounded and evicts the least recently used device. Method: fill
/// it past [`PEERS_MAX`] with fallback-key sessions and check who is left.
#[test]
fn peer_table_is_bounded_lru() {
    let mut bob = E2e::new();
    let keys = bob.keys_to_publish(0);
    let claim = ClaimedKeys {
        device_id: hex::encode(BOB.0),
        identity: keys.identity.clone(),
        one_time_key: keys.fallback_key,
        fallback: true,
    };
    let mut alice = E2e::new();
    let first = alice.seal(BOB, Some(&claim), b"0").unwrap();
    for n in 0..PEERS_MAX as u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        // Reuse one sender's messages under many device ids: cheap, and enough to fill the
        // table (each id gets a session of its own from the same pre-key message).
        bob.open(DeviceId(id), &first).unwrap();
    }
    assert_eq!(bob.peers.len(), PEERS_MAX);
    let extra = DeviceId([0xee; 16]);
    bob.open(extra, &first).unwrap();
    assert_eq!(bob.peers.len(), PEERS_MAX);
    assert!(bob.has_session(extra));
    assert!(
        !bob.has_session(DeviceId([0; 16])),
        "the oldest peer is evicted"
    );
}

/// Goal: garbage never panics and is always an error. Method: fixed malformed bodies, then
/// arbitrary bytes (and arbitrary bytes behind a valid header) from proptest.
#[test]
fn malformed_bodies_are_errors() {
    let (_, mut bob, _) = pair();
    assert_eq!(bob.open(ALICE, &[]), Err(E2eError::Malformed));
    assert_eq!(bob.open(ALICE, &[BODY_VERSION]), Err(E2eError::Malformed));
    assert_eq!(
        bob.open(ALICE, &[0x02, 0x00, 1, 2, 3]),
        Err(E2eError::UnknownVersion(0x02))
    );
    assert_eq!(
        bob.open(ALICE, &[BODY_VERSION, 0x02, 1, 2, 3]),
        Err(E2eError::Malformed)
    );
    assert_eq!(
        bob.open(ALICE, &[BODY_VERSION, 0x01, 3, 0x0a, 0x20]),
        Err(E2eError::Malformed)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        kind in 0u8..3,
    ) {
        let (mut alice, mut bob, keys) = pair();
        prop_assert!(bob.open(ALICE, &body).is_err());
        let mut framed = vec![BODY_VERSION, kind];
        framed.extend_from_slice(&body);
        prop_assert!(bob.open(ALICE, &framed).is_err());
        // Garbage appended to, or cut from, a real body.
        let real = alice.seal(BOB, Some(&claimed(BOB, &keys, 0)), b"real").unwrap();
        let cut = body.len() % real.len();
        prop_assert!(bob.open(ALICE, &real[..cut]).is_err());
        let mut spliced = real.clone();
        let at = 2 + body.len() % (real.len() - 2);
        spliced.splice(at.., body.iter().copied());
        if spliced != real {
            prop_assert!(bob.open(ALICE, &spliced).is_err());
        }
        prop_assert_eq!(bob.open(ALICE, &real).unwrap(), b"real".to_vec());
    }
}

/// Goal: topping up one-time keys adds new keys and keeps the fallback key. Method: Bob
/// publishes, then tops up; Alice starts a session on a topped-up key and Bob opens it; the
/// fallback published before the top-up still starts sessions.
#[test]
fn topped_up_one_time_keys_start_sessions_and_keep_the_fallback() {
    let (mut alice, mut bob, keys) = pair();
    let more = bob.one_time_keys_to_publish(3);
    assert_eq!(more.len(), 3);
    let before: Vec<&str> = keys
        .one_time_keys
        .iter()
        .map(|k| k.key_id.as_str())
        .collect();
    assert!(more.iter().all(|k| !before.contains(&k.key_id.as_str())));
    let topped = PublishKeys {
        identity: keys.identity.clone(),
        fallback_key: keys.fallback_key.clone(),
        one_time_keys: more,
    };
    let body = alice
        .seal(BOB, Some(&claimed(BOB, &topped, 0)), b"on a new key")
        .unwrap();
    assert_eq!(bob.open(ALICE, &body).unwrap(), b"on a new key");
    let mut carol = E2e::new();
    let on_fallback = ClaimedKeys {
        device_id: hex::encode(BOB.0),
        identity: keys.identity.clone(),
        one_time_key: keys.fallback_key.clone(),
        fallback: true,
    };
    let body = carol.seal(BOB, Some(&on_fallback), b"fallback").unwrap();
    assert_eq!(bob.open(CAROL, &body).unwrap(), b"fallback");
}
