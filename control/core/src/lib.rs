//! The CommuCat control plane's domain, independent of any transport: registration of a user's
//! first device, pairing of further devices, device list / rename / revoke, friends with
//! consent, conversations with server-assigned ids and roles, the data plane's per-send
//! membership check, and bearer session tokens. The REST API (`control-api`) and the Noise
//! session bridge both call [`Control`].
//!
//! # Who the caller is
//!
//! Every operation takes the *authenticated* caller, never an id from a payload
//! (DESIGN.md §6.2):
//!
//! - over a Noise session, from [`dp_noise::PeerAuthenticated`], which only a completed
//!   handshake creates: [`Control::register`] and [`Control::claim_pairing_code`] take it
//!   directly (the new device's key is the one its handshake proved), and
//!   [`Control::session_caller`] turns it into a [`Caller`] for a registered device;
//! - over REST, from a bearer token: [`Control::authenticate_token`].
//!
//! A [`Caller`] has no public constructor, so no code path can build one from a claimed id.
//!
//! # Errors
//!
//! [`ControlError`] with a stable [`ControlError::code`]; a store failure becomes
//! `unavailable` (transient) or `internal` (anything else), with nothing of the cause in the
//! message.
//!
//! # Time and randomness
//!
//! Time comes from a [`Clock`] (the system clock in production, a [`ManualClock`] in tests);
//! tokens and pairing codes come from the operating system's CSPRNG (`getrandom`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod keys;
pub mod ratelimit;

pub use control_store::{
    CLAIM_DEVICES_MAX, ClaimOutcome, ClaimedKeys, Conversation, ConversationKind,
    ConversationLookup, Device, FriendRequest, FriendRequestOutcome, KeyUpload, Member,
    ONE_TIME_KEYS_PER_UPLOAD_MAX, ONE_TIME_KEYS_STORED_MAX, Role, SessionToken, SignedKey, Store,
    UserId, UserSummary,
};
pub use error::ControlError;

use blake2::{Blake2s256, Digest};
use control_store::{Added, NewPairedDevice, SendCheck};
use dp_core::{ConversationId, DeviceId};
use dp_noise::PeerAuthenticated;
use ratelimit::{Rate, RateLimiter};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

/// Where the domain reads the time: milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place the control domain reads the clock
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Clock for std::sync::Arc<ManualClock> {
    fn now_ms(&self) -> u64 {
        self.as_ref().now_ms()
    }
}

/// The domain's bounds and lifetimes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a session token lives.
    pub token_ttl_ms: u64,
    /// How long a pairing code lives.
    pub pairing_ttl_ms: u64,
    /// Unclaimed, unexpired pairing codes per account at most.
    pub pairing_codes_live_max: u64,
    /// Pairing claims per claiming device (burst, then per second).
    pub pairing_claims: Rate,
    /// Failed pairing claims server-wide (burst, then per second): with codes of
    /// [`PAIRING_CODE_BITS`] bits and a lifetime of minutes, guessing one is hopeless.
    pub pairing_failures: Rate,
    /// Live devices per account at most.
    pub devices_per_user_max: u64,
    /// Members per conversation at most.
    pub members_max: u64,
    /// Items in one list answer at most (friends, requests, conversations, users).
    pub list_max: usize,
    /// Devices tracked by the pairing-claim limiter at most.
    pub limiter_keys_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            token_ttl_ms: 30 * 24 * 3600 * 1000,
            pairing_ttl_ms: 5 * 60 * 1000,
            pairing_codes_live_max: 5,
            pairing_claims: Rate {
                burst: 5,
                per_second: 1,
            },
            pairing_failures: Rate {
                burst: 50,
                per_second: 5,
            },
            devices_per_user_max: 16,
            members_max: 1000,
            list_max: 1000,
            limiter_keys_max: 100_000,
        }
    }
}

/// The entropy of a pairing code, in bits (10 characters of a 32-letter alphabet).
pub const PAIRING_CODE_BITS: u32 = 50;
/// Crockford's base 32: no I, L, O or U, so a code read aloud or retyped survives.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// The longest handle (also the store's bound).
pub const HANDLE_LEN_MAX: usize = control_store::HANDLE_LEN_MAX;

/// The authenticated caller of an operation: a live registered device and its account.
/// Created only by [`Control::session_caller`] (from a Noise handshake) and
/// [`Control::authenticate_token`] (from a bearer token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    device: DeviceId,
    user: UserId,
}

impl Caller {
    /// The caller's device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The caller's account.
    pub fn user(&self) -> UserId {
        self.user
    }
}

