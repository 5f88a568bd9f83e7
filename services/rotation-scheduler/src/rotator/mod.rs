//! Rotators: how a new value is made, applied to its target, proven, rolled back and the old
//! one revoked — one module per target behind the [`Target`] trait. Credentials a rotator needs (an admin connection URL) are never parameters:
//! they are referenced by secret path and read from vault-service when needed.
//!
//! Values of `postgres_password` and `redis_acl` secrets are JSON `{"username", "password"}`;
//! `random` and `api_key` values are the bare string.

mod jwt_signing_key;
mod postgres;
mod random;
mod redis_acl;
mod webhook;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_runtime::client::AuthedChannel;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

pub use jwt_signing_key::DEFAULT_PROPAGATION;

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

    pub(crate) fn text(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.0).map_err(|_| "the secret value is not UTF-8".to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([REDACTED; {} bytes])", self.0.len())
    }
}

/// A username and password held in one JSON secret value.
pub(crate) struct Login {
    pub(crate) username: String,
    pub(crate) password: Zeroizing<String>,
}

impl Login {
    pub(crate) fn parse(value: &Secret) -> Result<Self, String> {
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

    pub(crate) fn to_secret(&self) -> Secret {
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
    pub(crate) fn parse(s: &str) -> Option<Self> {
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

/// What a rotator step returns.
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StepError>> + Send + 'a>>;

/// A step that has nothing to do on this target.
fn nothing<'a>() -> StepFuture<'a, ()> {
    Box::pin(async { Ok(()) })
}

/// One kind of rotation target: how a new value is made, applied, proven, undone and the old
/// one revoked. Every step is idempotent: after a crash or a transient failure it runs again.
pub trait Target: fmt::Debug + Send + Sync {
    /// The secret holding the admin credential this rotator needs, if any.
    fn admin_secret(&self) -> Option<&str> {
        None
    }

    /// A new value (`current` is the CURRENT one, if any).
    fn generate<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        current: Option<&'a Secret>,
    ) -> StepFuture<'a, Secret>;

    /// Applies `new` to the target.
    fn set<'a>(&'a self, _ctx: &'a Ctx<'a>, _new: &'a Secret) -> StepFuture<'a, ()> {
        nothing()
    }

    /// Proves `new` works against the target.
    fn test<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, Progress>;

    /// Just before `finish` labels the new value CURRENT.
    fn finish<'a>(&'a self, _ctx: &'a Ctx<'a>, _new: &'a Secret) -> StepFuture<'a, ()> {
        nothing()
    }

    /// Undoes `set`: the credential `new` changed gets back the value it had (`before`, the
    /// stored values), or — with nothing to restore — is locked.
    fn restore<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _new: &'a Secret,
        _before: &'a [Secret],
    ) -> StepFuture<'a, ()> {
        nothing()
    }

    /// After the grace period: the old credential stops working on the target.
    fn revoke<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _previous: &'a Secret,
        _current: &'a Secret,
    ) -> StepFuture<'a, ()> {
        nothing()
    }
}

/// A configured rotator: its name and parameters as the policy states them, and the parsed
/// [`Target`] that runs the steps. Cheap to clone; parsed once, where the policy is read.
#[derive(Debug, Clone)]
pub struct Rotator {
    name: String,
    params: Map<String, Value>,
    target: Arc<dyn Target>,
}

/// Two rotators are the same when their policy says the same.
impl PartialEq for Rotator {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.params == other.params
    }
}

/// A rotator's parameters, read by name with refusals that name the rotator.
pub(crate) struct Params<'a> {
    name: &'a str,
    map: &'a Map<String, Value>,
}

impl Params<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.map.get(k)
    }

    fn string(&self, k: &str) -> Result<Option<String>, String> {
        match self.map.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("rotator {}: {k} must be a string", self.name)),
        }
    }

    fn required(&self, k: &str) -> Result<String, String> {
        self.string(k)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("rotator {} needs {k}", self.name))
    }
}

/// The refusal of a rotator name that is not one of ours, listing those that are.
/// Every rotator a policy can name.
pub const NAMES: [&str; 6] = [
    "random",
    "api_key",
    "postgres_password",
    "redis_acl",
    "webhook",
    "jwt_signing_key",
];

fn unknown_rotator(name: &str) -> String {
    format!("unknown rotator {name:?} (available: {})", NAMES.join(", "))
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
            "random" | "api_key" => random::PARAMETERS,
            "postgres_password" => postgres::PARAMETERS,
            "redis_acl" => redis_acl::PARAMETERS,
            "webhook" => webhook::PARAMETERS,
            "jwt_signing_key" => jwt_signing_key::PARAMETERS,
            _ => return Err(unknown_rotator(name)),
        };
        if let Some(k) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "rotator {name} has no parameter {k:?} (it takes: {})",
                allowed.join(", ")
            ));
        }
        let p = Params { name, map: params };
        let target: Arc<dyn Target> = match name {
            "random" | "api_key" => Arc::new(random::Random::parse(&p)?),
            "postgres_password" => Arc::new(postgres::Postgres::parse(&p)?),
            "redis_acl" => Arc::new(redis_acl::RedisAcl::parse(&p)?),
            "webhook" => Arc::new(webhook::Webhook::parse(&p)?),
            "jwt_signing_key" => Arc::new(jwt_signing_key::JwtSigningKey::parse(&p)?),
            _ => return Err(unknown_rotator(name)),
        };
        Ok(Self {
            name: name.to_string(),
            params: params.clone(),
            target,
        })
    }

    /// The rotator's name (`random`, `postgres_password`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its parameters, as the policy states them.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// The secret holding the admin credential this rotator needs, if any.
    pub fn admin_secret(&self) -> Option<&str> {
        self.target.admin_secret()
    }

    /// A new value. With two Postgres roles it is for the role not in `current`; for a
    /// signing key it names the version `set` will publish.
    pub async fn generate(
        &self,
        ctx: &Ctx<'_>,
        current: Option<&Secret>,
    ) -> Result<Secret, StepError> {
        self.target.generate(ctx, current).await
    }

    /// Applies `new` to the target. Idempotent.
    pub async fn set(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<(), StepError> {
        self.target.set(ctx, new).await
    }

    /// Proves `new` works against the target.
    pub async fn test(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<Progress, StepError> {
        self.target.test(ctx, new).await
    }

    /// Just before `finish` labels the new value CURRENT: a signing key becomes the signer.
    /// Idempotent.
    pub async fn finish(&self, ctx: &Ctx<'_>, new: &Secret) -> Result<(), StepError> {
        self.target.finish(ctx, new).await
    }

    /// Undoes `set`: the credential `new` changed gets back the value it had (`before`, the
    /// stored value for the same user), or — with nothing to restore — is locked.
    pub async fn restore(
        &self,
        ctx: &Ctx<'_>,
        new: &Secret,
        before: &[Secret],
    ) -> Result<(), StepError> {
        self.target.restore(ctx, new, before).await
    }

    /// After the grace period: the old credential stops working on the target.
    pub async fn revoke(
        &self,
        ctx: &Ctx<'_>,
        previous: &Secret,
        current: &Secret,
    ) -> Result<(), StepError> {
        self.target.revoke(ctx, previous, current).await
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    sentia_crypto::sha256(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn admin_url(admin: Option<&Secret>) -> Result<Zeroizing<String>, String> {
    let a = admin.ok_or("the rotator's admin secret is missing")?;
    Ok(Zeroizing::new(a.text()?.trim().to_string()))
}

/// How long a rotator waits for its target to answer.
pub(crate) const TARGET_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::postgres::pg_admin;
    use super::redis_acl::redis_acl;
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
