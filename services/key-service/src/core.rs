//! The keyring in memory: seal state, unwrapped key versions (zeroized on drop), and the
//! operations the gRPC layer calls. Only this module ever holds master-derived material.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use sentia_crypto::{
    CryptoError, Envelope, MasterKey, RecoveryPrivateKey, RecoveryPublicKey, SecretKey, SigningKey,
    derive_secret_key,
};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::KeyError;
use crate::keyring::Purpose;
pub(crate) use crate::store::now_ms;
use crate::store::{Escrow, KeyRow, MetaRow, Store};

const KEYRING_PURPOSE: &str = "sentia/keyring";
const CHECK_CONTEXT: &[u8] = b"sentia/keyring-check";

/// One unwrapped key version.
pub struct Version {
    /// Version number.
    pub version: u32,
    /// The 32-byte material (AES key, HMAC key or Ed25519 seed).
    pub key: SecretKey,
    /// The Ed25519 pair, for signing keys.
    pub signing: Option<SigningKey>,
    /// Creation time, unix ms.
    pub created_at: i64,
    budget: Mutex<Budget>,
}

#[derive(Default)]
struct Budget {
    remaining: u64,
    reserved_total: u64,
}

/// A named key with its unwrapped versions.
pub struct KeyEntry {
    /// Stored metadata.
    pub row: KeyRow,
    /// Parsed purpose.
    pub purpose: Purpose,
    /// Versions by number.
    pub versions: BTreeMap<u32, Arc<Version>>,
}

impl KeyEntry {
    /// The primary version.
    pub fn primary(&self) -> Result<&Arc<Version>, KeyError> {
        self.versions
            .get(&self.row.primary_version)
            .ok_or_else(|| KeyError::Corrupt(format!("{} primary version", self.row.name)))
    }

    /// A version allowed for decryption / verification.
    pub fn decryptable(&self, version: u32) -> Result<&Arc<Version>, KeyError> {
        if version < self.row.min_decryption_version {
            return Err(KeyError::FailedPrecondition(format!(
                "version {version} of key {:?} is below its min_decryption_version {}; it can no longer decrypt",
                self.row.name, self.row.min_decryption_version
            )));
        }
        self.versions.get(&version).ok_or_else(|| {
            KeyError::NotFound(format!("key {:?} has no version {version}", self.row.name))
        })
    }

    /// Refuses use for another purpose.
    pub fn require(&self, purpose: Purpose) -> Result<(), KeyError> {
        if self.purpose != purpose {
            return Err(KeyError::FailedPrecondition(format!(
                "key {:?} is a {} key; this operation needs a {} key",
                self.row.name,
                self.purpose.as_str(),
                purpose.as_str()
            )));
        }
        Ok(())
    }
}

struct Unsealed {
    master_version: u32,
    wrapping: SecretKey,
    /// Wraps backup archive keys for this master version (ADR 8).
    backup_wrapping: SecretKey,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
}

/// key-service state.
pub struct Core {
    store: Store,
    seal_type: &'static str,
    state: RwLock<Option<Arc<Unsealed>>>,
    max_encryptions: u64,
    default_keys: Vec<crate::config::DefaultKey>,
    recovery: RwLock<Option<RecoveryPublicKey>>,
}

fn material_aad(name: &str, version: u32) -> Vec<u8> {
    format!("keyring|{name}|{version}").into_bytes()
}

fn wrapping_key(master: &MasterKey, master_version: u32) -> SecretKey {
    derive_secret_key(master.key(), KEYRING_PURPOSE, master_version)
}

/// What an escrow is bound to: the master version it holds.
fn escrow_context(master_version: u32) -> Vec<u8> {
    format!("sentia/master|{master_version}").into_bytes()
}

fn escrow(
    master: &MasterKey,
    master_version: u32,
    to: &RecoveryPublicKey,
) -> Result<Escrow, KeyError> {
    Ok(Escrow {
        blob: sentia_crypto::escrow_master(master, to, &escrow_context(master_version))?,
        fingerprint: to.fingerprint(),
    })
}

