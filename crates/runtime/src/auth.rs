//! Authentication at the edge of every server: a bearer token in the `authorization`
//! metadata (static service tokens, stored only as SHA-256 hashes and compared in constant
//! time), or, over mutual TLS, the common name of the client certificate.
//! A service may add a [`BearerVerifier`] for tokens it issues itself (vault-service's JWTs
//! and root tokens). The resulting [`Principal`] rides in the request extensions; handlers
//! authorize with [`Principal::require`] or their own policies.
//! Unauthenticated -> UNAUTHENTICATED; not allowed -> PERMISSION_DENIED.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub use sentia_identity::{AuthMethod, Principal, Role};

use crate::tls::certificate_common_name;

struct TokenEntry {
    id: String,
    role: Role,
    hash: [u8; 32],
}

/// Static bearer tokens. Only SHA-256 hashes are kept, so config and memory dumps do not
/// reveal usable tokens.
#[derive(Clone, Default)]
pub struct TokenTable(Arc<Vec<TokenEntry>>);

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.0.iter().map(|e| (&e.id, e.role.as_str())).collect();
        f.debug_tuple("TokenTable").field(&ids).finish()
    }
}

impl TokenTable {
    /// Parses `id:role:sha256hex[,id:role:sha256hex...]` where role is `service` or `admin`
    /// and the hash is `printf %s "$TOKEN" | sha256sum`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, item) in raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let parts: Vec<&str> = item.split(':').collect();
            let [id, role, hash] = parts[..] else {
                return Err(format!("entry {} is not id:role:sha256hex", i + 1));
            };
            let role = Role::parse(role)
                .ok_or_else(|| format!("entry {} ({id}): role must be service or admin", i + 1))?;
            let bytes = hex::decode(hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!(
                        "entry {} ({id}): hash must be 64 hex digits (SHA-256)",
                        i + 1
                    )
                })?;
            if id.is_empty() {
                return Err(format!("entry {}: empty id", i + 1));
            }
            entries.push(TokenEntry {
                id: id.to_string(),
                role,
                hash: bytes,
            });
        }
        Ok(Self(Arc::new(entries)))
    }

    /// Builds a table from plaintext tokens (hashing them): for `sentia dev` and tests.
    pub fn from_plain<'a>(tokens: impl IntoIterator<Item = (&'a str, Role, &'a str)>) -> Self {
        Self(Arc::new(
            tokens
                .into_iter()
                .map(|(id, role, token)| TokenEntry {
                    id: id.to_string(),
                    role,
                    hash: sentia_crypto::sha256(token.as_bytes()),
                })
                .collect(),
        ))
    }

    /// The config line for these entries (`id:role:hash,...`).
    pub fn to_config(&self) -> String {
        self.0
            .iter()
            .map(|e| format!("{}:{}:{}", e.id, e.role.as_str(), hex::encode(e.hash)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn lookup(&self, token: &str) -> Option<&TokenEntry> {
        let presented = sentia_crypto::sha256(token.as_bytes());
        // Compare against every entry so timing does not reveal which one matched.
        let mut found = None;
        for entry in self.0.iter() {
            if sentia_crypto::constant_time_eq(&entry.hash, &presented) {
                found = Some(entry);
            }
        }
        found
    }
}

/// Boxed future returned by a [`BearerVerifier`].
pub type VerifyFuture<'a> =
    Pin<Box<dyn Future<Output = Option<Result<Principal, Status>>> + Send + 'a>>;

/// Verifies bearer tokens that are not static tokens, e.g. JWTs. Returns `None` when the
/// token is not of a kind it handles, so the next check can run.
pub trait BearerVerifier: Send + Sync + 'static {
    /// Verifies `token`; may await (e.g. to fetch a signing key it has not seen yet).
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

/// Turns request metadata and TLS peer certificates into a [`Principal`].
#[derive(Clone)]
pub struct Authenticator {
    tokens: TokenTable,
    admin_identities: Arc<Vec<String>>,
    service_identities: Arc<Vec<String>>,
    verifier: Option<Arc<dyn BearerVerifier>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens)
            .field("admin_identities", &self.admin_identities)
            .field("service_identities", &self.service_identities)
            .field("verifier", &self.verifier.is_some())
            .finish()
    }
}

/// What a request presented, extracted synchronously so the async part owns its data.
enum Presented {
    Bearer(zeroize::Zeroizing<String>),
    Certificate(String),
    Nothing,
}

impl Authenticator {
    /// Tokens plus the mTLS common names that get the admin role. A certificate whose name
    /// is in neither list is refused: see [`Authenticator::with_service_identities`].
    pub fn new(tokens: TokenTable, admin_identities: Vec<String>) -> Self {
        Self {
            tokens,
            admin_identities: Arc::new(admin_identities),
            service_identities: Arc::new(Vec::new()),
            verifier: None,
        }
    }

    /// The mTLS common names that get the service role. Any other certificate the CA signed
    /// gets nothing: an identity exists only where it is configured.
    pub fn with_service_identities(mut self, names: Vec<String>) -> Self {
        self.service_identities = Arc::new(names);
        self
    }

