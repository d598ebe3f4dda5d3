//! What goes inside an envelope body: every body the CLI sends is end-to-end encrypted
//! (`commucat_client::e2e`, design 0014), and every body it receives is opened here.
//!
//! ```text
//! envelope body        0x00 UTF-8 text in the clear (older clients; shown, marked unencrypted)
//!                      0x01 Olm (to one device)   -> inner plaintext below
//!                      0x03 Megolm (to a group)   -> inner plaintext below
//! inner plaintext      0x00 UTF-8 text
//!                      0x02 room key (Olm only): a sender's Megolm session for a group
//! ```
//!
//! The end-to-end state (Olm account, sessions, group sessions, group messages waiting for
//! their key) lives in the profile, encrypted (`e2e.pickle` under `e2e.key`); every change is
//! saved at once, under a lock so that two commands of one profile never lose each other's
//! ratchet steps ([`Profile::with_e2e`](super::profile::Profile::with_e2e)).

use super::profile::{Received, parse_device_id};
use super::session::Ctx;
use anyhow::{Result, anyhow, bail};
use commucat_client::DeviceId;
use commucat_client::e2e::group::{Decrypted, TAG_GROUP, TAG_ROOM_KEY};
use commucat_client::e2e::{
    BODY_VERSION, ClaimedKeys, E2e, ONE_TIME_KEYS_PER_PUBLISH_MAX, PublishKeys,
};
use std::collections::BTreeMap;

/// The tag of a body in the clear: UTF-8 text follows.
pub(crate) const TAG_PLAINTEXT: u8 = 0x00;
/// The tag of text inside a decrypted plaintext.
pub(crate) const INNER_TEXT: u8 = 0x00;
/// Below this many one-time keys on the server, `listen` publishes more.
pub(crate) const ONE_TIME_KEYS_LOW: u64 = 20;
/// Devices in one key claim (the server's bound).
const CLAIM_BATCH_MAX: usize = 64;

/// Publishes this device's identity, a fresh fallback key and `one_time` one-time keys;
/// returns the publication and how many one-time keys the server holds now.
pub(crate) fn publish(ctx: &Ctx, one_time: usize) -> Result<(PublishKeys, u64)> {
    let keys = ctx
        .profile
        .with_e2e(|e2e| Ok(e2e.keys_to_publish(one_time)))?;
    let answer = ctx.api(|api| api.publish_keys(&keys))?;
    Ok((keys, answer.one_time_keys))
}

/// Publishes keys (one fallback rotation), then tops the server's one-time keys up to
/// [`ONE_TIME_KEYS_PER_PUBLISH_MAX`] when fewer than [`ONE_TIME_KEYS_LOW`] are left, keeping
/// the fallback key just published.
pub(crate) fn top_up(ctx: &Ctx) -> Result<()> {
    let (mut keys, held) = publish(ctx, 0)?;
    if held < ONE_TIME_KEYS_LOW {
        let wanted = ONE_TIME_KEYS_PER_PUBLISH_MAX
            .saturating_sub(usize::try_from(held).unwrap_or(ONE_TIME_KEYS_PER_PUBLISH_MAX));
        keys.one_time_keys = ctx
            .profile
            .with_e2e(|e2e| Ok(e2e.one_time_keys_to_publish(wanted)))?;
        ctx.api(|api| api.publish_keys(&keys))?;
    }
    Ok(())
}

/// The inner plaintext of a text.
pub(crate) fn inner_text(text: &str) -> Vec<u8> {
    let mut inner = Vec::with_capacity(1 + text.len());
    inner.push(INNER_TEXT);
    inner.extend_from_slice(text.as_bytes());
    inner
}

/// Olm bodies per device, and the devices that could not be written to.
pub(crate) type Sealed = (Vec<(DeviceId, Vec<u8>)>, Vec<DeviceId>);

/// Claims keys for those of `devices` without an Olm session (consuming one one-time key
/// each); devices with no published keys are absent from the map.
pub(crate) fn claim(
    ctx: &Ctx,
    e2e: &E2e,
    devices: &[DeviceId],
) -> Result<BTreeMap<DeviceId, ClaimedKeys>> {
    let need: Vec<DeviceId> = devices
        .iter()
        .copied()
        .filter(|d| !e2e.has_session(*d))
        .collect();
    let mut claimed = BTreeMap::new();
    for batch in need.chunks(CLAIM_BATCH_MAX) {
        for keys in ctx.api(|api| api.claim_keys(batch))?.devices {
            if let Some(device) = keys.device()
                && batch.contains(&device)
            {
                claimed.insert(device, keys);
            }
        }
    }
    Ok(claimed)
}

/// Whether `device` can be written to: a session, or claimed keys.
pub(crate) fn reachable(
    e2e: &E2e,
    claimed: &BTreeMap<DeviceId, ClaimedKeys>,
    device: DeviceId,
) -> bool {
    e2e.has_session(device) || claimed.contains_key(&device)
}

