//! Logs, traces and metrics. Logs go to stderr as text or JSON (`SENTIA_LOG_FORMAT`),
//! filtered by `SENTIA_LOG` (default `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans
//! and metrics (`opentelemetry::global::meter`, every `OTEL_METRIC_EXPORT_INTERVAL`, 60 s by
//! default) are also exported over OTLP/gRPC and W3C trace context is propagated.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{RuntimeError, Source};

/// Flushes and stops the span and metric exporters when dropped; keep it alive for the life
/// of `main`.
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown();
        }
    }
}

/// The exporter's own transport logs would otherwise feed back into the exporter.
const QUIET: &[&str] = &[
    "h2=warn",
    "hyper=warn",
    "hyper_util=warn",
    "tonic=warn",
    "tower=warn",
    "opentelemetry=warn",
    "opentelemetry_sdk=warn",
    "opentelemetry_otlp=warn",
    "sqlx=warn",
    "rustls=warn",
];

/// Installs the global subscriber. Must run inside a Tokio runtime (the OTLP exporter needs
/// one). Call once per process.
pub fn init(
    service_name: &'static str,
    source: &dyn Source,
) -> Result<TelemetryGuard, RuntimeError> {
    let mut filter = EnvFilter::try_new(source.get("SENTIA_LOG").unwrap_or_else(|| "info".into()))
        .map_err(|e| RuntimeError::Telemetry(format!("SENTIA_LOG: {e}")))?;
    for directive in QUIET {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let json = matches!(source.get("SENTIA_LOG_FORMAT").as_deref(), Some("json"));
    let (text_layer, json_layer) = if json {
        (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        )
    } else {
        (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        )
    };

    let (provider, meters, otel_layer) = match source.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        None => (None, None, None),
        Some(endpoint) => {
            let resource = Resource::builder().with_service_name(service_name).build();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| RuntimeError::Telemetry(format!("otlp exporter: {e}")))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build();
            let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| RuntimeError::Telemetry(format!("otlp metric exporter: {e}")))?;
            let meters = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metric_exporter).build())
                .with_resource(resource)
                .build();
            opentelemetry::global::set_meter_provider(meters.clone());
            let tracer = provider.tracer(service_name);
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            (
                Some(provider),
                Some(meters),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| RuntimeError::Telemetry(e.to_string()))?;
    Ok(TelemetryGuard { provider, meters })
}
