//! `sentia backup`: make, list, check and restore archives of the whole deployment (ADR 8).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use sentia_backup_ops::{Checked, Destination, Opener, Progress, Sources, Trust, Verified};
use sentia_backup_restore::Targets;
use serde_json::json;
use zeroize::Zeroizing;

use crate::conn::Common;

/// The backup subcommand and the options every one of them shares.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: BackupCommand,
}

/// Where the services are. `--token` (vault-service's root or a system_admin token) reaches
/// vault-service and rotation-scheduler; `--key-token` (key-service's admin token) reaches
/// key-service and audit-service.
#[derive(Args)]
struct Services {
    /// vault-service address.
    #[arg(long, env = "SENTIA_ADDR", default_value = "127.0.0.1:8200")]
    addr: String,
    /// key-service address.
    #[arg(long, env = "SENTIA_KEY_ADDR", default_value = "127.0.0.1:8201")]
    key_addr: String,
    /// audit-service address.
    #[arg(long, env = "SENTIA_AUDIT_ADDR", default_value = "127.0.0.1:8202")]
    audit_addr: String,
    /// rotation-scheduler address.
    #[arg(long, env = "SENTIA_ROTATION_ADDR", default_value = "127.0.0.1:8203")]
    rotation_addr: String,
    /// key-service's admin token (for key-service and audit-service; defaults to --token).
    #[arg(long, env = "SENTIA_KEY_TOKEN", hide_env_values = true)]
    key_token: Option<String>,
}

/// An archive to open, what opens it and which keys vouch for it.
#[derive(Args)]
struct Archive {
    /// The archive: a file, `s3://BUCKET/PREFIX/NAME.sbk`, or a destination (its newest).
    archive: String,
    #[command(flatten)]
    key: Key,
    #[command(flatten)]
    trust: TrustArgs,
}

/// What opens an archive: one of the two.
#[derive(Args)]
struct Key {
    /// A file holding the master key (base64) of the version the archive names. With neither
    /// file (and without --offline), key-service opens the archive with the master it holds
    /// (verify and restore only; a drill needs one of the two).
    #[arg(long, conflicts_with = "recovery_key_file")]
    master_key_file: Option<PathBuf>,
    /// A file holding the offline recovery private key, when the master is lost.
    #[arg(long)]
    recovery_key_file: Option<PathBuf>,
}

/// Which public keys the signatures are checked with.
#[derive(Args)]
struct TrustArgs {
    /// Trust the public keys the archive carries (no key-service needed): proves the archive
    /// is whole and unaltered, not who made it.
    #[arg(long)]
    offline: bool,
    /// key-service address, for the public keys (unless --offline).
    #[arg(long, env = "SENTIA_KEY_ADDR", default_value = "127.0.0.1:8201")]
    key_addr: String,
    /// Token for key-service (defaults to --token).
    #[arg(long, env = "SENTIA_KEY_TOKEN", hide_env_values = true)]
    key_token: Option<String>,
}

