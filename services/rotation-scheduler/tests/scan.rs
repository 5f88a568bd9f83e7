//! What a scan costs vault-service: a secret that looks due is described once per CURRENT
//! version, not on every pass — counted through `rpc.client.duration`, the scheduler's own
//! client metric, read from the SDK's in-memory exporter (which also counts the scans: each
//! lists the secrets once).
#![allow(clippy::unwrap_used)]

mod support;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use support::vault::keys::sqlite_url;
use support::*;

/// `method` calls to vault-service made so far in this process.
fn calls(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter, method: &str) -> u64 {
    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let Some(rm) = all.last() else {
        return 0;
    };
    let mut n = 0;
    for sm in rm.scope_metrics() {
        for m in sm.metrics().filter(|m| m.name() == "rpc.client.duration") {
            let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
                panic!("rpc.client.duration is a histogram");
            };
            n += h
                .data_points()
                .filter(|p| {
                    p.attributes()
                        .any(|kv| kv.key.as_str() == "rpc.method" && kv.value.as_str() == method)
                })
                .map(|p| p.count())
                .sum::<u64>();
        }
    }
    n
}

/// Waits until `at_least` DescribeSecret calls were made, then until ten more scans (each
/// one ListSecrets) have passed, and returns the count.
async fn describes_after_more_scans(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
    at_least: u64,
) -> u64 {
    let describes = || calls(provider, exporter, "DescribeSecret");
    for _ in 0..200 {
        if describes() >= at_least {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let scans = calls(provider, exporter, "ListSecrets");
    for _ in 0..400 {
        if calls(provider, exporter, "ListSecrets") >= scans + 10 {
            return describes();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("ten more scans did not happen in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_manual_secret_is_described_once_per_current_version_not_every_scan() {
    let (provider, exporter) = in_memory_metrics();

    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    put_tagged(&s, "prod/db/manual", "database_password", b"first").await;
    // 181 days later the manual secret (180 d) is overdue; the scheduler scans every 50 ms.
    clock.advance(181 * DAY);
    let sched = Scheduler::start(&s, &sqlite_url(), hooks(&clock)).await;
    assert_eq!(
        describes_after_more_scans(&provider, &exporter, 1).await,
        1,
        "many scans, one DescribeSecret while CURRENT stays the same"
    );

    // A person writes a new value: CURRENT moves, the secret is described once more and is
    // no longer due.
    put_tagged(&s, "prod/db/manual", "database_password", b"second").await;
    assert_eq!(describes_after_more_scans(&provider, &exporter, 2).await, 2);
    sched.stop().await;
    s.stop().await;
}
