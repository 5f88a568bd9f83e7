//! Kubernetes login over gRPC: projected service-account tokens signed by a test cluster's own
//! keys (RS256 and ES256, as kube-apiserver signs them), checked against its JWKS from a file
//! or from OIDC discovery.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use sentia_proto::vault::v1 as pb;
use support::kubernetes::{Alg, Cluster};
use support::{Backend, Stack, get};
use tonic::Code;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

async fn login(s: &Stack, role: &str, jwt: &str) -> Result<pb::LoginResponse, tonic::Status> {
    s.auth("none")
        .await
        .login_kubernetes(pb::LoginKubernetesRequest {
            role: role.into(),
            jwt: jwt.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_service_account_logs_in_with_an_rs256_or_es256_token_and_gets_its_roles_policies()
{
    let cluster = Cluster::new(ISSUER);
    let Some((s, dir)) = cluster.stack("k8s-login").await else {
        return;
    };
    s.put("prod/monitoring/grafana", b"grafana-pw").await;
    s.put("prod/app/db", b"db-pw").await;
    for alg in [Alg::Rs256, Alg::Es256] {
        // A 10-minute Kubernetes token: the Sentia token (role ttl 1 h) ends with it.
        let claims = cluster.claims("apps", "mcp-server", "sentia", 600);
        let sa_exp = claims["exp"].as_i64().unwrap();
        let r = login(&s, "sentia-mcp-server", &cluster.sign(alg, &claims))
            .await
            .unwrap();
        assert_eq!(r.expire_time.unwrap().seconds, sa_exp, "{alg:?}");
        let me = s
            .auth(&r.token)
            .await
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner()
            .principal
            .unwrap();
        assert_eq!(me.id, "k8s:apps/mcp-server");
        assert_eq!(me.roles, vec!["monitoring_system".to_string()]);
        let mut c = s.secrets(&r.token).await;
        let v = c
            .get_secret(get("prod/monitoring/grafana"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.value, b"grafana-pw");
        let denied = c.get_secret(get("prod/app/db")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{alg:?}");
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_refuses_a_wrong_issuer_audience_expiry_signature_or_binding() {
    let cluster = Cluster::new(ISSUER);
    let Some((s, dir)) = cluster.stack("k8s-login").await else {
        return;
    };
    let other_issuer = Cluster::new("https://other-cluster.example");
    // Another cluster whose issuer name and key ids are the same: only the signature differs.
    let impostor = Cluster::new(ISSUER);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = cluster.claims("apps", "mcp-server", "sentia", 600);
        f(&mut c);
        cluster.sign(Alg::Es256, &c)
    };
    let good = cluster.token(Alg::Rs256, "apps", "mcp-server", "sentia");
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 8.., "AAAAAAAA");
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "wrong issuer",
            "sentia-mcp-server",
            other_issuer.token(Alg::Rs256, "apps", "mcp-server", "sentia"),
            "not by the trusted issuer",
        ),
        (
            "wrong audience",
            "sentia-mcp-server",
            cluster.token(
                Alg::Rs256,
                "apps",
                "mcp-server",
                "https://kubernetes.default.svc",
            ),
            "not for this audience",
        ),
        (
            "expired",
            "sentia-mcp-server",
            cluster.sign(
                Alg::Rs256,
                &cluster.claims("apps", "mcp-server", "sentia", -120),
            ),
            "expired",
        ),
        (
            "no expiry (legacy token)",
            "sentia-mcp-server",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "no expiry",
        ),
        (
            "signed by another key",
            "sentia-mcp-server",
            impostor.token(Alg::Es256, "apps", "mcp-server", "sentia"),
            "signature does not verify",
        ),
        (
            "tampered signature",
            "sentia-mcp-server",
            tampered,
            "signature does not verify",
        ),
        (
            "unbound service account",
            "sentia-mcp-server",
            cluster.token(Alg::Es256, "apps", "billing", "sentia"),
            "apps/billing is not bound",
        ),
        (
            "unbound namespace",
            "sentia-mcp-server",
            cluster.token(Alg::Es256, "default", "mcp-server", "sentia"),
            "default/mcp-server is not bound",
        ),
        (
            "subject and kubernetes.io disagree",
            "sentia-mcp-server",
            with(&|c| c["sub"] = "system:serviceaccount:apps:other".into()),
            "different service accounts",
        ),
        (
            "unknown role",
            "no-such-role",
            good.clone(),
            "no Kubernetes login role",
        ),
        (
            "not a JWT",
            "sentia-mcp-server",
            "hello".into(),
            "not a JWT",
        ),
    ];
    for (what, role, jwt, expected) in cases {
        let e = login(&s, role, &jwt).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(e.message().contains(expected), "{what}: {:?}", e.message());
    }
    // An unsigned token ("alg": "none") is refused by name.
    let none = {
        use base64::Engine;
        let b = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let claims = cluster.claims("apps", "mcp-server", "sentia", 600);
        format!("{}.{}.", b(serde_json::json!({"alg": "none"})), b(claims))
    };
    let e = login(&s, "sentia-mcp-server", &none).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("only RS256 and ES256"), "{e:?}");
    // And after all that, the good token still logs in.
    login(&s, "sentia-mcp-server", &good).await.unwrap();
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_finds_the_issuers_keys_by_oidc_discovery_and_fetches_them_once() {
    let cluster = Cluster::new(ISSUER);
    let issuer = cluster.serve().await;
    let dir = support::scratch_path(&support::unique("k8s-discovery"));
    let f = cluster.policy_file(&dir, Some(&issuer.base));
    let Some(s) = Stack::start(Backend::Sqlite, &[("SENTIA_POLICY_FILE", &f)]).await else {
        return;
    };
    for alg in [Alg::Rs256, Alg::Es256, Alg::Rs256] {
        login(
            &s,
            "sentia-mcp-server",
            &cluster.token(alg, "apps", "mcp-server", "sentia"),
        )
        .await
        .unwrap();
    }
    assert_eq!(issuer.jwks_fetches(), 1, "keys are kept between logins");
    // Tokens naming key ids the issuer does not publish force at most one more fetch.
    let impostor = Cluster::new(ISSUER);
    for _ in 0..5 {
        let t = impostor
            .token(Alg::Es256, "apps", "mcp-server", "sentia")
            .replacen(&header("ec-1"), &header("made-up"), 1);
        let e = login(&s, "sentia-mcp-server", &t).await.unwrap_err();
        assert!(e.message().contains("does not publish"), "{e:?}");
    }
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "unknown key ids refetch once per gap"
    );
    s.stop().await;
    // Not configured at all: FAILED_PRECONDITION, naming what to add.
    let Some(plain) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let e = login(
        &plain,
        "sentia-mcp-server",
        &cluster.token(Alg::Rs256, "apps", "mcp-server", "sentia"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("[kubernetes]"), "{e:?}");
    plain.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The encoded JWT header for an ES256 token naming `kid`.
fn header(kid: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::json!({"alg": "ES256", "kid": kid}).to_string())
}
