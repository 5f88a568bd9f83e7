//! Rotators: how a new value is made, applied to its target, proven, rolled back and the old
//! one revoked. Credentials a rotator needs (an admin connection URL) are never parameters:
//! they are referenced by secret path and read from vault-service when needed.
//!
//! Values of `postgres_password` and `redis_acl` secrets are JSON `{"username", "password"}`;
//! `random` and `api_key` values are the bare string.

use std::fmt;
use std::time::Duration;

use sentia_proto::keys::v1 as kpb;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_runtime::client::AuthedChannel;
use serde_json::{Map, Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use zeroize::Zeroizing;

/// Secret bytes that never show in `Debug` and are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes, for the one place that must use them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn text(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.0).map_err(|_| "the secret value is not UTF-8".to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([REDACTED; {} bytes])", self.0.len())
    }
}

/// A username and password held in one JSON secret value.
struct Login {
    username: String,
    password: Zeroizing<String>,
}

impl Login {
    fn parse(value: &Secret) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(value.expose()).map_err(|_| {
            "the secret value is not JSON {\"username\": ..., \"password\": ...}".to_string()
        })?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the secret value has no string field {k:?}"))
        };
        Ok(Self {
            username: field("username")?,
            password: Zeroizing::new(field("password")?),
        })
    }

    fn to_secret(&self) -> Secret {
        Secret::new(
            json!({"username": self.username, "password": self.password.as_str()})
                .to_string()
                .into_bytes(),
        )
    }
}

/// Characters a generated value is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// A-Z a-z 0-9.
    Alphanumeric,
    /// 0-9 a-f.
    Hex,
    /// A-Z a-z 0-9 - _.
    Base64Url,
    /// Printable ASCII without space, quotes and backslash.
    Printable,
}

impl Charset {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alphanumeric" => Self::Alphanumeric,
            "hex" => Self::Hex,
            "base64url" => Self::Base64Url,
            "printable" => Self::Printable,
            _ => return None,
        })
    }

    fn alphabet(self) -> Vec<u8> {
        let alnum = (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9');
        match self {
            Self::Alphanumeric => alnum.collect(),
            Self::Hex => (b'0'..=b'9').chain(b'a'..=b'f').collect(),
            Self::Base64Url => alnum.chain([b'-', b'_']).collect(),
            Self::Printable => (b'!'..=b'~')
                .filter(|c| !matches!(c, b'"' | b'\'' | b'\\' | b'`'))
                .collect(),
        }
    }
}

/// `length` characters drawn uniformly from `charset` (rejection sampling: no modulo bias).
pub fn random_string(length: usize, charset: Charset) -> Zeroizing<String> {
    let alphabet = charset.alphabet();
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = Zeroizing::new(String::with_capacity(length));
    while out.len() < length {
        for b in sentia_crypto::random_bytes(length * 2) {
            if (b as usize) < limit && out.len() < length {
                out.push(alphabet[b as usize % n] as char);
            }
        }
    }
    out
}

/// What a rotator is told about the rotation it works for.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Secret path.
    pub path: &'a str,
    /// Rotation id.
    pub rotation_id: &'a str,
    /// Version written by create_pending.
    pub pending_version: u64,
    /// CURRENT version when the rotation started.
    pub previous_version: u64,
    /// The value of the rotator's admin secret, if it has one.
    pub admin: Option<&'a Secret>,
    /// key-service, when configured (the `jwt_signing_key` rotator needs it).
    pub keys: Option<&'a KeyServiceClient<AuthedChannel>>,
    /// Now, Unix ms (the scheduler's clock).
    pub now_ms: i64,
}

/// How a step that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Done.
    Done,
    /// Not yet (e.g. a new signing key still propagating): run it again at this time.
    WaitUntil(i64),
}

/// Why a rotator's step failed, which decides what the engine does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The target or a Sentia service could not be reached (refused, reset, timed out,
    /// UNAVAILABLE): nothing says the change was refused, so the same step runs again after a
    /// backoff and nothing is rolled back. Every step is idempotent, so running it again is
    /// safe whether or not the first try reached the target.
    #[error("{0}")]
    Transient(String),
    /// The target answered and refused (a wrong admin password, a role that does not exist,
    /// a login with the new password that fails), or the configuration or stored value is
    /// wrong: a `set` or `test` failing this way is rolled back.
    #[error("{0}")]
    Rejected(String),
}

