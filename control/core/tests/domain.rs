//! The control domain against embedded SQLite and a real PostgreSQL (`sqlite::<name>` and
//! `postgres::<name>`, like the storage conformance suite). Tests named `attack_*` are written
//! as the attack they prevent (DESIGN.md §6, the original's holes in
//! `shared/reference/original-commucat.md` §10); each would fail if the defence broke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../store/tests/support/mod.rs"]
mod support;

#[path = "common/noise.rs"]
#[allow(dead_code, unreachable_pub)]
mod noise;

use control_core::{
    Caller, Control, ControlCommand, ControlError, ConversationKind, FriendRequestOutcome, Limits,
    ManualClock, Role,
};
use dp_core::ConversationId;
use dp_noise::PeerAuthenticated;
use std::sync::Arc;
use support::Kind;

conformance!(
    attack_device_of_user_a_adds_a_device_to_user_b_account,
    attack_takeover_of_a_registered_device_or_handle,
    attack_pairing_claim_gets_a_server_generated_key,
    attack_pairing_code_reused_expired_or_read_from_the_database,
    attack_pairing_code_guessing_is_rate_limited,
    attack_identity_comes_from_the_handshake_not_a_claim,
    attack_non_member_sends_to_a_conversation,
    attack_group_hijack_and_role_escalation,
    attack_direct_conversation_or_invite_without_friendship,
    attack_revoked_device_keeps_sessions_and_tokens,
    attack_revoke_a_device_of_another_account,
    attack_friend_devices_and_keys_visible_without_consent,
    attack_session_tokens_predictable_stored_or_immortal,
    registration_is_atomic,
    friend_request_replay_is_harmless,
    owner_leaving_hands_the_group_on,
    attack_one_pairing_code_claimed_by_two_devices_at_once,
    expired_codes_and_tokens_are_purged,
    concurrent_direct_conversations_are_one,
    send_targets_are_live_member_devices_but_the_sender,
);

const NOW: u64 = 1_800_000_000_000;

struct World {
    control: Control,
    clock: Arc<ManualClock>,
    db: support::TestStore,
}

async fn world(kind: Kind) -> World {
    world_with(kind, Limits::default()).await
}

async fn world_with(kind: Kind, limits: Limits) -> World {
    let db = support::open(kind).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let control = Control::new(db.store.clone(), Box::new(clock.clone()), limits);
    World { control, clock, db }
}

/// Registers a new account `handle` with a fresh device (seed) and returns its caller.
async fn user(w: &World, seed: u64, handle: &str) -> (Caller, PeerAuthenticated) {
    let (_, peer) = noise::device(seed);
    let registered = w.control.register(&peer, handle, "phone").await.unwrap();
    assert_eq!(registered.device, peer.device());
    let caller = w.control.session_caller(&peer).await.unwrap();
    assert_eq!(caller.user(), registered.user);
    (caller, peer)
}

async fn friends(w: &World, a: &Caller, a_handle: &str, b: &Caller, b_handle: &str) {
    assert_eq!(
        w.control.request_friend(a, b_handle).await.unwrap(),
        FriendRequestOutcome::Requested
    );
    w.control.accept_friend(b, a_handle).await.unwrap();
}

/// DESIGN.md §6.1, S2: Mallory's device tries to put a device into Bob's account. There is no
/// operation that names a target account: registering under Bob's handle is refused, and a
/// pairing code Mallory creates joins Mallory's own account only.
async fn attack_device_of_user_a_adds_a_device_to_user_b_account(kind: Kind) {
    let w = world(kind).await;
    let (bob, _) = user(&w, 1, "bob").await;
    let (mallory, _) = user(&w, 2, "mallory").await;
    let (_, extra) = noise::device(3);
    let err = w.control.register(&extra, "bob", "evil").await.unwrap_err();
    assert!(matches!(err, ControlError::HandleTaken), "{err:?}");
    assert_eq!(err.code(), "handle_taken");
    let code = w.control.create_pairing_code(&mallory).await.unwrap();
    let joined = w
        .control
        .claim_pairing_code(&extra, &code.code, "evil")
        .await
        .unwrap();
    assert_eq!(joined.user, mallory.user());
    assert_ne!(joined.user, bob.user());
    assert_eq!(w.control.devices(&bob).await.unwrap().len(), 1);
}

