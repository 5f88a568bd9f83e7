//! Runs the `sentia` binary as a user would: environment, arguments, standard input.
#![allow(clippy::unwrap_used, dead_code)]

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Starts `sentia args...` with `env` (and without `SENTIA_TOKEN` unless `env` gives it), for
/// a command that keeps running: no input, no output kept, its errors shown with the test's,
/// killed if the test drops it.
pub fn spawn(env: &[(&str, &str)], args: &[&str]) -> tokio::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sentia"))
        .args(args)
        .env_remove("SENTIA_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs `sentia args...` with `env` and `stdin`; returns (success, stdout, stderr).
pub async fn sentia(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentia"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
