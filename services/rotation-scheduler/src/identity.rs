//! Who is calling: vault-service issues and revokes every token (root tokens, app JWTs), so
//! the scheduler asks it — `WhoAmI` with the caller's token — instead of keeping a second
//! copy of the rules. Answers are cached for a short time (at most [`CACHE_TTL`], never past
//! the token's expiry), which bounds how long a revoked token keeps working here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sentia_proto::vault::v1::WhoAmIRequest;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_runtime::auth::VerifyFuture;
use sentia_runtime::client::CallContext;
use sentia_runtime::{AuthMethod, BearerVerifier, Principal, Role};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a vault-service answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most tokens remembered; the cache is emptied when it would grow past this.
const CACHE_MAX: usize = 10_000;

type Cache = HashMap<[u8; 32], (Principal, Instant)>;

/// A bearer verifier backed by vault-service's WhoAmI.
pub struct VaultIdentity {
    channel: Channel,
    cache: Mutex<Cache>,
}

impl VaultIdentity {
    /// Uses `channel` (to vault-service, without credentials of its own).
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
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
                let left = exp.saturating_sub(sentia_runtime::jwt::now_secs()).max(0);
                CACHE_TTL.min(Duration::from_secs(left as u64))
            }
            None => CACHE_TTL,
        };
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
            ..Principal::new(who.id, Role::Service, method)
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
