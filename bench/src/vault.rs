//! vault-service suite: GetSecret with the data-key cache and the in-process record cache on
//! and off (and through Redis when given), PutSecret, each as a ratio to grpc.health.v1
//! Check on the same server; PutSecret also as a ratio to a plain single-row INSERT on the
//! same database, with the same concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext, connect};
use sentia_runtime::{MapSource, Shutdown};
use sqlx::Executor;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Args;
use crate::harness::{Figures, drive, header, row};
use crate::keys::{KeyServiceUnderTest, SERVICE_TOKEN};

/// How clients reach a vault-service under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Plaintext HTTP/2 (loopback only).
    Plain,
    /// TLS, server certificate only (a bearer token authenticates).
    Tls,
    /// TLS with a client certificate required as well, as production deployments run.
    Mtls,
}

/// A vault-service instance in this process.
pub struct Vault {
    pub secrets: Vec<SecretServiceClient<AuthedChannel>>,
    health: Vec<HealthClient<tonic::transport::Channel>>,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<Result<(), vault_service::VaultError>>,
}

impl Vault {
    /// With both caches on and auditing into `audit_addr` with `durability`.
    pub async fn start_audited(
        args: &Args,
        key_addr: &str,
        db_url: &str,
        dir: &std::path::Path,
        audit_addr: &str,
        durability: &str,
    ) -> anyhow::Result<Self> {
        let spool = dir
            .join(format!("vault-audit-{durability}.journal"))
            .display()
            .to_string();
        let mut extra = vec![
            ("SENTIA_AUDIT_DISABLED", "false"),
            ("SENTIA_AUDIT_SERVICE_ADDR", audit_addr),
            ("SENTIA_AUDIT_SERVICE_TOKEN", SERVICE_TOKEN),
            ("SENTIA_AUDIT_SPOOL", spool.as_str()),
            ("SENTIA_AUDIT_DURABILITY", durability),
        ];
        extra.extend_from_slice(&CACHES_ON);
        Self::start(args, key_addr, db_url, dir, &extra).await
    }

    pub async fn start(
        args: &Args,
        key_addr: &str,
        db_url: &str,
        dir: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_over(args, key_addr, db_url, dir, extra, Transport::Plain, None).await
    }