/// Where a drill's outcome is recorded: the live audit log, where a failed drill raises
/// BackupDrillFailed — what the monthly drill job sets.
#[derive(Args)]
struct Record {
    /// audit-service address to record the outcome at, as a service identity (`backup-drill`
    /// in the shipped deployments: its certificate through SENTIA_CLIENT_CERT/_KEY, or
    /// --record-token). A report that cannot be recorded fails the command.
    #[arg(long, env = "SENTIA_DRILL_RECORD_ADDR")]
    record_to: Option<String>,
    /// A service token audit-service knows (defaults to --token).
    #[arg(long, env = "SENTIA_DRILL_RECORD_TOKEN", hide_env_values = true)]
    record_token: Option<String>,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Back up every service into one encrypted, signed archive, checked once written and
    /// then copied to every destination.
    Create {
        /// Where it goes: a directory or `s3://BUCKET/PREFIX` (credentials, region and
        /// endpoint from the AWS_* variables). Repeat for more copies.
        #[arg(long = "to", default_value = ".")]
        to: Vec<String>,
        #[command(flatten)]
        services: Services,
    },
    /// Archives at a destination, newest first.
    List {
        /// A directory or `s3://BUCKET/PREFIX`.
        #[arg(default_value = ".")]
        destination: String,
    },
    /// Delete archives older than the retention at a destination, never the newest one.
    Prune {
        /// A directory or `s3://BUCKET/PREFIX`.
        destination: String,
        /// How long archives are kept.
        #[arg(long, value_parser = crate::rotation::duration, default_value = "90d")]
        retention: std::time::Duration,
    },
    /// Open an archive and check every byte of it against its signed manifest.
    Verify {
        #[command(flatten)]
        archive: Archive,
    },
    /// The restore drill: check an archive (or the newest in a directory), restore it into
    /// scratch databases, run the four services on them, read back every secret version,
    /// verify the audit chain, issue and check a token, then tear it all down.
    Drill {
        #[command(flatten)]
        archive: Archive,
        /// Where the scratch databases go (removed afterwards); default: a new directory in
        /// the system's temporary directory.
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[command(flatten)]
        record: Record,
    },
    /// Check an archive, then load it into the four services' databases (stopped services;
    /// start them afterwards and unseal key-service with the archive's master version).
    Restore {
        #[command(flatten)]
        archive: Archive,
        /// key-service's database URL.
        #[arg(long)]
        keys_db: String,
        /// vault-service's database URL.
        #[arg(long)]
        vault_db: String,
        /// audit-service's database URL.
        #[arg(long)]
        audit_db: String,
        /// rotation-scheduler's database URL.
        #[arg(long)]
        rotation_db: String,
        /// Replace what the databases hold (each in one transaction) instead of refusing.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a backup subcommand.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let common = &args.common;
    match args.command {
        BackupCommand::Create { to, services } => create(common, &to, &services).await,
        BackupCommand::List { destination } => list(common, &destination).await,
        BackupCommand::Prune {
            destination,
            retention,
        } => {
            let dest = Destination::parse(&destination)?;
            let deleted = dest.prune(retention, sentia_proto::wkt::now_ms()).await?;
            if common.json {
                println!(
                    "{}",
                    json!({"destination": destination, "deleted": deleted})
                );
            } else {
                for name in &deleted {
                    println!("deleted {name}");
                }
                println!("{} archives deleted from {destination}", deleted.len());
            }
            Ok(())
        }
        BackupCommand::Verify { archive } => {
            let local = fetch(&archive.archive).await?;
            let (checked, _) = open(
                common,
                local.path(),
                &archive.key,
                &archive.trust,
                sentia_backup_ops::check,
            )
            .await?;
            let archive = &archive.archive;
            let m = &checked.manifest;
            if common.json {
                println!(
                    "{}",
                    json!({"valid": true, "archive": archive,
                        "archive_id": m.archive_id, "created": m.created,
                        "signed_by": checked.signed_by, "self_attested": checked.self_attested,
                        "services": m.services, "secret_versions": m.secret_versions.len(),
                        "audit": m.audit})
                );
            } else {
                println!("{archive}: valid");
                describe(&checked);
            }
            Ok(())
        }
        BackupCommand::Drill {
            archive,
            scratch,
            record,
        } => drill(common, &archive, scratch, &record).await,
        BackupCommand::Restore {
            archive,
            keys_db,
            vault_db,
            audit_db,
            rotation_db,
            force,
        } => {
            let (_, checked, _) = checked(common, &archive).await?;
            let targets = Targets {
                keys: keys_db,
                vault: vault_db,
                audit: audit_db,
                scheduler: rotation_db,
            };
            let bars = Bars::new(common);
            let restored =
                sentia_backup_restore::restore_with(&checked, &targets, force, bars.as_ref()).await;
            bars.finish();
            let restored = restored?;
            let m = &checked.manifest;
            if common.json {
                println!(
                    "{}",
                    json!({"restored": true, "archive_id": m.archive_id, "rows": restored.rows,
                        "secret_versions_checked": restored.versions_checked,
                        "master_version": m.master_version})
                );
            } else {
                println!("restored {} (made {})", m.archive_id, m.created);
                for (service, rows) in &restored.rows {
                    println!("  {service:<20} {rows} rows");
                }
                println!(
                    "  {} secret versions read back and matched",
                    restored.versions_checked
                );
                println!(
                    "start the services and unseal key-service with master version {} (or \
                     recover with the recovery key)",
                    m.master_version
                );
            }
            Ok(())
        }
    }
}

/// How an opened archive is read: checked whole with its snapshots kept
/// (`sentia_backup_ops::verify_with`), or checked holding nothing (`sentia_backup_ops::check`).
type ReadWith<T> =
    fn(&Path, &Opener, &Trust, &dyn Progress) -> Result<T, sentia_backup_ops::BackupError>;

/// The archive `a` names, on this machine (downloaded if need be), opened, checked and its
/// snapshots kept for a restore or a drill.
async fn checked(common: &Common, a: &Archive) -> anyhow::Result<(Local, Verified, Opener)> {
    let local = fetch(&a.archive).await?;
    let (checked, opener) = open(
        common,
        local.path(),
        &a.key,
        &a.trust,
        sentia_backup_ops::verify_with,
    )
    .await?;
    Ok((local, checked, opener))
}

async fn drill(
    common: &Common,
    archive: &Archive,
    scratch: Option<PathBuf>,
    record: &Record,
) -> anyhow::Result<()> {
    if archive.key.master_key_file.is_none() && archive.key.recovery_key_file.is_none() {
        anyhow::bail!(
            "a drill unseals the restored key-service: give --master-key-file or \
             --recovery-key-file"
        );
    }
    let (local, checked, opener) = checked(common, archive).await?;
    let archive = local.name.clone();
    let scratch = scratch.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "sentia-drill-{}",
            hex::encode(sentia_crypto::random_bytes(6))
        ))
    });
    let bars = Bars::new(common);
    let report =
        sentia_backup_restore::drill_with(&checked, &opener, &scratch, bars.as_ref()).await;
    bars.finish();
    let m = &checked.manifest;
    match (&report, common.json) {
        (Ok(r), true) => println!(
            "{}",
            json!({"passed": true, "archive": archive,
                "archive_id": r.archive_id, "created": m.created, "rows": r.restored.rows,
                "versions_read": r.versions_read, "versions_deleted": r.versions_deleted,
                "versions_destroyed": r.versions_destroyed,
                "audit_records_checked": r.audit_records_checked,
                "rotations_listed": r.rotations_listed})
        ),
        (Ok(r), false) => {
            println!("drill passed: {archive} (made {})", m.created);
            for (service, rows) in &r.restored.rows {
                println!("  restored {service:<20} {rows} rows");
            }
            println!(
                "  secret versions: {} read back, {} deleted and {} destroyed as before",
                r.versions_read, r.versions_deleted, r.versions_destroyed
            );
            println!(
                "  audit chain: {} records verified",
                r.audit_records_checked
            );
            println!(
                "  token issued and accepted; {} rotation schedules listed",
                r.rotations_listed
            );
        }
        (Err(e), true) => println!(
            "{}",
            json!({"passed": false, "archive": archive,
                "archive_id": m.archive_id, "error": e.to_string()})
        ),
        (Err(_), false) => {}
    }
    if let Some(addr) = &record.record_to {
        let recorder = Common {
            token: record.record_token.clone().or(common.token.clone()),
            ..common.clone()
        };
        let channel = recorder.channel(addr, "audit-service").await?;
        sentia_backup_restore::record(channel, &archive, &report)
            .await
            .with_context(|| format!("recording the drill's outcome at {addr}"))?;
        if !common.json {
            println!("  outcome recorded in the audit log at {addr}");
        }
    }
    report
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("restore drill of {archive}: {e}"))
}

