//! Who is calling, for services other than vault-service: vault-service issues and revokes
//! every token (root tokens, app JWTs), so they ask it — `WhoAmI` with the caller's token —
//! instead of keeping a second copy of the rules. Answers are cached for
//! `SENTIA_IDENTITY_CACHE_TTL` (default [`DEFAULT_CACHE_TTL`], never past the token's expiry):
//! that bounds how long a revoked token keeps working there, as `SENTIA_TOKEN_REFRESH` bounds
//! it on other vault-service replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sentia_proto::vault::v1::WhoAmIRequest;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::VerifyFuture;
use crate::client::CallContext;
use crate::{AuthMethod, BearerVerifier, Principal, Reader, Role};

/// How long a vault-service answer is reused unless configured: vault-service's own
/// replicas see a revocation within their default `SENTIA_TOKEN_REFRESH` of 5 s too.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most tokens remembered; the cache is emptied when it would grow past this.
const CACHE_MAX: usize = 10_000;

type Cache = HashMap<[u8; 32], (Principal, Instant)>;

/// Reads `SENTIA_IDENTITY_CACHE_TTL` (0 = ask vault-service on every call).
pub fn cache_ttl_from(reader: &mut Reader<'_>) -> Duration {
    reader.duration_or("SENTIA_IDENTITY_CACHE_TTL", DEFAULT_CACHE_TTL)
}

/// A bearer verifier backed by vault-service's WhoAmI.
pub struct VaultIdentity {
    channel: Channel,
    ttl: Duration,
    cache: Mutex<Cache>,
}

impl VaultIdentity {
    /// Uses `channel` (to vault-service, without credentials of its own) and keeps answers
    /// for `ttl`.
    pub fn new(channel: Channel, ttl: Duration) -> Self {
        Self {
            channel,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Principal> {
        let cache = self.cache.lock().ok()?;
        let (p, until) = cache.get(key)?;
        (Instant::now() < *until).then(|| p.clone())
    }

    fn remember(&self, key: [u8; 32], p: &Principal) {
        let ttl = match p.expires_at {
            Some(exp) => {
                let left = exp.saturating_sub(sentia_proto::wkt::now_secs()).max(0);
                self.ttl.min(Duration::from_secs(left as u64))
            }
            None => self.ttl,
        };
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (p.clone(), Instant::now() + ttl));
        }
    }

    async fn ask(&self, token: &str) -> Result<Principal, Status> {
        let ctx = CallContext::with_token(Some(token))
            .map_err(|_| Status::unauthenticated("the bearer token is not valid header text"))?;
        let mut client = AuthServiceClient::new(ctx.wrap(self.channel.clone()));
        let r = client
            .who_am_i(WhoAmIRequest {})
            .await
            .map_err(|s| match s.code() {
                Code::Unauthenticated | Code::PermissionDenied => {
                    Status::unauthenticated(s.message().to_string())
                }
                _ => Status::unavailable(format!(
                    "cannot check the token with vault-service now: {}",
                    s.message()
                )),
            })?;
        let r = r.into_inner();
        let who = r
            .principal
            .ok_or_else(|| Status::unavailable("vault-service did not say who the caller is"))?;
        let method = match who.auth_method.as_str() {
            "root" => AuthMethod::Root,
            // Policies come resolved from vault-service whatever the credential was.
            _ => AuthMethod::Jwt,
        };
        Ok(Principal {
            policies: who.roles,
            expires_at: r.expire_time.map(|t| t.seconds),
            ..Principal::new(who.id, Role::User, method)
        })
    }
}

impl BearerVerifier for VaultIdentity {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            let key = sentia_crypto::sha256(token.as_bytes());
            if let Some(p) = self.cached(&key) {
                return Some(Ok(p));
            }
            Some(self.ask(token).await.inspect(|p| self.remember(key, p)))
        })
    }
}
