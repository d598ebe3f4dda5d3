//! The in-memory control thread of [`Server::start`](crate::Server::start), for tests and
//! benchmarks: it stores envelopes for offline devices **in memory** and drains them, paced,
//! when a device comes online. `commucat serve` uses the durable control side
//! (`control-delivery`) instead, through the same protocol with the shards.
//!
//! Conversations are whatever the test or benchmark defines through [`Conversations`]; their
//! sequence numbers start again at 1 with every process (nothing here is durable).

use crate::link::{ControlLinks, Doorbell, WAKER};
use core::time::Duration;
use dp_core::{ConversationId, DeviceId, MessageId};
use dp_shard::{
    AudienceAnswer, ControlEvent, ControlRequest, ConversationAnswer, ConversationInfo, Envelope,
    Member, ShardId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Stored envelopes sent to one device's session and not yet acknowledged.
const DRAIN_WINDOW: usize = 64;
/// Messages taken from one shard per loop iteration.
const DRAIN_BUDGET: usize = 1024;
/// How often unacknowledged drains are sent again.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Sequence numbers handed to a shard per lookup.
const SEQ_BLOCK: u64 = 1024;
/// Conversations the in-memory control keeps.
pub const CONVERSATIONS_DEFINED_MAX: usize = 1 << 16;

/// The in-memory control's conversations: a handle from
/// [`Server::conversations`](crate::Server::conversations) to define them. Each change reaches
/// every shard as `ConversationChanged`, so the next message sees it.
#[derive(Clone)]
pub struct Conversations {
    inner: Arc<Mutex<Defined>>,
    bell: Doorbell,
}

#[derive(Default)]
struct Defined {
    members: BTreeMap<ConversationId, Vec<Member>>,
    changed: Vec<ConversationId>,
}

impl core::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conversations").finish_non_exhaustive()
    }
}

impl Conversations {
    pub(crate) fn new(bell: Doorbell) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Defined::default())),
            bell,
        }
    }

    /// Defines conversation `id` (not 0) with these member devices, all of which may send, or
    /// replaces its members. False if it is new and [`CONVERSATIONS_DEFINED_MAX`] are
    /// defined.
    pub fn set(&self, id: ConversationId, devices: &[DeviceId]) -> bool {
        let members = devices
            .iter()
            .map(|&device| Member {
                device,
                may_send: true,
            })
            .collect();
        {
            let mut defined = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if id.0 == 0
                || (!defined.members.contains_key(&id)
                    && defined.members.len() >= CONVERSATIONS_DEFINED_MAX)
            {
                return false;
            }
            defined.members.insert(id, members);
            if defined.changed.len() < CONVERSATIONS_DEFINED_MAX {
                defined.changed.push(id);
            }
        }
        self.bell.ring();
        true
    }

    /// Deletes conversation `id`.
    pub fn remove(&self, id: ConversationId) {
        {
            let mut defined = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if defined.members.remove(&id).is_some()
                && defined.changed.len() < CONVERSATIONS_DEFINED_MAX
            {
                defined.changed.push(id);
            }
        }
        self.bell.ring();
    }

    fn lookup(&self, id: ConversationId) -> Option<Vec<Member>> {
        let defined = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        defined.members.get(&id).cloned()
    }

    fn take_changed(&self) -> Vec<ConversationId> {
        let mut defined = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        core::mem::take(&mut defined.changed)
    }
}

/// Accounts the in-memory control keeps.
pub const ACCOUNTS_DEFINED_MAX: usize = 1 << 16;
/// Devices per account in the in-memory control.
pub const ACCOUNT_DEVICES_MAX: usize = 64;
/// Friends per account in the in-memory control.
pub const FRIENDS_MAX: usize = 1024;

/// The in-memory control's accounts and friendships, for presence (docs/design/0016): a
/// handle from [`Server::friendships`](crate::Server::friendships). A device's audience is its
/// account's other devices and every device of a friend; each change reaches every shard as
/// `AudienceChanged`.
#[derive(Clone)]
pub struct Friendships {
    inner: Arc<Mutex<Accounts>>,
    bell: Doorbell,
}

#[derive(Default)]
struct Accounts {
    devices: BTreeMap<u64, Vec<DeviceId>>,
    friends: BTreeMap<u64, BTreeSet<u64>>,
    changed: Vec<DeviceId>,
}

impl Accounts {
    fn touch(&mut self, account: u64) {
        if let Some(devices) = self.devices.get(&account) {
            for &device in devices {
                if self.changed.len() < ACCOUNTS_DEFINED_MAX {
                    self.changed.push(device);
                }
            }
        }
    }
}

