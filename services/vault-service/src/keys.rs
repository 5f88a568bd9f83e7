//! Everything vault-service asks of key-service: a fresh data key per secret version, the
//! unwrap of a stored data key, and token signatures. Unwrapped data keys may be kept in a
//! short-lived in-memory cache (zeroized when evicted) so hot reads skip the key-service hop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sentia_crypto::{Envelope, SecretKey};
use sentia_proto::keys::v1 as kpb;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_runtime::client::AuthedChannel;
use tonic::Code;
use zeroize::Zeroizing;

use crate::VaultError;

/// Name written in the header of sealed secret values (the data key is per version; the
/// header's key version is the key-service version that wrapped it).
const VALUE_KEY_NAME: &str = "dek";

struct CachedKey {
    key: SecretKey,
    path: String,
    version: u64,
    at: Instant,
}

/// Unwrapped data keys by SHA-256(context || wrapped key), so a tampered wrapped key or a
/// row moved to another path never hits the cache.
struct DekCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], CachedKey>>,
}

impl DekCache {
    fn id(context: &[u8], wrapped: &[u8]) -> [u8; 32] {
        let mut buf = Vec::with_capacity(context.len() + 1 + wrapped.len());
        buf.extend_from_slice(context);
        buf.push(0);
        buf.extend_from_slice(wrapped);
        sentia_crypto::sha256(&buf)
    }

    fn get(&self, id: &[u8; 32]) -> Option<SecretKey> {
        let mut map = self.entries.lock().ok()?;
        match map.get(id) {
            Some(e) if e.at.elapsed() < self.ttl => Some(e.key.duplicate()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn put(&self, id: [u8; 32], key: &SecretKey, path: &str, version: u64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, e| e.at.elapsed() < ttl);
            if map.len() >= self.capacity
                && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id,
            CachedKey {
                key: key.duplicate(),
                path: path.to_string(),
                version,
                at: Instant::now(),
            },
        );
    }

    fn forget(&self, path: &str, versions: &[u64]) {
        if let Ok(mut map) = self.entries.lock() {
            map.retain(|_, e| !(e.path == path && versions.contains(&e.version)));
        }
    }
}

/// key-service as vault-service uses it.
pub struct Keys {
    client: KeyServiceClient<AuthedChannel>,
    key_name: String,
    signing_key: String,
    cache: Option<DekCache>,
}

/// A sealed value and what is needed to open it later.
pub struct Sealed {
    /// Envelope of the value under the data key.
    pub ciphertext: Vec<u8>,
    /// The data key wrapped by key-service.
    pub wrapped_key: Vec<u8>,
    /// key-service key version that wrapped it.
    pub key_version: u32,
}

impl Keys {
    /// `key_name` wraps data keys; `signing_key` signs tokens. A zero `dek_ttl` turns the
    /// data-key cache off.
    pub fn new(
        client: KeyServiceClient<AuthedChannel>,
        key_name: String,
        signing_key: String,
        dek_ttl: Duration,
        dek_capacity: usize,
    ) -> Self {
        let cache = (!dek_ttl.is_zero() && dek_capacity > 0).then(|| DekCache {
            ttl: dek_ttl,
            capacity: dek_capacity,
            entries: Mutex::new(HashMap::new()),
        });
        Self {
            client,
            key_name,
            signing_key,
            cache,
        }
    }

    /// Name of the token signing key.
    pub fn signing_key(&self) -> &str {
        &self.signing_key
    }

    /// The key-service client (for JWKS fetches).
    pub fn client(&self) -> KeyServiceClient<AuthedChannel> {
        self.client.clone()
    }

    /// Seals `value` under a fresh data key bound to `context`.
    pub async fn seal(
        &self,
        context: &[u8],
        value: &[u8],
        path: &str,
        version: u64,
    ) -> Result<Sealed, VaultError> {
        let r = self
            .client
            .clone()
            .generate_data_key(kpb::GenerateDataKeyRequest {
                key_name: self.key_name.clone(),
                encryption_context: context.to_vec(),
            })
            .await
            .map_err(VaultError::KeyService)?
            .into_inner();
        let plaintext_key = Zeroizing::new(r.plaintext_key);
        let dek = SecretKey::from_slice(&plaintext_key).map_err(|_| {
            VaultError::KeyService(tonic::Status::internal("data key is not 32 bytes"))
        })?;
        let ciphertext =
            sentia_crypto::seal(&dek, VALUE_KEY_NAME, r.key_version.max(1), context, value)
                .map_err(|e| VaultError::Invalid(e.to_string()))?;
        if let Some(cache) = &self.cache {
            cache.put(DekCache::id(context, &r.wrapped_key), &dek, path, version);
        }
        Ok(Sealed {
            ciphertext,
            wrapped_key: r.wrapped_key,
            key_version: r.key_version,
        })
    }

