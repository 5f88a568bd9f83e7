//! `sentia health` and `sentia pki init`: what container health checks and a first
//! deployment need from the image itself.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use sentia_dev_pki::DevPki;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::conn::{Common, status_err};

/// Options of `sentia health`.
#[derive(Args)]
pub struct HealthArgs {
    /// Address to check (host:port or URI).
    addr: String,
    /// Service name to check; empty = the whole server.
    #[arg(long, default_value = "")]
    service: String,
    #[command(flatten)]
    common: Common,
}

/// Exits 0 when the server answers SERVING to `grpc.health.v1.Health/Check`.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let tls = args.common.tls()?;
    let channel = sentia_runtime::client::connect(&args.addr, tls.as_ref())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .status;
    if status != 1 {
        bail!("{} is not serving (status {status})", args.addr);
    }
    println!("SERVING");
    Ok(())
}

/// Options of `sentia pki init`.
#[derive(Args)]
pub struct PkiArgs {
    /// Directory to write `ca.pem` and `<name>.pem` / `<name>-key.pem` into.
    #[arg(long)]
    dir: PathBuf,
    /// Names to issue certificates for (their DNS names and mTLS identities).
    #[arg(required = true)]
    names: Vec<String>,
}

/// Makes a CA and one certificate per name, once: an existing `ca.pem` is left alone, so a
/// restarted init job does not replace the deployment's identities. The CA key is not kept:
/// issuing more later means a new CA (or bring your own PKI).
pub async fn pki_init(args: PkiArgs) -> anyhow::Result<()> {
    let ca = args.dir.join("ca.pem");
    if ca.exists() {
        println!("{} exists; nothing to do", ca.display());
        return Ok(());
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let pki = DevPki::generate()?;
    for name in &args.names {
        let (cert, key) = pki.issue(name)?;
        std::fs::write(args.dir.join(format!("{name}.pem")), cert)?;
        crate::dev::write_private(&args.dir.join(format!("{name}-key.pem")), &key)?;
    }
    // Last: its presence means the set is complete.
    std::fs::write(&ca, pki.ca_pem())?;
    println!(
        "wrote {} and {} certificates",
        ca.display(),
        args.names.len()
    );
    Ok(())
}
