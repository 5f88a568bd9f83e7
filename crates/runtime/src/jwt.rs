//! Sentia access tokens: compact JWTs signed with Ed25519 (`alg: EdDSA`) by a key-service
//! signing key. Any service verifies them from the public keys key-service publishes
//! (GetPublicKeys), cached here by `kid`; an unknown `kid` (a rotation happened) triggers one
//! refetch, so rotating the signing key never breaks live tokens.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sentia_proto::keys::v1::GetPublicKeysRequest;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::auth::{AuthMethod, Principal, Role};
use crate::client::AuthedChannel;

/// `iss` and `aud` of every Sentia token.
pub const ISSUER: &str = "sentia";

/// Tolerated clock difference between the issuer and a verifier.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// Longest accepted token: a bound on work done for garbage input.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Longest lifetime (`exp - iat`) a token may have: what vault-service issues at most. A
/// longer one was not issued by vault-service, whoever signed it.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = sentia_identity::MAX_TOKEN_TTL_SECS as i64;

/// Most policies a token may carry (as on an app credential).
pub const MAX_TOKEN_POLICIES: usize = sentia_identity::MAX_TOKEN_POLICIES;

pub use sentia_identity::{DEFAULT_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS, ROOT_POLICY};

/// The claims Sentia puts in a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Subject: the principal id, e.g. `app:billing-api`.
    pub sub: String,
    /// Audience, always [`ISSUER`].
    pub aud: String,
    /// Token id, for revocation.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Policies granted to the holder.
    pub pol: Vec<String>,
}

impl Claims {
    /// The principal these (verified) claims describe.
    pub fn into_principal(self) -> Principal {
        Principal {
            id: self.sub,
            role: Role::User,
            method: AuthMethod::Jwt,
            policies: self.pol,
            token_id: Some(self.jti),
            expires_at: Some(self.exp),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// Why a token was refused. The messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a well-formed compact JWS.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// Signed with an algorithm other than EdDSA.
    #[error("token algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// No published key has this id.
    #[error("token was signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature is not valid")]
    Signature,
    /// Issuer or audience is not Sentia.
    #[error("token was not issued for sentia")]
    Issuer,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The public keys could not be fetched.
    #[error("cannot fetch token verification keys: {0}")]
    KeysUnavailable(String),
    /// Lives longer than any token vault-service issues, or was issued in the future.
    #[error(
        "token lifetime is not one vault-service issues (at most {MAX_TOKEN_LIFETIME_SECS} s, issued in the past)"
    )]
    Lifetime,
    /// Carries a policy that no token may carry.
    #[error("token carries policy {0:?}, which no token may carry")]
    Policy(String),
}

/// The part of a token that is signed: `base64url(header).base64url(claims)`.
pub fn signing_input(kid: &str, claims: &Claims) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
        kid: kid.into(),
    };
    // Serializing these plain structs cannot fail.
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let c = serde_json::to_vec(claims).unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h),
        URL_SAFE_NO_PAD.encode(c)
    )
}

/// Appends the signature to a signing input, giving the compact token.
pub fn assemble(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// True if `token` looks like a compact JWS (three dot-separated base64url parts). Used to
/// route a bearer token to the JWT verifier.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

struct Parsed<'a> {
    kid: String,
    signed: &'a str,
    signature: Vec<u8>,
    claims: Claims,
}

fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("longer than 8192 bytes"));
    }
    let (signed, sig) = token
        .rsplit_once('.')
        .ok_or(JwtError::Malformed("expected header.claims.signature"))?;
    let (h, c) = signed
        .split_once('.')
        .ok_or(JwtError::Malformed("expected header.claims.signature"))?;
    let decode = |part: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed(what))
    };
    let header: Header = serde_json::from_slice(&decode(h, "header is not base64url")?)
        .map_err(|_| JwtError::Malformed("header is not a JWS header"))?;
    if header.alg != "EdDSA" {
        return Err(JwtError::Algorithm(header.alg));
    }
    let claims: Claims = serde_json::from_slice(&decode(c, "claims are not base64url")?)
        .map_err(|_| JwtError::Malformed("claims are not sentia claims"))?;
    Ok(Parsed {
        kid: header.kid,
        signed,
        signature: decode(sig, "signature is not base64url")?,
        claims,
    })
}

fn check(parsed: Parsed<'_>, public_key: &[u8], now: i64) -> Result<Claims, JwtError> {
    if !sentia_crypto::verify_ed25519(public_key, parsed.signed.as_bytes(), &parsed.signature) {
        return Err(JwtError::Signature);
    }
    let c = parsed.claims;
    if c.iss != ISSUER || c.aud != ISSUER {
        return Err(JwtError::Issuer);
    }
    if now >= c.exp {
        return Err(JwtError::Expired);
    }
    if now + CLOCK_SKEW_SECS < c.nbf {
        return Err(JwtError::NotYetValid);
    }
    if c.iat > now + CLOCK_SKEW_SECS || c.exp.saturating_sub(c.iat) > MAX_TOKEN_LIFETIME_SECS {
        return Err(JwtError::Lifetime);
    }
    if c.pol.len() > MAX_TOKEN_POLICIES {
        return Err(JwtError::Malformed("more than 16 policies"));
    }
    if let Some(p) = c.pol.iter().find(|p| *p == ROOT_POLICY) {
        return Err(JwtError::Policy(p.clone()));
    }
    Ok(c)
}

