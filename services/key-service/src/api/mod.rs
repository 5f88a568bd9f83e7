//! The gRPC surface: validates each request at the edge, authorizes by role, and calls
//! [`Core`]. Plaintext and key material never reach a log line from here. KeyService is here,
//! SystemService (the operator's side) in `system`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sentia_crypto::{Envelope, MAX_CONTEXT_LEN};
use sentia_proto::keys::v1::{self as pb, key_service_server::KeyService};
use sentia_runtime::audit::{Call, Detail, Emitter};
use sentia_runtime::{Principal, Role};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

mod system;

use crate::KeyError;
use crate::core::{Core, KeyEntry};
use crate::grants::{Grants, Operation};
use crate::keyring::{Purpose, validate_key_name};
use sentia_snapshot::BackupMakers;

/// Largest payload for Encrypt, Hmac and Sign.
pub const MAX_PAYLOAD: usize = 65_536;

/// Both gRPC services over one core.
#[derive(Clone)]
pub struct Api {
    core: Arc<Core>,
    grants: Arc<Grants>,
    backup_makers: BackupMakers,
    master_key_file: Option<Arc<std::path::PathBuf>>,
    shares: Arc<Mutex<Vec<Zeroizing<Vec<u8>>>>>,
    audit: Arc<Emitter>,
}

impl Api {
    /// Wraps the core; `grants` say which identity may use which key for what; every RPC
    /// outcome (except Status) is recorded through `audit`.
    pub fn new(core: Arc<Core>, grants: Grants, audit: Arc<Emitter>) -> Self {
        Self {
            core,
            grants: Arc::new(grants),
            backup_makers: BackupMakers::default(),
            master_key_file: None,
            shares: Arc::new(Mutex::new(Vec::new())),
            audit,
        }
    }
}

impl Api {
    /// Keeps `file` (a dev master key file) holding the master in force: a master rotation
    /// rewrites it before answering, so the next start opens the keyring.
    pub fn with_master_key_file(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.master_key_file = file.map(Arc::new);
        self
    }

    /// Lets the service identities in `makers` begin backups (BeginBackup), as administrators
    /// may.
    pub fn with_backup_makers(mut self, makers: BackupMakers) -> Self {
        self.backup_makers = makers;
        self
    }
}

/// Responses that name the key version they used, for the audit event.
trait KeyVersioned {
    fn key_version(&self) -> u32;
}

macro_rules! key_versioned {
    ($($t:ty),*) => { $(impl KeyVersioned for $t { fn key_version(&self) -> u32 { self.key_version } })* };
}

key_versioned!(
    pb::GenerateDataKeyResponse,
    pb::UnwrapDataKeyResponse,
    pb::RewrapDataKeyResponse,
    pb::EncryptResponse,
    pb::DecryptResponse,
    pb::HmacResponse,
    pb::SignResponse
);

/// Records a crypto operation's outcome with the key version it used.
async fn crypto_audited<T: KeyVersioned>(call: &Call<'_>, result: Res<T>) -> Res<T> {
    let detail = Detail {
        key_version: result.as_ref().ok().map(|r| r.get_ref().key_version()),
        tier: 0,
        operation: None,
    };
    count_operation(call.operation(), call.name(), detail.key_version);
    call.set_detail(detail);
    call.finish(result).await
}

/// Counts a crypto operation as the OpenTelemetry counter `sentia.keys.operations` by
/// operation, key and version (`result` error, without key or version, when it failed — so a
/// caller's made-up key names cannot blow up the series).
fn count_operation(operation: &str, key: &str, version: Option<u32>) {
    use opentelemetry::KeyValue;
    static OPERATIONS: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    let counter = OPERATIONS.get_or_init(|| {
        opentelemetry::global::meter("key-service")
            .u64_counter("sentia.keys.operations")
            .with_description("Cryptographic operations by operation, key and key version")
            .build()
    });
    let mut attrs = vec![KeyValue::new("operation", operation.to_string())];
    match version {
        Some(v) => {
            attrs.push(KeyValue::new("key", key.to_string()));
            attrs.push(KeyValue::new("version", i64::from(v)));
            attrs.push(KeyValue::new("result", "ok"));
        }
        None => attrs.push(KeyValue::new("result", "error")),
    }
    counter.add(1, &attrs);
}

