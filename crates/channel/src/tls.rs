//! TLS client settings: the CA a caller trusts and, for mutual TLS, the identity it shows.

use std::fmt;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

use crate::ChannelError;

fn read(path: &str, what: &str) -> Result<String, ChannelError> {
    std::fs::read_to_string(path)
        .map_err(|e| ChannelError::Tls(format!("cannot read {what} from {path}: {e}")))
}

/// What a client needs to call a TLS server: the CA to trust, an optional client identity for
/// mTLS, and the name to expect in the server's certificate.
#[derive(Clone)]
pub struct TlsClientConfig {
    /// CA bundle (PEM) that signs the server certificate.
    pub ca_pem: String,
    /// Client certificate and key (PEM) for mTLS.
    pub identity: Option<(String, Zeroizing<String>)>,
    /// Expected server name (SAN); defaults to the endpoint's host.
    pub domain: Option<String>,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl TlsClientConfig {
    /// Reads a CA bundle and optionally a client certificate and key from PEM files.
    pub fn from_files(
        ca: &str,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Result<Self, ChannelError> {
        let ca_pem = read(ca, "the CA bundle")?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                read(c, "the client certificate")?,
                Zeroizing::new(read(k, "the client key")?),
            )),
            (None, None) => None,
            _ => {
                return Err(ChannelError::Tls(
                    "give both a client certificate and its key, or neither".into(),
                ));
            }
        };
        Ok(Self {
            ca_pem,
            identity,
            domain: None,
        })
    }

    pub(crate) fn to_tonic(&self) -> ClientTlsConfig {
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key.as_bytes()));
        }
        if let Some(domain) = &self.domain {
            cfg = cfg.domain_name(domain.clone());
        }
        cfg
    }
}
