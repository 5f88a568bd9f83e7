//! Making an archive: key-service begins it, each service streams its snapshot into it, and
//! key-service signs its manifest.

use std::collections::{BTreeMap, HashMap};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sentia_backup::{ArchiveKey, Header, Writer};
use sentia_channel::AuthedChannel;
use sentia_proto::backup::v1::SnapshotRequest;
use sentia_proto::backup::v1::snapshot_service_client::SnapshotServiceClient;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::keys::v1::system_service_client::SystemServiceClient;
use sentia_proto::keys::v1::{BeginBackupRequest, GetPublicKeysRequest, SignRequest};
use zeroize::Zeroizing;

use crate::destination::Destination;
use crate::manifest::{self, Manifest, ServiceSnapshot};
use crate::progress::{Progress, Quiet};
use crate::verify::{Opener, Trust, check};
use crate::{
    BackupError, CHECKPOINT_KEY, MANIFEST, MANIFEST_KEY, SERVICES, SIGNATURE, file_name,
    signed_message, snapshot_entry,
};

/// The four services, each reached with an administrator's credentials (key-service's and
/// audit-service's admin identity or one in their `SENTIA_BACKUP_IDENTITIES`, vault-service's
/// and rotation-scheduler's root or `system_admin` token) — or, for rotation-scheduler making
/// its own scheduled backup, its database directly.
#[derive(Clone)]
pub struct Sources {
    /// key-service.
    pub keys: AuthedChannel,
    /// vault-service.
    pub vault: AuthedChannel,
    /// audit-service.
    pub audit: AuthedChannel,
    /// rotation-scheduler.
    pub scheduler: Source,
}

/// Where one service's snapshot comes from.
#[derive(Clone)]
pub enum Source {
    /// Its SnapshotService.
    Remote(AuthedChannel),
    /// Its database, read here: the service making the backup is this one.
    Local {
        /// The pool.
        pool: sqlx::AnyPool,
        /// True for SQLite.
        sqlite: bool,
    },
}

impl From<AuthedChannel> for Source {
    fn from(channel: AuthedChannel) -> Self {
        Self::Remote(channel)
    }
}

impl Sources {
    fn of(&self, service: &str) -> Source {
        match service {
            "key-service" => self.keys.clone().into(),
            "vault-service" => self.vault.clone().into(),
            "audit-service" => self.audit.clone().into(),
            _ => self.scheduler.clone(),
        }
    }
}

/// The public keys an archive is checked against (kid → Ed25519 public key): every published
/// version of key-service's `backup-manifest` and `audit-checkpoint` keys. Any identity
/// key-service admits may read them.
pub async fn trusted_keys(keys: AuthedChannel) -> Result<HashMap<String, Vec<u8>>, BackupError> {
    let mut client = KeyServiceClient::new(keys);
    let mut out = HashMap::new();
    for name in [CHECKPOINT_KEY, MANIFEST_KEY] {
        let listed = client
            .get_public_keys(GetPublicKeysRequest {
                key_name: name.into(),
            })
            .await
            .map_err(BackupError::service("key-service"))?
            .into_inner();
        out.extend(listed.keys.into_iter().map(|k| (k.kid, k.public_key)));
    }
    Ok(out)
}

/// Makes an archive in `dir` and returns its path and manifest. The file appears under its
/// final name only once complete, synced and read back; a failure leaves nothing behind.
pub async fn create(sources: &Sources, dir: &Path) -> Result<(PathBuf, Manifest), BackupError> {
    create_with(sources, dir, Arc::new(Quiet)).await
}