impl From<String> for StepError {
    fn from(why: String) -> Self {
        Self::Rejected(why)
    }
}

impl From<&str> for StepError {
    fn from(why: &str) -> Self {
        Self::Rejected(why.into())
    }
}

impl StepError {
    /// True when the step should simply run again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// A gRPC call `what` that failed with `status`: transient when the service could not be
    /// reached or was too busy to answer, rejected otherwise.
    pub fn status(what: &str, status: &tonic::Status) -> Self {
        let why = format!("{what}: {}", status.message());
        if is_transient_code(status.code()) {
            Self::Transient(why)
        } else {
            Self::Rejected(why)
        }
    }

    /// A Postgres failure of `what`: the server's own refusals (an error with an SQLSTATE)
    /// are rejections; failing to reach or keep a connection is transient.
    fn postgres(what: &str, e: &sqlx::Error) -> Self {
        let why = format!("{what}: {}", pg_error(e));
        match e {
            sqlx::Error::Database(_) | sqlx::Error::Configuration(_) => Self::Rejected(why),
            _ => Self::Transient(why),
        }
    }

    /// A Redis failure of `what`: a connection that could not be made, dropped or timed out
    /// is transient; the server's refusals (NOPERM, WRONGPASS, ...) are rejections.
    fn redis(what: &str, e: &redis::RedisError) -> Self {
        let why = format!("{what}: {}", e.kind_str());
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
        {
            Self::Transient(why)
        } else {
            Self::Rejected(why)
        }
    }
}

/// gRPC codes that mean "not reached or too busy", not "refused".
pub fn is_transient_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

/// A configured rotator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotator {
    /// A random string (`random`) or prefixed API key (`api_key`); nothing to apply.
    Random {
        /// Characters after the prefix.
        length: usize,
        /// Alphabet.
        charset: Charset,
        /// Literal prefix, e.g. "sk_live_".
        prefix: String,
    },
    /// A PostgreSQL role's password; with two roles, rotations alternate between them so
    /// the credential in use is never the one being changed.
    Postgres {
        /// Secret path whose value is an admin connection URL (a role with CREATEROLE).
        admin_secret: String,
        /// One role, or two to alternate.
        roles: Vec<String>,
    },
    /// A Redis ACL user's password: the new one is added beside the old, which is removed
    /// when the grace period ends.
    RedisAcl {
        /// Secret path whose value is a Redis URL of a user allowed to run ACL SETUSER.
        admin_secret: String,
        /// The ACL user.
        username: String,
    },
    /// A key-service signing key (rolling): `set` publishes a new version (staged: it
    /// verifies but does not sign), `test` checks it is in the published keys and waits out
    /// `propagation`, `finish` makes it the signer, `cleanup` stops the old one verifying
    /// (min_decryption_version). The secret's value names the key version in use:
    /// `{"key", "version", "kid"}` — the key material never leaves key-service.
    JwtSigningKey {
        /// key-service key name; when unset, the `key` field of the CURRENT value.
        key: Option<String>,
        /// How long verifiers get to learn the new key before it signs (default 1 min).
        propagation: Duration,
    },
    /// Anything else: an endpoint the user runs is told each step (signed POST, no values —
    /// it reads PENDING / CURRENT from vault-service with its own credentials) and answers
    /// 2xx when done. New values are random, as `random`.
    Webhook {
        /// http:// or https:// URL.
        url: String,
        /// Secret path whose value (at least 16 bytes) signs the requests.
        signing_secret: String,
        /// How new values are made.
        value: Box<Rotator>,
    },
}

