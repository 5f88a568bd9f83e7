//! TLS for servers and clients (rustls through tonic's `tls-ring`), mutual TLS between
//! services, and a throwaway development PKI for `sentia dev --tls`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
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

/// A throwaway certificate authority for development and tests, like `vault server -dev-tls`.
/// Certificates it issues are valid for `localhost`, `127.0.0.1` and `::1` and carry the
/// service name as their common name, which mTLS uses as the caller's identity.
pub struct DevPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevPki")
    }
}

fn tls_err(e: rcgen::Error) -> RuntimeError {
    RuntimeError::Tls(e.to_string())
}

impl DevPki {
    /// Generates a new CA (ECDSA P-256).
    pub fn generate() -> Result<Self, RuntimeError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Sentia development CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(tls_err)?;
        let ca = CertifiedIssuer::self_signed(params, key).map_err(tls_err)?;
        Ok(Self { ca })
    }

    /// The CA certificate (PEM), to trust on both sides.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Issues a certificate and key (PEM) usable as both server and client identity.
    pub fn issue(&self, name: &str) -> Result<(String, Zeroizing<String>), RuntimeError> {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), name.to_string()])
            .map_err(tls_err)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params.signed_by(&key, &self.ca).map_err(tls_err)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }

    /// A server config for `name` that verifies client certificates from this CA.
    pub fn server_config(
        &self,
        name: &str,
        require_client_cert: bool,
    ) -> Result<TlsServerConfig, RuntimeError> {
        let (cert, key) = self.issue(name)?;
        Ok(TlsServerConfig::from_pem(
            cert,
            key,
            Some(self.ca_pem()),
            require_client_cert,
        ))
    }

    /// A client config trusting this CA, presenting a certificate for `identity` if given.
    pub fn client_config(&self, identity: Option<&str>) -> Result<TlsClientConfig, RuntimeError> {
        let identity = identity.map(|n| self.issue(n)).transpose()?;
        Ok(TlsClientConfig {
            ca_pem: self.ca_pem(),
            identity,
            domain: Some("localhost".into()),
        })
    }
}

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
