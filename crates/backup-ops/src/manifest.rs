//! The manifest an archive carries, and what it is computed from: the services' snapshots,
//! read with the snapshot parser (no database needed).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use sentia_db::snapshot::{Counts, Feed, Item, Parser, SnapshotError};
use sentia_proto::audit::v1::{AuditEvent, AuditRecord, Checkpoint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What an archive holds, signed by key-service's `backup-manifest` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format: 1.
    pub format: u32,
    /// The archive's id (hex), the same as its header's.
    pub archive_id: String,
    /// When the backup began, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: String,
    /// The same, in Unix milliseconds.
    pub created_ms: i64,
    /// The release that made it.
    pub release: String,
    /// The master version whose derived key wraps the archive key: the master that opens it,
    /// and that unseals the restored keyring.
    pub master_version: u32,
    /// The recovery public key the archive key is escrowed to (empty: none).
    pub recovery_fingerprint: String,
    /// Per service, its snapshot.
    pub services: BTreeMap<String, ServiceSnapshot>,
    /// Per secret version, a digest of its sealed fields.
    pub secret_versions: Vec<VersionDigest>,
    /// The audit chain in the archive.
    pub audit: AuditHead,
    /// Public keys (kid → base64 Ed25519) of `audit-checkpoint` and `backup-manifest` when the
    /// backup was made: what an offline check trusts, with a warning.
    pub public_keys: BTreeMap<String, String>,
}

/// One service's snapshot in the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// Its entry name.
    pub entry: String,
    /// The database it came from: `sqlite` or `postgres`.
    pub dialect: String,
    /// Its newest migration.
    pub schema_version: i64,
    /// SHA-256 (hex) of the entry.
    pub sha256: String,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
}

/// One secret version: SHA-256 over its path, version, ciphertext, wrapped data key and key
/// version as the snapshot holds them. Sealed fields only: it proves the bytes arrived
/// intact, and says nothing about the value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionDigest {
    /// Secret path.
    pub path: String,
    /// Version number.
    pub version: i64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// The audit chain as copied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Records in the copy.
    pub records: u64,
    /// The first record's sequence (after retention purges, not 1).
    pub first_sequence: u64,
    /// The head's sequence.
    pub head_sequence: u64,
    /// The head's hash (hex).
    pub head_hash: String,
    /// The newest signed checkpoint's sequence (0: none yet).
    pub checkpoint_sequence: u64,
    /// What was wrong with the chain when it was copied (its first bad sequence), if
    /// anything: a backup is still made during an audit incident, and says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `created_ms` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(created_ms: i64) -> String {
    sentia_proto::wkt::utc(created_ms.div_euclid(1000))
}

/// Walks a snapshot's rows: `visit(table, columns, row)`; returns its counts once the whole
/// snapshot has been checked.
pub fn rows(
    snapshot: &[u8],
    mut visit: impl FnMut(&str, &[String], &[Value]) -> Result<(), String>,
) -> Result<(String, Counts), SnapshotError> {
    let mut parser = Parser::new(snapshot)?;
    let dialect = parser.dialect().to_string();
    let mut current: Option<(String, Vec<String>)> = None;
    while let Some(item) = parser.next_item()? {
        match item {
            Item::Table { name, columns, .. } => current = Some((name, columns)),
            Item::Row(values) => {
                if let Some((table, columns)) = &current {
                    visit(table, columns, &values)
                        .map_err(|m| SnapshotError::Mismatch(format!("table {table}: {m}")))?;
                }
            }
        }
    }
    Ok((dialect, parser.finish()?))
}

/// The value of `column` in `row`.
fn field<'a>(columns: &[String], row: &'a [Value], column: &str) -> Result<&'a Value, String> {
    columns
        .iter()
        .position(|c| c == column)
        .and_then(|i| row.get(i))
        .ok_or_else(|| format!("no column {column}"))
}

fn int(columns: &[String], row: &[Value], column: &str) -> Result<i64, String> {
    field(columns, row, column)?
        .as_i64()
        .ok_or_else(|| format!("{column} is not an integer"))
}

