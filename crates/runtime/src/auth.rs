//! Authentication at the edge of every server: a bearer token in the `authorization`
//! metadata (static service tokens, stored only as SHA-256 hashes and compared in constant
//! time), or, over mutual TLS, the common name of the client certificate.
//! The resulting [`Principal`] rides in the request extensions; handlers authorize with
//! [`Principal::require`]. Unauthenticated -> UNAUTHENTICATED; not allowed -> PERMISSION_DENIED.

use std::fmt;
use std::sync::Arc;

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::tls::certificate_common_name;

/// What an authenticated caller may do at the runtime level. Finer rules (path policies)
/// belong to each service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A service identity: may call crypto RPCs.
    Service,
    /// An operator: may also call admin RPCs.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(Self::Service),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Lowercase name as used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Admin => "admin",
        }
    }
}

/// How the caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Static bearer token.
    Token,
    /// Client certificate.
    Mtls,
}

impl AuthMethod {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Mtls => "mtls",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Identity, e.g. `vault-service` or `admin`.
    pub id: String,
    /// Granted role.
    pub role: Role,
    /// How it authenticated.
    pub method: AuthMethod,
}

impl Principal {
    /// The principal the auth layer attached to this request; UNAUTHENTICATED if none (which
    /// only happens on public methods).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("this method needs credentials"))
    }

    /// PERMISSION_DENIED unless the principal has at least `role`.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Status> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {} role; caller '{}' has the {} role",
                role.as_str(),
                self.id,
                self.role.as_str()
            )))
        }
    }
}

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

/// Turns request metadata and TLS peer certificates into a [`Principal`].
#[derive(Clone, Debug)]
pub struct Authenticator {
    tokens: TokenTable,
    admin_identities: Arc<Vec<String>>,
}

impl Authenticator {
    /// Tokens plus the mTLS common names that get the admin role.
    pub fn new(tokens: TokenTable, admin_identities: Vec<String>) -> Self {
        Self {
            tokens,
            admin_identities: Arc::new(admin_identities),
        }
    }

    /// Authenticates one request. A bearer token, when present, decides; otherwise a verified
    /// client certificate does.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Principal, Status> {
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
            return match self.tokens.lookup(token) {
                Some(entry) => Ok(Principal {
                    id: entry.id.clone(),
                    role: entry.role,
                    method: AuthMethod::Token,
                }),
                None => Err(Status::unauthenticated("invalid or revoked token")),
            };
        }
        let peer_cn = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|leaf| certificate_common_name(leaf)));
        if let Some(cn) = peer_cn {
            let role = if self.admin_identities.iter().any(|a| a == &cn) {
                Role::Admin
            } else {
                Role::Service
            };
            return Ok(Principal {
                id: cn,
                role,
                method: AuthMethod::Mtls,
            });
        }
        Err(Status::unauthenticated(
            "missing credentials: send 'authorization: Bearer <token>' metadata or connect with a \
             client certificate",
        ))
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

    #[test]
    fn a_configured_token_authenticates_with_its_role() {
        let table = TokenTable::parse(
            &TokenTable::from_plain([("ops", Role::Admin, "s3cret")]).to_config(),
        )
        .unwrap();
        let auth = Authenticator::new(table, vec![]);
        let p = auth
            .authenticate(&headers("Bearer s3cret"), &http::Extensions::new())
            .unwrap();
        assert_eq!(p.id, "ops");
        assert_eq!(p.role, Role::Admin);
    }

    #[test]
    fn a_wrong_or_missing_token_is_unauthenticated() {
        let auth = Authenticator::new(TokenTable::from_plain([("a", Role::Service, "x")]), vec![]);
        let err = auth
            .authenticate(&headers("Bearer y"), &http::Extensions::new())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = auth
            .authenticate(&headers("Basic x"), &http::Extensions::new())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = auth
            .authenticate(&http::HeaderMap::new(), &http::Extensions::new())
            .unwrap_err();
        assert!(err.message().contains("missing credentials"));
    }

    #[test]
    fn a_service_principal_is_denied_admin_actions() {
        let p = Principal {
            id: "svc".into(),
            role: Role::Service,
            method: AuthMethod::Token,
        };
        let err = p.require(Role::Admin, "CreateKey").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(p.require(Role::Service, "Encrypt").is_ok());
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
