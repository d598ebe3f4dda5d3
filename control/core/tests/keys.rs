//! The end-to-end key directory's rules against embedded SQLite and a real PostgreSQL: keys
//! are claimed only for devices of the caller's own account, of an accepted friend or of a
//! fellow conversation member; every
//! other device is absent from the answer (no probing); a device publishes only its own keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../store/tests/support/mod.rs"]
mod support;

#[path = "common/noise.rs"]
#[allow(dead_code, unreachable_pub)]
mod noise;

use control_core::{
    CLAIM_DEVICES_MAX, Caller, Control, ControlError, FriendRequestOutcome, KeyUpload, Limits,
    ManualClock, SignedKey,
};
use dp_core::DeviceId;
use std::sync::Arc;
use support::Kind;

conformance!(
    attack_key_claim_without_friendship,
    claims_follow_friendship_and_revocation,
    published_keys_are_the_callers_own_and_bounded,
    group_members_see_each_others_devices_and_keys_while_they_share_it,
);

const NOW: u64 = 1_800_000_000_000;

async fn control(kind: Kind) -> (Control, support::TestStore) {
    let db = support::open(kind).await;
    let clock = Arc::new(ManualClock::new(NOW));
    (
        Control::new(db.store.clone(), Box::new(clock), Limits::default()),
        db,
    )
}

async fn user(control: &Control, seed: u64, handle: &str) -> Caller {
    let (_, peer) = noise::device(seed);
    control.register(&peer, handle, "phone").await.unwrap();
    control.session_caller(&peer).await.unwrap()
}

async fn befriend(control: &Control, a: &Caller, a_handle: &str, b: &Caller, b_handle: &str) {
    assert_eq!(
        control.request_friend(a, b_handle).await.unwrap(),
        FriendRequestOutcome::Requested
    );
    control.accept_friend(b, a_handle).await.unwrap();
}

fn signed(tag: &str, n: usize) -> SignedKey {
    SignedKey {
        key_id: format!("{tag}{n}"),
        key: format!("{tag}key{n:0>36}"),
        signature: format!("{tag}sig{n:0>80}"),
    }
}

fn upload(tag: &str, one_time: usize) -> KeyUpload {
    KeyUpload {
        curve25519: format!("{tag}curve{:0>38}", 0),
        ed25519: format!("{tag}ed{:0>41}", 0),
        fallback: signed(&format!("{tag}fb"), 0),
        one_time: (0..one_time).map(|n| signed(tag, n)).collect(),
    }
}

/// Goal: a user who is not a friend learns nothing and consumes nothing, whatever device ids
/// they name. Method: mallory claims bob's device (and an unknown id) and gets an empty
/// answer; bob's pool is untouched; alice, a friend, then gets bob's first key.
async fn attack_key_claim_without_friendship(kind: Kind) {
    let (c, _db) = control(kind).await;
    let alice = user(&c, 1, "alice").await;
    let bob = user(&c, 2, "bob").await;
    let mallory = user(&c, 3, "mallory").await;
    befriend(&c, &alice, "alice", &bob, "bob").await;
    assert_eq!(c.publish_keys(&bob, &upload("b", 3)).await.unwrap(), 3);
    for _ in 0..5 {
        let got = c
            .claim_keys(&mallory, &[bob.device(), DeviceId([0x77; 16])])
            .await
            .unwrap();
        assert!(got.is_empty(), "{got:?}");
    }
    assert_eq!(c.store().one_time_key_count(bob.device()).await.unwrap(), 3);
    let got = c.claim_keys(&alice, &[bob.device()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].device, bob.device());
    assert_eq!(got[0].one_time, signed("b", 0));
    assert!(!got[0].fallback);
    assert_eq!(c.store().one_time_key_count(bob.device()).await.unwrap(), 2);
}