/// Public keys of one key-service signing key, by `kid`, refetched on demand.
pub struct PublicKeySet {
    keys: RwLock<HashMap<String, Vec<u8>>>,
    source: Option<(KeyServiceClient<AuthedChannel>, String)>,
    last_fetch: Mutex<Option<Instant>>,
}

/// Refetches happen at most this often, so a flood of tokens with made-up `kid`s cannot
/// flood key-service.
const MIN_REFETCH: Duration = Duration::from_secs(2);

impl PublicKeySet {
    /// Keys fetched from key-service's GetPublicKeys for `key_name`.
    pub fn from_key_service(client: KeyServiceClient<AuthedChannel>, key_name: &str) -> Arc<Self> {
        Arc::new(Self {
            keys: RwLock::new(HashMap::new()),
            source: Some((client, key_name.to_string())),
            last_fetch: Mutex::new(None),
        })
    }

    /// A fixed set of keys (`kid` -> Ed25519 public key): for tests and offline verification.
    pub fn fixed(keys: HashMap<String, Vec<u8>>) -> Arc<Self> {
        Arc::new(Self {
            keys: RwLock::new(keys),
            source: None,
            last_fetch: Mutex::new(None),
        })
    }

    /// Every key currently known, by kid.
    pub fn snapshot(&self) -> HashMap<String, Vec<u8>> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn get(&self, kid: &str) -> Option<Vec<u8>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// Fetches the current public keys (at most once per [`MIN_REFETCH`] unless `force`):
    /// what an unknown `kid` triggers.
    pub async fn refresh(&self, force: bool) -> Result<(), JwtError> {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.reload().await
    }

    /// Fetches the current public keys now, without using up the unknown-`kid` refetch
    /// allowance: for periodic re-reads, so retired versions stop verifying.
    pub async fn reload(&self) -> Result<(), JwtError> {
        let Some((client, name)) = &self.source else {
            return Ok(());
        };
        let response = client
            .clone()
            .get_public_keys(GetPublicKeysRequest {
                key_name: name.clone(),
            })
            .await
            .map_err(|s| JwtError::KeysUnavailable(s.message().to_string()))?
            .into_inner();
        let fresh: HashMap<_, _> = response
            .keys
            .into_iter()
            .map(|k| (k.kid, k.public_key))
            .collect();
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
        Ok(())
    }

    /// Re-reads the published keys every `interval` until `shutdown`.
    pub fn reload_every(
        self: &Arc<Self>,
        interval: std::time::Duration,
        shutdown: crate::Shutdown,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                if let Err(e) = this.reload().await {
                    tracing::warn!(error = %e, "token signing keys could not be re-read; keeping the known ones");
                }
            }
        });
    }

    /// Verifies a token's signature, issuer, audience and validity window.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let parsed = parse(token)?;
        // Only versions of the one token-signing key verify tokens: a kid of any other key
        // (say, the audit checkpoint key) is refused before any lookup or refetch.
        if let Some((_, name)) = &self.source
            && !parsed
                .kid
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix("-v"))
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(JwtError::UnknownKey(
                crate::text::clip(&parsed.kid, 64).into(),
            ));
        }
        let key = match self.get(&parsed.kid) {
            Some(k) => k,
            None => {
                self.refresh(false).await?;
                self.get(&parsed.kid).ok_or_else(|| {
                    JwtError::UnknownKey(crate::text::clip(&parsed.kid, 64).into())
                })?
            }
        };
        check(parsed, &key, sentia_proto::wkt::now_secs())
    }
}

/// Accepts Sentia JWTs on a service other than vault-service. It has no revocation list
/// (vault-service keeps that), so a revoked token stays valid here until it expires.
pub struct JwtVerifier(pub Arc<PublicKeySet>);