/// [`create`], reporting each snapshot's bytes and the read-back to `progress`.
pub async fn create_with(
    sources: &Sources,
    dir: &Path,
    progress: Arc<dyn Progress>,
) -> Result<(PathBuf, Manifest), BackupError> {
    let begun = SystemServiceClient::new(sources.keys.clone())
        .begin_backup(BeginBackupRequest {})
        .await
        .map_err(BackupError::service("key-service"))?
        .into_inner();
    let raw_key = Zeroizing::new(begun.archive_key);
    let key = ArchiveKey::from_bytes(&raw_key)?;
    let header = Header::from_bytes(&begun.header)?;
    let archive_id = header.id_hex();
    let path = dir.join(file_name(header.created_ms, &archive_id));
    let mut partial = Partial {
        path: path.with_extension("sbk.partial"),
        done: false,
    };
    let mut writer = Writer::new(BufWriter::new(create_private(&partial.path)?), &header, key)?;

    let public_keys = trusted_keys(sources.keys.clone()).await?;

    let mut services = BTreeMap::new();
    let mut reads: HashMap<&str, manifest::Read> = HashMap::new();
    for service in SERVICES {
        progress.stage(&format!("snapshot of {service}"), None);
        let entry = snapshot_entry(service);
        writer.begin(&entry)?;
        let mut reading = manifest::Reading::default();
        snapshot(sources.of(service), service, progress.as_ref(), |piece| {
            writer.write(piece)?;
            reading.push(piece).map_err(BackupError::snapshot(service))
        })
        .await?;
        writer.end()?;
        let mut read = reading.finish().map_err(BackupError::snapshot(service))?;
        services.insert(
            service.to_string(),
            ServiceSnapshot {
                entry,
                dialect: std::mem::take(&mut read.dialect),
                schema_version: read.counts.schema_version,
                sha256: std::mem::take(&mut read.sha256),
                rows: std::mem::take(&mut read.counts.rows),
            },
        );
        reads.insert(service, read);
    }
    let keyring = reads["key-service"].master_version;
    if keyring != Some(i64::from(header.master_version)) {
        return Err(BackupError::Refused(format!(
            "the master key was rotated while the backup ran (the archive is keyed to master \
             version {}, the keyring copied is at {}); run the backup again",
            header.master_version,
            keyring.map_or("none".into(), |v| v.to_string())
        )));
    }
    let audit = reads["audit-service"].chain.check(&public_keys);
    if let Some(problem) = &audit.problem {
        tracing::warn!(%problem, "the audit chain copied into the backup does not verify");
    }
    let manifest = Manifest {
        format: 1,
        archive_id: archive_id.clone(),
        created: manifest::utc(header.created_ms),
        created_ms: header.created_ms,
        release: env!("CARGO_PKG_VERSION").into(),
        master_version: header.master_version,
        recovery_fingerprint: begun.recovery_fingerprint,
        services,
        secret_versions: reads
            .remove("vault-service")
            .map(|r| r.versions)
            .unwrap_or_default(),
        audit,
        public_keys: public_keys
            .iter()
            .map(|(kid, k)| (kid.clone(), STANDARD.encode(k)))
            .collect(),
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Invalid(format!("manifest: {e}")))?;
    let signed = KeyServiceClient::new(sources.keys.clone())
        .sign(SignRequest {
            key_name: MANIFEST_KEY.into(),
            message: signed_message(&archive_id, &body).into_bytes(),
        })
        .await
        .map_err(BackupError::service("key-service"))?
        .into_inner();
    writer.entry(MANIFEST, &body)?;
    writer.entry(
        SIGNATURE,
        serde_json::json!({"kid": signed.kid, "signature": STANDARD.encode(&signed.signature)})
            .to_string()
            .as_bytes(),
    )?;
    let file = writer
        .finish()?
        .into_inner()
        .map_err(|e| BackupError::Io(e.into_error()))?;
    file.sync_all()?;
    drop(file);
    // Read it all back before it gets its name: an archive that does not verify with its own
    // key is never kept or copied anywhere.
    let (check_path, check_key) = (partial.path.clone(), ArchiveKey::from_bytes(&raw_key)?);
    let trust = Trust::Keys(public_keys);
    let reporting = progress.clone();
    tokio::task::spawn_blocking(move || {
        check(
            &check_path,
            &Opener::Archive(check_key),
            &trust,
            reporting.as_ref(),
        )
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("the check of the written archive: {e}")))??;
    std::fs::rename(&partial.path, &path)?;
    partial.done = true;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(archive = %path.display(), %archive_id, "backup written");
    Ok((path, manifest))
}

/// An archive made by [`create_in`] and copied to its destinations.
pub struct Made {
    /// The archive's file name.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Each destination, in order: where the copy is, or why it could not be made there.
    pub copies: Vec<(String, Result<String, BackupError>)>,
}

impl Made {
    /// The destinations that hold no copy, and why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &BackupError)> {
        self.copies
            .iter()
            .filter_map(|(label, r)| r.as_ref().err().map(|e| (label.as_str(), e)))
    }
}