/// S1: an attacker who knows Alice's device id and handle tries to take them over with its own
/// key. Its handshake proves its own key, whose device id differs; it is not Alice's caller,
/// cannot re-register Alice's handle, and a registered device cannot register again.
async fn attack_takeover_of_a_registered_device_or_handle(kind: Kind) {
    let w = world(kind).await;
    let (alice, alice_peer) = user(&w, 1, "alice").await;
    let (_, attacker) = noise::device(66);
    assert_ne!(attacker.device(), alice.device());
    assert!(matches!(
        w.control.session_caller(&attacker).await,
        Err(ControlError::Unauthenticated)
    ));
    assert!(matches!(
        w.control.register(&attacker, "alice", "x").await,
        Err(ControlError::HandleTaken)
    ));
    // Alice's own device cannot be moved into a new account either.
    assert!(matches!(
        w.control.register(&alice_peer, "alice2", "x").await,
        Err(ControlError::DeviceExists)
    ));
    let stored = w.db.store.device(alice.device()).await.unwrap().unwrap();
    assert_eq!(&stored.public_key, alice_peer.static_key());
    assert_eq!(stored.user, alice.user());
}

/// S7: the original generated the new device's private key on the server. Here the claim
/// carries nothing but the claimant's authenticated session: the device stored is the one
/// whose handshake proved its own key, and the answer holds no key material at all.
async fn attack_pairing_claim_gets_a_server_generated_key(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let code = w.control.create_pairing_code(&alice).await.unwrap();
    let (laptop_key, laptop) = noise::device(2);
    let joined = w
        .control
        .claim_pairing_code(&laptop, &code.code, "laptop")
        .await
        .unwrap();
    assert_eq!(joined.device, laptop.device());
    let stored = w.db.store.device(laptop.device()).await.unwrap().unwrap();
    assert_eq!(&stored.public_key, laptop_key.public());
    assert_eq!(stored.user, alice.user());
    // The device authenticates with its own key from now on.
    assert_eq!(
        w.control.session_caller(&laptop).await.unwrap().user(),
        alice.user()
    );
    assert!(!format!("{joined:?}").contains(&hex::encode(laptop_key.private())));
}

/// Pairing codes are single-use, expire, die with their creating device, and only a hash is
/// stored, so a copy of the database yields no usable code.
async fn attack_pairing_code_reused_expired_or_read_from_the_database(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let code = w.control.create_pairing_code(&alice).await.unwrap();
    let stored = support::raw_blobs(&w.db.config, "SELECT code_hash FROM pairing_codes").await;
    assert_eq!(stored.len(), 1);
    let plain: String = code.code.chars().filter(|c| *c != '-').collect();
    assert_ne!(stored[0], plain.as_bytes());
    assert!(
        !stored[0]
            .windows(plain.len())
            .any(|w| w == plain.as_bytes())
    );

    let (_, first) = noise::device(2);
    w.control
        .claim_pairing_code(&first, &code.code, "one")
        .await
        .unwrap();
    let (_, second) = noise::device(3);
    let err = w
        .control
        .claim_pairing_code(&second, &code.code, "two")
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::InvalidPairingCode), "{err:?}");

    let late = w.control.create_pairing_code(&alice).await.unwrap();
    w.clock.advance_ms(Limits::default().pairing_ttl_ms);
    assert!(matches!(
        w.control
            .claim_pairing_code(&second, &late.code, "two")
            .await,
        Err(ControlError::InvalidPairingCode)
    ));

    // A code whose creating device is revoked before the claim is dead.
    let orphan = w.control.create_pairing_code(&alice).await.unwrap();
    w.control
        .revoke_device(&alice, alice.device())
        .await
        .unwrap();
    assert!(matches!(
        w.control
            .claim_pairing_code(&second, &orphan.code, "two")
            .await,
        Err(ControlError::InvalidPairingCode)
    ));
    assert!(w.db.store.device(second.device()).await.unwrap().is_none());
}

