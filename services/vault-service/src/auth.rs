//! Tokens and the AuthService: app credentials (role id + secret id, the secret stored as an
//! argon2 hash) are exchanged for short-lived JWTs signed by key-service; a bootstrap root
//! token is minted once at first start; revoked token ids are refused until they expire.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sentia_proto::common::v1 as cpb;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_server::AuthService;
use sentia_proto::wkt::timestamp;
use sentia_runtime::auth::VerifyFuture;
use sentia_runtime::jwt::{self, Claims, PublicKeySet};
use sentia_runtime::{AuthMethod, BearerVerifier, Principal, Role, Shutdown};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::VaultError;
use crate::keys::Keys;
use crate::store::{CredentialRow, Store};
use sentia_policy::{Capability, Policies, ROOT_POLICY};
use sentia_runtime::audit::{Call, CallInfo, Emitter};

/// Prefix of root tokens (so they are recognisable in a leaked-credential scan).
pub const ROOT_TOKEN_PREFIX: &str = "sentia-root.";
/// Shortest token lifetime a credential may set.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(jwt::MIN_TOKEN_TTL_SECS);
/// Longest token lifetime a credential may set: the runtime refuses any token living longer.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(jwt::MAX_TOKEN_LIFETIME_SECS as u64);
/// Token lifetime when a credential does not set one.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(jwt::DEFAULT_TOKEN_TTL_SECS);
/// Most policies on one credential.
pub const MAX_CREDENTIAL_POLICIES: usize = jwt::MAX_TOKEN_POLICIES;

struct RootToken {
    id: String,
    hash: [u8; 32],
}

/// Issues and checks tokens.
pub struct Tokens {
    store: Store,
    keys: Arc<Keys>,
    public_keys: Arc<PublicKeySet>,
    roots: RwLock<Vec<RootToken>>,
    revoked: RwLock<HashSet<String>>,
    last_kid: RwLock<Option<String>>,
}

impl Tokens {
    /// Loads root tokens and revocations from the database.
    pub async fn load(
        store: Store,
        keys: Arc<Keys>,
        public_keys: Arc<PublicKeySet>,
    ) -> Result<Arc<Self>, VaultError> {
        let t = Arc::new(Self {
            store,
            keys,
            public_keys,
            roots: RwLock::new(Vec::new()),
            revoked: RwLock::new(HashSet::new()),
            last_kid: RwLock::new(None),
        });
        t.refresh().await?;
        Ok(t)
    }

