//! The end-to-end key directory (`docs/design/0014-end-to-end-encryption.md`): each device
//! publishes its Olm identity keys, a fallback key and a bounded pool of one-time keys; a
//! claim hands out one one-time key per device and deletes it in the same statement, so two
//! claims never get the same key.
//!
//! Keys are public and opaque here: the store keeps the unpadded base64 text the client sent
//! and only checks its shape and length. Who may publish or claim is `control-core`'s
//! business.

use super::{
    PgConn, PgTx, SqliteTx, Tx, Val, bytes, complete_now, exists, int, pg_store, query_one,
    sqlite_store,
};
use crate::error::{Entity, StoreError};
use crate::{Invalid, Store};
use dp_core::DeviceId;

/// One-time keys kept per device at most: uploads past it are dropped (the client learns the
/// stored count and uploads more later). Olm accounts keep the private halves of at most 100;
/// half of that on the server leaves room for keys claimed but not yet used.
pub const ONE_TIME_KEYS_STORED_MAX: u64 = 50;
/// One-time keys in one upload at most.
pub const ONE_TIME_KEYS_PER_UPLOAD_MAX: usize = 50;
/// Devices in one claim at most.
pub const CLAIM_DEVICES_MAX: usize = 64;
/// The longest public key, as base64 text (a Curve25519 or Ed25519 key is 43 characters).
pub const KEY_TEXT_LEN_MAX: usize = 64;
/// The longest key id, as base64 text (Olm's are 11 characters).
pub const KEY_ID_TEXT_LEN_MAX: usize = 32;
/// The longest signature, as base64 text (an Ed25519 signature is 86 characters).
pub const SIGNATURE_TEXT_LEN_MAX: usize = 128;
/// How often one claim retries taking a one-time key that a concurrent claim took first
/// (PostgreSQL, READ COMMITTED) before it hands out the fallback key instead.
const CLAIM_ATTEMPTS_MAX: usize = 8;

const _: () = {
    assert!(ONE_TIME_KEYS_PER_UPLOAD_MAX as u64 <= ONE_TIME_KEYS_STORED_MAX);
    assert!(KEY_ID_TEXT_LEN_MAX <= KEY_TEXT_LEN_MAX);
    assert!(KEY_TEXT_LEN_MAX <= SIGNATURE_TEXT_LEN_MAX);
};

/// A Curve25519 key signed by the device's Ed25519 identity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedKey {
    /// The client's id for the key (unique per device).
    pub key_id: String,
    /// The public key, unpadded base64.
    pub key: String,
    /// The Ed25519 signature over the key, unpadded base64.
    pub signature: String,
}

/// What a device publishes: its identity keys, its fallback key and new one-time keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUpload {
    /// The Curve25519 identity key, unpadded base64.
    pub curve25519: String,
    /// The Ed25519 identity (signing) key, unpadded base64.
    pub ed25519: String,
    /// The fallback key, handed out when the one-time keys run out.
    pub fallback: SignedKey,
    /// One-time keys to add to the pool (at most [`ONE_TIME_KEYS_PER_UPLOAD_MAX`]).
    pub one_time: Vec<SignedKey>,
}

/// One device's keys as a claim returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedKeys {
    /// The device.
    pub device: DeviceId,
    /// Its Curve25519 identity key.
    pub curve25519: String,
    /// Its Ed25519 identity key.
    pub ed25519: String,
    /// A one-time key, now deleted from the pool, or the fallback key when the pool is empty.
    pub one_time: SignedKey,
    /// Whether `one_time` is the fallback key (it stays published and may be handed out again).
    pub fallback: bool,
}

fn check_text(text: &str, len_max: usize) -> Result<(), StoreError> {
    let ok = !text.is_empty()
        && text.len() <= len_max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok { Ok(()) } else { Err(Invalid::Key.into()) }
}

fn check_signed(key: &SignedKey) -> Result<(), StoreError> {
    check_text(&key.key_id, KEY_ID_TEXT_LEN_MAX)?;
    check_text(&key.key, KEY_TEXT_LEN_MAX)?;
    check_text(&key.signature, SIGNATURE_TEXT_LEN_MAX)
}

fn check_upload(upload: &KeyUpload) -> Result<(), StoreError> {
    if upload.one_time.len() > ONE_TIME_KEYS_PER_UPLOAD_MAX {
        return Err(Invalid::BatchTooLarge.into());
    }
    check_text(&upload.curve25519, KEY_TEXT_LEN_MAX)?;
    check_text(&upload.ed25519, KEY_TEXT_LEN_MAX)?;
    check_signed(&upload.fallback)?;
    upload.one_time.iter().try_for_each(check_signed)
}

fn text(value: &str) -> Val {
    Val::Text(value.to_string())
}

async fn one_time_count<T: Tx>(tx: &mut T, device: DeviceId) -> Result<u64, StoreError> {
    let row = query_one(
        tx,
        "SELECT COUNT(*) FROM one_time_keys WHERE device_id = $1",
        &[bytes(&device.0)],
    )
    .await?;
    crate::convert::to_u64(row.map(|r| r[0].int()).transpose()?.unwrap_or(0))
}