fn caller<T>(req: &Request<T>, role: Role, action: &str) -> Result<Principal, Status> {
    let p = Principal::of(req)?;
    p.require(role, action)?;
    Ok(p)
}

fn name(raw: &str) -> Result<&str, KeyError> {
    validate_key_name(raw).map_err(KeyError::InvalidArgument)?;
    Ok(raw)
}

fn context(ctx: &[u8]) -> Result<&[u8], KeyError> {
    if ctx.len() > MAX_CONTEXT_LEN {
        return Err(KeyError::InvalidArgument(format!(
            "encryption_context is {} bytes; the limit is {MAX_CONTEXT_LEN}",
            ctx.len()
        )));
    }
    Ok(ctx)
}

fn payload<'a>(data: &'a [u8], field: &str, allow_empty: bool) -> Result<&'a [u8], KeyError> {
    if (!allow_empty && data.is_empty()) || data.len() > MAX_PAYLOAD {
        return Err(KeyError::InvalidArgument(format!(
            "{field} must be {} to {MAX_PAYLOAD} bytes, got {}",
            if allow_empty { 0 } else { 1 },
            data.len()
        )));
    }
    Ok(data)
}

fn parse(blob: &[u8]) -> Result<Envelope<'_>, KeyError> {
    if blob.is_empty() {
        return Err(KeyError::InvalidArgument("ciphertext is empty".into()));
    }
    Ok(Envelope::parse(blob)?)
}

use sentia_proto::wkt::timestamp;

fn kid(name: &str, version: u32) -> String {
    format!("{name}-v{version}")
}

impl Api {
    async fn to_pb(&self, e: &KeyEntry) -> pb::Key {
        let mut versions = Vec::new();
        for v in e.versions.values() {
            versions.push(pb::KeyVersion {
                version: v.version,
                create_time: Some(timestamp(v.created_at)),
                encryption_count: self.core.encryption_count(v).await,
                kid: if e.purpose == Purpose::Signing {
                    kid(&e.row.name, v.version)
                } else {
                    String::new()
                },
            });
        }
        pb::Key {
            name: e.row.name.clone(),
            purpose: match e.purpose {
                Purpose::Encryption => pb::KeyPurpose::Encryption,
                Purpose::Signing => pb::KeyPurpose::Signing,
                Purpose::Hmac => pb::KeyPurpose::Hmac,
            } as i32,
            primary_version: e.row.primary_version,
            min_decryption_version: e.row.min_decryption_version,
            auto_rotate_period: e.row.auto_rotate_secs.map(|s| prost_types::Duration {
                seconds: s,
                nanos: 0,
            }),
            staged_version: e
                .versions
                .keys()
                .copied()
                .find(|v| *v > e.row.primary_version)
                .unwrap_or(0),
            versions,
            create_time: Some(timestamp(e.row.created_at)),
        }
    }

    /// Unwraps a blob sealed under an encryption key, returning the plaintext and the entry.
    /// The caller's grant for `op` on the blob's key under `ctx` is checked before anything
    /// is decrypted.
    async fn open(
        &self,
        caller: &Principal,
        op: Operation,
        blob: &[u8],
        ctx: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, String, u32), KeyError> {
        let env = parse(blob)?;
        self.grants
            .check(caller, op, env.key_name, Some(context(ctx)?))?;
        let entry = self
            .core
            .entry_with_version(env.key_name, env.key_version)
            .await?;
        entry.require(Purpose::Encryption)?;
        let version = entry.decryptable(env.key_version)?;
        let plain = sentia_crypto::open(&version.key, &env, context(ctx)?).inspect_err(|_| {
            tracing::warn!(
                key = env.key_name,
                version = env.key_version,
                "failed decryption"
            );
        })?;
        Ok((plain, env.key_name.to_string(), env.key_version))
    }

