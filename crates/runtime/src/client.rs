//! Outgoing gRPC connections: TLS or plaintext channels, and an interceptor that adds the
//! bearer token and propagates the current W3C trace context on every call.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::RuntimeError;
use crate::tls::TlsClientConfig;

/// A channel whose calls carry credentials and trace context.
pub type AuthedChannel = InterceptedService<Channel, CallContext>;

/// Connects to `address` (`host:port`, or a full `http://`/`https://` URI). With `tls`, the
/// connection is TLS (mutual when the config has an identity).
pub async fn connect(
    address: &str,
    tls: Option<&TlsClientConfig>,
) -> Result<Channel, RuntimeError> {
    Ok(endpoint(address, tls)?.connect().await?)
}

/// Like [`connect`], but connects on first use and reconnects after failures: for a service
/// whose upstream may start after it.
pub fn connect_lazy(address: &str, tls: Option<&TlsClientConfig>) -> Result<Channel, RuntimeError> {
    Ok(endpoint(address, tls)?.connect_lazy())
}

fn endpoint(address: &str, tls: Option<&TlsClientConfig>) -> Result<Endpoint, RuntimeError> {
    let uri = if address.contains("://") {
        address.to_string()
    } else if tls.is_some() {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    let mut endpoint = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.to_tonic())?;
    }
    Ok(endpoint)
}

/// How a service reaches another Sentia service: address, bearer token and TLS client
/// settings, read from `{PREFIX}_ADDR`, `{PREFIX}_TOKEN` and the shared `SENTIA_CLIENT_CA`,
/// `SENTIA_CLIENT_CERT`, `SENTIA_CLIENT_KEY`.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// `host:port` or URI.
    pub addr: String,
    /// Bearer token (a static service token); optional when mTLS identifies the caller.
    pub token: Option<zeroize::Zeroizing<String>>,
    /// TLS settings; `None` = plaintext (loopback dev and tests).
    pub tls: Option<TlsClientConfig>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

impl UpstreamConfig {
    /// Reads `{prefix}_ADDR` (default `default_addr`) and `{prefix}_TOKEN`, plus the shared
    /// client TLS files.
    pub fn from_source(reader: &mut crate::Reader<'_>, prefix: &str, default_addr: &str) -> Self {
        let addr = reader.string_or(&format!("{prefix}_ADDR"), default_addr);
        let token = reader
            .optional(&format!("{prefix}_TOKEN"))
            .map(zeroize::Zeroizing::new);
        let ca = reader.optional("SENTIA_CLIENT_CA");
        let cert = reader.optional("SENTIA_CLIENT_CERT");
        let key = reader.optional("SENTIA_CLIENT_KEY");
        let tls = match ca {
            None => {
                if cert.is_some() || key.is_some() {
                    reader.problem(
                        "SENTIA_CLIENT_CERT/SENTIA_CLIENT_KEY need SENTIA_CLIENT_CA (the CA that \
                         signs the other services' certificates)",
                    );
                }
                None
            }
            Some(ca) => match TlsClientConfig::from_files(&ca, cert.as_deref(), key.as_deref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    reader.problem(format!("SENTIA_CLIENT_CA/CERT/KEY: {e}"));
                    None
                }
            },
        };
        Self { addr, token, tls }
    }

    /// A lazily connecting channel that adds the token and trace context to every call.
    pub fn channel(&self) -> Result<AuthedChannel, RuntimeError> {
        let channel = connect_lazy(&self.addr, self.tls.as_ref())?;
        Ok(CallContext::with_token(self.token.as_ref().map(|t| t.as_str()))?.wrap(channel))
    }
}

/// Adds `authorization: Bearer <token>` (when a token is set) and `traceparent`.
#[derive(Clone, Default)]
pub struct CallContext {
    authorization: Option<Arc<AsciiMetadataValue>>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("token", &self.authorization.is_some())
            .finish()
    }
}

impl CallContext {
    /// With a bearer token; INVALID tokens (non-ASCII) are refused here rather than per call.
    pub fn with_token(token: Option<&str>) -> Result<Self, RuntimeError> {
        let authorization = token
            .map(|t| {
                let mut v = AsciiMetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    RuntimeError::Tls("token contains characters not allowed in metadata".into())
                })?;
                v.set_sensitive(true);
                Ok::<_, RuntimeError>(Arc::new(v))
            })
            .transpose()?;
        Ok(Self { authorization })
    }

    /// Wraps a channel.
    pub fn wrap(self, channel: Channel) -> AuthedChannel {
        InterceptedService::new(channel, self)
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            self.0.insert(k, v);
        }
    }
}

impl Interceptor for CallContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(auth) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", (**auth).clone());
        }
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new()
            .inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        Ok(request)
    }
}
