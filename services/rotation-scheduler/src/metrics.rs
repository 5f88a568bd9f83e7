//! OpenTelemetry metrics of the leader: rotations by result, how many secrets are overdue,
//! and how long since each secret last rotated. Exported over OTLP when the runtime's
//! telemetry sets a meter provider (`OTEL_EXPORTER_OTLP_ENDPOINT`); no-ops otherwise.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};

/// The scheduler's instruments.
#[derive(Clone)]
pub struct Metrics {
    rotations: Counter<u64>,
    overdue: Gauge<u64>,
    since_last: Gauge<f64>,
}

impl Metrics {
    /// Instruments on the global meter provider (set it before calling).
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter("rotation-scheduler");
        Self {
            rotations: meter
                .u64_counter("sentia.rotation.rotations")
                .with_description(
                    "Rotation outcomes: completed, rolled_back, parked, or the step that failed",
                )
                .build(),
            overdue: meter
                .u64_gauge("sentia.rotation.overdue")
                .with_description("Secrets past their rotation due date")
                .build(),
            since_last: meter
                .f64_gauge("sentia.rotation.since_last")
                .with_description("Time since each secret last rotated")
                .with_unit("s")
                .build(),
        }
    }

    /// One rotation outcome (`result`: completed, rolled_back, parked, `<step>_failed`,
    /// `<step>_unavailable`).
    pub fn outcome(&self, result: &str, rotator: &str) {
        self.rotations.add(
            1,
            &[
                KeyValue::new("result", result.to_string()),
                KeyValue::new("rotator", rotator.to_string()),
            ],
        );
    }

    /// The overdue count after a scan.
    pub fn overdue(&self, n: u64) {
        self.overdue.record(n, &[]);
    }

    /// Age of a secret's current value.
    pub fn since_last(&self, path: &str, age_ms: i64) {
        self.since_last.record(
            age_ms.max(0) as f64 / 1000.0,
            &[KeyValue::new("path", path.to_string())],
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