/// Goal: the claim rule follows friendship and revocation as they change, and covers the
/// caller's own account. Method: claim a friend's device before and after unfriending, and a
/// sibling device before and after its revocation.
async fn claims_follow_friendship_and_revocation(kind: Kind) {
    let (c, _db) = control(kind).await;
    let alice = user(&c, 1, "alice").await;
    let bob = user(&c, 2, "bob").await;
    befriend(&c, &alice, "alice", &bob, "bob").await;
    c.publish_keys(&bob, &upload("b", 2)).await.unwrap();
    c.publish_keys(&alice, &upload("a", 2)).await.unwrap();
    // Own device: allowed (a device may talk to its own account's other devices).
    assert_eq!(
        c.claim_keys(&alice, &[alice.device()]).await.unwrap().len(),
        1
    );
    assert_eq!(
        c.claim_keys(&alice, &[bob.device(), bob.device()])
            .await
            .unwrap()
            .len(),
        1
    );
    c.remove_friend(&alice, "bob").await.unwrap();
    assert!(
        c.claim_keys(&alice, &[bob.device()])
            .await
            .unwrap()
            .is_empty()
    );
    // Revoked: absent, for its own account too.
    c.store().revoke_device(alice.device(), NOW).await.unwrap();
    assert!(
        c.claim_keys(&bob, &[alice.device()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Goal: bounds are enforced with typed errors. Method: too many one-time keys, a malformed
/// key, too many devices in a claim.
async fn published_keys_are_the_callers_own_and_bounded(kind: Kind) {
    let (c, _db) = control(kind).await;
    let alice = user(&c, 1, "alice").await;
    assert!(matches!(
        c.publish_keys(&alice, &upload("a", 51)).await,
        Err(ControlError::InvalidInput(_))
    ));
    let mut bad = upload("a", 1);
    bad.one_time[0].signature = "not base64 at all!".to_string();
    assert!(matches!(
        c.publish_keys(&alice, &bad).await,
        Err(ControlError::InvalidInput(_))
    ));
    let many = vec![alice.device(); CLAIM_DEVICES_MAX + 1];
    assert!(matches!(
        c.claim_keys(&alice, &many).await,
        Err(ControlError::InvalidInput(_))
    ));
    // The refused uploads stored nothing; a good one does.
    assert!(
        c.claim_keys(&alice, &[alice.device()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.publish_keys(&alice, &upload("a", 1)).await.unwrap(), 1);
}

/// Goal: members of one group message each other end to end without being friends, and lose
/// that access when they no longer share a conversation; strangers never have it. Method: bob
/// and carol are both alice's friends, not each other's; alice puts them in a group. Bob then
/// lists carol's devices and claims her key; mallory cannot; after carol leaves, bob cannot.
async fn group_members_see_each_others_devices_and_keys_while_they_share_it(kind: Kind) {
    let (c, _db) = control(kind).await;
    let alice = user(&c, 1, "alice").await;
    let bob = user(&c, 2, "bob").await;
    let carol = user(&c, 3, "carol").await;
    let mallory = user(&c, 4, "mallory").await;
    befriend(&c, &alice, "alice", &bob, "bob").await;
    befriend(&c, &alice, "alice", &carol, "carol").await;
    c.publish_keys(&carol, &upload("c", 3)).await.unwrap();
    assert!(matches!(
        c.user_devices(&bob, "carol").await,
        Err(ControlError::NotFriends)
    ));
    assert!(
        c.claim_keys(&bob, &[carol.device()])
            .await
            .unwrap()
            .is_empty()
    );
    let group = c.create_group(&alice, "trip").await.unwrap();
    c.invite(&alice, group, "bob").await.unwrap();
    c.invite(&alice, group, "carol").await.unwrap();
    let devices = c.user_devices(&bob, "carol").await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        c.claim_keys(&bob, &[carol.device()]).await.unwrap().len(),
        1
    );
    assert!(matches!(
        c.user_devices(&mallory, "carol").await,
        Err(ControlError::NotFriends)
    ));
    assert!(
        c.claim_keys(&mallory, &[carol.device()])
            .await
            .unwrap()
            .is_empty()
    );
    c.leave(&carol, group).await.unwrap();
    assert!(matches!(
        c.user_devices(&bob, "carol").await,
        Err(ControlError::NotFriends)
    ));
    assert!(
        c.claim_keys(&bob, &[carol.device()])
            .await
            .unwrap()
            .is_empty()
    );
}
