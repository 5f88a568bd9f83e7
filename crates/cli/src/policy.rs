//! `sentia policy check`: the policy simulator. Asks vault-service whether a principal (or a
//! set of policies) holds a capability on a path, against the loaded policies or a policy
//! file not yet loaded, and which policy and rule decided.

use anyhow::Context;
use clap::{Args, Subcommand};
use sentia_policy::Capability;
use sentia_proto::vault::v1 as pb;
use serde_json::json;

use crate::conn::{VaultConn, status_err};

/// Connection options and the policy subcommand.
#[derive(Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    conn: VaultConn,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Allow or deny, with the policy and rule that decided. Exits 0 on allow, 1 on deny.
    Check {
        /// Whose access (default: yours): root, a static identity (service token or
        /// certificate name), an app credential's role id, or kubernetes:ROLE.
        #[arg(long, conflicts_with = "policies")]
        principal: Option<String>,
        /// Check as a holder of this policy instead; repeat for several.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// read, write, list, delete, rotate, audit-read or admin.
        #[arg(long, value_parser = capability)]
        capability: Capability,
        /// A secret path.
        #[arg(long)]
        path: String,
        /// A policy file to check against instead of the loaded policies (test it before
        /// loading it).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

fn capability(s: &str) -> Result<Capability, String> {
    Capability::parse(s).ok_or_else(|| {
        format!("{s:?} is not a capability: read, write, list, delete, rotate, audit-read, admin")
    })
}

/// Runs a policy subcommand; Ok(false) when the answer is deny.
pub async fn run(args: PolicyArgs) -> anyhow::Result<bool> {
    let client = args.conn.client().await?;
    let as_json = args.conn.common.json;
    match args.command {
        PolicyCommand::Check {
            principal,
            policies,
            capability,
            path,
            file,
        } => {
            let policy_file = match &file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => String::new(),
            };
            let r = client
                .auth()
                .check_policy(pb::CheckPolicyRequest {
                    principal: principal.unwrap_or_default(),
                    policies,
                    capability: capability.to_proto(),
                    path,
                    policy_file,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if as_json {
                println!(
                    "{}",
                    json!({
                        "allowed": r.allowed,
                        "policies": r.policies,
                        "policy": r.policy,
                        "rule": r.rule,
                        "rule_path": r.rule_path,
                        "explanation": r.explanation,
                    })
                );
            } else {
                println!("{}", r.explanation);
            }
            Ok(r.allowed)
        }
    }
}
