//! Backups of a whole deployment (ADR 8): [`create`] streams every service's snapshot into
//! one encrypted archive with a signed manifest, [`verify`] opens one with the master or the
//! recovery key and checks every byte of it against that manifest (and the audit chain in it
//! against its checkpoints), and [`Destination`] keeps copies in directories and S3 buckets.
//! Restoring and the drill need the services themselves and live in `sentia-backup-restore`;
//! this crate needs none of them, so rotation-scheduler can make scheduled backups with it.
//!
//! An archive is a `sentia-backup` file whose entries are the services' snapshots
//! (`{service}.snapshot`), `manifest.json` and `manifest.sig`. The manifest holds what a
//! restore is checked against: per service its schema version, rows per table and the
//! SHA-256 of its snapshot; per secret version a digest of its sealed fields (never of a
//! value: the operator who backs up is not a reader of every secret); the audit chain's head
//! and newest checkpoint; and the public keys that verify it offline.
#![forbid(unsafe_code)]

mod create;
mod destination;
mod error;
pub mod manifest;
mod progress;
mod verify;

pub use create::{
    Made, STAGING_PREFIX, Source, Sources, create, create_in, create_with, sweep, trusted_keys,
};
pub use destination::{Destination, Stored, create_private_dir, created_ms, expired};
pub use error::BackupError;
pub use manifest::{AuditHead, Manifest, ServiceSnapshot, VersionDigest};
pub use progress::{Progress, Quiet};
pub use verify::{
    Checked, Opener, Trust, Verified, archive_key_from, check, check_versions, verify, verify_with,
};

/// The services in the order they are snapshotted: audit-service first, so every other
/// snapshot's own audit record lands after the copy of the log; key-service last, so the
/// keyring copied is at least as new as every data key wrapped in vault-service's copy.
pub const SERVICES: [&str; 4] = [
    "audit-service",
    "rotation-scheduler",
    "vault-service",
    "key-service",
];

/// The manifest's entry name.
pub const MANIFEST: &str = "manifest.json";
/// The manifest signature's entry name.
pub const SIGNATURE: &str = "manifest.sig";
/// The key-service signing key that signs manifests.
pub const MANIFEST_KEY: &str = "backup-manifest";
/// The key-service signing key that signs audit checkpoints.
pub const CHECKPOINT_KEY: &str = "audit-checkpoint";

/// The entry holding `service`'s snapshot.
pub fn snapshot_entry(service: &str) -> String {
    format!("{service}.snapshot")
}

/// The file name an archive made at `created_ms` with id `archive_id` (hex) gets:
/// `sentia-backup-YYYYMMDDTHHMMSSZ-{first 8 of the id}.sbk`, so names sort by time.
pub fn file_name(created_ms: i64, archive_id: &str) -> String {
    let t = manifest::utc(created_ms).replace(['-', ':'], "");
    format!(
        "sentia-backup-{t}-{}.sbk",
        archive_id.get(..8).unwrap_or(archive_id)
    )
}

/// The message a manifest's signature covers: the archive id and the manifest's SHA-256, with
/// a prefix no other Sentia signature uses.
pub fn signed_message(archive_id: &str, manifest: &[u8]) -> String {
    format!(
        "sentia-backup-manifest|{archive_id}|{}",
        hex::encode(sentia_crypto::sha256(manifest))
    )
}
