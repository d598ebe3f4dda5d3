//! The storage conformance suite: every test is one async function that takes a backend kind
//! and runs unchanged against embedded SQLite and a real PostgreSQL (`support::conformance!`
//! generates `sqlite::<name>` and `postgres::<name>`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use control_store::{
    CommitConfig, Entity, ErrorClass, GroupCommitter, Invalid, NewDevice, RefuseReason,
    SessionToken, Store, StoreError, UserId, migrate::SCHEMA_VERSION_LATEST,
};
use control_store::{ENVELOPE_BODY_LEN_MAX, Envelope, FETCH_LIMIT_MAX};
use dp_core::{ConversationId, DeviceId, MessageId};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use support::Kind;

conformance!(
    envelope_round_trip,
    store_is_idempotent,
    fetch_is_in_server_order_and_paged,
    delete_touches_only_the_recipients_rows,
    purge_removes_expired_envelopes,
    inbox_bound_refuses_new_envelopes_but_not_retries,
    migrations_applied_twice_are_a_no_op,
    future_schema_version_is_refused,
    group_commit_completes_every_request,
    submitter_completes_every_token,
    concurrent_stores_from_several_tasks,
    closing_the_committer_commits_what_is_queued,
    users_and_devices,
    session_tokens_are_stored_hashed_and_checked,
    invalid_input_is_refused_before_the_database,
    a_lock_held_past_the_busy_timeout_is_transient_and_passes,
    conversation_lookup_lists_members_and_reserves_increasing_seq_blocks,
    conversation_seq_is_kept_with_a_stored_envelope,
);

const NOW: u64 = 1_800_000_000_000;
const LATER: u64 = NOW + 86_400_000;

fn device(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn message(n: u32) -> MessageId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[15] = 0x5a;
    MessageId(id)
}

fn envelope(to: u8, n: u32) -> Envelope {
    Envelope {
        message: message(n),
        sender: device(200),
        recipient: device(to),
        conversation: None,
        conversation_seq: 0,
        sent_at_ms: NOW,
        expires_at_ms: LATER,
        body: format!("body {n} for {to}").into_bytes(),
    }
}

async fn all_pending(store: &Store, to: DeviceId) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.fetch_pending(to, after, 100, NOW).await.unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = last.seq;
        out.extend(page.into_iter().map(|s| s.envelope));
    }
}

/// Goal: what is stored comes back byte for byte. Method: store two envelopes (one with a
/// conversation, one with an empty and one with a maximum-size body) through both paths and
/// compare every field.
async fn envelope_round_trip(kind: Kind) {
    let t = support::open(kind).await;
    let mut a = envelope(1, 1);
    a.conversation = Some(ConversationId(77));
    a.body = (0..=255u8).cycle().take(ENVELOPE_BODY_LEN_MAX).collect();
    let mut b = envelope(1, 2);
    b.body.clear();
    b.sent_at_ms = 5;
    b.expires_at_ms = u64::MAX; // "never": stored as i64::MAX
    t.store.store_envelope(a.clone()).await.unwrap();
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    committer.store(b.clone()).await.unwrap();
    let got = t.store.fetch_pending(device(1), 0, 10, NOW).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].seq < got[1].seq);
    assert_eq!(got[0].envelope, a);
    b.expires_at_ms = i64::MAX as u64;
    assert_eq!(got[1].envelope, b);
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 2);
    assert_eq!(t.store.count_pending(device(2)).await.unwrap(), 0);
}

/// Goal: a retried store (after a crash or a lost reply) never duplicates. Method: store the
/// same envelope through the single path, the committer, and twice within one batch; one
/// row and a pending count of one must remain. The same message id to another recipient is a
/// different row.
async fn store_is_idempotent(kind: Kind) {
    let t = support::open(kind).await;
    let e = envelope(1, 9);
    t.store.store_envelope(e.clone()).await.unwrap();
    t.store.store_envelope(e.clone()).await.unwrap();
    let committer = Arc::new(
        GroupCommitter::start(
            &t.store,
            CommitConfig {
                batch_wait: Duration::from_millis(20),
                ..CommitConfig::default()
            },
        )
        .unwrap(),
    );
    let (x, y) = tokio::join!(committer.store(e.clone()), committer.store(e.clone()));
    x.unwrap();
    y.unwrap();
    let mut other = e.clone();
    other.recipient = device(2);
    committer.store(other).await.unwrap();
    assert_eq!(all_pending(&t.store, device(1)).await, vec![e]);
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 1);
    assert_eq!(t.store.count_pending(device(2)).await.unwrap(), 1);
}