/// The refusal of a rotator name that is not one of ours, listing those that are.
fn unknown_rotator(name: &str) -> String {
    format!(
        "unknown rotator {name:?} (available: random, api_key, postgres_password, redis_acl, \
         webhook, jwt_signing_key)"
    )
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Rotator {
    /// Parses a rotator name and its parameters; unknown parameters are refused by name.
    pub fn parse(name: &str, params: &Map<String, Value>) -> Result<Self, String> {
        let allowed: &[&str] = match name {
            "random" | "api_key" => &["length", "charset", "prefix"],
            "postgres_password" => &["admin_secret", "roles"],
            "redis_acl" => &["admin_secret", "username"],
            "webhook" => &["url", "signing_secret", "length", "charset", "prefix"],
            "jwt_signing_key" => &["key", "propagation"],
            _ => return Err(unknown_rotator(name)),
        };
        if let Some(k) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "rotator {name} has no parameter {k:?} (it takes: {})",
                allowed.join(", ")
            ));
        }
        let string = |k: &str| -> Result<Option<String>, String> {
            match params.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("rotator {name}: {k} must be a string")),
            }
        };
        let required = |k: &str| -> Result<String, String> {
            string(k)?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("rotator {name} needs {k}"))
        };
        match name {
            "random" | "api_key" => {
                let length = match params.get("length") {
                    None => 40,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (16..=4096).contains(n))
                        .ok_or_else(|| format!("rotator {name}: length must be 16-4096"))?
                        as usize,
                };
                let charset = match string("charset")? {
                    None => Charset::Alphanumeric,
                    Some(c) => Charset::parse(&c).ok_or_else(|| {
                        format!(
                            "rotator {name}: charset {c:?} is not one of alphanumeric, hex, \
                             base64url, printable"
                        )
                    })?,
                };
                let prefix = string("prefix")?.unwrap_or_default();
                if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "rotator {name}: prefix must be at most 64 printable characters"
                    ));
                }
                Ok(Self::Random {
                    length,
                    charset,
                    prefix,
                })
            }
            "postgres_password" => {
                let roles: Vec<String> = match params.get("roles") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or("rotator postgres_password: roles must be strings")?,
                    _ => {
                        return Err(
                            "rotator postgres_password needs roles: [role] or [a, b]".into()
                        );
                    }
                };
                if roles.is_empty() || roles.len() > 2 || roles.iter().any(|r| !ident_ok(r)) {
                    return Err(
                        "rotator postgres_password: roles must be one or two role names \
                                of 1-63 characters [A-Za-z0-9_-]"
                            .into(),
                    );
                }
                if roles.len() == 2 && roles[0] == roles[1] {
                    return Err("rotator postgres_password: the two roles must differ".into());
                }
                Ok(Self::Postgres {
                    admin_secret: required("admin_secret")?,
                    roles,
                })
            }
            "jwt_signing_key" => {
                let key = string("key")?;
                if key.as_deref().is_some_and(|k| !ident_ok(k)) {
                    return Err(
                        "rotator jwt_signing_key: key must be a key-service key name".into(),
                    );
                }
                let propagation = match string("propagation")? {
                    None => DEFAULT_PROPAGATION,
                    Some(p) => sentia_runtime::config::parse_duration(&p).ok_or_else(|| {
                        format!(
                            "rotator jwt_signing_key: propagation {p:?} is not a duration like 10m"
                        )
                    })?,
                };
                Ok(Self::JwtSigningKey { key, propagation })
            }
            "webhook" => {
                let url = required("url")?;
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<http::Uri>().is_err()
                {
                    return Err(format!(
                        "rotator webhook: url {url:?} is not an http(s) URL"
                    ));
                }
                let mut value = params.clone();
                value.retain(|k, _| matches!(k.as_str(), "length" | "charset" | "prefix"));
                Ok(Self::Webhook {
                    url,
                    signing_secret: required("signing_secret")?,
                    value: Box::new(Self::parse("random", &value)?),
                })
            }
            "redis_acl" => {
                let username = required("username")?;
                if !ident_ok(&username) {
                    return Err("rotator redis_acl: username must be 1-63 characters \
                                [A-Za-z0-9_-]"
                        .into());
                }
                Ok(Self::RedisAcl {
                    admin_secret: required("admin_secret")?,
                    username,
                })
            }
            _ => Err(unknown_rotator(name)),
        }
    }

    /// The secret holding the admin credential this rotator needs, if any.
    pub fn admin_secret(&self) -> Option<&str> {
        match self {
            Self::Random { .. } | Self::JwtSigningKey { .. } => None,
            Self::Postgres { admin_secret, .. } | Self::RedisAcl { admin_secret, .. } => {
                Some(admin_secret)
            }
            Self::Webhook { signing_secret, .. } => Some(signing_secret),
        }
    }

    /// A new value. With two Postgres roles it is for the role not in `current`; for a
    /// signing key it names the version `set` will publish.
    pub async fn generate(
        &self,
        ctx: &Ctx<'_>,
        current: Option<&Secret>,
    ) -> Result<Secret, StepError> {
        match self {
            Self::JwtSigningKey { key, .. } => {
                let name = match key {
                    Some(k) => k.clone(),
                    None => current
                        .and_then(|c| serde_json::from_slice::<Value>(c.expose()).ok())
                        .and_then(|v| v.get("key").and_then(Value::as_str).map(str::to_string))
                        .ok_or(
                            "rotator jwt_signing_key needs a key parameter, or a CURRENT value \
                             {\"key\": \"<key-service key>\"}",
                        )?,
                };
                let k = get_key(ctx, &name).await?;
                let version = if k.staged_version != 0 {
                    k.staged_version
                } else {
                    k.primary_version + 1
                };
                Ok(KeyVersion { key: name, version }.to_secret())
            }
            Self::Random {
                length,
                charset,
                prefix,
            } => {
                let body = random_string(*length, *charset);
                let mut v = Vec::with_capacity(prefix.len() + body.len());
                v.extend_from_slice(prefix.as_bytes());
                v.extend_from_slice(body.as_bytes());
                Ok(Secret::new(v))
            }
            Self::Postgres { roles, .. } => {
                let now = current
                    .and_then(|c| Login::parse(c).ok())
                    .map(|l| l.username);
                let username = match (roles.as_slice(), now) {
                    ([a, b], Some(u)) if u == *a => b.clone(),
                    _ => roles[0].clone(),
                };
                Ok(Login {
                    username,
                    password: random_string(32, Charset::Alphanumeric),
                }
                .to_secret())
            }
            Self::RedisAcl { username, .. } => Ok(Login {
                username: username.clone(),
                password: random_string(32, Charset::Alphanumeric),
            }
            .to_secret()),
            Self::Webhook { value, .. } => Box::pin(value.generate(ctx, current)).await,
        }
    }

    /// Applies `new` to the target. Idempotent.
    pub async fn set(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<(), StepError> {
        let admin = ctx.admin;
        match self {
            Self::Random { .. } => Ok(()),
            Self::Webhook { .. } => self.notify(ctx, "set").await,
            Self::JwtSigningKey { .. } => {
                let want = KeyVersion::parse(new)?;
                let k = rotate_key(ctx, &want.key, true).await?;
                if k.staged_version == want.version || k.primary_version >= want.version {
                    Ok(())
                } else {
                    Err(format!(
                        "key-service staged version {} of {}, expected {} (was the key rotated \
                         meanwhile?)",
                        k.staged_version, want.key, want.version
                    )
                    .into())
                }
            }
            Self::Postgres { .. } => {
                let l = Login::parse(new)?;
                pg_set_password(admin, &l.username, Some(l.password.as_bytes())).await
            }
            Self::RedisAcl { .. } => {
                let l = Login::parse(new)?;
                redis_acl(admin, &l.username, &format!("#{}", sha256_hex(&l.password))).await
            }
        }
    }

    /// Proves `new` works against the target.
    pub async fn test(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<Progress, StepError> {
        let admin = ctx.admin;
        let done = |r: Result<(), StepError>| r.map(|()| Progress::Done);
        match self {
            Self::Webhook { .. } => done(self.notify(ctx, "test").await),
            Self::JwtSigningKey { propagation, .. } => {
                let want = KeyVersion::parse(new)?;
                let keys = ctx.keys.ok_or(NO_KEY_SERVICE)?;
                let published = keys
                    .clone()
                    .get_public_keys(kpb::GetPublicKeysRequest {
                        key_name: want.key.clone(),
                    })
                    .await
                    .map_err(|s| StepError::status(&format!("GetPublicKeys {}", want.key), &s))?
                    .into_inner();
                if !published.keys.iter().any(|k| k.version == want.version) {
                    return Err(format!(
                        "version {} of {} is not in the published keys",
                        want.version, want.key
                    )
                    .into());
                }
                let k = get_key(ctx, &want.key).await?;
                let created = k
                    .versions
                    .iter()
                    .find(|v| v.version == want.version)
                    .and_then(|v| v.create_time.as_ref())
                    .map(|t| t.seconds.saturating_mul(1000))
                    .unwrap_or(0);
                let ready = created.saturating_add(ms(*propagation));
                Ok(if ctx.now_ms < ready {
                    Progress::WaitUntil(ready)
                } else {
                    Progress::Done
                })
            }
            Self::Random { length, prefix, .. } => {
                let want = prefix.len() + length;
                if new.expose().len() == want {
                    Ok(Progress::Done)
                } else {
                    Err(format!(
                        "the pending value is {} bytes, expected {want}",
                        new.expose().len()
                    )
                    .into())
                }
            }
            Self::Postgres { .. } => {
                let l = Login::parse(new)?;
                done(pg_test_login(admin, &l).await)
            }
            Self::RedisAcl { .. } => {
                let l = Login::parse(new)?;
                done(redis_test_login(admin, &l).await)
            }
        }
    }

    /// Just before `finish` labels the new value CURRENT: a signing key becomes the signer.
    /// Idempotent.
    pub async fn finish(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<(), StepError> {
        let Self::JwtSigningKey { .. } = self else {
            return Ok(());
        };
        let want = KeyVersion::parse(new)?;
        let k = get_key(ctx, &want.key).await?;
        if k.primary_version >= want.version {
            return Ok(());
        }
        if k.staged_version != want.version {
            return Err(format!(
                "version {} of {} is no longer staged (staged: {}, primary: {})",
                want.version, want.key, k.staged_version, k.primary_version
            )
            .into());
        }
        let k = rotate_key(ctx, &want.key, false).await?;
        if k.primary_version == want.version {
            Ok(())
        } else {
            Err(format!(
                "promoting version {} of {} made version {} primary",
                want.version, want.key, k.primary_version
            )
            .into())
        }
    }

    /// Undoes `set`: the credential `new` changed gets back the value it had (`before`, the
    /// stored value for the same user), or — with nothing to restore — is locked.
    pub async fn restore(
        &self,
        ctx: &Ctx<'_>,
        new: &Secret,
        before: &[Secret],
    ) -> Result<(), StepError> {
        let admin = ctx.admin;
        match self {
            Self::Random { .. } => Ok(()),
            Self::Webhook { .. } => self.notify(ctx, "restore").await,
            // The staged version never signed; it stays published and the next attempt
            // stages it again (idempotent), so nothing is left to undo.
            Self::JwtSigningKey { .. } => Ok(()),
            Self::Postgres { .. } => {
                let n = Login::parse(new)?;
                let old = before
                    .iter()
                    .filter_map(|b| Login::parse(b).ok())
                    .find(|b| b.username == n.username);
                let password = old.as_ref().map(|o| o.password.as_bytes());
                pg_set_password(admin, &n.username, password).await
            }
            Self::RedisAcl { .. } => {
                let n = Login::parse(new)?;
                redis_acl(admin, &n.username, &format!("!{}", sha256_hex(&n.password))).await
            }
        }
    }

    /// After the grace period: the old credential stops working on the target.
    pub async fn revoke(
        &self,
        ctx: &Ctx<'_>,
        previous: &Secret,
        current: &Secret,
    ) -> Result<(), StepError> {
        let admin = ctx.admin;
        match self {
            Self::Random { .. } => Ok(()),
            Self::Webhook { .. } => self.notify(ctx, "revoke").await,
            Self::JwtSigningKey { .. } => {
                let now = KeyVersion::parse(current)?;
                let keys = ctx.keys.ok_or(NO_KEY_SERVICE)?;
                let k = get_key(ctx, &now.key).await?;
                if k.min_decryption_version >= now.version {
                    return Ok(());
                }
                keys.clone()
                    .set_key_policy(kpb::SetKeyPolicyRequest {
                        name: now.key.clone(),
                        min_decryption_version: now.version,
                        auto_rotate_period: None,
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["min_decryption_version".into()],
                        }),
                    })
                    .await
                    .map_err(|s| StepError::status(&format!("SetKeyPolicy {}", now.key), &s))?;
                Ok(())
            }
            Self::Postgres { .. } => {
                let (p, c) = (Login::parse(previous)?, Login::parse(current)?);
                if p.username == c.username {
                    // One role: its old password was replaced at `set`.
                    return Ok(());
                }
                pg_set_password(admin, &p.username, None).await
            }
            Self::RedisAcl { .. } => {
                let (p, c) = (Login::parse(previous)?, Login::parse(current)?);
                if p.password == c.password {
                    return Ok(());
                }
                redis_acl(admin, &p.username, &format!("!{}", sha256_hex(&p.password))).await
            }
        }
    }
}