/// Makes an archive and copies it to every destination: written (and read back) in the first
/// one when it is a directory, else in a directory of its own under `staging` that is removed
/// afterwards. A destination that fails does not stop the copies to the others; the archive
/// itself failing is the error.
pub async fn create_in(
    sources: &Sources,
    destinations: &[Destination],
    staging: &Path,
    progress: Arc<dyn Progress>,
) -> Result<Made, BackupError> {
    let first_dir = destinations.first().and_then(Destination::dir);
    let dir = match first_dir {
        Some(d) => d.to_path_buf(),
        None => staging.join(format!(
            "{STAGING_PREFIX}{}",
            hex::encode(sentia_crypto::random_bytes(6))
        )),
    };
    crate::destination::create_private_dir(&dir)?;
    let made = create_with(sources, &dir, progress).await;
    let result = async {
        let (path, manifest) = made?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let bytes = std::fs::metadata(&path)?.len();
        let mut copies = Vec::new();
        for (i, dest) in destinations.iter().enumerate() {
            let copy = if i == 0 && first_dir.is_some() {
                Ok(path.display().to_string())
            } else {
                dest.upload(&path).await.map(|()| dest.place_of(&name))
            };
            if let Err(e) = &copy {
                tracing::error!(destination = dest.label(), error = %e, "a backup copy failed");
            }
            copies.push((dest.label().to_string(), copy));
        }
        Ok(Made {
            name,
            bytes,
            manifest,
            copies,
        })
    }
    .await;
    if first_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// How the directories a backup works in are named, under a staging directory: what
/// [`sweep`] knows to be its own.
pub const STAGING_PREFIX: &str = "sentia-backup-staging-";

/// Removes what backups stopped without cleaning up (a crash, a kill, a shutdown mid-run)
/// left in `dir`: archives still being written (`*.sbk.partial`) and staging directories
/// (named with [`STAGING_PREFIX`]), none of them touched for `older_than`, so work in
/// progress, here or by another process sharing the directory, is never taken. Returns what
/// it removed; a missing `dir` holds nothing.
pub fn sweep(dir: &Path, older_than: std::time::Duration) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let now = std::time::SystemTime::now();
    let stale = |path: &Path| -> std::io::Result<bool> {
        let mut newest = std::fs::symlink_metadata(path)?.modified()?;
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                newest = newest.max(entry?.metadata()?.modified()?);
            }
        }
        Ok(now
            .duration_since(newest)
            .is_ok_and(|age| age >= older_than))
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        let ours = (kind.is_dir() && name.starts_with(STAGING_PREFIX))
            || (kind.is_file() && name.ends_with(".sbk.partial"));
        let path = entry.path();
        if !ours || !stale(&path)? {
            continue;
        }
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        tracing::warn!(path = %path.display(), "removed what an interrupted backup left behind");
        removed.push(path);
    }
    Ok(removed)
}

/// Streams one service's snapshot into `sink`, piece by piece as it arrives; the first error
/// (the service's, or the sink's) ends it.
async fn snapshot(
    source: Source,
    service: &'static str,
    progress: &dyn Progress,
    mut sink: impl FnMut(&[u8]) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let channel = match source {
        Source::Remote(channel) => channel,
        Source::Local { pool, sqlite } => {
            let mut failed = None;
            let dumped = sentia_db::snapshot::dump(&pool, sqlite, |chunk: Vec<u8>| {
                let chunk = Zeroizing::new(chunk);
                progress.advance(chunk.len() as u64);
                let kept = sink(&chunk).map_err(|e| failed = Some(e)).is_ok();
                std::future::ready(kept)
            })
            .await;
            if let Some(e) = failed {
                return Err(e);
            }
            return dumped.map(|_| ()).map_err(BackupError::snapshot(service));
        }
    };
    let mut stream = SnapshotServiceClient::new(channel)
        .snapshot(SnapshotRequest {})
        .await
        .map_err(BackupError::service(service))?
        .into_inner();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(BackupError::service(service))?
    {
        let data = Zeroizing::new(chunk.data);
        progress.advance(data.len() as u64);
        sink(&data)?;
    }
    Ok(())
}

/// An archive being written: removed unless it was completed.
struct Partial {
    path: PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A new file only its owner can read (0600 from creation on Unix).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sweep_removes_only_stale_leftovers_of_backups() {
        let dir = std::env::temp_dir().join(format!(
            "sentia_sweep_{}",
            hex::encode(sentia_crypto::random_bytes(6))
        ));
        std::fs::create_dir_all(dir.join(format!("{STAGING_PREFIX}old"))).unwrap();
        std::fs::write(dir.join(format!("{STAGING_PREFIX}old/x.sbk.partial")), b"x").unwrap();
        std::fs::write(dir.join("a.sbk.partial"), b"x").unwrap();
        std::fs::write(dir.join("kept.sbk"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("unrelated")).unwrap();
        // Touched just now: nothing is old enough.
        assert!(sweep(&dir, Duration::from_secs(3600)).unwrap().is_empty());
        let mut removed = sweep(&dir, Duration::ZERO).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                dir.join("a.sbk.partial"),
                dir.join(format!("{STAGING_PREFIX}old"))
            ]
        );
        assert!(dir.join("kept.sbk").exists() && dir.join("unrelated").exists());
        assert!(
            sweep(&dir.join("missing"), Duration::ZERO)
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
