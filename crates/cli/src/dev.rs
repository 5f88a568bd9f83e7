//! `sentia dev`: key-service, vault-service, audit-service and rotation-scheduler in-process
//! on SQLite in a data directory, plaintext on loopback (or TLS with a throwaway CA with
//! `--tls`), like `vault server -dev`. Never for production.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use key_service::{Config, MasterSource};
use sentia_crypto::MasterKey;
use sentia_dev_pki::DevPki;
use sentia_runtime::audit::AuditConfig;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::private_file;
use sentia_runtime::{Role, ServerConfig, Shutdown, UpstreamConfig, telemetry};
use zeroize::Zeroizing;

/// Options of `sentia dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Where the SQLite databases and the dev master key live.
    #[arg(long, env = "SENTIA_DEV_DATA_DIR", default_value = ".sentia-dev")]
    data_dir: PathBuf,
    /// key-service port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8201)]
    key_port: u16,
    /// vault-service port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8200)]
    vault_port: u16,
    /// audit-service port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8202)]
    audit_port: u16,
    /// rotation-scheduler port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8203)]
    rotation_port: u16,
    /// Serve mutual TLS with a throwaway CA written to the data directory.
    #[arg(long)]
    tls: bool,
    /// Policies (and Kubernetes login) from this file instead of the built-in seed roles;
    /// reloaded when it changes, as in production.
    #[arg(long, env = "SENTIA_POLICY_FILE")]
    policy_file: Option<PathBuf>,
    /// No daily backups (by default rotation-scheduler makes one a day into `backups/` in the
    /// data directory and keeps 90 days of them).
    #[arg(long)]
    no_backups: bool,
}

fn random_token() -> Zeroizing<String> {
    Zeroizing::new(URL_SAFE_NO_PAD.encode(sentia_crypto::random_bytes(24)))
}

/// Writes a file only its owner can read (created 0600, so it is never readable by others,
/// even for a moment).
pub fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    write_owner_only(path, contents, false)
}

/// Like [`write_private`], but refuses to replace an existing file: for keys that exist once.
pub fn write_private_new(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    write_owner_only(path, contents, true)
}

fn write_owner_only(path: &std::path::Path, contents: &str, new: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = private_file::open(path, &mut options)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}

/// The identities of the services `sentia dev` runs, each with a token of its own.
const SERVICES: [&str; 4] = [
    "key-service",
    "vault-service",
    "audit-service",
    "rotation-scheduler",
];

/// The SQLite file `name` in `dir`, created owner-only (0600) before SQLite opens it, so
/// its journal files get the same mode (SQLite copies it); an existing one is made 0600.
fn private_database(dir: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let file = dir.join(name);
    private_file::open(
        &file,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false),
    )
    .with_context(|| format!("creating {}", file.display()))?;
    for journal in ["-wal", "-shm", "-journal"] {
        let j = dir.join(format!("{name}{journal}"));
        if j.exists() {
            private_file::open(&j, std::fs::OpenOptions::new().read(true))?;
        }
    }
    Ok(file)
}