    /// Re-reads root tokens and revocations (other replicas' changes), and the token signing
    /// keys: a version retired at key-service (min_decryption_version raised after a
    /// rotation's grace period) stops verifying here too.
    pub async fn refresh(&self) -> Result<(), VaultError> {
        if let Err(e) = self.public_keys.reload().await {
            tracing::warn!(error = %e, "token signing keys could not be refreshed; keeping the known ones");
        }
        let mut roots = Vec::new();
        for (id, hash_hex) in self.store.root_tokens().await? {
            let hash = hex::decode(&hash_hex)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| VaultError::DataLoss("a root token row".into()))?;
            roots.push(RootToken { id, hash });
        }
        let revoked: HashSet<String> = self.store.revoked().await?.into_iter().collect();
        if let Ok(mut g) = self.roots.write() {
            *g = roots;
        }
        if let Ok(mut g) = self.revoked.write() {
            *g = revoked;
        }
        Ok(())
    }

    /// Refreshes every `interval` until shutdown.
    pub fn keep_fresh(self: &Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tick.tick() => {
                        if let Err(e) = this.refresh().await {
                            tracing::warn!(error = %e, "token revocation refresh failed");
                        }
                    }
                }
            }
        });
    }

    /// Mints the bootstrap root token if none exists. Returns it (to show once) when created.
    pub async fn bootstrap_root(&self) -> Result<Option<Zeroizing<String>>, VaultError> {
        let token = Zeroizing::new(format!(
            "{ROOT_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(sentia_crypto::random_bytes(32))
        ));
        let id = uuid::Uuid::new_v4().to_string();
        let hash = hex::encode(sentia_crypto::sha256(token.as_bytes()));
        if self.store.create_root_token(&id, &hash).await? {
            self.refresh().await?;
            Ok(Some(token))
        } else {
            Ok(None)
        }
    }

    /// Issues JWT `jti` for `sub` with `policies`, issued at `now` and expiring at `exp`
    /// (Unix seconds).
    pub async fn issue(
        &self,
        jti: &str,
        sub: &str,
        policies: Vec<String>,
        now: i64,
        exp: i64,
    ) -> Result<String, VaultError> {
        let claims = Claims {
            iss: jwt::ISSUER.into(),
            sub: sub.into(),
            aud: jwt::ISSUER.into(),
            jti: jti.into(),
            iat: now,
            nbf: now,
            exp,
            pol: policies,
        };
        // The header names the kid, so it is fixed before signing: use the last kid seen and,
        // if key-service signed with another (the key rotated), sign again with that one.
        let mut kid = self
            .last_kid
            .read()
            .ok()
            .and_then(|k| k.clone())
            .unwrap_or_else(|| format!("{}-v1", self.keys.signing_key()));
        for _ in 0..3 {
            let input = jwt::signing_input(&kid, &claims);
            let (signature, signed_kid) = self.keys.sign(input.as_bytes()).await?;
            if signed_kid == kid {
                return Ok(jwt::assemble(&input, &signature));
            }
            if let Ok(mut k) = self.last_kid.write() {
                *k = Some(signed_kid.clone());
            }
            kid = signed_kid;
        }
        Err(VaultError::KeyService(Status::unavailable(
            "the token signing key kept rotating during one login; retry",
        )))
    }

    /// What a successful login answers: token `token_id` for `sub` with `policies`, issued
    /// `now` and expiring at `exp` (Unix seconds).
    async fn login_response(
        &self,
        token_id: String,
        sub: &str,
        policies: Vec<String>,
        now: i64,
        exp: i64,
    ) -> Res<pb::LoginResponse> {
        let token = self
            .issue(&token_id, sub, policies, now, exp)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::LoginResponse {
            token,
            expire_time: Some(timestamp(exp * 1000)),
            token_id,
        }))
    }

    /// Revokes a token id; `expire_time` (ms) bounds how long the record is kept.
    pub async fn revoke(&self, token_id: &str, expire_time: i64) -> Result<bool, VaultError> {
        let was_root = {
            let roots = self
                .roots
                .read()
                .map(|r| r.iter().any(|t| t.id == token_id))
                .unwrap_or(false);
            if roots {
                self.store.delete_root_token(token_id).await?
            } else {
                false
            }
        };
        if !was_root {
            self.store.revoke(token_id, expire_time).await?;
            if let Ok(mut g) = self.revoked.write() {
                g.insert(token_id.to_string());
            }
        }
        self.refresh().await?;
        Ok(was_root)
    }

    fn root(&self, token: &str) -> Option<Principal> {
        let presented = sentia_crypto::sha256(token.as_bytes());
        let roots = self.roots.read().ok()?;
        let mut found = None;
        for r in roots.iter() {
            if sentia_crypto::constant_time_eq(&r.hash, &presented) {
                found = Some(r.id.clone());
            }
        }
        found.map(|id| Principal {
            id: "root".into(),
            role: Role::Admin,
            method: AuthMethod::Root,
            policies: vec![ROOT_POLICY.into()],
            token_id: Some(id),
            expires_at: None,
        })
    }

    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().map(|r| r.contains(jti)).unwrap_or(true)
    }
}

/// Most logins a credential may be limited to.
pub const MAX_CREDENTIAL_USES: i64 = 1_000_000_000;

/// A fresh secret id (shown once) and its argon2 hash (stored).
async fn new_secret_id() -> Result<(Zeroizing<String>, String), Status> {
    let secret_id = Zeroizing::new(URL_SAFE_NO_PAD.encode(sentia_crypto::random_bytes(32)));
    let to_hash = secret_id.clone();
    let hash = tokio::task::spawn_blocking(move || {
        argon2()
            .hash_password(to_hash.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|_| Status::internal("hashing task failed"))?
    .map_err(|e| Status::internal(format!("hashing the secret id failed: {e}")))?;
    Ok((secret_id, hash))
}

fn no_credential(role_id: &str) -> Status {
    Status::not_found(format!("no app credential with role id {role_id}"))
}

fn ms_timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| timestamp(ms))
}

