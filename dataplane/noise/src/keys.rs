//! Static keys, device ids and the `PeerAuthenticated` capability.

use blake2::{Blake2s256, Digest};
use dp_core::{DeviceId, Rng};
use zeroize::Zeroizing;

/// Length of an X25519 key.
pub const KEY_LEN: usize = 32;

/// A Noise static key pair (X25519). The private half is wiped on drop and never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
}

impl core::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &hex_short(&self.public))
            .finish()
    }
}

impl StaticKeypair {
    /// The key pair whose private key is `private` (clamped by X25519 when used).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = x25519_public(&private);
        Self {
            private: Zeroizing::new(private),
            public,
        }
    }

    /// A fresh key pair from `rng.private_fill`.
    pub fn generate(rng: &mut impl Rng) -> Self {
        let mut private = [0u8; KEY_LEN];
        rng.private_fill(&mut private);
        Self::from_private(private)
    }

    /// The public key.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The private key, for writing to a key file.
    pub fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

/// The X25519 public key of `private`.
pub fn x25519_public(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

/// The device id of a static public key: the first 16 bytes of BLAKE2s-256(key).
pub fn device_id(static_public: &[u8; KEY_LEN]) -> DeviceId {
    let digest = Blake2s256::digest(static_public);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    DeviceId(id)
}

/// Proof that a peer holds the private half of `static_key`: the Noise handshake with it
/// completed. Only this crate creates one (its constructor is private), so code that takes a
/// `PeerAuthenticated` cannot be handed an identity that came from a payload claim
/// (DESIGN.md §6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthenticated {
    static_key: [u8; KEY_LEN],
    device: DeviceId,
}

impl PeerAuthenticated {
    pub(crate) fn new(static_key: [u8; KEY_LEN]) -> Self {
        Self {
            device: device_id(&static_key),
            static_key,
        }
    }

    /// The peer's authenticated static public key.
    pub fn static_key(&self) -> &[u8; KEY_LEN] {
        &self.static_key
    }

    /// The peer's device id, derived from its static key.
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

fn hex_short(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 §6.1, Alice.
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let pair = StaticKeypair::from_private(private);
        assert_eq!(
            hex::encode(pair.public()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert!(!format!("{pair:?}").contains("77076d0a"));
    }

    #[test]
    fn device_id_is_truncated_blake2s() {
        let id = device_id(&[0u8; 32]);
        let full = Blake2s256::digest([0u8; 32]);
        assert_eq!(&id.0[..], &full[..16]);
        assert_ne!(device_id(&[1u8; 32]), id);
    }
}