    /// Opens a stored value. Any authentication failure (of the wrapped key at key-service or
    /// of the ciphertext here) is DATA_LOSS: the stored row was altered or moved.
    pub async fn open(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        wrapped_key: &[u8],
        path: &str,
        version: u64,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let what = || format!("{path} version {version}");
        let id = DekCache::id(context, wrapped_key);
        let cached = self.cache.as_ref().and_then(|c| c.get(&id));
        let dek = match cached {
            Some(k) => k,
            None => {
                let r = self
                    .client
                    .clone()
                    .unwrap_data_key(kpb::UnwrapDataKeyRequest {
                        wrapped_key: wrapped_key.to_vec(),
                        encryption_context: context.to_vec(),
                    })
                    .await
                    .map_err(|s| match s.code() {
                        // The stored wrapped key fails authentication or names a key version
                        // that never existed: the row was altered.
                        Code::InvalidArgument | Code::NotFound => VaultError::DataLoss(what()),
                        // e.g. its key version is below min_decryption_version (retired).
                        Code::FailedPrecondition => {
                            VaultError::Precondition(format!("{}: {}", what(), s.message()))
                        }
                        _ => VaultError::KeyService(s),
                    })?
                    .into_inner();
                let plaintext_key = Zeroizing::new(r.plaintext_key);
                let dek = SecretKey::from_slice(&plaintext_key)
                    .map_err(|_| VaultError::DataLoss(what()))?;
                if let Some(cache) = &self.cache {
                    cache.put(id, &dek, path, version);
                }
                dek
            }
        };
        let envelope = Envelope::parse(ciphertext).map_err(|_| VaultError::DataLoss(what()))?;
        sentia_crypto::open(&dek, &envelope, context).map_err(|_| VaultError::DataLoss(what()))
    }

    /// Drops cached data keys of destroyed versions.
    pub fn forget(&self, path: &str, versions: &[u64]) {
        if let Some(cache) = &self.cache {
            cache.forget(path, versions);
        }
    }

    /// Signs with the token signing key; returns (signature, kid).
    pub async fn sign(&self, message: &[u8]) -> Result<(Vec<u8>, String), VaultError> {
        let r = self
            .client
            .clone()
            .sign(kpb::SignRequest {
                key_name: self.signing_key.clone(),
                message: message.to_vec(),
            })
            .await
            .map_err(VaultError::KeyService)?
            .into_inner();
        Ok((r.signature, r.kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, ttl: Duration) -> DekCache {
        DekCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_destroyed_versions() {
        let c = cache(2, Duration::from_secs(60));
        let k = SecretKey::generate();
        for v in 1..=3u64 {
            c.put(DekCache::id(b"ctx", &[v as u8]), &k, "p", v);
        }
        assert_eq!(c.entries.lock().unwrap().len(), 2);
        assert!(c.get(&DekCache::id(b"ctx", &[3])).is_some());
        c.forget("p", &[3]);
        assert!(c.get(&DekCache::id(b"ctx", &[3])).is_none());
    }

    #[test]
    fn expired_entries_are_not_served() {
        let c = cache(10, Duration::from_millis(0));
        let k = SecretKey::generate();
        c.put(DekCache::id(b"ctx", b"w"), &k, "p", 1);
        assert!(c.get(&DekCache::id(b"ctx", b"w")).is_none());
    }

    #[test]
    fn a_different_wrapped_key_or_context_misses() {
        assert_ne!(
            DekCache::id(b"vault|a|1", b"w"),
            DekCache::id(b"vault|a|2", b"w")
        );
        assert_ne!(
            DekCache::id(b"vault|a|1", b"w"),
            DekCache::id(b"vault|a|1", b"x")
        );
    }
}