impl Core {
    /// A sealed core. With `recovery`, the master key is kept escrowed to that recovery
    /// public key (written at unseal when missing or made for another key, and at every
    /// master rotation).
    pub fn new(
        store: Store,
        seal_type: &'static str,
        max_encryptions: u64,
        default_keys: Vec<crate::config::DefaultKey>,
        recovery: Option<RecoveryPublicKey>,
    ) -> Self {
        Self {
            store,
            seal_type,
            state: RwLock::new(None),
            max_encryptions,
            default_keys,
            recovery: RwLock::new(recovery),
        }
    }

    fn recovery_key(&self) -> Option<RecoveryPublicKey> {
        self.recovery.read().ok().and_then(|r| r.clone())
    }

    /// Unseals with the recovery private key (the lost-master-key procedure): opens the
    /// escrow of the current master and unseals with it. The key's public half is kept, so a
    /// master rotation that follows is escrowed to the same recovery key even when
    /// `SENTIA_RECOVERY_PUBLIC_KEY` is not set.
    pub async fn unseal_with_recovery(&self, key: &RecoveryPrivateKey) -> Result<(), KeyError> {
        let meta = self.store.meta().await?.ok_or_else(|| {
            KeyError::FailedPrecondition(
                "the keyring is not initialized; nothing to recover".into(),
            )
        })?;
        let escrow = meta.recovery.ok_or_else(|| {
            KeyError::FailedPrecondition(
                "no recovery escrow is stored: key-service never ran with SENTIA_RECOVERY_PUBLIC_KEY set".into(),
            )
        })?;
        let master =
            sentia_crypto::open_escrow(&escrow.blob, key, &escrow_context(meta.master_version))
                .map_err(|e| match e {
                    CryptoError::AuthenticationFailed | CryptoError::InvalidKey(_) => {
                        KeyError::PermissionDenied(format!(
                            "this recovery key does not open the escrow (made for recovery key {})",
                            escrow.fingerprint
                        ))
                    }
                    other => KeyError::Corrupt(format!("recovery escrow: {other}")),
                })?;
        if self.recovery_key().is_none()
            && let Ok(mut r) = self.recovery.write()
        {
            *r = Some(key.public());
        }
        self.unseal(&master, None).await?;
        tracing::warn!(
            master_version = meta.master_version,
            "key-service unsealed with the recovery key; rotate the master key now (RotateMasterKey)"
        );
        Ok(())
    }

