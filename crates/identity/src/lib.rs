//! Who is calling, as every handler and policy sees it: the authenticated [`Principal`], its
//! [`Role`] and [`AuthMethod`], and how much of the caller's own input an error may repeat
//! back ([`text`]). Kept apart from the server stack so that path policies and the SDK can
//! name a caller without compiling a server.
#![forbid(unsafe_code)]

use tonic::Status;

pub mod text;

/// The policy that no token may carry: root is held only by the bootstrap root token and
/// admin identities, never granted through a JWT.
pub const ROOT_POLICY: &str = "root";

/// Shortest lifetime (seconds) of a token vault-service issues, by any login.
pub const MIN_TOKEN_TTL_SECS: u64 = 60;
/// Longest lifetime (seconds) of a token vault-service issues: verifiers refuse any longer.
pub const MAX_TOKEN_TTL_SECS: u64 = 86_400;
/// Token lifetime (seconds) when a credential or login role sets none.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// Most policies one token carries (so one credential or login role grants).
pub const MAX_TOKEN_POLICIES: usize = 16;

/// What an authenticated caller may do at the runtime level. Finer rules (path policies)
/// belong to each service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A person's or an application's token (a vault-service JWT or root token checked by
    /// path policies): never a service identity, whatever its policies say.
    User,
    /// A named service identity (a static service token, or a certificate named in
    /// `SENTIA_SERVICE_IDENTITIES`): what it may do is granted per identity by each service.
    Service,
    /// An operator: may also call admin RPCs.
    Admin,
}

impl Role {
    /// A role a static credential may be given in config (`service` or `admin`; `user` is
    /// only ever carried by tokens vault-service issues).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(Self::Service),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Lowercase name as used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
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
    /// Signed JWT issued by vault-service's AuthService.
    Jwt,
    /// vault-service's bootstrap root token.
    Root,
}

impl AuthMethod {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Mtls => "mtls",
            Self::Jwt => "jwt",
            Self::Root => "root",
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
    /// Policies (roles) carried by the credential itself, e.g. a JWT's `pol` claim. Static
    /// tokens and certificates carry none; services map those identities to policies.
    pub policies: Vec<String>,
    /// Token id (JWT `jti`), for revocation.
    pub token_id: Option<String>,
    /// When the credential stops being accepted (Unix seconds).
    pub expires_at: Option<i64>,
}

impl Principal {
    /// A principal from a static credential (no policies, no expiry).
    pub fn new(id: impl Into<String>, role: Role, method: AuthMethod) -> Self {
        Self {
            id: id.into(),
            role,
            method,
            policies: Vec::new(),
            token_id: None,
            expires_at: None,
        }
    }

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

/// The request id of the current call (from `x-request-id`, or minted here as a UUIDv7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id attached to a request by the server stack ("" if none).
    pub fn of<T>(request: &tonic::Request<T>) -> String {
        request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default()
    }
}
