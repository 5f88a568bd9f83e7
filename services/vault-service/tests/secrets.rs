//! SecretService over gRPC against real key-service, on SQLite and on Postgres.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;
use sentia_testkit::on_both_backends;

use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use support::{Stack, get, get_label, get_version, put};
use tonic::Code;

on_both_backends!(
    an_earlier_version_is_restored_as_a_new_current_version,
    versions_labels_and_describe_follow_each_write,
    bad_input_gets_invalid_argument_with_a_reason,
    concurrent_check_and_set_writers_exactly_one_wins,
    twenty_unconditional_writers_of_one_path_all_succeed,
    a_retried_put_with_the_same_request_id_writes_once,
    delete_undelete_and_destroy_change_what_reads_return,
    old_versions_beyond_max_versions_are_destroyed,
    list_pages_by_prefix_and_batch_get_reports_per_item,
    metadata_updates_apply_only_masked_fields,
    an_expired_secret_is_refused_unless_the_reader_allows_expired,
);

/// Sets (or with None, clears) `path`'s expiry.
async fn set_expiry(
    c: &mut pb::secret_service_client::SecretServiceClient<sentia_runtime::client::AuthedChannel>,
    path: &str,
    ms: Option<i64>,
) {
    c.update_secret_metadata(pb::UpdateSecretMetadataRequest {
        metadata: Some(pb::SecretMetadata {
            path: path.into(),
            expire_time: ms.map(sentia_proto::wkt::timestamp),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expire_time".into()],
        }),
    })
    .await
    .unwrap();
}

