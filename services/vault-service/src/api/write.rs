//! The write path: Put (writers of a path take turns, check-and-set, retries against other
//! replicas), state changes, and what follows every commit.

use std::time::Duration;

use sentia_policy::Capability;
use sentia_proto::vault::v1 as pb;
use sentia_proto::wkt::timestamp;
use sentia_runtime::Principal;
use sentia_runtime::audit::{Call, Detail};
use tonic::Status;

use super::SecretApi;
use crate::VaultError;
use crate::model::{self, CURRENT, Metadata, SecretPath};
use crate::store::{Committed, NewVersion, State, state_name};

/// Attempts of a Put that keeps losing races to writers on other replicas (writers on this
/// replica wait their turn on [`PathLocks`] instead of racing).
const PUT_ATTEMPTS: u32 = 8;

/// Writers of one path on this replica take turns: each write reads the current version,
/// seals under a data key bound to the next one and commits only if nobody moved it, so
/// concurrent writers of a path would otherwise mostly lose and pay for a data key each time.
/// Striped by a hash of the path: bounded memory, and unrelated paths rarely share a stripe.
pub struct PathLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl PathLocks {
    /// `stripes` locks (at least one).
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: Default::default(),
        }
    }

    pub(super) async fn lock(&self, path: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one(path) % self.stripes.len() as u64;
        self.stripes[stripe as usize].lock().await
    }
}

impl SecretApi {
    /// After a commit: drop cache entries, forget data keys of destroyed versions, wake
    /// watchers.
    pub(super) async fn committed(&self, path: &SecretPath, c: &Committed, destroyed: &[u64]) {
        if let Some(local) = &self.local {
            local.evict_written(path.as_str(), c.sequence);
        }
        if let Some(cache) = &self.cache {
            cache
                .invalidate(path.as_str(), c.revision, &c.touched_versions)
                .await;
        }
        if !destroyed.is_empty() {
            self.keys.forget(path.as_str(), destroyed);
        }
        self.notifier.committed(c.sequence).await;
    }