/// Starts the dev stack and blocks until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("sentia-dev", &sentia_runtime::ProcessEnv)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} owner-only", args.data_dir.display()))?;
    }
    let key_file = args.data_dir.join("dev-master.key");
    let (master, new_master) = match std::fs::read_to_string(&key_file) {
        Ok(b64) => (MasterKey::from_base64(&b64)?, false),
        Err(_) => {
            let m = MasterKey::generate();
            write_private(&key_file, &m.to_base64())?;
            (m, true)
        }
    };
    let admin_token = random_token();
    let scheduler_token = random_token();
    // Each service its own identity, as in a deployment: key-service's grants and
    // audit-service's emitters tell them apart.
    let service_tokens: Vec<(&'static str, Zeroizing<String>)> = SERVICES
        .iter()
        .map(|name| (*name, random_token()))
        .collect();
    let tokens = TokenTable::from_plain(
        std::iter::once(("root", Role::Admin, admin_token.as_str())).chain(
            service_tokens
                .iter()
                .map(|(name, token)| (*name, Role::Service, token.as_str())),
        ),
    );
    let token_of = |identity: &str| {
        service_tokens
            .iter()
            .find(|(name, _)| *name == identity)
            .map(|(_, token)| token.clone())
            .ok_or_else(|| anyhow::anyhow!("no dev token for {identity}"))
    };

    let mut server = ServerConfig::dev("key-service", tokens.clone());
    server.listen_addr = ([127, 0, 0, 1], args.key_port).into();
    let mut tls_note = String::new();
    let pki = if args.tls {
        Some(DevPki::generate()?)
    } else {
        None
    };
    if let Some(pki) = &pki {
        server.tls = Some(pki.server_config("key-service", true)?);
        server.admin_identities = vec!["sentia-cli".into()];
        server.service_identities = key_service::config::DEFAULT_SERVICE_IDENTITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let (cert, key) = pki.issue("sentia-cli")?;
        write_private(&args.data_dir.join("ca.pem"), &pki.ca_pem())?;
        write_private(&args.data_dir.join("cli.pem"), &cert)?;
        write_private(&args.data_dir.join("cli-key.pem"), &key)?;
        let d = args.data_dir.display();
        tls_note = format!(
            "  mTLS:        export SENTIA_CLIENT_CA={d}/ca.pem SENTIA_CLIENT_CERT={d}/cli.pem SENTIA_CLIENT_KEY={d}/cli-key.pem\n"
        );
    }
    let listener = tokio::net::TcpListener::bind(server.listen_addr)
        .await
        .with_context(|| {
            format!(
                "binding {} (use --key-port 0 for any free port)",
                server.listen_addr
            )
        })?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls { "https" } else { "http" };

    let bind = |port: u16, flag: &'static str| async move {
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding {at} (use {flag} 0 for any free port)"))
    };
    let sqlite = |name: &str| -> anyhow::Result<String> {
        let file = private_database(&args.data_dir, name)?;
        Ok(format!("sqlite://{}?mode=rwc", file.display()))
    };
    // A client of a sibling service: `token`, or the service's own certificate under --tls.
    let upstream_with = |to: std::net::SocketAddr,
                         identity: &str,
                         token: &Zeroizing<String>|
     -> anyhow::Result<UpstreamConfig> {
        Ok(match &pki {
            Some(pki) => UpstreamConfig {
                addr: to.to_string(),
                token: None,
                tls: Some(pki.client_config(Some(identity))?),
            },
            None => UpstreamConfig {
                addr: to.to_string(),
                token: Some(token.clone()),
                tls: None,
            },
        })
    };
    let upstream = |to: std::net::SocketAddr, identity: &str| {
        upstream_with(to, identity, &token_of(identity)?)
    };
    let server_for = |name: &'static str,
                      callers: &[&str],
                      listener: &tokio::net::TcpListener|
     -> anyhow::Result<ServerConfig> {
        let mut s = ServerConfig::dev(name, tokens.clone());
        s.listen_addr = listener.local_addr()?;
        if let Some(pki) = &pki {
            s.tls = Some(pki.server_config(name, false)?);
            s.admin_identities = vec!["sentia-cli".into()];
            s.service_identities = callers.iter().map(|c| c.to_string()).collect();
        }
        Ok(s)
    };

    let audit_listener = bind(args.audit_port, "--audit-port").await?;
    let audit_addr = audit_listener.local_addr()?;
    // Every service records into audit-service, spooling in the data directory meanwhile.
    let audited = |identity: &str, spool: &str| -> anyhow::Result<AuditConfig> {
        Ok(AuditConfig::to(
            upstream(audit_addr, identity)?,
            args.data_dir.join(spool),
        ))
    };
    let mut config = Config::in_process(
        server,
        audited("key-service", "key-audit.spool")?,
        MasterSource::Key(master),
    )?;
    config.database_url = sqlite("keys.db")?;
    // `sentia key rotate-master` rewrites the dev master key file, so the next start opens.
    config.master_key_file = Some(key_file.clone());

    let mut audit = audit_service::Config::in_process(server_for(
        "audit-service",
        audit_service::config::DEFAULT_SERVICE_IDENTITIES,
        &audit_listener,
    )?)?;
    audit.database_url = sqlite("audit.db")?;
    audit.key_service = upstream(addr, "audit-service")?;

    let root_file = args.data_dir.join("root-token");
    let root_existed = root_file.exists();
    let vault_listener = bind(args.vault_port, "--vault-port").await?;
    let vault_addr = vault_listener.local_addr()?;
    let mut vault = vault_service::Config::in_process(
        server_for(
            "vault-service",
            vault_service::config::DEFAULT_SERVICE_IDENTITIES,
            &vault_listener,
        )?,
        audited("vault-service", "vault-audit.spool")?,
    )?;
    // Readers' tokens at audit-service are checked with vault-service: the root token works
    // there and revocations count.
    audit.vault_service = Some(upstream(vault_addr, "audit-service")?);
    // Apps log in for tokens; the dev static tokens are for key-service and the CLI only.
    // rotation-scheduler has a token (or certificate) of its own, holding system_admin.
    vault.server.tokens = TokenTable::from_plain([(
        "rotation-scheduler",
        Role::Service,
        scheduler_token.as_str(),
    )]);
    vault.policies.identities = [(
        "rotation-scheduler".to_string(),
        vec!["system_admin".to_string()],
    )]
    .into();
    vault.policies.file.clone_from(&args.policy_file);
    vault.database_url = sqlite("vault.db")?;
    vault.root_token_file = Some(root_file.clone());
    vault.key_service = upstream(addr, "vault-service")?;

    let rotation_listener = bind(args.rotation_port, "--rotation-port").await?;
    let rotation_addr = rotation_listener.local_addr()?;
    let mut rotation = rotation_scheduler::Config::in_process(
        server_for(
            "rotation-scheduler",
            rotation_scheduler::config::DEFAULT_SERVICE_IDENTITIES,
            &rotation_listener,
        )?,
        audited("rotation-scheduler", "rotation-audit.spool")?,
    )?;
    rotation.database_url = sqlite("rotation.db")?;
    rotation.policies.file.clone_from(&args.policy_file);
    // Quick feedback locally: look for due secrets every second.
    rotation.tick = std::time::Duration::from_secs(1);
    rotation.lease = std::time::Duration::from_secs(5);
    rotation.vault_service = upstream_with(vault_addr, "rotation-scheduler", &scheduler_token)?;
    // Its own identity at key-service (token, or certificate under --tls): the shipped grants
    // let the jwt_signing_key rotator stage, promote and retire token key versions.
    rotation.key_service = Some(upstream(addr, "rotation-scheduler")?);
    // Daily backups into the data directory, made by the scheduler as in a deployment: admitted
    // for snapshots at key-service and audit-service by name, not as an administrator.
    let backups_dir = args.data_dir.join("backups");
    if !args.no_backups {
        rotation.backups = Some(rotation_scheduler::backups::BackupConfig::daily(
            vec![backups_dir.display().to_string()],
            args.data_dir.clone(),
        ));
        let makers = sentia_snapshot::BackupMakers::parse("rotation-scheduler");
        config.backup_makers = makers.clone();
        audit.backup_makers = makers;
    }

    eprintln!("\n==================== SENTIA DEV MODE ====================");
    eprintln!(
        "  Everything runs in this process on SQLite in {}.",
        args.data_dir.display()
    );
    eprintln!("  NOT FOR PRODUCTION: the master key is stored next to the data.");
    if new_master {
        eprintln!(
            "  New dev master key (shown once; saved in {}):",
            key_file.display()
        );
        eprintln!(
            "    {}",
            *MasterKey::from_base64(&std::fs::read_to_string(&key_file)?)?.to_base64()
        );
    }
    eprintln!(
        "  key-service:   {scheme}://{addr}   (admin token {})",
        *admin_token
    );
    eprintln!("  vault-service: {scheme}://{vault_addr}");
    eprintln!("  audit-service: {scheme}://{audit_addr}   (read it with the root or admin token)");
    eprintln!("  rotation:      {scheme}://{rotation_addr}   (sentia rotation status)");
    eprintln!(
        "  root token is in {} (shown below once it is minted)",
        root_file.display()
    );
    eprintln!(
        "  try:  export SENTIA_ADDR={vault_addr} SENTIA_TOKEN=$(cat {})",
        root_file.display()
    );
    if !args.no_backups {
        eprintln!(
            "  backups:       daily into {} (sentia backup list {0}; --no-backups to stop)",
            backups_dir.display()
        );
    }
    eprint!("{tls_note}");
    eprintln!("        echo -n s3cr3t | sentia secret put dev/app/db-password");
    eprintln!("        sentia secret get dev/app/db-password");
    eprintln!("=========================================================\n");

    let shutdown = Shutdown::on_signals();
    let mut services = tokio::task::JoinSet::new();
    let stop = shutdown.clone();
    services.spawn(async move {
        (
            "key-service",
            key_service::run(config, listener, stop)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let stop = shutdown.clone();
    services.spawn(async move {
        (
            "audit-service",
            audit_service::run(audit, audit_listener, stop)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let stop = shutdown.clone();
    services.spawn(async move {
        (
            "vault-service",
            vault_service::run(vault, vault_listener, stop)
                .await
                .map_err(anyhow::Error::from),
        )
    });
    let stop = shutdown.clone();
    services.spawn(async move {
        (
            "rotation-scheduler",
            rotation_scheduler::run(rotation, rotation_listener, stop)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
        )
    });
    // vault-service writes the root token file before it serves; show it once, when it is
    // minted (later starts point at the file).
    for _ in 0..100 {
        if root_existed {
            break;
        }
        if let Ok(t) = std::fs::read_to_string(&root_file) {
            eprintln!("  vault root token: {t}\n");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Any service stopping (a signal, or a failure) stops the others.
    let mut result = Ok(());
    while let Some(done) = services.join_next().await {
        shutdown.trigger();
        let (name, r) = done?;
        if let Err(e) = r {
            eprintln!("sentia dev: {name} stopped: {e:#}");
            if result.is_ok() {
                result = Err(e.context(format!("{name} failed")));
            }
        }
    }
    result
}
