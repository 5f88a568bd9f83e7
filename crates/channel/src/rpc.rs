//! What the server stack and outgoing channels share to describe a gRPC call the way the
//! OpenTelemetry semantic conventions for RPC do: its name, its status, the duration metric,
//! and W3C trace context carried in HTTP/2 headers. Public for the server stack in
//! `sentia-runtime`; callers of the SDK have no use for it.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::propagation::Extractor;

/// The future a tower service in this stack returns.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A call's `/package.Service/Method` path split the way span names and attributes use it.
pub struct RpcName {
    /// `package.Service/Method` (the span name).
    pub path: String,
    /// `package.Service` (`rpc.service`).
    pub service: String,
    /// `Method` (`rpc.method`).
    pub method: String,
}

impl RpcName {
    /// Splits a request URI's path.
    pub fn of(uri: &http::Uri) -> Self {
        let path = uri.path().trim_start_matches('/').to_string();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let (service, method) = (service.to_string(), method.to_string());
        Self {
            path,
            service,
            method,
        }
    }
}

/// The gRPC status of a response whose headers have arrived: a trailers-only response (every
/// refusal and handler error) carries it in the headers; otherwise the call succeeded so far
/// and its trailers say OK.
pub fn status_code<B>(response: &http::Response<B>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0)
}

/// Which end of the call a span or metric describes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that answers.
    Server,
    /// The end that calls.
    Client,
}

/// Whether a status marks the span as failed (`otel.status_code = ERROR`). Per the
/// conventions a client fails on every non-OK code, a server only on codes that mean it
/// failed, not the caller (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS).
fn is_error(side: Side, code: i32) -> bool {
    match side {
        Side::Client => code != 0,
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// The span of one call at `side` (semantic conventions: `otel.kind`, `rpc.system`,
/// `rpc.service`, `rpc.method`; `rpc.grpc.status_code` and `otel.status_code` come with
/// [`record_status`]; servers also record `server` and `request_id`).
pub fn span(name: &RpcName, side: Side) -> tracing::Span {
    let kind = match side {
        Side::Server => "server",
        Side::Client => "client",
    };
    tracing::info_span!(
        "rpc",
        otel.name = %name.path,
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %name.service,
        rpc.method = %name.method,
        rpc.grpc.status_code = tracing::field::Empty,
        server = tracing::field::Empty,
        request_id = tracing::field::Empty,
    )
}

/// Records a call's gRPC status on its span, marking the span failed where the conventions
/// say so for `side`.
pub fn record_status(span: &tracing::Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", code);
    if is_error(side, code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// `rpc.server.duration` / `rpc.client.duration` (milliseconds, by `rpc.system`,
/// `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, plus one attribute naming this end:
/// `sentia.server` on servers, since `sentia dev` runs every service under one resource).
/// Their counts are the request counts.
#[derive(Clone)]
pub struct RpcDuration {
    histogram: opentelemetry::metrics::Histogram<f64>,
}

impl std::fmt::Debug for RpcDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcDuration")
    }
}

impl RpcDuration {
    /// The histogram for `side`, from the global meter provider.
    pub fn new(side: Side) -> Self {
        let (name, description) = match side {
            Side::Server => ("rpc.server.duration", "Duration of inbound RPCs"),
            Side::Client => ("rpc.client.duration", "Duration of outbound RPCs"),
        };
        Self {
            histogram: opentelemetry::global::meter("sentia-runtime")
                .f64_histogram(name)
                .with_description(description)
                .with_unit("ms")
                .build(),
        }
    }

    /// Records one call that started at `started` and ended with `code`.
    pub fn record(&self, started: Instant, name: RpcName, code: i32, extra: &[KeyValue]) {
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", name.service),
            KeyValue::new("rpc.method", name.method),
            KeyValue::new("rpc.grpc.status_code", i64::from(code)),
        ];
        attributes.extend_from_slice(extra);
        self.histogram
            .record(started.elapsed().as_secs_f64() * 1000.0, &attributes);
    }
}

/// Reads trace context from request headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_path_splits_into_service_and_method() {
        let name = RpcName::of(&http::Uri::from_static(
            "/sentia.keys.v1.KeyService/Encrypt",
        ));
        assert_eq!(name.path, "sentia.keys.v1.KeyService/Encrypt");
        assert_eq!(name.service, "sentia.keys.v1.KeyService");
        assert_eq!(name.method, "Encrypt");
    }

    #[test]
    fn servers_fail_their_spans_only_on_their_own_faults_clients_on_any_non_ok() {
        // INVALID_ARGUMENT (3) is the caller's fault; INTERNAL (13) is the server's.
        assert!(!is_error(Side::Server, 3));
        assert!(is_error(Side::Server, 13));
        assert!(is_error(Side::Client, 3));
        assert!(!is_error(Side::Client, 0));
        assert!(!is_error(Side::Server, 0));
    }

    #[test]
    fn the_status_of_a_trailers_only_response_is_read_from_its_headers() {
        let refused = http::Response::builder()
            .header("grpc-status", "7")
            .body(())
            .unwrap_or_default();
        assert_eq!(status_code(&refused), 7);
        assert_eq!(status_code(&http::Response::new(())), 0);
    }
}
