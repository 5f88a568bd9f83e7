//! The metrics a dashboard reads, through the OpenTelemetry SDK's in-memory exporter: the
//! record cache's hits and misses (its hit ratio) and key-service's operations by key and
//! version, after a write and two reads.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use support::{Backend, Stack, get};

/// Sum of the counter `name`'s points whose attributes include all of `want`.
fn sum(all: &[ResourceMetrics], name: &str, want: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for rm in all.iter().rev().take(1) {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                let AggregatedMetrics::U64(MetricData::Sum(s)) = m.data() else {
                    panic!("{name} is a u64 counter: {:?}", m.data());
                };
                for p in s.data_points() {
                    let attrs: Vec<(String, String)> = p
                        .attributes()
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    if want
                        .iter()
                        .all(|(k, v)| attrs.iter().any(|(ak, av)| ak == k && av == v))
                    {
                        total += p.value();
                    }
                }
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_and_misses_and_key_operations_are_counted() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let s = Stack::start(Backend::Sqlite, &[("SENTIA_DEK_CACHE_TTL", "0s")])
        .await
        .unwrap();
    s.put("prod/app/metered", b"v").await;
    let mut c = s.secrets(&s.root_token).await;
    for _ in 0..2 {
        c.get_secret(get("prod/app/metered")).await.unwrap();
    }
    s.stop().await;
    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();

    let lookups = "sentia.vault.cache.lookups";
    assert_eq!(
        sum(&all, lookups, &[("cache", "local"), ("result", "miss")]),
        1
    );
    assert_eq!(
        sum(&all, lookups, &[("cache", "local"), ("result", "hit")]),
        1
    );
    let ops = "sentia.keys.operations";
    let generate = [
        ("operation", "generate_data_key"),
        ("key", "vault"),
        ("version", "1"),
        ("result", "ok"),
    ];
    assert_eq!(sum(&all, ops, &generate), 1, "the write's data key");
    let unwrap = [
        ("operation", "unwrap_data_key"),
        ("version", "1"),
        ("result", "ok"),
    ];
    assert_eq!(
        sum(&all, ops, &unwrap),
        2,
        "each read unwraps (no data-key cache here)"
    );
}
