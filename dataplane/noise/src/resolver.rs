//! The snow crypto resolver: ring's AEADs (the `ring-accelerated` path), snow's BLAKE2s, our
//! own X25519, and an RNG that hands out exactly the ephemeral key the machine drew from the
//! injected [`dp_core::Rng`], so that snow never reads OS randomness.
//!
//! Our X25519 differs from snow's in two ways: it takes the static key's public half from the
//! key pair instead of recomputing it for every handshake (one scalar multiplication saved per
//! handshake), and it refuses a Diffie-Hellman result of all zeros, which only a low-order
//! public key produces (as WireGuard does).

use crate::keys::StaticKeypair;
use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

/// Resolves snow's primitives; see the module doc.
pub(crate) struct Resolver {
    ephemeral: Zeroizing<[u8; 32]>,
    local: StaticKeypair,
}

impl Resolver {
    pub(crate) fn new(ephemeral: [u8; 32], local: &StaticKeypair) -> Self {
        Self {
            ephemeral: Zeroizing::new(ephemeral),
            local: local.clone(),
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(EphemeralOnce {
            bytes: Some(self.ephemeral.clone()),
        }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                private: Zeroizing::new([0; 32]),
                public: [0; 32],
                known: self.local.clone(),
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// Yields the 32 prepared bytes once (snow draws them to make the ephemeral key), then fails:
/// a second draw would mean snow wants randomness we did not plan for.
struct EphemeralOnce {
    bytes: Option<Zeroizing<[u8; 32]>>,
}

impl Random for EphemeralOnce {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.bytes.take() {
            Some(bytes) if dest.len() == bytes.len() => {
                dest.copy_from_slice(&bytes[..]);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// X25519 for snow; see the module doc.
struct X25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    /// The local static key pair, whose public half need not be recomputed.
    known: StaticKeypair,
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, private: &[u8]) {
        let mut bytes = [0u8; 32];
        let len = private.len().min(32);
        bytes[..len].copy_from_slice(&private[..len]);
        self.public = if bytes == *self.known.private() {
            *self.known.public()
        } else {
            MontgomeryPoint::mul_base_clamped(bytes).to_bytes()
        };
        *self.private = bytes;
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = [0u8; 32];
        rng.try_fill_bytes(&mut bytes)?;
        *self.private = bytes;
        self.public = MontgomeryPoint::mul_base_clamped(bytes).to_bytes();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, public: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let point: [u8; 32] = public
            .get(..32)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = MontgomeryPoint(point).mul_clamped(*self.private).to_bytes();
        if shared == [0u8; 32] {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_order_public_key_is_refused() {
        let local = StaticKeypair::from_private([3; 32]);
        let mut dh = X25519 {
            private: Zeroizing::new([0; 32]),
            public: [0; 32],
            known: local.clone(),
        };
        dh.set(local.private());
        assert_eq!(dh.pubkey(), local.public());
        let mut out = [0u8; 32];
        // The identity point (0) and the order-2 point (1) give an all-zero result.
        assert!(dh.dh(&[0u8; 32], &mut out).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(dh.dh(&one, &mut out).is_err());
        // A real public key works and matches the other side.
        let other = StaticKeypair::from_private([4; 32]);
        dh.dh(other.public(), &mut out).unwrap();
        let mut theirs = X25519 {
            private: Zeroizing::new([0; 32]),
            public: [0; 32],
            known: other.clone(),
        };
        theirs.set(other.private());
        let mut back = [0u8; 32];
        theirs.dh(local.public(), &mut back).unwrap();
        assert_eq!(out, back);
        // A private key other than the known one derives its own public key.
        dh.set(&[5u8; 32]);
        assert_eq!(dh.pubkey(), StaticKeypair::from_private([5; 32]).public());
    }
}
