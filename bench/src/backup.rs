//! Backups at scale (10^5 secret versions by default): `sentia backup` create, verify,
//! restore and drill as secret versions per second, each as a ratio to the plain snapshot
//! dump (or load) of vault-service's database measured in the same run on the same server,
//! the archive's bytes per version, and how much each adds to the process's peak memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sentia_backup_ops::{Opener, Trust};
use sentia_backup_restore::{InProcess, Targets};
use sentia_crypto::MasterKey;
use sentia_db::snapshot;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::{CallContext, connect};

use crate::Args;

/// Peak resident set size of this process, from /proc (0 where there is none).
fn peak_rss_mb() -> f64 {
    crate::soak::status_mb("VmHWM:")
}

/// How much a phase adds to the process's memory at its peak: the high-water mark is reset
/// at the start (`/proc/self/clear_refs`, Linux 4.0+) and compared with the resident size
/// then, so services running in the same process count only for what they add.
struct Growth(f64);

impl Growth {
    fn start() -> Self {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self(crate::soak::status_mb("VmRSS:"))
    }

    fn mb(&self) -> f64 {
        (peak_rss_mb() - self.0).max(0.0)
    }
}

async fn targets(args: &Args, dir: &std::path::Path, tag: &str) -> anyhow::Result<Targets> {
    Ok(Targets {
        keys: crate::vault::database(args, dir, &format!("{tag}_keys")).await?,
        vault: crate::vault::database(args, dir, &format!("{tag}_vault")).await?,
        audit: crate::vault::database(args, dir, &format!("{tag}_audit")).await?,
        scheduler: crate::vault::database(args, dir, &format!("{tag}_rotation")).await?,
    })
}

/// Runs the backup suite.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sentia_bench_backup_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let master = MasterKey::generate().to_base64().to_string();
    let opener =
        || -> anyhow::Result<Opener> { Ok(Opener::Master(MasterKey::from_base64(&master)?)) };
    let source = targets(args, &dir, "bk").await?;
    let running = InProcess::start(&source, &opener()?, &dir).await?;
    let versions = args.versions;
    println!(
        "backup on {}: {versions} secret versions of 64 bytes, written {} x {} in flight\n",
        if args.postgres.is_some() {
            "Postgres"
        } else {
            "SQLite"
        },
        args.connections,
        args.concurrency
    );

    // The versions, one per path.
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let ch = connect(&running.vault, None).await?;
        clients.push(SecretServiceClient::new(
            CallContext::with_token(Some(running.admin_token()))?.wrap(ch),
        ));
    }
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.connections * args.concurrency {
        let mut c = clients[w % args.connections].clone();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = written.fetch_add(1, Ordering::Relaxed);
                if i >= versions {
                    return Ok::<_, tonic::Status>(());
                }
                c.put_secret(pb::PutSecretRequest {
                    path: format!("bench/app/s{i:07}"),
                    value: format!("{i:064}").into_bytes(),
                    ..Default::default()
                })
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "written in {:.1} s; peak RSS {:.0} MB",
        started.elapsed().as_secs_f64(),
        peak_rss_mb()
    );

    // Baseline: vault-service's database alone, dumped as a snapshot.
    let sqlite = sentia_db::is_sqlite(&source.vault);
    let pool = sentia_db::connect(&source.vault, 2, vault_service::store::MIGRATIONS).await?;
    let t = Instant::now();
    let mut dumped = Vec::new();
    snapshot::dump(&pool, sqlite, |batch| {
        dumped.extend_from_slice(&batch);
        async { true }
    })
    .await?;
    let dump = t.elapsed().as_secs_f64();
    pool.close().await;

    let grown = Growth::start();
    let t = Instant::now();
    let (archive, _) = sentia_backup_ops::create(&running.sources()?, &dir).await?;
    let create = t.elapsed().as_secs_f64();
    let create_mb = grown.mb();
    let bytes = std::fs::metadata(&archive)?.len();
    running.stop().await;

    let grown = Growth::start();
    let t = Instant::now();
    let (path, open) = (archive.clone(), opener()?);
    tokio::task::spawn_blocking(move || {
        sentia_backup_ops::check(&path, &open, &Trust::Embedded, &sentia_backup_ops::Quiet)
    })
    .await??;
    let check = t.elapsed().as_secs_f64();
    let check_mb = grown.mb();

    let grown = Growth::start();
    let t = Instant::now();
    let (path, open) = (archive.clone(), opener()?);
    let checked = tokio::task::spawn_blocking(move || {
        sentia_backup_ops::verify(&path, &open, &Trust::Embedded)
    })
    .await??;
    let verify = t.elapsed().as_secs_f64();
    let verify_mb = grown.mb();

    // Baseline: the same vault snapshot loaded into a fresh database.
    let fresh = crate::vault::database(args, &dir, "bk_load").await?;
    let pool = sentia_db::connect(&fresh, 2, vault_service::store::MIGRATIONS).await?;
    let t = Instant::now();
    snapshot::load(
        &pool,
        sqlite,
        vault_service::store::MIGRATIONS.seeded,
        &dumped,
        snapshot::Target::Empty,
    )
    .await?;
    let load = t.elapsed().as_secs_f64();
    pool.close().await;

    let target = targets(args, &dir, "bk_restored").await?;
    let grown = Growth::start();
    let t = Instant::now();
    sentia_backup_restore::restore(&checked, &target, false).await?;
    let restore = t.elapsed().as_secs_f64();
    let restore_mb = grown.mb();

    let grown = Growth::start();
    let t = Instant::now();
    let report = sentia_backup_restore::drill(&checked, &opener()?, &dir.join("drill")).await?;
    let drill = t.elapsed().as_secs_f64();
    let drill_mb = grown.mb();
    anyhow::ensure!(
        report.versions_read as u64 == versions,
        "the drill read {} versions of {versions}",
        report.versions_read
    );

    let n = versions as f64;
    println!(
        "\n{:<58} {:>8} {:>11} {:>7} {:>9}",
        "row", "seconds", "versions/s", "ratio", "+peak MB"
    );
    let row = |name: &str, secs: f64, base: f64, mb: Option<f64>| {
        println!(
            "{name:<58} {secs:>8.2} {:>11.0} {:>7.2} {:>9}",
            n / secs,
            base / secs,
            mb.map_or("-".into(), |m| format!("{m:.0}"))
        );
    };
    row(
        "snapshot dump of vault-service's database (baseline)",
        dump,
        dump,
        None,
    );
    row(
        "create: 4 snapshots, encrypt, sign, read back",
        create,
        dump,
        Some(create_mb),
    );
    row(
        "check: decrypt, digests, audit chain, holding nothing",
        check,
        dump,
        Some(check_mb),
    );
    row(
        "verify: as check, keeping the snapshots to restore",
        verify,
        dump,
        Some(verify_mb),
    );
    row(
        "snapshot load into a fresh database (baseline)",
        load,
        load,
        None,
    );
    row(
        "restore: 4 databases, read back, match digests",
        restore,
        load,
        Some(restore_mb),
    );
    row(
        "drill: restore + 4 services + read every version",
        drill,
        load,
        Some(drill_mb),
    );
    println!(
        "\narchive {bytes} bytes: {:.0} bytes per secret version (snapshot {:.0}); peak RSS {:.0} MB",
        bytes as f64 / n,
        dumped.len() as f64 / n,
        peak_rss_mb()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
