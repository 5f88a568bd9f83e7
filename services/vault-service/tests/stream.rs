//! WatchSecrets: ordered change events, filtered by prefix, resumable without loss.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;
use sentia_testkit::on_both_backends;

use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use support::Stack;
use tonic::Code;
use tonic::Streaming;

on_both_backends!(
    a_watcher_that_reconnects_from_its_last_sequence_misses_no_event,
    concurrent_writes_through_two_replicas_are_each_in_the_stream_once_in_order_when_answered,
);

/// The next change event, skipping bookmarks.
async fn next(stream: &mut Streaming<pb::SecretEvent>) -> pb::SecretEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no event within 10 s")
            .unwrap()
            .expect("stream ended");
        if e.kind != pb::EventKind::Bookmark as i32 {
            return e;
        }
    }
}

fn summary(e: &pb::SecretEvent) -> (i32, String, Vec<u64>, String) {
    (e.kind, e.path.clone(), e.versions.clone(), e.label.clone())
}

async fn a_watcher_that_reconnects_from_its_last_sequence_misses_no_event(s: &Stack) {
    use pb::EventKind as K;
    let path = "prod/app/watched";
    let mut c = s.secrets(&s.root_token).await;
    let mut stream = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: "prod/app".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        first.kind,
        K::Bookmark as i32,
        "a watch opens with its position"
    );
    s.put("dev/app/elsewhere", b"x").await; // outside the prefix: never delivered
    s.put(path, b"1").await;
    let created = next(&mut stream).await;
    assert_eq!(
        summary(&created),
        (
            K::VersionCreated as i32,
            path.into(),
            vec![1],
            String::new()
        )
    );
    let label = next(&mut stream).await;
    assert_eq!(
        summary(&label),
        (K::LabelMoved as i32, path.into(), vec![1], "CURRENT".into())
    );
    assert_eq!(label.sequence, created.sequence + 1);
    let last_seen = label.sequence;
    drop(stream);

    // While disconnected: more writes, a delete, a destroy, and noise outside the prefix.
    s.put(path, b"2").await;
    s.put("dev/app/elsewhere", b"y").await;
    c.delete_secret(pb::DeleteSecretRequest {
        path: path.into(),
        versions: vec![1],
    })
    .await
    .unwrap();
    c.destroy_secret_versions(pb::DestroySecretVersionsRequest {
        path: path.into(),
        versions: vec![1],
    })
    .await
    .unwrap();

    let mut resumed = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: "prod/app/".into(),
            after_sequence: last_seen,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..5 {
        let e = next(&mut resumed).await;
        sequences.push(e.sequence);
        got.push(summary(&e));
    }
    assert_eq!(
        got,
        vec![
            (
                K::VersionCreated as i32,
                path.into(),
                vec![2],
                String::new()
            ),
            (
                K::LabelMoved as i32,
                path.into(),
                vec![1],
                "PREVIOUS".into()
            ),
            (K::LabelMoved as i32, path.into(), vec![2], "CURRENT".into()),
            (K::Deleted as i32, path.into(), vec![1], String::new()),
            (K::Destroyed as i32, path.into(), vec![1], String::new()),
        ]
    );
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert!(sequences[0] > last_seen);

    // A live event after catching up arrives too.
    s.put(path, b"3").await;
    assert_eq!(next(&mut resumed).await.versions, vec![3]);

    let mut ahead = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: String::new(),
            after_sequence: 1_000_000,
        })
        .await
        .unwrap()
        .into_inner();
    let err = ahead.message().await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let err = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: "bad//prefix".into(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Writers on two replicas of one database, eight paths each written five times at once: when
/// the last write is answered every change is already numbered, the numbers have no gaps, and
/// each path's versions are in the order they were written.
async fn concurrent_writes_through_two_replicas_are_each_in_the_stream_once_in_order_when_answered(
    s: &Stack,
) {
    use pb::EventKind as K;
    let replica = s.replica(&[]).await;
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    let head = |pool: sqlx::AnyPool| async move {
        let (h,): (i64,) = sqlx::query_as("SELECT sequence FROM stream_head WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        h
    };
    s.put("seed/app/first", b"0").await; // so the watch below starts after a real position
    let before = head(pool.clone()).await;
    assert!(before > 0);
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = if w % 2 == 0 {
            s.secrets(&s.root_token).await
        } else {
            replica.secrets(&s.root_token)
        };
        writers.push(tokio::spawn(async move {
            for v in 1..=5u8 {
                c.put_secret(support::put(&format!("load/app/p{w}"), &[v]))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // Per write: VersionCreated, LabelMoved CURRENT, and from the second on LabelMoved PREVIOUS.
    let expected = 8 * (5 * 2 + 4);
    let (numbered,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM secret_events WHERE path LIKE 'load/%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(numbered, expected, "every answered write is in the stream");
    assert_eq!(head(pool.clone()).await, before + expected);

    let mut c = s.secrets(&s.root_token).await;
    let mut stream = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: "load/".into(),
            after_sequence: before as u64,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = before as u64;
    let mut created: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for _ in 0..expected {
        let e = next(&mut stream).await;
        assert_eq!(e.sequence, last + 1, "no gap and no repeat");
        last = e.sequence;
        if e.kind == K::VersionCreated as i32 {
            created.entry(e.path).or_default().extend(e.versions);
        }
    }
    assert_eq!(created.len(), 8);
    for (path, versions) in created {
        assert_eq!(versions, vec![1, 2, 3, 4, 5], "{path}");
    }
    replica.stop().await;
}

/// A writer that committed and died before its events were numbered: the next sequencer pass
/// (on a write, or the poll) numbers them, so watchers still get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_dead_writer_left_unnumbered_still_reach_watchers() {
    let Some(s) = Stack::start(support::Backend::Postgres, &[]).await else {
        return;
    };
    s.put("prod/app/first", b"1").await;
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    sqlx::query(
        "INSERT INTO unsequenced_events (kind, path, versions, label, time) \
         VALUES ($1, 'prod/app/orphan', '[7]', '', 0)",
    )
    .bind(pb::EventKind::VersionCreated as i64)
    .execute(&pool)
    .await
    .unwrap();
    let mut c = s.secrets(&s.root_token).await;
    let mut stream = c
        .watch_secrets(pb::WatchSecretsRequest {
            prefix: "prod/app/orphan".into(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let e = next(&mut stream).await;
    assert_eq!(
        summary(&e),
        (
            pb::EventKind::VersionCreated as i32,
            "prod/app/orphan".into(),
            vec![7],
            String::new()
        )
    );
    let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM unsequenced_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_only_sees_paths_its_policies_may_list_or_read() {
    let Some(s) = Stack::start(support::Backend::Sqlite, &[]).await else {
        return;
    };
    let (dev, _) = s.login_as(&["developer"]).await;
    let mut stream = s
        .secrets(&dev)
        .await
        .watch_secrets(pb::WatchSecretsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // monitoring_system may read prod/monitoring/** but list nothing: it still learns of
    // changes to what it reads, so an agent holding it can follow a rotation.
    let (monitoring, _) = s.login_as(&["monitoring_system"]).await;
    let mut reader = s
        .secrets(&monitoring)
        .await
        .watch_secrets(pb::WatchSecretsRequest::default())
        .await
        .unwrap()
        .into_inner();
    s.put("prod/app/secret", b"x").await;
    s.put("dev/app/visible", b"y").await;
    s.put("prod/monitoring/grafana", b"z").await;
    let e = next(&mut stream).await;
    assert_eq!(e.path, "dev/app/visible");
    let e = next(&mut reader).await;
    assert_eq!(e.path, "prod/monitoring/grafana");
    s.stop().await;
}
