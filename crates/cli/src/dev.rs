//! `sentia dev`: key-service in-process on SQLite in a data directory, plaintext on loopback
//! (or mTLS with a throwaway CA with `--tls`), like `vault server -dev`. Never for production.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use key_service::{Config, MasterSource};
use sentia_crypto::MasterKey;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::{DevPki, MapSource, Role, ServerConfig, Shutdown, telemetry};
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
    /// Serve mutual TLS with a throwaway CA written to the data directory.
    #[arg(long)]
    tls: bool,
}

fn random_token() -> Zeroizing<String> {
    Zeroizing::new(URL_SAFE_NO_PAD.encode(sentia_crypto::random_bytes(24)))
}

fn write_private(path: &PathBuf, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Starts the dev stack and blocks until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("sentia-dev", &sentia_runtime::ProcessEnv)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
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
    let service_token = random_token();
    let tokens = TokenTable::from_plain([
        ("root", Role::Admin, admin_token.as_str()),
        ("dev-service", Role::Service, service_token.as_str()),
    ]);

    let mut server = ServerConfig::dev("key-service", tokens);
    server.listen_addr = ([127, 0, 0, 1], args.key_port).into();
    let mut tls_note = String::new();
    if args.tls {
        let pki = DevPki::generate()?;
        server.tls = Some(pki.server_config("key-service", true)?);
        server.admin_identities = vec!["sentia-cli".into()];
        let (cert, key) = pki.issue("sentia-cli")?;
        write_private(&args.data_dir.join("ca.pem"), &pki.ca_pem())?;
        write_private(&args.data_dir.join("cli.pem"), &cert)?;
        write_private(&args.data_dir.join("cli-key.pem"), &key)?;
        let d = args.data_dir.display();
        tls_note = format!(
            "  mTLS:        export SENTIA_CA_CERT={d}/ca.pem SENTIA_CLIENT_CERT={d}/cli.pem SENTIA_CLIENT_KEY={d}/cli-key.pem\n"
        );
    }
    let db = args.data_dir.join("keys.db");
    let mut config = Config::from_source(&MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_SEAL_TYPE", "shamir"),
    ]))?;
    config.server = server;
    config.database_url = format!("sqlite://{}?mode=rwc", db.display());
    config.master = MasterSource::Key(master);

    let listener = tokio::net::TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| {
            format!(
                "binding {} (use --key-port 0 for any free port)",
                config.server.listen_addr
            )
        })?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls { "https" } else { "http" };

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
    eprintln!("  key-service: {scheme}://{addr}");
    eprintln!("  root token (admin):      {}", *admin_token);
    eprintln!("  service token:           {}", *service_token);
    eprintln!(
        "  try:  export SENTIA_KEY_ADDR={addr} SENTIA_TOKEN={}",
        *admin_token
    );
    eprint!("{tls_note}");
    eprintln!("        sentia key list");
    eprintln!("=========================================================\n");

    key_service::run(config, listener, Shutdown::on_signals()).await?;
    Ok(())
}
