//! Connection options shared by every client subcommand.

use anyhow::Context;
use clap::Args;
use sentia_runtime::client::{AuthedChannel, CallContext, connect};
use sentia_runtime::tls::TlsClientConfig;

/// Token, TLS files and output format.
#[derive(Args, Clone)]
pub struct Common {
    /// Bearer token (root token, JWT from `sentia login`, or a service token).
    #[arg(long, env = "SENTIA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust; enables TLS. The same variable the services read for
    /// their calls to each other (`SENTIA_CA_CERT` is still read, with a warning).
    #[arg(long, env = "SENTIA_CLIENT_CA", global = true)]
    pub ca: Option<String>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "SENTIA_CLIENT_CERT", global = true)]
    pub cert: Option<String>,
    /// Client key (PEM) for mTLS.
    #[arg(long, env = "SENTIA_CLIENT_KEY", global = true)]
    pub key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    /// TLS settings when a CA is given.
    pub fn tls(&self) -> anyhow::Result<Option<TlsClientConfig>> {
        let deprecated = || {
            let ca = std::env::var("SENTIA_CA_CERT")
                .ok()
                .filter(|v| !v.is_empty())?;
            eprintln!("warning: SENTIA_CA_CERT is deprecated; set SENTIA_CLIENT_CA instead");
            Some(ca)
        };
        Ok(match self.ca.clone().or_else(deprecated) {
            Some(ca) => Some(TlsClientConfig::from_files(
                &ca,
                self.cert.as_deref(),
                self.key.as_deref(),
            )?),
            None => None,
        })
    }

    /// A connected channel to `addr` carrying the token; `what` names the service in errors.
    pub async fn channel(&self, addr: &str, what: &str) -> anyhow::Result<AuthedChannel> {
        let tls = self.tls()?;
        let channel = connect(addr, tls.as_ref())
            .await
            .with_context(|| format!("connecting to {what} at {addr}"))?;
        Ok(CallContext::with_token(self.token.as_deref())?.wrap(channel))
    }
}

/// Where vault-service is, plus the common options: what `sentia secret`, `login` and
/// `token` share.
#[derive(Args, Clone)]
pub struct VaultConn {
    /// vault-service address (host:port or URI).
    #[arg(
        long,
        env = "SENTIA_ADDR",
        default_value = "127.0.0.1:8200",
        global = true
    )]
    pub addr: String,
    #[command(flatten)]
    pub common: Common,
}

impl VaultConn {
    /// The SDK's client for vault-service, connected, carrying the token.
    pub async fn client(&self) -> anyhow::Result<sentia_client::Client> {
        let tls = self.common.tls()?;
        sentia_client::Client::connect(&self.addr, self.common.token.as_deref(), tls.as_ref())
            .await
            .with_context(|| format!("connecting to vault-service at {}", self.addr))
    }
}

/// Where audit-service is, plus the common options: what `sentia audit` and `sentia alert`
/// share.
#[derive(Args, Clone)]
pub struct AuditConn {
    /// audit-service address (host:port or URI).
    #[arg(
        long,
        env = "SENTIA_AUDIT_ADDR",
        default_value = "127.0.0.1:8202",
        global = true
    )]
    pub addr: String,
    #[command(flatten)]
    pub common: Common,
}

impl AuditConn {
    /// An AuditService client for audit-service, connected, carrying the token.
    pub async fn client(
        &self,
    ) -> anyhow::Result<
        sentia_proto::audit::v1::audit_service_client::AuditServiceClient<AuthedChannel>,
    > {
        Ok(
            sentia_proto::audit::v1::audit_service_client::AuditServiceClient::new(
                self.common.channel(&self.addr, "audit-service").await?,
            ),
        )
    }
}

/// A gRPC status as a CLI error: code and the server's message.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// A protobuf timestamp as `YYYY-MM-DDTHH:MM:SSZ` (empty when unset).
pub fn utc(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map_or_else(String::new, |t| sentia_proto::wkt::utc(t.seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_utc() {
        let t = |s| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(utc(&t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(utc(&t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(&t(1_795_900_805)), "2026-11-28T21:20:05Z");
        assert_eq!(utc(&None), "");
    }
}
