//! Kubernetes login: a pod's projected service-account token (a JWT the API server signed with
//! RS256 or ES256) is verified against the cluster issuer's published keys — no call to the
//! API server per login, no cluster credentials held here — and its namespace and service
//! account are mapped to a role's policies (the policy file's `[kubernetes]` table).
//!
//! Limit: like every JWKS-only verifier, a token stays valid until its `exp` even if its pod
//! is deleted; projected tokens live an hour at most by default, and the Sentia token issued
//! for one never outlives it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sentia_policy::{KeySource, KubernetesLogin};
use sentia_runtime::text::clip;
use serde::Deserialize;
use tokio::sync::Mutex;

/// Longest service-account token accepted: a bound on work done for garbage input (real ones
/// are about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS or discovery document read from the issuer.
pub const MAX_DOCUMENT_LEN: usize = 1024 * 1024;
/// Tolerated clock difference between the API server and vault-service.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// How long fetched keys are used before they are fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// Shortest time between two fetches forced by a token naming an unknown key id, so tokens
/// with made-up key ids cannot make vault-service hammer the issuer.
pub const FORCED_REFRESH_GAP: Duration = Duration::from_secs(10);
/// How long one fetch from the issuer may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The token, or what it names, is not accepted (UNAUTHENTICATED).
    #[error("{0}")]
    Refused(String),
    /// The issuer's keys cannot be had now (UNAVAILABLE).
    #[error("the Kubernetes issuer's keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<KubernetesError> for tonic::Status {
    fn from(e: KubernetesError) -> Self {
        match e {
            KubernetesError::Refused(m) => tonic::Status::unauthenticated(m),
            e @ KubernetesError::KeysUnavailable(_) => tonic::Status::unavailable(e.to_string()),
        }
    }
}

fn refused(message: impl Into<String>) -> KubernetesError {
    KubernetesError::Refused(message.into())
}

/// The workload a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// When the Kubernetes token expires (Unix seconds).
    pub expires_at: i64,
}

/// One public key of the issuer.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point (0x04 || x || y).
    P256(Vec<u8>),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RS256",
            Self::P256(_) => "ES256",
        }
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            Self::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Deserialize)]
struct JwkFile {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwksFile {
    keys: Vec<JwkFile>,
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let v = v
        .as_deref()
        .ok_or_else(|| format!("a key lacks {field:?}"))?;
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(v))
        .map_err(|_| format!("a key's {field:?} is not base64url"))
}