/// The listed form of a credential: never its secret hash.
fn credential_pb(c: &CredentialRow) -> pb::AppCredential {
    pb::AppCredential {
        role_id: c.role_id.clone(),
        name: c.name.clone(),
        policies: c.policies.clone(),
        token_ttl: Some(prost_types::Duration {
            seconds: c.token_ttl,
            nanos: 0,
        }),
        created_by: c.created_by.clone(),
        create_time: ms_timestamp(c.create_time),
        expire_time: ms_timestamp(c.expire_time),
        max_uses: c.max_uses.max(0) as u64,
        uses: c.uses.max(0) as u64,
        revoke_time: ms_timestamp(c.revoke_time),
        secret_rotate_time: ms_timestamp(c.secret_rotate_time),
        last_login_time: ms_timestamp(c.last_login_time),
    }
}

/// Makes [`Tokens`] the server's verifier for JWTs and root tokens. A JWT must also name
/// only policies that exist now (what CreateAppCredential would accept), so a token signed
/// outside the login path cannot invent a policy.
pub struct TokenVerifier(pub Arc<Tokens>, pub Policies);

impl BearerVerifier for TokenVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if token.starts_with(ROOT_TOKEN_PREFIX) {
                return Some(
                    self.0
                        .root(token)
                        .ok_or_else(|| Status::unauthenticated("invalid or revoked token")),
                );
            }
            if !jwt::looks_like_jwt(token) {
                return None;
            }
            Some(match self.0.public_keys.verify(token).await {
                Ok(claims) if self.0.is_revoked(&claims.jti) => {
                    Err(Status::unauthenticated("token was revoked"))
                }
                Ok(claims) if !claims.pol.iter().all(|p| self.1.get().contains(p)) => Err(
                    Status::unauthenticated("token names a policy that does not exist here"),
                ),
                Ok(claims) => Ok(claims.into_principal()),
                Err(jwt::JwtError::KeysUnavailable(m)) => Err(Status::unavailable(format!(
                    "cannot verify the token now: {m}"
                ))),
                Err(e) => Err(Status::unauthenticated(e.to_string())),
            })
        })
    }
}

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthApi {
    tokens: Arc<Tokens>,
    policies: Policies,
    audit: Arc<Emitter>,
    kubernetes: Arc<crate::kubernetes::Verifier>,
}

impl AuthApi {
    /// Over the token store, the live policies and the audit emitter.
    pub fn new(tokens: Arc<Tokens>, policies: Policies, audit: Arc<Emitter>) -> Self {
        Self {
            tokens,
            policies,
            audit,
            kubernetes: Arc::new(crate::kubernetes::Verifier::new()),
        }
    }

