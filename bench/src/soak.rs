//! Sustained load: audited GetSecret (auditing as deployed: `SENTIA_AUDIT_DURABILITY=remote`,
//! audit-service on its own database) for `--minutes`, printing each minute's throughput as a
//! ratio to the first minute, and the process's resident memory idle, after `--writes` writes (10^5 by default) and
//! after each minute of reads. Every service and the client share this one process, so RSS
//! is theirs together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sentia_proto::vault::v1 as pb;

use crate::Args;
use crate::keys::KeyServiceUnderTest;
use crate::vault::Vault;

/// Resident set size of this process, from /proc (0 where there is none).
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:`), in MB.
pub fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the soak.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let ks = KeyServiceUnderTest::start().await?;
    let dir = std::env::temp_dir().join(format!("sentia_bench_soak_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = crate::vault::database(args, &dir, "soak").await?;
    let audit = crate::audit::AuditUnderTest::start(args, &ks.addr, &dir, "soak_audit").await?;
    let vault = Vault::start_audited(args, &ks.addr, &db, &dir, &audit.addr, "remote").await?;
    let (n, m) = (args.connections, args.concurrency);
    println!(
        "soak on {}: audited (remote) GetSecret, {n} connections x {m} in flight, {} minute(s)\n",
        if args.postgres.is_some() {
            "Postgres"
        } else {
            "SQLite"
        },
        args.minutes
    );
    println!("RSS idle: {:.0} MB", rss_mb());

    // Audited writes over 1,000 paths (10^5 by default).
    let writes = args.writes;
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..n * m {
        let mut c = vault.secrets[w % n].clone();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = written.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return Ok::<_, tonic::Status>(());
                }
                c.put_secret(pb::PutSecretRequest {
                    path: format!("soak/app/s{:04}", i % 1000),
                    value: vec![b'x'; 64],
                    ..Default::default()
                })
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("RSS after {writes} writes: {:.0} MB", rss_mb());

    println!(
        "\n{:<8} {:>10} {:>12} {:>9} {:>9} {:>8}",
        "minute", "req/s", "÷ minute 1", "p50 µs", "p99 µs", "RSS MB"
    );
    let mut first = None;
    for minute in 1..=args.minutes {
        let f = vault
            .gets(
                &Args {
                    seconds: 59,
                    ..args.clone()
                },
                "soak/app/s0001",
            )
            .await?;
        let base = *first.get_or_insert(f.rps);
        println!(
            "{minute:<8} {:>10.0} {:>11.2}x {:>9} {:>9} {:>8.0}",
            f.rps,
            f.rps / base,
            f.p50_us,
            f.p99_us,
            rss_mb()
        );
    }
    vault.stop().await?;
    audit.stop().await?;
    ks.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