/// Parses a JWKS; keys of other types (or for encryption) are skipped, and a document with no
/// usable key is an error.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: JwksFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Vec::new();
    for k in doc.keys {
        if k.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match (k.kty.as_str(), k.crv.as_deref()) {
            ("RSA", _) => PublicKey::Rsa {
                n: b64("n", &k.n)?,
                e: b64("e", &k.e)?,
            },
            ("EC", Some("P-256")) => {
                let (x, y) = (b64("x", &k.x)?, b64("y", &k.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("a P-256 key's x and y must be 32 bytes each".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::P256(point)
            }
            _ => continue,
        };
        out.push(Jwk { kid: k.kid, key });
    }
    if out.is_empty() {
        return Err("the JWKS holds no RSA or P-256 signing key".into());
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, a: &str) -> bool {
        match self {
            Self::One(s) => s == a,
            Self::Many(v) => v.iter().any(|s| s == a),
        }
    }
}

#[derive(Deserialize)]
struct NamedRef {
    name: String,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: NamedRef,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubernetesClaims>,
}

/// The parts of a compact JWS, decoded but not yet trusted.
struct Parsed {
    header: Header,
    claims: Claims,
    signing_input: String,
    signature: Vec<u8>,
}

fn parse_token(token: &str) -> Result<Parsed, KubernetesError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(refused(format!(
            "the service-account token is {} bytes; the limit is {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let not_jwt = || refused("the service-account token is not a JWT (header.payload.signature)");
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_jwt());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| not_jwt());
    let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| not_jwt())?;
    let claims: Claims = serde_json::from_slice(&decode(p)?).map_err(|e| {
        refused(format!(
            "the service-account token's claims are malformed: {e}"
        ))
    })?;
    Ok(Parsed {
        header,
        claims,
        signing_input: format!("{h}.{p}"),
        signature: decode(s)?,
    })
}

/// The issuer's keys as last fetched, and where from.
struct Cached {
    from: (KeySource, Option<PathBuf>, Option<PathBuf>),
    keys: Arc<Vec<Jwk>>,
    fetched: Instant,
    file_modified: Option<SystemTime>,
    forced: Option<Instant>,
}

/// Verifies service-account tokens; keeps the issuer's keys between logins.
#[derive(Default)]
pub struct Verifier {
    cache: Mutex<Option<Cached>>,
}

impl Verifier {
    /// A verifier with nothing fetched yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The workload `token` speaks for, if the configured issuer signed it for one of the
    /// configured audiences and it is live now (`now`, Unix seconds).
    pub async fn verify(
        &self,
        login: &KubernetesLogin,
        token: &str,
        now: i64,
    ) -> Result<Workload, KubernetesError> {
        let t = parse_token(token)?;
        // The issuer first: a token of another cluster is named as such, and never makes this
        // one fetch keys.
        if t.claims.iss != login.issuer {
            return Err(refused(format!(
                "the service-account token was issued by {:?}, not by the trusted issuer {:?}",
                clip(&t.claims.iss, 128),
                login.issuer
            )));
        }
        if !matches!(t.header.alg.as_str(), "RS256" | "ES256") {
            return Err(refused(format!(
                "the service-account token is signed with {:?}; only RS256 and ES256 are accepted",
                clip(&t.header.alg, 16)
            )));
        }
        let mut keys = self.keys(login, false).await?;
        if candidates(&keys, &t.header).next().is_none() {
            keys = self.keys(login, true).await?;
        }
        let message = t.signing_input.as_bytes();
        let mut tried = false;
        let mut good = false;
        for k in candidates(&keys, &t.header) {
            tried = true;
            if k.key.verify(message, &t.signature) {
                good = true;
                break;
            }
        }
        if !tried {
            return Err(refused(format!(
                "the service-account token names key id {:?}, which the issuer does not publish",
                clip(t.header.kid.as_deref().unwrap_or(""), 128)
            )));
        }
        if !good {
            return Err(refused(
                "the service-account token's signature does not verify",
            ));
        }
        check_claims(login, t.claims, now)
    }

    /// The issuer's keys: cached ones while fresh; `force` fetches again (at most once per
    /// [`FORCED_REFRESH_GAP`]). A failed fetch keeps the keys known before, if any.
    async fn keys(
        &self,
        login: &KubernetesLogin,
        force: bool,
    ) -> Result<Arc<Vec<Jwk>>, KubernetesError> {
        let mut cache = self.cache.lock().await;
        let from = (
            login.keys.clone(),
            login.ca_file.clone(),
            login.token_file.clone(),
        );
        let modified = match &login.keys {
            KeySource::File(f) => std::fs::metadata(f).and_then(|m| m.modified()).ok(),
            _ => None,
        };
        if let Some(c) = cache.as_mut().filter(|c| c.from == from) {
            let stale = match &login.keys {
                KeySource::File(_) => c.file_modified != modified,
                _ => c.fetched.elapsed() > KEYS_MAX_AGE,
            };
            let may_force = c.forced.is_none_or(|f| f.elapsed() >= FORCED_REFRESH_GAP);
            let refetch = stale || (force && may_force);
            if !refetch {
                return Ok(c.keys.clone());
            }
            if force {
                c.forced = Some(Instant::now());
            }
            return match fetch(login).await {
                Ok(keys) => {
                    c.keys = Arc::new(keys);
                    c.fetched = Instant::now();
                    c.file_modified = modified;
                    Ok(c.keys.clone())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes issuer keys could not be refreshed; keeping the known ones");
                    Ok(c.keys.clone())
                }
            };
        }
        let keys = Arc::new(
            fetch(login)
                .await
                .map_err(KubernetesError::KeysUnavailable)?,
        );
        *cache = Some(Cached {
            from,
            keys: keys.clone(),
            fetched: Instant::now(),
            file_modified: modified,
            forced: force.then(Instant::now),
        });
        Ok(keys)
    }
}

/// Keys the header allows: the one its `kid` names, or (no `kid`) every key of its algorithm.
fn candidates<'a>(keys: &'a [Jwk], header: &'a Header) -> impl Iterator<Item = &'a Jwk> {
    keys.iter().filter(move |k| {
        k.key.alg() == header.alg
            && match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => true,
            }
    })
}

