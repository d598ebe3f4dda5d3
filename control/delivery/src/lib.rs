//! Durable offline delivery: the control side of the shards' links ([`dp_io::ControlPort`]),
//! on the control store.
//!
//! - **Store**: a shard's `Store` request goes to the store's group committer; only when its
//!   transaction has committed does the origin shard hear `Stored` (and the sender
//!   `SendAck(Stored)`). A store that fails is answered `NotStored` (the sender hears `Retry`).
//!   When the committer's queue is full, control stops taking requests from the shards, so
//!   their link credit runs out and they refuse envelopes upstream: a slow database slows
//!   senders, it does not fill memory.
//! - **Drain**: while a device is online, its stored envelopes go to its session in server
//!   order, a window at a time, each window refilled as the device acknowledges; what it
//!   acknowledged is deleted. Every `retry_interval` the windows are sent again (a lost
//!   delivery is redelivered; clients deduplicate by id).
//! - **Order**: when nothing is stored or being stored for an online device, its shard hears
//!   `Drained` with the count of `Store`s taken since the session opened (docs/design/0009),
//!   and live delivery resumes.
//! - **Revocation**: a revoked device's live session is ended on every shard.
//! - **Conversations** (docs/design/0013): a shard's `LookupConversation` is answered from the
//!   store with the member devices, whether they may send, and a freshly reserved block of
//!   the conversation's sequence numbers; a membership change from the API reaches every
//!   shard as `ConversationChanged`.
//! - **Operations**: `Request` frames from sessions run against the control domain
//!   ([`operations`]), with the identity the session's handshake proved.
//!
//! The loop is one async task; store reads and deletes are awaited in turn (they run on the
//! store's own threads), commits complete through the committer's non-blocking submitter.
#![allow(clippy::disallowed_methods)] // the control side owns its clock
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod operations;

use control_core::ControlCommand;
use control_store::{GroupCommitter, RefuseReason, Store, StoreError, StoredEnvelope, Submitter};
use core::time::Duration;
use dp_core::ConversationId;
use dp_core::{DeviceId, MessageId};
use dp_io::ControlPort;
use dp_shard::{
    AudienceAnswer, ControlEvent, ControlRequest, ConversationAnswer, ConversationInfo, Envelope,
    Member, Origin, ShardId,
};
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::sync::{mpsc, watch};

/// How the delivery loop paces itself.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryConfig {
    /// Stored envelopes sent to one session and not yet acknowledged, at most.
    pub drain_window: usize,
    /// How often unacknowledged drains are sent again.
    pub retry_interval: Duration,
    /// How long a stored envelope lives before the purge deletes it undelivered.
    pub ttl: Duration,
    /// Requests taken from one shard per turn.
    pub receive_budget: usize,
    /// Store submissions outstanding at most.
    pub in_flight_max: usize,
    /// Sequence numbers reserved per conversation lookup (at most
    /// [`control_store::SEQ_BLOCK_MAX`]): a shard numbers that many messages before it asks
    /// again; what it had not used when it forgets the conversation is skipped.
    pub seq_block: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            drain_window: 64,
            retry_interval: Duration::from_secs(2),
            ttl: Duration::from_secs(30 * 24 * 3600),
            receive_budget: 1024,
            in_flight_max: 16_384,
            seq_block: 1024,
        }
    }
}

/// The most time between two turns when nothing wakes the loop.
const IDLE_TURN: Duration = Duration::from_millis(100);
/// The most expired envelopes one purge deletes.
const PURGE_BATCH: usize = 10_000;
/// How often expired envelopes are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// What control knows of one device.
#[derive(Default)]
struct Device {
    /// Its live session: the shard and the session number from `SessionOpened`.
    online: Option<(ShardId, u64)>,
    /// `Store`s taken for it since that `SessionOpened`.
    stores: u64,
    /// Stores submitted and not yet completed.
    committing: u32,
    /// Stored envelopes sent to the session and not yet acknowledged.
    window: HashSet<MessageId>,
}

/// A submitted store.
struct Pending {
    origin: Origin,
    message: MessageId,
    recipient: DeviceId,
}

