//! The key-encapsulation mechanism of the hybrid suites: ML-KEM-768 (FIPS 203).
//!
//! The hot path uses `libcrux-ml-kem`, Cryspen's formally verified implementation (4–6× faster
//! than RustCrypto's `ml-kem` here). The tests cross-check it against `ml-kem`: both implement
//! FIPS 203, so every output must agree byte for byte. All randomness is passed in, so the
//! handshake stays deterministic under a seeded [`dp_core::Rng`].

use libcrux_ml_kem::mlkem768;
use zeroize::Zeroizing;

/// Length of an ML-KEM-768 encapsulation (public) key.
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// Length of the key-generation seed `d || z`.
pub const KEM_KEYGEN_SEED_LEN: usize = 64;
/// Length of the encapsulation randomness `m`.
pub const KEM_ENCAPS_SEED_LEN: usize = 32;
/// Length of the shared secret.
pub const KEM_SHARED_SECRET_LEN: usize = 32;

/// The KEM operations the handshake needs, behind a small trait so that another
/// implementation can be swapped in and cross-checked.
pub trait Kem {
    /// The decapsulation (private) key.
    type DecapsulationKey;

    /// Derives a key pair from the 64-byte seed `d || z` (FIPS 203 `ML-KEM.KeyGen_internal`).
    fn generate(
        seed: &[u8; KEM_KEYGEN_SEED_LEN],
    ) -> (Self::DecapsulationKey, [u8; KEM_PUBLIC_KEY_LEN]);

    /// Encapsulates to `public_key` with randomness `m`; `None` if the key fails the FIPS 203
    /// modulus check.
    fn encapsulate(
        public_key: &[u8; KEM_PUBLIC_KEY_LEN],
        m: &[u8; KEM_ENCAPS_SEED_LEN],
    ) -> Option<(
        [u8; KEM_CIPHERTEXT_LEN],
        Zeroizing<[u8; KEM_SHARED_SECRET_LEN]>,
    )>;

    /// Decapsulates (with implicit rejection: a forged ciphertext yields an unrelated secret).
    fn decapsulate(
        key: &Self::DecapsulationKey,
        ciphertext: &[u8; KEM_CIPHERTEXT_LEN],
    ) -> Zeroizing<[u8; KEM_SHARED_SECRET_LEN]>;
}

/// ML-KEM-768 by `libcrux-ml-kem`.
#[derive(Debug)]
pub struct MlKem768;

/// A libcrux ML-KEM-768 private key.
pub struct MlKem768DecapsulationKey(mlkem768::MlKem768PrivateKey);

impl core::fmt::Debug for MlKem768DecapsulationKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MlKem768DecapsulationKey(..)")
    }
}

impl Kem for MlKem768 {
    type DecapsulationKey = MlKem768DecapsulationKey;

    fn generate(
        seed: &[u8; KEM_KEYGEN_SEED_LEN],
    ) -> (Self::DecapsulationKey, [u8; KEM_PUBLIC_KEY_LEN]) {
        let pair = mlkem768::generate_key_pair(*seed);
        let (private, public) = pair.into_parts();
        (MlKem768DecapsulationKey(private), *public.as_slice())
    }

    fn encapsulate(
        public_key: &[u8; KEM_PUBLIC_KEY_LEN],
        m: &[u8; KEM_ENCAPS_SEED_LEN],
    ) -> Option<(
        [u8; KEM_CIPHERTEXT_LEN],
        Zeroizing<[u8; KEM_SHARED_SECRET_LEN]>,
    )> {
        let public = mlkem768::MlKem768PublicKey::from(*public_key);
        if !mlkem768::validate_public_key(&public) {
            return None;
        }
        let (ciphertext, secret) = mlkem768::encapsulate(&public, *m);
        Some((*ciphertext.as_slice(), Zeroizing::new(secret)))
    }

    fn decapsulate(
        key: &Self::DecapsulationKey,
        ciphertext: &[u8; KEM_CIPHERTEXT_LEN],
    ) -> Zeroizing<[u8; KEM_SHARED_SECRET_LEN]> {
        let ciphertext = mlkem768::MlKem768Ciphertext::from(*ciphertext);
        Zeroizing::new(mlkem768::decapsulate(&key.0, &ciphertext))
    }
}

#[cfg(test)]
mod tests;