impl crate::BearerVerifier for JwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> crate::auth::VerifyFuture<'a> {
        Box::pin(async move {
            if !looks_like_jwt(token) {
                return None;
            }
            Some(match self.0.verify(token).await {
                Ok(claims) => Ok(claims.into_principal()),
                Err(JwtError::KeysUnavailable(m)) => Err(tonic::Status::unavailable(format!(
                    "cannot verify the token now: {m}"
                ))),
                Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> sentia_crypto::SigningKey {
        sentia_crypto::SigningKey::from_seed(sentia_crypto::SecretKey::generate()).unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        let now = sentia_proto::wkt::now_secs();
        Claims {
            iss: ISSUER.into(),
            sub: "app:billing".into(),
            aud: ISSUER.into(),
            jti: "t1".into(),
            iat: now,
            nbf: now,
            exp: now + exp_in,
            pol: vec!["developer".into()],
        }
    }

    fn token(k: &sentia_crypto::SigningKey, kid: &str, c: &Claims) -> String {
        let input = signing_input(kid, c);
        assemble(&input, &k.sign(input.as_bytes()))
    }

    fn set(k: &sentia_crypto::SigningKey, kid: &str) -> Arc<PublicKeySet> {
        PublicKeySet::fixed(HashMap::from([(kid.to_string(), k.public_key().to_vec())]))
    }

    #[tokio::test]
    async fn a_signed_token_verifies_and_carries_its_policies() {
        let k = key();
        let t = token(&k, "sentia-jwt-v1", &claims(60));
        assert!(looks_like_jwt(&t));
        let c = set(&k, "sentia-jwt-v1").verify(&t).await.unwrap();
        let p = c.into_principal();
        assert_eq!(p.id, "app:billing");
        assert_eq!(p.policies, vec!["developer".to_string()]);
        assert_eq!(p.method, AuthMethod::Jwt);
    }

    #[tokio::test]
    async fn expired_forged_and_unknown_key_tokens_are_refused() {
        let k = key();
        let keys = set(&k, "sentia-jwt-v1");
        let expired = token(&k, "sentia-jwt-v1", &claims(-1));
        assert_eq!(keys.verify(&expired).await, Err(JwtError::Expired));

        let forged = token(&key(), "sentia-jwt-v1", &claims(60));
        assert_eq!(keys.verify(&forged).await, Err(JwtError::Signature));

        let other_kid = token(&k, "sentia-jwt-v9", &claims(60));
        assert_eq!(
            keys.verify(&other_kid).await,
            Err(JwtError::UnknownKey("sentia-jwt-v9".into()))
        );

        // Claims edited after signing: the signature no longer covers them.
        let good = token(&k, "sentia-jwt-v1", &claims(60));
        let mut more = claims(60);
        more.pol = vec!["system_admin".into()];
        let edited_claims = signing_input("sentia-jwt-v1", &more);
        let sig = good.rsplit_once('.').unwrap().1;
        let tampered = format!("{edited_claims}.{sig}");
        assert_eq!(keys.verify(&tampered).await, Err(JwtError::Signature));

        let mut wrong_iss = claims(60);
        wrong_iss.iss = "someone-else".into();
        let t = token(&k, "sentia-jwt-v1", &wrong_iss);
        assert_eq!(keys.verify(&t).await, Err(JwtError::Issuer));
    }

    #[tokio::test]
    async fn garbage_and_other_algorithms_are_malformed_not_panics() {
        let keys = set(&key(), "k");
        for bad in ["", "a.b", "a.b.c", "eyJ.eyJ.x", &"x".repeat(10_000)] {
            assert!(
                matches!(keys.verify(bad).await, Err(JwtError::Malformed(_))),
                "{bad:.20}"
            );
        }
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k"}"#);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        let none = format!("{h}.{c}.");
        assert_eq!(
            keys.verify(&none).await,
            Err(JwtError::Algorithm("none".into()))
        );
    }

    #[tokio::test]
    async fn tokens_that_vault_service_never_issues_are_refused_even_when_well_signed() {
        let k = key();
        let keys = set(&k, "sentia-jwt-v1");
        let mut root = claims(60);
        root.pol = vec!["developer".into(), "root".into()];
        let t = token(&k, "sentia-jwt-v1", &root);
        assert_eq!(keys.verify(&t).await, Err(JwtError::Policy("root".into())));

        let mut ten_years = claims(10 * 365 * 86_400);
        ten_years.iat = sentia_proto::wkt::now_secs();
        let t = token(&k, "sentia-jwt-v1", &ten_years);
        assert_eq!(keys.verify(&t).await, Err(JwtError::Lifetime));

        // Backdating iat does not stretch the window: exp - iat is what is capped.
        let mut backdated = claims(60);
        backdated.iat = sentia_proto::wkt::now_secs() - 2 * 86_400;
        let t = token(&k, "sentia-jwt-v1", &backdated);
        assert_eq!(keys.verify(&t).await, Err(JwtError::Lifetime));

        let mut many = claims(60);
        many.pol = (0..17).map(|i| format!("p{i}")).collect();
        let t = token(&k, "sentia-jwt-v1", &many);
        assert!(matches!(keys.verify(&t).await, Err(JwtError::Malformed(_))));

        let day = token(&k, "sentia-jwt-v1", &claims(MAX_TOKEN_LIFETIME_SECS));
        assert!(
            keys.verify(&day).await.is_ok(),
            "a 24 h token is what vault-service issues"
        );
    }
}
