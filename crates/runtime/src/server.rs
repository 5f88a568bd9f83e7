//! The one gRPC server stack every Sentia service runs. The order of the layers, outermost
//! first, is deliberate and lives only here:
//!
//! 1. request context: take or mint `x-request-id`, continue the caller's W3C trace
//!    (`traceparent`), open the RPC span — so everything below, auth failures included, is
//!    traced and carries the request id;
//! 2. authentication: bearer token or mTLS identity -> [`Principal`] in the request
//!    extensions; anything else is refused before it costs a concurrency permit;
//! 3. admission: a per-principal bound on requests in flight (RESOURCE_EXHAUSTED at once
//!    beyond it, so one principal cannot take every permit), then the whole request body is
//!    received within `SENTIA_BODY_TIMEOUT` — a caller that opens requests and stalls holds
//!    only its own principal's slots, never a handler permit;
//! 4. global concurrency limit: bounds in-flight requests across all connections
//!    (back-pressure instead of unbounded queueing);
//! 5. timeout (tonic's, which also honours a shorter client `grpc-timeout`);
//!
//! then the service routes, plus `grpc.health.v1` and reflection, which are always public.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::audit::{CallInfo, Sink};
use crate::auth::{Authenticator, BearerVerifier};
use crate::{Principal, Role, RuntimeError, ServerConfig, Shutdown};
use sentia_channel::rpc::{
    self, BoxFuture, HeaderExtractor, RpcDuration, RpcName, Side, status_code,
};
pub use sentia_identity::RequestId;
use sentia_proto::audit::v1::AuditEvent;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

const REQUEST_ID: &str = "x-request-id";
const ALWAYS_PUBLIC: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Builds and runs a service's gRPC server.
pub struct Server {
    config: ServerConfig,
    public_methods: Vec<&'static str>,
    health: HealthReporter,
    verifier: Option<Arc<dyn BearerVerifier>>,
    audit: Option<Arc<dyn Sink>>,
}

impl Server {
    /// A server for `config`. Health starts as SERVING for the whole server.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            public_methods: Vec::new(),
            health: HealthReporter::new(),
            verifier: None,
            audit: None,
        }
    }

    /// Records calls refused by authentication (bad or missing credentials) as
    /// `auth_decision` events, so brute force shows up in the audit log and its alerts.
    pub fn audit_refusals(mut self, emitter: Arc<dyn Sink>) -> Self {
        self.audit = Some(emitter);
        self
    }

    /// Accepts bearer tokens this verifier recognises (e.g. vault-service's JWTs), besides
    /// the static tokens of the config.
    pub fn bearer_verifier(mut self, verifier: Arc<dyn BearerVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Lets a method be called without credentials (full path, e.g.
    /// `/sentia.keys.v1.SystemService/Status`).
    pub fn public_method(mut self, path: &'static str) -> Self {
        self.public_methods.push(path);
        self
    }

    /// Handle to report per-service health (e.g. NOT_SERVING while sealed).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves `routes` on `listener` until `shutdown`, then drains in-flight calls.
    pub async fn serve(
        self,
        routes: Routes,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), RuntimeError> {
        let cfg = self.config;
        let reflector = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sentia_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflector()
            .build_v1()
            .map_err(|e| RuntimeError::Telemetry(format!("reflection: {e}")))?;
        // v1alpha too: grpcurl and Python's grpcio-reflection still speak it.
        let reflection_alpha = reflector()
            .build_v1alpha()
            .map_err(|e| RuntimeError::Telemetry(format!("reflection: {e}")))?;
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.health),
        );
        let routes = routes
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha);

        let mut public: Vec<&'static str> = ALWAYS_PUBLIC.to_vec();
        public.extend(self.public_methods);
        let mut authenticator =
            Authenticator::new(cfg.tokens.clone(), cfg.admin_identities.clone())
                .with_service_identities(cfg.service_identities.clone());
        if let Some(verifier) = self.verifier {
            authenticator = authenticator.with_verifier(verifier);
        }
        let stack = ServiceBuilder::new()
            .layer(RequestContextLayer {
                service: cfg.service_name,
                metrics: RpcDuration::new(Side::Server),
            })
            .layer(AuthLayer {
                authenticator,
                public: Arc::new(public),
                audit: self.audit,
            })
            .layer(AdmitLayer {
                limits: Arc::new(PrincipalLimits {
                    user: cfg.principal_concurrency,
                    service: cfg.service_concurrency,
                    held: std::sync::Mutex::new(HashMap::new()),
                }),
                body_timeout: cfg.body_timeout,
            })
            .layer(GlobalConcurrencyLimitLayer::new(cfg.concurrency_limit))
            .into_inner();

        let mut builder = tonic::transport::Server::builder().timeout(cfg.request_timeout);
        match &cfg.tls {
            Some(tls) => builder = builder.tls_config(tls.to_tonic())?,
            None => tracing::warn!(
                service = cfg.service_name,
                addr = %listener.local_addr()?,
                "serving PLAINTEXT gRPC: loopback only, never in production"
            ),
        }
        tracing::info!(
            service = cfg.service_name,
            addr = %listener.local_addr()?,
            tls = cfg.tls.is_some(),
            mtls_required = cfg.tls.as_ref().is_some_and(|t| t.requires_client_cert()),
            "listening"
        );
        builder
            .layer(stack)
            .add_routes(routes)
            // Nagle off: small gRPC frames must not wait for delayed ACKs (seen as 40 ms
            // p99 stalls on 1 KiB payloads before this).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.wait(),
            )
            .await?;
        tracing::info!(service = cfg.service_name, "server stopped");
        Ok(())
    }
}

