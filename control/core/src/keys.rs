//! The end-to-end key directory's rules (`docs/design/0014-end-to-end-encryption.md`): a device
//! publishes its own keys only; keys are claimed only for devices the caller may message — its
//! own account's, or an accepted friend's, the rule of [`Control::user_devices`]. Devices the
//! caller may not see are absent from the answer, exactly like unknown ones, so a claim cannot
//! probe which device ids exist.

use crate::{Caller, Control, ControlError};
use control_store::{CLAIM_DEVICES_MAX, ClaimedKeys, Entity, Invalid, KeyUpload, StoreError};
use control_store::{ONE_TIME_KEYS_PER_UPLOAD_MAX, UserId};
use dp_core::DeviceId;
use std::collections::BTreeMap;

impl Control {
    /// Publishes the calling device's identity keys, fallback key and up to
    /// [`ONE_TIME_KEYS_PER_UPLOAD_MAX`] one-time keys (appended to its pool up to
    /// [`control_store::ONE_TIME_KEYS_STORED_MAX`]). Returns how many one-time keys the pool
    /// holds now. Nothing cryptographic is checked: the keys are the client's business, and
    /// a claiming client verifies the signatures.
    pub async fn publish_keys(
        &self,
        caller: &Caller,
        upload: &KeyUpload,
    ) -> Result<u64, ControlError> {
        if upload.one_time.len() > ONE_TIME_KEYS_PER_UPLOAD_MAX {
            return Err(ControlError::InvalidInput(
                "at most 50 one-time keys in one upload",
            ));
        }
        match self
            .store
            .publish_keys(caller.device, upload, self.now_ms())
            .await
        {
            Ok(count) => Ok(count),
            Err(StoreError::Invalid(Invalid::Key)) => Err(ControlError::InvalidInput(
                "a key, key id or signature is not unpadded base64 of a bounded length",
            )),
            // Revoked between the token check and here.
            Err(StoreError::NotFound(Entity::Device)) => Err(ControlError::Unauthenticated),
            Err(other) => Err(other.into()),
        }
    }

    /// Claims the keys of up to [`CLAIM_DEVICES_MAX`] devices: for each live device of the
    /// caller's account or of an accepted friend that has published keys, its identity keys
    /// and one one-time key, consumed atomically (or its fallback key when none is left).
    /// Every other device is silently absent.
    pub async fn claim_keys(
        &self,
        caller: &Caller,
        devices: &[DeviceId],
    ) -> Result<Vec<ClaimedKeys>, ControlError> {
        if devices.len() > CLAIM_DEVICES_MAX {
            return Err(ControlError::InvalidInput(
                "at most 64 devices in one claim",
            ));
        }
        let mut wanted = devices.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        // Visibility per owning account, asked once per claim (bounded by the device list).
        let mut may_see: BTreeMap<UserId, bool> = BTreeMap::new();
        let mut allowed = Vec::with_capacity(wanted.len());
        for id in wanted {
            let Some(device) = self.store.device(id).await? else {
                continue;
            };
            if device.revoked_at_ms.is_some() {
                continue;
            }
            let visible = match may_see.get(&device.user) {
                Some(v) => *v,
                None => {
                    let v = self.may_see_devices_of(caller, device.user).await?;
                    may_see.insert(device.user, v);
                    v
                }
            };
            if visible {
                allowed.push(id);
            }
        }
        Ok(self.store.claim_keys(&allowed).await?)
    }
}
