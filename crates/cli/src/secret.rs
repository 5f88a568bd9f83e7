//! `sentia secret ...`: read and manage secrets in a running vault-service.

use std::io::{Read, Write};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use sentia_proto::vault::v1 as pb;
use serde_json::json;

use crate::conn::{VaultConn, status_err, utc};

/// Every secret's metadata under `prefix`, all pages.
pub(crate) async fn list_all(
    c: &mut sentia_proto::vault::v1::secret_service_client::SecretServiceClient<
        sentia_runtime::client::AuthedChannel,
    >,
    prefix: &str,
) -> anyhow::Result<Vec<pb::SecretMetadata>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_secrets(pb::ListSecretsRequest {
                prefix: prefix.to_string(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        all.extend(page.secrets);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Connection options and the secret subcommand.
#[derive(Args)]
pub struct SecretArgs {
    #[command(flatten)]
    conn: VaultConn,
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Write a new version. The value comes from --file, or from standard input (so it never
    /// appears in shell history or the process list).
    Put {
        /// Secret path, e.g. prod/database/password.
        path: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        file: Option<String>,
        /// Check-and-set: write only if the current version is this (0 = must not exist).
        #[arg(long)]
        cas: Option<u64>,
        /// Labels for the new version (default CURRENT); repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        meta: MetadataArgs,
    },
    /// Print a value (CURRENT unless --version or --label).
    Get {
        /// Secret path.
        path: String,
        /// A version number.
        #[arg(long, conflicts_with = "label")]
        version: Option<u64>,
        /// A stage label (CURRENT, PENDING, PREVIOUS, custom).
        #[arg(long)]
        label: Option<String>,
        /// Read even if the secret has expired (audited as read_expired).
        #[arg(long)]
        allow_expired: bool,
    },
    /// Change a secret's metadata; only the options given change.
    Update {
        /// Secret path.
        path: String,
        /// Expiry: a time (2027-01-31 or 2027-01-31T12:00:00Z, UTC), a span from now (90d),
        /// or `never`. Reads are refused once it passes.
        #[arg(long, value_parser = when)]
        expires: Option<When>,
        /// Latest time the secret must rotate by, same forms as --expires.
        #[arg(long, value_parser = when)]
        rotate_by: Option<When>,
        #[command(flatten)]
        meta: MetadataArgs,
        /// Remove a tag by key; repeat for several.
        #[arg(long = "untag")]
        untags: Vec<String>,
    },
    /// List secrets (metadata only) under a prefix.
    List {
        /// Path prefix (empty = everything you may list).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Show metadata and every version's state.
    Describe {
        /// Secret path.
        path: String,
    },
    /// Point a label at a version (moving CURRENT makes the old CURRENT PREVIOUS).
    Label {
        /// Secret path.
        path: String,
        /// Label.
        label: String,
        /// Version.
        version: u64,
    },
    /// Soft-delete versions (all when none given).
    Delete {
        /// Secret path.
        path: String,
        /// Versions; repeat for several.
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    /// Restore soft-deleted versions (all when none given).
    Undelete {
        /// Secret path.
        path: String,
        /// Versions; repeat for several.
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    /// Write an earlier version's value as a new CURRENT version (after a bad rotation or a
    /// mistaken put); the value is copied inside vault-service and never printed.
    Restore {
        /// Secret path.
        path: String,
        /// The version whose value to restore.
        #[arg(long)]
        version: u64,
        /// Check-and-set: restore only if the current version is this.
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Write the current version of every secret under a prefix to a file sealed to a
    /// recipient's public key, to move them to another store.
    Export {
        /// Only secrets under this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// The file to write (never overwritten).
        #[arg(long)]
        to: std::path::PathBuf,
        /// The recipient's public key (base64 X25519; make a pair with `sentia key
        /// recovery-keygen --out FILE` on the receiving side).
        #[arg(long)]
        recipient: String,
    },
    /// Read an export and say what importing it would create, update or leave; with
    /// --apply, write it, each write check-and-set against the version seen.
    Import {
        /// The export file.
        file: std::path::PathBuf,
        /// The recipient's private key file.
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// Write (without it, a dry run).
        #[arg(long)]
        apply: bool,
    },
    /// Crypto-shred versions: irreversible.
    Destroy {
        /// Secret path.
        path: String,
        /// Versions; at least one.
        #[arg(long = "version", required = true)]
        versions: Vec<u64>,
    },
    /// Stream changes under a prefix (one line per event) until Ctrl-C.
    Watch {
        /// Path prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Resume after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// Metadata options shared by `put` (for a new secret; an existing one keeps its metadata)
/// and `update` (changes only those given).
#[derive(Args)]
struct MetadataArgs {
    /// Tier: 1 critical, 2 sensitive, 3 internal (picks the default rotation schedule).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=3))]
    tier: Option<i32>,
    /// Owning team or principal.
    #[arg(long)]
    owner: Option<String>,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// Content type of the value.
    #[arg(long)]
    content_type: Option<String>,
    /// Versions kept (1-100).
    #[arg(long)]
    max_versions: Option<u32>,
    /// A tag, key=value; repeat for several (on update, other tags stay).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

impl MetadataArgs {
    /// Sets the fields given on `m` (tags added to its own) and returns their field-mask
    /// names.
    fn apply(self, m: &mut pb::SecretMetadata) -> anyhow::Result<Vec<String>> {
        let mut mask = Vec::new();
        let mut set = |name: &str| mask.push(name.to_string());
        if let Some(t) = self.tier {
            m.tier = t;
            set("tier");
        }
        if let Some(o) = self.owner {
            m.owner = o;
            set("owner");
        }
        if let Some(d) = self.description {
            m.description = d;
            set("description");
        }
        if let Some(ct) = self.content_type {
            m.content_type = ct;
            set("content_type");
        }
        if let Some(n) = self.max_versions {
            m.max_versions = n;
            set("max_versions");
        }
        for t in &self.tags {
            let (k, v) = t.split_once('=').context("tags are key=value")?;
            m.tags.insert(k.to_string(), v.to_string());
        }
        if !self.tags.is_empty() {
            set("tags");
        }
        Ok(mask)
    }
}

/// A time given on the command line: a point, or no time at all (`never`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum When {
    At(i64),
    Never,
}

fn when(s: &str) -> Result<When, String> {
    if s == "never" {
        return Ok(When::Never);
    }
    if let Some(secs) = sentia_proto::wkt::parse_utc(s) {
        return Ok(When::At(secs));
    }
    match sentia_runtime::config::parse_duration(s) {
        Some(d) => Ok(When::At(
            sentia_proto::wkt::now_secs().saturating_add(d.as_secs() as i64),
        )),
        None => Err(format!(
            "{s:?} is not a time: give 2027-01-31, 2027-01-31T12:00:00Z (UTC), a span from now \
             like 90d, or never"
        )),
    }
}

impl When {
    fn timestamp(&self) -> Option<prost_types::Timestamp> {
        match self {
            Self::At(secs) => Some(prost_types::Timestamp {
                seconds: *secs,
                nanos: 0,
            }),
            Self::Never => None,
        }
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::VersionState::try_from(s) {
        Ok(pb::VersionState::Enabled) => "enabled",
        Ok(pb::VersionState::Deleted) => "deleted",
        Ok(pb::VersionState::Destroyed) => "destroyed",
        _ => "unknown",
    }
}

fn kind_name(k: i32) -> &'static str {
    match pb::EventKind::try_from(k) {
        Ok(pb::EventKind::VersionCreated) => "version_created",
        Ok(pb::EventKind::LabelMoved) => "label_moved",
        Ok(pb::EventKind::Deleted) => "deleted",
        Ok(pb::EventKind::Undeleted) => "undeleted",
        Ok(pb::EventKind::Destroyed) => "destroyed",
        Ok(pb::EventKind::MetadataUpdated) => "metadata_updated",
        Ok(pb::EventKind::Bookmark) => "bookmark",
        _ => "unknown",
    }
}

fn meta_json(m: &pb::SecretMetadata) -> serde_json::Value {
    json!({
        "path": m.path, "tier": m.tier, "owner": m.owner, "description": m.description,
        "content_type": m.content_type, "tags": m.tags, "current_version": m.current_version,
        "max_versions": m.max_versions, "labels": m.labels,
        "expire_unix": m.expire_time.as_ref().map(|t| t.seconds),
        "rotate_by_unix": m.rotate_by_time.as_ref().map(|t| t.seconds),
        "updated_unix": m.update_time.as_ref().map(|t| t.seconds),
    })
}

fn read_value(file: &Option<String>) -> anyhow::Result<Vec<u8>> {
    let mut value = Vec::new();
    match file {
        Some(f) => value = std::fs::read(f).with_context(|| format!("reading {f}"))?,
        None => {
            std::io::stdin()
                .read_to_end(&mut value)
                .context("reading the value from standard input")?;
            // `echo secret | sentia secret put` adds a newline nobody means to store.
            if value.ends_with(b"\n") {
                value.pop();
            }
        }
    }
    Ok(value)
}

/// Runs a secret subcommand.
pub async fn run(args: SecretArgs) -> anyhow::Result<()> {
    let client = args.conn.client().await?;
    let mut c = client.secrets();
    let as_json = args.conn.common.json;
    match args.command {
        SecretCommand::Put {
            path,
            file,
            cas,
            labels,
            meta,
        } => {
            let value = zeroize::Zeroizing::new(read_value(&file)?);
            let mut metadata = pb::SecretMetadata::default();
            meta.apply(&mut metadata)?;
            // One request id for every attempt: a retried write is applied once.
            let put = pb::PutSecretRequest {
                path: path.clone(),
                value: value.to_vec(),
                expected_version: cas,
                request_id: format!("cli-{}", uuid::Uuid::now_v7()),
                metadata: Some(metadata),
                update_mask: None,
                labels,
            };
            let r = sentia_client::Retry::default()
                .run(|| {
                    let (mut c, put) = (c.clone(), put.clone());
                    async move { c.put_secret(put).await }
                })
                .await
                .map_err(|e| match e {
                    sentia_client::ClientError::Status(s) => status_err(s),
                    other => anyhow::anyhow!(other),
                })?
                .into_inner();
            if as_json {
                println!("{}", json!({"path": path, "version": r.version}));
            } else {
                println!("{path}: version {}", r.version);
            }
        }
        SecretCommand::Get {
            path,
            version,
            label,
            allow_expired,
        } => {
            let selector = match (version, label) {
                (Some(v), _) => Some(pb::get_secret_request::Selector::Version(v)),
                (None, Some(l)) => Some(pb::get_secret_request::Selector::Label(l)),
                (None, None) => None,
            };
            let r = c
                .get_secret(pb::GetSecretRequest {
                    path,
                    selector,
                    allow_expired,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let value = zeroize::Zeroizing::new(r.value);
            if as_json {
                let shown = match std::str::from_utf8(&value) {
                    Ok(s) => json!({"utf8": s}),
                    Err(_) => {
                        json!({"base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &value[..])})
                    }
                };
                println!(
                    "{}",
                    json!({"path": r.path, "version": r.version, "labels": r.labels, "content_type": r.content_type, "value": shown})
                );
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                if std::io::IsTerminal::is_terminal(&out) {
                    writeln!(out)?;
                }
            }
        }
        SecretCommand::Update {
            path,
            expires,
            rotate_by,
            meta,
            untags,
        } => {
            let mut m = pb::SecretMetadata {
                path: path.clone(),
                ..Default::default()
            };
            if !meta.tags.is_empty() || !untags.is_empty() {
                // Tags are replaced as a whole: start from the stored ones.
                let current = c
                    .describe_secret(pb::DescribeSecretRequest { path: path.clone() })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                m.tags = current.metadata.map(|m| m.tags).unwrap_or_default();
            }
            let mut mask = meta.apply(&mut m)?;
            if !untags.is_empty() {
                for k in &untags {
                    m.tags.remove(k);
                }
                if !mask.iter().any(|f| f == "tags") {
                    mask.push("tags".into());
                }
            }
            if let Some(w) = expires {
                m.expire_time = w.timestamp();
                mask.push("expire_time".into());
            }
            if let Some(w) = rotate_by {
                m.rotate_by_time = w.timestamp();
                mask.push("rotate_by_time".into());
            }
            if mask.is_empty() {
                bail!(
                    "nothing to change: give --expires, --rotate-by, --tier, --owner, \
                     --description, --content-type, --max-versions, --tag or --untag"
                );
            }
            let updated = c
                .update_secret_metadata(pb::UpdateSecretMetadataRequest {
                    metadata: Some(m),
                    update_mask: Some(prost_types::FieldMask { paths: mask }),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if as_json {
                println!("{}", meta_json(&updated));
            } else {
                println!(
                    "{}: tier {}, owner {:?}, expires {}, rotate by {}",
                    updated.path,
                    updated.tier,
                    updated.owner,
                    utc(&updated.expire_time),
                    utc(&updated.rotate_by_time)
                );
            }
        }
        SecretCommand::List { prefix } => {
            let all = list_all(&mut c, &prefix).await?;
            if as_json {
                println!(
                    "{}",
                    serde_json::Value::Array(all.iter().map(meta_json).collect())
                );
            } else {
                println!(
                    "{:<48} {:>7} {:>4} {:<16}",
                    "PATH", "VERSION", "TIER", "OWNER"
                );
                for m in all {
                    println!(
                        "{:<48} {:>7} {:>4} {:<16}",
                        m.path, m.current_version, m.tier, m.owner
                    );
                }
            }
        }
        SecretCommand::Describe { path } => {
            let d = c
                .describe_secret(pb::DescribeSecretRequest { path })
                .await
                .map_err(status_err)?
                .into_inner();
            let m = d.metadata.unwrap_or_default();
            if as_json {
                let versions: Vec<_> = d
                    .versions
                    .iter()
                    .map(|v| json!({"version": v.version, "state": state_name(v.state), "created_by": v.created_by, "created_unix": v.create_time.as_ref().map(|t| t.seconds), "labels": v.labels, "key_version": v.key_version}))
                    .collect();
                println!(
                    "{}",
                    json!({"metadata": meta_json(&m), "versions": versions})
                );
            } else {
                println!(
                    "path          {}\ntier          {}\nowner         {}\ndescription   {}\ncontent type  {}\nmax versions  {}\nrotate by     {}\nexpires       {}",
                    m.path,
                    m.tier,
                    m.owner,
                    m.description,
                    m.content_type,
                    m.max_versions,
                    utc(&m.rotate_by_time),
                    utc(&m.expire_time)
                );
                println!(
                    "\n{:>7} {:<10} {:<24} {:<12} LABELS",
                    "VERSION", "STATE", "CREATED BY", "CREATED"
                );
                for v in d.versions {
                    println!(
                        "{:>7} {:<10} {:<24} {:<20} {}",
                        v.version,
                        state_name(v.state),
                        v.created_by,
                        utc(&v.create_time),
                        v.labels.join(",")
                    );
                }
            }
        }
        SecretCommand::Label {
            path,
            label,
            version,
        } => {
            let m = c
                .move_label(pb::MoveLabelRequest {
                    path,
                    label,
                    version,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "{}",
                if as_json {
                    meta_json(&m).to_string()
                } else {
                    format!("{}: labels {:?}", m.path, m.labels)
                }
            );
        }
        SecretCommand::Delete { path, versions } => {
            let r = c
                .delete_secret(pb::DeleteSecretRequest {
                    path: path.clone(),
                    versions,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            report(as_json, &path, "deleted", &r.versions);
        }
        SecretCommand::Undelete { path, versions } => {
            let r = c
                .undelete_secret(pb::UndeleteSecretRequest {
                    path: path.clone(),
                    versions,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            report(as_json, &path, "undeleted", &r.versions);
        }
        SecretCommand::Restore { path, version, cas } => {
            let written =
                client
                    .restore_version(&path, version, cas)
                    .await
                    .map_err(|e| match e {
                        sentia_client::ClientError::Status(s) => status_err(s),
                        other => anyhow::anyhow!(other),
                    })?;
            if as_json {
                println!(
                    "{}",
                    json!({"path": path, "restored_from": version, "version": written})
                );
            } else {
                println!("{path}: version {written} (the value of version {version})");
            }
        }
        SecretCommand::Export {
            prefix,
            to,
            recipient,
        } => crate::export::export(&mut c, &prefix, &to, &recipient, as_json).await?,
        SecretCommand::Import {
            file,
            key_file,
            apply,
        } => crate::export::import(&mut c, &file, &key_file, apply, as_json).await?,
        SecretCommand::Destroy { path, versions } => {
            let r = c
                .destroy_secret_versions(pb::DestroySecretVersionsRequest {
                    path: path.clone(),
                    versions,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            report(as_json, &path, "destroyed", &r.versions);
        }
        SecretCommand::Watch { prefix, after } => {
            let mut stream = c
                .watch_secrets(pb::WatchSecretsRequest {
                    prefix,
                    after_sequence: after,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(status_err)? {
                if as_json {
                    println!(
                        "{}",
                        json!({"sequence": e.sequence, "kind": kind_name(e.kind), "path": e.path, "versions": e.versions, "label": e.label, "unix": e.time.as_ref().map(|t| t.seconds)})
                    );
                } else if e.kind != pb::EventKind::Bookmark as i32 {
                    println!(
                        "{:>8} {:<16} {} {:?} {}",
                        e.sequence,
                        kind_name(e.kind),
                        e.path,
                        e.versions,
                        e.label
                    );
                }
            }
        }
    }
    Ok(())
}

fn report(as_json: bool, path: &str, what: &str, versions: &[u64]) {
    if as_json {
        println!("{}", json!({"path": path, what: versions}));
    } else {
        println!("{path}: {what} versions {versions:?}");
    }
}
