//! The Redis cache of sealed records: filled on reads, invalidated by writes, and never
//! needed: with Redis gone every read is served from the database. Plus pub/sub fan-out of
//! change-stream positions between replicas.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use support::{Backend, Proxy, Stack, get, get_version};
use tonic::Code;
use vault_service::cache::Cache;
use vault_service::stream::Notifier;

async fn stack_with_redis(redis: &str, prefix: &str) -> Option<Stack> {
    Stack::start(
        Backend::Postgres,
        &[("SENTIA_REDIS_URL", redis), ("SENTIA_REDIS_PREFIX", prefix)],
    )
    .await
}

async fn keys_under(redis: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fill_the_cache_and_every_write_invalidates_what_it_changed() {
    let Some(redis) = support::redis_url() else {
        return;
    };
    let prefix = format!("{}:", support::unique("cache"));
    let Some(s) = stack_with_redis(&redis, &prefix).await else {
        return;
    };
    let path = "prod/app/cached";
    let mut c = s.secrets(&s.root_token).await;
    s.put(path, b"one").await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"one"
    );
    let keys = keys_under(&redis, &prefix).await;
    assert!(
        keys.iter().any(|k| k.ends_with(&format!("view:{path}"))),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with(&format!("rec:{path}:1"))),
        "{keys:?}"
    );
    // New version: the cached view (CURRENT -> 1) must not be served.
    s.put(path, b"two").await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"two"
    );
    // State change of a cached record.
    c.get_secret(get_version(path, 1)).await.unwrap();
    c.delete_secret(pb::DeleteSecretRequest {
        path: path.into(),
        versions: vec![1],
    })
    .await
    .unwrap();
    let err = c.get_secret(get_version(path, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Destroy removes the sealed record (and its wrapped key) from Redis too.
    c.destroy_secret_versions(pb::DestroySecretVersionsRequest {
        path: path.into(),
        versions: vec![1],
    })
    .await
    .unwrap();
    let keys = keys_under(&redis, &prefix).await;
    assert!(
        !keys.iter().any(|k| k.ends_with(&format!("rec:{path}:1"))),
        "{keys:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_mid_test_reads_and_writes_are_still_served() {
    let Some(redis) = support::redis_url() else {
        return;
    };
    let proxy = Proxy::start(&redis).await;
    let prefix = format!("{}:", support::unique("down"));
    let Some(s) = stack_with_redis(&proxy.url, &prefix).await else {
        return;
    };
    let path = "prod/app/resilient";
    let mut c = s.secrets(&s.root_token).await;
    s.put(path, b"one").await;
    c.get_secret(get(path)).await.unwrap();
    assert!(
        !keys_under(&redis, &prefix).await.is_empty(),
        "cache was not used before the cut"
    );

    proxy.cut();
    for _ in 0..3 {
        assert_eq!(
            c.get_secret(get(path)).await.unwrap().into_inner().value,
            b"one"
        );
    }
    s.put(path, b"two").await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"two"
    );
    c.describe_secret(pb::DescribeSecretRequest { path: path.into() })
        .await
        .unwrap();
    s.stop().await;
}

/// Reads `path` on `c` until it returns `want` (other replicas' writes arrive by event).
async fn eventually_reads(
    c: &mut sentia_proto::vault::v1::secret_service_client::SecretServiceClient<
        sentia_runtime::client::AuthedChannel,
    >,
    path: &str,
    want: &[u8],
) {
    for _ in 0..100 {
        if c.get_secret(get(path)).await.unwrap().into_inner().value == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never read back {want:?} on the other replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_reaches_the_others_in_process_cache() {
    let Some(redis) = support::redis_url() else {
        return;
    };
    let prefix = format!("{}:", support::unique("replicas"));
    let Some(s) = stack_with_redis(&redis, &prefix).await else {
        return;
    };
    let b = s
        .replica(&[
            ("SENTIA_REDIS_URL", redis.as_str()),
            ("SENTIA_REDIS_PREFIX", prefix.as_str()),
        ])
        .await;
    // A third replica without Redis still converges, through its change-stream poll.
    let c = s.replica(&[]).await;
    let path = "prod/app/shared";
    s.put(path, b"one").await;
    let (mut rb, mut rc) = (b.secrets(&s.root_token), c.secrets(&s.root_token));
    eventually_reads(&mut rb, path, b"one").await;
    eventually_reads(&mut rc, path, b"one").await;
    s.put(path, b"two").await;
    eventually_reads(&mut rb, path, b"two").await;
    eventually_reads(&mut rc, path, b"two").await;
    // A destroy on one replica is honoured by the others' caches.
    s.secrets(&s.root_token)
        .await
        .destroy_secret_versions(pb::DestroySecretVersionsRequest {
            path: path.into(),
            versions: vec![2],
        })
        .await
        .unwrap();
    for r in [&mut rb, &mut rc] {
        let mut gone = false;
        for _ in 0..100 {
            if r.get_secret(get(path)).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            gone,
            "a destroyed version was still served by another replica"
        );
    }
    b.stop().await;
    c.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_positions_fan_out_to_other_replicas_through_redis() {
    let Some(redis) = support::redis_url() else {
        return;
    };
    let prefix = format!("{}:", support::unique("fanout"));
    let cache =
        |p: &str| std::sync::Arc::new(Cache::new(&redis, p, Duration::from_secs(30)).unwrap());
    let a = Notifier::new(0, Some(cache(&prefix)));
    let b = Notifier::new(0, Some(cache(&prefix)));
    let shutdown = sentia_runtime::Shutdown::new();
    b.listen(redis.clone(), shutdown.clone());
    let mut rx = b.subscribe();
    // The subscription is asynchronous: publish until replica b has seen it.
    let mut seen = false;
    for i in 1..=50u64 {
        a.committed(i).await;
        if tokio::time::timeout(Duration::from_millis(100), rx.changed())
            .await
            .is_ok()
        {
            seen = *rx.borrow() >= 1;
            break;
        }
    }
    assert!(seen, "replica b never heard of replica a's commit");
    shutdown.trigger();
}