impl Rotator {
    /// Tells a webhook rotator's endpoint about `step`; 2xx is success.
    async fn notify(&self, ctx: &Ctx<'_>, step: &str) -> Result<(), StepError> {
        let Self::Webhook { url, .. } = self else {
            return Ok(());
        };
        let key = ctx.admin.ok_or("the webhook's signing secret is missing")?;
        let endpoint =
            sentia_runtime::webhook::SignedPost::new(url, Zeroizing::new(key.expose().to_vec()))
                .map_err(|e| format!("webhook: {e}"))?;
        let body = json!({
            "step": step,
            "secret_path": ctx.path,
            "rotation_id": ctx.rotation_id,
            "pending_version": ctx.pending_version,
            "previous_version": ctx.previous_version,
        })
        .to_string();
        // No answer (refused, reset, timed out) is transient; an answer other than 2xx is the
        // endpoint refusing.
        let answer = endpoint
            .post(&body)
            .await
            .map_err(|e| StepError::Transient(format!("webhook {step}: {e}")))?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "webhook {step} answered {}: {}",
                answer.status,
                answer.body.chars().take(200).collect::<String>()
            )
            .into())
        }
    }
}

/// How long a new signing key is published before it signs, by default: well past the
/// interval at which Sentia's verifiers re-read the published keys (seconds).
pub const DEFAULT_PROPAGATION: Duration = Duration::from_secs(60);

