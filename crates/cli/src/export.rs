//! `sentia secret export` and `import`: the current versions under a prefix, moved between
//! stores in a file sealed to a recipient's public key (the `sentia-backup` format, escrowed
//! to an X25519 key, no master). Import says what it would do first and writes nothing
//! without `--apply`; every write is check-and-set against the version it planned from.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sentia_backup::{ArchiveKey, Header, Reader, Writer};
use sentia_crypto::{RecoveryPrivateKey, RecoveryPublicKey};
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::AuthedChannel;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::conn::status_err;

/// The entry holding the exported secrets, one JSON object per line after a header line.
const ENTRY: &str = "sentia-export.jsonl";
/// The export format named in the header line.
const FORMAT: &str = "sentia-export-1";

type Secrets = SecretServiceClient<AuthedChannel>;

/// Writes the current version of every secret under `prefix` to `to`, sealed to `recipient`.
pub async fn export(
    c: &mut Secrets,
    prefix: &str,
    to: &Path,
    recipient: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let recipient = RecoveryPublicKey::from_base64(recipient)
        .context("--recipient: the recipient's public key (base64 X25519)")?;
    let paths: Vec<String> = crate::secret::list_all(c, prefix)
        .await?
        .into_iter()
        .map(|m| m.path)
        .collect();
    let mut body = Zeroizing::new(Vec::new());
    let created_ms = sentia_proto::wkt::now_ms();
    body.extend_from_slice(
        json!({"format": FORMAT, "prefix": prefix, "created": sentia_proto::wkt::utc(created_ms / 1000), "secrets": paths.len()})
            .to_string()
            .as_bytes(),
    );
    body.push(b'\n');
    for path in &paths {
        let got = c
            .get_secret(pb::GetSecretRequest {
                path: path.clone(),
                selector: None,
                allow_expired: true,
            })
            .await
            .map_err(status_err)
            .with_context(|| format!("reading {path}"))?
            .into_inner();
        let value = Zeroizing::new(got.value);
        let line = Zeroizing::new(
            json!({"path": got.path, "version": got.version, "content_type": got.content_type,
                "value": STANDARD.encode(value.as_slice())})
            .to_string(),
        );
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    let key = ArchiveKey::generate();
    let header = Header::for_recipient(&key, created_ms, &recipient)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {} (an export never overwrites)", to.display()))?;
    let mut w = Writer::new(std::io::BufWriter::new(file), &header, key)?;
    w.entry(ENTRY, &body)?;
    let file = w
        .finish()?
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", to.display(), e.error()))?;
    file.sync_all()?;
    if as_json {
        println!(
            "{}",
            json!({"file": to.display().to_string(), "secrets": paths.len(), "recipient": recipient.fingerprint()})
        );
    } else {
        println!(
            "{}: {} secrets, sealed to recipient key {}",
            to.display(),
            paths.len(),
            recipient.fingerprint()
        );
    }
    Ok(())
}

/// One exported secret and what importing it would do.
struct Planned {
    path: String,
    value: Zeroizing<Vec<u8>>,
    content_type: String,
    /// The version there now (0: none).
    current: u64,
    action: &'static str,
}

/// Reads the export at `file` with the private key in `key_file`, compares it with the store
/// and (with `apply`) writes what differs, each write check-and-set against the version seen.
pub async fn import(
    c: &mut Secrets,
    file: &Path,
    key_file: &Path,
    apply: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let private = Zeroizing::new(
        std::fs::read_to_string(key_file)
            .with_context(|| format!("reading the private key from {}", key_file.display()))?,
    );
    let private = RecoveryPrivateKey::from_base64(private.trim())?;
    let input = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let (_, mut reader) = Reader::open(input, |h| ArchiveKey::with_recovery(h, &private))?;
    let mut body = None;
    while let Some((name, data)) = reader.next_entry()? {
        if name == ENTRY && body.is_none() {
            body = Some(data);
        } else {
            anyhow::bail!("{} is not a Sentia export (entry {name:?})", file.display());
        }
    }
    let body = body.ok_or_else(|| anyhow::anyhow!("{} holds no secrets", file.display()))?;
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let head: Value = serde_json::from_slice(lines.next().unwrap_or_default())
        .context("the export's first line")?;
    anyhow::ensure!(
        head["format"] == FORMAT,
        "{} is not a Sentia export ({FORMAT})",
        file.display()
    );
    let mut plan = Vec::new();
    for line in lines {
        let v: Value = serde_json::from_slice(line).context("an exported secret")?;
        let path = v["path"].as_str().unwrap_or_default().to_string();
        let value = Zeroizing::new(
            v["value"]
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| anyhow::anyhow!("{path}: the value is not base64"))?,
        );
        let here = c
            .get_secret(pb::GetSecretRequest {
                path: path.clone(),
                selector: None,
                allow_expired: true,
            })
            .await;
        let (current, action) = match here {
            Ok(r) => {
                let r = r.into_inner();
                let same = Zeroizing::new(r.value).as_slice() == value.as_slice();
                (r.version, if same { "unchanged" } else { "update" })
            }
            Err(s) if s.code() == tonic::Code::NotFound => (0, "create"),
            // Deleted (or its current version destroyed) here: left for a person to decide.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => (0, "skipped"),
            Err(s) => return Err(status_err(s).context(format!("reading {path}"))),
        };
        plan.push(Planned {
            path,
            value,
            content_type: v["content_type"].as_str().unwrap_or_default().to_string(),
            current,
            action,
        });
    }
    let mut outcomes = Vec::new();
    let mut conflicts = 0;
    for p in &plan {
        let outcome = if p.action == "skipped" {
            "skipped: deleted or destroyed here; undelete it or put it by hand".to_string()
        } else if !apply || p.action == "unchanged" {
            p.action.to_string()
        } else {
            let written = c
                .put_secret(pb::PutSecretRequest {
                    path: p.path.clone(),
                    value: p.value.to_vec(),
                    expected_version: Some(p.current),
                    metadata: (p.current == 0 && !p.content_type.is_empty()).then(|| {
                        pb::SecretMetadata {
                            content_type: p.content_type.clone(),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                })
                .await;
            match written {
                Ok(r) => format!("{}d: version {}", p.action, r.into_inner().version),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Aborted
                    ) =>
                {
                    conflicts += 1;
                    format!("conflict: changed since it was read ({})", s.message())
                }
                Err(s) => return Err(status_err(s).context(format!("writing {}", p.path))),
            }
        };
        outcomes.push((p, outcome));
    }
    let count = |a: &str| plan.iter().filter(|p| p.action == a).count();
    if as_json {
        println!(
            "{}",
            json!({"applied": apply, "create": count("create"), "update": count("update"),
                "unchanged": count("unchanged"), "skipped": count("skipped"), "conflicts": conflicts,
                "secrets": outcomes.iter().map(|(p, o)| json!({"path": p.path, "current_version": p.current, "outcome": o})).collect::<Vec<_>>()})
        );
    } else {
        for (p, o) in &outcomes {
            println!("{:<48} {o}", p.path);
        }
        println!(
            "{}: {} to create, {} to update, {} unchanged, {} skipped{}",
            if apply { "applied" } else { "dry run" },
            count("create"),
            count("update"),
            count("unchanged"),
            count("skipped"),
            if apply {
                format!(", {conflicts} conflicts")
            } else {
                " (run again with --apply to write)".into()
            }
        );
    }
    anyhow::ensure!(
        conflicts == 0,
        "{conflicts} secrets changed while importing; run the import again"
    );
    Ok(())
}
