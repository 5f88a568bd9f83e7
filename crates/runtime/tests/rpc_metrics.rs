//! Every RPC through the shared server stack is counted and timed as the OpenTelemetry
//! semantic conventions' `rpc.server.duration`, read here through the SDK's in-memory
//! exporter.
#![allow(clippy::unwrap_used)]

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::connect;
use sentia_runtime::{Server, ServerConfig, Shutdown};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_are_counted_and_timed_by_service_method_and_status() {
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
    let mut client = HealthClient::new(connect(&addr, None).await.unwrap());
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
    let mut points = Vec::new();
    for rm in &all {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == "rpc.server.duration") {
                assert_eq!(m.unit(), "ms");
                let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
                    panic!("rpc.server.duration is a histogram: {:?}", m.data());
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
    let count = |status: &str| -> u64 {
        points
            .iter()
            .filter(|(a, _)| {
                let has = |k: &str, v: &str| a.iter().any(|(ak, av)| ak == k && av == v);
                has("rpc.system", "grpc")
                    && has("rpc.service", "grpc.health.v1.Health")
                    && has("rpc.method", "Check")
                    && has("rpc.grpc.status_code", status)
                    && has("sentia.server", "metered")
            })
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(count("0"), 3, "{points:?}");
    assert_eq!(count("5"), 1, "NOT_FOUND counted apart: {points:?}");
}