const NO_KEY_SERVICE: &str = "the jwt_signing_key rotator needs key-service: set SENTIA_KEY_SERVICE_ADDR and an admin \
     identity there (SENTIA_KEY_SERVICE_TOKEN or a client certificate)";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The value of a signing-key secret: which key-service key version is (or will be) in use.
struct KeyVersion {
    key: String,
    version: u32,
}

impl KeyVersion {
    fn parse(value: &Secret) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(value.expose())
            .map_err(|_| "the secret value is not JSON {\"key\", \"version\"}".to_string())?;
        Ok(Self {
            key: v
                .get("key")
                .and_then(Value::as_str)
                .ok_or("the secret value has no string field \"key\"")?
                .to_string(),
            version: v
                .get("version")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("the secret value has no version number")?,
        })
    }

    fn to_secret(&self) -> Secret {
        Secret::new(
            json!({"key": self.key, "version": self.version, "kid": format!("{}-v{}", self.key, self.version)})
                .to_string()
                .into_bytes(),
        )
    }
}

async fn get_key(ctx: &Ctx<'_>, name: &str) -> Result<kpb::Key, StepError> {
    let keys = ctx.keys.ok_or(NO_KEY_SERVICE)?;
    keys.clone()
        .get_key(kpb::GetKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| StepError::status(&format!("GetKey {name}"), &s))
}