    /// Seal type name.
    pub fn seal_type(&self) -> &'static str {
        self.seal_type
    }

    fn unsealed(&self) -> Result<Arc<Unsealed>, KeyError> {
        self.state
            .read()
            .map_err(|_| KeyError::Startup("state lock poisoned".into()))?
            .clone()
            .ok_or(KeyError::Sealed)
    }

    /// True while no master key is in memory.
    pub fn is_sealed(&self) -> bool {
        self.unsealed().is_err()
    }

    /// (master_version, key count) while unsealed.
    pub fn summary(&self) -> Option<(u32, usize)> {
        let u = self.unsealed().ok()?;
        let count = u.keys.read().map(|k| k.len()).unwrap_or(0);
        Some((u.master_version, count))
    }

    /// Stored master metadata.
    pub async fn meta(&self) -> Result<Option<MetaRow>, KeyError> {
        self.store.meta().await
    }

    /// When the current master version was made (Unix ms), if initialized.
    pub async fn master_created_at(&self) -> Result<Option<i64>, KeyError> {
        self.store.master_created_at().await
    }

    /// Opens the keyring with `master`, initializing it on first use, then creates missing
    /// default keys. A master that does not open an existing keyring is PERMISSION_DENIED.
    pub async fn unseal(
        &self,
        master: &MasterKey,
        shamir: Option<(u32, u32)>,
    ) -> Result<(), KeyError> {
        let meta = match self.store.meta().await? {
            Some(meta) => meta,
            None => {
                let wrapping = wrapping_key(master, 1);
                let check_blob =
                    sentia_crypto::seal(&wrapping, "keyring", 1, CHECK_CONTEXT, b"sentia")?;
                let (shares, threshold) = shamir.unwrap_or((0, 0));
                let meta = MetaRow {
                    master_version: 1,
                    check_blob,
                    seal_type: self.seal_type.to_string(),
                    shamir_shares: shares,
                    shamir_threshold: threshold,
                    recovery: self
                        .recovery_key()
                        .map(|to| escrow(master, 1, &to))
                        .transpose()?,
                };
                if let Err(e) = self.store.init_meta(&meta).await {
                    // Another replica initialized first; use its row.
                    tracing::info!(error = %e, "keyring initialized concurrently");
                }
                self.store.meta().await?.ok_or_else(|| {
                    KeyError::Startup("keyring metadata missing after init".into())
                })?
            }
        };
        let wrapping = wrapping_key(master, meta.master_version);
        let env = Envelope::parse(&meta.check_blob)
            .map_err(|_| KeyError::Corrupt("keyring check".into()))?;
        if sentia_crypto::open(&wrapping, &env, CHECK_CONTEXT).is_err() {
            return Err(KeyError::PermissionDenied(format!(
                "this master key does not open the keyring (master version {}); check SENTIA_MASTER_KEY or the unseal shares",
                meta.master_version
            )));
        }
        if let Some(to) = self.recovery_key()
            && meta.recovery.as_ref().map(|e| e.fingerprint.as_str())
                != Some(to.fingerprint().as_str())
        {
            let made = escrow(master, meta.master_version, &to)?;
            if self.store.set_escrow(meta.master_version, &made).await? {
                tracing::info!(recovery_key = %to.fingerprint(), "master key escrowed to the recovery key");
            }
        }
        let unsealed = Arc::new(Unsealed {
            master_version: meta.master_version,
            wrapping,
            backup_wrapping: sentia_backup::wrapping_key(master, meta.master_version),
            keys: RwLock::new(HashMap::new()),
        });
        for row in self.store.keys().await? {
            let entry = self.unwrap_entry(&unsealed, row).await?;
            insert(&unsealed, Arc::new(entry));
        }
        *self
            .state
            .write()
            .map_err(|_| KeyError::Startup("state lock poisoned".into()))? = Some(unsealed);
        for key in self.default_keys.clone() {
            match self
                .create_key(&key.name, key.purpose, key.auto_rotate_secs)
                .await
            {
                Ok(_) | Err(KeyError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(master_version = meta.master_version, "key-service unsealed");
        Ok(())
    }

    /// Drops all key material from memory.
    pub fn seal(&self) {
        if let Ok(mut state) = self.state.write() {
            *state = None;
        }
        tracing::warn!("key-service sealed");
    }

    async fn unwrap_entry(&self, u: &Unsealed, row: KeyRow) -> Result<KeyEntry, KeyError> {
        let purpose = Purpose::parse(&row.purpose)
            .ok_or_else(|| KeyError::Corrupt(format!("{} purpose", row.name)))?;
        let mut versions = BTreeMap::new();
        for v in self.store.versions(&row.name).await? {
            let env = Envelope::parse(&v.wrapped_material)
                .map_err(|_| KeyError::Corrupt(format!("{} v{}", row.name, v.version)))?;
            let material =
                sentia_crypto::open(&u.wrapping, &env, &material_aad(&row.name, v.version))
                    .map_err(|_| KeyError::Corrupt(format!("{} v{}", row.name, v.version)))?;
            let key = SecretKey::from_slice(&material)?;
            let signing = match purpose {
                Purpose::Signing => Some(SigningKey::from_seed(key.duplicate())?),
                _ => None,
            };
            versions.insert(
                v.version,
                Arc::new(Version {
                    version: v.version,
                    key,
                    signing,
                    created_at: v.created_at,
                    budget: Mutex::new(Budget {
                        remaining: 0,
                        reserved_total: v.encryption_count,
                    }),
                }),
            );
        }
        Ok(KeyEntry {
            row,
            purpose,
            versions,
        })
    }

    /// A key by name; reloads from the database on a miss (another replica may have created
    /// or rotated it).
    pub async fn entry(&self, name: &str) -> Result<Arc<KeyEntry>, KeyError> {
        let u = self.unsealed()?;
        if let Some(e) = u.keys.read().ok().and_then(|k| k.get(name).cloned()) {
            return Ok(e);
        }
        self.reload(&u, name).await
    }

    /// A key that must have `version`; reloads once if this replica has not seen it yet.
    pub async fn entry_with_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Arc<KeyEntry>, KeyError> {
        let e = self.entry(name).await?;
        if e.versions.contains_key(&version) {
            return Ok(e);
        }
        let u = self.unsealed()?;
        self.reload(&u, name).await
    }

    async fn reload(&self, u: &Arc<Unsealed>, name: &str) -> Result<Arc<KeyEntry>, KeyError> {
        let row = self
            .store
            .key(name)
            .await?
            .ok_or_else(|| KeyError::NotFound(format!("no key named {name:?}")))?;
        let entry = Arc::new(self.unwrap_entry(u, row).await?);
        insert(u, entry.clone());
        Ok(entry)
    }

    /// All keys by name.
    pub async fn list(&self) -> Result<Vec<Arc<KeyEntry>>, KeyError> {
        self.unsealed()?;
        let mut out = Vec::new();
        for row in self.store.keys().await? {
            out.push(self.entry(&row.name).await?);
        }
        Ok(out)
    }

    /// Creates a key with a random version 1.
    pub async fn create_key(
        &self,
        name: &str,
        purpose: Purpose,
        auto_rotate_secs: Option<i64>,
    ) -> Result<Arc<KeyEntry>, KeyError> {
        crate::keyring::validate_key_name(name).map_err(KeyError::InvalidArgument)?;
        let u = self.unsealed()?;
        let wrapped = new_material(&u, name, 1)?;
        let row = KeyRow {
            name: name.to_string(),
            purpose: purpose.as_str().to_string(),
            primary_version: 1,
            min_decryption_version: 1,
            auto_rotate_secs,
            created_at: now_ms(),
        };
        self.store.create_key(&row, wrapped).await?;
        tracing::info!(key = name, purpose = purpose.as_str(), "key created");
        self.reload(&u, name).await
    }

    /// Makes a new version primary: the staged one if there is one, else a new random one.
    /// Losing a race to another replica is fine: the winner's version is returned.
    pub async fn rotate_key(&self, name: &str) -> Result<Arc<KeyEntry>, KeyError> {
        let u = self.unsealed()?;
        let current = self.reload(&u, name).await?;
        let next = current.row.primary_version + 1;
        if current.versions.contains_key(&next) {
            if self.store.promote(name, next).await? {
                tracing::info!(key = name, version = next, "staged key version promoted");
            }
            return self.reload(&u, name).await;
        }
        let wrapped = new_material(&u, name, next)?;
        if self.store.add_version(name, next, wrapped).await? {
            tracing::info!(key = name, version = next, "key rotated");
        }
        self.reload(&u, name).await
    }

    /// Publishes a new version without making it primary (idempotent while one is staged).
    pub async fn stage_key(&self, name: &str) -> Result<Arc<KeyEntry>, KeyError> {
        let u = self.unsealed()?;
        let current = self.reload(&u, name).await?;
        let next = current.row.primary_version + 1;
        if current.versions.contains_key(&next) {
            return Ok(current);
        }
        let wrapped = new_material(&u, name, next)?;
        if self.store.add_staged_version(name, next, wrapped).await? {
            tracing::info!(key = name, version = next, "key version staged");
        }
        self.reload(&u, name).await
    }

    /// Changes min_decryption_version and/or the auto-rotate period.
    pub async fn set_policy(
        &self,
        name: &str,
        min: Option<u32>,
        auto_rotate_secs: Option<Option<i64>>,
    ) -> Result<Arc<KeyEntry>, KeyError> {
        let u = self.unsealed()?;
        let current = self.reload(&u, name).await?;
        let min = min.unwrap_or(current.row.min_decryption_version);
        if min == 0 || min > current.row.primary_version {
            return Err(KeyError::InvalidArgument(format!(
                "min_decryption_version must be between 1 and the primary version {}, got {min}",
                current.row.primary_version
            )));
        }
        let period = auto_rotate_secs.unwrap_or(current.row.auto_rotate_secs);
        self.store.set_policy(name, min, period).await?;
        self.reload(&u, name).await
    }

    /// Counts one random-nonce encryption under `version`, reserving blocks in the database so
    /// the stored count is always an upper bound across replicas. Past half the budget the key
    /// rotates; at the budget the version refuses to encrypt.
    pub async fn count_encryption(&self, name: &str, version: &Version) -> Result<(), KeyError> {
        let mut budget = version.budget.lock().await;
        if budget.remaining == 0 {
            let block = (self.max_encryptions / 16).clamp(1, 4096);
            let total = self
                .store
                .reserve_encryptions(name, version.version, block)
                .await?;
            budget.reserved_total = total;
            if total > self.max_encryptions {
                drop(budget);
                self.rotate_key(name).await?;
                return Err(KeyError::FailedPrecondition(format!(
                    "version {} of key {name:?} reached its limit of {} encryptions and was rotated; retry",
                    version.version, self.max_encryptions
                )));
            }
            budget.remaining = block;
            if total >= self.max_encryptions / 2 {
                budget.remaining -= 1;
                drop(budget);
                self.rotate_key(name).await?;
                return Ok(());
            }
        }
        budget.remaining -= 1;
        Ok(())
    }

    /// Reserved encryption count of a version (upper bound).
    pub async fn encryption_count(&self, version: &Version) -> u64 {
        version.budget.lock().await.reserved_total
    }
}

/// Random material for `version` of `name`, wrapped under the keyring key.
fn new_material(u: &Unsealed, name: &str, version: u32) -> Result<Vec<u8>, KeyError> {
    let material = SecretKey::generate();
    Ok(sentia_crypto::seal(
        &u.wrapping,
        "keyring",
        u.master_version,
        &material_aad(name, version),
        material.expose(),
    )?)
}

fn insert(u: &Unsealed, entry: Arc<KeyEntry>) {
    if let Ok(mut keys) = u.keys.write() {
        keys.insert(entry.row.name.clone(), entry);
    }
}

/// Zeroizing copy of bytes, for handing data keys to the wire layer.
pub fn zeroizing(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(bytes.to_vec())
}

impl Core {
    /// Generates a new master key, re-wraps every key version under it (O(keys)), and swaps
    /// it in. The old master no longer opens the keyring.
    pub async fn rotate_master(
        &self,
        shamir: Option<(u32, u32)>,
    ) -> Result<(u32, MasterKey), KeyError> {
        let u = self.unsealed()?;
        let new_master = MasterKey::generate();
        let new_version = u.master_version + 1;
        let new_wrapping = wrapping_key(&new_master, new_version);
        let mut rewrapped = Vec::new();
        for (name, version, blob) in self.store.all_wrapped().await? {
            let env = Envelope::parse(&blob)
                .map_err(|_| KeyError::Corrupt(format!("{name} v{version}")))?;
            let aad = material_aad(&name, version);
            let material = sentia_crypto::open(&u.wrapping, &env, &aad)
                .map_err(|_| KeyError::Corrupt(format!("{name} v{version}")))?;
            let wrapped =
                sentia_crypto::seal(&new_wrapping, "keyring", new_version, &aad, &material)?;
            rewrapped.push((name, version, wrapped));
        }
        let (shares, threshold) = shamir.unwrap_or((0, 0));
        let recovery = self.recovery_key();
        if recovery.is_none()
            && self
                .store
                .meta()
                .await?
                .is_some_and(|m| m.recovery.is_some())
        {
            tracing::warn!(
                "the recovery escrow is dropped with the old master: set SENTIA_RECOVERY_PUBLIC_KEY to keep one"
            );
        }
        let meta = MetaRow {
            recovery: recovery
                .map(|to| escrow(&new_master, new_version, &to))
                .transpose()?,
            master_version: new_version,
            check_blob: sentia_crypto::seal(
                &new_wrapping,
                "keyring",
                new_version,
                CHECK_CONTEXT,
                b"sentia",
            )?,
            seal_type: self.seal_type.to_string(),
            shamir_shares: shares,
            shamir_threshold: threshold,
        };
        self.store
            .rewrap_keyring(u.master_version, &meta, rewrapped)
            .await?;
        let keys = u.keys.read().map(|k| k.clone()).unwrap_or_default();
        let swapped = Arc::new(Unsealed {
            master_version: new_version,
            wrapping: new_wrapping,
            backup_wrapping: sentia_backup::wrapping_key(&new_master, new_version),
            keys: RwLock::new(keys),
        });
        *self
            .state
            .write()
            .map_err(|_| KeyError::Startup("state lock poisoned".into()))? = Some(swapped);
        tracing::warn!(
            master_version = new_version,
            "master key rotated; the previous master no longer opens the keyring"
        );
        Ok((new_version, new_master))
    }
}

impl Core {
    /// A fresh archive key and the header that keeps it: wrapped under the backup key of the
    /// master in force, and escrowed to the recovery public key when one is configured (ADR
    /// 8). Refused while another replica has rotated the master and this one has not caught
    /// up, so a header never names a master that no longer opens the keyring.
    pub async fn begin_backup(
        &self,
        created_ms: i64,
    ) -> Result<(sentia_backup::ArchiveKey, sentia_backup::Header, String), KeyError> {
        let u = self.unsealed()?;
        let stored = self.store.meta().await?.map(|m| m.master_version);
        if stored != Some(u.master_version) {
            return Err(KeyError::Unavailable(
                "the master key was rotated by another replica; retry once it has caught up".into(),
            ));
        }
        let key = sentia_backup::ArchiveKey::generate();
        let recovery = self.recovery_key();
        let header = sentia_backup::Header::under(
            &key,
            created_ms,
            &u.backup_wrapping,
            u.master_version,
            recovery.as_ref(),
        )?;
        let fingerprint = recovery.map(|r| r.fingerprint()).unwrap_or_default();
        Ok((key, header, fingerprint))
    }

    /// The key of the archive whose header is `header`, when it is keyed to the master
    /// version in force here.
    pub fn open_backup(
        &self,
        header: &sentia_backup::Header,
    ) -> Result<sentia_backup::ArchiveKey, KeyError> {
        let u = self.unsealed()?;
        if header.master_version != u.master_version {
            return Err(KeyError::FailedPrecondition(format!(
                "the archive is keyed to master version {}; this key-service holds version {}: \
                 open it with that master or the recovery private key",
                header.master_version, u.master_version
            )));
        }
        sentia_backup::ArchiveKey::with_wrapping_key(header, &u.backup_wrapping)
            .map_err(|e| KeyError::InvalidArgument(e.to_string()))
    }
}

impl Core {
    /// Periodic upkeep: reloads every key from the database (picking up versions and policies
    /// written by other replicas) and rotates keys whose primary version is older than their
    /// auto-rotate period. Replicas racing to rotate are safe: only one new version wins.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        let Ok(u) = self.unsealed() else {
            return Ok(());
        };
        let now = now_ms();
        for row in self.store.keys().await? {
            let entry = self.reload(&u, &row.name).await?;
            if let Some(period) = row.auto_rotate_secs {
                let primary_age_ms = now - entry.primary()?.created_at;
                if primary_age_ms >= period.saturating_mul(1000) {
                    tracing::info!(key = %row.name, "auto-rotate period elapsed");
                    self.rotate_key(&row.name).await?;
                }
            }
        }
        Ok(())
    }
}
