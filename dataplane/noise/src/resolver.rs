//! The snow crypto resolver: ring's AEADs (the `ring-accelerated` path), snow's own X25519 and
//! BLAKE2s, and an RNG that hands out exactly the ephemeral key the machine drew from the
//! injected [`dp_core::Rng`], so that snow never reads OS randomness.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

/// Resolves snow's primitives; see the module doc.
pub(crate) struct Resolver {
    ephemeral: Zeroizing<[u8; 32]>,
}

impl Resolver {
    pub(crate) fn new(ephemeral: [u8; 32]) -> Self {
        Self {
            ephemeral: Zeroizing::new(ephemeral),
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
        DefaultResolver.resolve_dh(choice)
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
