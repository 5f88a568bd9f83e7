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
    Ok(endpoint.connect().await?)
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
