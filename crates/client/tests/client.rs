//! The client SDK against real key-service and vault-service: retries through an outage,
//! resumable watches and a secret kept fresh across a rotation.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use std::time::Duration;

use sentia_client::{Client, ClientError, EventKind};
use sentia_proto::vault::v1 as pb;
use support::kubernetes::{self as k8s, Alg, Cluster};
use support::{Backend, Proxy, Stack};

/// A fresh app credential holding `developer`, its tokens living `ttl_secs` (default 1 h).
async fn developer_credential(
    s: &Stack,
    name: &str,
    ttl_secs: Option<i64>,
) -> pb::CreateAppCredentialResponse {
    s.auth(&s.root_token)
        .await
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: name.into(),
            policies: vec!["developer".into()],
            token_ttl: ttl_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Logs in at `s` with the Kubernetes login role and the token in `token_file`, renewing
/// `before_expiry` ahead.
async fn kubernetes_login(
    s: &Stack,
    token_file: &std::path::Path,
    before_expiry: Duration,
) -> (Client, sentia_client::Login) {
    let credential = sentia_client::Credential::Kubernetes {
        role: k8s::ROLE.into(),
        token_file: token_file.to_path_buf(),
    };
    let renewal = sentia_client::Renewal {
        before_expiry: Some(before_expiry),
    };
    Client::login_with(&s.addr, credential, None, renewal)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_ride_out_a_short_outage_with_retries() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let proxy = Proxy::to(&s.addr).await;
    let c = Client::new(&proxy.addr, Some(&s.root_token), None).unwrap();
    assert_eq!(c.put("prod/app/key", b"one", Some(0)).await.unwrap(), 1);

    proxy.cut();
    let restore = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        proxy
    });
    let got = c.get("prod/app/key").await.unwrap();
    assert_eq!(got.expose(), b"one");
    let _proxy = restore.await.unwrap();
    assert_eq!(c.put("prod/app/key", b"two", Some(1)).await.unwrap(), 2);

    // Errors that are not transient come back at once with their code.
    let err = c.get("prod/app/none").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    let err = c.put("prod/app/key", b"x", Some(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_is_read_only_when_the_caller_says_so() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let c = Client::new(&s.addr, Some(&s.root_token), None).unwrap();
    c.put("prod/app/old", b"v", None).await.unwrap();
    s.secrets(&s.root_token)
        .await
        .update_secret_metadata(pb::UpdateSecretMetadataRequest {
            metadata: Some(pb::SecretMetadata {
                path: "prod/app/old".into(),
                expire_time: Some(sentia_proto::wkt::timestamp(
                    sentia_proto::wkt::now_ms() - 1000,
                )),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["expire_time".into()],
            }),
        })
        .await
        .unwrap();
    let err = c.get("prod/app/old").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert_eq!(c.get_expired("prod/app/old").await.unwrap().expose(), b"v");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_gives_a_client_limited_to_its_policies() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    s.put("dev/app/key", b"dev").await;
    s.put("prod/app/key", b"prod").await;
    let cred = developer_credential(&s, "billing", None).await;
    let (c, login) = Client::login(&s.addr, &cred.role_id, &cred.secret_id, None)
        .await
        .unwrap();
    assert!(!format!("{login:?}").contains(login.token.as_str()));
    assert_eq!(c.get("dev/app/key").await.unwrap().expose(), b"dev");
    let err = c.get("prod/app/key").await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied));
    let err = Client::login(&s.addr, &cred.role_id, "wrong", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Status(st) if st.code() == tonic::Code::Unauthenticated));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_the_connection_drops_and_misses_nothing() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let proxy = Proxy::to(&s.addr).await;
    let c = Client::new(&proxy.addr, Some(&s.root_token), None).unwrap();
    let mut watch = c.watch("prod/app", 0);
    let first = tokio::spawn(async move {
        let e = watch.next().await.unwrap();
        (watch, e)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.put("prod/app/w", b"1").await;
    let (mut watch, e) = first.await.unwrap();
    assert_eq!(
        (e.kind, e.versions.clone()),
        (EventKind::VersionCreated as i32, vec![1])
    );

    proxy.cut();
    // Written while the watcher is cut off (directly, not through the proxy).
    s.put("prod/app/w", b"2").await;
    s.put("prod/app/w", b"3").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    let mut created = Vec::new();
    while created.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .unwrap()
            .unwrap();
        if e.kind == EventKind::VersionCreated as i32 {
            created.extend(e.versions);
        }
    }
    assert_eq!(created, vec![2, 3]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_fresh_follows_current_through_a_staged_rotation() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let path = "prod/database/password";
    s.put(path, b"old-password").await;
    let c = Client::new(&s.addr, Some(&s.root_token), None).unwrap();
    let mut fresh = c.keep_fresh(path).await.unwrap();
    assert_eq!(fresh.current().expose(), b"old-password");

    // Rotation: stage PENDING (readers must stay on the old value), then promote it.
    let mut raw = c.secrets();
    raw.put_secret(pb::PutSecretRequest {
        path: path.into(),
        value: b"new-password".to_vec(),
        labels: vec!["PENDING".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fresh.current().expose(), b"old-password");
    raw.move_label(pb::MoveLabelRequest {
        path: path.into(),
        label: "CURRENT".into(),
        version: 2,
    })
    .await
    .unwrap();
    let now = tokio::time::timeout(Duration::from_secs(10), fresh.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((now.version, now.expose()), (2, &b"new-password"[..]));
    assert_eq!(fresh.current().version, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_client_renews_its_token_before_expiry_and_its_calls_carry_the_new_one() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    s.put("dev/app/renewed", b"v1").await;
    let cred = developer_credential(&s, "long-running", Some(60)).await;
    // Renew with 58 s of the 60 s left: the first renewal comes about 2 s after login.
    let renewal = sentia_client::Renewal {
        before_expiry: Some(Duration::from_secs(58)),
    };
    let credential = sentia_client::Credential::App {
        role_id: cred.role_id.clone(),
        secret_id: cred.secret_id.clone().into(),
    };
    let (c, first) = Client::login_with(&s.addr, credential, None, renewal)
        .await
        .unwrap();
    let clone = c.clone();
    let mut session = c.session().unwrap();
    assert_eq!(session.borrow().renewals, 0);
    let renewed = session
        .wait_for(|state| state.renewals >= 1)
        .await
        .unwrap()
        .clone();
    assert_ne!(renewed.token_id, first.token_id);
    assert!(renewed.expires_at >= first.expires_at);

    // Revoke the first token and wait until vault-service refuses it: the client (and its
    // clone) still read, so every call now carries the renewed token.
    s.auth(&s.root_token)
        .await
        .revoke_token(pb::RevokeTokenRequest {
            token_id: first.token_id.clone(),
        })
        .await
        .unwrap();
    let old = s.auth(&first.token).await;
    loop {
        match old.clone().who_am_i(pb::WhoAmIRequest {}).await {
            Err(e) if e.code() == tonic::Code::Unauthenticated => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(c.get("dev/app/renewed").await.unwrap().expose(), b"v1");
    assert_eq!(clone.get("dev/app/renewed").await.unwrap().expose(), b"v1");

    // The token is never in the session's state or the client's Debug output.
    let shown = format!("{c:?} {:?} {:?}", session.borrow(), first);
    assert!(!shown.contains(first.token.as_str()), "{shown}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_session_reads_the_token_file_again_at_each_renewal() {
    let cluster = Cluster::new("https://kubernetes.default.svc.cluster.local");
    let Some((s, dir)) = cluster.stack("k8s-session").await else {
        return;
    };
    s.put("prod/monitoring/grafana", b"pw").await;
    // A 61-second projected token: the Sentia token ends with it, and is renewed 58 s before.
    let token_file = dir.join("token");
    std::fs::write(&token_file, cluster.bound_token(Alg::Rs256, 61)).unwrap();
    let (c, first) = kubernetes_login(&s, &token_file, Duration::from_secs(58)).await;
    assert!(first.expires_at <= sentia_proto::wkt::now_secs() + 61);
    // The kubelet replaces the file with a fresh token: the renewal logs in with that one,
    // so the renewed Sentia token lives past the first Kubernetes token.
    std::fs::write(&token_file, cluster.bound_token(Alg::Rs256, 3600)).unwrap();
    let mut session = c.session().unwrap();
    let renewed = session
        .wait_for(|state| state.renewals >= 1)
        .await
        .unwrap()
        .clone();
    assert_ne!(renewed.token_id, first.token_id);
    assert!(
        renewed.expires_at > first.expires_at + 600,
        "renewed with the new file: {renewed:?} vs {first:?}"
    );
    assert_eq!(
        c.get("prod/monitoring/grafana").await.unwrap().expose(),
        b"pw"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_client_whose_token_is_refused_logs_in_again_and_carries_on() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    s.put("dev/app/refused", b"v1").await;
    let cred = developer_credential(&s, "refused", None).await;
    let (c, first) = Client::login(&s.addr, &cred.role_id, &cred.secret_id, None)
        .await
        .unwrap();
    // Revoke the token in use (an hour from expiry, so no scheduled renewal is near).
    s.auth(&s.root_token)
        .await
        .revoke_token(pb::RevokeTokenRequest {
            token_id: first.token_id.clone(),
        })
        .await
        .unwrap();
    let old = s.auth(&first.token).await;
    while old.clone().who_am_i(pb::WhoAmIRequest {}).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refused read renews the session at once and is tried again.
    assert_eq!(c.get("dev/app/refused").await.unwrap().expose(), b"v1");
    let session = c.session().unwrap().borrow().clone();
    assert_eq!(session.renewals, 1);
    assert_ne!(session.token_id, first.token_id);
    // A watch opened after the refusal works too, and follows a change.
    let mut fresh = c.keep_fresh("dev/app/refused").await.unwrap();
    s.put("dev/app/refused", b"v2").await;
    let changed = tokio::time::timeout(Duration::from_secs(30), fresh.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.expose(), b"v2");

    // An app credential revoked for good: the renewal is refused, and the call fails with
    // UNAUTHENTICATED instead of waiting.
    s.auth(&s.root_token)
        .await
        .revoke_app_credential(pb::RevokeAppCredentialRequest {
            role_id: cred.role_id.clone(),
        })
        .await
        .unwrap();
    let mut refused = None;
    for _ in 0..200 {
        match c.get("dev/app/refused").await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(refused.unwrap().code(), Some(tonic::Code::Unauthenticated));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_the_token_it_was_opened_with() {
    let cluster = Cluster::new("https://kubernetes.default.svc.cluster.local");
    let Some((s, dir)) = cluster.stack("k8s-watch").await else {
        return;
    };
    s.put("prod/monitoring/grafana", b"v1").await;
    // The first Sentia token ends with a 4-second Kubernetes token, and is renewed only as it
    // expires: vault-service ends the open watch stream with UNAUTHENTICATED ("token expired").
    let token_file = dir.join("token");
    std::fs::write(&token_file, cluster.bound_token(Alg::Es256, 4)).unwrap();
    let (c, first) = kubernetes_login(&s, &token_file, Duration::ZERO).await;
    std::fs::write(&token_file, cluster.bound_token(Alg::Es256, 3600)).unwrap();
    let mut fresh = c.keep_fresh("prod/monitoring/grafana").await.unwrap();
    let mut session = c.session().unwrap();
    session.wait_for(|state| state.renewals >= 1).await.unwrap();
    // Past the first token's expiry, a change still arrives through the watch.
    while sentia_proto::wkt::now_secs() <= first.expires_at + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.put("prod/monitoring/grafana", b"v2").await;
    let changed = tokio::time::timeout(Duration::from_secs(30), fresh.changed())
        .await
        .expect("the watch resumed with the renewed token")
        .unwrap();
    assert_eq!(changed.expose(), b"v2");
    s.stop().await;
}