/// The delivery loop's state.
struct Delivery {
    port: ControlPort,
    store: Store,
    control: std::sync::Arc<control_core::Control>,
    submitter: Submitter,
    config: DeliveryConfig,
    devices: HashMap<DeviceId, Device>,
    tokens: HashMap<u64, Pending>,
    next_token: u64,
    /// Requests taken but not yet submitted (the committer was full), in order.
    held: VecDeque<Box<Envelope>>,
    /// Devices whose drain needs a look.
    dirty: Vec<DeviceId>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Serves `port` until `stop` turns true and everything the shards sent has been taken and
/// committed. `commands` carries what the API changed (devices whose sessions must end,
/// conversations whose membership changed); `control` answers the sessions' operations and
/// the shards' conversation lookups.
pub async fn run(
    port: ControlPort,
    store: Store,
    control: std::sync::Arc<control_core::Control>,
    committer: &GroupCommitter,
    config: DeliveryConfig,
    mut stop: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<ControlCommand>,
) {
    let submitter = committer.submitter(config.in_flight_max, Some(port.waker()));
    let mut delivery = Delivery {
        port,
        store,
        control,
        submitter,
        config,
        devices: HashMap::new(),
        tokens: HashMap::new(),
        next_token: 0,
        held: VecDeque::new(),
        dirty: Vec::new(),
    };
    let mut last_retry = tokio::time::Instant::now();
    let mut last_purge = tokio::time::Instant::now();
    loop {
        let stopping = *stop.borrow();
        let took = delivery.turn().await;
        if last_retry.elapsed() >= delivery.config.retry_interval {
            last_retry = tokio::time::Instant::now();
            delivery.retry();
        }
        if last_purge.elapsed() >= PURGE_INTERVAL {
            last_purge = tokio::time::Instant::now();
            if let Err(error) = delivery.store.purge_expired(unix_ms(), PURGE_BATCH).await {
                eprintln!("control: purging expired envelopes failed: {error}");
            }
        }
        delivery.port.flush();
        if stopping && !took && delivery.idle() {
            return;
        }
        if took {
            continue;
        }
        let command = tokio::select! {
            () = delivery.port.ready() => None,
            () = tokio::time::sleep(IDLE_TURN) => None,
            _ = stop.changed() => None,
            Some(command) = commands.recv() => Some(command),
        };
        match command {
            Some(ControlCommand::RevokeDevice(device)) => delivery.revoke(device),
            Some(ControlCommand::ConversationChanged(conversation)) => {
                delivery.conversation_changed(conversation);
            }
            Some(ControlCommand::AudienceChanged(user)) => delivery.audience_changed(user).await,
            None => {}
        }
    }
}

impl Delivery {
    /// One pass: submit what was held, take and handle requests, complete commits, drain.
    /// Returns whether any request was taken.
    async fn turn(&mut self) -> bool {
        self.submit_held();
        let mut requests = Vec::new();
        if self.held.is_empty() {
            for shard in 0..self.port.shard_count() {
                let id = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
                let budget = self.config.receive_budget;
                self.port
                    .receive(shard, budget, |request| requests.push((id, request)));
            }
        }
        let took = !requests.is_empty();
        for (from, request) in requests {
            self.handle(from, request).await;
        }
        self.complete();
        self.drain_dirty().await;
        took
    }

    fn idle(&self) -> bool {
        self.held.is_empty() && self.tokens.is_empty()
    }