/// An archive on this machine: the file given, or a downloaded copy (removed when dropped).
struct Local {
    path: PathBuf,
    name: String,
    downloaded: bool,
}

impl Local {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.downloaded {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `spec` as a local file: a file as is; `s3://…/NAME.sbk` downloaded; a directory or bucket
/// prefix: its newest archive.
async fn fetch(spec: &str) -> anyhow::Result<Local> {
    let remote = spec.starts_with("s3://");
    let (dest, name) = if spec.ends_with(".sbk") {
        if !remote {
            return Ok(Local {
                path: PathBuf::from(spec),
                name: spec.to_string(),
                downloaded: false,
            });
        }
        let (dir, name) = spec.rsplit_once('/').unwrap_or(("", spec));
        (Destination::parse(dir)?, name.to_string())
    } else {
        let dest = Destination::parse(spec)?;
        let newest = dest
            .list()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no archive at {spec}"))?;
        (dest, newest.name)
    };
    let full = format!("{}/{name}", dest.label().trim_end_matches('/'));
    if !remote {
        return Ok(Local {
            path: PathBuf::from(&full),
            name: full,
            downloaded: false,
        });
    }
    let local = Local {
        path: std::env::temp_dir().join(format!(
            "sentia-fetch-{}-{name}",
            hex::encode(sentia_crypto::random_bytes(6))
        )),
        name: full,
        downloaded: true,
    };
    dest.download(&name, &local.path).await?;
    Ok(local)
}

async fn create(common: &Common, to: &[String], s: &Services) -> anyhow::Result<()> {
    let admin = Common {
        token: s.key_token.clone().or(common.token.clone()),
        ..common.clone()
    };
    let sources = Sources {
        keys: admin.channel(&s.key_addr, "key-service").await?,
        audit: admin.channel(&s.audit_addr, "audit-service").await?,
        vault: common.channel(&s.addr, "vault-service").await?,
        scheduler: common
            .channel(&s.rotation_addr, "rotation-scheduler")
            .await?
            .into(),
    };
    let destinations = to
        .iter()
        .map(|d| Destination::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let bars = Bars::new(common);
    let made =
        sentia_backup_ops::create_in(&sources, &destinations, &std::env::temp_dir(), bars.clone())
            .await;
    bars.finish();
    let made = made?;
    let mut copies = Vec::new();
    for (label, copy) in &made.copies {
        match copy {
            Ok(at) => copies.push(at.clone()),
            Err(e) => eprintln!("error: no copy in {label}: {e}"),
        }
    }
    let (m, size) = (&made.manifest, made.bytes);
    if let Some(problem) = &m.audit.problem {
        eprintln!("warning: the audit chain copied does not verify: {problem}");
    }
    if m.recovery_fingerprint.is_empty() {
        eprintln!(
            "warning: no recovery key is configured: only master version {} opens this archive",
            m.master_version
        );
    }
    if common.json {
        println!(
            "{}",
            json!({"archive": copies.first(), "copies": copies, "archive_id": m.archive_id,
                "created": m.created, "bytes": size, "master_version": m.master_version,
                "recovery_fingerprint": m.recovery_fingerprint, "services": m.services,
                "secret_versions": m.secret_versions.len(), "audit": m.audit})
        );
    } else {
        println!(
            "{} ({size} bytes)",
            copies.first().map_or("", String::as_str)
        );
        for copy in copies.iter().skip(1) {
            println!("  copied to {copy}");
        }
        for (service, snap) in &m.services {
            println!(
                "  {service:<20} {} rows, schema {}",
                snap.rows.values().sum::<u64>(),
                snap.schema_version
            );
        }
    }
    let failed = made.failures().count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} copies failed (above)", made.copies.len());
    }
    Ok(())
}

async fn list(common: &Common, destination: &str) -> anyhow::Result<()> {
    let dest = Destination::parse(destination)?;
    let at = dest.label().trim_end_matches('/').to_string();
    let rows: Vec<_> = dest
        .list()
        .await?
        .into_iter()
        .map(|a| {
            json!({"name": a.name, "archive": format!("{at}/{}", a.name), "bytes": a.bytes,
                "created": a.created_ms.map(|t| sentia_proto::wkt::utc(t / 1000))})
        })
        .collect();
    if common.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}  {}  {} bytes",
            r["created"].as_str().unwrap_or("(no time in the name)"),
            r["archive"].as_str().unwrap_or(""),
            r["bytes"]
        );
    }
    Ok(())
}

