//! `sentia dev` as a user starts it: every service in one process, then the rotation
//! commands against it.
#![allow(clippy::unwrap_used)]

mod shell;

use std::process::Stdio;
use std::time::Duration;

use shell::sentia;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn data_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("sentia_dev_{}_{nanos}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentia_dev_runs_the_scheduler_and_the_rotation_commands_drive_it() {
    let dir = data_dir();
    let d = dir.display().to_string();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_sentia"))
        .args([
            "dev",
            "--data-dir",
            &d,
            "--key-port",
            "0",
            "--vault-port",
            "0",
        ])
        .args(["--audit-port", "0", "--rotation-port", "0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stderr.take().unwrap()).lines();
    let (mut vault, mut rotation, mut root) = (String::new(), String::new(), String::new());
    let addr_of = |line: &str| {
        line.split("http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        if line.contains("vault-service: http://") {
            vault = addr_of(&line);
        } else if line.contains("rotation:") && line.contains("http://") {
            rotation = addr_of(&line);
        } else if let Some(t) = line.trim().strip_prefix("vault root token: ") {
            root = t.to_string();
            break;
        }
    }
    assert!(!vault.is_empty() && !rotation.is_empty() && !root.is_empty());
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let env = [
        ("SENTIA_ADDR", vault.as_str()),
        ("SENTIA_ROTATION_ADDR", rotation.as_str()),
        ("SENTIA_TOKEN", root.as_str()),
    ];

    let (ok, _, err) = sentia(&env, &["secret", "put", "dev/app/stripe"], b"sk_old").await;
    assert!(ok, "{err}");
    let (ok, out, err) = sentia(
        &env,
        &[
            "rotation",
            "set",
            "dev/app/*",
            "--every",
            "90d",
            "--rotator",
            "api_key",
            "--param",
            "prefix=sk_test_",
            "--param",
            "length=24",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("automated every 90d"), "{out}");
    let (ok, out, err) = sentia(&env, &["rotation", "policy", "dev/app/stripe"], b"").await;
    assert!(ok && out.contains("dev/app/*"), "{out}{err}");

    let (ok, _, err) = sentia(&env, &["rotation", "rotate-now", "dev/app/stripe"], b"").await;
    assert!(!ok && err.contains("--reason"), "{err}");
    let (ok, out, err) = sentia(
        &env,
        &[
            "rotation",
            "rotate-now",
            "dev/app/stripe",
            "--reason",
            "leaked in a log",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("step=create_pending"), "{out}");

    // The dev scheduler looks every second; the rotation reaches cleanup (grace: 1 day).
    let mut history = String::new();
    for _ in 0..100 {
        let (ok, out, err) = sentia(
            &env,
            &["rotation", "history", "dev/app/stripe", "--json"],
            b"",
        )
        .await;
        assert!(ok, "{err}");
        history = out;
        if history.contains("\"step\":\"cleanup\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(history.contains("\"step\":\"cleanup\""), "{history}");
    assert!(history.contains("leaked in a log"), "{history}");
    let (ok, value, err) = sentia(&env, &["secret", "get", "dev/app/stripe"], b"").await;
    assert!(ok, "{err}");
    assert!(
        value.trim().starts_with("sk_test_") && value.trim().len() == 8 + 24,
        "{value}"
    );

    let (ok, out, err) = sentia(&env, &["rotation", "status", "--prefix", "dev"], b"").await;
    assert!(ok, "{err}");
    assert!(out.contains("dev/app/stripe\tautomated"), "{out}");
    assert!(out.contains("cleanup"), "{out}");
    let _ = dev.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
