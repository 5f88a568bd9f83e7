//! Benchmark harness. Starts key-service in-process (SQLite, plaintext loopback), then drives
//! each RPC with the same client setup (connections x concurrency) for the same duration,
//! starting with the no-op baseline (grpc.health.v1 Check on the same server). Prints req/s,
//! p50/p99 latency, and each RPC's throughput as a ratio to the baseline measured in this run.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use key_service::{Config, MasterSource};
use sentia_crypto::MasterKey;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::keys::v1::*;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::client::{AuthedChannel, CallContext, connect};
use sentia_runtime::{MapSource, Role, ServerConfig, Shutdown};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
#[command(about = "key-service throughput as ratios to a no-op gRPC call in the same run")]
struct Args {
    /// Seconds per measured RPC (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

struct Figures {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn drive<F, Fut>(
    clients: usize,
    per_client: usize,
    seconds: u64,
    call: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let run = |window: Duration, record: bool| {
        let call = call.clone();
        async move {
            let deadline = Instant::now() + window;
            let mut tasks = Vec::new();
            for worker in 0..clients * per_client {
                let call = call.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        call(worker % clients).await?;
                        if record {
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Ok::<_, tonic::Status>(lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(
                    t.await
                        .context("worker panicked")?
                        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?,
                );
            }
            Ok::<_, anyhow::Error>(all)
        }
    };
    run(Duration::from_secs(1), false).await?;
    let started = Instant::now();
    let mut lat = run(Duration::from_secs(seconds), true).await?;
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Figures {
        rps: lat.len() as f64 / elapsed,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = "bench-service-token";
    let db = std::env::temp_dir().join(format!("sentia_bench_{}.db", std::process::id()));
    let mut config = Config::from_source(&MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_SEAL_TYPE", "shamir"),
    ]))?;
    config.server = ServerConfig::dev(
        "key-service",
        TokenTable::from_plain([("bench", Role::Service, token)]),
    );
    config.database_url = format!("sqlite://{}?mode=rwc", db.display());
    config.master = MasterSource::Key(MasterKey::generate());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(key_service::run(config, listener, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

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
    println!(
        "{:<28} {:>10} {:>8} {:>9} {:>9}",
        "rpc", "req/s", "ratio", "p50 µs", "p99 µs"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:<28} {:>10.0} {:>7.2}x {:>9} {:>9}",
            name,
            f.rps,
            f.rps / baseline.rps,
            f.p50_us,
            f.p99_us
        )
    };
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

    shutdown.trigger();
    server.await??;
    let _ = std::fs::remove_file(&db);
    Ok(())
}
