//! One GetSecret is one trace across services: an OTLP receiver (the collector's gRPC trace
//! service) runs inside this test, the runtime's telemetry exports to it, and the spans of
//! vault-service and key-service arrive with one trace id: key-service's server span is the
//! child of vault-service's client span of the call, itself inside vault-service's GetSecret.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sentia_runtime::MapSource;
use support::{Stack, get};

/// Every span received, in arrival order.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// True if `s` is `ancestor` or below it.
fn descends<'a>(by_id: &HashMap<Vec<u8>, &'a Span>, mut s: &'a Span, ancestor: &[u8]) -> bool {
    loop {
        if s.span_id == ancestor {
            return true;
        }
        match by_id.get(&s.parent_span_id) {
            Some(p) => s = p,
            None => return false,
        }
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            Value::IntValue(v) => Some(v.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_get_secret_is_one_trace_across_vault_and_key_service() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    let telemetry = sentia_runtime::telemetry::init(
        "sentia-trace-test",
        &MapSource::from_pairs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("SENTIA_LOG", "info"),
        ]),
    )
    .unwrap();

    // audit-service, to see the trace id in the audit event.
    let keys = support::keys::Running::start(&support::keys::sqlite_url(), &[]).await;
    let audit_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audit_addr = audit_listener.local_addr().unwrap().to_string();
    let (audit_db, tokens) = (support::keys::sqlite_url(), support::keys::tokens());
    let audit_config = audit_service::Config::from_source(&MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_DATABASE_URL", audit_db.as_str()),
        ("SENTIA_KEY_SERVICE_ADDR", keys.addr.as_str()),
        ("SENTIA_KEY_SERVICE_TOKEN", support::keys::SERVICE_TOKEN),
        ("SENTIA_AUTH_TOKENS", tokens.as_str()),
    ]))
    .unwrap();
    let audit_stop = sentia_runtime::Shutdown::new();
    let stop = audit_stop.clone();
    tokio::spawn(async move {
        audit_service::run(audit_config, audit_listener, stop)
            .await
            .unwrap()
    });
    let spool = sentia_testkit::scratch_path(&support::unique("trace_spool"))
        .display()
        .to_string();
    // No data-key cache: the read must ask key-service to unwrap.
    let s = Stack::start_vault(
        keys,
        support::keys::sqlite_url(),
        &[
            ("SENTIA_DEK_CACHE_TTL", "0s"),
            ("SENTIA_AUDIT_DISABLED", "false"),
            ("SENTIA_AUDIT_SERVICE_ADDR", audit_addr.as_str()),
            ("SENTIA_AUDIT_SERVICE_TOKEN", support::keys::SERVICE_TOKEN),
            ("SENTIA_AUDIT_SPOOL", spool.as_str()),
        ],
    )
    .await;
    s.put("prod/app/traced", b"v").await;
    let got = s
        .secrets(&s.root_token)
        .await
        .get_secret(get("prod/app/traced"))
        .await
        .unwrap();
    let request_id = got
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut reader = sentia_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        sentia_runtime::client::CallContext::with_token(Some(support::keys::ADMIN_TOKEN))
            .unwrap()
            .wrap(sentia_runtime::client::connect_lazy(&audit_addr, None).unwrap()),
    );
    let read_event = reader
        .query_events(sentia_proto::audit::v1::QueryEventsRequest {
            secret_name: "prod/app/traced".into(),
            event_type: "secret_access".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .filter_map(|r| r.event)
        .find(|e| e.request_id == request_id)
        .expect("the read was audited");
    s.stop().await;
    audit_stop.trigger();
    drop(telemetry); // flushes the batch exporter

    let spans = receiver.0.lock().unwrap().clone();
    let get_span = spans
        .iter()
        .find(|s| {
            s.name == "sentia.vault.v1.SecretService/GetSecret"
                && attr(s, "request_id").as_deref() == Some(request_id.as_str())
        })
        .unwrap_or_else(|| panic!("no GetSecret span among {} spans", spans.len()));
    assert_eq!(attr(get_span, "server").as_deref(), Some("vault-service"));
    assert_eq!(attr(get_span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(get_span, "rpc.grpc.status_code").as_deref(), Some("0"));
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let unwrap = spans
        .iter()
        .filter(|s| s.name == "sentia.keys.v1.KeyService/UnwrapDataKey")
        .find(|s| s.trace_id == get_span.trace_id)
        .expect("key-service's UnwrapDataKey span is in the GetSecret trace");
    assert_eq!(attr(unwrap, "server").as_deref(), Some("key-service"));
    assert!(
        descends(&by_id, unwrap, &get_span.span_id),
        "UnwrapDataKey's span descends from GetSecret's"
    );
    assert_eq!(unwrap.kind, get_span.kind, "both server spans");
    // Between them, vault-service's client span of the call: the server span's parent.
    let call = by_id
        .get(&unwrap.parent_span_id)
        .expect("UnwrapDataKey's parent span was exported");
    assert_eq!(call.name, unwrap.name);
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(attr(call, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(call, "rpc.method").as_deref(), Some("UnwrapDataKey"));
    assert_eq!(attr(call, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert!(
        descends(&by_id, call, &get_span.span_id),
        "the client span is inside GetSecret's"
    );
    assert!(call.start_time_unix_nano >= get_span.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= get_span.end_time_unix_nano);
    let trace_hex: String = get_span
        .trace_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        read_event.correlation_id, trace_hex,
        "the audit event's correlation id is the trace id"
    );
}
