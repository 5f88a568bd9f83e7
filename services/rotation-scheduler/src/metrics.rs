//! OpenTelemetry metrics of the leader: rotations by result, how many secrets are overdue,
//! and how long since each secret last rotated; scheduled backups by outcome, when the last
//! good one ended and its size; stored archives checked, by result, and when every stored
//! copy last checked good. Exported over OTLP when the runtime's
//! telemetry sets a meter provider (`OTEL_EXPORTER_OTLP_ENDPOINT`); no-ops otherwise.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};

/// The scheduler's instruments.
#[derive(Clone)]
pub struct Metrics {
    rotations: Counter<u64>,
    overdue: Gauge<u64>,
    since_last: Gauge<f64>,
    backups: Counter<u64>,
    last_backup: Gauge<f64>,
    backup_bytes: Gauge<u64>,
    archives_checked: Counter<u64>,
    last_good_check: Gauge<f64>,
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
            backups: meter
                .u64_counter("sentia.backup.runs")
                .with_description(
                    "Scheduled backups by outcome: created, partial (a copy failed), failed",
                )
                .build(),
            last_backup: meter
                .f64_gauge("sentia.backup.last_success")
                .with_description("When the newest scheduled backup that made an archive ended")
                .with_unit("s")
                .build(),
            backup_bytes: meter
                .u64_gauge("sentia.backup.size")
                .with_description("Size of the newest scheduled backup's archive")
                .with_unit("By")
                .build(),
            archives_checked: meter
                .u64_counter("sentia.backup.archives_checked")
                .with_description(
                    "Stored archives read back by the scheduled check: verified, failed (or a \
                     destination that could not be listed), skipped (keyed to an earlier master \
                     version)",
                )
                .build(),
            last_good_check: meter
                .f64_gauge("sentia.backup.last_good_check")
                .with_description(
                    "When the newest scheduled check that found every stored archive good ended",
                )
                .with_unit("s")
                .build(),
        }
    }

    /// A scheduled check of the stored archives: how many were verified, skipped and failed;
    /// one that reached every destination and found nothing wrong moves `last_good_check`.
    pub fn check(
        &self,
        verified: u64,
        skipped: u64,
        failed: u64,
        run: &crate::store::BackupOutcome,
    ) {
        for (result, n) in [
            ("verified", verified),
            ("skipped", skipped),
            ("failed", failed),
        ] {
            self.archives_checked
                .add(n, &[KeyValue::new("result", result)]);
        }
        if run.detail.is_none() {
            self.last_good_check
                .record(run.finished_ms.max(0) as f64 / 1000.0, &[]);
        }
    }

    /// A scheduled backup's outcome; one that made an archive moves `last_success`.
    pub fn backup(&self, run: &crate::store::BackupOutcome) {
        self.backups.add(1, &[KeyValue::new("result", run.outcome)]);
        if run.archive.is_some() {
            self.last_backup
                .record(run.finished_ms.max(0) as f64 / 1000.0, &[]);
        }
    }

    /// The size of the archive a scheduled backup made.
    pub fn backup_size(&self, bytes: u64) {
        self.backup_bytes.record(bytes, &[]);
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
