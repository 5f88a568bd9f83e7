//! Key retirement: after the `vault` key rotates, the background rewrap moves every stored
//! data key to the new version in batches, survives a vault-service stopped in the middle,
//! and raises `min_decryption_version` only once every data key moved — on SQLite and
//! Postgres, against real key-service.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sentia_proto::keys::v1 as kpb;
use sentia_proto::vault::v1 as pb;
use sentia_testkit::{Backend, Stack, get_version, keys};
use sqlx::Row;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_rotated_vault_key_is_retired_only_after_every_data_key_moved_across_a_restart()
{
    retired_only_after_every_data_key_moved(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_rotated_vault_key_is_retired_only_after_every_data_key_moved_across_a_restart()
 {
    retired_only_after_every_data_key_moved(Backend::Postgres).await;
}

/// The background rewrap: two data keys per 200 ms, retiring 300 ms after the last moved
/// (longer than the in-process cache keeps a record).
const REWRAP: &[(&str, &str)] = &[
    ("SENTIA_REWRAP_INTERVAL", "200ms"),
    ("SENTIA_REWRAP_BATCH", "2"),
    ("SENTIA_REWRAP_RETIRE_DELAY", "300ms"),
    ("SENTIA_LOCAL_CACHE_TTL", "200ms"),
];

async fn status(s: &Stack) -> pb::RewrapStatus {
    s.secrets(&s.root_token)
        .await
        .get_rewrap_status(pb::GetRewrapStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Polls the status until `done` holds (60 s at most), checking on every look that older
/// versions are never retired while a data key still needs them.
async fn watch(s: &Stack, done: impl Fn(&pb::RewrapStatus) -> bool) -> pb::RewrapStatus {
    for _ in 0..6000 {
        let st = status(s).await;
        assert!(
            st.remaining == 0 || st.min_decryption_version < st.primary_version,
            "retired while {} data keys still need an older version: {st:?}",
            st.remaining
        );
        if done(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rewrap never got there; last {:?}", status(s).await);
}

async fn retired_only_after_every_data_key_moved(backend: Backend) {
    // Written with the rewrap off: 3 secrets x 4 versions, one destroyed (it holds no key).
    let Some(s) = Stack::start(backend, &[("SENTIA_REWRAP_INTERVAL", "0")]).await else {
        return;
    };
    let mut c = s.secrets(&s.root_token).await;
    for i in 0..3 {
        for v in 0..4 {
            s.put(
                &format!("prod/app/k{i}"),
                format!("value-{i}-{v}").as_bytes(),
            )
            .await;
        }
    }
    c.destroy_secret_versions(pb::DestroySecretVersionsRequest {
        path: "prod/app/k0".into(),
        versions: vec![1],
    })
    .await
    .unwrap();
    let st = status(&s).await;
    assert_eq!(
        (st.total, st.remaining),
        (11, 0),
        "all on version 1: {st:?}"
    );

    // An old wrapped data key, to show later that version 1 no longer opens.
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    let old_wrap: Vec<u8> = sqlx::query(
        "SELECT wrapped_key FROM secret_versions WHERE path = 'prod/app/k1' AND version = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("wrapped_key");

    let admin = s.keys.client(Some(keys::ADMIN_TOKEN)).await;
    admin
        .clone()
        .rotate_key(kpb::RotateKeyRequest {
            name: "vault".into(),
            stage: false,
        })
        .await
        .unwrap();
    let st = status(&s).await;
    assert_eq!(
        (st.primary_version, st.min_decryption_version, st.remaining),
        (2, 1, 11),
        "nothing moves while the rewrap is off: {st:?}"
    );

    // Rewrap on; stopped once some (not all) data keys moved: a crash in the middle.
    let s = restart_with(s, REWRAP).await;
    let mid = watch(&s, |st| st.remaining > 0 && st.remaining < 11).await;
    assert_eq!(mid.min_decryption_version, 1);
    // Every value reads in the middle, moved or not.
    let mut c = s.secrets(&s.root_token).await;
    for i in 0..3 {
        let r = c
            .get_secret(get_version(&format!("prod/app/k{i}"), 4))
            .await
            .unwrap();
        assert_eq!(r.into_inner().value, format!("value-{i}-3").as_bytes());
    }
    let s = restart_with(s, REWRAP).await;

    // The new process resumes from the database and retires version 1 only at 100%.
    let done = watch(&s, |st| st.min_decryption_version == 2).await;
    assert_eq!((done.total, done.remaining), (11, 0), "{done:?}");
    assert_eq!(done.by_key_version.get(&2), Some(&11));
    let mut c = s.secrets(&s.root_token).await;
    for i in 0..3 {
        for v in 1..=4u64 {
            let r = c
                .get_secret(get_version(&format!("prod/app/k{i}"), v))
                .await;
            if (i, v) == (0, 1) {
                assert_eq!(r.unwrap_err().code(), Code::FailedPrecondition, "destroyed");
            } else {
                assert_eq!(
                    r.unwrap().into_inner().value,
                    format!("value-{i}-{}", v - 1).as_bytes()
                );
            }
        }
    }
    // The data key wrapped under version 1 no longer opens at key-service.
    let e = s
        .keys
        .client(Some(keys::SERVICE_TOKEN))
        .await
        .unwrap_data_key(kpb::UnwrapDataKeyRequest {
            wrapped_key: old_wrap,
            encryption_context: b"vault|prod/app/k1|2".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    pool.close().await;
    s.stop().await;
}

/// Stops vault-service and starts a new one on the same database and key-service with
/// `settings` (the root token minted at the first start stays valid).
async fn restart_with(s: Stack, settings: &[(&str, &str)]) -> Stack {
    let (database_url, root) = (s.database_url.clone(), s.root_token.clone());
    let mut s = Stack::start_vault(s.stop_vault().await, database_url, settings).await;
    s.root_token = root;
    s
}
