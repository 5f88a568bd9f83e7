//! The part of every service's configuration that the server stack owns; the reader itself
//! lives in `sentia-config` (re-exported here so services name one place).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use sentia_config::{
    ConfigError, MapSource, ProcessEnv, Reader, Source, defaults, parse_duration,
};

use crate::auth::TokenTable;
use crate::tls::{TlsFiles, TlsServerConfig};

/// How a service listens and who may call it: the part of every service's config that the
/// runtime owns.
#[derive(Clone)]
pub struct ServerConfig {
    /// Name used in logs, traces and health.
    pub service_name: &'static str,
    /// Address to bind (`SENTIA_LISTEN_ADDR`).
    pub listen_addr: SocketAddr,
    /// TLS settings; `None` only when plaintext was explicitly allowed (or in dev mode).
    pub tls: Option<TlsServerConfig>,
    /// Per-request deadline (`SENTIA_REQUEST_TIMEOUT`); a shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Requests handled at once across all connections (`SENTIA_CONCURRENCY_LIMIT`).
    pub concurrency_limit: usize,
    /// Requests one user, app or admin principal may have in flight
    /// (`SENTIA_PRINCIPAL_CONCURRENCY`); beyond it RESOURCE_EXHAUSTED at once.
    pub principal_concurrency: usize,
    /// The same bound for one service identity (`SENTIA_SERVICE_CONCURRENCY`): higher, as a
    /// service carries many users' calls, but below the global limit.
    pub service_concurrency: usize,
    /// How long a request's body may take to arrive (`SENTIA_BODY_TIMEOUT`); a caller that
    /// opens requests and stalls holds no handler permit meanwhile.
    pub body_timeout: Duration,
    /// Static bearer tokens (`SENTIA_AUTH_TOKENS`), stored as SHA-256 hashes.
    pub tokens: TokenTable,
    /// mTLS certificate names that get the admin role (`SENTIA_ADMIN_IDENTITIES`).
    pub admin_identities: Vec<String>,
    /// mTLS certificate names that get the service role (`SENTIA_SERVICE_IDENTITIES`; each
    /// service defaults to the callers its deployment has). Any other name is refused.
    pub service_identities: Vec<String>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("service_name", &self.service_name)
            .field("listen_addr", &self.listen_addr)
            .field("tls", &self.tls.is_some())
            .field("request_timeout", &self.request_timeout)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("principal_concurrency", &self.principal_concurrency)
            .field("service_concurrency", &self.service_concurrency)
            .field("body_timeout", &self.body_timeout)
            .field("tokens", &self.tokens.len())
            .field("admin_identities", &self.admin_identities)
            .field("service_identities", &self.service_identities)
            .finish()
    }
}

impl ServerConfig {
    /// A plaintext loopback config on an ephemeral port: for tests and `sentia dev`.
    pub fn dev(service_name: &'static str, tokens: TokenTable) -> Self {
        Self {
            service_name,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 1024,
            principal_concurrency: 64,
            service_concurrency: 512,
            body_timeout: Duration::from_secs(10),
            tokens,
            admin_identities: Vec::new(),
            service_identities: Vec::new(),
        }
    }

