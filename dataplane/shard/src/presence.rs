//! Presence to friends (docs/design/0016).
//!
//! A `PresenceSet` from a device homed here goes, best effort, to its audience: the online
//! devices of the account's friends and the account's own other devices. The audience comes
//! from control ([`ControlRequest::LookupAudience`]) into a bounded cache on the device's home
//! shard, forgotten when control reports [`crate::ControlEvent::AudienceChanged`] and trusted
//! no longer than [`AUDIENCE_CACHE_TTL`]. The home shard writes `Presence` to the audience
//! devices homed on it and sends one [`ShardMessage::Presence`] per other shard listing those
//! homed there. Nothing is stored or retried: a full session queue or shard link drops the
//! update and counts it ([`crate::ShardStats::presence_dropped`]).
//!
//! When a device that announced itself goes offline, its cached audience hears `Offline` (not
//! looked up when nothing is cached: an offline notice is not worth a store query).

use crate::{ControlRequest, Shard, ShardEvent, ShardId, ShardMessage, home_shard};
use core::time::Duration;
use dp_core::{DeviceId, Instant, Rng};
use dp_proto::{Frame, Presence, PresenceState};
use std::collections::BTreeMap;

/// Devices whose audience one shard keeps cached; past it the least recently used is
/// forgotten.
pub const AUDIENCES_CACHED_MAX: usize = 4096;
/// Audience lookups one shard may have open with control at once; an update that would need
/// another is dropped.
pub const AUDIENCE_LOOKUPS_MAX: usize = 1024;
/// The most devices one audience may list; the rest are ignored.
pub const AUDIENCE_DEVICES_MAX: usize = 4096;
/// Audience devices one shard keeps cached over all its entries (16 MiB); past it the least
/// recently used entries are forgotten.
pub const CACHED_AUDIENCE_DEVICES_MAX: usize = 1 << 20;
/// How long a cached audience is trusted without news from control.
pub const AUDIENCE_CACHE_TTL: Duration = Duration::from_secs(30);

const _: () = assert!(AUDIENCE_DEVICES_MAX <= CACHED_AUDIENCE_DEVICES_MAX);

/// Control's answer to [`ControlRequest::LookupAudience`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudienceAnswer {
    /// The live devices of every friend of the device's account and the account's other
    /// devices.
    Found(Vec<DeviceId>),
    /// No such device (revoked or unknown).
    NotFound,
    /// Control could not tell now: the waiting update is dropped.
    Unavailable,
}

/// A presence update for the listed devices homed on the receiving shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceBatch {
    /// The device whose presence it is.
    pub device: DeviceId,
    /// Its presence.
    pub state: PresenceState,
    /// When it was last seen online (ms since the Unix epoch).
    pub last_seen_ms: u64,
    /// The audience devices homed on the receiving shard.
    pub devices: Vec<DeviceId>,
}

struct Cached {
    /// Sorted, no duplicates, without the device itself.
    devices: Vec<DeviceId>,
    fetched_at: Instant,
    used: u64,
}

struct Lookup {
    /// The newest update waiting for the answer: state and last-seen time.
    waiting: Option<(PresenceState, u64)>,
    /// The audience changed while the lookup was open: its answer may be stale.
    refetch: bool,
}

/// The audiences homed here: cache and open lookups.
#[derive(Default)]
pub(crate) struct Table {
    cached: BTreeMap<DeviceId, Cached>,
    devices_cached: usize,
    lookups: BTreeMap<DeviceId, Lookup>,
    tick: u64,
}

impl Table {
    fn forget(&mut self, device: DeviceId) {
        if let Some(entry) = self.cached.remove(&device) {
            self.devices_cached = self.devices_cached.saturating_sub(entry.devices.len());
        }
    }

