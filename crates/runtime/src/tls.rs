//! TLS for servers and clients (rustls through tonic's `tls-ring`), mutual TLS between
//! services. The throwaway development PKI is `sentia-dev-pki`.

use std::fmt;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::RuntimeError;

/// Paths of PEM files: a certificate chain, its private key, and a CA bundle (for servers,
/// the CA that signs client certificates; for clients, the CA that signs servers).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
    /// CA bundle (PEM).
    pub ca: Option<String>,
}

/// A server's TLS identity and its client-certificate policy, held in memory.
#[derive(Clone)]
pub struct TlsServerConfig {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    client_ca_pem: Option<String>,
    require_client_cert: bool,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

fn read(path: &str, what: &str) -> Result<String, RuntimeError> {
    std::fs::read_to_string(path)
        .map_err(|e| RuntimeError::Tls(format!("cannot read {what} from {path}: {e}")))
}

impl TlsServerConfig {
    /// From PEM text. With `client_ca_pem`, client certificates signed by it are verified;
    /// `require_client_cert` refuses handshakes without one.
    pub fn from_pem(
        cert_pem: String,
        key_pem: Zeroizing<String>,
        client_ca_pem: Option<String>,
        require_client_cert: bool,
    ) -> Self {
        Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            require_client_cert,
        }
    }

    /// Reads the PEM files.
    pub fn from_files(files: &TlsFiles, require_client_cert: bool) -> Result<Self, RuntimeError> {
        let cert = read(&files.cert, "the certificate")?;
        let key = Zeroizing::new(read(&files.key, "the private key")?);
        let ca = files
            .ca
            .as_deref()
            .map(|p| read(p, "the client CA"))
            .transpose()?;
        Ok(Self::from_pem(cert, key, ca, require_client_cert))
    }

    /// True when clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert && self.client_ca_pem.is_some()
    }

    pub(crate) fn to_tonic(&self) -> ServerTlsConfig {
        let mut cfg = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, self.key_pem.as_bytes()));
        if let Some(ca) = &self.client_ca_pem {
            cfg = cfg
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(!self.require_client_cert);
        }
        cfg
    }
}

pub use sentia_channel::tls::TlsClientConfig;

/// The common name of a DER certificate's subject, used as the mTLS caller identity.
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}