async fn rotate_key(ctx: &Ctx<'_>, name: &str, stage: bool) -> Result<kpb::Key, StepError> {
    let keys = ctx.keys.ok_or(NO_KEY_SERVICE)?;
    keys.clone()
        .rotate_key(kpb::RotateKeyRequest {
            name: name.into(),
            stage,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| StepError::status(&format!("RotateKey {name}"), &s))
}

fn sha256_hex(s: &str) -> String {
    sentia_crypto::sha256(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn admin_url(admin: Option<&Secret>) -> Result<Zeroizing<String>, String> {
    let a = admin.ok_or("the rotator's admin secret is missing")?;
    Ok(Zeroizing::new(a.text()?.trim().to_string()))
}

const TARGET_TIMEOUT: Duration = Duration::from_secs(10);

async fn pg_admin(admin: Option<&Secret>) -> Result<sqlx::PgConnection, StepError> {
    let url = admin_url(admin)?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|_| "the admin secret is not a postgres:// URL".to_string())?;
    // Statements carry password verifiers: never logged.
    let opts = opts.disable_statement_logging();
    tokio::time::timeout(TARGET_TIMEOUT, opts.connect())
        .await
        .map_err(|_| StepError::Transient("connecting to Postgres as admin timed out".into()))?
        .map_err(|e| StepError::postgres("connecting to Postgres as admin", &e))
}

/// A database error without anything the server echoed back from the statement.
fn pg_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!(
            "{} ({})",
            d.message(),
            d.code().as_deref().unwrap_or("no code")
        ),
        other => other.to_string(),
    }
}

