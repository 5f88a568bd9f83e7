//! `sentia key ...`: talk to a running key-service.

use clap::{Args, Subcommand, ValueEnum};
use sentia_proto::keys::v1::{
    self as pb, key_service_client::KeyServiceClient, system_service_client::SystemServiceClient,
};
use sentia_runtime::client::AuthedChannel;
use serde_json::json;

use crate::conn::{Common, status_err};
use anyhow::Context;
use zeroize::Zeroizing;

/// `sentia key recovery-keygen`: no server involved, so the private key never crosses a
/// network.
fn recovery_keygen(out: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let private = sentia_crypto::RecoveryPrivateKey::generate();
    crate::dev::write_private_new(out, &format!("{}\n", private.to_base64().as_str()))?;
    let public = private.public();
    if as_json {
        println!(
            "{}",
            json!({"public_key": public.to_base64(), "fingerprint": public.fingerprint(), "private_key_file": out.display().to_string()})
        );
    } else {
        println!(
            "recovery private key written to {} (owner-only)",
            out.display()
        );
        println!("keep it offline, away from key-service; it alone recovers a lost master key.");
        println!("set on key-service:");
        println!("SENTIA_RECOVERY_PUBLIC_KEY={}", public.to_base64());
        println!("fingerprint {}", public.fingerprint());
    }
    Ok(())
}

/// Connection options and the key subcommand.
#[derive(Args)]
pub struct KeyArgs {
    /// key-service address (host:port or URI).
    #[arg(
        long,
        env = "SENTIA_KEY_ADDR",
        default_value = "127.0.0.1:8201",
        global = true
    )]
    addr: String,
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a named key.
    Create {
        /// Key name ([a-z0-9_-], starting with a letter).
        name: String,
        /// What the key is for.
        #[arg(long, value_enum, default_value = "encryption")]
        purpose: PurposeArg,
    },
    /// Add a new primary version (or promote the staged one).
    Rotate {
        /// Key name.
        name: String,
        /// Publish the new version without making it primary (promote it with a later
        /// rotate).
        #[arg(long)]
        stage: bool,
    },
    /// List keys.
    List,
    /// Show one key.
    Get {
        /// Key name.
        name: String,
    },
    /// Change a key's policy: the oldest version that still decrypts, and how often it
    /// rotates by itself.
    SetPolicy {
        /// Key name.
        name: String,
        /// Versions below this stop decrypting (retire them only once nothing is wrapped
        /// under them: `sentia key rewrap` tells).
        #[arg(long)]
        min_decryption_version: Option<u32>,
        /// Rotate when the primary version is this old (e.g. 90d, at least 1h), or `off`.
        #[arg(long, value_parser = rotate_period)]
        auto_rotate: Option<std::time::Duration>,
    },
    /// Progress of moving stored data keys to the newest version of the key that wraps
    /// them, and of retiring older versions (asks vault-service).
    Rewrap {
        /// vault-service address.
        #[arg(long, env = "SENTIA_ADDR", default_value = "127.0.0.1:8200")]
        vault_addr: String,
        /// Follow it with a progress bar until every data key moved and older versions are
        /// retired.
        #[arg(long)]
        progress: bool,
    },
    /// Seal state and keyring summary.
    Status,
    /// Drop the master key and keyring from memory; every call but Status, Unseal and Init
    /// answers UNAVAILABLE until it is unsealed again.
    Seal,
    /// First start in Shamir mode: make the master key, split it into shares and print them
    /// once (one per custodian).
    Init {
        /// Number of shares, 2-255.
        #[arg(long)]
        shares: u32,
        /// Shares needed to unseal, 2..=shares.
        #[arg(long)]
        threshold: u32,
    },
    /// Submit an unseal share (or, with --master-key, the whole master key; with
    /// --recovery-key-file, the recovery key after the master key was lost).
    Unseal {
        /// A base64 Shamir share.
        share: Option<String>,
        /// The base64 master key instead of a share.
        #[arg(long, env = "SENTIA_UNSEAL_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
        /// File holding the recovery private key (from `sentia key recovery-keygen`).
        #[arg(long)]
        recovery_key_file: Option<std::path::PathBuf>,
    },
    /// Generate a new master key and re-wrap the keyring under it; prints the new master
    /// key (or, with --shares/--threshold in Shamir mode, the new shares) once.
    RotateMaster {
        /// Shamir mode: new share count (0 keeps the current one).
        #[arg(long, default_value_t = 0)]
        shares: u32,
        /// Shamir mode: new threshold (0 keeps the current one).
        #[arg(long, default_value_t = 0)]
        threshold: u32,
    },
    /// Make a recovery key pair, offline: the private key goes to --out (owner-only, never
    /// overwritten) for safekeeping away from key-service; the public key, printed, is what
    /// key-service's SENTIA_RECOVERY_PUBLIC_KEY is set to.
    RecoveryKeygen {
        /// Where to write the private key.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PurposeArg {
    Encryption,
    Signing,
    Hmac,
}

