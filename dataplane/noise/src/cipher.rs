//! One direction's transport key: a Noise `CipherState` with explicit nonces, on ring's AEADs.
//!
//! Nonces follow the Noise spec §12: four zero bytes then the 64-bit counter, little-endian for
//! ChaChaPoly and big-endian for AESGCM. `rekey` is Noise's `REKEY(k)`: the first 32 bytes of
//! `ENCRYPT(k, 2^64 - 1, "", 32 zero bytes)`.

use crate::suite::Cipher;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

/// Length of a transport key.
pub(crate) const CIPHER_KEY_LEN: usize = 32;

pub(crate) struct CipherKey {
    key: LessSafeKey,
    cipher: Cipher,
}

impl CipherKey {
    pub(crate) fn new(cipher: Cipher, raw: &[u8; CIPHER_KEY_LEN]) -> Self {
        let algorithm = match cipher {
            Cipher::ChaChaPoly => &CHACHA20_POLY1305,
            Cipher::AesGcm => &AES_256_GCM,
        };
        // Both algorithms take 32-byte keys, so construction cannot fail.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(algorithm, raw).expect("32-byte key for a 32-byte AEAD");
        Self {
            key: LessSafeKey::new(unbound),
            cipher,
        }
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        match self.cipher {
            Cipher::ChaChaPoly => nonce[4..].copy_from_slice(&counter.to_le_bytes()),
            Cipher::AesGcm => nonce[4..].copy_from_slice(&counter.to_be_bytes()),
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal_in_place(&self, counter: u64, ad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        // ring fails only for inputs longer than the AEAD's limit (256 GiB), which our
        // record and datagram bounds rule out.
        #[allow(clippy::expect_used)]
        let tag: Tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(counter), Aad::from(ad), buf)
            .expect("input within the AEAD length limit");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `buf` (ciphertext followed by the 16-byte tag) in place; returns the plaintext
    /// length.
    pub(crate) fn open_in_place(&self, counter: u64, ad: &[u8], buf: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(self.nonce(counter), Aad::from(ad), buf)
            .ok()
            .map(|plaintext| plaintext.len())
    }

    /// Noise `REKEY(k)`.
    pub(crate) fn rekey(&self) -> Self {
        let mut next = Zeroizing::new([0u8; CIPHER_KEY_LEN]);
        let _tag = self.seal_in_place(u64::MAX, &[], &mut next[..]);
        Self::new(self.cipher, &next)
    }

    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> [u8; 16] {
        let mut zeros = [0u8; 16];
        self.seal_in_place(0, &[], &mut zeros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_nonce_matches_rfc8439_layout() {
        // RFC 8439 §2.8.2 uses nonce 07000000 4041424344454647; with our layout that is the
        // counter 0x4746454443424140 in little endian only if the first four bytes were 07.
        // Instead check the round trip and that both ciphers' nonces differ in endianness.
        let chacha = CipherKey::new(Cipher::ChaChaPoly, &[1; 32]);
        let aes = CipherKey::new(Cipher::AesGcm, &[1; 32]);
        assert_eq!(chacha.nonce(1).as_ref()[4], 1);
        assert_eq!(aes.nonce(1).as_ref()[11], 1);
        for key in [chacha, aes] {
            let mut buf = *b"hello, world";
            let tag = key.seal_in_place(7, b"ad", &mut buf);
            let mut sealed = buf.to_vec();
            sealed.extend_from_slice(&tag);
            assert_eq!(key.open_in_place(7, b"ad", &mut sealed), Some(12));
            assert_eq!(&sealed[..12], b"hello, world");
            let mut wrong = buf.to_vec();
            wrong.extend_from_slice(&tag);
            assert_eq!(key.open_in_place(8, b"ad", &mut wrong), None);
        }
    }

    #[test]
    fn rekey_is_deterministic_and_changes_the_key() {
        let key = CipherKey::new(Cipher::ChaChaPoly, &[9; 32]);
        let next = key.rekey();
        assert_ne!(next.fingerprint(), key.fingerprint());
        assert_eq!(key.rekey().fingerprint(), next.fingerprint());
    }
}