fn bytes(columns: &[String], row: &[Value], column: &str) -> Result<Vec<u8>, String> {
    match field(columns, row, column)? {
        Value::Null => Ok(Vec::new()),
        v => v
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| format!("{column} is not base64")),
    }
}

/// What a backup needs from one service's snapshot, read in one pass: its dialect, digest and
/// counts, and whatever of the following it holds.
pub struct Read {
    /// The dialect of the database it came from.
    pub dialect: String,
    /// SHA-256 of the snapshot's bytes, hex.
    pub sha256: String,
    /// Schema version and rows per table.
    pub counts: Counts,
    /// vault-service: every secret version's digest, sorted.
    pub versions: Vec<VersionDigest>,
    /// key-service: the keyring's master version.
    pub master_version: Option<i64>,
    /// audit-service: the chain.
    pub chain: Chain,
}

/// Reads `snapshot` once, checking its structure and picking out the version digests, the
/// keyring's master version and the audit chain where its tables hold them.
pub fn read(snapshot: &[u8]) -> Result<Read, SnapshotError> {
    let mut reading = Reading::default();
    reading.push(snapshot)?;
    reading.finish()
}

/// [`read`] for a snapshot arriving in pieces: what it keeps is the digest, the counts and
/// what the manifest lists, never the snapshot, so making or checking an archive holds one
/// line of a snapshot at a time.
#[derive(Default)]
pub struct Reading {
    feed: Feed,
    hash: Sha256,
    picked: Picked,
}

/// What [`Reading`] keeps of the rows, and the table they are in.
#[derive(Default)]
struct Picked {
    table: Option<(String, Vec<String>)>,
    versions: Vec<VersionDigest>,
    master_version: Option<i64>,
    chain: Chain,
}

impl Reading {
    /// Reads the next piece of the snapshot.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.hash.update(bytes);
        let picked = &mut self.picked;
        self.feed.push(bytes, |item| picked.item(item))
    }

    /// Ends the snapshot and returns what was read of it, once it is whole and well formed.
    pub fn finish(self) -> Result<Read, SnapshotError> {
        let Self {
            feed,
            hash,
            mut picked,
        } = self;
        let (dialect, counts) = feed.finish(|item| picked.item(item))?;
        let Picked {
            mut versions,
            master_version,
            mut chain,
            ..
        } = picked;
        versions.sort();
        chain.records.sort_by_key(|r| r.sequence);
        chain.checkpoints.sort_by_key(|c| c.sequence);
        Ok(Read {
            dialect,
            sha256: hex::encode(hash.finalize()),
            counts,
            versions,
            master_version,
            chain,
        })
    }
}

impl Picked {
    /// Keeps what the manifest needs of one table header or row.
    fn item(&mut self, item: Item) -> Result<(), SnapshotError> {
        let values = match item {
            Item::Table { name, columns, .. } => {
                self.table = Some((name, columns));
                return Ok(());
            }
            Item::Row(values) => values,
        };
        let Some((name, columns)) = self.table.as_ref() else {
            return Ok(());
        };
        let row = values.as_slice();
        let chain = &mut self.chain;
        match name.as_str() {
            "secret_versions" => version_digest(columns, row).map(|d| self.versions.push(d)),
            "keyring_meta" => {
                int(columns, row, "master_version").map(|v| self.master_version = Some(v))
            }
            "audit_records" => audit_record(columns, row).map(|r| chain.records.push(r)),
            "checkpoints" => checkpoint(columns, row).map(|c| chain.checkpoints.push(c)),
            "chain_head" => sequence(columns, row)
                .and_then(|s| Ok((s, bytes(columns, row, "hash")?)))
                .map(|h| chain.head = Some(h)),
            _ => Ok(()),
        }
        .map_err(|m| SnapshotError::Mismatch(format!("table {name}: {m}")))
    }
}