/// Olm bodies of `inner` for each of `devices` (sessions started from `claimed` where there
/// is none). Returns the bodies and the devices that cannot be written to (no published
/// keys): they get nothing, never the plaintext.
pub(crate) fn seal_claimed(
    e2e: &mut E2e,
    devices: &[DeviceId],
    claimed: &BTreeMap<DeviceId, ClaimedKeys>,
    inner: &[u8],
) -> Result<Sealed> {
    let mut bodies = Vec::with_capacity(devices.len());
    let mut missing = Vec::new();
    for device in devices {
        if !reachable(e2e, claimed, *device) {
            missing.push(*device);
            continue;
        }
        let body = e2e
            .seal(*device, claimed.get(device), inner)
            .map_err(|e| anyhow!("cannot encrypt for device {}: {e}", hex::encode(device.0)))?;
        bodies.push((*device, body));
    }
    Ok((bodies, missing))
}

/// [`claim`] then [`seal_claimed`].
pub(crate) fn seal_each(
    ctx: &Ctx,
    e2e: &mut E2e,
    devices: &[DeviceId],
    inner: &[u8],
) -> Result<Sealed> {
    let claimed = claim(ctx, e2e, devices)?;
    seal_claimed(e2e, devices, &claimed, inner)
}

/// What to say about devices that have no published keys.
pub(crate) fn missing_keys(devices: &[DeviceId], whose: &str) -> String {
    let ids: Vec<String> = devices.iter().map(|d| hex::encode(d.0)).collect();
    format!(
        "not sent to {whose}'s device(s) {} : no end-to-end keys published, and messages are \
         never sent unencrypted; the device should run a current `commucat client listen` once",
        ids.join(", ")
    )
}

/// A received message ready to show: its envelope and its text, or why it cannot be read.
pub(crate) struct Opened {
    pub(crate) received: Received,
    pub(crate) text: Result<String>,
    pub(crate) encrypted: bool,
}

fn text_of(inner: &[u8]) -> Result<String> {
    match inner.split_first() {
        Some((&INNER_TEXT, text)) => std::str::from_utf8(text)
            .map(str::to_string)
            .map_err(|_| anyhow!("the text is not UTF-8")),
        Some((tag, _)) => bail!("content type {tag:#04x}, which this version cannot read"),
        None => bail!("empty content"),
    }
}

/// Opens a received body: the messages to show now (none for a room key or a group message
/// whose key has not come; several when a room key releases waiting group messages).
pub(crate) fn open(ctx: &Ctx, received: Received) -> Vec<Opened> {
    let body = hex::decode(&received.body).unwrap_or_default();
    let Some(from) = parse_device_id(&received.device) else {
        return vec![Opened {
            received,
            text: Err(anyhow!("malformed sender")),
            encrypted: false,
        }];
    };
    let one = |received: Received, text: Result<String>, encrypted: bool| {
        vec![Opened {
            received,
            text,
            encrypted,
        }]
    };
    match body.first() {
        Some(&TAG_PLAINTEXT) => {
            let text = std::str::from_utf8(&body[1..])
                .map(str::to_string)
                .map_err(|_| anyhow!("a plaintext message that is not UTF-8"));
            one(received, text, false)
        }
        Some(&BODY_VERSION) => {
            let opened = ctx.profile.with_e2e(|e2e| {
                let inner = e2e.open(from, &body).map_err(|e| anyhow!("{e}"))?;
                if inner.first() == Some(&TAG_ROOM_KEY) {
                    let released = e2e
                        .groups()
                        .receive_room_key(from, &inner)
                        .map_err(|e| anyhow!("{e}"))?;
                    return Ok(Err(released));
                }
                Ok(Ok(inner))
            });
            match opened {
                Ok(Ok(inner)) => one(received, text_of(&inner), true),
                Ok(Err(released)) => released
                    .into_iter()
                    .filter_map(|r| {
                        let received: Received = serde_json::from_str(&r.note).ok()?;
                        let text = r
                            .result
                            .map_err(|e| anyhow!("{e}"))
                            .and_then(|inner| text_of(&inner));
                        Some(Opened {
                            received,
                            text,
                            encrypted: true,
                        })
                    })
                    .collect(),
                Err(error) => one(received, Err(error), true),
            }
        }
        Some(&TAG_GROUP) => {
            let note = serde_json::to_string(&received).unwrap_or_default();
            let conversation = received.conversation;
            let opened = ctx.profile.with_e2e(|e2e| {
                e2e.groups()
                    .decrypt(from, conversation, &body, &note)
                    .map_err(|e| anyhow!("{e}"))
            });
            match opened {
                Ok(Decrypted::Plaintext(inner)) => one(received, text_of(&inner), true),
                Ok(Decrypted::Pending) => {
                    eprintln!(
                        "a message in group {conversation} waits for its key from the sender; \
                         it is shown when the key arrives"
                    );
                    Vec::new()
                }
                Err(error) => one(received, Err(error), true),
            }
        }
        Some(tag) => one(
            received,
            Err(anyhow!(
                "a message in format {tag:#04x}, which this version cannot read: update commucat"
            )),
            false,
        ),
        None => one(received, Err(anyhow!("an empty message body")), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_text_round_trips_and_unknown_content_is_refused() {
        assert_eq!(text_of(&inner_text("héllo")).unwrap(), "héllo");
        assert!(text_of(&[0x05, b'x']).is_err());
        assert!(text_of(&[]).is_err());
        assert!(text_of(&[INNER_TEXT, 0xff]).is_err());
    }
}
