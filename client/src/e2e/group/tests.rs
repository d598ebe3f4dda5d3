#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const CONV: u64 = 7;

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

/// Alice (device 1) prepares for bob (2) and carol (3); each takes the room key.
fn shared() -> (Groups, Groups, Groups) {
    let (mut alice, mut bob, mut carol) = (Groups::new(), Groups::new(), Groups::new());
    let key = alice.prepare(CONV, &[dev(2), dev(3)]).unwrap().unwrap();
    assert_eq!(key.devices, vec![dev(2), dev(3)]);
    assert_eq!(key.payload[0], TAG_ROOM_KEY);
    assert!(
        bob.receive_room_key(dev(1), &key.payload)
            .unwrap()
            .is_empty()
    );
    assert!(
        carol
            .receive_room_key(dev(1), &key.payload)
            .unwrap()
            .is_empty()
    );
    (alice, bob, carol)
}

#[test]
fn one_ciphertext_opens_for_every_member_with_the_key() {
    let (mut alice, mut bob, mut carol) = shared();
    let body = alice.encrypt(CONV, b"meow").unwrap();
    assert_eq!(body[0], TAG_GROUP);
    assert_eq!(conversation_of(&body), Some(CONV));
    assert!(
        !body.windows(4).any(|w| w == b"meow"),
        "no plaintext in the body"
    );
    for member in [&mut bob, &mut carol] {
        assert_eq!(
            member.decrypt(dev(1), CONV, &body, "n").unwrap(),
            Decrypted::Plaintext(b"meow".to_vec())
        );
    }
    // Same membership: no new key.
    assert!(alice.prepare(CONV, &[dev(3), dev(2)]).unwrap().is_none());
}

#[test]
fn a_membership_change_rotates_and_the_removed_member_cannot_read_on() {
    let (mut alice, mut bob, mut carol) = shared();
    let first = alice.outbound_session_id(CONV).unwrap();
    // carol leaves.
    let key = alice.prepare(CONV, &[dev(2)]).unwrap().expect("rotated");
    assert_eq!(key.devices, vec![dev(2)]);
    assert_ne!(alice.outbound_session_id(CONV).unwrap(), first);
    bob.receive_room_key(dev(1), &key.payload).unwrap();
    let body = alice.encrypt(CONV, b"after").unwrap();
    assert_eq!(
        bob.decrypt(dev(1), CONV, &body, "").unwrap(),
        Decrypted::Plaintext(b"after".to_vec())
    );
    assert_eq!(
        carol.decrypt(dev(1), CONV, &body, "").unwrap(),
        Decrypted::Pending,
        "carol never gets the new key"
    );
    assert_eq!(carol.pending(), 1);
}

#[test]
fn a_session_is_replaced_after_its_message_budget() {
    let (mut alice, _, _) = shared();
    let first = alice.outbound_session_id(CONV).unwrap();
    for _ in 0..MESSAGES_PER_SESSION_MAX {
        assert!(alice.prepare(CONV, &[dev(2), dev(3)]).unwrap().is_none());
        alice.encrypt(CONV, b"x").unwrap();
    }
    assert!(alice.prepare(CONV, &[dev(2), dev(3)]).unwrap().is_some());
    assert_ne!(alice.outbound_session_id(CONV).unwrap(), first);
}

#[test]
fn a_message_before_its_key_waits_then_opens_when_the_key_arrives() {
    let mut alice = Groups::new();
    let mut bob = Groups::new();
    let key = alice.prepare(CONV, &[dev(2)]).unwrap().unwrap();
    let body = alice.encrypt(CONV, b"early").unwrap();
    assert_eq!(
        bob.decrypt(dev(1), CONV, &body, "note-1").unwrap(),
        Decrypted::Pending
    );
    let released = bob.receive_room_key(dev(1), &key.payload).unwrap();
    assert_eq!(
        released,
        vec![Released {
            note: "note-1".to_string(),
            result: Ok(b"early".to_vec())
        }]
    );
    assert_eq!(bob.pending(), 0);
}

#[test]
fn pending_messages_are_bounded() {
    let mut alice = Groups::new();
    let mut bob = Groups::new();
    alice.prepare(CONV, &[dev(2)]).unwrap();
    for _ in 0..PENDING_MAX + 5 {
        let body = alice.encrypt(CONV, b"x").unwrap();
        bob.decrypt(dev(1), CONV, &body, "").unwrap();
    }
    assert_eq!(bob.pending(), PENDING_MAX);
}

