//! Outgoing gRPC connections, shared by the SDK, the CLI and every service that calls
//! another: TLS or plaintext channels, and [`AuthedChannel`], which adds the bearer token to
//! every call and runs it in a client span whose W3C trace context it propagates. It depends
//! on the OpenTelemetry API only; the application decides whether spans and metrics go
//! anywhere.
#![forbid(unsafe_code)]

pub mod rpc;
pub mod tls;

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use thiserror::Error;

use opentelemetry::trace::{TraceContextExt, TraceFlags};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::rpc::{BoxFuture, RpcDuration, RpcName, Side, status_code};
use crate::tls::TlsClientConfig;

/// Why a channel could not be set up (never a call's failure: that is the call's status).
#[derive(Debug, Error)]
pub enum ChannelError {
    /// Certificates or keys could not be read or used.
    #[error("tls: {0}")]
    Tls(String),
    /// A bearer token holds characters that metadata cannot carry.
    #[error("tls: token contains characters not allowed in metadata")]
    Token,
    /// The address or transport settings were refused.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Connects to `address` (`host:port`, or a full `http://`/`https://` URI). With `tls`, the
/// connection is TLS (mutual when the config has an identity).
pub async fn connect(
    address: &str,
    tls: Option<&TlsClientConfig>,
) -> Result<Channel, ChannelError> {
    Ok(endpoint(address, tls)?.connect().await?)
}

/// Like [`connect`], but connects on first use and reconnects after failures: for a service
/// whose upstream may start after it.
pub fn connect_lazy(address: &str, tls: Option<&TlsClientConfig>) -> Result<Channel, ChannelError> {
    Ok(endpoint(address, tls)?.connect_lazy())
}

fn endpoint(address: &str, tls: Option<&TlsClientConfig>) -> Result<Endpoint, ChannelError> {
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
    pub fn from_source(
        reader: &mut sentia_config::Reader<'_>,
        prefix: &str,
        default_addr: &str,
    ) -> Self {
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
    pub fn channel(&self) -> Result<AuthedChannel, ChannelError> {
        let channel = connect_lazy(&self.addr, self.tls.as_ref())?;
        Ok(CallContext::with_token(self.token.as_ref().map(|t| t.as_str()))?.wrap(channel))
    }
}

/// The credentials an outgoing call carries: `authorization: Bearer <token>` when a token
/// is set (mTLS callers need none). Clones share one token, so a client that renews its
/// login replaces the token of every channel it handed out at once ([`CallContext::set_token`]).
#[derive(Clone, Default)]
pub struct CallContext {
    authorization: Arc<RwLock<Option<Arc<http::HeaderValue>>>>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("token", &self.current().is_some())
            .finish()
    }
}

/// `Bearer <token>` as a sensitive header value; tokens metadata cannot carry are refused.
fn bearer(token: &str) -> Result<Arc<http::HeaderValue>, ChannelError> {
    let mut v = http::HeaderValue::try_from(format!("Bearer {token}"))
        .ok()
        .filter(|v| v.to_str().is_ok())
        .ok_or(ChannelError::Token)?;
    v.set_sensitive(true);
    Ok(Arc::new(v))
}

impl CallContext {
    /// With a bearer token; invalid tokens (non-ASCII) are refused here rather than per call.
    pub fn with_token(token: Option<&str>) -> Result<Self, ChannelError> {
        let authorization = token.map(bearer).transpose()?;
        Ok(Self {
            authorization: Arc::new(RwLock::new(authorization)),
        })
    }

    /// Replaces the token for every call made from now on through this context or a clone.
    pub fn set_token(&self, token: Option<&str>) -> Result<(), ChannelError> {
        let authorization = token.map(bearer).transpose()?;
        if let Ok(mut current) = self.authorization.write() {
            *current = authorization;
        }
        Ok(())
    }

    fn current(&self) -> Option<Arc<http::HeaderValue>> {
        self.authorization.read().ok().and_then(|a| a.clone())
    }

    /// Wraps a channel.
    pub fn wrap(self, channel: Channel) -> AuthedChannel {
        AuthedChannel {
            channel,
            context: self,
            metrics: RpcDuration::new(Side::Client),
        }
    }
}

/// A channel whose calls carry credentials and run in an RPC client span (semantic
/// conventions: `otel.kind = client`, `rpc.system`, `rpc.service`, `rpc.method`,
/// `rpc.grpc.status_code`), whose W3C `traceparent` the server continues; each call is also
/// timed as `rpc.client.duration`. The span ends when the response headers arrive, so for a
/// stream it covers opening it.
#[derive(Clone, Debug)]
pub struct AuthedChannel {
    channel: Channel,
    context: CallContext,
    metrics: RpcDuration,
}

impl tower::Service<http::Request<Body>> for AuthedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let name = RpcName::of(request.uri());
        let span = rpc::span(&name, Side::Client);
        if let Some(auth) = self.context.current() {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, (*auth).clone());
        }
        inject_trace_context(&span, request.headers_mut());
        let response = self.channel.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let response = response.instrument(span.clone()).await;
            // A call that never got an answer is what tonic reports as UNAVAILABLE.
            let code = response.as_ref().map_or(14, status_code);
            rpc::record_status(&span, Side::Client, code);
            metrics.record(started, name, code, &[]);
            response
        })
    }
}

/// Writes the span's W3C trace context (`traceparent`, and `tracestate` when it has one) so
/// the server continues the trace. The format is fixed by the W3C recommendation, which is
/// why the SDK's propagator is not needed here: this crate depends on the OpenTelemetry API
/// only, and an application that never sets up tracing sends nothing.
fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags() & TraceFlags::SAMPLED
    );
    if let Ok(value) = http::HeaderValue::try_from(traceparent) {
        headers.insert("traceparent", value);
    }
    let state = span_context.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = http::HeaderValue::try_from(state)
    {
        headers.insert("tracestate", value);
    }
}
