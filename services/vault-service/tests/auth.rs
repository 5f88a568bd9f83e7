//! AuthService, tokens and the RBAC matrix over gRPC against real key-service.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;
use sentia_testkit::on_both_backends;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sentia_proto::keys::v1 as kpb;
use sentia_proto::vault::v1 as pb;
use sentia_runtime::jwt::{self, Claims};
use support::{Backend, Stack, get, put};
use tonic::Code;

on_both_backends!(
    login_issues_a_jwt_that_carries_the_credentials_policies,
    expired_forged_and_unknown_key_tokens_are_rejected,
    a_revoked_token_stops_working_at_once,
    tokens_survive_a_signing_key_rotation,
    an_app_credential_is_listed_rotated_limited_and_revoked_with_its_tokens,
    an_app_credential_stops_logging_in_at_its_expiry,
);

fn header_kid(token: &str) -> String {
    let h = token.split('.').next().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

async fn login_issues_a_jwt_that_carries_the_credentials_policies(s: &Stack) {
    let (token, token_id) = s.login_as(&["developer"]).await;
    assert!(jwt::looks_like_jwt(&token));
    assert_eq!(header_kid(&token), "sentia-jwt-v1");
    let me = s
        .auth(&token)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    let p = me.principal.unwrap();
    assert!(p.id.starts_with("app:"), "{p:?}");
    assert_eq!(p.auth_method, "jwt");
    assert_eq!(p.roles, vec!["developer".to_string()]);
    let left = me.expire_time.unwrap().seconds - sentia_proto::wkt::now_secs();
    assert!(
        (3500..=3600).contains(&left),
        "default lifetime is 1 h, {left} s left"
    );
    assert!(!token_id.is_empty());

    // Wrong secret id and unknown role id look the same.
    let cred = s
        .auth(&s.root_token)
        .await
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "billing-api".into(),
            policies: vec!["developer".into()],
            token_ttl: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut anon = s.auth("none").await;
    let wrong = anon
        .login(pb::LoginRequest {
            role_id: cred.role_id.clone(),
            secret_id: "guess".into(),
        })
        .await
        .unwrap_err();
    let unknown = anon
        .login(pb::LoginRequest {
            role_id: "no-such-role".into(),
            secret_id: cred.secret_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    let ok = anon
        .login(pb::LoginRequest {
            role_id: cred.role_id,
            secret_id: cred.secret_id,
        })
        .await
        .unwrap()
        .into_inner();
    let left = ok.expire_time.unwrap().seconds - sentia_proto::wkt::now_secs();
    assert!(
        (100..=120).contains(&left),
        "credential's 120 s lifetime, {left} s left"
    );

    // Credential creation is validated and needs admin.
    let mut root = s.auth(&s.root_token).await;
    for (req, hint) in [
        (
            pb::CreateAppCredentialRequest {
                name: "x".into(),
                policies: vec!["wizard".into()],
                token_ttl: None,
                ..Default::default()
            },
            "unknown policy",
        ),
        (
            pb::CreateAppCredentialRequest {
                name: "x".into(),
                policies: vec!["root".into()],
                token_ttl: None,
                ..Default::default()
            },
            "unknown policy",
        ),
        (
            pb::CreateAppCredentialRequest {
                name: "x".into(),
                policies: vec![],
                token_ttl: None,
                ..Default::default()
            },
            "policies",
        ),
        (
            pb::CreateAppCredentialRequest {
                name: "bad name".into(),
                policies: vec!["developer".into()],
                token_ttl: None,
                ..Default::default()
            },
            "name",
        ),
        (
            pb::CreateAppCredentialRequest {
                name: "x".into(),
                policies: vec!["developer".into()],
                token_ttl: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "token_ttl",
        ),
    ] {
        let err = root.create_app_credential(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hint}");
        assert!(err.message().contains(hint), "{hint}: {}", err.message());
    }
    let err = s
        .auth(&token)
        .await
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "escalate".into(),
            policies: vec!["system_admin".into()],
            token_ttl: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

async fn login(s: &Stack, role_id: &str, secret_id: &str) -> Result<pb::LoginResponse, Code> {
    s.auth("unused")
        .await
        .login(pb::LoginRequest {
            role_id: role_id.into(),
            secret_id: secret_id.into(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.code())
}

async fn who(s: &Stack, token: &str) -> Result<(), Code> {
    s.auth(token)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|_| ())
        .map_err(|e| e.code())
}

async fn an_app_credential_is_listed_rotated_limited_and_revoked_with_its_tokens(s: &Stack) {
    let mut admin = s.auth(&s.root_token).await;
    let cred = admin
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "batch-job".into(),
            policies: vec!["developer".into()],
            max_uses: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = login(s, &cred.role_id, &cred.secret_id).await.unwrap();

    // Listed with its use count, never its secret.
    let listed = admin
        .list_app_credentials(pb::ListAppCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mine = listed
        .credentials
        .iter()
        .find(|c| c.role_id == cred.role_id)
        .unwrap();
    assert_eq!(
        (mine.name.as_str(), mine.uses, mine.max_uses),
        ("batch-job", 1, 3)
    );
    assert!(mine.last_login_time.is_some() && mine.revoke_time.is_none());
    assert!(!format!("{listed:?}").contains(&cred.secret_id));

    // A rotated secret id: the old one no longer logs in, the new one does; the token
    // issued before keeps working until it expires.
    let rotated = admin
        .rotate_app_credential_secret(pb::RotateAppCredentialSecretRequest {
            role_id: cred.role_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret_id, cred.secret_id);
    assert_eq!(
        login(s, &cred.role_id, &cred.secret_id).await.unwrap_err(),
        Code::Unauthenticated
    );
    let second = login(s, &cred.role_id, &rotated.secret_id).await.unwrap();
    who(s, &first.token).await.unwrap();

    // Revoked: no more logins, and both live tokens stop working at once.
    let revoked = admin
        .revoke_app_credential(pb::RevokeAppCredentialRequest {
            role_id: cred.role_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());
    assert_eq!(
        login(s, &cred.role_id, &rotated.secret_id)
            .await
            .unwrap_err(),
        Code::Unauthenticated
    );
    for t in [&first.token, &second.token] {
        assert_eq!(who(s, t).await.unwrap_err(), Code::Unauthenticated);
    }
    let err = admin
        .rotate_app_credential_secret(pb::RotateAppCredentialSecretRequest {
            role_id: cred.role_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Gone from the default listing, there with include_revoked.
    let listed = admin
        .list_app_credentials(pb::ListAppCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.credentials.iter().all(|c| c.role_id != cred.role_id));
    let all = admin
        .list_app_credentials(pb::ListAppCredentialsRequest {
            include_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(all.credentials.iter().any(|c| c.role_id == cred.role_id));

    // A use limit: one login, then no more.
    let limited = admin
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "one-shot".into(),
            policies: vec!["developer".into()],
            max_uses: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    login(s, &limited.role_id, &limited.secret_id)
        .await
        .unwrap();
    assert_eq!(
        login(s, &limited.role_id, &limited.secret_id)
            .await
            .unwrap_err(),
        Code::Unauthenticated
    );

    // Only admins manage credentials; unknown ids are NOT_FOUND.
    let (dev, _) = s.login_as(&["developer"]).await;
    let err = s
        .auth(&dev)
        .await
        .list_app_credentials(pb::ListAppCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin
        .revoke_app_credential(pb::RevokeAppCredentialRequest {
            role_id: "no-such-role".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn an_app_credential_stops_logging_in_at_its_expiry(s: &Stack) {
    let mut admin = s.auth(&s.root_token).await;
    let err = admin
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "stale".into(),
            policies: vec!["developer".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: sentia_proto::wkt::now_secs() - 10,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let expires = sentia_proto::wkt::now_secs() + 120;
    let cred = admin
        .create_app_credential(pb::CreateAppCredentialRequest {
            name: "short-lived".into(),
            policies: vec!["developer".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: expires,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Its tokens never outlive it (the default token lifetime is an hour).
    let got = login(s, &cred.role_id, &cred.secret_id).await.unwrap();
    assert!(got.expire_time.unwrap().seconds <= expires);
    // Expire it in the database instead of waiting two minutes.
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    sqlx::query("UPDATE app_credentials SET expire_time = 1 WHERE role_id = $1")
        .bind(&cred.role_id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        login(s, &cred.role_id, &cred.secret_id).await.unwrap_err(),
        Code::Unauthenticated
    );
}

async fn signed_by_key_service(s: &Stack, kid: &str, claims: &Claims) -> String {
    s.keys.sign_token(kid, claims).await
}

fn claims(exp_in: i64, policies: &[&str]) -> Claims {
    support::keys::claims("app:mallory", exp_in, policies)
}

async fn expired_forged_and_unknown_key_tokens_are_rejected(s: &Stack) {
    s.put("prod/app/key", b"v").await;
    // Control: a well-formed token signed by the real key is accepted.
    let good = signed_by_key_service(s, "sentia-jwt-v1", &claims(60, &["system_admin"])).await;
    s.secrets(&good)
        .await
        .get_secret(get("prod/app/key"))
        .await
        .unwrap();

    let expired = signed_by_key_service(s, "sentia-jwt-v1", &claims(-5, &["system_admin"])).await;
    let forged = {
        let k = sentia_crypto::SigningKey::from_seed(sentia_crypto::SecretKey::generate()).unwrap();
        let input = jwt::signing_input("sentia-jwt-v1", &claims(60, &["system_admin"]));
        jwt::assemble(&input, &k.sign(input.as_bytes()))
    };
    let wrong_kid =
        signed_by_key_service(s, "sentia-jwt-v77", &claims(60, &["system_admin"])).await;
    let escalated = {
        // Claims swapped after signing: the signature covers the original ones.
        let t = signed_by_key_service(s, "sentia-jwt-v1", &claims(60, &["developer"])).await;
        let sig = t.rsplit_once('.').unwrap().1.to_string();
        format!(
            "{}.{sig}",
            jwt::signing_input("sentia-jwt-v1", &claims(60, &["system_admin"]))
        )
    };
    // Well signed by the real token key, but nothing vault-service would ever issue.
    let root = signed_by_key_service(s, "sentia-jwt-v1", &claims(60, &["developer", "root"])).await;
    let ten_years = signed_by_key_service(
        s,
        "sentia-jwt-v1",
        &claims(10 * 365 * 86_400, &["developer"]),
    )
    .await;
    let invented = signed_by_key_service(s, "sentia-jwt-v1", &claims(60, &["superuser"])).await;
    // Signed with another key-service key (audit-service may sign checkpoints with it).
    let other_key = {
        let input = jwt::signing_input("audit-checkpoint-v1", &claims(60, &["system_admin"]));
        let sig = s
            .keys
            .client(Some(support::keys::AUDIT_TOKEN))
            .await
            .sign(sentia_proto::keys::v1::SignRequest {
                key_name: "audit-checkpoint".into(),
                message: input.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        jwt::assemble(&input, &sig.signature)
    };
    for (token, hint) in [
        (expired, "expired"),
        (forged, "signature"),
        (wrong_kid, "unknown key"),
        (escalated, "signature"),
        (root, "no token may carry"),
        (ten_years, "lifetime"),
        (invented, "does not exist"),
        (other_key, "unknown key"),
        ("eyJhbGciOiJub25lIn0.e30.".to_string(), "malformed"),
        ("sentia-root.not-the-root-token".to_string(), "invalid"),
        ("some-random-token".to_string(), "invalid"),
    ] {
        let err = s
            .secrets(&token)
            .await
            .get_secret(get("prod/app/key"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{hint}: {err:?}");
        assert!(err.message().contains(hint), "{hint}: {}", err.message());
    }
    let err = s
        .secrets("")
        .await
        .get_secret(get("prod/app/key"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

async fn a_revoked_token_stops_working_at_once(s: &Stack) {
    let (mine, _) = s.login_as(&["developer"]).await;
    let (other, other_id) = s.login_as(&["developer"]).await;
    // Revoking someone else's token needs admin.
    let err = s
        .auth(&mine)
        .await
        .revoke_token(pb::RevokeTokenRequest {
            token_id: other_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    s.auth(&s.root_token)
        .await
        .revoke_token(pb::RevokeTokenRequest { token_id: other_id })
        .await
        .unwrap();
    let err = s
        .auth(&other)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"));
    // Revoke-self with an empty id.
    s.auth(&mine)
        .await
        .revoke_token(pb::RevokeTokenRequest::default())
        .await
        .unwrap();
    let err = s
        .auth(&mine)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

async fn tokens_survive_a_signing_key_rotation(s: &Stack) {
    s.put("dev/app/key", b"v").await;
    let (before, _) = s.login_as(&["developer"]).await;
    s.keys
        .client(Some(support::keys::ADMIN_TOKEN))
        .await
        .rotate_key(kpb::RotateKeyRequest {
            name: "sentia-jwt".into(),
            stage: false,
        })
        .await
        .unwrap();
    let (after, _) = s.login_as(&["developer"]).await;
    assert_eq!(header_kid(&before), "sentia-jwt-v1");
    assert_eq!(header_kid(&after), "sentia-jwt-v2");
    for t in [&before, &after] {
        s.secrets(t)
            .await
            .get_secret(get("dev/app/key"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_token_is_minted_once_and_can_revoke_itself() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    assert!(s.root_token.starts_with("sentia-root."));
    let me = s
        .auth(&s.root_token)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        me.principal.as_ref().unwrap().roles,
        vec!["root".to_string()]
    );
    let (dir, db, root) = (s.dir.clone(), s.database_url.clone(), s.root_token.clone());
    let keys = s.stop_vault().await;
    std::fs::remove_file(dir.join("root-token")).unwrap();
    // A restart on the same database mints nothing new: the file is not recreated.
    let s = Stack::start_vault(keys, db, &[]).await;
    assert!(s.root_token.is_empty(), "a second root token was minted");
    assert!(!dir.join("root-token").exists());
    s.auth(&root)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    s.auth(&root)
        .await
        .revoke_token(pb::RevokeTokenRequest::default())
        .await
        .unwrap();
    let err = s
        .auth(&root)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    s.stop().await;
}

/// Capability -> path globs granted.
type Grants = &'static [(&'static str, &'static [&'static str])];

/// The seed's role matrix, checked through the RPCs that need each capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_seed_role_gets_exactly_its_capabilities() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let paths = [
        "prod/config/db-url",
        "prod/app/api-key",
        "staging/config/flags",
        "dev/app/key",
        "test/app/key",
        "prod/monitoring/grafana",
        "prod/health/ping",
        "prod/database/password",
    ];
    for p in paths {
        s.put(p, b"v").await;
    }
    let glob = |g: &str, p: &str| {
        let (gs, ps): (Vec<&str>, Vec<&str>) = (g.split('/').collect(), p.split('/').collect());
        match gs.as_slice() {
            ["*", cat, "**"] => ps.get(1) == Some(cat),
            [env, "**"] => ps.first() == Some(env),
            ["**"] => true,
            _ => unreachable!(),
        }
    };
    // role -> (capability -> globs), written from the strategy document's matrix.
    let expected: &[(&str, Grants)] = &[
        (
            "system_admin",
            &[
                ("read", &["**"]),
                ("write", &["**"]),
                ("list", &["**"]),
                ("delete", &["**"]),
                ("admin", &["**"]),
            ],
        ),
        (
            "deployment_engineer",
            &[
                ("read", &["*/config/**", "*/app/**"]),
                ("write", &["*/config/**"]),
                ("list", &["**"]),
            ],
        ),
        (
            "developer",
            &[
                ("read", &["dev/**", "test/**"]),
                ("write", &["test/**"]),
                ("list", &["dev/**", "test/**"]),
            ],
        ),
        (
            "monitoring_system",
            &[("read", &["*/monitoring/**", "*/health/**"])],
        ),
    ];
    let mut checked = 0;
    for (role, grants) in expected {
        let (token, _) = s.login_as(&[role]).await;
        let mut c = s.secrets(&token).await;
        let allowed = |cap: &str, p: &str| {
            grants
                .iter()
                .any(|(c, globs)| *c == cap && globs.iter().any(|g| glob(g, p)))
        };
        for p in paths {
            let outcomes = [
                ("read", c.get_secret(get(p)).await.map(|_| ())),
                ("write", c.put_secret(put(p, b"w")).await.map(|_| ())),
                (
                    "list",
                    c.describe_secret(pb::DescribeSecretRequest { path: p.into() })
                        .await
                        .map(|_| ()),
                ),
                (
                    "delete",
                    c.delete_secret(pb::DeleteSecretRequest {
                        path: p.into(),
                        versions: vec![1],
                    })
                    .await
                    .map(|_| ()),
                ),
            ];
            for (cap, outcome) in outcomes {
                match (allowed(cap, p), outcome) {
                    (true, Ok(())) => {}
                    (false, Err(e)) if e.code() == Code::PermissionDenied => {
                        assert!(
                            e.message().contains(cap),
                            "{role} {cap} {p}: {}",
                            e.message()
                        );
                    }
                    (want, got) => {
                        panic!("{role} {cap} on {p}: expected allowed={want}, got {got:?}")
                    }
                }
                checked += 1;
            }
            s.secrets(&s.root_token)
                .await
                .undelete_secret(pb::UndeleteSecretRequest {
                    path: p.into(),
                    versions: vec![],
                })
                .await
                .unwrap();
        }
        let admin = s
            .auth(&token)
            .await
            .create_app_credential(pb::CreateAppCredentialRequest {
                name: "probe".into(),
                policies: vec!["developer".into()],
                token_ttl: None,
                ..Default::default()
            })
            .await;
        assert_eq!(
            admin.is_ok(),
            allowed("admin", "anything"),
            "{role} admin: {admin:?}"
        );
        checked += 1;
        // Listing shows only what the role may list.
        let listed: Vec<String> = c
            .list_secrets(pb::ListSecretsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .secrets
            .into_iter()
            .map(|m| m.path)
            .collect();
        let want: Vec<String> = {
            let mut v: Vec<String> = paths
                .iter()
                .filter(|p| allowed("list", p))
                .map(|p| p.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(listed, want, "{role}");
    }
    assert_eq!(checked, 4 * (paths.len() * 4 + 1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_file_reloads_without_a_restart_and_a_broken_edit_is_ignored() {
    let dir = std::env::temp_dir().join(support::unique("policies"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policies.toml");
    let v1 = "[reader]\nrules = [{ paths = [\"prod/x/**\"], capabilities = [\"read\"] }]\n";
    std::fs::write(&file, v1).unwrap();
    let f = file.display().to_string();
    let Some(s) = Stack::start(
        Backend::Sqlite,
        &[("SENTIA_POLICY_FILE", &f), ("SENTIA_POLICY_RELOAD", "50ms")],
    )
    .await
    else {
        return;
    };
    s.put("prod/x/a", b"v").await;
    let (token, _) = s.login_as(&["reader"]).await;
    let mut c = s.secrets(&token).await;
    c.get_secret(get("prod/x/a")).await.unwrap();
    assert_eq!(
        c.put_secret(put("prod/x/a", b"w"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Grant write; the running server picks it up.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, v1.replace("[\"read\"]", "[\"read\", \"write\"]")).unwrap();
    let mut granted = false;
    for _ in 0..100 {
        if c.put_secret(put("prod/x/a", b"w")).await.is_ok() {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(granted, "the reloaded policy never applied");

    // A broken file is rejected and the last good policies stay.
    std::fs::write(&file, "[reader\nrules = oops").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.put_secret(put("prod/x/a", b"w2")).await.unwrap();
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(
    principal: &str,
    policies: &[&str],
    capability: sentia_policy::Capability,
    path: &str,
) -> pb::CheckPolicyRequest {
    pb::CheckPolicyRequest {
        principal: principal.into(),
        policies: policies.iter().map(|p| p.to_string()).collect(),
        capability: capability.to_proto(),
        path: path.into(),
        policy_file: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_simulator_names_the_deciding_rule_and_checks_others_only_for_admins() {
    use sentia_policy::Capability::{Admin, Read, Write};
    let Some(s) = Stack::start(
        Backend::Sqlite,
        &[(
            "SENTIA_IDENTITY_POLICIES",
            "metrics-agent=monitoring_system",
        )],
    )
    .await
    else {
        return;
    };
    let (dev_token, _) = s.login_as(&["developer"]).await;
    // Anyone checks themselves: allowed with the rule, denied by default.
    let mut mine = s.auth(&dev_token).await;
    let r = mine
        .check_policy(check("", &[], Write, "test/app/key"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
    assert_eq!(
        (r.policy.as_str(), r.rule, r.rule_path.as_str()),
        ("developer", 2, "test/**")
    );
    assert_eq!(
        r.explanation,
        "allow: policy developer rule 2 (test/**) grants write on test/app/key"
    );
    let r = mine
        .check_policy(check("", &[], Read, "prod/app/key"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allowed && r.policy.is_empty() && r.rule == 0);
    assert!(r.explanation.starts_with("deny:"), "{}", r.explanation);
    assert_eq!(r.policies, ["developer"]);
    // ... but not anyone else, nor a file.
    for req in [
        check("root", &[], Read, "prod/app/key"),
        check("", &["system_admin"], Read, "prod/app/key"),
        pb::CheckPolicyRequest {
            policy_file: "[x]\nrules = []\n".into(),
            ..check("", &[], Read, "prod/app/key")
        },
    ] {
        let e = mine.check_policy(req).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }

    // An admin checks principals of every kind.
    let admin = s.auth(&s.root_token).await;
    let ask = |req: pb::CheckPolicyRequest| {
        let mut admin = admin.clone();
        async move { admin.check_policy(req).await.map(|r| r.into_inner()) }
    };
    let r = ask(check("metrics-agent", &[], Read, "prod/monitoring/grafana"))
        .await
        .unwrap();
    assert!(r.allowed && r.policy == "monitoring_system", "{r:?}");
    let billing = s.credential("billing", &["developer"]).await;
    let r = ask(check(&billing.role_id, &[], Read, "dev/app/key"))
        .await
        .unwrap();
    assert!(r.allowed && r.policy == "developer", "{r:?}");
    let r = ask(check("root", &[], Admin, "prod/anything"))
        .await
        .unwrap();
    assert!(r.allowed && r.policy == "root" && r.rule == 0, "{r:?}");
    let e = ask(check("nobody", &[], Read, "dev/x")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("SENTIA_IDENTITY_POLICIES"), "{e:?}");
    let e = ask(check("", &["no_such_policy"], Read, "dev/x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A policy file not yet loaded: decisions come from it alone.
    let file = r#"
[auditor]
rules = [
  { paths = ["prod/**"], capabilities = ["list"] },
  { paths = ["prod/audit/**"], capabilities = ["read", "audit-read"] },
]
"#;
    let with_file = |req: pb::CheckPolicyRequest| pb::CheckPolicyRequest {
        policy_file: file.into(),
        ..req
    };
    let r = ask(with_file(check("", &["auditor"], Read, "prod/audit/log")))
        .await
        .unwrap();
    assert_eq!(
        (r.allowed, r.rule, r.rule_path.as_str()),
        (true, 2, "prod/audit/**")
    );
    let e = ask(with_file(check("", &["developer"], Read, "dev/x")))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "the file replaces the loaded policies"
    );

    // Bad input is named.
    let mut bad_cap = check("", &[], Read, "dev/x");
    bad_cap.capability = 0;
    let broken = pb::CheckPolicyRequest {
        policy_file: "[auditor]\nrules = [{ paths = [\"x\"], capabilities = [\"fly\"] }]\n".into(),
        ..check("", &["auditor"], Read, "dev/x")
    };
    let huge = pb::CheckPolicyRequest {
        policy_file: "#".repeat((1 << 20) + 1),
        ..check("", &[], Read, "dev/x")
    };
    for (req, want) in [
        (bad_cap, "capability"),
        (check("", &[], Read, "bad//path"), "path"),
        (broken, "fly"),
        (huge, "at most"),
    ] {
        let e = ask(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{want}: {e:?}");
    }
    s.stop().await;
}
