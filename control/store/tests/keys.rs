//! The end-to-end key directory's conformance tests (`docs/design/0014`), run unchanged against
//! embedded SQLite and a real PostgreSQL like `conformance.rs`: publish, append up to the cap,
//! claim exactly once under concurrency, fall back when the pool is empty, bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use control_store::{
    CLAIM_DEVICES_MAX, ClaimedKeys, Entity, Invalid, KeyUpload, NewDevice,
    ONE_TIME_KEYS_PER_UPLOAD_MAX, ONE_TIME_KEYS_STORED_MAX, SignedKey, Store, StoreError, UserId,
};
use dp_core::DeviceId;
use std::collections::BTreeSet;
use support::Kind;

conformance!(
    publish_then_claim_returns_identity_and_consumes_one_key,
    uploads_append_up_to_the_cap_and_skip_known_ids,
    a_new_identity_empties_the_pool,
    concurrent_claims_never_share_a_one_time_key,
    unknown_revoked_and_keyless_devices_are_absent,
    key_bounds_are_enforced,
);

const NOW: u64 = 1_800_000_000_000;

fn device(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn b64(tag: &str, n: usize) -> String {
    // Unpadded base64 characters of a plausible length; the store never decodes them.
    format!("{tag}{n:0>40}")
}

fn signed(tag: &str, n: usize) -> SignedKey {
    SignedKey {
        key_id: format!("id{tag}{n}"),
        key: b64(tag, n),
        signature: format!("sig{}", b64(tag, n)),
    }
}

fn upload(identity: &str, one_time: std::ops::Range<usize>) -> KeyUpload {
    KeyUpload {
        curve25519: b64(&format!("c{identity}"), 0),
        ed25519: b64(&format!("e{identity}"), 0),
        fallback: signed(&format!("f{identity}"), 0),
        one_time: one_time.map(|n| signed("otk", n)).collect(),
    }
}

async fn with_devices(kind: Kind, devices: &[u8]) -> support::TestStore {
    let t = support::open(kind).await;
    let user = t.store.create_user("alice", NOW).await.unwrap();
    for &n in devices {
        add(&t.store, n, user).await;
    }
    t
}

async fn add(store: &Store, n: u8, user: UserId) {
    store
        .add_device(&NewDevice {
            id: device(n),
            public_key: [n; 32],
            user,
            name: format!("phone {n}"),
            created_at_ms: NOW,
        })
        .await
        .unwrap();
}

async fn claim(store: &Store, n: u8) -> ClaimedKeys {
    let mut got = store.claim_keys(&[device(n)]).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    got.pop().unwrap()
}

/// Goal: a claim returns the identity keys as published and hands each one-time key out once,
/// oldest first, then the fallback key (repeatedly). Method: publish three keys, claim four
/// times, count what is left after each.
async fn publish_then_claim_returns_identity_and_consumes_one_key(kind: Kind) {
    let t = with_devices(kind, &[1]).await;
    let up = upload("a", 0..3);
    assert_eq!(t.store.publish_keys(device(1), &up, NOW).await.unwrap(), 3);
    for n in 0..3 {
        let got = claim(&t.store, 1).await;
        assert_eq!(got.device, device(1));
        assert_eq!(got.curve25519, up.curve25519);
        assert_eq!(got.ed25519, up.ed25519);
        assert_eq!(got.one_time, signed("otk", n));
        assert!(!got.fallback);
        assert_eq!(
            t.store.one_time_key_count(device(1)).await.unwrap(),
            2 - n as u64
        );
    }
    for _ in 0..2 {
        let got = claim(&t.store, 1).await;
        assert!(got.fallback);
        assert_eq!(got.one_time, up.fallback);
    }
}

/// Goal: uploads append, a key id already in the pool is not added twice, and the pool stops
/// at its cap. Method: upload overlapping ranges and compare the returned counts.
async fn uploads_append_up_to_the_cap_and_skip_known_ids(kind: Kind) {
    let t = with_devices(kind, &[1]).await;
    assert_eq!(
        t.store
            .publish_keys(device(1), &upload("a", 0..10), NOW)
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        t.store
            .publish_keys(device(1), &upload("a", 5..15), NOW)
            .await
            .unwrap(),
        15
    );
    let full = t
        .store
        .publish_keys(
            device(1),
            &upload("a", 100..100 + ONE_TIME_KEYS_PER_UPLOAD_MAX),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(full, ONE_TIME_KEYS_STORED_MAX);
    assert_eq!(
        t.store
            .publish_keys(device(1), &upload("a", 500..510), NOW)
            .await
            .unwrap(),
        ONE_TIME_KEYS_STORED_MAX
    );
    // The first keys claimed are the oldest ones.
    assert_eq!(claim(&t.store, 1).await.one_time, signed("otk", 0));
}

/// Goal: a device that publishes a different identity loses the one-time keys of the old one
/// (they could never open a session). Method: publish, republish with a new identity and no
/// keys, claim.
async fn a_new_identity_empties_the_pool(kind: Kind) {
    let t = with_devices(kind, &[1]).await;
    t.store
        .publish_keys(device(1), &upload("a", 0..5), NOW)
        .await
        .unwrap();
    // The same identity again keeps the pool.
    assert_eq!(
        t.store
            .publish_keys(device(1), &upload("a", 0..0), NOW)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        t.store
            .publish_keys(device(1), &upload("b", 0..0), NOW)
            .await
            .unwrap(),
        0
    );
    let got = claim(&t.store, 1).await;
    assert!(got.fallback);
    assert_eq!(got.curve25519, upload("b", 0..0).curve25519);
    assert_eq!(got.one_time, upload("b", 0..0).fallback);
}

/// Goal: two claims never get the same one-time key. Method: 40 claims of one device race
/// from several tasks against a pool of 25 keys; the 25 keys each come out exactly once and
/// the other 15 claims get the fallback key.
async fn concurrent_claims_never_share_a_one_time_key(kind: Kind) {
    let t = with_devices(kind, &[1, 2]).await;
    t.store
        .publish_keys(device(1), &upload("a", 0..25), NOW)
        .await
        .unwrap();
    t.store
        .publish_keys(device(2), &upload("b", 0..0), NOW)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            store.claim_keys(&[device(1), device(2)]).await.unwrap()
        }));
    }
    let mut keys = Vec::new();
    let mut fallbacks = 0;
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.len(), 2);
        for keys_of in got {
            if keys_of.device == device(2) {
                assert!(keys_of.fallback);
            } else if keys_of.fallback {
                fallbacks += 1;
            } else {
                keys.push(keys_of.one_time.key_id);
            }
        }
    }
    let distinct: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "a one-time key was handed out twice"
    );
    assert_eq!(keys.len() + fallbacks, 40);
    // No key is lost either: what was not handed out is still in the pool. (A PostgreSQL
    // claim that loses the race more than its retry bound hands out the fallback key while
    // keys remain; SQLite serialises writers, so there every key comes out.)
    let left = t.store.one_time_key_count(device(1)).await.unwrap();
    assert_eq!(keys.len() as u64 + left, 25);
    if kind == Kind::Sqlite {
        assert_eq!(keys.len(), 25, "{keys:?}");
    }
}

