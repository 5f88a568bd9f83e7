//! The keyring store against real databases: SQLite (embedded default) and Postgres
//! (`SENTIA_TEST_POSTGRES_URL`, each test in its own fresh database).
#![allow(clippy::unwrap_used)]

use key_service::KeyError;
use key_service::store::{Escrow, KeyRow, MetaRow, Store, now_ms};

use sentia_testkit::keys as support;

async fn sqlite_store() -> Store {
    Store::connect(&support::sqlite_url(), 4).await.unwrap()
}

async fn postgres_store() -> Option<Store> {
    let url = support::postgres_url().await?;
    Some(Store::connect(&url, 4).await.unwrap())
}

fn key(name: &str) -> KeyRow {
    KeyRow {
        name: name.into(),
        purpose: "encryption".into(),
        primary_version: 1,
        min_decryption_version: 1,
        auto_rotate_secs: None,
        created_at: now_ms(),
    }
}

async fn a_key_round_trips_and_cannot_be_created_twice(store: Store) {
    store
        .create_key(&key("vault"), vec![1, 2, 3])
        .await
        .unwrap();
    let err = store.create_key(&key("vault"), vec![9]).await.unwrap_err();
    assert!(matches!(err, KeyError::AlreadyExists(_)), "{err:?}");
    let row = store.key("vault").await.unwrap().unwrap();
    assert_eq!((row.primary_version, row.min_decryption_version), (1, 1));
    let versions = store.versions("vault").await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        versions[0].wrapped_material,
        vec![1, 2, 3],
        "the first write was kept whole"
    );
    assert!(store.key("nope").await.unwrap().is_none());
}

async fn only_one_of_two_rotations_from_the_same_primary_wins(store: Store) {
    store.create_key(&key("jwt"), vec![1]).await.unwrap();
    let (a, b) = tokio::join!(
        store.add_version("jwt", 2, vec![2]),
        store.add_version("jwt", 2, vec![3])
    );
    let wins = [a, b].into_iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(wins, 1);
    assert_eq!(store.key("jwt").await.unwrap().unwrap().primary_version, 2);
    assert_eq!(store.versions("jwt").await.unwrap().len(), 2);
    assert!(
        !store.add_version("jwt", 2, vec![4]).await.unwrap(),
        "a stale rotation loses"
    );
}

async fn encryption_reservations_accumulate_and_policy_persists(store: Store) {
    store.create_key(&key("k"), vec![1]).await.unwrap();
    assert_eq!(store.reserve_encryptions("k", 1, 100).await.unwrap(), 100);
    assert_eq!(store.reserve_encryptions("k", 1, 50).await.unwrap(), 150);
    assert_eq!(store.versions("k").await.unwrap()[0].encryption_count, 150);
    store.set_policy("k", 1, Some(3600)).await.unwrap();
    assert_eq!(
        store.key("k").await.unwrap().unwrap().auto_rotate_secs,
        Some(3600)
    );
}

async fn master_metadata_is_written_once(store: Store) {
    assert!(store.meta().await.unwrap().is_none());
    let meta = MetaRow {
        master_version: 1,
        check_blob: vec![7; 40],
        seal_type: "shamir".into(),
        shamir_shares: 5,
        shamir_threshold: 3,
        recovery: None,
    };
    store.init_meta(&meta).await.unwrap();
    assert!(
        store.init_meta(&meta).await.is_err(),
        "a second initialization must fail"
    );
    let got = store.meta().await.unwrap().unwrap();
    assert_eq!(
        (got.master_version, got.shamir_threshold, got.check_blob),
        (1, 3, vec![7; 40])
    );
    assert!(got.recovery.is_none());
    let escrow = Escrow {
        blob: vec![9; 80],
        fingerprint: "0123456789abcdef".into(),
    };
    assert!(
        !store.set_escrow(2, &escrow).await.unwrap(),
        "an escrow for a master version that is not current is not stored"
    );
    assert!(store.set_escrow(1, &escrow).await.unwrap());
    let stored = store.meta().await.unwrap().unwrap().recovery.unwrap();
    assert_eq!(
        (stored.blob, stored.fingerprint),
        (escrow.blob, escrow.fingerprint)
    );
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite_store().await).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() {
                if let Some(store) = super::postgres_store().await { super::$name(store).await; }
            })*
        }
    };
}

on_both_databases!(
    a_key_round_trips_and_cannot_be_created_twice,
    only_one_of_two_rotations_from_the_same_primary_wins,
    encryption_reservations_accumulate_and_policy_persists,
    master_metadata_is_written_once,
);