fn check_claims(
    login: &KubernetesLogin,
    claims: Claims,
    now: i64,
) -> Result<Workload, KubernetesError> {
    let Some(exp) = claims.exp else {
        return Err(refused(
            "the service-account token has no expiry (a legacy Secret-based token); use a \
             projected token (serviceAccountToken volume) with an audience",
        ));
    };
    if exp + CLOCK_SKEW_SECS <= now {
        return Err(refused(format!(
            "the service-account token expired {}s ago; the kubelet refreshes projected \
             tokens: read the file again",
            now - exp
        )));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS) {
        return Err(refused(
            "the service-account token is not valid yet (nbf in the future; check clocks)",
        ));
    }
    let aud_ok = claims
        .aud
        .as_ref()
        .is_some_and(|aud| login.audiences.iter().any(|a| aud.contains(a)));
    if !aud_ok {
        return Err(refused(format!(
            "the service-account token is not for this audience; project one with audience \
             {:?}",
            login.audiences[0]
        )));
    }
    let (namespace, service_account) = claims
        .sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| {
            refused(format!(
                "the token's subject {:?} is not a service account \
                 (system:serviceaccount:NAMESPACE:NAME)",
                clip(&claims.sub, 128)
            ))
        })?;
    if let Some(k) = &claims.kubernetes
        && (k.namespace != namespace || k.serviceaccount.name != service_account)
    {
        return Err(refused(
            "the token's subject and its kubernetes.io claims name different service accounts",
        ));
    }
    Ok(Workload {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        expires_at: exp,
    })
}

/// Reads or fetches the JWKS the login names.
async fn fetch(login: &KubernetesLogin) -> Result<Vec<Jwk>, String> {
    let url = match &login.keys {
        KeySource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            return parse_jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()));
        }
        KeySource::Url(url) => url.clone(),
        KeySource::Discovery(base) => {
            #[derive(Deserialize)]
            struct Discovery {
                issuer: String,
                jwks_uri: String,
            }
            let url = format!("{base}/.well-known/openid-configuration");
            let doc: Discovery = serde_json::from_slice(&get(login, &url).await?)
                .map_err(|e| format!("{url}: not an OIDC discovery document: {e}"))?;
            if doc.issuer != login.issuer {
                return Err(format!(
                    "{url} describes issuer {:?}, not the configured {:?}",
                    clip(&doc.issuer, 128),
                    login.issuer
                ));
            }
            doc.jwks_uri
        }
    };
    parse_jwks(&get(login, &url).await?).map_err(|e| format!("{url}: {e}"))
}

/// GETs `url` with the login's CA and bearer token, reading at most [`MAX_DOCUMENT_LEN`].
async fn get(login: &KubernetesLogin, url: &str) -> Result<Vec<u8>, String> {
    // reqwest's rustls is built without a provider: ring, as everywhere in Sentia (an error
    // means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &login.ca_file {
        let pem = tokio::fs::read(ca)
            .await
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        builder = builder.tls_certs_only(certs);
    }
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
    let mut request = client.get(url);
    if let Some(file) = &login.token_file {
        let token = zeroize::Zeroizing::new(
            tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("cannot read token_file {}: {e}", file.display()))?,
        );
        request = request.bearer_auth(token.trim());
    }
    let mut response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_LEN {
            return Err(format!(
                "{url}: the document exceeds {MAX_DOCUMENT_LEN} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_jwks_yields_its_rsa_and_p256_signing_keys_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "e",
             "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "EC", "crv": "P-384", "kid": "skip"},
            {"kty": "RSA", "use": "enc", "kid": "skip-too", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "secret"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r", "e"]);
        assert!(matches!(&keys[1].key, PublicKey::P256(p) if p.len() == 65 && p[0] == 4));
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn a_malformed_or_oversized_token_is_refused_before_any_key_is_fetched() {
        for bad in ["", "a.b", "a.b.c.d", "!!.??.##"] {
            assert!(matches!(parse_token(bad), Err(KubernetesError::Refused(_))));
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        let Err(KubernetesError::Refused(m)) = parse_token(&huge) else {
            panic!("an oversized token must be refused")
        };
        assert!(m.contains("limit"), "{m}");
    }
}
