//! `sentia login` and `sentia token ...`: app-credential login, who am I, revocation and
//! app credentials.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use sentia_proto::vault::v1 as pb;
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
        /// The credential stops logging in this long from now, e.g. 30d (default: never).
        #[arg(long)]
        expires_in: Option<String>,
        /// Logins allowed in all (default: unlimited).
        #[arg(long)]
        max_uses: Option<u64>,
    },
    /// List app credentials (admin): role id, name, policies, uses, expiry, state.
    ListCredentials {
        /// Include revoked credentials.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke an app credential (admin): it can no longer log in and its tokens stop working.
    RevokeCredential {
        /// Role id.
        role_id: String,
    },
    /// Replace an app credential's secret id (admin). Prints the new one (shown once); the
    /// old one stops logging in at once.
    RotateCredential {
        /// Role id.
        role_id: String,
    },
}

fn print_secret_id(json_out: bool, r: &pb::CreateAppCredentialResponse) {
    if json_out {
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
    let r = args
        .conn
        .client()
        .await?
        .auth()
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
    let client = args.conn.client().await?;
    let mut c = client.auth();
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
            expires_in,
            max_uses,
        } => {
            let ttl = sentia_runtime::config::parse_duration(&ttl)
                .context("--ttl must look like 15m or 1h")?;
            let expire_time = match expires_in {
                None => None,
                Some(d) => {
                    let d = sentia_runtime::config::parse_duration(&d)
                        .context("--expires-in must look like 12h or 30d")?;
                    let at = std::time::SystemTime::now() + d;
                    let secs = at
                        .duration_since(std::time::UNIX_EPOCH)
                        .context("--expires-in is out of range")?
                        .as_secs();
                    Some(prost_types::Timestamp {
                        seconds: i64::try_from(secs).context("--expires-in is out of range")?,
                        nanos: 0,
                    })
                }
            };
            let r = c
                .create_app_credential(pb::CreateAppCredentialRequest {
                    name,
                    policies,
                    token_ttl: Some(prost_types::Duration {
                        seconds: ttl.as_secs() as i64,
                        nanos: 0,
                    }),
                    expire_time,
                    max_uses: max_uses.unwrap_or(0),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_secret_id(args.conn.common.json, &r);
        }
        TokenCommand::ListCredentials { include_revoked } => {
            let mut token = String::new();
            if !args.conn.common.json {
                println!(
                    "{:<36}  {:<20}  {:<24}  {:>9}  {:<20}  state",
                    "role id", "name", "policies", "uses", "expires"
                );
            }
            loop {
                let page = c
                    .list_app_credentials(pb::ListAppCredentialsRequest {
                        page_size: 1000,
                        page_token: token,
                        include_revoked,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for cred in &page.credentials {
                    let state = if cred.revoke_time.is_some() {
                        "revoked"
                    } else if cred.max_uses > 0 && cred.uses >= cred.max_uses {
                        "used up"
                    } else if cred
                        .expire_time
                        .as_ref()
                        .is_some_and(|t| t.seconds <= sentia_proto::wkt::now_secs())
                    {
                        "expired"
                    } else {
                        "live"
                    };
                    if args.conn.common.json {
                        println!(
                            "{}",
                            json!({
                                "role_id": cred.role_id, "name": cred.name,
                                "policies": cred.policies, "uses": cred.uses,
                                "max_uses": cred.max_uses,
                                "expire_unix": cred.expire_time.as_ref().map(|t| t.seconds),
                                "created_by": cred.created_by, "state": state,
                            })
                        );
                    } else {
                        let uses = if cred.max_uses > 0 {
                            format!("{}/{}", cred.uses, cred.max_uses)
                        } else {
                            cred.uses.to_string()
                        };
                        let expires = if cred.expire_time.is_some() {
                            crate::conn::utc(&cred.expire_time)
                        } else {
                            "never".into()
                        };
                        println!(
                            "{:<36}  {:<20}  {:<24}  {:>9}  {:<20}  {state}",
                            cred.role_id,
                            cred.name,
                            cred.policies.join(","),
                            uses,
                            expires
                        );
                    }
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        TokenCommand::RevokeCredential { role_id } => {
            c.revoke_app_credential(pb::RevokeAppCredentialRequest { role_id })
                .await
                .map_err(status_err)?;
            println!("revoked: it can no longer log in and its tokens are refused");
        }
        TokenCommand::RotateCredential { role_id } => {
            let r = c
                .rotate_app_credential_secret(pb::RotateAppCredentialSecretRequest { role_id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_secret_id(args.conn.common.json, &r);
        }
    }
    Ok(())
}
