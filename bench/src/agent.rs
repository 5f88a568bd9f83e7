//! `sentia agent run`'s change-to-restart latency: a secret is put, and the clock stops when
//! the restarted program prints the new value. The baseline, measured in the same run on the
//! same services, is what the agent waits for itself: put → the SDK's `keep_fresh` holds the
//! new value (the change event, then a read). The difference is the agent's own work:
//! stopping the program and starting it again.

use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use sentia_backup_ops::Opener;
use sentia_backup_restore::{InProcess, Targets};
use sentia_client::Client;
use sentia_crypto::MasterKey;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Args;

const PATH: &str = "bench/agent/value";

/// Median and 99th percentile of `samples` (µs), in ms.
fn percentiles(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let ms = |q| crate::harness::percentile(&samples, q) as f64 / 1000.0;
    (ms(0.5), ms(0.99))
}

/// Runs the agent suite.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let sentia = std::env::current_exe()?.with_file_name("sentia");
    anyhow::ensure!(
        sentia.exists(),
        "{} is missing: build it beside the bench (cargo build --release -p sentia-cli)",
        sentia.display()
    );
    let dir = std::env::temp_dir().join(format!("sentia_bench_agent_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let targets = Targets {
        keys: crate::vault::database(args, &dir, "agent_keys").await?,
        vault: crate::vault::database(args, &dir, "agent_vault").await?,
        audit: crate::vault::database(args, &dir, "agent_audit").await?,
        scheduler: crate::vault::database(args, &dir, "agent_rotation").await?,
    };
    let running = InProcess::start(&targets, &Opener::Master(MasterKey::generate()), &dir).await?;
    let client = Client::connect(&running.vault, Some(running.admin_token()), None).await?;
    client.put(PATH, b"v0", None).await?;
    let changes = args.changes;
    println!("agent: {changes} changes of one secret, each waited for\n");

    // Baseline: put → the SDK's kept-fresh value changes (the change event, then a read of
    // the new value: what the agent itself waits for before it restarts the program).
    let mut fresh = client.keep_fresh(PATH).await?;
    let mut baseline = Vec::new();
    for i in 0..changes {
        let value = format!("w{i}");
        let t = Instant::now();
        client.put(PATH, value.as_bytes(), None).await?;
        while fresh.changed().await?.expose() != value.as_bytes() {}
        baseline.push(t.elapsed().as_micros() as u64);
    }
    drop(fresh);

    // The agent restarting `sh -c 'echo "$V"; exec sleep 600'` on every change.
    let mut agent = tokio::process::Command::new(&sentia)
        .args(["agent", "run", "--secret", &format!("V={PATH}"), "--"])
        .args(["sh", "-c", "echo \"$V\"; exec sleep 600"])
        .env("SENTIA_ADDR", &running.vault)
        .env("SENTIA_TOKEN", running.admin_token())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting sentia agent")?;
    let mut printed = BufReader::new(agent.stdout.take().context("no stdout")?).lines();
    let mut wait_for = async |value: &str| -> anyhow::Result<()> {
        while let Some(line) = printed.next_line().await? {
            if line == value {
                return Ok(());
            }
        }
        anyhow::bail!("the agent's program stopped printing before {value:?}")
    };
    wait_for(&format!("w{}", changes - 1)).await?;
    let mut restarts = Vec::new();
    for i in 0..changes {
        let value = format!("a{i}");
        let t = Instant::now();
        client.put(PATH, value.as_bytes(), None).await?;
        wait_for(&value).await?;
        restarts.push(t.elapsed().as_micros() as u64);
    }
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (b50, b99) = percentiles(baseline);
    let (r50, r99) = percentiles(restarts);
    println!(
        "{:<52} {:>9} {:>9} {:>8}",
        "row", "p50 ms", "p99 ms", "÷ p50"
    );
    println!(
        "{:<52} {b50:>9.1} {b99:>9.1} {:>8.2}",
        "put → keep_fresh holds the new value (baseline)", 1.0
    );
    println!(
        "{:<52} {r50:>9.1} {r99:>9.1} {:>8.2}",
        "put → agent's program restarted with the new value",
        r50 / b50
    );
    Ok(())
}