/// Goal: a recipient drains in the order the server stored, page by page. Method: interleave
/// stores for two recipients, page through one with a small limit, and compare with the
/// store order; the other recipient's envelopes never appear.
async fn fetch_is_in_server_order_and_paged(kind: Kind) {
    let t = support::open(kind).await;
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    let mut expected = Vec::new();
    for n in 0..20u32 {
        // Message ids descend, so an order by id would fail.
        let e = envelope(1, 1000 - n);
        committer.store(e.clone()).await.unwrap();
        expected.push(e);
        committer.store(envelope(2, n)).await.unwrap();
    }
    let mut got = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = t
            .store
            .fetch_pending(device(1), after, 3, NOW)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        for s in &page {
            assert!(s.seq > after, "sequence numbers increase");
            after = s.seq;
        }
        got.extend(page.into_iter().map(|s| s.envelope));
        pages += 1;
    }
    assert_eq!(pages, 7);
    assert_eq!(got, expected);
}

/// Goal: an acknowledgement deletes only the acknowledging recipient's rows. Method: the same
/// message id is stored for two recipients; recipient 1 acknowledges it and an id that only
/// recipient 2 has; recipient 2's rows all survive and the counts follow.
async fn delete_touches_only_the_recipients_rows(kind: Kind) {
    let t = support::open(kind).await;
    for e in [
        envelope(1, 1),
        envelope(2, 1),
        envelope(2, 2),
        envelope(1, 3),
    ] {
        t.store.store_envelope(e).await.unwrap();
    }
    let deleted = t
        .store
        .delete_acknowledged(device(1), &[message(1), message(2)])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(all_pending(&t.store, device(1)).await, vec![envelope(1, 3)]);
    assert_eq!(
        all_pending(&t.store, device(2)).await,
        vec![envelope(2, 1), envelope(2, 2)]
    );
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 1);
    assert_eq!(t.store.count_pending(device(2)).await.unwrap(), 2);
    // Acknowledging again deletes nothing.
    let again = t
        .store
        .delete_acknowledged(device(1), &[message(1)])
        .await
        .unwrap();
    assert_eq!(again, 0);
}

/// Goal: TTLs are enforced. Method: three envelopes expiring at 100, 200 and 300 ms past NOW;
/// an expired one is no longer fetched, the purge deletes exactly the expired ones, bounded
/// by its limit, and the pending count follows.
async fn purge_removes_expired_envelopes(kind: Kind) {
    let t = support::open(kind).await;
    for (n, ttl) in [(1u32, 100u64), (2, 200), (3, 300)] {
        let mut e = envelope(1, n);
        e.expires_at_ms = NOW + ttl;
        t.store.store_envelope(e).await.unwrap();
    }
    let mut other = envelope(2, 4);
    other.expires_at_ms = NOW + 100;
    t.store.store_envelope(other).await.unwrap();
    let visible = t
        .store
        .fetch_pending(device(1), 0, 10, NOW + 150)
        .await
        .unwrap();
    assert_eq!(visible.len(), 2);
    assert_eq!(visible[0].envelope.message, message(2));
    assert_eq!(t.store.purge_expired(NOW + 250, 1).await.unwrap(), 1);
    assert_eq!(t.store.purge_expired(NOW + 250, 100).await.unwrap(), 2);
    assert_eq!(t.store.purge_expired(NOW + 250, 100).await.unwrap(), 0);
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 1);
    assert_eq!(t.store.count_pending(device(2)).await.unwrap(), 0);
    let left = t.store.fetch_pending(device(1), 0, 10, NOW).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope.message, message(3));
}