/// Proof that the operator's admin credential was presented. Created only by
/// [`AdminCredential::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admin(());

/// The operator's admin secret. Its `Debug` prints nothing of it.
pub struct AdminCredential {
    secret: Vec<u8>,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(…)")
    }
}

impl AdminCredential {
    /// The shortest secret accepted, in bytes of text.
    pub const LEN_MIN: usize = 32;

    /// Wraps a secret (the text of the operator's file, surrounding whitespace removed).
    /// Refuses one shorter than [`Self::LEN_MIN`].
    pub fn new(secret: &str) -> Result<Self, ControlError> {
        let secret = secret.trim();
        if secret.len() < Self::LEN_MIN {
            return Err(ControlError::InvalidInput("admin credential too short"));
        }
        Ok(Self {
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// A new random credential: 32 bytes from the OS CSPRNG, hex-encoded.
    pub fn generate() -> Result<(Self, String), ControlError> {
        let bytes = random::<32>()?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok((
            Self {
                secret: text.as_bytes().to_vec(),
            },
            text,
        ))
    }

    /// Whether `presented` is the secret, compared in constant time (in the secret's content;
    /// a length mismatch is refused without a comparison).
    pub fn verify(&self, presented: &[u8]) -> Option<Admin> {
        let equal: bool = self.secret.as_slice().ct_eq(presented).into();
        equal.then_some(Admin(()))
    }
}

/// A command for the data plane that an operation produced; the caller forwards it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    /// Close every live session of this device, on every shard.
    RevokeDevice(DeviceId),
    /// The conversation's membership changed: the data plane forgets what it cached of it.
    ConversationChanged(ConversationId),
    /// The user's friendships changed (or its devices did): the presence audiences of its
    /// devices and its friends' devices are forgotten (docs/design/0016).
    AudienceChanged(UserId),
}

/// A device registered by [`Control::register`] or [`Control::claim_pairing_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The account.
    pub user: UserId,
    /// The device (its id derived from its authenticated key).
    pub device: DeviceId,
}

/// A session token as issued: the secret itself (shown once, stored only hashed) and its
/// expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer secret.
    pub token: SessionToken,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

impl IssuedToken {
    /// The token as a client sends it: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.token.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Parses a bearer token's text (64 hex digits); anything else is `None`.
pub fn parse_token(text: &str) -> Option<SessionToken> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(SessionToken(out))
}

/// A pairing code as created: the code to show the user (once) and its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingCode {
    /// `XXXXX-XXXXX` in Crockford base 32.
    pub code: String,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

/// A device as its own account sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// The device id.
    pub id: DeviceId,
    /// Its Noise static public key.
    pub public_key: [u8; 32],
    /// Its name.
    pub name: String,
    /// When it was added.
    pub created_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        Self {
            id: d.id,
            public_key: d.public_key,
            name: d.name,
            created_at_ms: d.created_at_ms,
            revoked_at_ms: d.revoked_at_ms,
        }
    }
}

/// Pending friend requests of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendRequests {
    /// Requests to the user, awaiting its answer.
    pub incoming: Vec<FriendRequest>,
    /// Requests from the user, awaiting the other's answer.
    pub outgoing: Vec<FriendRequest>,
}

/// A conversation with its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationDetail {
    /// The conversation.
    pub conversation: Conversation,
    /// Its members.
    pub members: Vec<Member>,
}

fn random<const N: usize>() -> Result<[u8; N], ControlError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|_| ControlError::Unavailable)?;
    Ok(out)
}

/// Normalises a typed pairing code: dashes and spaces dropped, upper case, the confusable
/// letters mapped as Crockford does (I, L → 1; O → 0). `None` when it is not 10 symbols.
fn normalise_code(code: &str) -> Option<String> {
    let mut out = String::with_capacity(10);
    for c in code.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !CODE_ALPHABET.contains(&(c as u32).try_into().ok()?) || !c.is_ascii() {
            return None;
        }
        out.push(c);
        if out.len() > 10 {
            return None;
        }
    }
    (out.len() == 10).then_some(out)
}

fn code_hash(normalised: &str) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    hasher.update(b"commucat pairing code v1\0");
    hasher.update(normalised.as_bytes());
    hasher.finalize().into()
}

/// Checks a handle: 1 to [`HANDLE_LEN_MAX`] bytes of `a-z`, `0-9`, `.`, `_`, `-`, starting
/// with a letter or digit. Handles are case-sensitive as stored; clients lower-case them.
fn check_handle(handle: &str) -> Result<(), ControlError> {
    let ok = !handle.is_empty()
        && handle.len() <= HANDLE_LEN_MAX
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && handle
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ControlError::InvalidInput(
            "a handle is 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        ))
    }
}