    /// The credential `role_id` names, or INVALID_ARGUMENT / NOT_FOUND.
    async fn existing_credential(&self, role_id: &str) -> Result<CredentialRow, Status> {
        if role_id.is_empty() || role_id.len() > 64 {
            return Err(Status::invalid_argument(
                "role_id must be a role id (1-64 characters)",
            ));
        }
        self.tokens
            .store
            .credential(role_id)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| no_credential(role_id))
    }

    /// The policy simulator behind CheckPolicy; `caller` may check itself, anything else
    /// needs admin everywhere.
    async fn check_policy(
        &self,
        caller: &Principal,
        r: pb::CheckPolicyRequest,
    ) -> Result<pb::CheckPolicyResponse, VaultError> {
        /// The largest policy file accepted: a real one is a few KiB.
        const MAX_POLICY_FILE: usize = 1 << 20;
        let cap = Capability::from_proto(r.capability).ok_or_else(|| {
            VaultError::Invalid(
                "capability must be READ, WRITE, LIST, DELETE, ROTATE, AUDIT_READ or ADMIN".into(),
            )
        })?;
        let path = crate::model::SecretPath::parse(&r.path)?;
        let for_someone_else = !r.policies.is_empty() || !r.principal.is_empty();
        if for_someone_else || !r.policy_file.is_empty() {
            self.policies
                .check_everywhere(
                    caller,
                    Capability::Admin,
                    "checking another principal's access or a policy file",
                )
                .map_err(VaultError::from)?;
        }
        let set = if r.policy_file.is_empty() {
            self.policies.get()
        } else if r.policy_file.len() > MAX_POLICY_FILE {
            return Err(VaultError::Invalid(format!(
                "policy_file is {} bytes; at most {MAX_POLICY_FILE}",
                r.policy_file.len()
            )));
        } else {
            Arc::new(sentia_policy::PolicySet::parse(&r.policy_file).map_err(VaultError::Invalid)?)
        };
        let (held, who) = if !r.policies.is_empty() {
            if r.policies.len() > MAX_CREDENTIAL_POLICIES {
                return Err(VaultError::Invalid(format!(
                    "give at most {} policies",
                    MAX_CREDENTIAL_POLICIES
                )));
            }
            if let Some(unknown) = r.policies.iter().find(|p| !set.contains(p)) {
                return Err(VaultError::NotFound(format!(
                    "no policy {unknown:?} (known: {})",
                    set.names().join(", ")
                )));
            }
            (
                r.policies.clone(),
                format!("policies {}", r.policies.join(", ")),
            )
        } else if r.principal.is_empty() {
            (self.policies.of(caller), format!("'{}'", caller.id))
        } else {
            (
                self.policies_of(&set, &r.principal).await?,
                format!("'{}'", r.principal),
            )
        };
        let grant = set.grant(&held, cap, path.as_str());
        let explanation = match &grant {
            Some(g) if g.policy == ROOT_POLICY => {
                format!("allow: {who} holds the built-in root policy")
            }
            Some(g) => format!(
                "allow: policy {} rule {} ({}) grants {} on {path}",
                g.policy,
                g.rule,
                g.path,
                cap.as_str()
            ),
            None if held.is_empty() => {
                format!("deny: {who} holds no policies (default deny)")
            }
            None => format!(
                "deny: no rule of {} grants {} on {path} (default deny)",
                held.join(", "),
                cap.as_str()
            ),
        };
        Ok(pb::CheckPolicyResponse {
            allowed: grant.is_some(),
            policies: held,
            policy: grant.as_ref().map(|g| g.policy.clone()).unwrap_or_default(),
            rule: grant
                .as_ref()
                .map_or(0, |g| u32::try_from(g.rule).unwrap_or(u32::MAX)),
            rule_path: grant.map(|g| g.path).unwrap_or_default(),
            explanation,
        })
    }

    /// The policies `principal` holds: root, a static identity, an app credential (by role
    /// id) or a Kubernetes role of `set`.
    async fn policies_of(
        &self,
        set: &sentia_policy::PolicySet,
        principal: &str,
    ) -> Result<Vec<String>, VaultError> {
        if principal == "root" {
            return Ok(vec![ROOT_POLICY.into()]);
        }
        if let Some(role) = principal.strip_prefix("kubernetes:") {
            return set
                .kubernetes()
                .and_then(|k| k.roles.get(role).map(|r| r.policies.clone()))
                .ok_or_else(|| {
                    VaultError::NotFound(format!(
                        "no Kubernetes role {role:?} in the [kubernetes] table of the policies"
                    ))
                });
        }
        if let Some(held) = self.policies.of_identity(principal) {
            return Ok(held);
        }
        if principal.len() <= 64
            && let Some(c) = self.tokens.store.credential(principal).await?
        {
            return Ok(c.policies);
        }
        Err(VaultError::NotFound(format!(
            "no principal {principal:?}: give \"root\", a static identity named in \
             SENTIA_IDENTITY_POLICIES, an app credential's role id, or kubernetes:ROLE"
        )))
    }

    /// The caller, if it holds the admin capability everywhere (`what` names the call).
    fn admin<T>(&self, req: &Request<T>, what: &str) -> Result<Principal, Status> {
        let p = Principal::of(req)?;
        self.policies
            .check_everywhere(&p, Capability::Admin, what)
            .map_err(Status::from)?;
        Ok(p)
    }
}

type Res<T> = Result<Response<T>, Status>;

fn argon2() -> Argon2<'static> {
    Argon2::default()
}

/// A fixed hash verified against when the role id is unknown, so timing does not reveal
/// which role ids exist.
fn decoy_hash() -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| {
            argon2()
                .hash_password(b"decoy secret id")
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}