    fn remember(&mut self, device: DeviceId, entry: Cached) {
        self.forget(device);
        while !self.cached.is_empty()
            && (self.cached.len() >= AUDIENCES_CACHED_MAX
                || self.devices_cached + entry.devices.len() > CACHED_AUDIENCE_DEVICES_MAX)
        {
            let Some(oldest) = self
                .cached
                .iter()
                .min_by_key(|(_, cached)| cached.used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.forget(oldest);
        }
        self.devices_cached += entry.devices.len();
        self.cached.insert(device, entry);
    }

    pub(crate) fn cached_len(&self) -> usize {
        self.cached.len()
    }
}

/// A `PresenceSet` from `device`'s session here.
pub(crate) fn set<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    device: DeviceId,
    state: PresenceState,
) {
    shard.stats.presence_in += 1;
    if let Some(online) = shard.online.get_mut(&device) {
        online.announced = state != PresenceState::Offline;
    }
    let last_seen_ms = shard.unix_ms(now);
    let table = &mut shard.presence;
    table.tick += 1;
    if let Some(entry) = table.cached.get_mut(&device) {
        if now < entry.fetched_at.saturating_add(AUDIENCE_CACHE_TTL) {
            entry.used = table.tick;
            let audience = core::mem::take(&mut entry.devices);
            fan_out(shard, device, state, last_seen_ms, &audience);
            if let Some(entry) = shard.presence.cached.get_mut(&device) {
                entry.devices = audience;
            }
            return;
        }
        table.forget(device);
    }
    let open = table.lookups.len();
    match table.lookups.get_mut(&device) {
        // A newer state replaces the waiting one.
        Some(lookup) => lookup.waiting = Some((state, last_seen_ms)),
        None if open < AUDIENCE_LOOKUPS_MAX => {
            table.lookups.insert(
                device,
                Lookup {
                    waiting: Some((state, last_seen_ms)),
                    refetch: false,
                },
            );
            ask(shard, device);
        }
        None => shard.stats.presence_dropped += 1,
    }
}

fn ask<R: Rng>(shard: &mut Shard<R>, device: DeviceId) {
    shard.stats.audience_lookups += 1;
    shard
        .events
        .push_back(ShardEvent::ToControl(ControlRequest::LookupAudience {
            device,
        }));
}

/// `device`'s session here ended after it announced itself: its cached audience hears
/// `Offline`, last seen at `last_seen_ms`.
pub(crate) fn went_offline<R: Rng>(shard: &mut Shard<R>, device: DeviceId, last_seen_ms: u64) {
    if let Some(lookup) = shard.presence.lookups.get_mut(&device) {
        lookup.waiting = Some((PresenceState::Offline, last_seen_ms));
        return;
    }
    let Some(entry) = shard.presence.cached.get_mut(&device) else {
        return;
    };
    let audience = core::mem::take(&mut entry.devices);
    fan_out(
        shard,
        device,
        PresenceState::Offline,
        last_seen_ms,
        &audience,
    );
    if let Some(entry) = shard.presence.cached.get_mut(&device) {
        entry.devices = audience;
    }
}

/// Writes the update to the audience devices homed here and sends one batch to each other
/// shard that homes some.
fn fan_out<R: Rng>(
    shard: &mut Shard<R>,
    device: DeviceId,
    state: PresenceState,
    last_seen_ms: u64,
    audience: &[DeviceId],
) {
    let (count, key, here) = (
        shard.config.shard_count,
        shard.config.routing_key,
        shard.config.shard,
    );
    let mut batches: BTreeMap<ShardId, Vec<DeviceId>> = BTreeMap::new();
    for &to in audience {
        let home = home_shard(to, count, key);
        if home == here {
            deliver(shard, device, state, last_seen_ms, to);
        } else {
            batches.entry(home).or_default().push(to);
        }
    }
    for (to, devices) in batches {
        shard.events.push_back(ShardEvent::ToShard {
            to,
            message: ShardMessage::Presence(Box::new(PresenceBatch {
                device,
                state,
                last_seen_ms,
                devices,
            })),
        });
    }
}

