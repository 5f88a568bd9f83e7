//! SystemService: status, initialization, unsealing (Shamir shares), master-key rotation and
//! escrow — the operator's side of key-service.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sentia_crypto::{MasterKey, RecoveryPrivateKey};
use sentia_proto::keys::v1::{self as pb, system_service_server::SystemService};
use sentia_runtime::audit::Call;
use sentia_runtime::{Principal, Role};
use tonic::{Request, Response};
use zeroize::Zeroizing;

use super::{Api, Res, caller};
use crate::KeyError;

fn shamir_params(shares: u32, threshold: u32) -> Result<(u8, u8), KeyError> {
    if !(2..=255).contains(&shares) || threshold < 2 || threshold > shares {
        return Err(KeyError::InvalidArgument(format!(
            "need 2 <= secret_threshold <= secret_shares <= 255, got threshold {threshold} of {shares}"
        )));
    }
    Ok((threshold as u8, shares as u8))
}

#[tonic::async_trait]
impl SystemService for Api {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Res<pb::StatusResponse> {
        let meta = self.core.meta().await?;
        let (master_version, key_count) = self
            .core
            .summary()
            .map(|(v, n)| (v, n as u32))
            .unwrap_or((meta.as_ref().map_or(0, |m| m.master_version), 0));
        let threshold = meta.as_ref().map_or(1, |m| m.shamir_threshold.max(1));
        let master_create_time = self
            .core
            .master_created_at()
            .await?
            .filter(|ms| *ms > 0)
            .map(sentia_proto::wkt::timestamp);
        Ok(Response::new(pb::StatusResponse {
            master_create_time,
            sealed: self.core.is_sealed(),
            initialized: meta.is_some(),
            seal_type: self.core.seal_type().into(),
            threshold,
            progress: self.shares.lock().await.len() as u32,
            master_version,
            key_count,
            server_version: env!("CARGO_PKG_VERSION").into(),
            recovery_fingerprint: meta
                .and_then(|m| m.recovery)
                .map(|e| e.fingerprint)
                .unwrap_or_default(),
        }))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Res<pb::InitResponse> {
        let call = Call::new(&self.audit, &req, "admin", "init", "");
        let result: Res<pb::InitResponse> = async move {
            caller(&req, Role::Admin, "Init")?;
            if self.core.seal_type() != "shamir" {
                return Err(KeyError::FailedPrecondition("Init is for SENTIA_SEAL_TYPE=shamir; this server unseals from its configured master key".into()).into());
            }
            if self.core.meta().await?.is_some() {
                return Err(
                    KeyError::FailedPrecondition("the keyring is already initialized".into()).into(),
                );
            }
            let r = req.into_inner();
            let (k, n) = shamir_params(r.secret_shares, r.secret_threshold)?;
            let master = MasterKey::generate();
            let shares = master.split(k, n).map_err(KeyError::from)?;
            self.core
                .unseal(&master, Some((n.into(), k.into())))
                .await?;
            Ok(Response::new(pb::InitResponse {
                shares: shares.iter().map(|s| s.to_string()).collect(),
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn seal(&self, req: Request<pb::SealRequest>) -> Res<pb::SealResponse> {
        let call = Call::new(&self.audit, &req, "admin", "seal", "");
        let result: Res<pb::SealResponse> = async move {
            caller(&req, Role::Admin, "Seal")?;
            self.core.seal();
            self.shares.lock().await.clear();
            Ok(Response::new(pb::SealResponse { sealed: true }))
        }
        .await;
        call.finish(result).await
    }

    async fn unseal(&self, req: Request<pb::UnsealRequest>) -> Res<pb::UnsealResponse> {
        // Recovering from a lost master key stands out in the audit log.
        let operation = match req.get_ref().material {
            Some(pb::unseal_request::Material::RecoveryKey(_)) => "unseal_recovery",
            _ => "unseal",
        };
        let call = Call::new(&self.audit, &req, "admin", operation, "");
        let result: Res<pb::UnsealResponse> = async move {
            let r = req.into_inner();
            let mut shares = self.shares.lock().await;
            if r.reset {
                shares.clear();
            }
            let meta = self.core.meta().await?;
            let threshold = meta.as_ref().map_or(1, |m| m.shamir_threshold.max(1));
            if !self.core.is_sealed() {
                return Ok(Response::new(pb::UnsealResponse {
                    sealed: false,
                    progress: 0,
                    threshold,
                }));
            }
            if meta.is_none() {
                return Err(KeyError::FailedPrecondition(
                    "the keyring is not initialized; call Init first".into(),
                )
                .into());
            }
            let master = match r.material {
                None => {
                    return Ok(Response::new(pb::UnsealResponse {
                        sealed: true,
                        progress: shares.len() as u32,
                        threshold,
                    }));
                }
                Some(pb::unseal_request::Material::MasterKey(k)) => {
                    MasterKey::from_base64(&Zeroizing::new(k)).map_err(KeyError::from)?
                }
                Some(pb::unseal_request::Material::RecoveryKey(k)) => {
                    let key = RecoveryPrivateKey::from_base64(&Zeroizing::new(k))
                        .map_err(KeyError::from)?;
                    shares.clear();
                    self.core.unseal_with_recovery(&key).await?;
                    return Ok(Response::new(pb::UnsealResponse {
                        sealed: false,
                        progress: 0,
                        threshold,
                    }));
                }
                Some(pb::unseal_request::Material::Share(s)) => {
                    let share = Zeroizing::new(STANDARD.decode(s.trim()).map_err(|_| {
                        KeyError::InvalidArgument("share is not valid base64".into())
                    })?);
                    if share.len() != 33 {
                        return Err(KeyError::InvalidArgument(format!(
                            "a share is 33 bytes, got {}",
                            share.len()
                        ))
                        .into());
                    }
                    if shares.iter().any(|s| s[0] == share[0]) {
                        return Err(KeyError::InvalidArgument(
                            "this share was already submitted".into(),
                        )
                        .into());
                    }
                    shares.push(share);
                    if (shares.len() as u32) < threshold {
                        return Ok(Response::new(pb::UnsealResponse {
                            sealed: true,
                            progress: shares.len() as u32,
                            threshold,
                        }));
                    }
                    let combined = MasterKey::from_shares(&shares);
                    shares.clear();
                    combined.map_err(KeyError::from)?
                }
            };
            self.core.unseal(&master, None).await?;
            Ok(Response::new(pb::UnsealResponse {
                sealed: false,
                progress: 0,
                threshold,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn rotate_master_key(
        &self,
        req: Request<pb::RotateMasterKeyRequest>,
    ) -> Res<pb::RotateMasterKeyResponse> {
        let call = Call::new(&self.audit, &req, "admin", "rotate_master_key", "");
        let g = &call;
        let result: Res<pb::RotateMasterKeyResponse> = async move {
            caller(&req, Role::Admin, "RotateMasterKey")?;
            let r = req.into_inner();
            if self.core.seal_type() == "shamir" {
                let meta = self.core.meta().await?.ok_or(KeyError::Sealed)?;
                let shares = if r.secret_shares == 0 {
                    meta.shamir_shares
                } else {
                    r.secret_shares
                };
                let threshold = if r.secret_threshold == 0 {
                    meta.shamir_threshold
                } else {
                    r.secret_threshold
                };
                let (k, n) = shamir_params(shares, threshold)?;
                g.admit().await?;
                let (master_version, master) =
                    self.core.rotate_master(Some((n.into(), k.into()))).await?;
                let shares = master.split(k, n).map_err(KeyError::from)?;
                return Ok(Response::new(pb::RotateMasterKeyResponse {
                    master_version,
                    master_key: String::new(),
                    shares: shares.iter().map(|s| s.to_string()).collect(),
                }));
            }
            g.admit().await?;
            let (master_version, master) = self.core.rotate_master(None).await?;
            if let Some(file) = &self.master_key_file
                && let Err(e) = replace_private(file, &master.to_base64())
            {
                tracing::error!(
                    file = %file.display(),
                    error = %e,
                    "the master key file could not be updated: save the new master key the \
                     caller received into it, or the next start cannot open the keyring"
                );
            }
            Ok(Response::new(pb::RotateMasterKeyResponse {
                master_version,
                master_key: master.to_base64().to_string(),
                shares: Vec::new(),
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn begin_backup(
        &self,
        req: Request<pb::BeginBackupRequest>,
    ) -> Res<pb::BeginBackupResponse> {
        let call = Call::new(&self.audit, &req, "admin", "backup_begin", "");
        let g = &call;
        let result: Res<pb::BeginBackupResponse> = async move {
            self.backup_makers
                .admit(&Principal::of(&req)?, "BeginBackup")?;
            g.admit().await?;
            let (key, header, recovery_fingerprint) =
                self.core.begin_backup(crate::core::now_ms()).await?;
            Ok(Response::new(pb::BeginBackupResponse {
                archive_key: key.expose().to_vec(),
                header: header.to_bytes(),
                master_version: header.master_version,
                recovery_fingerprint,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn open_backup(
        &self,
        req: Request<pb::OpenBackupRequest>,
    ) -> Res<pb::OpenBackupResponse> {
        let call = Call::new(&self.audit, &req, "admin", "backup_open", "");
        let g = &call;
        let result: Res<pb::OpenBackupResponse> = async move {
            self.backup_makers
                .admit(&Principal::of(&req)?, "OpenBackup")?;
            let raw = &req.get_ref().header;
            if raw.is_empty() || raw.len() > MAX_BACKUP_HEADER {
                return Err(KeyError::InvalidArgument(format!(
                    "header is {} bytes; give an archive's header (1-{MAX_BACKUP_HEADER} bytes)",
                    raw.len()
                ))
                .into());
            }
            let header = sentia_backup::Header::from_bytes(raw)
                .map_err(|e| KeyError::InvalidArgument(format!("not an archive header: {e}")))?;
            g.admit().await?;
            let key = self.core.open_backup(&header)?;
            Ok(Response::new(pb::OpenBackupResponse {
                archive_key: key.expose().to_vec(),
            }))
        }
        .await;
        call.finish(result).await
    }
}

/// The largest archive header OpenBackup reads (a real one is a few hundred bytes).
const MAX_BACKUP_HEADER: usize = 64 * 1024;

/// Writes `contents` to `path` owner-only (0600 from creation) through a temporary file and a
/// rename, so the file holds the old or the new key, never half of one.
fn replace_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut file = sentia_runtime::private_file::open(
        &tmp,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
