//! Every RPC through the shared server stack and through an outgoing [`AuthedChannel`] is
//! counted and timed as the OpenTelemetry semantic conventions' `rpc.server.duration` and
//! `rpc.client.duration`, read here through the SDK's in-memory exporter.
#![allow(clippy::unwrap_used)]

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::{CallContext, connect};
use sentia_runtime::{Server, ServerConfig, Shutdown};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_are_counted_and_timed_at_both_ends_by_service_method_and_status() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        Server::new(ServerConfig::dev("metered", TokenTable::default()))
            .serve(Routes::default(), listener, stop)
            .await
            .unwrap()
    });
    let mut client =
        HealthClient::new(CallContext::default().wrap(connect(&addr, None).await.unwrap()));
    for _ in 0..3 {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    shutdown.trigger();
    server.await.unwrap();

    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let server = points(&all, "rpc.server.duration");
    let client = points(&all, "rpc.client.duration");
    let server_count = |status: &str| count(&server, status, &[("sentia.server", "metered")]);
    let client_count = |status: &str| count(&client, status, &[]);
    assert_eq!(server_count("0"), 3, "{server:?}");
    assert_eq!(server_count("5"), 1, "NOT_FOUND counted apart: {server:?}");
    assert_eq!(client_count("0"), 3, "{client:?}");
    assert_eq!(
        client_count("5"),
        1,
        "the client sees the same status: {client:?}"
    );
}

type Points = Vec<(Vec<(String, String)>, u64)>;

/// Every data point of the histogram `name`: its attributes and count.
fn points(all: &[opentelemetry_sdk::metrics::data::ResourceMetrics], name: &str) -> Points {
    let mut points = Vec::new();
    for rm in all {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                assert_eq!(m.unit(), "ms");
                let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
                    panic!("{name} is a histogram: {:?}", m.data());
                };
                for p in h.data_points() {
                    let attrs: Vec<(String, String)> = p
                        .attributes()
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    points.push((attrs, p.count()));
                }
            }
        }
    }
    points
}

/// Health Check calls with `status` (and the `extra` attributes) among `points`.
fn count(points: &Points, status: &str, extra: &[(&str, &str)]) -> u64 {
    points
        .iter()
        .filter(|(a, _)| {
            let has = |k: &str, v: &str| a.iter().any(|(ak, av)| ak == k && av == v);
            has("rpc.system", "grpc")
                && has("rpc.service", "grpc.health.v1.Health")
                && has("rpc.method", "Check")
                && has("rpc.grpc.status_code", status)
                && extra.iter().all(|(k, v)| has(k, v))
        })
        .map(|(_, n)| n)
        .sum()
}