/// Guessing codes: each claiming device is limited, and failed claims are limited
/// server-wide; once that budget is spent even a right guess is refused, so guessing learns
/// nothing.
async fn attack_pairing_code_guessing_is_rate_limited(kind: Kind) {
    let limits = Limits::default();
    let w = world_with(kind, limits.clone()).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let code = w.control.create_pairing_code(&alice).await.unwrap();
    let (_, guesser) = noise::device(2);
    let mut refused = false;
    for _ in 0..=limits.pairing_claims.burst {
        match w
            .control
            .claim_pairing_code(&guesser, "AAAAA-AAAAA", "g")
            .await
        {
            Err(ControlError::InvalidPairingCode) => {}
            Err(ControlError::RateLimited) => refused = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "one device guessing past its burst is refused");

    // Many fresh keys (cheap for an attacker) spend the server-wide failure budget.
    let mut seed = 100;
    let mut spent = false;
    for _ in 0..(limits.pairing_failures.burst + 5) {
        seed += 1;
        let (_, fresh) = noise::device(seed);
        match w
            .control
            .claim_pairing_code(&fresh, "BBBBB-BBBBB", "g")
            .await
        {
            Err(ControlError::InvalidPairingCode) => {}
            Err(ControlError::RateLimited) => {
                spent = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(spent, "failed claims are limited server-wide");
    let (_, lucky) = noise::device(9999);
    assert!(matches!(
        w.control.claim_pairing_code(&lucky, &code.code, "l").await,
        Err(ControlError::RateLimited)
    ));
    // After the budget refills, the right code works.
    w.clock.advance_ms(60_000);
    w.control
        .claim_pairing_code(&lucky, &code.code, "l")
        .await
        .unwrap();
}

/// DESIGN.md §6.2, S3: an identity comes only from the handshake transcript. A session's
/// caller is the device whose key the handshake proved; registering takes the key from the
/// handshake; and a token names its own device, whatever the device claims.
async fn attack_identity_comes_from_the_handshake_not_a_claim(kind: Kind) {
    let w = world(kind).await;
    let (alice, alice_peer) = user(&w, 1, "alice").await;
    let (bob, bob_peer) = user(&w, 2, "bob").await;
    assert_eq!(
        w.control.session_caller(&bob_peer).await.unwrap().device(),
        bob_peer.device()
    );
    assert_eq!(
        w.control
            .session_caller(&alice_peer)
            .await
            .unwrap()
            .device(),
        alice.device()
    );
    let token = w.control.issue_token(&bob).await.unwrap();
    let caller = w.control.authenticate_token(&token.token).await.unwrap();
    assert_eq!(caller, bob);
    assert_ne!(caller.user(), alice.user());
}

/// DESIGN.md §6.3, S4: Eve, not a member, sends to Alice and Bob's group (and to an id she
/// guessed). The per-send check refuses; members get the member devices, never their own.
async fn attack_non_member_sends_to_a_conversation(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    let (eve, _) = user(&w, 3, "eve").await;
    friends(&w, &alice, "alice", &bob, "bob").await;
    let group = w.control.create_group(&alice, "plans").await.unwrap();
    w.control.invite(&alice, group, "bob").await.unwrap();
    let err = w.control.may_send(eve.device(), group).await.unwrap_err();
    assert!(matches!(err, ControlError::NotAMember), "{err:?}");
    assert_eq!(err.code(), "not_a_member");
    assert!(matches!(
        w.control
            .may_send(eve.device(), ConversationId(group.0 + 1000))
            .await,
        Err(ControlError::NotAMember)
    ));
    let to = w.control.may_send(alice.device(), group).await.unwrap();
    assert_eq!(to, vec![bob.device()]);
    // Removed members are refused from then on.
    w.control.remove_member(&alice, group, "bob").await.unwrap();
    assert!(matches!(
        w.control.may_send(bob.device(), group).await,
        Err(ControlError::NotAMember)
    ));
    // A non-member cannot even read the conversation.
    assert!(matches!(
        w.control.conversation(&eve, group).await,
        Err(ControlError::NotFound(_))
    ));
}

/// S5: the original let anyone "create" a group with an existing id and become its owner.
/// Ids are the server's; outsiders cannot invite; members cannot invite, admins cannot remove
/// the owner or change roles.
async fn attack_group_hijack_and_role_escalation(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    let (carol, _) = user(&w, 3, "carol").await;
    let (eve, _) = user(&w, 4, "eve").await;
    friends(&w, &alice, "alice", &bob, "bob").await;
    friends(&w, &alice, "alice", &carol, "carol").await;
    friends(&w, &bob, "bob", &eve, "eve").await;
    friends(&w, &eve, "eve", &alice, "alice").await;
    let group = w.control.create_group(&alice, "plans").await.unwrap();
    let eves = w.control.create_group(&eve, "plans").await.unwrap();
    assert_ne!(group, eves, "ids are server-assigned");
    let detail = w.control.conversation(&alice, group).await.unwrap();
    assert_eq!(detail.members.len(), 1);
    assert_eq!(detail.members[0].role, Role::Owner);
    assert!(matches!(
        w.control.invite(&eve, group, "eve").await,
        Err(ControlError::NotFound(_))
    ));
    w.control.invite(&alice, group, "bob").await.unwrap();
    w.control.invite(&alice, group, "carol").await.unwrap();
    assert!(matches!(
        w.control.invite(&bob, group, "eve").await,
        Err(ControlError::Forbidden(_))
    ));
    w.control
        .set_role(&alice, group, "bob", Role::Admin)
        .await
        .unwrap();
    assert!(matches!(
        w.control.remove_member(&bob, group, "alice").await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        w.control.set_role(&bob, group, "carol", Role::Admin).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        w.control.set_role(&alice, group, "bob", Role::Owner).await,
        Err(ControlError::InvalidInput(_))
    ));
    // The admin removes a plain member.
    w.control.remove_member(&bob, group, "carol").await.unwrap();
    let roles: Vec<_> = w
        .control
        .conversation(&alice, group)
        .await
        .unwrap()
        .members
        .iter()
        .map(|m| (m.handle.clone(), m.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("alice".to_string(), Role::Owner),
            ("bob".to_string(), Role::Admin)
        ]
    );
}

/// Direct conversations and invitations need both users' consent (friendship); unfriending
/// stops direct sends.
async fn attack_direct_conversation_or_invite_without_friendship(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    assert!(matches!(
        w.control.direct_conversation(&alice, "bob").await,
        Err(ControlError::NotFriends)
    ));
    let group = w.control.create_group(&alice, "g").await.unwrap();
    assert!(matches!(
        w.control.invite(&alice, group, "bob").await,
        Err(ControlError::NotFriends)
    ));
    friends(&w, &alice, "alice", &bob, "bob").await;
    let direct = w.control.direct_conversation(&alice, "bob").await.unwrap();
    assert_eq!(
        w.control.direct_conversation(&bob, "alice").await.unwrap(),
        direct,
        "one direct conversation per pair"
    );
    let detail = w.control.conversation(&bob, direct).await.unwrap();
    assert_eq!(detail.conversation.kind, ConversationKind::Direct);
    assert_eq!(
        w.control.may_send(bob.device(), direct).await.unwrap(),
        vec![alice.device()]
    );
    w.control.remove_friend(&alice, "bob").await.unwrap();
    assert!(matches!(
        w.control.may_send(bob.device(), direct).await,
        Err(ControlError::NotFriends)
    ));
}

/// DESIGN.md §6.4, S16: a revoked device kept its live connection in the original. Revoking
/// produces the data plane's revoke command, kills the device's tokens, and refuses it as a
/// session caller and as a sender.
async fn attack_revoked_device_keeps_sessions_and_tokens(kind: Kind) {
    let w = world(kind).await;
    let (alice, phone) = user(&w, 1, "alice").await;
    let code = w.control.create_pairing_code(&alice).await.unwrap();
    let (_, laptop_peer) = noise::device(2);
    w.control
        .claim_pairing_code(&laptop_peer, &code.code, "laptop")
        .await
        .unwrap();
    let laptop = w.control.session_caller(&laptop_peer).await.unwrap();
    let token = w.control.issue_token(&laptop).await.unwrap();
    let group = w.control.create_group(&alice, "notes").await.unwrap();
    let command = w
        .control
        .revoke_device(&alice, laptop.device())
        .await
        .unwrap();
    assert_eq!(command, ControlCommand::RevokeDevice(laptop.device()));
    assert_eq!(
        w.control
            .revoke_device(&alice, laptop.device())
            .await
            .unwrap(),
        command,
        "a retry gets the command again"
    );
    assert!(matches!(
        w.control.authenticate_token(&token.token).await,
        Err(ControlError::Unauthenticated)
    ));
    assert!(matches!(
        w.control.session_caller(&laptop_peer).await,
        Err(ControlError::Unauthenticated)
    ));
    assert!(matches!(
        w.control.may_send(laptop.device(), group).await,
        Err(ControlError::Unauthenticated)
    ));
    assert!(matches!(
        w.control.issue_token(&laptop).await,
        Err(ControlError::Unauthenticated)
    ));
    // The phone is untouched.
    w.control.session_caller(&phone).await.unwrap();
    let devices = w.control.devices(&alice).await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .any(|d| d.id == laptop.device() && d.revoked_at_ms == Some(NOW))
    );
}

/// Mallory tries to revoke or rename Alice's device by its id: refused as if it did not exist,
/// and no revoke command is produced.
async fn attack_revoke_a_device_of_another_account(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (mallory, _) = user(&w, 2, "mallory").await;
    assert!(matches!(
        w.control.revoke_device(&mallory, alice.device()).await,
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        w.control
            .rename_device(&mallory, alice.device(), "pwned")
            .await,
        Err(ControlError::NotFound(_))
    ));
    let stored = w.db.store.device(alice.device()).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at_ms, None);
    assert_eq!(stored.name, "phone");
}

/// S15: the original's friends PUT needed no consent and exposed the target's devices and
/// keys. Here a request alone shows nothing; only acceptance does, and removal hides again.
async fn attack_friend_devices_and_keys_visible_without_consent(kind: Kind) {
    let w = world(kind).await;
    let (alice, alice_peer) = user(&w, 1, "alice").await;
    let (stalker, _) = user(&w, 2, "stalker").await;
    assert!(matches!(
        w.control.user_devices(&stalker, "alice").await,
        Err(ControlError::NotFriends)
    ));
    w.control.request_friend(&stalker, "alice").await.unwrap();
    assert!(matches!(
        w.control.user_devices(&stalker, "alice").await,
        Err(ControlError::NotFriends)
    ));
    let requests = w.control.friend_requests(&alice).await.unwrap();
    assert_eq!(requests.incoming.len(), 1);
    w.control.accept_friend(&alice, "stalker").await.unwrap();
    let seen = w.control.user_devices(&stalker, "alice").await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].public_key, alice_peer.static_key());
    w.control.remove_friend(&alice, "stalker").await.unwrap();
    assert!(matches!(
        w.control.user_devices(&stalker, "alice").await,
        Err(ControlError::NotFriends)
    ));
    // Rejected requests leave nothing behind either.
    w.control.request_friend(&stalker, "alice").await.unwrap();
    w.control.reject_friend(&alice, "stalker").await.unwrap();
    assert!(matches!(
        w.control.user_devices(&stalker, "alice").await,
        Err(ControlError::NotFriends)
    ));
}

