//! A stand-in for a cluster's service-account issuer: keys made by the test (RSA 2048 and
//! P-256, as kube-apiserver uses), tokens shaped and signed like projected service-account
//! tokens, and the issuer's JWKS and OIDC discovery documents served over HTTP on 127.0.0.1.
//! No cluster needed.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Kubernetes login role of [`Cluster::policy_file`].
pub const ROLE: &str = "sentia-mcp-server";
/// The namespace that role binds.
pub const NAMESPACE: &str = "apps";
/// The service account that role binds.
pub const SERVICE_ACCOUNT: &str = "mcp-server";
/// The audience the policy file trusts.
pub const AUDIENCE: &str = "sentia";

/// How a test token is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSA PKCS#1 v1.5 with SHA-256 (kube-apiserver's default).
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

/// An RSA key is slow to make unoptimized; every cluster of a test binary shares one.
fn rsa_key() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static KEY: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut rng = rsa::rand_core::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key");
        let der = key.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec();
        (der, key.n().to_bytes_be(), key.e().to_bytes_be())
    })
}

/// A test cluster's issuer.
pub struct Cluster {
    /// The `iss` of its tokens.
    pub issuer: String,
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    jwks: Value,
}

impl Cluster {
    /// An issuer called `issuer`, with one RSA key (kid `rsa-1`) and one P-256 key (`ec-1`).
    pub fn new(issuer: &str) -> Arc<Self> {
        let (der, n, e) = rsa_key();
        let rsa = RsaKeyPair::from_pkcs8(der).expect("RSA key pair");
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let ec = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256 key pair");
        let point = ec.public_key().as_ref();
        let b = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [
            {"use": "sig", "kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": b(n), "e": b(e)},
            {"use": "sig", "kty": "EC", "kid": "ec-1", "alg": "ES256", "crv": "P-256",
             "x": b(&point[1..33]), "y": b(&point[33..65])},
        ]});
        Arc::new(Self {
            issuer: issuer.to_string(),
            rsa,
            ec,
            jwks,
        })
    }

    /// The issuer's JWKS document.
    pub fn jwks(&self) -> String {
        self.jwks.to_string()
    }

    /// The claims kube-apiserver puts in a projected token for `namespace`/`service_account`
    /// with `audience`, expiring in `exp_in` seconds.
    pub fn claims(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        exp_in: i64,
    ) -> Value {
        let now = sentia_proto::wkt::now_secs();
        json!({
            "aud": [audience],
            "exp": now + exp_in,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": uuid::Uuid::new_v4().to_string()},
                "pod": {"name": format!("{service_account}-7d9f"), "uid": uuid::Uuid::new_v4().to_string()},
                "serviceaccount": {"name": service_account, "uid": uuid::Uuid::new_v4().to_string()},
            },
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
        })
    }

    /// `claims` signed with the cluster's key for `alg`.
    pub fn sign(&self, alg: Alg, claims: &Value) -> String {
        let (name, kid) = match alg {
            Alg::Rs256 => ("RS256", "rsa-1"),
            Alg::Es256 => ("ES256", "ec-1"),
        };
        let header = json!({"alg": name, "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match alg {
            Alg::Rs256 => {
                let mut sig = vec![0u8; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .expect("RSA signature");
                sig
            }
            Alg::Es256 => self
                .ec
                .sign(&rng, input.as_bytes())
                .expect("ECDSA signature")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// A projected token for `namespace`/`service_account` and `audience`, valid for an hour.
    pub fn token(
        &self,
        alg: Alg,
        namespace: &str,
        service_account: &str,
        audience: &str,
    ) -> String {
        self.sign(
            alg,
            &self.claims(namespace, service_account, audience, 3600),
        )
    }

    /// Writes `dir/policies.toml` (returning its path): policy `monitoring_system` (read on
    /// `*/monitoring/**`) and Kubernetes login trusting this cluster for [`AUDIENCE`], with
    /// role [`ROLE`] binding [`NAMESPACE`]/[`SERVICE_ACCOUNT`] to it. Keys come from
    /// `discovery_url` when given, else from `dir/jwks.json`, written here.
    pub fn policy_file(&self, dir: &std::path::Path, discovery_url: Option<&str>) -> String {
        std::fs::create_dir_all(dir).expect("policy dir");
        let keys = match discovery_url {
            Some(url) => format!("discovery_url = {url:?}"),
            None => {
                let jwks = dir.join("jwks.json");
                std::fs::write(&jwks, self.jwks()).expect("jwks file");
                format!("jwks_file = {:?}", jwks.display().to_string())
            }
        };
        let text = format!(
            r#"
[monitoring_system]
rules = [{{ paths = ["*/monitoring/**"], capabilities = ["read"] }}]

[kubernetes]
issuer = {issuer:?}
audiences = [{AUDIENCE:?}]
{keys}

[kubernetes.roles.{ROLE}]
namespaces = [{NAMESPACE:?}]
service_accounts = [{SERVICE_ACCOUNT:?}]
policies = ["monitoring_system"]
token_ttl = "1h"
"#,
            issuer = self.issuer
        );
        let file = dir.join("policies.toml");
        std::fs::write(&file, text).expect("policy file");
        file.display().to_string()
    }

    /// A vault stack (SQLite) whose policy file trusts this cluster's JWKS, saved as a file
    /// ([`Cluster::policy_file`]), and the scratch directory holding both (for token files).
    pub async fn stack(&self, tag: &str) -> Option<(crate::Stack, std::path::PathBuf)> {
        let dir = crate::scratch_path(&crate::unique(tag));
        let policies = self.policy_file(&dir, None);
        let stack =
            crate::Stack::start(crate::Backend::Sqlite, &[("SENTIA_POLICY_FILE", &policies)])
                .await?;
        Some((stack, dir))
    }

    /// A token for the service account [`ROLE`] binds, expiring in `exp_in` seconds.
    pub fn bound_token(&self, alg: Alg, exp_in: i64) -> String {
        self.sign(
            alg,
            &self.claims(NAMESPACE, SERVICE_ACCOUNT, AUDIENCE, exp_in),
        )
    }

    /// Serves `/.well-known/openid-configuration` and `/openid/v1/jwks` on 127.0.0.1 until
    /// the returned server is dropped; its `base` is the discovery URL.
    pub async fn serve(self: &Arc<Self>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let discovery = json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
        .to_string();
        let jwks = self.jwks();
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = fetches.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (discovery, jwks, counted) = (discovery.clone(), jwks.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..len]);
                    let path = request.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = match path {
                        "/.well-known/openid-configuration" => ("200 OK", discovery),
                        "/openid/v1/jwks" => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            ("200 OK", jwks)
                        }
                        _ => ("404 Not Found", String::new()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Issuer {
            base,
            fetches,
            task,
        }
    }
}

/// A served issuer; stops serving when dropped.
pub struct Issuer {
    /// Its discovery base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    /// How many times its JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