/// Goal: the inbox bound holds on both paths and inside one batch, refuses with a typed
/// constraint error, still accepts retries of stored envelopes, and frees room on
/// acknowledgement. Method: a bound of 3; four stores in one batch, then more.
async fn inbox_bound_refuses_new_envelopes_but_not_retries(kind: Kind) {
    let t = support::open_with(kind, |c| c.inbox_pending_max = 3).await;
    let committer = Arc::new(
        GroupCommitter::start(
            &t.store,
            CommitConfig {
                batch_wait: Duration::from_millis(50),
                ..CommitConfig::default()
            },
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for n in 1..=4u32 {
        let committer = Arc::clone(&committer);
        tasks.push(tokio::spawn(async move {
            committer.store(envelope(1, n)).await
        }));
    }
    let mut full = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => {}
            Err(error @ StoreError::InboxFull { pending: 3, max: 3 }) => {
                assert_eq!(error.class(), ErrorClass::Constraint);
                full += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(full, 1, "exactly one of four is over a bound of three");
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 3);
    let stored = all_pending(&t.store, device(1)).await;
    assert_eq!(stored.len(), 3);
    // A retry of a stored envelope succeeds on both paths; a new one is refused.
    committer.store(stored[0].clone()).await.unwrap();
    t.store.store_envelope(stored[1].clone()).await.unwrap();
    assert!(matches!(
        t.store.store_envelope(envelope(1, 50)).await,
        Err(StoreError::InboxFull { .. })
    ));
    // Other recipients are unaffected.
    committer.store(envelope(2, 1)).await.unwrap();
    // An acknowledgement makes room.
    t.store
        .delete_acknowledged(device(1), &[stored[0].message])
        .await
        .unwrap();
    committer.store(envelope(1, 51)).await.unwrap();
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 3);
}

/// Goal: migrating a current database changes nothing. Method: open (which migrates), then
/// migrate through the store and the standalone function, twice; the version stays the
/// newest and the data stays.
async fn migrations_applied_twice_are_a_no_op(kind: Kind) {
    let t = support::open(kind).await;
    t.store.store_envelope(envelope(1, 1)).await.unwrap();
    for _ in 0..2 {
        let m = t.store.migrate().await.unwrap();
        assert_eq!(
            (m.from, m.to),
            (SCHEMA_VERSION_LATEST, SCHEMA_VERSION_LATEST)
        );
        let m = control_store::migrate(&t.config).await.unwrap();
        assert_eq!(
            (m.from, m.to),
            (SCHEMA_VERSION_LATEST, SCHEMA_VERSION_LATEST)
        );
    }
    let reopened = Store::open(&t.config).await.unwrap();
    assert_eq!(reopened.count_pending(device(1)).await.unwrap(), 1);
    // A new database migrates from 0.
    let (config, _guard) = support::fresh(kind).await;
    let m = control_store::migrate(&config).await.unwrap();
    assert_eq!((m.from, m.to), (0, SCHEMA_VERSION_LATEST));
}

/// Goal: a database written by a newer build is refused, not misread. Method: record a
/// version past the newest in `schema_version`, then open and migrate: both fail with
/// `SchemaTooNew`, a fatal error.
async fn future_schema_version_is_refused(kind: Kind) {
    let t = support::open(kind).await;
    let future = SCHEMA_VERSION_LATEST + 1;
    support::raw_execute(
        &t.config,
        &format!("INSERT INTO schema_version (version, name) VALUES ({future}, 'future')"),
    )
    .await;
    let expected = StoreError::SchemaTooNew {
        found: future,
        supported: SCHEMA_VERSION_LATEST,
    };
    let error = Store::open(&t.config).await.unwrap_err();
    assert_eq!(error, expected);
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert_eq!(
        control_store::migrate(&t.config).await.unwrap_err(),
        expected
    );
}

/// Goal: group commit completes every request and every row is there. Method: 600 stores to
/// 6 recipients from 600 tasks through a committer with small batches; all succeed and each
/// recipient holds exactly its 100.
async fn group_commit_completes_every_request(kind: Kind) {
    let t = support::open(kind).await;
    let committer = Arc::new(
        GroupCommitter::start(
            &t.store,
            CommitConfig {
                batch_envelopes_max: 32,
                batch_wait: Duration::from_millis(1),
                queue_depth: 64,
                writers: 3,
            },
        )
        .unwrap(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..600u32 {
        let committer = Arc::clone(&committer);
        tasks.spawn(async move { committer.store(envelope((n % 6) as u8 + 1, n)).await });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
        done += 1;
    }
    assert_eq!(done, 600);
    for to in 1..=6u8 {
        let got = all_pending(&t.store, device(to)).await;
        let ids: BTreeSet<MessageId> = got.iter().map(|e| e.message).collect();
        let want: BTreeSet<MessageId> = (0..600u32)
            .filter(|n| (n % 6) as u8 + 1 == to)
            .map(message)
            .collect();
        assert_eq!(ids, want);
        assert_eq!(t.store.count_pending(device(to)).await.unwrap(), 100);
    }
}

/// Goal: the non-blocking path for a plain thread completes every token exactly once and
/// refuses past its bounds instead of blocking. Method: a plain thread submits 300 envelopes
/// with tokens, polling completions when the in-flight bound refuses, woken by the callback.
async fn submitter_completes_every_token(kind: Kind) {
    let t = support::open(kind).await;
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
    let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = wake_tx.send(());
    });
    let mut submitter = committer.submitter(16, Some(wake));
    let completed = tokio::task::spawn_blocking(move || {
        let mut completed = Vec::new();
        let mut next = 0u32;
        let mut refused_in_flight = 0;
        while completed.len() < 300 {
            while let Some(c) = submitter.poll_completion() {
                completed.push(c);
            }
            if next < 300 {
                match submitter.try_submit(u64::from(next), envelope(1, next)) {
                    Ok(()) => next += 1,
                    Err(refused) => {
                        assert_eq!(refused.reason, RefuseReason::InFlightFull);
                        assert_eq!(refused.envelope.message, message(next));
                        refused_in_flight += 1;
                        let _ = wake_rx.recv_timeout(Duration::from_millis(100));
                    }
                }
            } else {
                let _ = wake_rx.recv_timeout(Duration::from_millis(100));
            }
        }
        assert!(refused_in_flight > 0, "the in-flight bound was reached");
        assert_eq!(submitter.in_flight(), 0);
        completed
    })
    .await
    .unwrap();
    let tokens: BTreeSet<u64> = completed.iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), 300);
    assert!(completed.iter().all(|c| c.result.is_ok()));
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 300);
    drop(committer);
}