fn check_device_name(name: &str) -> Result<(), ControlError> {
    if name.len() > control_store::DEVICE_NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(ControlError::InvalidInput(
            "a device name is at most 64 bytes without control characters",
        ));
    }
    Ok(())
}

/// The control domain: stateless apart from the store and the pairing-claim limiters.
#[derive(Debug)]
pub struct Control {
    store: Store,
    clock: Box<dyn Clock>,
    limits: Limits,
    claims: Mutex<RateLimiter<DeviceId>>,
    failures: Mutex<RateLimiter<()>>,
}

impl Control {
    /// The domain over `store`, reading time from `clock`.
    pub fn new(store: Store, clock: Box<dyn Clock>, limits: Limits) -> Self {
        Self {
            claims: Mutex::new(RateLimiter::new(
                limits.pairing_claims,
                limits.limiter_keys_max,
            )),
            failures: Mutex::new(RateLimiter::new(limits.pairing_failures, 1)),
            store,
            clock,
            limits,
        }
    }

    /// The store (for readiness checks and the binary's other uses).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Now, by the domain's clock (milliseconds since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    // -----------------------------------------------------------------------------------------
    // Registration, identity, tokens.

    /// Registers a new account with its first device: the device whose Noise handshake
    /// produced `peer` (its key is the one the handshake proved; none comes from a payload).
    /// Atomic: on any error neither the account nor the device exists.
    pub async fn register(
        &self,
        peer: &PeerAuthenticated,
        handle: &str,
        device_name: &str,
    ) -> Result<Registered, ControlError> {
        check_handle(handle)?;
        check_device_name(device_name)?;
        let device = NewPairedDevice {
            id: peer.device(),
            public_key: *peer.static_key(),
            name: device_name.to_string(),
        };
        match self
            .store
            .register_first_device(handle, &device, self.now_ms())
            .await
        {
            Ok(user) => Ok(Registered {
                user,
                device: device.id,
            }),
            Err(control_store::StoreError::Conflict(control_store::Entity::User)) => {
                Err(ControlError::HandleTaken)
            }
            Err(control_store::StoreError::Conflict(
                control_store::Entity::Device | control_store::Entity::DeviceKey,
            )) => Err(ControlError::DeviceExists),
            Err(other) => Err(other.into()),
        }
    }

    /// The caller behind a Noise session: the registered, live device whose key the handshake
    /// authenticated. `Unauthenticated` for an unknown or revoked device, or a stored key that
    /// differs from the authenticated one.
    pub async fn session_caller(&self, peer: &PeerAuthenticated) -> Result<Caller, ControlError> {
        let Some(device) = self.store.device(peer.device()).await? else {
            return Err(ControlError::Unauthenticated);
        };
        let same_key: bool = device.public_key.ct_eq(peer.static_key()).into();
        if device.revoked_at_ms.is_some() || !same_key {
            return Err(ControlError::Unauthenticated);
        }
        Ok(Caller {
            device: device.id,
            user: device.user,
        })
    }

    /// Issues a session token for the caller's device: 32 random bytes, stored hashed,
    /// expiring after [`Limits::token_ttl_ms`]. The lead's Noise bridge hands it to the device.
    pub async fn issue_token(&self, caller: &Caller) -> Result<IssuedToken, ControlError> {
        let token = SessionToken(random::<32>()?);
        let now = self.now_ms();
        let expires_at_ms = now.saturating_add(self.limits.token_ttl_ms);
        self.store
            .create_session_token(&token, caller.device, now, expires_at_ms)
            .await
            .map_err(|e| match e {
                control_store::StoreError::NotFound(_) => ControlError::Unauthenticated,
                other => other.into(),
            })?;
        Ok(IssuedToken {
            token,
            expires_at_ms,
        })
    }

    /// The caller a bearer token authenticates: known, unexpired, unrevoked, its device live.
    pub async fn authenticate_token(&self, token: &SessionToken) -> Result<Caller, ControlError> {
        match self
            .store
            .verify_session_token(token, self.now_ms())
            .await?
        {
            Some(owner) => Ok(Caller {
                device: owner.device,
                user: owner.user,
            }),
            None => Err(ControlError::Unauthenticated),
        }
    }

