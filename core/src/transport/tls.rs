//! TLS for Viska's QUIC connections: self-signed certificates on both sides (mutual TLS) whose
//! fingerprints are bound into the end-to-end handshake.
//!
//! The certificates are not trusted by themselves: TLS here gives confidentiality against
//! passive observers and proof that each side holds its certificate's private key. Who the peer
//! *is* comes from the end-to-end handshake, whose signed transcript contains the SHA-256 of both
//! certificates as each side saw them. A TLS man in the middle presents a different certificate
//! to each side, so the two transcripts differ and the identity signatures fail.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use super::TransportError;

/// The ALPN protocol id of Viska's first protocol version.
pub const ALPN: &[u8] = b"viska/1";

/// SHA-256 of a DER certificate: what the end-to-end handshake binds.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// A freshly generated self-signed certificate and its private key.
pub struct LocalCertificate {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Drop for LocalCertificate {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for LocalCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCertificate")
            .field("sha256", &hex_short(&self.fingerprint()))
            .field("key", &"***")
            .finish()
    }
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl LocalCertificate {
    /// Generates a new ECDSA P-256 self-signed certificate.
    pub fn generate() -> Result<Self, TransportError> {
        let certified = rcgen::generate_simple_self_signed(vec!["viska.invalid".to_owned()])
            .map_err(|e| TransportError::Tls(format!("certificate generation: {e}")))?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(
                zeroize::Zeroizing::new(certified.signing_key.serialize_der()).to_vec(),
            ),
        })
    }

    /// SHA-256 of the certificate's DER encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        cert_fingerprint(&self.cert)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate, but still checks that the peer signed the TLS handshake with the
/// certificate's key (so the fingerprint is meaningful). With a `pin` (a relay, which no
/// end-to-end handshake authenticates) the server's certificate must also have that SHA-256.
#[derive(Debug)]
struct BoundByEndToEnd {
    algorithms: WebPkiSupportedAlgorithms,
    pin: Option<[u8; 32]>,
}

impl BoundByEndToEnd {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
            pin: None,
        }
    }

    /// QUIC is TLS 1.3 only: a TLS 1.2 signature is never acceptable.
    fn tls12(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    /// The peer's CertificateVerify, checked against the key of the certificate it presented.
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// A peer presents exactly one certificate, self-signed; a chain is refused (nothing would
/// check it, and the end-to-end handshake binds the TLS session, not a certificate).
fn exactly_one(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if intermediates.is_empty() {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

impl ServerCertVerifier for BoundByEndToEnd {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        exactly_one(intermediates)?;
        if let Some(pin) = &self.pin {
            let seen = cert_fingerprint(end_entity.as_ref());
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&seen[..], &pin[..])) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for BoundByEndToEnd {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        exactly_one(intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// rustls server configuration: TLS 1.3, ALPN `viska/1`, client certificate required. With
/// `key_log`, the session secrets go to the file `SSLKEYLOGFILE` names (see
/// [`TransportConfig::tls_key_log`](super::TransportConfig::tls_key_log)).
pub(crate) fn server_config(
    cert: &LocalCertificate,
    key_log: bool,
) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(BoundByEndToEnd::new(&provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain(), cert.key())
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if key_log {
        config.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    Ok(config)
}

/// rustls client configuration: TLS 1.3, ALPN `viska/1`, presents our certificate; `key_log`
/// as for [`server_config`].
pub(crate) fn client_config(
    cert: &LocalCertificate,
    key_log: bool,
) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(BoundByEndToEnd::new(&provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain(), cert.key())
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if key_log {
        config.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    Ok(config)
}

/// rustls client configuration for a relay connection: TLS 1.3, ALPN `viska-relay/1`, the
/// relay's certificate pinned, no client certificate (devices authenticate in-band).
pub(crate) fn relay_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(BoundByEndToEnd {
        pin: Some(pin),
        ..BoundByEndToEnd::new(&provider)
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Version 2 (account login) first; a relay that speaks only version 1 picks that.
    config.alpn_protocols = vec![
        viska_proto::relay::RELAY_ALPN_V2.to_vec(),
        viska_proto::relay::RELAY_ALPN.to_vec(),
    ];
    Ok(config)
}
