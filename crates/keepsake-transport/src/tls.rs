//! TLS for the wire: certificates for a home server, fingerprints to pin them, and a
//! client that trusts exactly one pinned certificate.
//!
//! A home server has no name a public CA would sign, so `keepsake serve --tls-self-signed`
//! makes its own certificate and prints its SHA-256 fingerprint; devices pin that
//! fingerprint on first setup and refuse any other certificate afterwards.

use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertifiedKey")
            .field("fingerprint", &fingerprint_of_pem(&self.cert_pem))
            .finish_non_exhaustive()
    }
}

/// Errors making or using TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate could not be generated.
    #[error("generating a certificate failed: {0}")]
    Generate(String),
    /// A PEM file held no certificate.
    #[error("no certificate in the PEM text")]
    NoCertificate,
    /// A fingerprint is not 32 hex bytes.
    #[error("a fingerprint is 64 hex digits (colons allowed), got {0:?}")]
    BadFingerprint(String),
    /// The URL has no host or port.
    #[error("{0:?} is not host:port")]
    BadAddress(String),
    /// The server's certificate is not the pinned one.
    #[error(
        "the server's certificate does not match the pinned fingerprint: is this the right \
         server? (`keepsake serve` prints its fingerprint)"
    )]
    WrongFingerprint,
    /// Connecting failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Whether an error's chain of causes mentions `needle`.
fn caused_by(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains(needle) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether the server at `host:port` answers a TLS handshake. A plaintext client pointed
/// at a TLS port gets only "transport error"; this tells it why. No data is sent.
pub async fn speaks_tls(host_port: &str) -> bool {
    let probe = async {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                // No certificate has this fingerprint: the handshake stops at the
                // certificate, which is all the question needs.
                fingerprint: [0; 32],
                provider,
            }))
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(host_port).await.ok()?;
        let name = ServerName::try_from("localhost").ok()?;
        let answered = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        Some(match answered {
            Ok(_) => true,
            Err(e) => caused_by(&e, MISMATCH),
        })
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), probe).await,
        Ok(Some(true))
    )
}

const MISMATCH: &str = "the server's certificate does not match the pinned fingerprint";

/// A self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[String]) -> Result<CertifiedKey, TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(CertifiedKey {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
    })
}

/// `sha256:` and the hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The fingerprint of the first certificate in PEM text.
pub fn fingerprint_of_pem(pem: &str) -> Result<String, TlsError> {
    let der = first_der(pem)?;
    Ok(fingerprint(&der))
}

fn first_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    if body.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    base64_decode(&body).ok_or(TlsError::NoCertificate)
}

/// Standard base64 (PEM bodies), without a dependency for twenty lines.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for quad in clean.chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|c| *c != b'=').collect();
        let mut acc = 0u32;
        for (i, c) in data.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len().max(1)]);
    }
    Some(out)
}

fn parse_fingerprint(pin: &str) -> Result<[u8; 32], TlsError> {
    let hexed: String = pin
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    hex::decode(&hexed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TlsError::BadFingerprint(pin.to_string()))
}

/// Accepts exactly the certificate with the pinned fingerprint (and checks the handshake
/// signatures with it, so only the holder of its key can complete the handshake).
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(seen = %hex::encode(seen), "server certificate does not match the pinned fingerprint");
            Err(rustls::Error::General(MISMATCH.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects over TLS to `host:port`, trusting only the certificate with fingerprint `pin`.
pub async fn connect_pinned(address: &str, pin: &str) -> Result<Channel, TlsError> {
    let fingerprint = parse_fingerprint(pin)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (host, port) = address
        .trim_start_matches("https://")
        .rsplit_once(':')
        .ok_or_else(|| TlsError::BadAddress(address.to_string()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| TlsError::BadAddress(address.to_string()))?;
    // tonic sees a plain HTTP/2 connection; TLS happens inside the connector.
    let endpoint = crate::client::tuned(Endpoint::from_shared(format!(
        "http://{}",
        address.trim_start_matches("https://")
    ))?);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
            let (connector, host) = (connector.clone(), host.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(host)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls =
                    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
                        .await
                        .map_err(|_| {
                            std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            )
                        })??;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            if caused_by(&e, MISMATCH) {
                TlsError::WrongFingerprint
            } else {
                TlsError::Transport(e)
            }
        })?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_pem_round_trips_to_the_fingerprint_of_its_der() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let from_pem = fingerprint_of_pem(&made.cert.pem()).unwrap();
        assert_eq!(from_pem, fingerprint(made.cert.der()));
        assert_eq!(parse_fingerprint(&from_pem).unwrap().len(), 32);
        let colons = from_pem
            .trim_start_matches("sha256:")
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            parse_fingerprint(&colons).unwrap(),
            parse_fingerprint(&from_pem).unwrap()
        );
        assert!(parse_fingerprint("sha256:abc").is_err());
    }
}