    /// Revokes `token` (a logout). Only a token of the caller's own device can be revoked this
    /// way; another's is `Unauthenticated`, as if unknown.
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        token: &SessionToken,
    ) -> Result<(), ControlError> {
        let owner = self.authenticate_token(token).await?;
        if owner.device != caller.device {
            return Err(ControlError::Unauthenticated);
        }
        self.store
            .revoke_session_token(token, self.now_ms())
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Devices.

    /// The devices of the caller's account, revoked ones included.
    pub async fn devices(&self, caller: &Caller) -> Result<Vec<DeviceView>, ControlError> {
        let max = usize::try_from(self.limits.devices_per_user_max)
            .unwrap_or(usize::MAX)
            .saturating_mul(4)
            .min(self.limits.list_max);
        Ok(self
            .store
            .devices_of(caller.user, max)
            .await?
            .into_iter()
            .map(DeviceView::from)
            .collect())
    }

    /// Renames a live device of the caller's account. A device of another account is
    /// `NotFound`, as if it did not exist.
    pub async fn rename_device(
        &self,
        caller: &Caller,
        device: DeviceId,
        name: &str,
    ) -> Result<(), ControlError> {
        check_device_name(name)?;
        if self.store.rename_device(caller.user, device, name).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("device"))
        }
    }

    /// Revokes a device of the caller's account (possibly the caller's own): its tokens die
    /// with it, and the returned command tells the data plane to close its live sessions.
    /// A device of another account is `NotFound`. Revoking again is harmless and returns the
    /// command again.
    pub async fn revoke_device(
        &self,
        caller: &Caller,
        device: DeviceId,
    ) -> Result<ControlCommand, ControlError> {
        // Idempotent for the account's own devices: revoking a revoked device again returns
        // the command again, so a caller whose forwarding failed can retry.
        match self.store.device(device).await? {
            Some(d) if d.user == caller.user => {}
            _ => return Err(ControlError::NotFound("device")),
        }
        self.store.revoke_device(device, self.now_ms()).await?;
        Ok(ControlCommand::RevokeDevice(device))
    }

    // -----------------------------------------------------------------------------------------
    // Pairing.

    /// Creates a pairing code for the caller's account: 50 random bits, stored hashed,
    /// single-use, expiring after [`Limits::pairing_ttl_ms`]; at most
    /// [`Limits::pairing_codes_live_max`] live at once per account.
    pub async fn create_pairing_code(&self, caller: &Caller) -> Result<PairingCode, ControlError> {
        let bytes = random::<10>()?;
        let symbols: String = bytes
            .iter()
            .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
            .collect();
        let now = self.now_ms();
        let expires_at_ms = now.saturating_add(self.limits.pairing_ttl_ms);
        let created = self
            .store
            .create_pairing_code(
                code_hash(&symbols),
                caller.user,
                caller.device,
                now,
                expires_at_ms,
                self.limits.pairing_codes_live_max,
            )
            .await?;
        if !created {
            return Err(ControlError::LimitReached("too many live pairing codes"));
        }
        Ok(PairingCode {
            code: format!("{}-{}", &symbols[..5], &symbols[5..]),
            expires_at_ms,
        })
    }

    /// A new device claims a pairing code over its own authenticated Noise session: the device
    /// whose handshake produced `peer` (with its own key; the server never generates one)
    /// joins the code's account. Claims are rate-limited per claiming device, and failed
    /// claims server-wide.
    pub async fn claim_pairing_code(
        &self,
        peer: &PeerAuthenticated,
        code: &str,
        device_name: &str,
    ) -> Result<Registered, ControlError> {
        check_device_name(device_name)?;
        let now = self.now_ms();
        {
            let mut claims = self.claims.lock().map_err(|_| ControlError::Unavailable)?;
            if !claims.allow(&peer.device(), now) {
                return Err(ControlError::RateLimited);
            }
            // While the server-wide failure budget is spent, no claim is tried at all: a
            // guesser cannot learn that a guess was right.
            let mut failures = self
                .failures
                .lock()
                .map_err(|_| ControlError::Unavailable)?;
            if !failures.peek(&(), now) {
                return Err(ControlError::RateLimited);
            }
        }
        let fail = || -> ControlError {
            if let Ok(mut failures) = self.failures.lock() {
                failures.allow(&(), now);
            }
            ControlError::InvalidPairingCode
        };
        let Some(normalised) = normalise_code(code) else {
            return Err(fail());
        };
        let device = NewPairedDevice {
            id: peer.device(),
            public_key: *peer.static_key(),
            name: device_name.to_string(),
        };
        match self
            .store
            .claim_pairing_code(
                code_hash(&normalised),
                &device,
                self.limits.devices_per_user_max,
                now,
            )
            .await
        {
            Ok(ClaimOutcome::Joined(user)) => Ok(Registered {
                user,
                device: device.id,
            }),
            Ok(ClaimOutcome::NoSuchCode) => Err(fail()),
            Ok(ClaimOutcome::AccountFull) => Err(ControlError::LimitReached(
                "the account has its maximum of devices",
            )),
            Err(control_store::StoreError::Conflict(
                control_store::Entity::Device | control_store::Entity::DeviceKey,
            )) => Err(ControlError::DeviceExists),
            Err(other) => Err(other.into()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Friends.

    async fn user_by_handle(&self, handle: &str) -> Result<UserSummary, ControlError> {
        check_handle(handle)?;
        self.store
            .user_by_handle(handle)
            .await?
            .ok_or(ControlError::NotFound("user"))
    }

    /// Asks the user `handle` for friendship; if that user had already asked the caller, both
    /// consented and they are friends now.
    pub async fn request_friend(
        &self,
        caller: &Caller,
        handle: &str,
    ) -> Result<FriendRequestOutcome, ControlError> {
        let other = self.user_by_handle(handle).await?;
        if other.id == caller.user {
            return Err(ControlError::InvalidInput("cannot befriend oneself"));
        }
        Ok(self
            .store
            .friend_request(caller.user, other.id, self.now_ms())
            .await?)
    }

    /// Accepts the pending request from `handle`.
    pub async fn accept_friend(&self, caller: &Caller, handle: &str) -> Result<(), ControlError> {
        let other = self.user_by_handle(handle).await?;
        if self
            .store
            .accept_friend_request(caller.user, other.id, self.now_ms())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound("friend request"))
        }
    }

    /// Rejects the pending request from `handle`.
    pub async fn reject_friend(&self, caller: &Caller, handle: &str) -> Result<(), ControlError> {
        let other = self.user_by_handle(handle).await?;
        if self
            .store
            .delete_friend_request(other.id, caller.user)
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound("friend request"))
        }
    }

    /// Withdraws the caller's pending request to `handle`.
    pub async fn cancel_friend_request(
        &self,
        caller: &Caller,
        handle: &str,
    ) -> Result<(), ControlError> {
        let other = self.user_by_handle(handle).await?;
        if self
            .store
            .delete_friend_request(caller.user, other.id)
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound("friend request"))
        }
    }

    /// Ends the friendship with `handle`. Their direct conversation, if they have one, may no
    /// longer be written to: the returned command tells the data plane.
    pub async fn remove_friend(
        &self,
        caller: &Caller,
        handle: &str,
    ) -> Result<Option<ControlCommand>, ControlError> {
        let other = self.user_by_handle(handle).await?;
        if !self.store.remove_friend(caller.user, other.id).await? {
            return Err(ControlError::NotFriends);
        }
        Ok(self
            .store
            .direct_conversation_id(caller.user, other.id)
            .await?
            .map(ControlCommand::ConversationChanged))
    }

    /// The caller's friends.
    pub async fn friends(&self, caller: &Caller) -> Result<Vec<UserSummary>, ControlError> {
        Ok(self
            .store
            .friends(caller.user, self.limits.list_max)
            .await?)
    }

    /// The caller's pending requests, both ways.
    pub async fn friend_requests(&self, caller: &Caller) -> Result<FriendRequests, ControlError> {
        Ok(FriendRequests {
            incoming: self
                .store
                .friend_requests(caller.user, true, self.limits.list_max)
                .await?,
            outgoing: self
                .store
                .friend_requests(caller.user, false, self.limits.list_max)
                .await?,
        })
    }

    /// Whether the caller may list `user`'s devices and claim their end-to-end keys: its own
    /// account, a friend, or a member of a conversation the caller is in (group members message
    /// each other's devices without being friends).
    pub(crate) async fn may_see_devices_of(
        &self,
        caller: &Caller,
        user: UserId,
    ) -> Result<bool, ControlError> {
        Ok(user == caller.user
            || self.store.are_friends(caller.user, user).await?
            || self.store.share_a_conversation(caller.user, user).await?)
    }

    /// The live devices and keys of `handle`: visible only to the user itself, to accepted
    /// friends and to fellow conversation members (`NotFriends` otherwise).
    pub async fn user_devices(
        &self,
        caller: &Caller,
        handle: &str,
    ) -> Result<Vec<DeviceView>, ControlError> {
        let other = self.user_by_handle(handle).await?;
        if !self.may_see_devices_of(caller, other.id).await? {
            return Err(ControlError::NotFriends);
        }
        let max = usize::try_from(self.limits.devices_per_user_max)
            .unwrap_or(usize::MAX)
            .saturating_mul(4)
            .min(self.limits.list_max);
        Ok(self
            .store
            .devices_of(other.id, max)
            .await?
            .into_iter()
            .filter(|d| d.revoked_at_ms.is_none())
            .map(DeviceView::from)
            .collect())
    }

    // -----------------------------------------------------------------------------------------
    // Conversations.

    /// The direct conversation with the friend `handle` (created on first use; the id is the
    /// server's). `NotFriends` unless both consented.
    pub async fn direct_conversation(
        &self,
        caller: &Caller,
        handle: &str,
    ) -> Result<ConversationId, ControlError> {
        let other = self.user_by_handle(handle).await?;
        if other.id == caller.user {
            return Err(ControlError::InvalidInput(
                "a direct conversation needs another user",
            ));
        }
        if !self.store.are_friends(caller.user, other.id).await? {
            return Err(ControlError::NotFriends);
        }
        let (id, _) = self
            .store
            .create_direct_conversation(caller.user, other.id, self.now_ms())
            .await?;
        Ok(id)
    }

    /// Creates a group owned by the caller (the id is the server's).
    pub async fn create_group(
        &self,
        caller: &Caller,
        title: &str,
    ) -> Result<ConversationId, ControlError> {
        if title.is_empty()
            || title.len() > control_store::GROUP_TITLE_LEN_MAX
            || title.chars().any(char::is_control)
        {
            return Err(ControlError::InvalidInput(
                "a group title is 1-128 bytes without control characters",
            ));
        }
        Ok(self
            .store
            .create_group(caller.user, title, self.now_ms())
            .await?)
    }

    /// The conversations the caller is a member of.
    pub async fn conversations(&self, caller: &Caller) -> Result<Vec<Conversation>, ControlError> {
        Ok(self
            .store
            .conversations_of(caller.user, self.limits.list_max)
            .await?)
    }

    async fn role_of(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<(Conversation, Role), ControlError> {
        // A non-member learns nothing, not even that the conversation exists.
        let Some(role) = self.store.member_role(id, caller.user).await? else {
            return Err(ControlError::NotFound("conversation"));
        };
        let conversation = self
            .store
            .conversation(id)
            .await?
            .ok_or(ControlError::NotFound("conversation"))?;
        Ok((conversation, role))
    }

    /// A conversation and its members, for members only (`NotFound` for anyone else).
    pub async fn conversation(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> Result<ConversationDetail, ControlError> {
        let (conversation, _) = self.role_of(caller, id).await?;
        let max = usize::try_from(self.limits.members_max).unwrap_or(usize::MAX);
        Ok(ConversationDetail {
            conversation,
            members: self.store.members(id, max).await?,
        })
    }

    /// An owner or admin of a group adds the friend `handle` as a member. Only friends of the
    /// inviter can be invited.
    pub async fn invite(
        &self,
        caller: &Caller,
        id: ConversationId,
        handle: &str,
    ) -> Result<(), ControlError> {
        let (conversation, role) = self.role_of(caller, id).await?;
        if conversation.kind != ConversationKind::Group {
            return Err(ControlError::InvalidInput(
                "a direct conversation has fixed members",
            ));
        }
        if role < Role::Admin {
            return Err(ControlError::Forbidden("only an owner or admin may invite"));
        }
        let other = self.user_by_handle(handle).await?;
        if !self.store.are_friends(caller.user, other.id).await? {
            return Err(ControlError::NotFriends);
        }
        match self
            .store
            .add_member(
                id,
                other.id,
                Role::Member,
                self.limits.members_max,
                self.now_ms(),
            )
            .await?
        {
            Added::Added | Added::AlreadyMember => Ok(()),
            Added::Full => Err(ControlError::LimitReached(
                "the group has its maximum of members",
            )),
        }
    }

    /// The caller leaves a group (an owner's ownership passes to the longest-standing admin,
    /// else member).
    pub async fn leave(&self, caller: &Caller, id: ConversationId) -> Result<(), ControlError> {
        let (conversation, _) = self.role_of(caller, id).await?;
        if conversation.kind != ConversationKind::Group {
            return Err(ControlError::InvalidInput(
                "a direct conversation has fixed members",
            ));
        }
        self.store.remove_member(id, caller.user).await?;
        Ok(())
    }

    /// An owner removes anyone but itself; an admin removes plain members.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        id: ConversationId,
        handle: &str,
    ) -> Result<(), ControlError> {
        let (conversation, role) = self.role_of(caller, id).await?;
        if conversation.kind != ConversationKind::Group {
            return Err(ControlError::InvalidInput(
                "a direct conversation has fixed members",
            ));
        }
        let other = self.user_by_handle(handle).await?;
        if other.id == caller.user {
            return Err(ControlError::InvalidInput("use leave to leave"));
        }
        let Some(target) = self.store.member_role(id, other.id).await? else {
            return Err(ControlError::NotFound("member"));
        };
        if role < Role::Admin || target >= role {
            return Err(ControlError::Forbidden(
                "only an owner removes admins; only an owner or admin removes members",
            ));
        }
        self.store.remove_member(id, other.id).await?;
        Ok(())
    }

    /// The owner makes a member an admin or an admin a member.
    pub async fn set_role(
        &self,
        caller: &Caller,
        id: ConversationId,
        handle: &str,
        role: Role,
    ) -> Result<(), ControlError> {
        let (_, mine) = self.role_of(caller, id).await?;
        if mine != Role::Owner {
            return Err(ControlError::Forbidden("only the owner changes roles"));
        }
        if role == Role::Owner {
            return Err(ControlError::InvalidInput("a group has one owner"));
        }
        let other = self.user_by_handle(handle).await?;
        if other.id == caller.user {
            return Err(ControlError::InvalidInput("the owner's role is fixed"));
        }
        if self.store.set_member_role(id, other.id, role).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("member"))
        }
    }

    /// The data plane's per-send check: may `device` send to `conversation`? Yes when the
    /// device is live, its user is a member and, for a direct conversation, the two users are
    /// still friends. Returns the live devices of every member except `device` itself.
    /// `NotAMember` otherwise (an unknown conversation included).
    pub async fn may_send(
        &self,
        device: DeviceId,
        conversation: ConversationId,
    ) -> Result<Vec<DeviceId>, ControlError> {
        let max = usize::try_from(
            self.limits
                .members_max
                .saturating_mul(self.limits.devices_per_user_max),
        )
        .unwrap_or(usize::MAX);
        match self.store.send_check(device, conversation, max).await? {
            SendCheck::Allowed(devices) => Ok(devices),
            SendCheck::UnknownDevice => Err(ControlError::Unauthenticated),
            SendCheck::NotAMember => Err(ControlError::NotAMember),
            SendCheck::NotFriends => Err(ControlError::NotFriends),
        }
    }

    /// The data plane's conversation lookup (docs/design/0013): the live devices of every
    /// member (at most [`Limits::members_max`] × [`Limits::devices_per_user_max`]), whether
    /// members may send (the rule of [`Control::may_send`]: always in a group, while the two
    /// users are friends in a direct conversation), and the next `seq_count` sequence numbers,
    /// reserved durably. `None` for an unknown conversation.
    pub async fn conversation_lookup(
        &self,
        conversation: ConversationId,
        seq_count: u64,
    ) -> Result<Option<ConversationLookup>, ControlError> {
        let max = usize::try_from(
            self.limits
                .members_max
                .saturating_mul(self.limits.devices_per_user_max),
        )
        .unwrap_or(usize::MAX);
        Ok(self
            .store
            .conversation_lookup(conversation, max, seq_count)
            .await?)
    }

    /// The data plane's presence audience lookup (docs/design/0016): the live devices of every
    /// friend of the device's account and the account's other live devices (at most
    /// [`Limits::list_max`] friends, each with at most [`Limits::devices_per_user_max`]
    /// devices). `None` for an unknown or revoked device.
    pub async fn presence_audience(
        &self,
        device: DeviceId,
    ) -> Result<Option<Vec<DeviceId>>, ControlError> {
        let Some(found) = self.store.device(device).await? else {
            return Ok(None);
        };
        if found.revoked_at_ms.is_some() {
            return Ok(None);
        }
        let mut audience = self.audience_watchers(found.user).await?;
        audience.retain(|&d| d != device);
        Ok(Some(audience))
    }

    /// The live devices of `user` and of each of its friends: the devices whose presence
    /// audience changes when `user`'s friendships or devices do.
    pub async fn audience_watchers(&self, user: UserId) -> Result<Vec<DeviceId>, ControlError> {
        let per_user = usize::try_from(self.limits.devices_per_user_max).unwrap_or(usize::MAX);
        let mut devices: Vec<DeviceId> = Vec::new();
        let mut users = vec![user];
        users.extend(
            self.store
                .friends(user, self.limits.list_max)
                .await?
                .into_iter()
                .map(|friend| friend.id),
        );
        for user in users {
            devices.extend(
                self.store
                    .devices_of(user, per_user)
                    .await?
                    .into_iter()
                    .filter(|d| d.revoked_at_ms.is_none())
                    .map(|d| d.id),
            );
        }
        Ok(devices)
    }

    // -----------------------------------------------------------------------------------------
    // Maintenance.

    /// Deletes pairing codes and session tokens that expired or were used or revoked before
    /// now; the binary calls it periodically. Returns (codes, tokens) deleted.
    pub async fn purge_expired(&self) -> Result<(u64, u64), ControlError> {
        let now = self.now_ms();
        let codes = self.store.purge_pairing_codes(now).await?;
        let tokens = self.store.purge_session_tokens(now).await?;
        Ok((codes, tokens))
    }

    // -----------------------------------------------------------------------------------------
    // Administration.

    /// Up to `max` (at most [`Limits::list_max`]) accounts with an id above `after`.
    pub async fn admin_list_users(
        &self,
        _admin: &Admin,
        after: UserId,
        max: usize,
    ) -> Result<Vec<UserSummary>, ControlError> {
        Ok(self
            .store
            .list_users(after, max.min(self.limits.list_max))
            .await?)
    }

    /// Any account's devices.
    pub async fn admin_devices(
        &self,
        _admin: &Admin,
        handle: &str,
    ) -> Result<Vec<DeviceView>, ControlError> {
        let user = self.user_by_handle(handle).await?;
        Ok(self
            .store
            .devices_of(user.id, self.limits.list_max)
            .await?
            .into_iter()
            .map(DeviceView::from)
            .collect())
    }

    /// Revokes any device; the command closes its live sessions.
    pub async fn admin_revoke_device(
        &self,
        _admin: &Admin,
        device: DeviceId,
    ) -> Result<ControlCommand, ControlError> {
        if self.store.device(device).await?.is_none() {
            return Err(ControlError::NotFound("device"));
        }
        self.store.revoke_device(device, self.now_ms()).await?;
        Ok(ControlCommand::RevokeDevice(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalise_and_refuse_junk() {
        assert_eq!(normalise_code("abcde-fghjk").as_deref(), Some("ABCDEFGHJK"));
        assert_eq!(normalise_code("0o1il 23456").as_deref(), Some("0011123456"));
        assert_eq!(normalise_code("ABCDE-FGHJ"), None);
        assert_eq!(normalise_code("ABCDE-FGHJKM"), None);
        assert_eq!(
            normalise_code("ABCDE-FGHJU"),
            None,
            "U is not in the alphabet"
        );
        assert_eq!(normalise_code("ABCDE-FGHJ\u{e9}"), None);
        assert_ne!(code_hash("ABCDEFGHJK"), code_hash("ABCDEFGHJM"));
    }

    #[test]
    fn tokens_parse_only_as_64_hex_digits() {
        let issued = IssuedToken {
            token: SessionToken([0xab; 32]),
            expires_at_ms: 0,
        };
        assert_eq!(
            parse_token(&issued.to_hex()),
            Some(SessionToken([0xab; 32]))
        );
        assert_eq!(parse_token("ab"), None);
        assert_eq!(parse_token(&"zz".repeat(32)), None);
        assert_eq!(parse_token(&"ab".repeat(33)), None);
    }

    #[test]
    fn handles_are_checked() {
        assert!(check_handle("alice").is_ok());
        assert!(check_handle("a.b_c-9").is_ok());
        assert!(check_handle("").is_err());
        assert!(check_handle("Alice").is_err());
        assert!(check_handle("-alice").is_err());
        assert!(check_handle(&"a".repeat(65)).is_err());
        assert!(check_handle("al ice").is_err());
    }

    #[test]
    fn admin_credential_compares_whole_and_hides_itself() {
        let secret = "s".repeat(40);
        let cred = AdminCredential::new(&format!("{secret}\n")).unwrap();
        assert!(cred.verify(secret.as_bytes()).is_some());
        assert!(cred.verify(&secret.as_bytes()[..39]).is_none());
        assert!(cred.verify(b"").is_none());
        assert!(AdminCredential::new("short").is_err());
        assert!(!format!("{cred:?}").contains("sss"));
        let (generated, text) = AdminCredential::generate().unwrap();
        assert_eq!(text.len(), 64);
        assert!(generated.verify(text.as_bytes()).is_some());
    }
}