/// S8: the original's tokens were a hash of the device id and a timestamp, never revoked. Here
/// tokens are random, stored only hashed, expire, and revocation (logout) ends them; nobody
/// revokes someone else's token.
async fn attack_session_tokens_predictable_stored_or_immortal(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    let first = w.control.issue_token(&alice).await.unwrap();
    let second = w.control.issue_token(&alice).await.unwrap();
    assert_ne!(
        first.token, second.token,
        "same device, same instant: different tokens"
    );
    let stored = support::raw_blobs(&w.db.config, "SELECT token_hash FROM session_tokens").await;
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|h| h[..] != first.token.0[..] && h[..] != second.token.0[..])
    );
    assert!(matches!(
        w.control.revoke_token(&bob, &first.token).await,
        Err(ControlError::Unauthenticated)
    ));
    w.control.revoke_token(&alice, &first.token).await.unwrap();
    assert!(matches!(
        w.control.authenticate_token(&first.token).await,
        Err(ControlError::Unauthenticated)
    ));
    assert_eq!(
        w.control.authenticate_token(&second.token).await.unwrap(),
        alice
    );
    w.clock.advance_ms(Limits::default().token_ttl_ms);
    assert!(matches!(
        w.control.authenticate_token(&second.token).await,
        Err(ControlError::Unauthenticated)
    ));
    // A new token can always be had over the Noise session (C6: no broken refresh).
    let third = w.control.issue_token(&alice).await.unwrap();
    assert_eq!(
        w.control.authenticate_token(&third.token).await.unwrap(),
        alice
    );
}