    /// Adds a verifier consulted for bearer tokens that are not static tokens.
    pub fn with_verifier(mut self, verifier: Arc<dyn BearerVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    fn presented(
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Presented, Status> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization metadata must be 'Bearer <token>'")
                })?
                .trim();
            return Ok(Presented::Bearer(zeroize::Zeroizing::new(
                token.to_string(),
            )));
        }
        let peer_cn = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|leaf| certificate_common_name(leaf)));
        Ok(peer_cn.map_or(Presented::Nothing, Presented::Certificate))
    }

    /// Authenticates one request. A bearer token, when present, decides; otherwise a verified
    /// client certificate does.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, Status>> + Send + 'static>> {
        let presented = Self::presented(headers, extensions);
        let this = self.clone();
        Box::pin(async move { this.decide(presented?).await })
    }

    async fn decide(&self, presented: Presented) -> Result<Principal, Status> {
        match presented {
            Presented::Bearer(token) => {
                if let Some(entry) = self.tokens.lookup(&token) {
                    return Ok(Principal::new(
                        entry.id.clone(),
                        entry.role,
                        AuthMethod::Token,
                    ));
                }
                if let Some(verifier) = &self.verifier
                    && let Some(result) = verifier.verify(&token).await
                {
                    return result;
                }
                Err(Status::unauthenticated("invalid or revoked token"))
            }
            Presented::Certificate(cn) => {
                let role = if self.admin_identities.iter().any(|a| a == &cn) {
                    Role::Admin
                } else if self.service_identities.iter().any(|a| a == &cn) {
                    Role::Service
                } else {
                    return Err(Status::permission_denied(format!(
                        "certificate {:?} is not an identity of this service: name it in \
                         SENTIA_SERVICE_IDENTITIES or SENTIA_ADMIN_IDENTITIES",
                        crate::text::clip(&cn, 128)
                    )));
                };
                Ok(Principal::new(cn, role, AuthMethod::Mtls))
            }
            Presented::Nothing => Err(Status::unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' metadata or connect \
                 with a client certificate",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_configured_token_authenticates_with_its_role() {
        let table = TokenTable::parse(
            &TokenTable::from_plain([("ops", Role::Admin, "s3cret")]).to_config(),
        )
        .unwrap();
        let auth = Authenticator::new(table, vec![]);
        let p = auth
            .authenticate(&headers("Bearer s3cret"), &http::Extensions::new())
            .await
            .unwrap();
        assert_eq!(p.id, "ops");
        assert_eq!(p.role, Role::Admin);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_is_unauthenticated() {
        let auth = Authenticator::new(TokenTable::from_plain([("a", Role::Service, "x")]), vec![]);
        let err = auth
            .authenticate(&headers("Bearer y"), &http::Extensions::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = auth
            .authenticate(&headers("Basic x"), &http::Extensions::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = auth
            .authenticate(&http::HeaderMap::new(), &http::Extensions::new())
            .await
            .unwrap_err();
        assert!(err.message().contains("missing credentials"));
    }

    #[test]
    fn a_service_principal_is_denied_admin_actions() {
        let p = Principal::new("svc", Role::Service, AuthMethod::Token);
        let err = p.require(Role::Admin, "CreateKey").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(p.require(Role::Service, "Encrypt").is_ok());
    }

    struct OnlyJwt;

    impl BearerVerifier for OnlyJwt {
        fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
            Box::pin(async move {
                token.starts_with("eyJ").then(|| {
                    if token == "eyJgood" {
                        Ok(Principal::new("app:x", Role::Service, AuthMethod::Jwt))
                    } else {
                        Err(Status::unauthenticated("token signature is not valid"))
                    }
                })
            })
        }
    }

    #[tokio::test]
    async fn a_verifier_decides_tokens_that_are_not_static_tokens() {
        let auth = Authenticator::new(TokenTable::from_plain([("a", Role::Admin, "x")]), vec![])
            .with_verifier(Arc::new(OnlyJwt));
        let none = http::Extensions::new();
        let p = auth
            .authenticate(&headers("Bearer eyJgood"), &none)
            .await
            .unwrap();
        assert_eq!(p.method, AuthMethod::Jwt);
        let err = auth
            .authenticate(&headers("Bearer eyJbad"), &none)
            .await
            .unwrap_err();
        assert!(err.message().contains("signature"), "{err:?}");
        let err = auth
            .authenticate(&headers("Bearer other"), &none)
            .await
            .unwrap_err();
        assert!(err.message().contains("invalid or revoked"), "{err:?}");
        let p = auth
            .authenticate(&headers("Bearer x"), &none)
            .await
            .unwrap();
        assert_eq!(p.role, Role::Admin);
    }

    #[test]
    fn malformed_token_config_names_the_entry() {
        assert!(
            TokenTable::parse("a:service:zz")
                .unwrap_err()
                .contains("entry 1")
        );
        assert!(TokenTable::parse("a:root:00").unwrap_err().contains("role"));
        assert!(TokenTable::parse("justone").is_err());
    }
}