    async fn handle(&mut self, from: ShardId, request: ControlRequest) {
        match request {
            ControlRequest::Store(envelope) => {
                // Answered to `envelope.origin`, which names the shard to tell.
                let device = self.devices.entry(envelope.recipient).or_default();
                device.stores += 1;
                device.committing += 1;
                self.held.push_back(envelope);
                self.submit_held();
            }
            ControlRequest::SessionOpened { device, session } => {
                let entry = self.devices.entry(device).or_default();
                entry.online = Some((from, session));
                entry.stores = 0;
                entry.window.clear();
                self.dirty.push(device);
            }
            ControlRequest::Operation(operation) => {
                let (status, body) = operations::handle(
                    &self.control,
                    &operation.peer,
                    operation.op,
                    &operation.body,
                )
                .await;
                let response = ControlEvent::Response {
                    origin: operation.origin,
                    request_id: operation.request_id,
                    status,
                    body,
                };
                self.port.send(operation.origin.shard, response);
            }
            ControlRequest::SessionClosed { device } => {
                if let Some(entry) = self.devices.get_mut(&device)
                    && entry.online.is_some_and(|(shard, _)| shard == from)
                {
                    entry.online = None;
                    entry.window.clear();
                }
                self.forget_if_unused(device);
            }
            ControlRequest::LookupConversation { conversation } => {
                let answer = match self
                    .control
                    .conversation_lookup(conversation, self.config.seq_block)
                    .await
                {
                    Ok(Some(found)) => {
                        let may_send = found.may_send;
                        let members = found
                            .devices
                            .into_iter()
                            .map(|device| Member { device, may_send })
                            .collect();
                        let info = ConversationInfo {
                            members,
                            seq: found.seq,
                        };
                        ConversationAnswer::Found(Box::new(info))
                    }
                    Ok(None) => ConversationAnswer::NotFound,
                    Err(error) => {
                        eprintln!("control: conversation lookup failed: {error}");
                        ConversationAnswer::Unavailable
                    }
                };
                let answer = ControlEvent::Conversation {
                    conversation,
                    answer,
                };
                self.port.send(from, answer);
            }
            ControlRequest::LookupAudience { device } => {
                let answer = match self.control.presence_audience(device).await {
                    Ok(Some(devices)) => AudienceAnswer::Found(devices),
                    Ok(None) => AudienceAnswer::NotFound,
                    Err(error) => {
                        eprintln!("control: audience lookup failed: {error}");
                        AudienceAnswer::Unavailable
                    }
                };
                self.port
                    .send(from, ControlEvent::Audience { device, answer });
            }
            ControlRequest::Acknowledged { device, messages } => {
                for chunk in messages.chunks(control_store::ACK_IDS_MAX) {
                    if let Err(error) = self.store.delete_acknowledged(device, chunk).await {
                        // They stay stored and are delivered again; the client deduplicates.
                        eprintln!("control: deleting acknowledged envelopes failed: {error}");
                    }
                }
                if let Some(entry) = self.devices.get_mut(&device) {
                    for message in &messages {
                        entry.window.remove(message);
                    }
                }
                self.dirty.push(device);
            }
        }
    }

    /// Submits held stores, in order, until the committer refuses one.
    fn submit_held(&mut self) {
        let expires_in = duration_ms(self.config.ttl);
        while let Some(mut envelope) = self.held.pop_front() {
            let token = self.next_token;
            let stored = control_store::Envelope {
                message: envelope.message,
                sender: envelope.sender,
                recipient: envelope.recipient,
                conversation: (envelope.conversation.0 != 0).then_some(envelope.conversation),
                conversation_seq: envelope.seq,
                sent_at_ms: envelope.sent_at_ms,
                expires_at_ms: envelope.sent_at_ms.saturating_add(expires_in),
                // Moved, not copied: a refusal hands it back.
                body: core::mem::take(&mut envelope.body),
            };
            match self.submitter.try_submit(token, stored) {
                Ok(()) => {
                    self.next_token += 1;
                    let pending = Pending {
                        origin: envelope.origin,
                        message: envelope.message,
                        recipient: envelope.recipient,
                    };
                    self.tokens.insert(token, pending);
                }
                Err(refused)
                    if matches!(
                        refused.reason,
                        RefuseReason::Invalid(_) | RefuseReason::Closed
                    ) =>
                {
                    // Not storable (the shard bounds bodies as the store does, so this is a
                    // misconfiguration) or the committer stopped: the sender hears Retry.
                    self.not_stored(envelope.origin, envelope.message, envelope.recipient);
                }
                Err(refused) => {
                    // Full (or in-flight bound): keep it first in line and stop taking more.
                    envelope.body = refused.envelope.body;
                    self.held.push_front(envelope);
                    return;
                }
            }
        }
    }

    /// Answers every store whose transaction has finished.
    fn complete(&mut self) {
        while let Some(completion) = self.submitter.poll_completion() {
            let Some(pending) = self.tokens.remove(&completion.token) else {
                continue;
            };
            match completion.result {
                Ok(()) => {
                    let event = ControlEvent::Stored {
                        origin: pending.origin,
                        message: pending.message,
                    };
                    self.port.send(pending.origin.shard, event);
                    if let Some(device) = self.devices.get_mut(&pending.recipient) {
                        device.committing = device.committing.saturating_sub(1);
                    }
                    self.dirty.push(pending.recipient);
                }
                Err(error) => {
                    if !matches!(error, StoreError::InboxFull { .. }) {
                        eprintln!("control: storing an envelope failed: {error}");
                    }
                    self.not_stored(pending.origin, pending.message, pending.recipient);
                }
            }
        }
    }

