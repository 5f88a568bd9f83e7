//! A throwaway certificate authority for `sentia dev --tls`, `sentia pki init` and the test
//! suites — like `vault server -dev-tls`. No service links it: production certificates come
//! from the operator's own PKI.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sentia_channel::tls::TlsClientConfig;
use sentia_runtime::TlsServerConfig;
use zeroize::Zeroizing;

/// A certificate or key could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct PkiError(String);

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

fn tls_err(e: rcgen::Error) -> PkiError {
    PkiError(e.to_string())
}

impl DevPki {
    /// Generates a new CA (ECDSA P-256).
    pub fn generate() -> Result<Self, PkiError> {
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
    pub fn issue(&self, name: &str) -> Result<(String, Zeroizing<String>), PkiError> {
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
    ) -> Result<TlsServerConfig, PkiError> {
        let (cert, key) = self.issue(name)?;
        Ok(TlsServerConfig::from_pem(
            cert,
            key,
            Some(self.ca_pem()),
            require_client_cert,
        ))
    }

    /// A client config trusting this CA, presenting a certificate for `identity` if given.
    pub fn client_config(&self, identity: Option<&str>) -> Result<TlsClientConfig, PkiError> {
        let identity = identity.map(|n| self.issue(n)).transpose()?;
        Ok(TlsClientConfig {
            ca_pem: self.ca_pem(),
            identity,
            domain: Some("localhost".into()),
        })
    }
}
