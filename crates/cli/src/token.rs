//! `sentia login` and `sentia token ...`: app-credential login, who am I, revocation and
//! app credentials.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use sentia_proto::vault::v1::{self as pb, auth_service_client::AuthServiceClient};
use serde_json::json;

use crate::conn::{VaultConn, status_err};

/// `sentia login`.
#[derive(Args)]
pub struct LoginArgs {
    /// Role id of the app credential.
    #[arg(long, env = "SENTIA_ROLE_ID")]
    role_id: String,
    /// Secret id; read from standard input when not set (keeps it out of shell history).
    #[arg(long, env = "SENTIA_SECRET_ID", hide_env_values = true)]
    secret_id: Option<String>,
    #[command(flatten)]
    conn: VaultConn,
}

/// `sentia token ...`.
#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: VaultConn,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Who the current token belongs to and its policies.
    Whoami,
    /// Revoke a token by id (the current token when none given).
    Revoke {
        /// Token id (jti).
        token_id: Option<String>,
    },
    /// Create an app credential (admin). Prints the role id and the secret id (shown once).
    CreateCredential {
        /// Display name.
        name: String,
        /// Policies to attach; repeat for several.
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        /// Token lifetime, e.g. 15m or 1h (1m-24h).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// Runs `sentia login`: prints the token (or JSON with its id and expiry).
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let secret_id = match args.secret_id {
        Some(s) => zeroize::Zeroizing::new(s),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the secret id from standard input")?;
            zeroize::Zeroizing::new(s.trim().to_string())
        }
    };
    let channel = args.conn.channel().await?;
    let r = AuthServiceClient::new(channel)
        .login(pb::LoginRequest {
            role_id: args.role_id,
            secret_id: secret_id.to_string(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let token = zeroize::Zeroizing::new(r.token);
    if args.conn.common.json {
        println!(
            "{}",
            json!({"token": token.as_str(), "token_id": r.token_id, "expire_unix": r.expire_time.map(|t| t.seconds)})
        );
    } else {
        println!("{}", token.as_str());
    }
    Ok(())
}

/// Runs a token subcommand.
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let channel = args.conn.channel().await?;
    let mut c = AuthServiceClient::new(channel);
    match args.command {
        TokenCommand::Whoami => {
            let r = c
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            let p = r.principal.unwrap_or_default();
            let exp = r.expire_time.map(|t| t.seconds);
            if args.conn.common.json {
                println!(
                    "{}",
                    json!({"id": p.id, "auth_method": p.auth_method, "policies": p.roles, "expire_unix": exp})
                );
            } else {
                println!(
                    "id          {}\nauth method {}\npolicies    {}\nexpires     {}",
                    p.id,
                    p.auth_method,
                    p.roles.join(", "),
                    r.expire_time
                        .as_ref()
                        .map_or("never".into(), |_| crate::conn::utc(&r.expire_time))
                );
            }
        }
        TokenCommand::Revoke { token_id } => {
            c.revoke_token(pb::RevokeTokenRequest {
                token_id: token_id.unwrap_or_default(),
            })
            .await
            .map_err(status_err)?;
            println!("revoked");
        }
        TokenCommand::CreateCredential {
            name,
            policies,
            ttl,
        } => {
            let ttl = sentia_runtime::config::parse_duration(&ttl)
                .context("--ttl must look like 15m or 1h")?;
            let r = c
                .create_app_credential(pb::CreateAppCredentialRequest {
                    name,
                    policies,
                    token_ttl: Some(prost_types::Duration {
                        seconds: ttl.as_secs() as i64,
                        nanos: 0,
                    }),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if args.conn.common.json {
                println!(
                    "{}",
                    json!({"role_id": r.role_id, "secret_id": r.secret_id})
                );
            } else {
                println!(
                    "role id    {}\nsecret id  {}   (shown once: store it now)",
                    r.role_id, r.secret_id
                );
            }
        }
    }
    Ok(())
}
