//! Fail closed before the effect: with audit-service unreachable and the spool unusable, a
//! key change whose event cannot be recorded is never made.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use sentia_proto::keys::v1::{CreateKeyRequest, KeyPurpose, RotateKeyRequest};
use support::Running;
use tonic::Code;

async fn count(db: &str, sql: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(db).await.unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_whose_events_cannot_be_recorded_are_not_made() {
    sqlx::any::install_default_drivers();
    let db = support::sqlite_url();
    // Nothing listens on port 1; /dev/full fails every spool write with ENOSPC.
    let keys = Running::start(
        &db,
        &[
            ("SENTIA_AUDIT_DISABLED", "false"),
            ("SENTIA_AUDIT_SERVICE_ADDR", "127.0.0.1:1"),
            ("SENTIA_AUDIT_SERVICE_TOKEN", support::SERVICE_TOKEN),
            ("SENTIA_AUDIT_SPOOL", "/dev/full"),
            ("SENTIA_AUDIT_TIMEOUT", "200ms"),
        ],
    )
    .await;
    let versions = "SELECT COUNT(*) FROM key_versions WHERE key_name = 'vault'";
    let before = count(&db, versions).await;
    let mut admin = keys.client(Some(support::ADMIN_TOKEN)).await;
    let err = admin
        .rotate_key(RotateKeyRequest {
            name: "vault".into(),
            stage: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("was not made"), "{err:?}");
    assert_eq!(count(&db, versions).await, before, "no new key version");
    let err = admin
        .create_key(CreateKeyRequest {
            name: "extra".into(),
            purpose: KeyPurpose::Encryption as i32,
            auto_rotate_period: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM keys WHERE name = 'extra'").await,
        0,
        "no new key"
    );
    keys.stop().await;
}