async fn an_expired_secret_is_refused_unless_the_reader_allows_expired(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/legacy/key";
    s.put(path, b"old").await;
    let now = sentia_proto::wkt::now_ms();
    set_expiry(&mut c, path, Some(now + 86_400_000)).await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"old",
        "not expired yet"
    );
    // Expired an hour ago: every selector is refused, with when and what to do.
    let at = now - 3_600_000;
    set_expiry(&mut c, path, Some(at)).await;
    for req in [get(path), get_version(path, 1), get_label(path, "CURRENT")] {
        let e = c.get_secret(req).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let when = sentia_proto::wkt::utc(at / 1000);
        assert!(e.message().contains(&format!("expired at {when}")), "{e:?}");
        assert!(e.message().contains("allow_expired"), "{e:?}");
    }
    let batch = c
        .batch_get_secrets(pb::BatchGetSecretsRequest {
            requests: vec![get(path)],
        })
        .await
        .unwrap()
        .into_inner();
    use pb::batch_get_result::Result as R;
    assert!(
        matches!(&batch.results[0].result, Some(R::Error(e)) if e.code == Code::FailedPrecondition as i32)
    );
    // Asked for: served.
    let r = c
        .get_secret(pb::GetSecretRequest {
            allow_expired: true,
            ..get(path)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.value, b"old");
    // Metadata stays readable; extending (or clearing) the expiry serves it again.
    c.describe_secret(pb::DescribeSecretRequest { path: path.into() })
        .await
        .unwrap();
    set_expiry(&mut c, path, None).await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"old"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_read_through_the_caches_is_refused_and_an_allowed_one_is_audited_and_alerted() {
    let Some(sandbox) = sentia_testkit::Sandbox::builder()
        .vault()
        .redis()
        .audit()
        .start()
        .await
    else {
        return;
    };
    let s = sandbox.vault();
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/cached/key";
    s.put(path, b"v").await;
    // Warm the in-process and Redis caches, then expire it: the caches do not serve it.
    for _ in 0..2 {
        c.get_secret(get(path)).await.unwrap();
    }
    set_expiry(&mut c, path, Some(sentia_proto::wkt::now_ms() - 1000)).await;
    let e = c.get_secret(get(path)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    c.get_secret(pb::GetSecretRequest {
        allow_expired: true,
        ..get(path)
    })
    .await
    .unwrap();
    let audit = sandbox.audit();
    let mut ops = Vec::new();
    for _ in 0..200 {
        ops = audit
            .events()
            .await
            .into_iter()
            .filter(|e| e.secret_name == path && e.event_type == "secret_access")
            .map(|e| (e.operation, e.status_code))
            .collect();
        if ops.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want: Vec<(String, String)> = [
        ("read", "OK"),
        ("read", "OK"),
        ("read", "FAILED_PRECONDITION"),
        ("read_expired", "OK"),
    ]
    .iter()
    .map(|(o, c)| (o.to_string(), c.to_string()))
    .collect();
    assert_eq!(ops, want);
    let mut rules = Vec::new();
    for _ in 0..200 {
        rules = audit
            .alerts()
            .await
            .into_iter()
            .filter(|a| a.secret_name == path)
            .map(|a| a.rule)
            .collect::<Vec<_>>();
        if !rules.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rules, ["ExpiredSecretRead"]);
    sandbox.stop().await;
}

async fn versions_labels_and_describe_follow_each_write(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/database/password";
    assert_eq!(s.put(path, b"one").await, 1);
    assert_eq!(s.put(path, b"two").await, 2);

    let cur = c.get_secret(get(path)).await.unwrap().into_inner();
    assert_eq!((cur.version, cur.value.as_slice()), (2, &b"two"[..]));
    assert_eq!(cur.labels, vec!["CURRENT".to_string()]);
    let prev = c
        .get_secret(get_label(path, "PREVIOUS"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((prev.version, prev.value.as_slice()), (1, &b"one"[..]));
    let v1 = c
        .get_secret(get_version(path, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.value, b"one");

    // A rotation-style write: the new version is staged as PENDING, readers keep CURRENT.
    let mut staged = put(path, b"three");
    staged.labels = vec!["PENDING".into()];
    assert_eq!(c.put_secret(staged).await.unwrap().into_inner().version, 3);
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().version,
        2
    );
    let meta = c
        .move_label(pb::MoveLabelRequest {
            path: path.into(),
            label: "CURRENT".into(),
            version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.labels["CURRENT"], 3);
    assert_eq!(meta.labels["PREVIOUS"], 2);
    assert!(
        !meta.labels.contains_key("PENDING"),
        "a promoted version is no longer staged: {:?}",
        meta.labels
    );
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"three"
    );

    let d = c
        .describe_secret(pb::DescribeSecretRequest { path: path.into() })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = d.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(d.versions[0].created_by, "root");
    assert!(d.versions[0].labels.contains(&"CURRENT".to_string()));
    assert!(
        d.versions
            .iter()
            .all(|v| v.key_version >= 1 && v.state == pb::VersionState::Enabled as i32)
    );
    assert_eq!(d.metadata.unwrap().current_version, 3);

    let err = c.get_secret(get_label(path, "CANARY")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("CANARY"), "{err:?}");
    let err = c.get_secret(get_version(path, 9)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.get_secret(get("prod/none")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn bad_input_gets_invalid_argument_with_a_reason(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let cases: Vec<(pb::PutSecretRequest, &str)> = vec![
        (put("", b"x"), "empty"),
        (put("prod/../etc", b"x"), "relative"),
        (put("prod//x", b"x"), "empty segment"),
        (put("/prod/x", b"x"), "start or end"),
        (put("prod/x y", b"x"), "contains"),
        (put("prod/x", &vec![0u8; 65_537]), "65536"),
        (
            pb::PutSecretRequest {
                labels: vec!["lower".into()],
                ..put("prod/x", b"x")
            },
            "label",
        ),
        (
            pb::PutSecretRequest {
                request_id: "a b".into(),
                ..put("prod/x", b"x")
            },
            "request_id",
        ),
        (
            pb::PutSecretRequest {
                metadata: Some(pb::SecretMetadata {
                    max_versions: 500,
                    ..Default::default()
                }),
                ..put("prod/x", b"x")
            },
            "max_versions",
        ),
        (
            pb::PutSecretRequest {
                metadata: Some(pb::SecretMetadata {
                    tier: 9,
                    ..Default::default()
                }),
                ..put("prod/x", b"x")
            },
            "tier",
        ),
        (
            pb::PutSecretRequest {
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["value".into()],
                }),
                ..put("prod/x", b"x")
            },
            "update_mask",
        ),
    ];
    for (req, hint) in cases {
        let err = c.put_secret(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hint}: {err:?}");
        assert!(err.message().contains(hint), "{hint}: {}", err.message());
    }
    // Nothing was half-written by the refused calls.
    let listed = c
        .list_secrets(pb::ListSecretsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.secrets.is_empty(), "{listed:?}");

    s.put("prod/x", b"x").await;
    let err = c.get_secret(get_version("prod/x", 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .destroy_secret_versions(pb::DestroySecretVersionsRequest {
            path: "prod/x".into(),
            versions: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("irreversible"));
    let err = c
        .list_secrets(pb::ListSecretsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .list_secrets(pb::ListSecretsRequest {
            page_token: "!!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .batch_get_secrets(pb::BatchGetSecretsRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .batch_get_secrets(pb::BatchGetSecretsRequest {
            requests: vec![get("prod/x"); 101],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .move_label(pb::MoveLabelRequest {
            path: "prod/x".into(),
            label: "CURRENT".into(),
            version: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .update_secret_metadata(pb::UpdateSecretMetadataRequest {
            metadata: Some(pb::SecretMetadata {
                path: "prod/x".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("update_mask"));
}

async fn twenty_unconditional_writers_of_one_path_all_succeed(s: &Stack) {
    // A write that did not ask for check-and-set must not fail because others write too
    // (before: 17% failed with 4 writers, 70% with 20).
    let path = "prod/app/busy";
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let mut c = s.secrets(&s.root_token).await;
        writers.spawn(async move { c.put_secret(put(path, &[b'a' + i])).await });
    }
    let mut versions = Vec::new();
    while let Some(r) = writers.join_next().await {
        versions.push(r.unwrap().unwrap().into_inner().version);
    }
    versions.sort();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>(), "one version each");
}

async fn concurrent_check_and_set_writers_exactly_one_wins(s: &Stack) {
    let path = "prod/app/cas";
    s.put(path, b"v1").await;
    for round in 1..=5u64 {
        let mut a = s.secrets(&s.root_token).await;
        let mut b = s.secrets(&s.root_token).await;
        let req = |v: &[u8]| pb::PutSecretRequest {
            expected_version: Some(round),
            ..put(path, v)
        };
        let (ra, rb) = tokio::join!(a.put_secret(req(b"a")), b.put_secret(req(b"b")));
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {ra:?} {rb:?}");
        let err = ra.err().or(rb.err()).unwrap();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("check-and-set"), "{err:?}");
    }
    let mut c = s.secrets(&s.root_token).await;
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().version,
        6
    );
    // A stale expected version is refused without writing.
    let err = c
        .put_secret(pb::PutSecretRequest {
            expected_version: Some(2),
            ..put(path, b"late")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("version 6, not 2"), "{err:?}");
    // expected_version 0 = create only.
    let err = c
        .put_secret(pb::PutSecretRequest {
            expected_version: Some(0),
            ..put(path, b"new")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.put_secret(pb::PutSecretRequest {
        expected_version: Some(0),
        ..put("prod/app/fresh", b"new")
    })
    .await
    .unwrap();
}

async fn a_retried_put_with_the_same_request_id_writes_once(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let req = pb::PutSecretRequest {
        request_id: "req-42".into(),
        ..put("prod/app/idem", b"v")
    };
    let first = c.put_secret(req.clone()).await.unwrap().into_inner();
    let again = c.put_secret(req).await.unwrap().into_inner();
    assert_eq!(first, again);
    let d = c
        .describe_secret(pb::DescribeSecretRequest {
            path: "prod/app/idem".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.versions.len(), 1);
    let err = c
        .put_secret(pb::PutSecretRequest {
            request_id: "req-42".into(),
            ..put("prod/app/other", b"v")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("prod/app/idem"));
}

fn restore(path: &str, version: u64, cas: Option<u64>) -> pb::RestoreSecretVersionRequest {
    pb::RestoreSecretVersionRequest {
        path: path.into(),
        version,
        expected_version: cas,
        request_id: String::new(),
    }
}

async fn an_earlier_version_is_restored_as_a_new_current_version(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "test/app/restored";
    for v in [b"good", b"oops"] {
        s.put(path, v).await;
    }
    let r = c.restore_secret_version(restore(path, 1, Some(2))).await;
    assert_eq!(r.unwrap().into_inner().version, 3);
    let now = c.get_secret(get(path)).await.unwrap().into_inner();
    assert_eq!((now.version, now.value.as_slice()), (3, &b"good"[..]));
    let previous = c.get_secret(get_label(path, "PREVIOUS")).await.unwrap();
    assert_eq!(
        previous.into_inner().version,
        2,
        "the mistaken value is kept"
    );

    // A restore that fails changes nothing, and says why.
    let refused = [
        (
            restore(path, 2, Some(2)),
            Code::FailedPrecondition,
            "check-and-set",
        ),
        (restore(path, 9, None), Code::NotFound, "9"),
        (restore(path, 0, None), Code::InvalidArgument, "version"),
        (
            restore("test/app/none", 1, None),
            Code::NotFound,
            "test/app/none",
        ),
    ];
    for (req, code, hint) in refused {
        let err = c.restore_secret_version(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(hint), "{hint}: {err:?}");
    }
    c.destroy_secret_versions(pb::DestroySecretVersionsRequest {
        path: path.into(),
        versions: vec![2],
    })
    .await
    .unwrap();
    let err = c
        .restore_secret_version(restore(path, 2, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Read alone is not enough: a restore writes.
    let (reader, _) = s.login_as(&["deployment_engineer"]).await;
    let err = s
        .secrets(&reader)
        .await
        .restore_secret_version(restore(path, 1, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().version,
        3,
        "no refused restore wrote a version"
    );
}

async fn delete_undelete_and_destroy_change_what_reads_return(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/app/lifecycle";
    for v in [b"a", b"b", b"c"] {
        s.put(path, v).await;
    }
    let d = c
        .delete_secret(pb::DeleteSecretRequest {
            path: path.into(),
            versions: vec![1],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.versions, vec![1]);
    let err = c.get_secret(get_version(path, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("Undelete"), "{err:?}");
    let u = c
        .undelete_secret(pb::UndeleteSecretRequest {
            path: path.into(),
            versions: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.versions, vec![1]);
    assert_eq!(
        c.get_secret(get_version(path, 1))
            .await
            .unwrap()
            .into_inner()
            .value,
        b"a"
    );

    let x = c
        .destroy_secret_versions(pb::DestroySecretVersionsRequest {
            path: path.into(),
            versions: vec![2],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(x.versions, vec![2]);
    let err = c.get_secret(get_version(path, 2)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("destroyed"));
    let err = c
        .undelete_secret(pb::UndeleteSecretRequest {
            path: path.into(),
            versions: vec![2],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Crypto-shred: the stored row keeps neither ciphertext nor wrapped data key.
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    let row: (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT ciphertext, wrapped_key FROM secret_versions WHERE path = $1 AND version = 2",
    )
    .bind(path)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, (None, None));
    // Deleting everything deletes what is enabled; unknown versions are NOT_FOUND.
    let d = c
        .delete_secret(pb::DeleteSecretRequest {
            path: path.into(),
            versions: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.versions, vec![1, 3]);
    let err = c
        .delete_secret(pb::DeleteSecretRequest {
            path: path.into(),
            versions: vec![9],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete_secret(pb::DeleteSecretRequest {
            path: "prod/app/none".into(),
            versions: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn old_versions_beyond_max_versions_are_destroyed(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/app/pruned";
    c.put_secret(pb::PutSecretRequest {
        metadata: Some(pb::SecretMetadata {
            max_versions: 2,
            ..Default::default()
        }),
        ..put(path, b"1")
    })
    .await
    .unwrap();
    for v in [b"2", b"3", b"4"] {
        s.put(path, v).await;
    }
    let d = c
        .describe_secret(pb::DescribeSecretRequest { path: path.into() })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<(u64, i32)> = d.versions.iter().map(|v| (v.version, v.state)).collect();
    let (en, de) = (
        pb::VersionState::Enabled as i32,
        pb::VersionState::Destroyed as i32,
    );
    assert_eq!(states, vec![(4, en), (3, en), (2, de), (1, de)]);
}

async fn list_pages_by_prefix_and_batch_get_reports_per_item(s: &Stack) {
    for p in [
        "prod/app/a",
        "prod/app/b",
        "prod/app/c",
        "prod/apps/x",
        "prod/app",
        "dev/app/a",
    ] {
        s.put(p, b"v").await;
    }
    let mut c = s.secrets(&s.root_token).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_secrets(pb::ListSecretsRequest {
                prefix: "prod/app/".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.secrets.len() <= 2);
        seen.extend(page.secrets.into_iter().map(|m| m.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec!["prod/app", "prod/app/a", "prod/app/b", "prod/app/c"]
    );

    let r = c
        .batch_get_secrets(pb::BatchGetSecretsRequest {
            requests: vec![get("prod/app/a"), get("prod/missing"), get("bad//path")],
        })
        .await
        .unwrap()
        .into_inner();
    use pb::batch_get_result::Result as R;
    assert!(matches!(&r.results[0].result, Some(R::Secret(s)) if s.value == b"v"));
    assert!(matches!(&r.results[1].result, Some(R::Error(e)) if e.code == Code::NotFound as i32));
    assert!(
        matches!(&r.results[2].result, Some(R::Error(e)) if e.code == Code::InvalidArgument as i32)
    );
}

async fn metadata_updates_apply_only_masked_fields(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/app/meta";
    c.put_secret(pb::PutSecretRequest {
        metadata: Some(pb::SecretMetadata {
            tier: 1,
            owner: "payments".into(),
            description: "stripe key".into(),
            tags: [("team".to_string(), "pay".to_string())].into(),
            ..Default::default()
        }),
        ..put(path, b"v")
    })
    .await
    .unwrap();
    let m = c
        .update_secret_metadata(pb::UpdateSecretMetadataRequest {
            metadata: Some(pb::SecretMetadata {
                path: path.into(),
                owner: "billing".into(),
                description: "not applied".into(),
                rotate_by_time: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner".into(), "rotate_by_time".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.owner, "billing");
    assert_eq!(m.description, "stripe key");
    assert_eq!(m.tier, 1);
    assert_eq!(m.tags["team"], "pay");
    assert_eq!(m.rotate_by_time.unwrap().seconds, 2_000_000_000);
    let err = c
        .update_secret_metadata(pb::UpdateSecretMetadataRequest {
            metadata: Some(pb::SecretMetadata {
                path: "prod/app/none".into(),
                owner: "x".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Listing by prefix must not depend on the database's collation: under a locale collation
/// (ICU en-US here; glibc's en_US ignores '/' entirely) text ranges no longer follow bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_listing_is_exact_under_a_locale_collation() {
    let Some(url) = support::keys::postgres_database(
        "sentia_icu",
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
    )
    .await
    else {
        return;
    };
    let keys = support::keys::Running::start(&support::sqlite_url(), &[]).await;
    let s = Stack::start_vault(keys, url, &[]).await;
    for p in ["prod/A/x", "prod/a/y", "prod/a", "prod/ab/z", "prod/a-b/w"] {
        s.put(p, b"v").await;
    }
    let listed: Vec<String> = s
        .secrets(&s.root_token)
        .await
        .list_secrets(pb::ListSecretsRequest {
            prefix: "prod/a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secrets
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(listed, vec!["prod/a", "prod/a/y"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_refused_from_the_exact_millisecond_it_expires_on_an_injected_clock() {
    let clock = sentia_runtime::Clock::manual(sentia_proto::wkt::now_ms());
    let Some(s) = Stack::start_with_clock(support::Backend::Sqlite, &[], clock.clone()).await
    else {
        return;
    };
    let mut c = s.secrets(&s.root_token).await;
    let path = "prod/soon/key";
    s.put(path, b"v").await;
    let expires = clock.now_ms() + 3_600_000;
    set_expiry(&mut c, path, Some(expires)).await;
    clock.advance(3_600_000 - 1);
    assert_eq!(
        c.get_secret(get(path)).await.unwrap().into_inner().value,
        b"v",
        "one millisecond before"
    );
    clock.advance(1);
    let e = c.get_secret(get(path)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "at the expiry: {e:?}");
    s.stop().await;
}