#[test]
fn tampered_replayed_misdirected_and_impersonated_messages_are_refused() {
    let (mut alice, mut bob, _) = shared();
    let body = alice.encrypt(CONV, b"hello").unwrap();
    let mut tampered = body.clone();
    let last = tampered.len() - 70; // inside the ciphertext, before MAC and signature
    tampered[last] ^= 1;
    assert_eq!(
        bob.decrypt(dev(1), CONV, &tampered, ""),
        Err(GroupError::Decrypt)
    );
    assert_eq!(
        bob.decrypt(dev(1), CONV + 1, &body, ""),
        Err(GroupError::WrongConversation)
    );
    // The same session id from another sender device: that device has no such session.
    assert_eq!(
        bob.decrypt(dev(9), CONV, &body, "").unwrap(),
        Decrypted::Pending
    );
    assert_eq!(
        bob.decrypt(dev(1), CONV, &body, "").unwrap(),
        Decrypted::Plaintext(b"hello".to_vec())
    );
    assert_eq!(
        bob.decrypt(dev(1), CONV, &body, ""),
        Err(GroupError::Replayed)
    );
    for junk in [
        &[][..],
        &[TAG_GROUP],
        &[TAG_GROUP, 0, 0, 0, 0, 0, 0, 0, 7, 200],
    ] {
        assert_eq!(
            bob.decrypt(dev(1), CONV, junk, ""),
            Err(GroupError::Malformed)
        );
    }
    assert_eq!(
        bob.receive_room_key(dev(1), &[TAG_ROOM_KEY, 1, 2]),
        Err(GroupError::Malformed)
    );
    // A room key for one conversation does not open messages moved into another.
    let mut mallory = Groups::new();
    let key = mallory.prepare(CONV + 1, &[dev(2)]).unwrap().unwrap();
    bob.receive_room_key(dev(5), &key.payload).unwrap();
    let moved = mallory.encrypt(CONV + 1, b"x").unwrap();
    let mut relabelled = moved;
    relabelled[1..9].copy_from_slice(&CONV.to_be_bytes());
    assert_eq!(
        bob.decrypt(dev(5), CONV, &relabelled, ""),
        Err(GroupError::WrongConversation)
    );
}

#[test]
fn the_state_survives_a_pickle_round_trip() {
    let (mut alice, mut bob, _) = shared();
    let early = {
        let mut dave = Groups::new();
        let key = dave.prepare(CONV, &[dev(2)]).unwrap().unwrap();
        let body = dave.encrypt(CONV, b"from dave").unwrap();
        assert_eq!(
            bob.decrypt(dev(4), CONV, &body, "d").unwrap(),
            Decrypted::Pending
        );
        key
    };
    let first = alice.encrypt(CONV, b"one").unwrap();
    bob.decrypt(dev(1), CONV, &first, "").unwrap();

    let json = serde_json::to_string(&alice.to_pickle()).unwrap();
    let mut alice = Groups::from_pickle(serde_json::from_str(&json).unwrap()).unwrap();
    let json = serde_json::to_string(&bob.to_pickle()).unwrap();
    let mut bob = Groups::from_pickle(serde_json::from_str(&json).unwrap()).unwrap();

    assert!(alice.prepare(CONV, &[dev(2), dev(3)]).unwrap().is_none());
    let second = alice.encrypt(CONV, b"two").unwrap();
    assert_eq!(
        bob.decrypt(dev(1), CONV, &second, "").unwrap(),
        Decrypted::Plaintext(b"two".to_vec())
    );
    assert_eq!(
        bob.decrypt(dev(1), CONV, &first, ""),
        Err(GroupError::Replayed),
        "seen indices survive"
    );
    assert_eq!(bob.pending(), 1);
    let released = bob.receive_room_key(dev(4), &early.payload).unwrap();
    assert_eq!(released[0].result, Ok(b"from dave".to_vec()));
}

#[test]
fn groups_are_pickled_with_the_olm_state() {
    let mut e2e = crate::e2e::E2e::new();
    let key = e2e.groups().prepare(CONV, &[dev(2)]).unwrap().unwrap();
    let id = e2e.groups().outbound_session_id(CONV).unwrap();
    let pickled = e2e.pickle(&[3; 32]);
    let mut restored = crate::e2e::E2e::from_pickle(&pickled, &[3; 32]).unwrap();
    assert_eq!(restored.groups().outbound_session_id(CONV).unwrap(), id);
    let body = restored.groups().encrypt(CONV, b"x").unwrap();
    let mut bob = Groups::new();
    bob.receive_room_key(dev(1), &key.payload).unwrap();
    assert_eq!(
        bob.decrypt(dev(1), CONV, &body, "").unwrap(),
        Decrypted::Plaintext(b"x".to_vec())
    );
}