    fn not_stored(&mut self, origin: Origin, message: MessageId, recipient: DeviceId) {
        self.port
            .send(origin.shard, ControlEvent::NotStored { origin, message });
        if let Some(device) = self.devices.get_mut(&recipient) {
            device.committing = device.committing.saturating_sub(1);
        }
        self.dirty.push(recipient);
    }

    /// Sends each dirty online device the next stored envelopes its window has room for, or
    /// tells its shard it is drained.
    async fn drain_dirty(&mut self) {
        let mut dirty = core::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for device in dirty {
            self.drain(device).await;
            self.forget_if_unused(device);
        }
    }

    async fn drain(&mut self, device: DeviceId) {
        let Some(entry) = self.devices.get(&device) else {
            return;
        };
        let Some((shard, session)) = entry.online else {
            return;
        };
        if entry.window.len() >= self.config.drain_window {
            return;
        }
        // From the start each time: a window's worth covers what is in flight and the next
        // ones (PostgreSQL makes sequence numbers visible in commit order, so paging past the
        // last one seen could skip a late commit).
        let limit = self.config.drain_window.min(control_store::FETCH_LIMIT_MAX);
        let rows = match self.store.fetch_pending(device, 0, limit, unix_ms()).await {
            Ok(rows) => rows,
            Err(error) => {
                eprintln!("control: reading stored envelopes failed: {error}");
                self.dirty.push(device);
                return;
            }
        };
        let Some(entry) = self.devices.get_mut(&device) else {
            return;
        };
        if rows.is_empty() {
            if entry.committing == 0 {
                let stores = entry.stores;
                let drained = ControlEvent::Drained {
                    device,
                    session,
                    stores,
                };
                self.port.send(shard, drained);
            }
            return;
        }
        for StoredEnvelope { envelope, .. } in rows {
            if !entry.window.insert(envelope.message) {
                continue;
            }
            let conversation = envelope.conversation.unwrap_or(ConversationId(0));
            let envelope = Box::new(
                Envelope::from_storage(
                    envelope.message,
                    envelope.sender,
                    envelope.recipient,
                    envelope.sent_at_ms,
                    envelope.body,
                )
                .in_conversation(conversation, envelope.conversation_seq),
            );
            self.port
                .send(shard, ControlEvent::Deliver { envelope, session });
        }
    }

    /// Sends every online device's window again.
    fn retry(&mut self) {
        for (id, device) in &mut self.devices {
            if device.online.is_some() {
                device.window.clear();
                self.dirty.push(*id);
            }
        }
    }

    /// Every shard forgets what it cached of the conversation (only its home has any).
    fn conversation_changed(&mut self, conversation: ConversationId) {
        for shard in 0..self.port.shard_count() {
            let shard = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
            self.port
                .send(shard, ControlEvent::ConversationChanged { conversation });
        }
    }

    /// Every shard forgets the presence audiences of the user's devices and its friends'
    /// (each device's audience is cached on its home shard).
    async fn audience_changed(&mut self, user: control_core::UserId) {
        let devices = match self.control.audience_watchers(user).await {
            Ok(devices) => devices,
            Err(error) => {
                // The shards' cache expiry bounds how long the old audience hears presence.
                eprintln!("control: audience change lookup failed: {error}");
                return;
            }
        };
        for shard in 0..self.port.shard_count() {
            let shard = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
            let devices = devices.clone();
            self.port
                .send(shard, ControlEvent::AudienceChanged { devices });
        }
    }

    fn revoke(&mut self, device: DeviceId) {
        for shard in 0..self.port.shard_count() {
            let shard = ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
            self.port.send(shard, ControlEvent::Revoke { device });
        }
    }

    /// Drops what control keeps of a device that is offline with nothing being stored.
    fn forget_if_unused(&mut self, device: DeviceId) {
        if self
            .devices
            .get(&device)
            .is_some_and(|d| d.online.is_none() && d.committing == 0)
        {
            self.devices.remove(&device);
        }
    }
}
