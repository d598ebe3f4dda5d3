//! The server's TLS certificate: self-signed, made at start from the caller's randomness.

use crate::error::Error;
use dp_core::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A self-signed Ed25519 certificate and its key, for QUIC's TLS handshake.
///
/// It authenticates nothing that matters to CCP-2: the client accepts any certificate (it
/// still checks the TLS handshake signature, so the TLS keys belong to whoever holds this key)
/// and authenticates the server through the Noise handshake inside the stream. A new one is
/// made each time the server starts; nothing needs to distribute or renew it. Ed25519 signs
/// deterministically, so the certificate is a pure function of the 32 bytes drawn from the
/// caller's [`Rng`] (reproducible in tests and the simulator).
pub struct Certificate {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
}

impl core::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Certificate")
            .field("der_len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// A fresh certificate whose key comes from `rng`'s private stream.
    pub fn generate(rng: &mut impl Rng) -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        rng.private_fill(&mut seed);
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
            .map_err(|_| Error::Certificate)?;
        let params = rcgen::CertificateParams::new(vec![crate::SERVER_NAME.to_string()])
            .map_err(|_| Error::Certificate)?;
        let cert = params.self_signed(&pair).map_err(|_| Error::Certificate)?;
        Ok(Self {
            der: cert.der().clone(),
            key,
        })
    }

    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}
