//! The handshake suite: Noise pattern, cipher and whether the ML-KEM-768 hybrid is used.
//!
//! The suite travels as one byte in every handshake packet and is also part of the Noise
//! prologue, and the hybrid suites use a different Noise protocol name (`psk` modifier), so an
//! attacker who changes or strips it changes the handshake hash and the handshake fails.

use crate::HandshakeError;

/// The Noise handshake pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `XK`: three messages; the initiator's static key is sent in message 3.
    Xk,
    /// `IK`: two messages, one round trip less; the initiator's static key is sent in message 1.
    Ik,
}

/// The Noise cipher. The initiator picks; a responder accepts both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305: fast everywhere, constant-time without hardware support.
    ChaChaPoly,
    /// AES-256-GCM: fastest on CPUs with AES and carry-less multiply instructions.
    AesGcm,
}

/// A handshake suite. Encoded as one byte: bit 0 pattern (0 XK, 1 IK), bit 1 cipher
/// (0 ChaChaPoly, 1 AESGCM), bit 2 hybrid; all other bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Suite {
    /// The handshake pattern.
    pub pattern: Pattern,
    /// The cipher for the handshake and the transport.
    pub cipher: Cipher,
    /// Whether an ML-KEM-768 exchange is mixed into the keys.
    pub hybrid: bool,
}

impl Suite {
    /// Every suite, in byte order.
    pub const ALL: [Self; 8] = [
        Self::new(Pattern::Xk, Cipher::ChaChaPoly, false),
        Self::new(Pattern::Ik, Cipher::ChaChaPoly, false),
        Self::new(Pattern::Xk, Cipher::AesGcm, false),
        Self::new(Pattern::Ik, Cipher::AesGcm, false),
        Self::new(Pattern::Xk, Cipher::ChaChaPoly, true),
        Self::new(Pattern::Ik, Cipher::ChaChaPoly, true),
        Self::new(Pattern::Xk, Cipher::AesGcm, true),
        Self::new(Pattern::Ik, Cipher::AesGcm, true),
    ];

    /// A suite from its parts.
    pub const fn new(pattern: Pattern, cipher: Cipher, hybrid: bool) -> Self {
        Self {
            pattern,
            cipher,
            hybrid,
        }
    }

    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        let pattern = match self.pattern {
            Pattern::Xk => 0,
            Pattern::Ik => 1,
        };
        let cipher = match self.cipher {
            Cipher::ChaChaPoly => 0,
            Cipher::AesGcm => 2,
        };
        pattern | cipher | if self.hybrid { 4 } else { 0 }
    }

    /// Parses the wire byte.
    pub const fn from_byte(byte: u8) -> Result<Self, HandshakeError> {
        if byte > 7 {
            return Err(HandshakeError::UnknownSuite);
        }
        Ok(Self::ALL[byte as usize])
    }

    /// The Noise protocol name, exactly as hashed into the handshake state.
    pub const fn noise_name(self) -> &'static str {
        match (self.pattern, self.cipher, self.hybrid) {
            (Pattern::Xk, Cipher::ChaChaPoly, false) => "Noise_XK_25519_ChaChaPoly_BLAKE2s",
            (Pattern::Xk, Cipher::AesGcm, false) => "Noise_XK_25519_AESGCM_BLAKE2s",
            (Pattern::Ik, Cipher::ChaChaPoly, false) => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
            (Pattern::Ik, Cipher::AesGcm, false) => "Noise_IK_25519_AESGCM_BLAKE2s",
            (Pattern::Xk, Cipher::ChaChaPoly, true) => "Noise_XKpsk3_25519_ChaChaPoly_BLAKE2s",
            (Pattern::Xk, Cipher::AesGcm, true) => "Noise_XKpsk3_25519_AESGCM_BLAKE2s",
            (Pattern::Ik, Cipher::ChaChaPoly, true) => "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s",
            (Pattern::Ik, Cipher::AesGcm, true) => "Noise_IKpsk2_25519_AESGCM_BLAKE2s",
        }
    }

    /// The Noise prologue: the ASCII string `CommuCat CCP-2` followed by the suite byte.
    pub const fn prologue(self) -> [u8; 15] {
        let mut prologue = *b"CommuCat CCP-2\0";
        prologue[14] = self.to_byte();
        prologue
    }

    /// The psk slot the ML-KEM shared secret fills, for hybrid suites.
    pub(crate) const fn psk_location(self) -> u8 {
        match self.pattern {
            Pattern::Xk => 3,
            Pattern::Ik => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_covers_every_suite_once() {
        for (byte, suite) in Suite::ALL.iter().enumerate() {
            assert_eq!(usize::from(suite.to_byte()), byte);
            assert_eq!(Suite::from_byte(suite.to_byte()), Ok(*suite));
        }
        assert_eq!(Suite::from_byte(8), Err(HandshakeError::UnknownSuite));
        assert_eq!(Suite::from_byte(0xff), Err(HandshakeError::UnknownSuite));
    }

    #[test]
    fn every_noise_name_parses_in_snow() {
        for suite in Suite::ALL {
            let params: Result<snow::params::NoiseParams, _> = suite.noise_name().parse();
            assert!(params.is_ok(), "{}", suite.noise_name());
        }
    }
}