async fn publish<T: Tx>(
    tx: &mut T,
    device: DeviceId,
    upload: KeyUpload,
    now_ms: u64,
) -> Result<u64, StoreError> {
    if !exists(
        tx,
        "SELECT 1 FROM devices WHERE id = $1 AND revoked_at_ms IS NULL",
        &[bytes(&device.0)],
    )
    .await?
    {
        return Err(StoreError::NotFound(Entity::Device));
    }
    let row = [
        bytes(&device.0),
        text(&upload.curve25519),
        text(&upload.ed25519),
        text(&upload.fallback.key_id),
        text(&upload.fallback.key),
        text(&upload.fallback.signature),
        int(now_ms),
    ];
    let inserted = tx
        .execute(
            "INSERT INTO device_keys (device_id, curve25519, ed25519, fallback_key_id,
                 fallback_key, fallback_signature, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &row,
        )
        .await?;
    if inserted == 0 {
        // The row exists: this UPDATE locks it (PostgreSQL) so that concurrent uploads of one
        // device run one after the other, and returns the identity it had.
        let old = query_one(
            tx,
            "UPDATE device_keys SET updated_at_ms = $2 WHERE device_id = $1
             RETURNING curve25519, ed25519",
            &[bytes(&device.0), int(now_ms)],
        )
        .await?
        .ok_or(StoreError::NotFound(Entity::Device))?;
        if old[0].text()? != upload.curve25519 || old[1].text()? != upload.ed25519 {
            // A new identity (the client lost its account): the old one-time keys belong to
            // an identity that no longer exists and could never open a session.
            tx.execute(
                "DELETE FROM one_time_keys WHERE device_id = $1",
                &[bytes(&device.0)],
            )
            .await?;
        }
        tx.execute(
            "UPDATE device_keys SET curve25519 = $2, ed25519 = $3, fallback_key_id = $4,
                 fallback_key = $5, fallback_signature = $6, updated_at_ms = $7
             WHERE device_id = $1",
            &row,
        )
        .await?;
    }
    let mut count = one_time_count(tx, device).await?;
    for key in &upload.one_time {
        if count >= ONE_TIME_KEYS_STORED_MAX {
            break;
        }
        count += tx
            .execute(
                "INSERT INTO one_time_keys (device_id, key_id, key, signature)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    bytes(&device.0),
                    text(&key.key_id),
                    text(&key.key),
                    text(&key.signature),
                ],
            )
            .await?;
    }
    Ok(count)
}

async fn claim_one<T: Tx>(tx: &mut T, device: DeviceId) -> Result<Option<ClaimedKeys>, StoreError> {
    let Some(identity) = query_one(
        tx,
        "SELECT k.curve25519, k.ed25519, k.fallback_key_id, k.fallback_key, k.fallback_signature
         FROM device_keys k JOIN devices d ON d.id = k.device_id
         WHERE k.device_id = $1 AND d.revoked_at_ms IS NULL",
        &[bytes(&device.0)],
    )
    .await?
    else {
        return Ok(None);
    };
    let mut claimed = None;
    for _ in 0..CLAIM_ATTEMPTS_MAX {
        // One statement finds and deletes the oldest key: of two concurrent claims that pick
        // the same row, one deletes it and the other deletes nothing and tries again.
        if let Some(row) = query_one(
            tx,
            "DELETE FROM one_time_keys WHERE id =
                 (SELECT MIN(id) FROM one_time_keys WHERE device_id = $1)
             RETURNING key_id, key, signature",
            &[bytes(&device.0)],
        )
        .await?
        {
            claimed = Some(SignedKey {
                key_id: row[0].text()?,
                key: row[1].text()?,
                signature: row[2].text()?,
            });
            break;
        }
        if one_time_count(tx, device).await? == 0 {
            break;
        }
    }
    let fallback = claimed.is_none();
    let one_time = match claimed {
        Some(key) => key,
        None => SignedKey {
            key_id: identity[2].text()?,
            key: identity[3].text()?,
            signature: identity[4].text()?,
        },
    };
    Ok(Some(ClaimedKeys {
        device,
        curve25519: identity[0].text()?,
        ed25519: identity[1].text()?,
        one_time,
        fallback,
    }))
}

async fn claim<T: Tx>(tx: &mut T, devices: Vec<DeviceId>) -> Result<Vec<ClaimedKeys>, StoreError> {
    let mut out = Vec::with_capacity(devices.len());
    for device in devices {
        if let Some(keys) = claim_one(tx, device).await? {
            out.push(keys);
        }
    }
    Ok(out)
}

impl Store {
    /// Publishes the keys of the live device `device`: sets its identity and fallback keys and
    /// adds one-time keys to its pool until it holds [`ONE_TIME_KEYS_STORED_MAX`] (the rest are
    /// dropped; a key id already in the pool is skipped). A changed identity empties the pool
    /// first. Returns how many one-time keys the pool holds afterwards. `NotFound(Device)` for
    /// an unknown or revoked device; `Invalid(Key)` for a key that is not unpadded base64 of
    /// its bounded length.
    pub async fn publish_keys(
        &self,
        device: DeviceId,
        upload: &KeyUpload,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        check_upload(upload)?;
        let upload = upload.clone();
        in_tx!(self, |tx| publish(tx, device, upload, now_ms))
    }

    /// Claims keys of up to [`CLAIM_DEVICES_MAX`] devices in one transaction: for each live
    /// device with published keys, its identity keys and its oldest one-time key, deleted in
    /// the same statement (or its fallback key when none is left). Devices without keys, unknown
    /// or revoked ones are absent from the answer; duplicates are claimed once.
    pub async fn claim_keys(&self, devices: &[DeviceId]) -> Result<Vec<ClaimedKeys>, StoreError> {
        if devices.len() > CLAIM_DEVICES_MAX {
            return Err(Invalid::BatchTooLarge.into());
        }
        let mut devices = devices.to_vec();
        devices.sort_unstable();
        devices.dedup();
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        in_tx!(self, |tx| claim(tx, devices))
    }

    /// How many one-time keys `device` has left on the server.
    pub async fn one_time_key_count(&self, device: DeviceId) -> Result<u64, StoreError> {
        in_tx!(self, read, |tx| one_time_count(tx, device))
    }
}