    pub(super) async fn put(
        &self,
        p: &Principal,
        r: pb::PutSecretRequest,
        call: &Call<'_>,
    ) -> Result<pb::PutSecretResponse, VaultError> {
        let path = SecretPath::parse(&r.path)?;
        self.policies.check(p, Capability::Write, path.as_str())?;
        model::value(&r.value)?;
        let request_id = model::request_id(&r.request_id)?;
        let mask = model::mask(&r.update_mask)?;
        let mut labels = Vec::new();
        for l in if r.labels.is_empty() {
            vec![CURRENT.to_string()]
        } else {
            r.labels.clone()
        } {
            let l = model::label(&l)?;
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        if labels.len() > model::MAX_LABELS_PER_PUT {
            return Err(VaultError::Invalid(format!(
                "at most {} labels per write",
                model::MAX_LABELS_PER_PUT
            )));
        }
        let earlier = |found: Option<(String, u64, i64)>| -> Result<Option<pb::PutSecretResponse>, VaultError> {
            match found {
                Some((earlier_path, _, _)) if earlier_path != path.as_str() => Err(VaultError::Invalid(format!(
                    "request_id was already used for a write to {earlier_path}; use a new request_id"
                ))),
                Some((_, version, t)) => Ok(Some(pb::PutSecretResponse {
                    version,
                    create_time: Some(timestamp(t)),
                })),
                None => Ok(None),
            }
        };
        if let Some(id) = &request_id
            && let Some(done) = earlier(self.store.put_request(&p.id, id).await?)?
        {
            return Ok(done);
        }
        let _turn = self.writers.lock(path.as_str()).await;
        for attempt in 0..PUT_ATTEMPTS {
            if attempt > 0 {
                // Lost to another replica: back off a random 1-20 ms times the attempt.
                let jitter = 1 + uuid::Uuid::new_v4().as_u128() % 20;
                tokio::time::sleep(Duration::from_millis(jitter as u64 * u64::from(attempt))).await;
            }
            let existing = self.store.secret_without_labels(path.as_str()).await?;
            let current = existing.as_ref().map_or(0, |s| s.current_version);
            if let Some(expected) = r.expected_version
                && expected != current
            {
                return Err(VaultError::Conflict(format!(
                    "check-and-set failed: {path} is at version {current}, not {expected}; read it \
                     again and retry"
                )));
            }
            let meta = match (&existing, &r.metadata) {
                (None, Some(m)) => {
                    let mut meta = Metadata::default();
                    meta.apply(m, mask.as_deref())?;
                    meta
                }
                (None, None) => Metadata::default(),
                (Some(s), Some(m)) if mask.is_some() => {
                    let mut meta = s.meta.clone();
                    meta.apply(m, mask.as_deref())?;
                    meta
                }
                (Some(s), _) => s.meta.clone(),
            };
            let version = current + 1;
            let tier = meta.tier.clamp(0, 3) as u32;
            let sealed = self
                .keys
                .seal(
                    &model::context(&path, version),
                    &r.value,
                    path.as_str(),
                    version,
                )
                .await?;
            call.set_detail(Detail {
                key_version: Some(sealed.key_version),
                tier,
                operation: None,
            });
            let nv = NewVersion {
                path: path.clone(),
                version,
                ciphertext: sealed.ciphertext,
                wrapped_key: sealed.wrapped_key,
                key_version: sealed.key_version,
                created_by: p.id.clone(),
                labels: labels.clone(),
                request_id: request_id.clone(),
                meta,
            };
            match self.store.put_version(&nv, Some(call)).await {
                Ok(c) => {
                    self.committed(&path, &c, &c.touched_versions).await;
                    tracing::info!(path = %path, version, by = %p.id, "secret version written");
                    return Ok(pb::PutSecretResponse {
                        version,
                        create_time: Some(timestamp(c.time)),
                    });
                }
                Err(VaultError::Conflict(m)) => {
                    if let Some(id) = &request_id
                        && let Some(done) = earlier(self.store.put_request(&p.id, id).await?)?
                    {
                        return Ok(done);
                    }
                    if r.expected_version.is_some() {
                        return Err(VaultError::Conflict(format!("check-and-set failed: {m}")));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(VaultError::Contended(format!(
            "{path} is being written by other replicas too often; retry (the write did not happen)"
        )))
    }

    /// RestoreSecretVersion: the value of `r.version`, read as the caller (read on the path),
    /// written as a new version labelled CURRENT (write on the path). The value never leaves
    /// the service; the one audit event is the write's (`restore`).
    pub(super) async fn restore(
        &self,
        p: &Principal,
        r: pb::RestoreSecretVersionRequest,
        call: &Call<'_>,
    ) -> Result<pb::PutSecretResponse, VaultError> {
        let path = SecretPath::parse(&r.path)?;
        self.policies.check(p, Capability::Write, path.as_str())?;
        if r.version == 0 {
            return Err(VaultError::Invalid(
                "version must be 1 or more (the version whose value to restore)".into(),
            ));
        }
        let source = pb::GetSecretRequest {
            path: r.path.clone(),
            selector: Some(pb::get_secret_request::Selector::Version(r.version)),
            allow_expired: false,
        };
        let old = self.read(p, &source, &mut Detail::default()).await?;
        let written = self
            .put(
                p,
                pb::PutSecretRequest {
                    path: r.path,
                    value: old.value,
                    expected_version: r.expected_version,
                    request_id: r.request_id,
                    ..Default::default()
                },
                call,
            )
            .await?;
        tracing::info!(path = %path, from = r.version, version = written.version, by = %p.id, "secret version restored");
        Ok(written)
    }

    pub(super) fn versions_arg(versions: &[u64]) -> Result<Vec<u64>, VaultError> {
        if versions.len() > model::MAX_MAX_VERSIONS as usize {
            return Err(VaultError::Invalid(format!(
                "at most {} versions per call",
                model::MAX_MAX_VERSIONS
            )));
        }
        if versions.contains(&0) {
            return Err(VaultError::Invalid("versions start at 1".into()));
        }
        Ok(versions.to_vec())
    }

    pub(super) async fn change_state(
        &self,
        p: &Principal,
        path: &str,
        versions: &[u64],
        to: State,
        call: &Call<'_>,
    ) -> Result<Vec<u64>, VaultError> {
        let path = SecretPath::parse(path)?;
        self.policies.check(p, Capability::Delete, path.as_str())?;
        let versions = Self::versions_arg(versions)?;
        if to == State::Destroyed && versions.is_empty() {
            return Err(VaultError::Invalid(
                "name the versions to destroy (at least one); destruction is irreversible".into(),
            ));
        }
        let (changed, c) = self
            .store
            .set_state(path.as_str(), &versions, to, Some(call))
            .await?;
        let destroyed = if to == State::Destroyed {
            changed.clone()
        } else {
            vec![]
        };
        self.committed(&path, &c, &destroyed).await;
        tracing::info!(path = %path, versions = ?changed, state = state_name(to), by = %p.id, "secret versions changed");
        Ok(changed)
    }

    /// Delete, Undelete and Destroy as RPCs: the state change, recorded in the audit log
    /// before it commits.
    pub(super) async fn state_rpc(
        &self,
        call: &Call<'_>,
        principal: Result<Principal, Status>,
        path: &str,
        versions: &[u64],
        to: State,
    ) -> Result<Vec<u64>, Status> {
        let result = match principal {
            Ok(p) => self
                .change_state(&p, path, versions, to, call)
                .await
                .map_err(Status::from),
            Err(s) => Err(s),
        };
        call.finish(result).await
    }
}