impl core::fmt::Debug for Friendships {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Friendships").finish_non_exhaustive()
    }
}

impl Friendships {
    pub(crate) fn new(bell: Doorbell) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Accounts::default())),
            bell,
        }
    }

    fn change(&self, f: impl FnOnce(&mut Accounts) -> bool) -> bool {
        let done = f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
        self.bell.ring();
        done
    }

    /// Sets account `account`'s devices (at most [`ACCOUNT_DEVICES_MAX`]). False when it is
    /// new and [`ACCOUNTS_DEFINED_MAX`] are defined, or lists too many.
    pub fn set_account(&self, account: u64, devices: &[DeviceId]) -> bool {
        self.change(|a| {
            if devices.len() > ACCOUNT_DEVICES_MAX
                || (!a.devices.contains_key(&account) && a.devices.len() >= ACCOUNTS_DEFINED_MAX)
            {
                return false;
            }
            a.touch(account);
            a.devices.insert(account, devices.to_vec());
            a.touch(account);
            let friends: Vec<u64> = a
                .friends
                .get(&account)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for friend in friends {
                a.touch(friend);
            }
            true
        })
    }

    /// Makes accounts `a` and `b` friends (false past [`FRIENDS_MAX`]).
    pub fn befriend(&self, a: u64, b: u64) -> bool {
        self.change(|accounts| {
            let full = |x: u64| {
                accounts
                    .friends
                    .get(&x)
                    .is_some_and(|f| f.len() >= FRIENDS_MAX)
            };
            if a == b || full(a) || full(b) {
                return false;
            }
            accounts.friends.entry(a).or_default().insert(b);
            accounts.friends.entry(b).or_default().insert(a);
            accounts.touch(a);
            accounts.touch(b);
            true
        })
    }

    /// Ends the friendship of accounts `a` and `b`.
    pub fn unfriend(&self, a: u64, b: u64) {
        self.change(|accounts| {
            if let Some(f) = accounts.friends.get_mut(&a) {
                f.remove(&b);
            }
            if let Some(f) = accounts.friends.get_mut(&b) {
                f.remove(&a);
            }
            accounts.touch(a);
            accounts.touch(b);
            true
        });
    }

    /// The device's audience, or `None` if no account lists it.
    fn audience(&self, device: DeviceId) -> Option<Vec<DeviceId>> {
        let accounts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (&account, own) = accounts
            .devices
            .iter()
            .find(|(_, devices)| devices.contains(&device))?;
        let mut audience: Vec<DeviceId> = own.iter().copied().filter(|&d| d != device).collect();
        for friend in accounts.friends.get(&account).into_iter().flatten() {
            audience.extend(accounts.devices.get(friend).into_iter().flatten().copied());
        }
        Some(audience)
    }

    fn take_changed(&self) -> Vec<DeviceId> {
        let mut accounts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        core::mem::take(&mut accounts.changed)
    }
}

/// A device with a live session.
struct Online {
    shard: ShardId,
    /// The `session` of its `SessionOpened`.
    session: u64,
    /// `Store`s for it taken since then.
    stores: u64,
    /// Stored envelopes sent to this session and not yet acknowledged.
    window: BTreeSet<MessageId>,
}

struct Control {
    stored: Vec<Envelope>,
    online: BTreeMap<DeviceId, Online>,
    links: ControlLinks,
    conversations: Conversations,
    friendships: Friendships,
    /// The next sequence number to hand out per conversation.
    seq_next: BTreeMap<ConversationId, u64>,
}

pub(crate) fn run(
    mut poll: mio::Poll,
    links: ControlLinks,
    stop: Arc<AtomicBool>,
    conversations: Conversations,
    friendships: Friendships,
) {
    let mut control = Control {
        stored: Vec::new(),
        online: BTreeMap::new(),
        links,
        conversations,
        friendships,
        seq_next: BTreeMap::new(),
    };
    let mut events = mio::Events::with_capacity(16);
    let mut last_retry = std::time::Instant::now();
    while !stop.load(Ordering::Acquire) {
        let mut busy = false;
        for shard in 0..control.links.from_shards.len() {
            let mut requests = Vec::new();
            let (inbox, outbox) = (
                &mut control.links.from_shards[shard],
                &mut control.links.to_shards[shard],
            );
            busy |= inbox.drain(DRAIN_BUDGET, outbox, |request| requests.push(request)) > 0;
            for request in requests {
                control.handle(ShardId(u16::try_from(shard).unwrap_or(u16::MAX)), request);
            }
        }
        for conversation in control.conversations.take_changed() {
            busy = true;
            for shard in 0..control.links.to_shards.len() {
                let shard = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
                control.send(shard, ControlEvent::ConversationChanged { conversation });
            }
        }
        let changed = control.friendships.take_changed();
        if !changed.is_empty() {
            busy = true;
            for shard in 0..control.links.to_shards.len() {
                let shard = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
                let devices = changed.clone();
                control.send(shard, ControlEvent::AudienceChanged { devices });
            }
        }
        if last_retry.elapsed() >= RETRY_INTERVAL {
            last_retry = std::time::Instant::now();
            for online in control.online.values_mut() {
                online.window.clear();
            }
            let devices: Vec<DeviceId> = control.online.keys().copied().collect();
            for device in devices {
                control.drain(device);
            }
        }
        for outbox in &mut control.links.to_shards {
            outbox.flush();
        }
        if !busy && control.links.from_shards.iter().all(|inbox| inbox.park()) {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
            for event in &events {
                debug_assert_eq!(event.token(), WAKER);
            }
        }
    }
}