fn ttl_of(d: &Option<prost_types::Duration>) -> Result<Duration, VaultError> {
    let Some(d) = d else {
        return Ok(DEFAULT_TOKEN_TTL);
    };
    sentia_proto::wkt::duration("token_ttl", d, MIN_TOKEN_TTL, MAX_TOKEN_TTL)
        .map_err(VaultError::Invalid)
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Res<pb::LoginResponse> {
        // Not yet authenticated: the role id it claims is who it is.
        let info = CallInfo {
            principal: format!(
                "role:{}",
                sentia_runtime::text::clip(&req.get_ref().role_id, 64)
            ),
            ..CallInfo::of(&req)
        };
        let call = Call::with_info(&self.audit, info, "login", "login", "");
        let result: Res<pb::LoginResponse> = async move {
            let r = req.into_inner();
            let refuse = || Status::unauthenticated("unknown role id or wrong secret id");
            if r.role_id.is_empty()
                || r.role_id.len() > 64
                || r.secret_id.is_empty()
                || r.secret_id.len() > 256
            {
                return Err(refuse());
            }
            let cred = self
                .tokens
                .store
                .credential(&r.role_id)
                .await
                .map_err(Status::from)?;
            let hash = cred
                .as_ref()
                .map_or_else(decoy_hash, |c| c.secret_hash.clone());
            let secret = Zeroizing::new(r.secret_id);
            let ok = tokio::task::spawn_blocking(move || {
                PasswordHash::new(&hash)
                    .map(|h| argon2().verify_password(secret.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await
            .map_err(|_| Status::internal("login verification task failed"))?;
            let cred = match cred {
                Some(c) if ok => c,
                _ => {
                    tracing::info!(role_id = %r.role_id, "login refused");
                    return Err(refuse());
                }
            };
            // A token never outlives its credential.
            let now = sentia_proto::wkt::now_secs();
            let mut exp = now + cred.token_ttl.max(60);
            if cred.expire_time > 0 {
                exp = exp.min(cred.expire_time / 1000);
            }
            let token_id = uuid::Uuid::now_v7().to_string();
            let live = exp > now
                && self
                    .tokens
                    .store
                    .begin_login(&cred.role_id, &cred.secret_hash, &token_id, exp * 1000)
                    .await
                    .map_err(Status::from)?;
            if !live {
                // Revoked, expired, used up, or its secret replaced meanwhile: refused
                // like a wrong secret, so the answer says nothing about the credential.
                tracing::info!(role_id = %cred.role_id, "login refused: the credential is not live");
                return Err(refuse());
            }
            tracing::info!(role_id = %cred.role_id, token_id = %token_id, "login");
            self.tokens
                .login_response(token_id, &format!("app:{}", cred.name), cred.policies, now, exp)
                .await
        }
        .await;
        call.finish(result).await
    }

    async fn login_kubernetes(
        &self,
        req: Request<pb::LoginKubernetesRequest>,
    ) -> Res<pb::LoginResponse> {
        let role = sentia_runtime::text::clip(&req.get_ref().role, 64).to_string();
        // Not yet authenticated: the role it claims is all there is.
        let info = CallInfo {
            principal: format!("k8s-role:{role}"),
            ..CallInfo::of(&req)
        };
        let call = Call::with_info(&self.audit, info, "login", "login_kubernetes", &role);
        let result: Res<pb::LoginResponse> = async move {
            let r = req.into_inner();
            let Some(config) = self.policies.get().kubernetes() else {
                return Err(Status::failed_precondition(
                    "Kubernetes login is not configured: add a [kubernetes] table (issuer, \
                     audiences, keys, roles) to the policy file",
                ));
            };
            let Some(bound) = config.roles.get(&r.role) else {
                return Err(Status::unauthenticated(format!(
                    "no Kubernetes login role {role:?}; the policy file defines: {}",
                    config.roles.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            let jwt = Zeroizing::new(r.jwt);
            let now = sentia_proto::wkt::now_secs();
            let workload = self
                .kubernetes
                .verify(&config, &jwt, now)
                .await
                .inspect_err(|e| tracing::info!(role = %role, error = %e, "Kubernetes login refused"))?;
            if !bound.binds(&workload.namespace, &workload.service_account) {
                tracing::info!(role = %role, namespace = %workload.namespace, service_account = %workload.service_account, "Kubernetes login refused: not bound");
                return Err(Status::unauthenticated(format!(
                    "service account {}/{} is not bound to Kubernetes login role {role:?}",
                    workload.namespace, workload.service_account
                )));
            }
            // A token never outlives the Kubernetes token it was exchanged for.
            let ttl = i64::try_from(bound.token_ttl.as_secs()).unwrap_or(i64::MAX);
            let exp = now.saturating_add(ttl).min(workload.expires_at);
            if exp <= now {
                return Err(Status::unauthenticated(
                    "the service-account token expires now; read the file again",
                ));
            }
            let token_id = uuid::Uuid::now_v7().to_string();
            let sub = format!(
                "k8s:{}/{}",
                workload.namespace, workload.service_account
            );
            tracing::info!(role = %role, principal = %sub, token_id = %token_id, "Kubernetes login");
            self.tokens
                .login_response(token_id, &sub, bound.policies.clone(), now, exp)
                .await
        }
        .await;
        call.finish(result).await
    }

    async fn create_app_credential(
        &self,
        req: Request<pb::CreateAppCredentialRequest>,
    ) -> Res<pb::CreateAppCredentialResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "admin",
            "create_credential",
            &req.get_ref().name,
        );
        let result: Res<pb::CreateAppCredentialResponse> = async {
            let p = self.admin(&req, "CreateAppCredential")?;
            let r = req.into_inner();
            if r.name.is_empty()
                || r.name.chars().count() > 64
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Status::invalid_argument(
                    "name must be 1-64 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            if r.policies.is_empty() || r.policies.len() > MAX_CREDENTIAL_POLICIES {
                return Err(Status::invalid_argument(format!(
                    "give 1-{MAX_CREDENTIAL_POLICIES} policies"
                )));
            }
            let set = self.policies.get();
            for name in &r.policies {
                if name == ROOT_POLICY || !set.contains(name) {
                    return Err(Status::invalid_argument(format!(
                        "unknown policy {name:?}; known: {}",
                        set.names().join(", ")
                    )));
                }
            }
            let ttl = ttl_of(&r.token_ttl).map_err(Status::from)?;
            let now = sentia_proto::wkt::now_ms();
            let expire_time = match &r.expire_time {
                None => 0,
                Some(t) => {
                    let ms = sentia_proto::wkt::timestamp_ms("expire_time", t)
                        .map_err(Status::invalid_argument)?;
                    if ms <= now {
                        return Err(Status::invalid_argument(
                            "expire_time is in the past; give a future time or leave it unset",
                        ));
                    }
                    ms
                }
            };
            let max_uses = i64::try_from(r.max_uses)
                .ok()
                .filter(|n| *n <= MAX_CREDENTIAL_USES)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "max_uses must be 0 (unlimited) to {MAX_CREDENTIAL_USES}"
                    ))
                })?;
            let (secret_id, secret_hash) = new_secret_id().await?;
            let row = CredentialRow {
                role_id: uuid::Uuid::new_v4().to_string(),
                name: r.name,
                secret_hash,
                policies: r.policies,
                token_ttl: ttl.as_secs() as i64,
                created_by: p.id.clone(),
                create_time: now,
                expire_time,
                max_uses,
                uses: 0,
                revoke_time: 0,
                secret_rotate_time: 0,
                last_login_time: 0,
            };
            call.admit().await?;
            self.tokens
                .store
                .create_credential(&row)
                .await
                .map_err(Status::from)?;
            tracing::info!(role_id = %row.role_id, name = %row.name, by = %p.id, "app credential created");
            Ok(Response::new(pb::CreateAppCredentialResponse {
                role_id: row.role_id,
                secret_id: secret_id.to_string(),
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn list_app_credentials(
        &self,
        req: Request<pb::ListAppCredentialsRequest>,
    ) -> Res<pb::ListAppCredentialsResponse> {
        let call = Call::new(&self.audit, &req, "admin", "list_credentials", "");
        let result: Res<pb::ListAppCredentialsResponse> = async {
            self.admin(&req, "ListAppCredentials")?;
            let r = req.into_inner();
            let limit =
                sentia_proto::page::size(r.page_size).map_err(Status::invalid_argument)? as i64;
            let scope = format!("include_revoked={}", r.include_revoked);
            let after =
                sentia_proto::page::decode(&r.page_token, "vault.ListAppCredentials", &scope)
                    .map_err(Status::invalid_argument)?
                    .unwrap_or_default();
            let mut rows = self
                .tokens
                .store
                .credentials(&after, limit + 1, r.include_revoked)
                .await
                .map_err(Status::from)?;
            let next_page_token = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                rows.last().map_or(String::new(), |c| {
                    sentia_proto::page::encode("vault.ListAppCredentials", &scope, &c.role_id)
                })
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListAppCredentialsResponse {
                credentials: rows.iter().map(credential_pb).collect(),
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn revoke_app_credential(
        &self,
        req: Request<pb::RevokeAppCredentialRequest>,
    ) -> Res<pb::AppCredential> {
        let role_id = req.get_ref().role_id.clone();
        let call = Call::new(&self.audit, &req, "admin", "revoke_credential", &role_id);
        let result: Res<pb::AppCredential> = async {
            let p = self.admin(&req, "RevokeAppCredential")?;
            let role_id = self.existing_credential(&role_id).await?.role_id;
            let role_id = role_id.as_str();
            call.admit().await?;
            let row = self
                .tokens
                .store
                .revoke_credential(role_id)
                .await
                .map_err(Status::from)?
                .ok_or_else(|| no_credential(role_id))?;
            // This replica refuses its tokens at once; the others at their next refresh.
            self.tokens.refresh().await.map_err(Status::from)?;
            tracing::info!(role_id = %role_id, by = %p.id, "app credential revoked");
            Ok(Response::new(credential_pb(&row)))
        }
        .await;
        call.finish(result).await
    }

    async fn rotate_app_credential_secret(
        &self,
        req: Request<pb::RotateAppCredentialSecretRequest>,
    ) -> Res<pb::CreateAppCredentialResponse> {
        let role_id = req.get_ref().role_id.clone();
        let call = Call::new(&self.audit, &req, "admin", "rotate_credential", &role_id);
        let result: Res<pb::CreateAppCredentialResponse> = async {
            let p = self.admin(&req, "RotateAppCredentialSecret")?;
            let existing = self.existing_credential(&role_id).await?;
            let role_id = existing.role_id.as_str();
            if existing.revoke_time > 0 {
                return Err(Status::failed_precondition(format!(
                    "app credential {role_id} is revoked; create a new one"
                )));
            }
            let (secret_id, secret_hash) = new_secret_id().await?;
            call.admit().await?;
            if !self
                .tokens
                .store
                .rotate_credential_secret(role_id, &secret_hash)
                .await
                .map_err(Status::from)?
            {
                return Err(Status::failed_precondition(format!(
                    "app credential {role_id} was revoked meanwhile; create a new one"
                )));
            }
            tracing::info!(role_id = %role_id, by = %p.id, "app credential secret id replaced");
            Ok(Response::new(pb::CreateAppCredentialResponse {
                role_id: role_id.to_string(),
                secret_id: secret_id.to_string(),
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Res<pb::RevokeTokenResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "admin",
            "revoke_token",
            &req.get_ref().token_id,
        );
        let result: Res<pb::RevokeTokenResponse> = async move {
            let p = Principal::of(&req)?;
            let id = match req.into_inner().token_id {
                id if id.is_empty() => p.token_id.clone().ok_or_else(|| {
                    Status::invalid_argument(
                        "this credential (a static token or certificate) cannot be revoked here; \
                         name a token_id",
                    )
                })?,
                id if id.len() > 64 => {
                    return Err(Status::invalid_argument(
                        "token_id is at most 64 characters",
                    ));
                }
                id => id,
            };
            let own = p.token_id.as_deref() == Some(id.as_str());
            if !own {
                self.policies
                    .check_everywhere(
                        &p,
                        Capability::Admin,
                        "RevokeToken of another principal's token",
                    )
                    .map_err(Status::from)?;
            }
            let expire_ms = match (own, p.expires_at) {
                (true, Some(exp)) => exp * 1000,
                _ => sentia_proto::wkt::now_ms() + MAX_TOKEN_TTL.as_millis() as i64,
            };
            let root = self
                .tokens
                .revoke(&id, expire_ms)
                .await
                .map_err(Status::from)?;
            tracing::info!(token_id = %id, root, by = %p.id, "token revoked");
            Ok(Response::new(pb::RevokeTokenResponse {}))
        }
        .await;
        call.finish(result).await
    }

    async fn check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Res<pb::CheckPolicyResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "auth",
            "check_policy",
            &req.get_ref().path,
        );
        let result: Res<pb::CheckPolicyResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(
                self.check_policy(&p, req.into_inner()).await?,
            ))
        }
        .await;
        call.finish(result).await
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Res<pb::WhoAmIResponse> {
        let call = Call::new(&self.audit, &req, "auth", "whoami", "");
        let result: Res<pb::WhoAmIResponse> = async move {
            let p = Principal::of(&req)?;
            Ok(Response::new(pb::WhoAmIResponse {
                principal: Some(cpb::Principal {
                    id: p.id.clone(),
                    auth_method: p.method.as_str().into(),
                    roles: self.policies.of(&p),
                }),
                expire_time: p.expires_at.map(|e| timestamp(e * 1000)),
            }))
        }
        .await;
        call.finish(result).await
    }
}