async fn channel(
    args: &KeyArgs,
) -> anyhow::Result<(
    KeyServiceClient<AuthedChannel>,
    SystemServiceClient<AuthedChannel>,
)> {
    let channel = args.common.channel(&args.addr, "key-service").await?;
    Ok((
        KeyServiceClient::new(channel.clone()),
        SystemServiceClient::new(channel),
    ))
}

/// A rotation period, or `off` (zero: no automatic rotation).
fn rotate_period(s: &str) -> Result<std::time::Duration, String> {
    if s == "off" {
        return Ok(std::time::Duration::ZERO);
    }
    crate::rotation::duration(s)
}

fn purpose_name(p: i32) -> &'static str {
    match pb::KeyPurpose::try_from(p) {
        Ok(pb::KeyPurpose::Encryption) => "encryption",
        Ok(pb::KeyPurpose::Signing) => "signing",
        Ok(pb::KeyPurpose::Hmac) => "hmac",
        _ => "unknown",
    }
}

fn key_json(k: &pb::Key) -> serde_json::Value {
    json!({
        "name": k.name,
        "purpose": purpose_name(k.purpose),
        "primary_version": k.primary_version,
        "min_decryption_version": k.min_decryption_version,
        "auto_rotate_seconds": k.auto_rotate_period.as_ref().map(|d| d.seconds),
        "versions": k.versions.iter().map(|v| json!({"version": v.version, "encryption_count": v.encryption_count, "kid": v.kid, "created_unix": v.create_time.as_ref().map(|t| t.seconds)})).collect::<Vec<_>>(),
    })
}

fn print_keys(keys: &[pb::Key], as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::Value::Array(keys.iter().map(key_json).collect())
        );
        return;
    }
    println!(
        "{:<24} {:<11} {:>7} {:>7} {:>9}",
        "NAME", "PURPOSE", "PRIMARY", "MIN", "VERSIONS"
    );
    for k in keys {
        println!(
            "{:<24} {:<11} {:>7} {:>7} {:>9}",
            k.name,
            purpose_name(k.purpose),
            k.primary_version,
            k.min_decryption_version,
            k.versions.len()
        );
    }
}

/// A line of progress: `vault v2: 8/10 data keys moved (80%) [########  ]`.
fn rewrap_line(s: &sentia_proto::vault::v1::RewrapStatus) -> String {
    let done = s.total - s.remaining;
    let pct = (done * 100).checked_div(s.total).unwrap_or(100);
    let width = 30;
    let filled = (pct as usize * width) / 100;
    let retired = if s.min_decryption_version >= s.primary_version {
        "older versions retired".to_string()
    } else if s.retire_time.is_some() {
        format!(
            "older versions retire at {}",
            crate::conn::utc(&s.retire_time)
        )
    } else {
        format!("versions from {} still decrypt", s.min_decryption_version)
    };
    format!(
        "{} v{}: {done}/{} data keys moved ({pct}%) [{}{}] {retired}",
        s.key_name,
        s.primary_version,
        s.total,
        "#".repeat(filled),
        " ".repeat(width - filled),
    )
}