/// Sets a role's password by sending its SCRAM verifier (so the plaintext never reaches the
/// server's statement log); `None` sets a random one nobody knows: the role is locked out.
async fn pg_set_password(
    admin: Option<&Secret>,
    role: &str,
    password: Option<&[u8]>,
) -> Result<(), StepError> {
    let throwaway;
    let password = match password {
        Some(p) => p,
        None => {
            throwaway = random_string(32, Charset::Alphanumeric);
            throwaway.as_bytes()
        }
    };
    let verifier = Zeroizing::new(sentia_crypto::scram_sha256_verifier(password));
    let mut conn = pg_admin(admin).await?;
    // Role names are checked to [A-Za-z0-9_-]; verifiers are base64 and `$:`; both quoted.
    let sql = Zeroizing::new(format!(
        "ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '{}'",
        verifier.as_str()
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .map_err(|e| StepError::postgres(&format!("ALTER ROLE {role}"), &e))?;
    Ok(())
}

/// Logs in as the role with the new password; where the admin may read `pg_authid` the stored
/// verifier is checked too — which proves the password even on servers that trust every
/// local login.
async fn pg_test_login(admin: Option<&Secret>, l: &Login) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|_| "the admin secret is not a postgres:// URL".to_string())?;
    let mut conn = tokio::time::timeout(
        TARGET_TIMEOUT,
        opts.clone()
            .username(&l.username)
            .password(&l.password)
            .connect(),
    )
    .await
    .map_err(|_| StepError::Transient(format!("logging in as {} timed out", l.username)))?
    .map_err(|e| StepError::postgres(&format!("logging in as {} failed", l.username), &e))?;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| StepError::postgres(&format!("query as {}", l.username), &e))?;
    if who != l.username {
        return Err(format!("logged in as {who}, expected {}", l.username).into());
    }
    let mut admin_conn = pg_admin(admin).await?;
    let stored: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&l.username)
            .fetch_one(&mut admin_conn)
            .await;
    match stored {
        Ok(Some(v)) if sentia_crypto::scram_sha256_matches(&v, l.password.as_bytes()) => Ok(()),
        Ok(_) => Err(format!(
            "role {} does not have the new password (its stored verifier differs)",
            l.username
        )
        .into()),
        // Not a superuser: the login above is the proof.
        Err(_) => Ok(()),
    }
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, StepError> {
    let client = redis::Client::open(url).map_err(|_| "not a redis:// URL".to_string())?;
    tokio::time::timeout(TARGET_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| StepError::Transient("connecting to Redis timed out".into()))?
        .map_err(|e| StepError::redis("connecting to Redis", &e))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The error's category and code, never the command (which may hold a password hash).
    fn kind_str(&self) -> String {
        format!("{:?} {}", self.kind(), self.code().unwrap_or(""))
    }
}

async fn redis_acl(admin: Option<&Secret>, user: &str, rule: &str) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let mut conn = redis_conn(&url).await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(rule)
        .query_async(&mut conn)
        .await
        .map_err(|e| StepError::redis(&format!("ACL SETUSER {user}"), &e))?;
    Ok(())
}

