//! The audit emitter's backlog as OpenTelemetry gauges: with audit-service unreachable, an
//! event goes to the spool, and `sentia.audit.spool.size` shows the bytes waiting.
#![allow(clippy::unwrap_used)]

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use sentia_proto::audit::v1::AuditEvent;
use sentia_runtime::audit::{AuditConfig, Emitter};
use sentia_runtime::{MapSource, Reader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_event_shows_in_the_spool_size_gauge_and_the_queue_drains() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let spool = std::env::temp_dir().join(format!(
        "sentia_gauge_{}_{}.spool",
        std::process::id(),
        sentia_proto::wkt::now_ms()
    ));
    let spool_s = spool.display().to_string();
    // Port 1 on loopback: nothing listens, so every batch is spooled.
    let source = MapSource::from_pairs([
        ("SENTIA_AUDIT_SERVICE_ADDR", "127.0.0.1:1"),
        ("SENTIA_AUDIT_SPOOL", spool_s.as_str()),
        ("SENTIA_AUDIT_TIMEOUT", "200ms"),
    ]);
    let mut reader = Reader::new(&source);
    let config = AuditConfig::from_source(&mut reader, "gauged");
    reader.finish().unwrap();
    let emitter = Emitter::start("gauged", &config).unwrap();
    emitter
        .emit(AuditEvent {
            event_type: "secret_access".into(),
            operation: "read".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let on_disk = std::fs::metadata(&spool).unwrap().len();
    assert!(on_disk > 0, "the event was spooled");

    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let gauge = |name: &str| -> Option<u64> {
        let rm = all.last()?;
        rm.scope_metrics()
            .flat_map(|sm| sm.metrics())
            .filter(|m| m.name() == name)
            .find_map(|m| match m.data() {
                AggregatedMetrics::U64(MetricData::Gauge(g)) => g
                    .data_points()
                    .find(|p| {
                        p.attributes()
                            .any(|kv| kv.key.as_str() == "service" && kv.value.as_str() == "gauged")
                    })
                    .map(|p| p.value()),
                _ => None,
            })
    };
    assert_eq!(gauge("sentia.audit.spool.size"), Some(on_disk));
    assert_eq!(
        gauge("sentia.audit.queue.depth"),
        Some(0),
        "nothing waits in memory"
    );
    let _ = std::fs::remove_file(&spool);
}
