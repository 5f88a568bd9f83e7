//! `sentia key ...`: talk to a running key-service.

use clap::{Args, Subcommand, ValueEnum};
use sentia_proto::keys::v1::{
    self as pb, key_service_client::KeyServiceClient, system_service_client::SystemServiceClient,
};
use sentia_runtime::client::AuthedChannel;
use serde_json::json;

use crate::conn::{Common, status_err};

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
    /// Seal state and keyring summary.
    Status,
    /// Submit an unseal share (or, with --master-key, the whole master key).
    Unseal {
        /// A base64 Shamir share.
        share: Option<String>,
        /// The base64 master key instead of a share.
        #[arg(long, env = "SENTIA_UNSEAL_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
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

/// Runs a key subcommand.
pub async fn run(args: KeyArgs) -> anyhow::Result<()> {
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
                    json!({"sealed": s.sealed, "initialized": s.initialized, "seal_type": s.seal_type, "threshold": s.threshold, "progress": s.progress, "master_version": s.master_version, "key_count": s.key_count, "server_version": s.server_version})
                );
            } else {
                println!(
                    "sealed          {}\ninitialized     {}\nseal type       {}\nunseal progress {}/{}\nmaster version  {}\nkeys            {}\nserver version  {}",
                    s.sealed,
                    s.initialized,
                    s.seal_type,
                    s.progress,
                    s.threshold,
                    s.master_version,
                    s.key_count,
                    s.server_version
                );
            }
        }
        KeyCommand::Unseal { share, master_key } => {
            let material = match (share, master_key) {
                (Some(s), None) => pb::unseal_request::Material::Share(s.clone()),
                (None, Some(k)) => pb::unseal_request::Material::MasterKey(k.clone()),
                _ => anyhow::bail!("give either a share or --master-key"),
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