/// Goal: concurrent writers through both paths never lose or duplicate. Method: eight tasks
/// store 50 envelopes each, half through the committer and half in transactions of their
/// own, all to the same two recipients; every id is present once and sequence numbers are
/// distinct.
async fn concurrent_stores_from_several_tasks(kind: Kind) {
    let t = support::open(kind).await;
    let committer = Arc::new(GroupCommitter::start(&t.store, CommitConfig::default()).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8u32 {
        let committer = Arc::clone(&committer);
        let store = t.store.clone();
        tasks.spawn(async move {
            for i in 0..50u32 {
                let n = task * 1000 + i;
                let e = envelope((n % 2) as u8 + 1, n);
                if task % 2 == 0 {
                    committer.store(e).await.unwrap();
                } else {
                    store.store_envelope(e).await.unwrap();
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let mut seqs = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for to in 1..=2u8 {
        let mut after = 0;
        loop {
            let page = t
                .store
                .fetch_pending(device(to), after, 64, NOW)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            for s in page {
                assert!(seqs.insert(s.seq), "sequence {} twice", s.seq);
                assert!(ids.insert(s.envelope.message), "duplicate message");
            }
        }
    }
    assert_eq!(ids.len(), 400);
}

/// Goal: closing the committer loses nothing that was queued. Method: queue 200 envelopes
/// through a submitter with a long batch wait, close at once, then count rows and
/// completions.
async fn closing_the_committer_commits_what_is_queued(kind: Kind) {
    let t = support::open(kind).await;
    let committer = GroupCommitter::start(
        &t.store,
        CommitConfig {
            batch_envelopes_max: 50,
            batch_wait: Duration::from_millis(100),
            queue_depth: 1000,
            writers: 2,
        },
    )
    .unwrap();
    let mut submitter = committer.submitter(1000, None);
    for n in 0..200u32 {
        submitter.try_submit(u64::from(n), envelope(1, n)).unwrap();
    }
    tokio::task::spawn_blocking(move || committer.close())
        .await
        .unwrap();
    let mut ok = 0;
    while let Some(c) = submitter.poll_completion() {
        assert!(c.result.is_ok(), "{c:?}");
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 200);
    let refused = submitter.try_submit(999, envelope(1, 999)).unwrap_err();
    assert_eq!(refused.reason, RefuseReason::Closed);
}

fn new_device(n: u8, user: UserId) -> NewDevice {
    NewDevice {
        id: device(n),
        public_key: [n; 32],
        user,
        name: format!("phone {n}"),
        created_at_ms: NOW,
    }
}

/// Goal: the account and device rows behave: unique handles, unique device ids and keys,
/// devices only for existing users, revocation recorded once. Method: each rule broken once
/// and checked for its typed error.
async fn users_and_devices(kind: Kind) {
    let t = support::open(kind).await;
    let alice = t.store.create_user("alice", NOW).await.unwrap();
    let bob = t.store.create_user("bob", NOW).await.unwrap();
    assert_ne!(alice, bob);
    assert_eq!(
        t.store.create_user("alice", NOW).await,
        Err(StoreError::Conflict(Entity::User))
    );
    t.store.add_device(&new_device(1, alice)).await.unwrap();
    let got = t.store.device(device(1)).await.unwrap().unwrap();
    assert_eq!(got.user, alice);
    assert_eq!(got.public_key, [1; 32]);
    assert_eq!(got.name, "phone 1");
    assert_eq!(got.revoked_at_ms, None);
    assert_eq!(
        t.store.add_device(&new_device(1, bob)).await,
        Err(StoreError::Conflict(Entity::Device))
    );
    let mut same_key = new_device(2, bob);
    same_key.public_key = [1; 32];
    assert_eq!(
        t.store.add_device(&same_key).await,
        Err(StoreError::Conflict(Entity::DeviceKey))
    );
    assert_eq!(
        t.store.add_device(&new_device(3, UserId(999_999))).await,
        Err(StoreError::NotFound(Entity::User))
    );
    assert_eq!(t.store.device(device(3)).await.unwrap(), None);
    assert!(t.store.revoke_device(device(1), NOW + 5).await.unwrap());
    assert!(!t.store.revoke_device(device(1), NOW + 6).await.unwrap());
    let revoked = t.store.device(device(1)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(NOW + 5));
}

/// Goal: session tokens authenticate only while valid, and only their hash is on disk.
/// Method: create, verify, then break each condition (wrong token, expiry, revocation of the
/// token, revocation of the device); finally read the table raw and look for the token.
async fn session_tokens_are_stored_hashed_and_checked(kind: Kind) {
    let t = support::open(kind).await;
    let user = t.store.create_user("carol", NOW).await.unwrap();
    t.store.add_device(&new_device(1, user)).await.unwrap();
    t.store.add_device(&new_device(2, user)).await.unwrap();
    let token = SessionToken([0xa5; 32]);
    t.store
        .create_session_token(&token, device(1), NOW, NOW + 1000)
        .await
        .unwrap();
    assert_eq!(
        t.store
            .create_session_token(&token, device(2), NOW, NOW + 1000)
            .await,
        Err(StoreError::Conflict(Entity::SessionToken))
    );
    let owner = t
        .store
        .verify_session_token(&token, NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((owner.device, owner.user), (device(1), user));
    let wrong = SessionToken([0xa4; 32]);
    assert_eq!(
        t.store.verify_session_token(&wrong, NOW).await.unwrap(),
        None
    );
    assert_eq!(
        t.store
            .verify_session_token(&token, NOW + 1000)
            .await
            .unwrap(),
        None
    );
    // On disk: the hash, never the token.
    let stored = support::raw_blobs(&t.config, "SELECT token_hash FROM session_tokens").await;
    assert_eq!(stored, vec![token.hash().0.to_vec()]);
    let dump = support::raw_blobs(&t.config, "SELECT device_id FROM session_tokens").await;
    assert!(dump.iter().all(|b| b.as_slice() != token.0));

    assert!(t.store.revoke_session_token(&token, NOW + 2).await.unwrap());
    assert!(!t.store.revoke_session_token(&token, NOW + 3).await.unwrap());
    assert_eq!(
        t.store.verify_session_token(&token, NOW + 4).await.unwrap(),
        None
    );

    let second = SessionToken([0x11; 32]);
    t.store
        .create_session_token(&second, device(2), NOW, LATER)
        .await
        .unwrap();
    assert!(
        t.store
            .verify_session_token(&second, NOW)
            .await
            .unwrap()
            .is_some()
    );
    t.store.revoke_device(device(2), NOW + 10).await.unwrap();
    assert_eq!(
        t.store
            .verify_session_token(&second, NOW + 11)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        t.store
            .create_session_token(&SessionToken([0x22; 32]), device(2), NOW + 12, LATER)
            .await,
        Err(StoreError::NotFound(Entity::Device))
    );
}

/// Goal: out-of-bounds input is refused with a typed constraint error on every path.
/// Method: an oversized body through the store, the committer and a submitter; oversized
/// fetch, acknowledgement and handle.
async fn invalid_input_is_refused_before_the_database(kind: Kind) {
    let t = support::open(kind).await;
    let mut big = envelope(1, 1);
    big.body = vec![0; ENVELOPE_BODY_LEN_MAX + 1];
    let too_long = StoreError::Invalid(Invalid::BodyTooLong);
    assert_eq!(
        t.store.store_envelope(big.clone()).await,
        Err(too_long.clone())
    );
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    assert_eq!(committer.store(big.clone()).await, Err(too_long.clone()));
    let mut submitter = committer.submitter(4, None);
    let refused = submitter.try_submit(1, big).unwrap_err();
    assert_eq!(refused.reason, RefuseReason::Invalid(too_long));
    assert_eq!(
        t.store
            .fetch_pending(device(1), 0, FETCH_LIMIT_MAX + 1, NOW)
            .await,
        Err(StoreError::Invalid(Invalid::BatchTooLarge))
    );
    let ids = vec![message(1); control_store::ACK_IDS_MAX + 1];
    assert_eq!(
        t.store.delete_acknowledged(device(1), &ids).await,
        Err(StoreError::Invalid(Invalid::BatchTooLarge))
    );
    assert_eq!(
        t.store.create_user("", NOW).await,
        Err(StoreError::Invalid(Invalid::Handle))
    );
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 0);
}

/// Goal: a database that stays locked longer than the busy timeout gives a transient error on
/// both paths (never a hang, never a fatal class), and the same stores succeed once the lock
/// is gone (the committer recovers its connection). Method: another connection holds the
/// write lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL `LOCK TABLE`) while the store, with a
/// 200 ms busy timeout, stores through both paths; then the lock is released.
async fn a_lock_held_past_the_busy_timeout_is_transient_and_passes(kind: Kind) {
    let t = support::open_with(kind, |c| c.busy_timeout = Duration::from_millis(200)).await;
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    let lock = support::hold_write_lock(&t.config).await;
    let single = t.store.store_envelope(envelope(1, 1)).await.unwrap_err();
    assert_eq!(single.class(), ErrorClass::Transient, "{single:?}");
    let grouped = committer.store(envelope(1, 2)).await.unwrap_err();
    assert_eq!(grouped.class(), ErrorClass::Transient, "{grouped:?}");
    lock.release().await;
    t.store.store_envelope(envelope(1, 1)).await.unwrap();
    committer.store(envelope(1, 2)).await.unwrap();
    assert_eq!(t.store.count_pending(device(1)).await.unwrap(), 2);
    assert!(committer.stats().batches_failed >= 1);
}

/// Goal: `commucat migrate` can migrate from a plain thread with no runtime. Method: call
/// `migrate_blocking` twice on a new SQLite file outside any runtime.
#[test]
fn migrate_blocking_needs_no_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let config = control_store::StoreConfig::in_data_dir(dir.path());
    let first = control_store::migrate_blocking(&config).unwrap();
    assert_eq!((first.from, first.to), (0, SCHEMA_VERSION_LATEST));
    let second = control_store::migrate_blocking(&config).unwrap();
    assert_eq!(
        (second.from, second.to),
        (SCHEMA_VERSION_LATEST, SCHEMA_VERSION_LATEST)
    );
    assert!(dir.path().join(control_store::SQLITE_FILE_NAME).exists());
}

/// Goal: a conversation lookup lists the live devices of the members, says whether they may
/// send, and reserves sequence numbers that are never handed out twice, also after the store is
/// opened again (a server restart). Method: a group and a direct conversation changed step by
/// step, the answer checked after each step.
async fn conversation_lookup_lists_members_and_reserves_increasing_seq_blocks(kind: Kind) {
    let t = support::open(kind).await;
    let alice = t.store.create_user("alice", NOW).await.unwrap();
    let bob = t.store.create_user("bob", NOW).await.unwrap();
    let carol = t.store.create_user("carol", NOW).await.unwrap();
    for (n, user) in [(1, alice), (2, alice), (3, bob), (4, carol)] {
        t.store.add_device(&new_device(n, user)).await.unwrap();
    }
    let group = t.store.create_group(alice, "g", NOW).await.unwrap();
    t.store
        .add_member(group, bob, control_store::Role::Member, 100, NOW)
        .await
        .unwrap();
    let first = t
        .store
        .conversation_lookup(group, 100, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.devices, vec![device(1), device(2), device(3)]);
    assert!(first.may_send);
    assert_eq!(first.seq, 1..11);
    let second = t
        .store
        .conversation_lookup(group, 100, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.seq, 11..16);
    // At most `max` devices.
    let capped = t
        .store
        .conversation_lookup(group, 2, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(capped.devices, vec![device(1), device(2)]);
    assert_eq!(capped.seq, 16..17);
    // A revoked device and a removed member drop out.
    t.store.revoke_device(device(2), NOW).await.unwrap();
    assert!(t.store.remove_member(group, bob).await.unwrap());
    let later = t
        .store
        .conversation_lookup(group, 100, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(later.devices, vec![device(1)]);
    // Unknown conversations have no answer (and reserve nothing).
    let unknown = ConversationId(group.0 + 1000);
    assert_eq!(
        t.store.conversation_lookup(unknown, 100, 1).await.unwrap(),
        None
    );
    // After a restart the numbers go on from where they stopped.
    let reopened = Store::open(&t.config).await.unwrap();
    let after = reopened
        .conversation_lookup(group, 100, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.seq, 18..21);
    // A direct conversation may be written to only while its users are friends.
    let (direct, _) = t
        .store
        .create_direct_conversation(alice, carol, NOW)
        .await
        .unwrap();
    assert_eq!(
        t.store.direct_conversation_id(carol, alice).await.unwrap(),
        Some(direct)
    );
    assert_eq!(
        t.store.direct_conversation_id(alice, bob).await.unwrap(),
        None
    );
    let strangers = t
        .store
        .conversation_lookup(direct, 100, 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!strangers.may_send);
    assert_eq!(strangers.devices, vec![device(1), device(4)]);
    assert_eq!(strangers.seq, 1..2, "each conversation numbers on its own");
    t.store.friend_request(alice, carol, NOW).await.unwrap();
    t.store
        .accept_friend_request(carol, alice, NOW)
        .await
        .unwrap();
    let friends = t
        .store
        .conversation_lookup(direct, 100, 1)
        .await
        .unwrap()
        .unwrap();
    assert!(friends.may_send);
}

/// Goal: an envelope stored for an offline member keeps its conversation and sequence number,
/// so the recipient sees them when it is drained. Method: store one, fetch it back.
async fn conversation_seq_is_kept_with_a_stored_envelope(kind: Kind) {
    let t = support::open(kind).await;
    let mut a = envelope(1, 1);
    a.conversation = Some(ConversationId(9));
    a.conversation_seq = 1 << 40;
    t.store.store_envelope(a.clone()).await.unwrap();
    let committer = GroupCommitter::start(&t.store, CommitConfig::default()).unwrap();
    let mut b = envelope(1, 2);
    b.conversation = Some(ConversationId(9));
    b.conversation_seq = (1 << 40) + 1;
    committer.store(b.clone()).await.unwrap();
    let got = t.store.fetch_pending(device(1), 0, 10, NOW).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].envelope, a);
    assert_eq!(got[1].envelope, b);
}