/// `sentia key rewrap`: vault-service's report, once or followed.
async fn rewrap(args: &KeyArgs, vault_addr: &str, follow: bool) -> anyhow::Result<()> {
    let channel = args.common.channel(vault_addr, "vault-service").await?;
    let mut c = sentia_proto::vault::v1::secret_service_client::SecretServiceClient::new(channel);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last = String::new();
    loop {
        let s = c
            .get_rewrap_status(sentia_proto::vault::v1::GetRewrapStatusRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let finished = s.remaining == 0
            && (s.min_decryption_version >= s.primary_version || s.retire_time.is_none());
        if args.common.json {
            println!(
                "{}",
                json!({"key_name": s.key_name, "primary_version": s.primary_version,
                    "min_decryption_version": s.min_decryption_version, "total": s.total,
                    "remaining": s.remaining, "by_key_version": s.by_key_version,
                    "retire_time": s.retire_time.as_ref().map(|_| crate::conn::utc(&s.retire_time))})
            );
        } else {
            let line = rewrap_line(&s);
            if tty && follow {
                print!("\r{line}");
                std::io::Write::flush(&mut std::io::stdout())?;
            } else if line != last {
                println!("{line}");
            }
            last = line;
        }
        if !follow || finished {
            if tty && follow && !args.common.json {
                println!();
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Runs a key subcommand.
pub async fn run(args: KeyArgs) -> anyhow::Result<()> {
    if let KeyCommand::RecoveryKeygen { out } = &args.command {
        return recovery_keygen(out, args.common.json);
    }
    // The rewrap is vault-service's: key-service is not needed.
    if let KeyCommand::Rewrap {
        vault_addr,
        progress,
    } = &args.command
    {
        return rewrap(&args, vault_addr, *progress).await;
    }
    let (mut keys, mut system) = channel(&args).await?;
    match &args.command {
        KeyCommand::Create { name, purpose } => {
            let purpose = match purpose {
                PurposeArg::Encryption => pb::KeyPurpose::Encryption,
                PurposeArg::Signing => pb::KeyPurpose::Signing,
                PurposeArg::Hmac => pb::KeyPurpose::Hmac,
            } as i32;
            let k = keys
                .create_key(pb::CreateKeyRequest {
                    name: name.clone(),
                    purpose,
                    auto_rotate_period: None,
                })
                .await
                .map_err(status_err)?;
            print_keys(&[k.into_inner()], args.common.json);
        }
        KeyCommand::Rotate { name, stage } => {
            let k = keys
                .rotate_key(pb::RotateKeyRequest {
                    name: name.clone(),
                    stage: *stage,
                })
                .await
                .map_err(status_err)?;
            print_keys(&[k.into_inner()], args.common.json);
        }
        KeyCommand::Get { name } => {
            let k = keys
                .get_key(pb::GetKeyRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            print_keys(&[k.into_inner()], args.common.json);
        }
        KeyCommand::List => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = keys
                    .list_keys(pb::ListKeysRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                all.extend(page.keys);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_keys(&all, args.common.json);
        }
        KeyCommand::Status => {
            let s = system
                .status(pb::StatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if args.common.json {
                println!(
                    "{}",
                    json!({"sealed": s.sealed, "initialized": s.initialized, "seal_type": s.seal_type, "threshold": s.threshold, "progress": s.progress, "master_version": s.master_version, "master_create_time": s.master_create_time.as_ref().map(|_| crate::conn::utc(&s.master_create_time)), "key_count": s.key_count, "server_version": s.server_version, "recovery_fingerprint": s.recovery_fingerprint})
                );
            } else {
                println!(
                    "sealed          {}\ninitialized     {}\nseal type       {}\nunseal progress {}/{}\nmaster version  {} (made {}; rotate yearly: sentia key rotate-master)\nkeys            {}\nserver version  {}\nrecovery escrow {}",
                    s.sealed,
                    s.initialized,
                    s.seal_type,
                    s.progress,
                    s.threshold,
                    s.master_version,
                    crate::conn::utc(&s.master_create_time),
                    s.key_count,
                    s.server_version,
                    if s.recovery_fingerprint.is_empty() {
                        "none".to_string()
                    } else {
                        format!("recovery key {}", s.recovery_fingerprint)
                    }
                );
            }
        }
        KeyCommand::Rewrap { .. } => {}
        KeyCommand::SetPolicy {
            name,
            min_decryption_version,
            auto_rotate,
        } => {
            let mut mask = Vec::new();
            if min_decryption_version.is_some() {
                mask.push("min_decryption_version".to_string());
            }
            if auto_rotate.is_some() {
                mask.push("auto_rotate_period".to_string());
            }
            if mask.is_empty() {
                anyhow::bail!("nothing to change: give --min-decryption-version or --auto-rotate");
            }
            let k = keys
                .set_key_policy(pb::SetKeyPolicyRequest {
                    name: name.clone(),
                    min_decryption_version: min_decryption_version.unwrap_or(0),
                    auto_rotate_period: auto_rotate.map(|d| prost_types::Duration {
                        seconds: d.as_secs() as i64,
                        nanos: 0,
                    }),
                    update_mask: Some(prost_types::FieldMask { paths: mask }),
                })
                .await
                .map_err(status_err)?;
            print_keys(&[k.into_inner()], args.common.json);
        }
        KeyCommand::Seal => {
            let r = system
                .seal(pb::SealRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if args.common.json {
                println!("{}", json!({"sealed": r.sealed}));
            } else {
                println!("sealed: unseal with `sentia key unseal` (shares or the master key)");
            }
        }
        KeyCommand::Init { shares, threshold } => {
            let r = system
                .init(pb::InitRequest {
                    secret_shares: *shares,
                    secret_threshold: *threshold,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let shares: Vec<Zeroizing<String>> = r.shares.into_iter().map(Zeroizing::new).collect();
            if args.common.json {
                let shown: Vec<&str> = shares.iter().map(|s| s.as_str()).collect();
                println!(
                    "{}",
                    *Zeroizing::new(json!({"shares": shown, "threshold": threshold}).to_string())
                );
            } else {
                println!(
                    "initialized: {} shares, {threshold} unseal; give each to a different \
                     custodian (shown once)",
                    shares.len()
                );
                for (i, share) in shares.iter().enumerate() {
                    println!("share {}: {}", i + 1, share.as_str());
                }
            }
        }
        KeyCommand::RecoveryKeygen { .. } => {}
        KeyCommand::RotateMaster { shares, threshold } => {
            let r = system
                .rotate_master_key(pb::RotateMasterKeyRequest {
                    secret_shares: *shares,
                    secret_threshold: *threshold,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let master_key = Zeroizing::new(r.master_key);
            let shares: Vec<Zeroizing<String>> = r.shares.into_iter().map(Zeroizing::new).collect();
            if args.common.json {
                let shown: Vec<&str> = shares.iter().map(|s| s.as_str()).collect();
                println!(
                    "{}",
                    *Zeroizing::new(
                        json!({"master_version": r.master_version, "master_key": master_key.as_str(), "shares": shown}).to_string()
                    )
                );
            } else {
                println!("master version {}", r.master_version);
                if !master_key.is_empty() {
                    println!(
                        "new master key (shown once; set SENTIA_MASTER_KEY to it before the next restart):"
                    );
                    println!("{}", master_key.as_str());
                }
                for (i, share) in shares.iter().enumerate() {
                    println!("share {}: {}", i + 1, share.as_str());
                }
            }
        }
        KeyCommand::Unseal {
            share,
            master_key,
            recovery_key_file,
        } => {
            let material = match (share, master_key, recovery_key_file) {
                (Some(s), None, None) => pb::unseal_request::Material::Share(s.clone()),
                (None, Some(k), None) => pb::unseal_request::Material::MasterKey(k.clone()),
                (None, None, Some(path)) => {
                    let key = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                        format!("reading the recovery key from {}", path.display())
                    })?);
                    pb::unseal_request::Material::RecoveryKey(key.trim().to_string())
                }
                _ => anyhow::bail!("give one of: a share, --master-key, --recovery-key-file"),
            };
            let r = system
                .unseal(pb::UnsealRequest {
                    material: Some(material),
                    reset: false,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if args.common.json {
                println!(
                    "{}",
                    json!({"sealed": r.sealed, "progress": r.progress, "threshold": r.threshold})
                );
            } else {
                println!(
                    "sealed {} (progress {}/{})",
                    r.sealed, r.progress, r.threshold
                );
            }
        }
    }
    Ok(())
}
