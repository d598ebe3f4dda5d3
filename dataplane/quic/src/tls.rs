//! The TLS 1.3 layer QUIC requires: rustls on ring, ALPN `ccp2`, no resumption, no 0-RTT.
//! It protects the transport; identity comes from the Noise handshake inside the stream.

use crate::cert::Certificate;
use crate::error::Error;
use crate::time::WallClock;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: the self-signed certificate, ALPN `ccp2`. No session tickets or 0-RTT:
/// every connection runs a full handshake, so nothing replayable reaches the Noise layer.
pub(crate) fn server(cert: &Certificate, clock: Arc<WallClock>) -> Result<QuicServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_details(provider(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .map_err(|_| Error::Tls)?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    QuicServerConfig::try_from(tls).map_err(|_| Error::Tls)
}

/// The client side: any certificate is accepted (Noise authenticates the server), but the
/// TLS handshake signature is still checked against the certificate's key.
pub(crate) fn client(clock: Arc<WallClock>) -> Result<QuicClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(NoIdentityVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_details(provider, clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    tls.enable_early_data = false;
    tls.resumption = rustls::client::Resumption::disabled();
    QuicClientConfig::try_from(tls).map_err(|_| Error::Tls)
}

/// Accepts any server certificate: CCP-2 authenticates the server with its Noise static key
/// inside the stream, and a certificate made at each start could not be checked anyway.
#[derive(Debug)]
struct NoIdentityVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoIdentityVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