fn valid_request_id(v: &http::HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

/// Layer 1: request id, the RPC span continuing the caller's trace, and the RPC metric.
#[derive(Clone)]
struct RequestContextLayer {
    service: &'static str,
    metrics: RpcDuration,
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            service: self.service,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
struct RequestContext<S> {
    inner: S,
    service: &'static str,
    metrics: RpcDuration,
}

impl<S, B, R> Service<http::Request<B>> for RequestContext<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(valid_request_id)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        req.extensions_mut().insert(RequestId(request_id.clone()));
        let name = RpcName::of(req.uri());
        let span = rpc::span(&name, Side::Server);
        span.record("server", self.service);
        span.record("request_id", request_id.as_str());
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let _ = span.set_parent(parent);

        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let server = self.service;
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut response = inner.call(req).instrument(span.clone()).await?;
            undecodable_request_is_invalid_argument(response.headers_mut());
            let code = status_code(&response);
            rpc::record_status(&span, Side::Server, code);
            metrics.record(
                started,
                name,
                code,
                &[opentelemetry::KeyValue::new("sentia.server", server)],
            );
            if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, v);
            }
            tracing::debug!(parent: &span, code, elapsed_us = started.elapsed().as_micros() as u64, "rpc finished");
            Ok(response)
        })
    }
}

/// What tonic and prost say (as INTERNAL) when a request's bytes are not the message the
/// method takes: invalid UTF-8 in a string, a truncated message, a wrong wire type, nesting
/// past the decoder's limit, a frame cut short.
const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "protocol error: received message with invalid compression flag",
];

/// Rewrites tonic's INTERNAL for a request that could not be decoded to INVALID_ARGUMENT:
/// the bytes are the caller's input, and INTERNAL would page whoever watches error rates.
/// A request that fails to decode is answered before any response message, so the status
/// is in the response headers (trailers-only).
fn undecodable_request_is_invalid_argument(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::Internal
        || !DECODE_FAILURES
            .iter()
            .any(|p| status.message().starts_with(p))
    {
        return;
    }
    let fixed = tonic::Status::invalid_argument(format!(
        "the request is not a valid message for this method: {}",
        status.message()
    ));
    if fixed.add_header(headers).is_err() {
        tracing::warn!("could not rewrite the status of an undecodable request");
    }
}