impl Control {
    fn handle(&mut self, from: ShardId, request: ControlRequest) {
        match request {
            ControlRequest::Store(envelope) => {
                let origin = envelope.origin;
                let message = envelope.message;
                let recipient = envelope.recipient;
                self.stored.push(*envelope);
                if let Some(online) = self.online.get_mut(&recipient) {
                    online.stores += 1;
                }
                self.send(origin.shard, ControlEvent::Stored { origin, message });
                self.drain(recipient);
            }
            ControlRequest::SessionOpened { device, session } => {
                let online = Online {
                    shard: from,
                    session,
                    stores: 0,
                    window: BTreeSet::new(),
                };
                self.online.insert(device, online);
                self.drain(device);
            }
            ControlRequest::Operation(operation) => {
                // No accounts here: the in-memory control serves relaying only.
                let response = ControlEvent::Response {
                    origin: operation.origin,
                    request_id: operation.request_id,
                    status: dp_proto::ErrorCode::NOT_FOUND,
                    body: Vec::new(),
                };
                self.send(operation.origin.shard, response);
            }
            ControlRequest::SessionClosed { device } => {
                if self.online.get(&device).is_some_and(|o| o.shard == from) {
                    self.online.remove(&device);
                }
            }
            ControlRequest::LookupConversation { conversation } => {
                let answer = match self.conversations.lookup(conversation) {
                    Some(members) => {
                        let next = self.seq_next.entry(conversation).or_insert(1);
                        let seq = *next..next.saturating_add(SEQ_BLOCK);
                        *next = seq.end;
                        ConversationAnswer::Found(Box::new(ConversationInfo { members, seq }))
                    }
                    None => ConversationAnswer::NotFound,
                };
                let answer = ControlEvent::Conversation {
                    conversation,
                    answer,
                };
                self.send(from, answer);
            }
            ControlRequest::LookupAudience { device } => {
                let answer = match self.friendships.audience(device) {
                    Some(devices) => AudienceAnswer::Found(devices),
                    None => AudienceAnswer::NotFound,
                };
                self.send(from, ControlEvent::Audience { device, answer });
            }
            ControlRequest::Acknowledged { device, messages } => {
                self.stored
                    .retain(|e| !(e.recipient == device && messages.contains(&e.message)));
                if let Some(online) = self.online.get_mut(&device) {
                    online.window.retain(|m| !messages.contains(m));
                }
                self.drain(device);
            }
        }
    }

    fn send(&mut self, shard: ShardId, event: ControlEvent) {
        if let Some(outbox) = self.links.to_shards.get_mut(usize::from(shard.0)) {
            outbox.send(event);
        }
    }

    /// Sends stored envelopes to the device's session until its window is full, or tells
    /// its shard that nothing is stored for it.
    fn drain(&mut self, device: DeviceId) {
        let Some(online) = self.online.get_mut(&device) else {
            return;
        };
        let (shard, session) = (online.shard, online.session);
        let mut pending = self
            .stored
            .iter()
            .filter(|e| e.recipient == device)
            .peekable();
        if pending.peek().is_none() {
            let stores = online.stores;
            let drained = ControlEvent::Drained {
                device,
                session,
                stores,
            };
            self.send(shard, drained);
            return;
        }
        let room = DRAIN_WINDOW.saturating_sub(online.window.len());
        let next: Vec<Envelope> = pending
            .filter(|e| !online.window.contains(&e.message))
            .take(room)
            .cloned()
            .collect();
        online.window.extend(next.iter().map(|e| e.message));
        for envelope in next {
            let envelope = Box::new(envelope);
            self.send(shard, ControlEvent::Deliver { envelope, session });
        }
    }
}