/// Opens and checks `archive`, with the key-service public keys unless `--offline`.
async fn open<T: Send + 'static>(
    common: &Common,
    archive: &Path,
    key: &Key,
    trust: &TrustArgs,
    read_with: ReadWith<T>,
) -> anyhow::Result<(T, Opener)> {
    let read = |path: &Path, what: &str| -> anyhow::Result<Zeroizing<String>> {
        Ok(Zeroizing::new(std::fs::read_to_string(path).with_context(
            || format!("reading the {what} from {}", path.display()),
        )?))
    };
    // key-service, with its admin token: for the public keys, and to open an archive when no
    // key is given.
    let key_admin = Common {
        token: trust.key_token.clone().or(common.token.clone()),
        ..common.clone()
    };
    let opener = match (&key.master_key_file, &key.recovery_key_file) {
        (Some(path), None) => Opener::Master(sentia_crypto::MasterKey::from_base64(
            read(path, "master key")?.trim(),
        )?),
        (None, Some(path)) => Opener::Recovery(sentia_crypto::RecoveryPrivateKey::from_base64(
            read(path, "recovery key")?.trim(),
        )?),
        (None, None) if !trust.offline => {
            // key-service opens it with the master it holds (OpenBackup, for its admins and
            // backup identities): a check without holding the master.
            let keys = key_admin.channel(&trust.key_addr, "key-service").await?;
            Opener::Archive(
                sentia_backup_ops::archive_key_from(keys, archive)
                    .await
                    .context(
                        "asking key-service to open the archive (or give --master-key-file or \
                         --recovery-key-file)",
                    )?,
            )
        }
        _ => anyhow::bail!(
            "give --master-key-file or --recovery-key-file to open the archive (without \
             --offline, key-service can open one keyed to its current master)"
        ),
    };
    let trusted = if trust.offline {
        eprintln!(
            "warning: --offline: the signatures are checked with the keys the archive carries; \
             this proves it is whole and unaltered, not that Sentia made it"
        );
        Trust::Embedded
    } else {
        let keys = sentia_backup_ops::trusted_keys(
            key_admin.channel(&trust.key_addr, "key-service").await?,
        )
        .await?;
        Trust::Keys(keys)
    };
    let path = archive.to_path_buf();
    let bars = Bars::new(common);
    let reporting = bars.clone();
    let checked = tokio::task::spawn_blocking(move || {
        read_with(&path, &opener, &trusted, reporting.as_ref()).map(|v| (v, opener))
    })
    .await;
    bars.finish();
    let (checked, opener) = checked??;
    Ok((checked, opener))
}