/// Layer 2: authentication.
#[derive(Clone)]
struct AuthLayer {
    authenticator: Authenticator,
    public: Arc<Vec<&'static str>>,
    audit: Option<Arc<dyn Sink>>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
            public: self.public.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
struct Auth<S> {
    inner: S,
    authenticator: Authenticator,
    public: Arc<Vec<&'static str>>,
    audit: Option<Arc<dyn Sink>>,
}

/// The audit event of a call refused by authentication (no handler ever sees it).
fn refusal_event<B>(req: &http::Request<B>, status: &tonic::Status) -> AuditEvent {
    let source_ip = req
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            req.extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let info = CallInfo {
        principal: String::new(),
        source_ip,
        user_agent: req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect())
            .unwrap_or_default(),
        correlation_id: String::new(),
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
    };
    let mut e = info.event("auth_decision", req.uri().path(), "", Some(status.code()));
    e.operation = e.operation.chars().take(64).collect();
    e
}

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let is_public = self
            .public
            .iter()
            .any(|p| path == *p || (p.ends_with('/') || p.ends_with('.')) && path.starts_with(p));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verdict = self
            .authenticator
            .authenticate(req.headers(), req.extensions());
        let audit = self.audit.clone();
        Box::pin(async move {
            match verdict.await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(_) if is_public => inner.call(req).await,
                Err(status) => {
                    tracing::info!(code = ?status.code(), reason = status.message(), "request refused by authentication");
                    if let Some(audit) = audit {
                        // Best effort: the call is refused whether or not this is recorded.
                        let event = refusal_event(&req, &status);
                        tokio::spawn(async move {
                            if let Err(e) = audit.emit(event).await {
                                tracing::warn!(error = %e, "recording an authentication refusal failed");
                            }
                        });
                    }
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The largest request body received: tonic's default 4 MiB message limit plus the 5-byte
/// gRPC frame header.
const MAX_BODY: usize = 4 * 1024 * 1024 + 5;

/// Requests in flight per principal.
struct PrincipalLimits {
    user: usize,
    service: usize,
    held: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// One request's slot of its principal; the principal's entry goes when its last slot does.
struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    semaphore: Arc<tokio::sync::Semaphore>,
    id: String,
    limit: usize,
    limits: Arc<PrincipalLimits>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Ok(mut held) = self.limits.held.lock()
            // Only the map and this slot hold it, and nobody is in flight: forget it.
            && Arc::strong_count(&self.semaphore) == 2
            && self.semaphore.available_permits() == self.limit
        {
            held.remove(&self.id);
        }
    }
}

impl PrincipalLimits {
    fn limit(&self, p: &Principal) -> usize {
        if p.role == Role::Service {
            self.service
        } else {
            self.user
        }
    }

    /// A slot for `p`, or None when it already has its limit in flight.
    fn try_slot(self: &Arc<Self>, p: &Principal) -> Option<Slot> {
        let limit = self.limit(p);
        let semaphore = {
            let mut held = self.held.lock().ok()?;
            held.entry(p.id.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit)))
                .clone()
        };
        let permit = semaphore.clone().try_acquire_owned().ok()?;
        Some(Slot {
            permit: Some(permit),
            semaphore,
            id: p.id.clone(),
            limit,
            limits: self.clone(),
        })
    }
}

/// Layer 3: per-principal admission and the request body.
#[derive(Clone)]
struct AdmitLayer {
    limits: Arc<PrincipalLimits>,
    body_timeout: Duration,
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            limits: self.limits.clone(),
            body_timeout: self.body_timeout,
        }
    }
}

#[derive(Clone)]
struct Admit<S> {
    inner: S,
    limits: Arc<PrincipalLimits>,
    body_timeout: Duration,
}

impl<S, R> Service<http::Request<tonic::body::Body>> for Admit<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slot = match req.extensions().get::<Principal>() {
            // Public methods (health, reflection) have no principal: the global limit and
            // the body deadline still apply.
            None => None,
            Some(p) => match self.limits.try_slot(p) {
                Some(slot) => Some(slot),
                None => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "'{}' already has {} requests in flight, its limit; retry with backoff",
                        crate::text::clip(&p.id, crate::text::ECHO_MAX),
                        self.limits.limit(p)
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
        };
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let _slot = slot;
            let (parts, body) = req.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_BODY);
            let received =
                tokio::time::timeout(body_timeout, http_body_util::BodyExt::collect(limited)).await;
            let bytes = match received {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "the request is larger than {MAX_BODY} bytes"
                    ))
                    .into_http());
                }
                Ok(Err(e)) => {
                    return Ok(tonic::Status::cancelled(format!(
                        "the request body was not received: {e}"
                    ))
                    .into_http());
                }
                Err(_) => {
                    tracing::info!(
                        timeout_ms = body_timeout.as_millis() as u64,
                        "request body not received in time"
                    );
                    return Ok(tonic::Status::deadline_exceeded(format!(
                        "the request body did not arrive within {} ms (SENTIA_BODY_TIMEOUT)",
                        body_timeout.as_millis()
                    ))
                    .into_http());
                }
            };
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}