async fn redis_test_login(admin: Option<&Secret>, l: &Login) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|_| "the admin secret is not a redis:// URL".to_string())?;
    let settings = info
        .redis_settings()
        .clone()
        .set_username(&l.username)
        .set_password(l.password.as_str());
    info = info.set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(|e| e.kind_str())?;
    // The connection's handshake runs AUTH with these credentials: it only opens if Redis
    // accepts them. Nothing else is asked, since the user may hold no command rights.
    tokio::time::timeout(TARGET_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| {
            StepError::Transient(format!("logging in to Redis as {} timed out", l.username))
        })?
        .map_err(|e| {
            StepError::redis(&format!("logging in to Redis as {} failed", l.username), &e)
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn ctx() -> Ctx<'static> {
        Ctx {
            path: "p",
            rotation_id: "r",
            pending_version: 2,
            previous_version: 1,
            admin: None,
            keys: None,
            now_ms: 0,
        }
    }

    fn generate(r: &Rotator, current: Option<&Secret>) -> Secret {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.generate(&ctx(), current))
            .unwrap()
    }

    #[test]
    fn an_unreachable_target_is_transient_and_a_refusal_is_rejected() {
        let unavailable = tonic::Status::unavailable("connection refused");
        assert!(StepError::status("GetKey k", &unavailable).is_transient());
        let denied = tonic::Status::permission_denied("not granted");
        assert!(!StepError::status("GetKey k", &denied).is_transient());

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on port 1.
        let down = Secret::new(b"postgres://postgres@127.0.0.1:1/postgres".to_vec());
        let e = rt.block_on(pg_admin(Some(&down))).unwrap_err();
        assert!(e.is_transient(), "{e}");
        let redis_down = Secret::new(b"redis://127.0.0.1:1".to_vec());
        let e = rt
            .block_on(redis_acl(Some(&redis_down), "app", "on"))
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        // A configuration no retry can fix.
        let wrong = Secret::new(b"not a connection url".to_vec());
        let e = rt.block_on(pg_admin(Some(&wrong))).unwrap_err();
        assert!(!e.is_transient(), "{e}");
        let e = rt.block_on(pg_admin(None)).unwrap_err();
        assert!(!e.is_transient(), "{e}");
    }

    #[test]
    fn random_values_have_the_length_charset_and_prefix_asked_for() {
        let r = Rotator::parse(
            "api_key",
            &params(json!({"length": 64, "charset": "hex", "prefix": "sk_live_"})),
        )
        .unwrap();
        let a = generate(&r, None);
        let s = std::str::from_utf8(a.expose()).unwrap();
        assert_eq!(s.len(), 8 + 64);
        assert!(s.starts_with("sk_live_"));
        assert!(
            s[8..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, generate(&r, None));
        let p = random_string(2000, Charset::Printable);
        assert!(!p.contains(['"', '\'', '\\', ' ']));
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let e = Rotator::parse("random", &params(json!({"lenght": 20}))).unwrap_err();
        assert!(e.contains("lenght") && e.contains("length"), "{e}");
        let e = Rotator::parse("random", &params(json!({"length": 8}))).unwrap_err();
        assert!(e.contains("16-4096"), "{e}");
        let e = Rotator::parse("postgres_password", &params(json!({"roles": ["a"]}))).unwrap_err();
        assert!(e.contains("admin_secret"), "{e}");
        let e = Rotator::parse(
            "postgres_password",
            &params(json!({"roles": ["a\"; DROP"], "admin_secret": "x"})),
        )
        .unwrap_err();
        assert!(e.contains("role names"), "{e}");
        assert!(
            Rotator::parse("magic", &Map::new())
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn two_postgres_roles_alternate() {
        let r = Rotator::parse(
            "postgres_password",
            &params(json!({"roles": ["app_a", "app_b"], "admin_secret": "x"})),
        )
        .unwrap();
        let first = Login::parse(&generate(&r, None)).unwrap();
        assert_eq!(first.username, "app_a");
        let second = Login::parse(&generate(&r, Some(&first.to_secret()))).unwrap();
        assert_eq!(second.username, "app_b");
        let third = Login::parse(&generate(&r, Some(&second.to_secret()))).unwrap();
        assert_eq!(third.username, "app_a");
        assert_ne!(first.password, third.password);
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = Secret::new(b"hunter2-very-secret".to_vec());
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }
}
