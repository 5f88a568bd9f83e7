//! Checking an archive: every chunk authenticated, the manifest's signature, each snapshot
//! against the manifest's digest and counts, every secret version's digest, and the audit
//! chain against its signed checkpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sentia_backup::{ArchiveKey, Reader};
use sentia_crypto::{MasterKey, RecoveryPrivateKey};
use zeroize::Zeroizing;

use crate::manifest::{self, Manifest};
use crate::progress::{Counting, Progress, Quiet};
use crate::{BackupError, MANIFEST, SERVICES, SIGNATURE, signed_message, snapshot_entry};

/// What opens an archive.
pub enum Opener {
    /// The master key of the version the archive names.
    Master(MasterKey),
    /// The offline recovery private key the archive key is escrowed to.
    Recovery(RecoveryPrivateKey),
    /// The archive's own key, as its maker holds it right after writing it.
    Archive(ArchiveKey),
}

/// Which public keys the manifest's signature and the audit checkpoints are checked with.
pub enum Trust {
    /// Keys fetched from a running key-service (kid → Ed25519 public key): a forged archive
    /// cannot bring its own.
    Keys(HashMap<String, Vec<u8>>),
    /// The keys the manifest itself carries: for a machine with no key-service. It proves the
    /// archive is whole and unaltered since signing, not who signed it.
    Embedded,
}

/// What checking an archive established.
pub struct Checked {
    /// The manifest.
    pub manifest: Manifest,
    /// The kid that signed it.
    pub signed_by: String,
    /// True when the signature was checked against the archive's own keys only.
    pub self_attested: bool,
}

