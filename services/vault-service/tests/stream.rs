//! WatchSecrets: ordered change events, filtered by prefix, resumable without loss.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use support::Stack;
use tonic::Code;
use tonic::Streaming;

on_both_backends!(a_watcher_that_reconnects_from_its_last_sequence_misses_no_event);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_only_sees_paths_its_policies_may_list() {
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
    s.put("prod/app/secret", b"x").await;
    s.put("dev/app/visible", b"y").await;
    let e = next(&mut stream).await;
    assert_eq!(e.path, "dev/app/visible");
    s.stop().await;
}
