//! key-service suite: Encrypt/Decrypt (32 B, 1 KiB), UnwrapDataKey, GenerateDataKey, each as a
//! ratio to grpc.health.v1 Check on the same server.

use std::time::Duration;

use key_service::{Config, MasterSource};
use sentia_crypto::MasterKey;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::keys::v1::*;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::{AuthedChannel, CallContext, connect};
use sentia_runtime::{Role, ServerConfig, Shutdown};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Args;
use crate::harness::{Figures, drive, header, row};

/// key-service rows: transit encryption and data keys.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let ks = KeyServiceUnderTest::start().await?;
    let (addr, token) = (ks.addr.clone(), CRYPTO_TOKEN);
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(&addr, None).await?);
    }
    let keys: Vec<KeyServiceClient<AuthedChannel>> = channels
        .iter()
        .map(|c| {
            Ok(KeyServiceClient::new(
                CallContext::with_token(Some(token))?.wrap(c.clone()),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let health: Vec<HealthClient<tonic::transport::Channel>> = channels
        .iter()
        .map(|c| HealthClient::new(c.clone()))
        .collect();

    let ctx = b"vault|bench/secret|1".to_vec();
    let mut c0 = keys[0].clone();
    let mut samples = Vec::new();
    for size in [32usize, 1024] {
        let plaintext = vec![7u8; size];
        let ct = c0
            .encrypt(EncryptRequest {
                key_name: "vault".into(),
                plaintext: plaintext.clone(),
                encryption_context: ctx.clone(),
            })
            .await?
            .into_inner()
            .ciphertext;
        samples.push((size, plaintext, ct));
    }
    let dk = c0
        .generate_data_key(GenerateDataKeyRequest {
            key_name: "vault".into(),
            encryption_context: ctx.clone(),
        })
        .await?
        .into_inner()
        .wrapped_key;

    let (n, m, s) = (args.connections, args.concurrency, args.seconds);
    println!(
        "key-service benchmark: {n} connections x {m} in flight, {s} s per row, client and server share this machine\n"
    );
    let h = health.clone();
    let baseline = drive(n, m, s, move |i| {
        let mut c = h[i].clone();
        async move {
            c.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    header();
    let row = |name: &str, f: &Figures| row(name, f, &baseline);
    row("health Check (baseline)", &baseline);

    for (size, plaintext, ct) in samples {
        let (k, p, c) = (keys.clone(), plaintext.clone(), ctx.clone());
        let f = drive(n, m, s, move |i| {
            let (mut cl, p, c) = (k[i].clone(), p.clone(), c.clone());
            async move {
                cl.encrypt(EncryptRequest {
                    key_name: "vault".into(),
                    plaintext: p,
                    encryption_context: c,
                })
                .await
                .map(|_| ())
            }
        })
        .await?;
        row(&format!("Encrypt {size} B"), &f);
        let (k, ct, c) = (keys.clone(), ct.clone(), ctx.clone());
        let f = drive(n, m, s, move |i| {
            let (mut cl, ct, c) = (k[i].clone(), ct.clone(), c.clone());
            async move {
                cl.decrypt(DecryptRequest {
                    ciphertext: ct,
                    encryption_context: c,
                })
                .await
                .map(|_| ())
            }
        })
        .await?;
        row(&format!("Decrypt {size} B"), &f);
    }
    let (k, w, c) = (keys.clone(), dk.clone(), ctx.clone());
    let f = drive(n, m, s, move |i| {
        let (mut cl, w, c) = (k[i].clone(), w.clone(), c.clone());
        async move {
            cl.unwrap_data_key(UnwrapDataKeyRequest {
                wrapped_key: w,
                encryption_context: c,
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    row("UnwrapDataKey (32 B key)", &f);
    let (k, c) = (keys.clone(), ctx.clone());
    let f = drive(n, m, s, move |i| {
        let (mut cl, c) = (k[i].clone(), c.clone());
        async move {
            cl.generate_data_key(GenerateDataKeyRequest {
                key_name: "vault".into(),
                encryption_context: c,
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    row("GenerateDataKey (32 B key)", &f);

    ks.stop().await
}

/// vault-service's token at the bench's key-service (the shipped grants apply to it).
pub const SERVICE_TOKEN: &str = "bench-service-token";
/// audit-service's token there (signs checkpoints).
pub const AUDIT_TOKEN: &str = "bench-audit-token";
/// A bench identity granted every operation on every key, for the transit rows.
pub const CRYPTO_TOKEN: &str = "bench-crypto-token";

/// key-service in this process on a throwaway SQLite file.
pub struct KeyServiceUnderTest {
    /// Listening address.
    pub addr: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<Result<(), key_service::KeyError>>,
    db: std::path::PathBuf,
}

impl KeyServiceUnderTest {
    /// Starts it and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let db = std::env::temp_dir().join(format!("sentia_bench_keys_{}.db", std::process::id()));
        let server = ServerConfig::dev(
            "key-service",
            TokenTable::from_plain([
                ("vault-service", Role::Service, SERVICE_TOKEN),
                ("audit-service", Role::Service, AUDIT_TOKEN),
                ("bench", Role::Service, CRYPTO_TOKEN),
            ]),
        );
        let mut config = Config::in_process(
            server,
            sentia_runtime::audit::AuditConfig::disabled(),
            MasterSource::Key(MasterKey::generate()),
        )?;
        config.grants = key_service::grants::Grants::parse(&format!(
            "{}\n[bench]\ngrants = [{{ keys = [\"*\"], operations = [\"generate_data_key\", \
             \"unwrap_data_key\", \"encrypt\", \"decrypt\"] }}]\n",
            key_service::grants::DEFAULT_GRANTS
        ))
        .map_err(anyhow::Error::msg)?;
        config.database_url = format!("sqlite://{}?mode=rwc", db.display());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(key_service::run(config, listener, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self {
            addr,
            shutdown,
            server,
            db,
        })
    }

    /// Stops it and removes its database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.server.await??;
        let _ = std::fs::remove_file(&self.db);
        Ok(())
    }
}