/// Goal: a claim answers only for live devices with keys, and says nothing about the others.
/// Method: claim a mix of a device with keys, one without, an unknown one and a revoked one;
/// publishing for an unknown or revoked device fails.
async fn unknown_revoked_and_keyless_devices_are_absent(kind: Kind) {
    let t = with_devices(kind, &[1, 2, 3]).await;
    for n in [1, 3] {
        t.store
            .publish_keys(device(n), &upload("a", 0..2), NOW)
            .await
            .unwrap();
    }
    t.store.revoke_device(device(3), NOW).await.unwrap();
    let got = t
        .store
        .claim_keys(&[device(1), device(2), device(3), device(9), device(1)])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|k| k.device).collect::<Vec<_>>(),
        vec![device(1)]
    );
    for n in [3, 9] {
        assert_eq!(
            t.store
                .publish_keys(device(n), &upload("a", 0..1), NOW)
                .await,
            Err(StoreError::NotFound(Entity::Device))
        );
    }
    assert!(t.store.claim_keys(&[]).await.unwrap().is_empty());
}

/// Goal: every count and length bound is checked before the database. Method: break each once.
async fn key_bounds_are_enforced(kind: Kind) {
    let t = with_devices(kind, &[1]).await;
    let too_many = upload("a", 0..ONE_TIME_KEYS_PER_UPLOAD_MAX + 1);
    assert_eq!(
        t.store.publish_keys(device(1), &too_many, NOW).await,
        Err(StoreError::Invalid(Invalid::BatchTooLarge))
    );
    let bad: [fn(&mut KeyUpload); 6] = [
        |u| u.curve25519.clear(),
        |u| u.ed25519 = "x".repeat(65),
        |u| u.fallback.key_id = "not base64!".to_string(),
        |u| u.fallback.signature = "s".repeat(129),
        |u| u.one_time[0].key = "padded==".to_string(),
        |u| u.one_time[0].key_id = "\u{e9}".to_string(),
    ];
    for (i, breaker) in bad.iter().enumerate() {
        let mut up = upload("a", 0..1);
        breaker(&mut up);
        assert_eq!(
            t.store.publish_keys(device(1), &up, NOW).await,
            Err(StoreError::Invalid(Invalid::Key)),
            "case {i}"
        );
    }
    let devices: Vec<_> = (0..=CLAIM_DEVICES_MAX)
        .map(|n| DeviceId([u8::try_from(n % 256).unwrap(); 16]))
        .collect();
    assert_eq!(
        t.store.claim_keys(&devices).await,
        Err(StoreError::Invalid(Invalid::BatchTooLarge))
    );
    // Nothing was stored by the refused uploads.
    assert!(t.store.claim_keys(&[device(1)]).await.unwrap().is_empty());
}
