//! TLS for the quinn side: a self-signed Ed25519 certificate (rcgen), its identity string,
//! and a client verifier that pins that identity instead of checking a CA chain.
//!
//! The identity printed by `server --stack quinn` is the SHA-256 of the certificate's
//! SubjectPublicKeyInfo, in the same 52-character lowercase base32 as an SSS EID, so the CLI
//! looks the same for both stacks. A client given that identity accepts exactly the server
//! holding that key (the handshake signature is still verified); a client given the literal
//! `quinn` accepts any certificate, which is acceptable only because this is a benchmark on a
//! link the operator controls. Ed25519 is used because SSS identities are Ed25519 too.

use std::path::Path;
use std::sync::Arc;

use data_encoding::{Encoding, Specification};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{PerfError, Result};
use crate::tuning::Cipher;

/// The identity a client passes to skip pinning (quinn only).
pub const ANY_IDENTITY: &str = "quinn";

/// The server name carried in the ClientHello and in the certificate.
pub const SERVER_NAME: &str = "localhost";

/// The ALPN protocol both ends require.
pub const ALPN: &[u8] = b"sss-perf";

fn base32() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("valid base32 specification")
}

/// The identity string of a public key: base32(SHA-256(SPKI DER)), 52 characters.
pub fn identity_of(spki_der: &[u8]) -> String {
    base32().encode(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref())
}

/// Parses an identity string back to the 32-byte digest.
pub fn parse_identity(text: &str) -> Result<[u8; 32]> {
    let bytes = base32()
        .decode(text.as_bytes())
        .map_err(|e| PerfError::Config(format!("identity {text:?} is not base32: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| PerfError::Config(format!("identity {text:?} is not 32 bytes of base32")))
}

/// The server's certificate and key.
pub struct ServerCert {
    /// Self-signed certificate.
    pub cert: CertificateDer<'static>,
    /// Its PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
    /// [`identity_of`] the certificate's public key.
    pub identity: String,
}

impl ServerCert {
    /// Uses the PEM key in `key_file` (creating it if absent, so the identity survives
    /// restarts), or a fresh key when no file is given.
    pub fn load_or_generate(key_file: Option<&Path>) -> Result<Self> {
        let cfg = |e: rcgen::Error| PerfError::Config(format!("certificate generation: {e}"));
        let key_pair = match key_file {
            Some(path) if path.exists() => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| PerfError::io(format!("reading {}", path.display()), e))?;
                rcgen::KeyPair::from_pem(&pem).map_err(cfg)?
            }
            _ => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(cfg)?;
                if let Some(path) = key_file {
                    std::fs::write(path, key.serialize_pem())
                        .map_err(|e| PerfError::io(format!("writing {}", path.display()), e))?;
                }
                key
            }
        };
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(cfg)?;
        let cert = params.self_signed(&key_pair).map_err(cfg)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()).into(),
            identity: identity_of(&key_pair.public_key_der()),
        })
    }
}

/// The ring provider restricted to one TLS 1.3 suite, so that both ends use the AEAD the
/// comparison asks for. (QUIC Initial packets always use AES-128-GCM; see [`initial_suite`].)
pub fn provider(cipher: Cipher) -> Arc<CryptoProvider> {
    let suite = match cipher {
        Cipher::Aes256 => rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        Cipher::Chacha20 => rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The suite RFC 9001 fixes for Initial packets, which quinn needs even when the negotiated
/// suite is another.
pub fn initial_suite() -> rustls::quic::Suite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("ring's AES-128-GCM suite supports QUIC")
}

/// Accepts the server whose SPKI digest equals the pin (or any server without a pin), and
/// checks its handshake signature.
#[derive(Debug)]
pub struct PinnedServer {
    pin: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    /// A verifier for `identity` (or [`ANY_IDENTITY`]).
    pub fn new(identity: &str, provider: &CryptoProvider) -> Result<Self> {
        let pin = if identity == ANY_IDENTITY {
            None
        } else {
            Some(parse_identity(identity)?)
        };
        Ok(Self {
            pin,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let spki = parsed.subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
        if digest.as_ref() == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server key {} is not the pinned identity",
                identity_of(spki.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Both configurations are TLS 1.3 only; QUIC forbids 1.2.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_52_chars_and_parses_back() {
        let cert = ServerCert::load_or_generate(None).unwrap();
        assert_eq!(cert.identity.len(), 52);
        assert!(cert
            .identity
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        let digest = parse_identity(&cert.identity).unwrap();
        assert_eq!(base32().encode(&digest), cert.identity);
        assert!(parse_identity("abc").is_err());
    }

    #[test]
    fn key_file_keeps_the_identity() {
        let path = std::env::temp_dir().join(format!("sss-perf-key-{}.pem", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = ServerCert::load_or_generate(Some(&path)).unwrap();
        let second = ServerCert::load_or_generate(Some(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(first.identity, second.identity);
        assert_ne!(
            first.identity,
            ServerCert::load_or_generate(None).unwrap().identity
        );
    }
}