    async fn start_over(
        args: &Args,
        key_addr: &str,
        db_url: &str,
        dir: &std::path::Path,
        extra: &[(&str, &str)],
        transport: Transport,
        pki: Option<&sentia_dev_pki::DevPki>,
    ) -> anyhow::Result<Self> {
        let root_file = dir.join(format!("root-{}", uuid::Uuid::new_v4()));
        let root_s = root_file.display().to_string();
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", db_url),
            ("SENTIA_KEY_SERVICE_ADDR", key_addr),
            ("SENTIA_KEY_SERVICE_TOKEN", SERVICE_TOKEN),
            ("SENTIA_ROOT_TOKEN_FILE", root_s.as_str()),
            ("SENTIA_AUTH_TOKENS", ""),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ];
        pairs.extend_from_slice(extra);
        let mut config = vault_service::Config::from_source(&MapSource::from_pairs(pairs))?;
        // The bench authenticates with a static admin token: token checks cost the same
        // for every row, so they do not skew the ratios.
        config.server.tokens = sentia_runtime::auth::TokenTable::from_plain([(
            "bench",
            sentia_runtime::Role::Admin,
            "bench-admin-token",
        )]);
        // One principal drives every row: bound it by the global limit alone, so a run with
        // more in flight than SENTIA_PRINCIPAL_CONCURRENCY measures throughput, not admission.
        config.server.principal_concurrency = config.server.concurrency_limit;
        let client_tls = match (transport, pki) {
            (Transport::Plain, _) => None,
            (_, None) => anyhow::bail!("a TLS row needs the bench's certificate authority"),
            (t, Some(pki)) => {
                config.server.tls = Some(pki.server_config("vault-service", t == Transport::Mtls)?);
                Some(pki.client_config((t == Transport::Mtls).then_some("bench-client"))?)
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(vault_service::run(config, listener, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut secrets = Vec::new();
        let mut health = Vec::new();
        for _ in 0..args.connections {
            let ch = connect(&addr, client_tls.as_ref()).await?;
            secrets.push(SecretServiceClient::new(
                CallContext::with_token(Some("bench-admin-token"))?.wrap(ch.clone()),
            ));
            health.push(HealthClient::new(ch));
        }
        Ok(Self {
            secrets,
            health,
            shutdown,
            server,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.server.await??;
        Ok(())
    }

    async fn baseline(&self, args: &Args) -> anyhow::Result<Figures> {
        let h = self.health.clone();
        drive(args.connections, args.concurrency, args.seconds, move |i| {
            let mut c = h[i].clone();
            async move {
                c.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
            }
        })
        .await
    }

    pub async fn gets(&self, args: &Args, path: &str) -> anyhow::Result<Figures> {
        let (s, path) = (self.secrets.clone(), path.to_string());
        drive(args.connections, args.concurrency, args.seconds, move |i| {
            let (mut c, path) = (s[i].clone(), path.clone());
            async move {
                c.get_secret(pb::GetSecretRequest {
                    path,
                    selector: None,
                    allow_expired: false,
                })
                .await
                .map(|_| ())
            }
        })
        .await
    }
}

/// Both caches on, as vault-service runs by default.
const CACHES_ON: [(&str, &str); 2] = [
    ("SENTIA_DEK_CACHE_TTL", "5m"),
    ("SENTIA_LOCAL_CACHE_TTL", "5m"),
];

/// A fresh database on the bench's Postgres, or a SQLite file.
pub async fn database(args: &Args, dir: &std::path::Path, name: &str) -> anyhow::Result<String> {
    match &args.postgres {
        Some(url) => {
            sqlx::any::install_default_drivers();
            // Named like the test databases (`…_{pid}_{nanos}`), so the test harness drops
            // what a bench run left behind once its process is gone.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            let db = format!("sentia_bench_{name}_{}_{nanos}", std::process::id());
            let admin = sqlx::AnyPool::connect(url).await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
                .await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .await?;
            let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
            Ok(format!("{base}/{db}"))
        }
        None => Ok(format!(
            "sqlite://{}?mode=rwc",
            dir.join(format!("{name}.db")).display()
        )),
    }
}

/// The plain-INSERT baseline: a fresh database on the same server, the same concurrency, one
/// autocommit single-row INSERT (with a `payload_len`-byte text column) per call, through a
/// pool as large as the services'.
pub async fn plain_inserts(
    args: &Args,
    dir: &std::path::Path,
    name: &str,
    payload_len: usize,
) -> anyhow::Result<Figures> {
    sqlx::any::install_default_drivers();
    let plain_db = database(args, dir, name).await?;
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(10)
        .connect(&plain_db)
        .await?;
    pool.execute("CREATE TABLE plain_rows (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)")
        .await?;
    let ids = Arc::new(AtomicU64::new(0));
    let payload = "x".repeat(payload_len);
    drive(
        args.connections,
        args.concurrency,
        args.seconds,
        move |_| {
            let (pool, id, payload) = (
                pool.clone(),
                ids.fetch_add(1, Ordering::Relaxed) as i64,
                payload.clone(),
            );
            async move {
                sqlx::query("INSERT INTO plain_rows (id, payload) VALUES ($1, $2)")
                    .bind(id)
                    .bind(payload)
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| tonic::Status::internal(e.to_string()))
            }
        },
    )
    .await
}

/// Runs the vault-service rows.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let ks = KeyServiceUnderTest::start().await?;
    let dir = std::env::temp_dir().join(format!("sentia_bench_vault_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = database(args, &dir, "vault").await?;
    let backend = if args.postgres.is_some() {
        "Postgres"
    } else {
        "SQLite"
    };
    let (n, m, s) = (args.connections, args.concurrency, args.seconds);
    println!(
        "vault-service benchmark on {backend}: {n} connections x {m} in flight, {s} s per row, \
         key-service, vault-service and client share this machine"
    );
    println!(
        "every row unless it says otherwise: plaintext HTTP/2 on loopback, static admin token, \
         auditing off, data-key cache and record cache on (TTL 5m), one 64 B secret read; \
         audited rows: audit-service in this process on its own {backend} database\n"
    );
    let cached = Vault::start(args, &ks.addr, &db, &dir, &CACHES_ON).await?;
    let mut c = cached.secrets[0].clone();
    let value = vec![b'x'; 64];
    c.put_secret(pb::PutSecretRequest {
        path: "bench/app/hot".into(),
        value: value.clone(),
        ..Default::default()
    })
    .await?;

    header();
    let baseline = cached.baseline(args).await?;
    row("health Check (baseline)", &baseline, &baseline);
    let f = cached.gets(args, "bench/app/hot").await?;
    row("GetSecret 64 B (DEK cache on)", &f, &baseline);
    for i in 0..150 {
        c.put_secret(pb::PutSecretRequest {
            path: format!("bench/list/s{i:03}"),
            value: value.clone(),
            ..Default::default()
        })
        .await?;
    }
    let sl = cached.secrets.clone();
    let f = drive(n, m, s, move |i| {
        let mut c = sl[i].clone();
        async move {
            c.list_secrets(pb::ListSecretsRequest {
                prefix: "bench/list".into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    row("ListSecrets, page of 100", &f, &baseline);

    // Each configuration runs on its own vault-service, against its own baseline.
    let mut configs: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "GetSecret 64 B (DEK cache off)",
            vec![
                ("SENTIA_DEK_CACHE_TTL", "0"),
                ("SENTIA_LOCAL_CACHE_TTL", "5m"),
            ],
        ),
        (
            "GetSecret 64 B (no record cache)",
            vec![
                ("SENTIA_DEK_CACHE_TTL", "5m"),
                ("SENTIA_LOCAL_CACHE_TTL", "0"),
            ],
        ),
        (
            "GetSecret 64 B (no caches at all)",
            vec![
                ("SENTIA_DEK_CACHE_TTL", "0"),
                ("SENTIA_LOCAL_CACHE_TTL", "0"),
            ],
        ),
    ];
    let prefix = format!("bench{}:", std::process::id());
    if let Some(redis) = &args.redis {
        configs.push((
            "GetSecret 64 B (Redis, no record cache)",
            vec![
                ("SENTIA_REDIS_URL", redis.as_str()),
                ("SENTIA_REDIS_PREFIX", prefix.as_str()),
                ("SENTIA_DEK_CACHE_TTL", "5m"),
                ("SENTIA_LOCAL_CACHE_TTL", "0"),
            ],
        ));
    }
    for (name, extra) in configs {
        let v = Vault::start(args, &ks.addr, &db, &dir, &extra).await?;
        let b = v.baseline(args).await?;
        let f = v.gets(args, "bench/app/hot").await?;
        row(name, &f, &b);
        v.stop().await?;
    }

    // Production runs TLS (mTLS between services): the same reads over each transport, as
    // ratios to the plaintext no-op above and to the no-op over the same transport.
    let pki = sentia_dev_pki::DevPki::generate()?;
    for (name, transport) in [("TLS", Transport::Tls), ("mTLS", Transport::Mtls)] {
        let v =
            Vault::start_over(args, &ks.addr, &db, &dir, &CACHES_ON, transport, Some(&pki)).await?;
        let b = v.baseline(args).await?;
        row(&format!("health Check over {name}"), &b, &baseline);
        let f = v.gets(args, "bench/app/hot").await?;
        row(&format!("GetSecret 64 B over {name}"), &f, &baseline);
        row(&format!("  same, ÷ {name} health Check"), &f, &b);
        v.stop().await?;
    }

    // The price of fail-closed auditing: every read waits until its event is durable, as
    // SENTIA_AUDIT_DURABILITY says (stored by audit-service, or in the local journal).
    let audit = crate::audit::AuditUnderTest::start(args, &ks.addr, &dir, "vault_audit").await?;
    for durability in ["remote", "local-fsync", "local"] {
        let audited =
            Vault::start_audited(args, &ks.addr, &db, &dir, &audit.addr, durability).await?;
        let b = audited.baseline(args).await?;
        let f = audited.gets(args, "bench/app/hot").await?;
        row(&format!("GetSecret 64 B, audited {durability}"), &f, &b);
        audited.stop().await?;
    }
    audit.stop().await?;

    // Each worker writes its own path, so rows measure writing, not check-and-set contention.
    let counter = Arc::new(AtomicU64::new(0));
    let (sc, v, ctr) = (cached.secrets.clone(), value.clone(), counter.clone());
    let puts = drive(n, m, s, move |i| {
        let (mut c, v) = (sc[i].clone(), v.clone());
        let k = ctr.fetch_add(1, Ordering::Relaxed) % 64;
        async move {
            c.put_secret(pb::PutSecretRequest {
                path: format!("bench/app/w{k}"),
                value: v,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    row("PutSecret 64 B", &puts, &baseline);

    // Every worker writes one hot path without check-and-set: how many of those writes
    // succeed (the rest are refused as contended), not just how fast.
    let (refused, tried) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (sc, v, r, t) = (
        cached.secrets.clone(),
        value.clone(),
        refused.clone(),
        tried.clone(),
    );
    let hot = drive(n, m, s, move |i| {
        let (mut c, v, r, t) = (sc[i].clone(), v.clone(), r.clone(), t.clone());
        async move {
            t.fetch_add(1, Ordering::Relaxed);
            match c
                .put_secret(pb::PutSecretRequest {
                    path: "bench/app/one-hot-path".into(),
                    value: v,
                    ..Default::default()
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.code(), tonic::Code::Aborted | tonic::Code::Unavailable) => {
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    row("PutSecret, all writers on one path", &hot, &baseline);
    let (refused, tried) = (
        refused.load(Ordering::Relaxed),
        tried.load(Ordering::Relaxed),
    );
    println!(
        "  unconditional writes to one path that succeeded: {:.2}% ({} refused of {} \
         tried, warm-up included)",
        100.0 * (tried - refused) as f64 / tried.max(1) as f64,
        refused,
        tried
    );

    let inserts = plain_inserts(args, &dir, "plain", 64).await?;
    row(&format!("plain INSERT on {backend}"), &inserts, &baseline);
    println!(
        "\nPutSecret / plain INSERT: {:.2}x  (PutSecret = key-service GenerateDataKey + one \
         transaction: metadata, version, labels, event)",
        puts.rps / inserts.rps
    );
    cached.stop().await?;
    ks.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