/// A batch from another shard: written to the listed devices online here.
pub(crate) fn from_shard<R: Rng>(shard: &mut Shard<R>, batch: &PresenceBatch) {
    for &to in &batch.devices {
        deliver(shard, batch.device, batch.state, batch.last_seen_ms, to);
    }
}

/// Writes `Presence` to `to`'s session if it has one here with room; a full queue drops it.
fn deliver<R: Rng>(
    shard: &mut Shard<R>,
    device: DeviceId,
    state: PresenceState,
    last_seen_ms: u64,
    to: DeviceId,
) {
    let Some(conn) = shard.online.get(&to).map(|online| online.conn) else {
        // Offline: nothing to tell, nothing kept.
        return;
    };
    let frame = Frame::Presence(Presence {
        device,
        state,
        last_seen_ms,
    });
    if shard.send_best_effort(conn, &frame) {
        shard.stats.presence_out += 1;
    } else {
        shard.stats.presence_dropped += 1;
    }
}

/// Control's answer to a lookup: the waiting update goes out.
pub(crate) fn answered<R: Rng>(
    shard: &mut Shard<R>,
    now: Instant,
    device: DeviceId,
    answer: AudienceAnswer,
) {
    let Some(mut lookup) = shard.presence.lookups.remove(&device) else {
        return;
    };
    if lookup.refetch {
        lookup.refetch = false;
        shard.presence.lookups.insert(device, lookup);
        ask(shard, device);
        return;
    }
    match answer {
        AudienceAnswer::Found(mut devices) => {
            devices.sort_unstable();
            devices.dedup();
            devices.retain(|&d| d != device);
            devices.truncate(AUDIENCE_DEVICES_MAX);
            let table = &mut shard.presence;
            let used = table.tick;
            table.remember(
                device,
                Cached {
                    devices,
                    fetched_at: now,
                    used,
                },
            );
            if let Some((state, last_seen_ms)) = lookup.waiting {
                went_cached(shard, device, state, last_seen_ms);
            }
        }
        AudienceAnswer::NotFound | AudienceAnswer::Unavailable => {
            if lookup.waiting.is_some() {
                shard.stats.presence_dropped += 1;
            }
        }
    }
}

fn went_cached<R: Rng>(
    shard: &mut Shard<R>,
    device: DeviceId,
    state: PresenceState,
    last_seen_ms: u64,
) {
    let Some(entry) = shard.presence.cached.get_mut(&device) else {
        return;
    };
    let audience = core::mem::take(&mut entry.devices);
    fan_out(shard, device, state, last_seen_ms, &audience);
    if let Some(entry) = shard.presence.cached.get_mut(&device) {
        entry.devices = audience;
    }
}

/// Control says these devices' audiences changed (a friendship began or ended, a device was
/// added or revoked; control lists the account's devices and its friends'): forget their
/// entries and every entry that lists one of them, and do not trust an answer to a question
/// asked before.
pub(crate) fn changed<R: Rng>(shard: &mut Shard<R>, devices: &[DeviceId]) {
    let mut listed = devices.to_vec();
    listed.sort_unstable();
    let affected: Vec<DeviceId> = shard
        .presence
        .cached
        .iter()
        .filter(|(id, entry)| {
            listed.binary_search(id).is_ok()
                || entry
                    .devices
                    .iter()
                    .any(|d| listed.binary_search(d).is_ok())
        })
        .map(|(id, _)| *id)
        .collect();
    for device in affected {
        shard.presence.forget(device);
    }
    for &device in devices {
        if let Some(lookup) = shard.presence.lookups.get_mut(&device) {
            lookup.refetch = true;
        }
    }
}

/// A device was revoked: forget its entry and every cached audience that lists it.
pub(crate) fn device_revoked<R: Rng>(shard: &mut Shard<R>, device: DeviceId) {
    changed(shard, &[device]);
}