/// A secret version's digest over its sealed fields.
fn version_digest(columns: &[String], row: &[Value]) -> Result<VersionDigest, String> {
    let path = field(columns, row, "path")?
        .as_str()
        .ok_or("path is not text")?
        .to_string();
    let version = int(columns, row, "version")?;
    let sealed: Vec<&Value> = [
        "path",
        "version",
        "ciphertext",
        "wrapped_key",
        "key_version",
    ]
    .iter()
    .map(|c| field(columns, row, c))
    .collect::<Result<_, _>>()?;
    let canonical = serde_json::to_vec(&sealed).map_err(|e| e.to_string())?;
    Ok(VersionDigest {
        path,
        version,
        sha256: hex::encode(sentia_crypto::sha256(&canonical)),
    })
}

/// The audit chain in audit-service's snapshot: its records in order, checkpoints, and the
/// head the log claims.
#[derive(Default)]
pub struct Chain {
    /// The records, in sequence order.
    pub records: Vec<AuditRecord>,
    /// The signed checkpoints.
    pub checkpoints: Vec<Checkpoint>,
    /// The head (sequence, hash) the log's own head row claims.
    pub head: Option<(u64, Vec<u8>)>,
}

fn sequence(columns: &[String], row: &[Value]) -> Result<u64, String> {
    u64::try_from(int(columns, row, "sequence")?).map_err(|_| "a negative sequence".into())
}

fn audit_record(columns: &[String], row: &[Value]) -> Result<AuditRecord, String> {
    let event = AuditEvent::decode(bytes(columns, row, "event")?.as_slice())
        .map_err(|e| format!("an event does not decode: {e}"))?;
    let appender = match field(columns, row, "appender")? {
        Value::Null => String::new(),
        v => v.as_str().ok_or("appender is not text")?.to_string(),
    };
    Ok(AuditRecord {
        sequence: sequence(columns, row)?,
        event: Some(event),
        prev_hash: bytes(columns, row, "prev_hash")?,
        hash: bytes(columns, row, "hash")?,
        receive_time: None,
        appender,
    })
}

fn checkpoint(columns: &[String], row: &[Value]) -> Result<Checkpoint, String> {
    Ok(Checkpoint {
        sequence: sequence(columns, row)?,
        head_hash: bytes(columns, row, "head_hash")?,
        signature: bytes(columns, row, "signature")?,
        kid: field(columns, row, "kid")?
            .as_str()
            .ok_or("kid is not text")?
            .to_string(),
        time: None,
    })
}

impl Chain {
    /// Checks the chain against checkpoints signed by `keys` (kid → Ed25519 public key) and
    /// describes it; `problem` names the first bad sequence.
    pub fn check(&self, keys: &std::collections::HashMap<String, Vec<u8>>) -> AuditHead {
        let first = self.records.first().map_or(0, |r| r.sequence);
        // A chain purged by retention starts after a checkpoint, which anchors it.
        let anchor = if first <= 1 {
            Some(sentia_audit::GENESIS)
        } else {
            self.checkpoints
                .iter()
                .find(|c| c.sequence + 1 == first)
                .and_then(|c| <[u8; 32]>::try_from(c.head_hash.as_slice()).ok())
        };
        let (head_sequence, head_hash) = self.head.clone().unwrap_or_default();
        let verdict = sentia_audit::verify(
            &self.records,
            &self.checkpoints,
            keys,
            anchor,
            Some(head_sequence),
        );
        let last = self.records.last();
        let problem = verdict
            .problem
            .map(|(sequence, what)| format!("sequence {sequence}: {what}"))
            .or_else(|| {
                (last.map_or(0, |r| r.sequence) != head_sequence
                    || last.is_some_and(|r| r.hash != head_hash))
                .then(|| {
                    format!(
                        "the head says sequence {head_sequence}, the last record is {}",
                        last.map_or(0, |r| r.sequence)
                    )
                })
            });
        AuditHead {
            records: self.records.len() as u64,
            first_sequence: first,
            head_sequence,
            head_hash: hex::encode(&head_hash),
            checkpoint_sequence: self.checkpoints.last().map_or(0, |c| c.sequence),
            problem,
        }
    }
}
