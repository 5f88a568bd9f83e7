//! Keyring upkeep: auto-rotation by period, and picking up another replica's rotation.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use key_service::core::Core;
use key_service::keyring::Purpose;
use key_service::store::Store;
use sentia_crypto::MasterKey;
use sqlx::Executor;

async fn upkeep_rotates_overdue_keys_and_sees_other_replicas(url: String) {
    let master = MasterKey::generate();
    let replica_a = Core::new(
        Store::connect(&url, 2).await.unwrap(),
        "master-key",
        1 << 32,
        vec![],
        None,
    );
    let replica_b = Core::new(
        Store::connect(&url, 2).await.unwrap(),
        "master-key",
        1 << 32,
        vec![],
        None,
    );
    replica_a.unseal(&master, None).await.unwrap();
    replica_b.unseal(&master, None).await.unwrap();
    replica_a
        .create_key("hourly", Purpose::Encryption, Some(3600))
        .await
        .unwrap();
    replica_a
        .create_key("manual", Purpose::Encryption, None)
        .await
        .unwrap();
    assert_eq!(
        replica_b.entry("hourly").await.unwrap().row.primary_version,
        1
    );

    // Not yet due: nothing rotates.
    replica_a.maintain().await.unwrap();
    assert_eq!(
        replica_a.entry("hourly").await.unwrap().row.primary_version,
        1
    );

    // Make version 1 two hours old, as if time had passed.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    pool.execute("UPDATE key_versions SET created_at = created_at - 7200000")
        .await
        .unwrap();
    replica_a.maintain().await.unwrap();
    assert_eq!(
        replica_a.entry("hourly").await.unwrap().row.primary_version,
        2
    );
    assert_eq!(
        replica_a.entry("manual").await.unwrap().row.primary_version,
        1,
        "no period, no rotation"
    );

    // Replica B still caches version 1 as primary until its own upkeep reloads.
    assert_eq!(
        replica_b.entry("hourly").await.unwrap().row.primary_version,
        1
    );
    replica_b.maintain().await.unwrap();
    assert_eq!(
        replica_b.entry("hourly").await.unwrap().row.primary_version,
        2
    );
}

#[tokio::test]
async fn on_sqlite_upkeep_rotates_overdue_keys_and_sees_other_replicas() {
    upkeep_rotates_overdue_keys_and_sees_other_replicas(support::sqlite_url()).await;
}

#[tokio::test]
async fn on_postgres_upkeep_rotates_overdue_keys_and_sees_other_replicas() {
    if let Some(url) = support::postgres_url().await {
        upkeep_rotates_overdue_keys_and_sees_other_replicas(url).await;
    }
}