/// A checked archive with the services' snapshots, ready to restore.
pub struct Verified {
    /// What the check established.
    pub checked: Checked,
    /// Snapshots by service.
    pub snapshots: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::ops::Deref for Verified {
    type Target = Checked;

    fn deref(&self) -> &Checked {
        &self.checked
    }
}

/// The key of the archive at `path`, opened by the key-service at `keys` with the master it
/// holds (OpenBackup: an administrator, or an identity in its `SENTIA_BACKUP_IDENTITIES`) —
/// to check a stored archive where neither the master nor the recovery key is at hand. Only
/// archives keyed to the master version in force there open this way.
pub async fn archive_key_from(
    keys: sentia_channel::AuthedChannel,
    path: &Path,
) -> Result<ArchiveKey, BackupError> {
    let mut file = std::fs::File::open(path)?;
    let (_, header) = sentia_backup::read_header(&mut file)?;
    let opened = sentia_proto::keys::v1::system_service_client::SystemServiceClient::new(keys)
        .open_backup(sentia_proto::keys::v1::OpenBackupRequest { header })
        .await
        .map_err(BackupError::service("key-service"))?
        .into_inner();
    let raw = Zeroizing::new(opened.archive_key);
    Ok(ArchiveKey::from_bytes(&raw)?)
}

/// Opens the archive at `path` with `opener`, checks all of it and keeps the snapshots for a
/// restore; the error says what is wrong and where.
pub fn verify(path: &Path, opener: &Opener, trust: &Trust) -> Result<Verified, BackupError> {
    verify_with(path, opener, trust, &Quiet)
}

/// [`verify`], reporting the bytes read to `progress`.
pub fn verify_with(
    path: &Path,
    opener: &Opener,
    trust: &Trust,
    progress: &dyn Progress,
) -> Result<Verified, BackupError> {
    let mut snapshots = BTreeMap::new();
    let checked = read_archive(path, opener, trust, progress, Some(&mut snapshots))?;
    Ok(Verified { checked, snapshots })
}

/// Checks all of the archive at `path` as [`verify`] does, holding one chunk and one
/// snapshot line at a time instead of the snapshots: how a stored copy or an archive just
/// written is checked.
pub fn check(
    path: &Path,
    opener: &Opener,
    trust: &Trust,
    progress: &dyn Progress,
) -> Result<Checked, BackupError> {
    read_archive(path, opener, trust, progress, None)
}

/// Reads and checks the archive, keeping the snapshots in `keep` when given.
fn read_archive(
    path: &Path,
    opener: &Opener,
    trust: &Trust,
    progress: &dyn Progress,
    mut keep: Option<&mut BTreeMap<String, Zeroizing<Vec<u8>>>>,
) -> Result<Checked, BackupError> {
    let file = std::fs::File::open(path)?;
    progress.stage(
        &format!("checking {}", path.display()),
        file.metadata().ok().map(|m| m.len()),
    );
    let file = std::io::BufReader::new(Counting {
        inner: file,
        progress,
    });
    let (header, mut reader) = Reader::open(file, |h| match opener {
        Opener::Master(m) => ArchiveKey::with_master(h, m),
        Opener::Recovery(r) => ArchiveKey::with_recovery(h, r),
        Opener::Archive(k) => ArchiveKey::from_bytes(k.expose()),
    })?;
    let invalid = |m: String| BackupError::Invalid(m);
    let mut seen = BTreeSet::new();
    let mut entries: BTreeMap<String, Zeroizing<Vec<u8>>> = BTreeMap::new();
    let mut reads = HashMap::new();
    while let Some(name) = reader.next_name()? {
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("entry {name:?} appears twice")));
        }
        if let Some(service) = SERVICES.iter().find(|s| snapshot_entry(s) == name) {
            let mut reading = manifest::Reading::default();
            let mut kept = keep.is_some().then(|| Zeroizing::new(Vec::new()));
            reader.read_entry(|piece| {
                if let Some(k) = kept.as_mut() {
                    k.extend_from_slice(piece);
                }
                reading.push(piece).map_err(BackupError::snapshot(service))
            })?;
            reads.insert(
                *service,
                reading.finish().map_err(BackupError::snapshot(service))?,
            );
            if let (Some(keep), Some(kept)) = (keep.as_mut(), kept) {
                keep.insert(service.to_string(), kept);
            }
        } else if name == MANIFEST || name == SIGNATURE {
            let mut data = Zeroizing::new(Vec::new());
            reader.read_entry(|piece| {
                data.extend_from_slice(piece);
                Ok::<_, BackupError>(())
            })?;
            entries.insert(name, data);
        } else {
            return Err(invalid(format!("an unexpected entry {name:?}")));
        }
    }
    let expected = SERVICES
        .iter()
        .map(|s| snapshot_entry(s))
        .chain([MANIFEST.to_string(), SIGNATURE.to_string()]);
    if let Some(missing) = expected.into_iter().find(|e| !seen.contains(e)) {
        return Err(invalid(format!("entry {missing:?} is missing")));
    }
    let body = &entries[MANIFEST];
    let manifest: Manifest = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the manifest does not parse: {e}")))?;
    let signature: serde_json::Value = serde_json::from_slice(&entries[SIGNATURE])
        .map_err(|e| invalid(format!("the signature entry does not parse: {e}")))?;
    let kid = signature["kid"].as_str().unwrap_or_default().to_string();
    let sig = signature["signature"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| invalid("the signature entry holds no signature".into()))?;
    let embedded;
    let keys = match trust {
        Trust::Keys(keys) => keys,
        Trust::Embedded => {
            embedded = manifest
                .public_keys
                .iter()
                .map(|(kid, k)| Ok((kid.clone(), STANDARD.decode(k)?)))
                .collect::<Result<HashMap<_, _>, base64::DecodeError>>()
                .map_err(|e| invalid(format!("a public key in the manifest: {e}")))?;
            &embedded
        }
    };
    sentia_audit::check_signature(keys, &kid, &signed_message(&header.id_hex(), body), &sig)
        .map_err(|why| invalid(format!("the manifest's signature: {why}")))?;
    if manifest.format != 1 {
        return Err(invalid(format!(
            "manifest format {} (this release reads 1)",
            manifest.format
        )));
    }
    if manifest.archive_id != header.id_hex() || manifest.master_version != header.master_version {
        return Err(invalid(
            "the manifest belongs to another archive (its id or master version differs from \
             the header's)"
                .into(),
        ));
    }
    for service in SERVICES {
        let listed = manifest
            .services
            .get(service)
            .ok_or_else(|| invalid(format!("the manifest does not list {service}")))?;
        let read = &reads[service];
        if read.sha256 != listed.sha256 {
            return Err(invalid(format!(
                "{service}'s snapshot differs from the manifest's digest"
            )));
        }
        let counts = &read.counts;
        if read.dialect != listed.dialect
            || counts.schema_version != listed.schema_version
            || counts.rows != listed.rows
        {
            return Err(invalid(format!(
                "{service}'s snapshot holds {:?} at schema {}, the manifest says {:?} at {}",
                counts.rows, counts.schema_version, listed.rows, listed.schema_version
            )));
        }
    }
    check_versions(&manifest.secret_versions, &reads["vault-service"].versions)?;
    let audit = reads["audit-service"].chain.check(keys);
    if audit != manifest.audit {
        return Err(invalid(format!(
            "the audit chain in the archive ({}) is not the one the manifest describes ({})",
            describe(&audit),
            describe(&manifest.audit)
        )));
    }
    Ok(Checked {
        manifest,
        signed_by: kid,
        self_attested: matches!(trust, Trust::Embedded),
    })
}

/// Compares secret version digests, naming the first version that differs.
pub fn check_versions(
    listed: &[manifest::VersionDigest],
    found: &[manifest::VersionDigest],
) -> Result<(), BackupError> {
    let by_key = |v: &[manifest::VersionDigest]| -> BTreeMap<(String, i64), String> {
        v.iter()
            .map(|d| ((d.path.clone(), d.version), d.sha256.clone()))
            .collect()
    };
    let (listed, found) = (by_key(listed), by_key(found));
    for ((path, version), digest) in &listed {
        match found.get(&(path.clone(), *version)) {
            None => {
                return Err(BackupError::Invalid(format!(
                    "secret {path} version {version} is missing"
                )));
            }
            Some(d) if d != digest => {
                return Err(BackupError::Invalid(format!(
                    "secret {path} version {version} differs from the manifest's digest"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((path, version)) = found.keys().find(|k| !listed.contains_key(*k)) {
        return Err(BackupError::Invalid(format!(
            "secret {path} version {version} is not in the manifest"
        )));
    }
    Ok(())
}

fn describe(a: &manifest::AuditHead) -> String {
    format!(
        "records {}-{}, head {}, checkpoint {}{}",
        a.first_sequence,
        a.head_sequence,
        a.head_hash.get(..12).unwrap_or_default(),
        a.checkpoint_sequence,
        a.problem
            .as_ref()
            .map(|p| format!(", broken at {p}"))
            .unwrap_or_default()
    )
}
