//! The leader's OpenTelemetry metrics, read through the SDK's in-memory exporter: rotations
//! by result, the overdue count and the time since each secret last rotated, all on the
//! injected clock.
#![allow(clippy::unwrap_used)]

mod support;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use rotation_scheduler::Hooks;
use rotation_scheduler::steps::Step;
use sentia_proto::rotation::v1 as pb;
use serde_json::json;
use support::vault::keys::sqlite_url;
use support::*;

/// (attributes, value) of every data point of `name` in the newest export.
fn points(all: &[ResourceMetrics], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    let Some(rm) = all.last() else {
        return out;
    };
    for sm in rm.scope_metrics() {
        for m in sm.metrics().filter(|m| m.name() == name) {
            let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                it.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<Vec<_>>()
            };
            match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        out.push((attrs(&mut p.attributes()), p.value() as f64));
                    }
                }
                AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        out.push((attrs(&mut p.attributes()), p.value() as f64));
                    }
                }
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        out.push((attrs(&mut p.attributes()), p.value()));
                    }
                }
                other => panic!("{name}: unexpected data {other:?}"),
            }
        }
    }
    out
}

fn has(attrs: &[(String, String)], key: &str, value: &str) -> bool {
    attrs.iter().any(|(k, v)| k == key && v == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_by_result_overdue_count_and_age_are_exported() {
    let (provider, exporter) = in_memory_metrics();

    let Some(s) = stack(Backend::Sqlite).await else {
        return;
    };
    let clock = clock();
    let db = sqlite_url();
    let (admin, _) = s.login_as(&["system_admin"]).await;
    s.put("prod/app/good", b"x").await;
    s.put("prod/app/bad", b"x").await;
    put_tagged(&s, "prod/db/manual", "database_password", b"x").await;

    // Ten days after the secrets were written, prod/app/good rotates.
    clock.advance(10 * DAY);
    let sched = Scheduler::start(&s, &db, hooks(&clock)).await;
    let mut c = sched.client(&admin);
    let mut p = policy("prod/app/*", "random", json!({}));
    p.max_attempts = 1;
    c.set_policy(pb::SetPolicyRequest { policy: Some(p) })
        .await
        .unwrap();
    c.rotate_now(pb::RotateNowRequest {
        path: "prod/app/good".into(),
        reason: "metrics".into(),
        emergency: false,
    })
    .await
    .unwrap();
    wait_for(&c, "prod/app/good", Step::Cleanup).await;
    clock.advance(DAY + 1);
    wait_for(&c, "prod/app/good", Step::Completed).await;
    sched.stop().await;

    let failing = Scheduler::start(
        &s,
        &db,
        Hooks {
            fail: Some(Step::Test),
            ..hooks(&clock)
        },
    )
    .await;
    let c = failing.client(&admin);
    c.clone()
        .rotate_now(pb::RotateNowRequest {
            path: "prod/app/bad".into(),
            reason: "metrics".into(),
            emergency: false,
        })
        .await
        .unwrap();
    wait_for(&c, "prod/app/bad", Step::Parked).await;
    // The manual secret falls overdue (180 d); a scan records it.
    clock.advance(181 * DAY);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    failing.stop().await;

    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let rotations = points(&all, "sentia.rotation.rotations");
    let count = |result: &str| -> f64 {
        rotations
            .iter()
            .filter(|(a, _)| has(a, "result", result) && has(a, "rotator", "random"))
            .map(|(_, v)| v)
            .sum()
    };
    // prod/app/bad fails once and is parked — and stays parked when it falls due again;
    // prod/app/good's scheduled rotation (due again after 181 days) fails the same way.
    assert_eq!(count("completed"), 1.0, "{rotations:?}");
    assert_eq!(count("test_failed"), 2.0, "{rotations:?}");
    assert_eq!(count("rolled_back"), 2.0, "{rotations:?}");
    assert_eq!(count("parked"), 2.0, "{rotations:?}");

    let overdue = points(&all, "sentia.rotation.overdue");
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    // The manual secret, prod/app/bad (never rotated) and prod/app/good (rotated 181 days
    // ago, its new rotation parked).
    assert_eq!(overdue[0].1, 3.0, "{overdue:?}");

    let ages = points(&all, "sentia.rotation.since_last");
    let age = |path: &str| {
        ages.iter()
            .find(|(a, _)| has(a, "path", path))
            .map(|(_, v)| *v)
            .unwrap()
    };
    // Now: written + 10 d + 1 d (grace) + 181 d.
    let day = 86_400.0;
    assert!(
        (age("prod/db/manual") - 192.0 * day).abs() < 60.0,
        "{ages:?}"
    );
    assert!(
        (age("prod/app/good") - 182.0 * day).abs() < 60.0,
        "counted from the rotation's finish: {ages:?}"
    );
    s.stop().await;
}
