//! Key retirement for the key that wraps data keys (`SENTIA_VAULT_KEY`). After it rotates,
//! stored data keys are re-wrapped under its primary version in rate-limited batches
//! (RewrapDataKey: the plaintext data key never leaves key-service); once none is wrapped
//! under an older version, and has stayed so longer than any cache may hold an old wrap, the
//! older versions are retired by raising `min_decryption_version`. Progress is the database
//! itself (each version row names the key version wrapping it), so a restart resumes where
//! it stopped, a crash between a rewrap and its row update only repeats that row, and
//! replicas running at once only repeat work.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sentia_proto::keys::v1 as kpb;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_runtime::Shutdown;
use sentia_runtime::client::AuthedChannel;

use crate::VaultError;
use crate::model::{SecretPath, context};
use crate::store::Store;

/// Where the rewrap stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The wrapping key's name.
    pub key_name: String,
    /// Its primary version: where data keys are moved to.
    pub primary_version: u32,
    /// Versions below this no longer decrypt.
    pub min_decryption_version: u32,
    /// Stored data keys by the key version wrapping them.
    pub by_version: BTreeMap<u32, u64>,
    /// When the older versions will be retired, once every data key is on the primary.
    pub retire_at: Option<std::time::SystemTime>,
}

impl Progress {
    /// Stored data keys in all.
    pub fn total(&self) -> u64 {
        self.by_version.values().sum()
    }

    /// Stored data keys not yet on the primary version.
    pub fn remaining(&self) -> u64 {
        self.by_version
            .iter()
            .filter(|(v, _)| **v < self.primary_version)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The background rewrap and its progress report.
pub struct Rewrapper {
    store: Store,
    keys: KeyServiceClient<AuthedChannel>,
    key_name: String,
    batch: usize,
    retire_delay: Option<Duration>,
    /// Since when every data key has been on this primary version (as this process saw).
    complete_since: Mutex<Option<(u32, Instant)>>,
}

/// key-service's answer, saying which step of the rewrap it refused (logged once, by the
/// caller).
fn key_error(what: &str, s: tonic::Status) -> VaultError {
    VaultError::KeyService(tonic::Status::new(
        s.code(),
        format!("{what}: {}", s.message()),
    ))
}

impl Rewrapper {
    /// Over the store and key-service; `batch` data keys per pass, retiring old versions
    /// `retire_delay` after the last one moved (never when None).
    pub fn new(
        store: Store,
        keys: KeyServiceClient<AuthedChannel>,
        key_name: String,
        batch: usize,
        retire_delay: Option<Duration>,
    ) -> Self {
        Self {
            store,
            keys,
            key_name,
            batch,
            retire_delay,
            complete_since: Mutex::new(None),
        }
    }

    async fn key(&self) -> Result<kpb::Key, VaultError> {
        self.keys
            .clone()
            .get_key(kpb::GetKeyRequest {
                name: self.key_name.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| key_error("reading the wrapping key", s))
    }

    /// Where the rewrap stands now.
    pub async fn progress(&self) -> Result<Progress, VaultError> {
        let key = self.key().await?;
        let by_version = self.store.wrap_counts().await?;
        let retire_at = match (
            self.retire_delay,
            self.complete_since.lock().ok().and_then(|c| *c),
        ) {
            (Some(delay), Some((primary, since)))
                if primary == key.primary_version
                    && key.min_decryption_version < key.primary_version =>
            {
                let left = delay.saturating_sub(since.elapsed());
                Some(std::time::SystemTime::now() + left)
            }
            _ => None,
        };
        Ok(Progress {
            key_name: self.key_name.clone(),
            primary_version: key.primary_version,
            min_decryption_version: key.min_decryption_version,
            by_version,
            retire_at,
        })
    }

    /// One batch: re-wraps up to `batch` data keys that are behind the primary version, then
    /// retires the older versions if every data key has been on the primary long enough.
    /// Returns how many it moved, and whether nothing is left to do (every data key on the
    /// primary, older versions retired or retirement off).
    pub async fn pass(&self) -> Result<(usize, bool), VaultError> {
        let key = self.key().await?;
        let primary = key.primary_version;
        let mut moved = 0;
        for old in self.store.wrapped_below(primary, self.batch).await? {
            let path = SecretPath::parse(&old.path)
                .map_err(|_| VaultError::DataLoss(format!("the stored path {:?}", old.path)))?;
            let r = self
                .keys
                .clone()
                .rewrap_data_key(kpb::RewrapDataKeyRequest {
                    wrapped_key: old.wrapped_key.clone(),
                    encryption_context: context(&path, old.version),
                })
                .await
                .map_err(|s| key_error("re-wrapping a data key", s))?
                .into_inner();
            if self
                .store
                .rewrapped(&old, &r.wrapped_key, r.key_version)
                .await?
            {
                moved += 1;
            }
        }
        let by_version = self.store.wrap_counts().await?;
        let behind = by_version.keys().any(|v| *v < primary);
        let retired = self.retire_when_ready(&key, behind).await?;
        if moved > 0 {
            tracing::info!(moved, key = %self.key_name, primary, "data keys re-wrapped");
        }
        Ok((moved, !behind && retired))
    }

    /// Raises `min_decryption_version` to the primary once every data key has been on it for
    /// the retire delay. True when nothing is left to retire (done, or retirement off).
    async fn retire_when_ready(&self, key: &kpb::Key, behind: bool) -> Result<bool, VaultError> {
        let primary = key.primary_version;
        let since = {
            let Ok(mut c) = self.complete_since.lock() else {
                return Ok(false);
            };
            if behind || key.min_decryption_version >= primary {
                *c = None;
                return Ok(!behind);
            }
            match *c {
                Some((p, since)) if p == primary => since,
                _ => {
                    let now = Instant::now();
                    *c = Some((primary, now));
                    now
                }
            }
        };
        let Some(delay) = self.retire_delay else {
            return Ok(true);
        };
        if since.elapsed() < delay {
            return Ok(false);
        }
        self.keys
            .clone()
            .set_key_policy(kpb::SetKeyPolicyRequest {
                name: self.key_name.clone(),
                min_decryption_version: primary,
                auto_rotate_period: None,
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["min_decryption_version".into()],
                }),
            })
            .await
            .map_err(|s| key_error("retiring the older wrapping key versions", s))?;
        tracing::info!(key = %self.key_name, min_decryption_version = primary, "every data key is on the primary version: older versions retired");
        Ok(true)
    }

    /// Runs a pass every `interval` until shutdown (at most `batch` RewrapDataKey calls per
    /// interval: the rate limit). With nothing to do it looks 60 times less often (a key
    /// rotation is rare, and each look is a GetKey in key-service's audit log); a failed pass
    /// is logged and retried 6 intervals later (key-service down, or a grants file without
    /// this service's `get_key` on the wrapping key: the message says which).
    pub async fn run(self: std::sync::Arc<Self>, interval: Duration, shutdown: Shutdown) {
        loop {
            let pause = match self.pass().await {
                Ok((_, true)) => interval * 60,
                Ok((_, false)) => interval,
                Err(e) => {
                    tracing::warn!(error = %e, "rewrap pass failed; retrying");
                    interval * 6
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
