//! TLS at the edge (rustls): certificates from PEM files (a wildcard for
//! the base domain) and the server configuration (ALPN `h2`, `http/1.1`).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {message}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// The certificate or key is unusable.
    #[error("bad certificate or key: {0}")]
    Invalid(String),
}

/// The crypto provider the edge uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and key from PEM text.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Invalid(format!("key PEM: {e}")))?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| TlsError::Invalid(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// A certificate chain and key from PEM files.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read { path: p.display().to_string(), message: e.to_string() });
    certified_key_from_pem(&read(cert)?, &read(key)?)
}

/// One certificate for every name (a wildcard for the base domain).
#[derive(Debug)]
pub struct SingleCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server configuration with `resolver`, offering HTTP/2 and HTTP/1.1.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// The server configuration of a certificate file pair.
pub fn config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(Arc::new(SingleCert(load_certified_key(cert, key)?)))
}

/// Seconds since the epoch when a PEM certificate (the first of a chain)
/// stops being valid.
pub fn not_after(cert_pem: &[u8]) -> Result<i64, TlsError> {
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| TlsError::Invalid("no certificate in the PEM".into()))?
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::Invalid(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}
