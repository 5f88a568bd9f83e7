//! `jwt_signing_key`: a key-service signing key, rolled. `set` publishes a new version
//! (staged: it verifies but does not sign), `test` checks it is in the published keys and
//! waits out `propagation`, `finish` makes it the signer, `cleanup` stops the old one
//! verifying (min_decryption_version). The secret's value names the key version in use:
//! `{"key", "version", "kid"}` — the key material never leaves key-service.

use std::time::Duration;

use sentia_proto::keys::v1 as kpb;
use serde_json::{Value, json};

use super::{Ctx, Params, Progress, Secret, StepError, StepFuture, Target, ident_ok};

/// The parameters `jwt_signing_key` takes.
pub(super) const PARAMETERS: &[&str] = &["key", "propagation"];

/// A key-service signing key (rolling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JwtSigningKey {
    /// key-service key name; when unset, the `key` field of the CURRENT value.
    key: Option<String>,
    /// How long verifiers get to learn the new key before it signs (default 1 min).
    propagation: Duration,
}

impl JwtSigningKey {
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        let key = p.string("key")?;
        if key.as_deref().is_some_and(|k| !ident_ok(k)) {
            return Err("rotator jwt_signing_key: key must be a key-service key name".into());
        }
        let propagation = match p.string("propagation")? {
            None => DEFAULT_PROPAGATION,
            Some(d) => sentia_runtime::config::parse_duration(&d).ok_or_else(|| {
                format!("rotator jwt_signing_key: propagation {d:?} is not a duration like 10m")
            })?,
        };
        Ok(Self { key, propagation })
    }
}

impl Target for JwtSigningKey {
    /// Names the version `set` will publish.
    fn generate<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        current: Option<&'a Secret>,
    ) -> StepFuture<'a, Secret> {
        Box::pin(async move {
            let name = match &self.key {
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
        })
    }

    fn set<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(async move {
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
        })
    }

    fn test<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, Progress> {
        Box::pin(async move {
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
            let ready = created.saturating_add(ms(self.propagation));
            Ok(if ctx.now_ms < ready {
                Progress::WaitUntil(ready)
            } else {
                Progress::Done
            })
        })
    }

    /// The new version becomes the signer.
    fn finish<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(async move {
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
        })
    }

    // `restore`: the staged version never signed; it stays published and the next attempt
    // stages it again (idempotent), so nothing is left to undo.

    fn revoke<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _previous: &'a Secret,
        current: &'a Secret,
    ) -> StepFuture<'a, ()> {
        Box::pin(async move {
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
        })
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