fn describe(v: &Checked) {
    let m = &v.manifest;
    println!(
        "  archive {}  made {}  release {}",
        m.archive_id, m.created, m.release
    );
    println!(
        "  signed by {}{}",
        v.signed_by,
        if v.self_attested {
            " (checked with the archive's own keys)"
        } else {
            ""
        }
    );
    for (service, snap) in &m.services {
        println!(
            "  {service:<20} {} rows, schema {} ({})",
            snap.rows.values().sum::<u64>(),
            snap.schema_version,
            snap.dialect
        );
    }
    println!("  {} secret versions", m.secret_versions.len());
    println!(
        "  audit records {}-{}, last checkpoint {}",
        m.audit.first_sequence, m.audit.head_sequence, m.audit.checkpoint_sequence
    );
    if let Some(problem) = &m.audit.problem {
        println!("  warning: the audit chain was broken when copied: {problem}");
    }
}

/// Progress bars on standard error for an operator at a terminal; nothing otherwise (pipes,
/// `--json`, schedulers).
struct Bars {
    shown: bool,
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    fn new(common: &Common) -> std::sync::Arc<Self> {
        use std::io::IsTerminal;
        std::sync::Arc::new(Self {
            shown: !common.json && std::io::stderr().is_terminal(),
            bar: std::sync::Mutex::new(None),
        })
    }

    fn finish(&self) {
        if let Ok(mut bar) = self.bar.lock()
            && let Some(b) = bar.take()
        {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bars {
    fn stage(&self, what: &str, total: Option<u64>) {
        self.finish();
        if !self.shown {
            return;
        }
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:32} [{wide_bar}] {human_pos}/{human_len} ({per_sec}, {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg:32} {human_pos}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(bar) = self.bar.lock()
            && let Some(b) = bar.as_ref()
        {
            b.inc(n);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
