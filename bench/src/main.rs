//! Benchmark harness. Starts the services in-process, then drives each RPC with the same
//! client setup (connections x concurrency) for the same duration, starting with the no-op
//! baseline (grpc.health.v1 Check on the same server). Prints req/s, p50/p99 latency, and each
//! RPC's throughput as a ratio to the baseline measured in the same run.

mod agent;
mod audit;
mod backup;
mod harness;
mod keys;
mod soak;
mod vault;

use clap::{Parser, ValueEnum};

/// Which services to measure.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// key-service and vault-service.
    All,
    /// key-service only.
    Keys,
    /// vault-service only.
    Vault,
    /// audit-service only.
    Audit,
    /// Sustained audited reads for `--minutes`, with memory use (not part of `all`).
    Soak,
    /// Backup create, verify, restore and drill of `--versions` secret versions (not part of
    /// `all`).
    Backup,
    /// `sentia agent run` change-to-restart latency over `--changes` changes (not part of
    /// `all`; needs the `sentia` binary built beside the bench).
    Agent,
}

#[derive(Parser, Clone)]
#[command(about = "Sentia throughput as ratios to a no-op gRPC call in the same run")]
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
    /// Which suite to run.
    #[arg(long, value_enum, default_value = "all")]
    suite: Suite,
    /// Postgres server for vault-service's database and the plain-INSERT baseline (a fresh
    /// database is created in it); SQLite when unset.
    #[arg(long, env = "SENTIA_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// Minutes of reads in the soak suite (each minute is one measured window).
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Audited writes the soak suite makes before its reads.
    #[arg(long, default_value_t = 100_000)]
    writes: u64,
    /// Secret versions the backup suite writes before it backs them up.
    #[arg(long, default_value_t = 100_000)]
    versions: u64,
    /// Changes of one secret the agent suite times.
    #[arg(long, default_value_t = 100)]
    changes: u64,
    /// Redis for an extra GetSecret row through the sealed-record cache.
    #[arg(long, env = "SENTIA_BENCH_REDIS_URL")]
    redis: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if matches!(args.suite, Suite::All | Suite::Keys) {
        keys::run(&args).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Vault) {
        println!();
        vault::run(&args).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Audit) {
        println!();
        audit::run(&args).await?;
    }
    if args.suite == Suite::Soak {
        soak::run(&args).await?;
    }
    if args.suite == Suite::Backup {
        backup::run(&args).await?;
    }
    if args.suite == Suite::Agent {
        agent::run(&args).await?;
    }
    Ok(())
}