/// C21: the original wrote rows before validation finished. Registration is one transaction:
/// a refused registration leaves neither a user nor a device behind.
async fn registration_is_atomic(kind: Kind) {
    let w = world(kind).await;
    let (alice, alice_peer) = user(&w, 1, "alice").await;
    let (_, other) = noise::device(2);
    assert!(w.control.register(&other, "alice", "x").await.is_err());
    assert!(w.db.store.device(other.device()).await.unwrap().is_none());
    assert!(
        w.control
            .register(&alice_peer, "newname", "x")
            .await
            .is_err()
    );
    assert!(
        w.db.store
            .user_by_handle("newname")
            .await
            .unwrap()
            .is_none(),
        "no user row left behind"
    );
    assert!(matches!(
        w.control.register(&other, "Bad Handle", "x").await,
        Err(ControlError::InvalidInput(_))
    ));
    assert_eq!(
        w.db.store
            .list_users(control_core::UserId(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(w.control.devices(&alice).await.unwrap().len(), 1);
}

/// S14 (locally): a replayed or crossed friend request gives a defined answer, never an
/// error; crossed requests are mutual consent.
async fn friend_request_replay_is_harmless(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    let ask = || w.control.request_friend(&alice, "bob");
    assert_eq!(ask().await.unwrap(), FriendRequestOutcome::Requested);
    assert_eq!(ask().await.unwrap(), FriendRequestOutcome::AlreadyRequested);
    assert_eq!(
        w.control.request_friend(&bob, "alice").await.unwrap(),
        FriendRequestOutcome::Accepted
    );
    assert_eq!(ask().await.unwrap(), FriendRequestOutcome::AlreadyFriends);
    assert!(matches!(
        w.control.request_friend(&alice, "alice").await,
        Err(ControlError::InvalidInput(_))
    ));
    assert!(matches!(
        w.control.request_friend(&alice, "nobody").await,
        Err(ControlError::NotFound(_))
    ));
    assert_eq!(w.control.friends(&alice).await.unwrap()[0].handle, "bob");
}

/// A group with members always has an owner: when the owner leaves, the longest-standing
/// admin (else member) takes over.
async fn owner_leaving_hands_the_group_on(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    let (carol, _) = user(&w, 3, "carol").await;
    friends(&w, &alice, "alice", &bob, "bob").await;
    friends(&w, &alice, "alice", &carol, "carol").await;
    let group = w.control.create_group(&alice, "g").await.unwrap();
    w.control.invite(&alice, group, "bob").await.unwrap();
    w.clock.advance_ms(1);
    w.control.invite(&alice, group, "carol").await.unwrap();
    w.control
        .set_role(&alice, group, "carol", Role::Admin)
        .await
        .unwrap();
    w.control.leave(&alice, group).await.unwrap();
    let members = w.control.conversation(&bob, group).await.unwrap().members;
    let owner: Vec<_> = members.iter().filter(|m| m.role == Role::Owner).collect();
    assert_eq!(owner.len(), 1);
    assert_eq!(
        owner[0].handle, "carol",
        "the admin before the older member"
    );
    assert_eq!(
        w.control.conversations(&alice).await.unwrap().len(),
        0,
        "alice left"
    );
    let _ = carol;
}

/// Two devices race to claim one code (READ COMMITTED on PostgreSQL, two SQLite threads):
/// exactly one joins the account.
async fn attack_one_pairing_code_claimed_by_two_devices_at_once(kind: Kind) {
    let w = Arc::new(world(kind).await);
    let (alice, _) = user(&w, 1, "alice").await;
    for round in 0..5u64 {
        let code = w.control.create_pairing_code(&alice).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let (w, code) = (w.clone(), code.code.clone());
            tasks.push(tokio::spawn(async move {
                let (_, peer) = noise::device(1000 + round * 10 + i);
                w.control.claim_pairing_code(&peer, &code, "racer").await
            }));
        }
        let mut joined = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => joined += 1,
                Err(ControlError::InvalidPairingCode) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(joined, 1, "round {round}");
    }
    let live = w
        .control
        .devices(&alice)
        .await
        .unwrap()
        .iter()
        .filter(|d| d.revoked_at_ms.is_none())
        .count();
    assert_eq!(live, 6);
}

/// The purge deletes expired pairing codes and expired or revoked tokens, and nothing live.
async fn expired_codes_and_tokens_are_purged(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let _old = w.control.create_pairing_code(&alice).await.unwrap();
    let revoked = w.control.issue_token(&alice).await.unwrap();
    w.control
        .revoke_token(&alice, &revoked.token)
        .await
        .unwrap();
    w.clock.advance_ms(Limits::default().pairing_ttl_ms + 1);
    let fresh = w.control.create_pairing_code(&alice).await.unwrap();
    let live = w.control.issue_token(&alice).await.unwrap();
    assert_eq!(w.control.purge_expired().await.unwrap(), (1, 1));
    assert_eq!(w.control.purge_expired().await.unwrap(), (0, 0));
    assert_eq!(
        w.control.authenticate_token(&live.token).await.unwrap(),
        alice
    );
    let (_, laptop) = noise::device(2);
    w.control
        .claim_pairing_code(&laptop, &fresh.code, "laptop")
        .await
        .unwrap();
}

/// Both friends open their direct conversation at the same moment, several times over: one
/// conversation, one id, two members.
async fn concurrent_direct_conversations_are_one(kind: Kind) {
    let w = Arc::new(world(kind).await);
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    friends(&w, &alice, "alice", &bob, "bob").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = w.clone();
        let (me, other) = if i % 2 == 0 {
            (alice, "bob")
        } else {
            (bob, "alice")
        };
        tasks.push(tokio::spawn(async move {
            w.control.direct_conversation(&me, other).await.unwrap()
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = *ids.iter().next().unwrap();
    assert_eq!(
        w.control
            .conversation(&alice, id)
            .await
            .unwrap()
            .members
            .len(),
        2
    );
    assert_eq!(w.control.conversations(&bob).await.unwrap().len(), 1);
}

/// The per-send answer: every live device of every member, the sender's other devices
/// included, the sender itself and revoked devices excluded.
async fn send_targets_are_live_member_devices_but_the_sender(kind: Kind) {
    let w = world(kind).await;
    let (alice, _) = user(&w, 1, "alice").await;
    let (bob, _) = user(&w, 2, "bob").await;
    friends(&w, &alice, "alice", &bob, "bob").await;
    let mut bob_devices = vec![bob.device()];
    for seed in [3, 4] {
        let code = w.control.create_pairing_code(&bob).await.unwrap();
        let (_, peer) = noise::device(seed);
        w.control
            .claim_pairing_code(&peer, &code.code, "extra")
            .await
            .unwrap();
        bob_devices.push(peer.device());
    }
    let group = w.control.create_group(&alice, "g").await.unwrap();
    w.control.invite(&alice, group, "bob").await.unwrap();
    w.control.revoke_device(&bob, bob_devices[2]).await.unwrap();
    let mut expected = vec![alice.device(), bob_devices[1]];
    expected.sort();
    assert_eq!(
        w.control.may_send(bob.device(), group).await.unwrap(),
        expected
    );
    let mut from_alice = vec![bob_devices[0], bob_devices[1]];
    from_alice.sort();
    assert_eq!(
        w.control.may_send(alice.device(), group).await.unwrap(),
        from_alice
    );
}