    /// Reads the shared server settings. Outside dev mode TLS is required unless
    /// `SENTIA_ALLOW_PLAINTEXT=true`, and then only a loopback address may be bound.
    /// `require_client_cert` makes TLS mutual (key-service sets it). `default_services` are
    /// the certificate names that hold the service role when `SENTIA_SERVICE_IDENTITIES` is
    /// unset: the callers this service has in every shipped deployment.
    pub fn from_source(
        reader: &mut Reader<'_>,
        service_name: &'static str,
        default_addr: &str,
        require_client_cert: bool,
        default_services: &[&str],
    ) -> Self {
        let listen_addr = reader.parse_or(
            "SENTIA_LISTEN_ADDR",
            SocketAddr::from_str(default_addr).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            "a socket address like 0.0.0.0:8201",
        );
        let allow_plaintext = reader.bool_or("SENTIA_ALLOW_PLAINTEXT", false);
        let cert = reader.optional("SENTIA_TLS_CERT");
        let key = reader.optional("SENTIA_TLS_KEY");
        let client_ca = reader.optional("SENTIA_TLS_CLIENT_CA");
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => {
                if require_client_cert && client_ca.is_none() {
                    reader.problem(format!(
                        "SENTIA_TLS_CLIENT_CA is not set: {service_name} only accepts callers with a \
                         client certificate, so it needs the CA that signs them"
                    ));
                }
                let files = TlsFiles {
                    cert,
                    key,
                    ca: client_ca,
                };
                match TlsServerConfig::from_files(&files, require_client_cert) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        reader.problem(format!("SENTIA_TLS_CERT/SENTIA_TLS_KEY: {e}"));
                        None
                    }
                }
            }
            (None, None) => {
                if !allow_plaintext {
                    reader.problem(
                        "TLS is required: set SENTIA_TLS_CERT and SENTIA_TLS_KEY (PEM files), or set \
                         SENTIA_ALLOW_PLAINTEXT=true to serve plaintext on a loopback address only",
                    );
                } else if !listen_addr.ip().is_loopback() {
                    reader.problem(format!(
                        "SENTIA_LISTEN_ADDR={listen_addr} is not a loopback address; plaintext \
                         (SENTIA_ALLOW_PLAINTEXT=true) may only bind 127.0.0.1 or ::1"
                    ));
                }
                None
            }
            _ => {
                reader.problem("set both SENTIA_TLS_CERT and SENTIA_TLS_KEY, or neither");
                None
            }
        };
        let request_timeout = reader.duration_or("SENTIA_REQUEST_TIMEOUT", Duration::from_secs(30));
        let concurrency_limit =
            reader.parse_or("SENTIA_CONCURRENCY_LIMIT", 1024usize, "a positive integer");
        if concurrency_limit == 0 {
            reader.problem("SENTIA_CONCURRENCY_LIMIT must be at least 1");
        }
        let principal_concurrency = reader.parse_or(
            "SENTIA_PRINCIPAL_CONCURRENCY",
            64usize,
            "a positive integer",
        );
        let service_concurrency = reader.parse_or(
            "SENTIA_SERVICE_CONCURRENCY",
            (concurrency_limit / 2).max(1),
            "a positive integer",
        );
        if principal_concurrency == 0 || service_concurrency == 0 {
            reader.problem(
                "SENTIA_PRINCIPAL_CONCURRENCY and SENTIA_SERVICE_CONCURRENCY must be at least 1",
            );
        }
        let body_timeout = reader.duration_or("SENTIA_BODY_TIMEOUT", Duration::from_secs(10));
        if body_timeout.is_zero() {
            reader.problem("SENTIA_BODY_TIMEOUT must be positive");
        }
        let tokens = match reader.optional("SENTIA_AUTH_TOKENS") {
            None => TokenTable::default(),
            Some(raw) => match TokenTable::parse(&raw) {
                Ok(t) => t,
                Err(e) => {
                    reader.problem(format!("SENTIA_AUTH_TOKENS: {e}"));
                    TokenTable::default()
                }
            },
        };
        let admin_identities = reader
            .optional("SENTIA_ADMIN_IDENTITIES")
            .map(|v| names(&v))
            .unwrap_or_default();
        let service_identities = reader
            .optional("SENTIA_SERVICE_IDENTITIES")
            .map(|v| names(&v))
            .unwrap_or_else(|| default_services.iter().map(|s| s.to_string()).collect());
        Self {
            service_name,
            listen_addr,
            tls,
            request_timeout,
            concurrency_limit,
            principal_concurrency,
            service_concurrency,
            body_timeout,
            tokens,
            admin_identities,
            service_identities,
        }
    }
}

/// A comma-separated list of names, blanks dropped.
fn names(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_service_server(r: &mut Reader<'_>) -> ServerConfig {
        ServerConfig::from_source(r, "key-service", "127.0.0.1:8201", true, &["vault-service"])
    }

    #[test]
    fn a_server_without_tls_or_explicit_plaintext_refuses_to_start() {
        let src = MapSource::default();
        let mut r = Reader::new(&src);
        key_service_server(&mut r);
        let err = r.finish().unwrap_err();
        assert!(err.to_string().contains("TLS is required"), "{err}");
    }

    #[test]
    fn plaintext_may_only_bind_loopback() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_LISTEN_ADDR", "0.0.0.0:8201"),
        ]);
        let mut r = Reader::new(&src);
        key_service_server(&mut r);
        assert!(r.finish().unwrap_err().to_string().contains("loopback"));

        let src = MapSource::from_pairs([("SENTIA_ALLOW_PLAINTEXT", "true")]);
        let mut r = Reader::new(&src);
        let cfg = key_service_server(&mut r);
        r.finish().unwrap();
        assert!(cfg.tls.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_variable() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "maybe"),
            ("SENTIA_REQUEST_TIMEOUT", "soon"),
            ("SENTIA_CONCURRENCY_LIMIT", "-1"),
        ]);
        let mut r = Reader::new(&src);
        ServerConfig::from_source(&mut r, "x", "127.0.0.1:1", false, &[]);
        let err = r.finish().unwrap_err();
        let text = err.to_string();
        for name in [
            "SENTIA_ALLOW_PLAINTEXT",
            "SENTIA_REQUEST_TIMEOUT",
            "SENTIA_CONCURRENCY_LIMIT",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }
}