    /// Seals under the primary version of an encryption key, counting the nonce, once the
    /// caller's grant for `op` on that key under `ctx` is checked.
    async fn seal(
        &self,
        caller: &Principal,
        op: Operation,
        key_name: &str,
        ctx: &[u8],
        plain: &[u8],
    ) -> Result<(Vec<u8>, u32), KeyError> {
        self.grants
            .check(caller, op, name(key_name)?, Some(context(ctx)?))?;
        let entry = self.core.entry(key_name).await?;
        entry.require(Purpose::Encryption)?;
        let primary = entry.primary()?.clone();
        self.core.count_encryption(key_name, &primary).await?;
        let blob = sentia_crypto::seal(
            &primary.key,
            key_name,
            primary.version,
            context(ctx)?,
            plain,
        )?;
        Ok((blob, primary.version))
    }
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl KeyService for Api {
    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> Res<pb::GenerateDataKeyResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "generate_data_key",
            &req.get_ref().key_name,
        );
        let result: Res<pb::GenerateDataKeyResponse> = async move {
            let p = caller(&req, Role::Service, "GenerateDataKey")?;
            let r = req.into_inner();
            let dek = sentia_crypto::SecretKey::generate();
            let (wrapped_key, key_version) = self
                .seal(
                    &p,
                    Operation::GenerateDataKey,
                    &r.key_name,
                    &r.encryption_context,
                    dek.expose(),
                )
                .await?;
            Ok(Response::new(pb::GenerateDataKeyResponse {
                plaintext_key: dek.expose().to_vec(),
                wrapped_key,
                key_version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn unwrap_data_key(
        &self,
        req: Request<pb::UnwrapDataKeyRequest>,
    ) -> Res<pb::UnwrapDataKeyResponse> {
        let call = Call::new(&self.audit, &req, "key_operation", "unwrap_data_key", "");
        let result: Res<pb::UnwrapDataKeyResponse> = async move {
            let p = caller(&req, Role::Service, "UnwrapDataKey")?;
            let r = req.into_inner();
            let (plain, key_name, key_version) = self
                .open(
                    &p,
                    Operation::UnwrapDataKey,
                    &r.wrapped_key,
                    &r.encryption_context,
                )
                .await?;
            Ok(Response::new(pb::UnwrapDataKeyResponse {
                plaintext_key: plain.to_vec(),
                key_name,
                key_version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn rewrap_data_key(
        &self,
        req: Request<pb::RewrapDataKeyRequest>,
    ) -> Res<pb::RewrapDataKeyResponse> {
        let call = Call::new(&self.audit, &req, "key_operation", "rewrap_data_key", "");
        let result: Res<pb::RewrapDataKeyResponse> = async move {
            let p = caller(&req, Role::Service, "RewrapDataKey")?;
            let r = req.into_inner();
            let op = Operation::RewrapDataKey;
            let (plain, key_name, _) = self
                .open(&p, op, &r.wrapped_key, &r.encryption_context)
                .await?;
            let (wrapped_key, key_version) = self
                .seal(&p, op, &key_name, &r.encryption_context, &plain)
                .await?;
            Ok(Response::new(pb::RewrapDataKeyResponse {
                wrapped_key,
                key_version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn encrypt(&self, req: Request<pb::EncryptRequest>) -> Res<pb::EncryptResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "encrypt",
            &req.get_ref().key_name,
        );
        let result: Res<pb::EncryptResponse> = async move {
            let p = caller(&req, Role::Service, "Encrypt")?;
            let r = req.into_inner();
            let plain = Zeroizing::new(r.plaintext);
            let (ciphertext, key_version) = self
                .seal(
                    &p,
                    Operation::Encrypt,
                    &r.key_name,
                    &r.encryption_context,
                    payload(&plain, "plaintext", false)?,
                )
                .await?;
            Ok(Response::new(pb::EncryptResponse {
                ciphertext,
                key_version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn decrypt(&self, req: Request<pb::DecryptRequest>) -> Res<pb::DecryptResponse> {
        let call = Call::new(&self.audit, &req, "key_operation", "decrypt", "");
        let result: Res<pb::DecryptResponse> = async move {
            let p = caller(&req, Role::Service, "Decrypt")?;
            let r = req.into_inner();
            let (plain, key_name, key_version) = self
                .open(&p, Operation::Decrypt, &r.ciphertext, &r.encryption_context)
                .await?;
            Ok(Response::new(pb::DecryptResponse {
                plaintext: plain.to_vec(),
                key_name,
                key_version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn hmac(&self, req: Request<pb::HmacRequest>) -> Res<pb::HmacResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "hmac",
            &req.get_ref().key_name,
        );
        let result: Res<pb::HmacResponse> = async move {
            let p = caller(&req, Role::Service, "Hmac")?;
            let r = req.into_inner();
            self.grants
                .check(&p, Operation::Hmac, name(&r.key_name)?, None)?;
            let entry = self.core.entry(&r.key_name).await?;
            entry.require(Purpose::Hmac)?;
            let v = entry.primary()?;
            let tag = sentia_crypto::hmac_sha256(&v.key, payload(&r.data, "data", true)?);
            Ok(Response::new(pb::HmacResponse {
                mac: format!("sentia:v{}:{}", v.version, STANDARD.encode(tag)),
                key_version: v.version,
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn verify_hmac(
        &self,
        req: Request<pb::VerifyHmacRequest>,
    ) -> Res<pb::VerifyHmacResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "verify_hmac",
            &req.get_ref().key_name,
        );
        let result: Res<pb::VerifyHmacResponse> = async move {
            let p = caller(&req, Role::Service, "VerifyHmac")?;
            let r = req.into_inner();
            self.grants
                .check(&p, Operation::VerifyHmac, name(&r.key_name)?, None)?;
            let bad = || {
                KeyError::InvalidArgument("mac must look like sentia:v{version}:{base64}".into())
            };
            let rest = r.mac.strip_prefix("sentia:v").ok_or_else(bad)?;
            let (version, tag) = rest.split_once(':').ok_or_else(bad)?;
            let version: u32 = version.parse().map_err(|_| bad())?;
            let tag = STANDARD.decode(tag).map_err(|_| bad())?;
            let entry = self
                .core
                .entry_with_version(name(&r.key_name)?, version)
                .await?;
            entry.require(Purpose::Hmac)?;
            let v = entry.decryptable(version)?;
            let valid =
                sentia_crypto::verify_hmac_sha256(&v.key, payload(&r.data, "data", true)?, &tag);
            Ok(Response::new(pb::VerifyHmacResponse { valid }))
        }
        .await;
        call.finish(result).await
    }

    async fn sign(&self, req: Request<pb::SignRequest>) -> Res<pb::SignResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "sign",
            &req.get_ref().key_name,
        );
        let result: Res<pb::SignResponse> = async move {
            let p = caller(&req, Role::Service, "Sign")?;
            let r = req.into_inner();
            self.grants
                .check(&p, Operation::Sign, name(&r.key_name)?, None)?;
            let entry = self.core.entry(&r.key_name).await?;
            entry.require(Purpose::Signing)?;
            let v = entry.primary()?;
            let signer = v
                .signing
                .as_ref()
                .ok_or_else(|| KeyError::Corrupt(r.key_name.clone()))?;
            let signature = signer.sign(payload(&r.message, "message", false)?).to_vec();
            Ok(Response::new(pb::SignResponse {
                signature,
                key_version: v.version,
                kid: kid(&r.key_name, v.version),
                algorithm: "EdDSA".into(),
            }))
        }
        .await;
        crypto_audited(&call, result).await
    }

    async fn get_public_keys(
        &self,
        req: Request<pb::GetPublicKeysRequest>,
    ) -> Res<pb::GetPublicKeysResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_operation",
            "get_public_keys",
            &req.get_ref().key_name,
        );
        let result: Res<pb::GetPublicKeysResponse> = async move {
            caller(&req, Role::Service, "GetPublicKeys")?;
            let r = req.into_inner();
            let entry = self.core.entry(name(&r.key_name)?).await?;
            entry.require(Purpose::Signing)?;
            let mut keys = Vec::new();
            let mut jwks = Vec::new();
            for v in entry
                .versions
                .values()
                .filter(|v| v.version >= entry.row.min_decryption_version)
            {
                let Some(signer) = &v.signing else { continue };
                let public = signer.public_key();
                let id = kid(&r.key_name, v.version);
                jwks.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(public), "kid": id, "alg": "EdDSA", "use": "sig"}));
                keys.push(pb::PublicKey {
                    kid: id,
                    version: v.version,
                    algorithm: "EdDSA".into(),
                    public_key: public.to_vec(),
                });
            }
            let jwks_json = serde_json::json!({ "keys": jwks }).to_string();
            Ok(Response::new(pb::GetPublicKeysResponse { keys, jwks_json }))
        }
        .await;
        call.finish(result).await
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Res<pb::Key> {
        let call = Call::new(
            &self.audit,
            &req,
            "admin",
            "create_key",
            &req.get_ref().name,
        );
        let g = &call;
        let result: Res<pb::Key> = async move {
            caller(&req, Role::Admin, "CreateKey")?;
            let r = req.into_inner();
            let purpose = match pb::KeyPurpose::try_from(r.purpose) {
                Ok(pb::KeyPurpose::Encryption) => Purpose::Encryption,
                Ok(pb::KeyPurpose::Signing) => Purpose::Signing,
                Ok(pb::KeyPurpose::Hmac) => Purpose::Hmac,
                _ => {
                    return Err(KeyError::InvalidArgument(
                        "purpose must be ENCRYPTION, SIGNING or HMAC".into(),
                    )
                    .into());
                }
            };
            let period = auto_rotate(r.auto_rotate_period)?.flatten();
            let key = name(&r.name)?;
            g.admit().await?;
            let entry = self.core.create_key(key, purpose, period).await?;
            Ok(Response::new(self.to_pb(&entry).await))
        }
        .await;
        call.finish(result).await
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Res<pb::Key> {
        let call = Call::new(
            &self.audit,
            &req,
            "admin",
            "rotate_key",
            &req.get_ref().name,
        );
        let g = &call;
        let result: Res<pb::Key> = async move {
            let p = caller(&req, Role::Service, "RotateKey")?;
            let key = name(&req.get_ref().name)?;
            self.grants.check(&p, Operation::RotateKey, key, None)?;
            g.admit().await?;
            let entry = if req.get_ref().stage {
                self.core.stage_key(key).await?
            } else {
                self.core.rotate_key(key).await?
            };
            Ok(Response::new(self.to_pb(&entry).await))
        }
        .await;
        call.finish(result).await
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Res<pb::Key> {
        let call = Call::new(
            &self.audit,
            &req,
            "key_read",
            "get_key",
            &req.get_ref().name,
        );
        let result: Res<pb::Key> = async move {
            let p = caller(&req, Role::Service, "GetKey")?;
            let key = name(&req.get_ref().name)?;
            self.grants.check(&p, Operation::GetKey, key, None)?;
            let entry = self.core.entry(key).await?;
            Ok(Response::new(self.to_pb(&entry).await))
        }
        .await;
        call.finish(result).await
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Res<pb::ListKeysResponse> {
        let call = Call::new(&self.audit, &req, "key_read", "list_keys", "");
        let result: Res<pb::ListKeysResponse> = async move {
            let p = caller(&req, Role::Service, "ListKeys")?;
            let r = req.into_inner();
            let size = sentia_proto::page::size(r.page_size).map_err(KeyError::InvalidArgument)?;
            let after = sentia_proto::page::decode(&r.page_token, "keys.ListKeys", "")
                .map_err(KeyError::InvalidArgument)?
                .unwrap_or_default();
            let all = self.core.list().await?;
            let mut keys = Vec::new();
            let mut next_page_token = String::new();
            for e in all.iter().filter(|e| {
                e.row.name.as_str() > after.as_str()
                    && self
                        .grants
                        .allows(&p, Operation::ListKeys, &e.row.name, None)
            }) {
                if keys.len() == size {
                    next_page_token = keys
                        .last()
                        .map(|k: &pb::Key| sentia_proto::page::encode("keys.ListKeys", "", &k.name))
                        .unwrap_or_default();
                    break;
                }
                keys.push(self.to_pb(e).await);
            }
            Ok(Response::new(pb::ListKeysResponse {
                keys,
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn set_key_policy(&self, req: Request<pb::SetKeyPolicyRequest>) -> Res<pb::Key> {
        let call = Call::new(
            &self.audit,
            &req,
            "admin",
            "set_key_policy",
            &req.get_ref().name,
        );
        let g = &call;
        let result: Res<pb::Key> = async move {
            let p = caller(&req, Role::Service, "SetKeyPolicy")?;
            let r = req.into_inner();
            self.grants
                .check(&p, Operation::SetKeyPolicy, name(&r.name)?, None)?;
            let paths: Vec<String> = r.update_mask.map(|m| m.paths).unwrap_or_default();
            for p in &paths {
                if p != "min_decryption_version" && p != "auto_rotate_period" {
                    return Err(KeyError::InvalidArgument(format!(
                        "unknown update_mask path {p:?}"
                    ))
                    .into());
                }
            }
            let all = paths.is_empty();
            let min = (all || paths.iter().any(|p| p == "min_decryption_version"))
                .then_some(r.min_decryption_version);
            let period = if all || paths.iter().any(|p| p == "auto_rotate_period") {
                Some(auto_rotate(r.auto_rotate_period)?.flatten())
            } else {
                None
            };
            let key = name(&r.name)?;
            g.admit().await?;
            let entry = self.core.set_policy(key, min, period).await?;
            Ok(Response::new(self.to_pb(&entry).await))
        }
        .await;
        call.finish(result).await
    }
}

/// Longest automatic rotation period: ten years (the seed's longest schedule is one year;
/// anything longer is a typo, not a policy).
const MAX_AUTO_ROTATE_SECS: i64 = 10 * 366 * 86_400;

/// None: field absent; Some(None): cleared (zero); Some(Some(s)): 1 hour to 10 years, whole
/// seconds.
fn auto_rotate(d: Option<prost_types::Duration>) -> Result<Option<Option<i64>>, KeyError> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(Some(None)),
        Some(d) if (3600..=MAX_AUTO_ROTATE_SECS).contains(&d.seconds) && d.nanos == 0 => {
            Ok(Some(Some(d.seconds)))
        }
        Some(d) if !(0..1_000_000_000).contains(&d.nanos) => {
            Err(KeyError::InvalidArgument(format!(
                "auto_rotate_period.nanos must be 0 to 999999999 (got {})",
                d.nanos
            )))
        }
        Some(d) => Err(KeyError::InvalidArgument(format!(
            "auto_rotate_period must be whole seconds from 3600 (1 hour) to {MAX_AUTO_ROTATE_SECS} \
             (10 years), or zero to clear; got {} s and {} ns",
            d.seconds, d.nanos
        ))),
    }
}
