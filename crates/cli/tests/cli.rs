//! The `sentia` binary against real key-service and vault-service: what an operator types.
#![allow(clippy::unwrap_used)]

#[path = "../../../services/vault-service/tests/support/mod.rs"]
mod support;

use std::process::Stdio;

use support::{Backend, Stack};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn sentia(s: &Stack, token: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentia"))
        .args(args)
        .env("SENTIA_ADDR", &s.addr)
        .env("SENTIA_TOKEN", token)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_writes_reads_and_hands_out_a_credential_from_the_shell() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    let root = s.root_token.clone();
    let (ok, out, err) = sentia(
        &s,
        &root,
        &["secret", "put", "dev/app/db", "--tier", "1"],
        b"pa55word\n",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "dev/app/db: version 1");
    let (ok, out, _) = sentia(&s, &root, &["secret", "get", "dev/app/db"], b"").await;
    assert!(ok);
    assert_eq!(out, "pa55word", "stdin's trailing newline is not stored");
    let (ok, out, _) = sentia(&s, &root, &["secret", "list", "--json"], b"").await;
    assert!(ok && out.contains("\"path\":\"dev/app/db\""), "{out}");

    let (ok, out, err) = sentia(
        &s,
        &root,
        &[
            "token",
            "create-credential",
            "ci",
            "--policy",
            "developer",
            "--json",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let cred: serde_json::Value = serde_json::from_str(&out).unwrap();
    let role_id = cred["role_id"].as_str().unwrap();
    let secret_id = cred["secret_id"].as_str().unwrap();
    let (ok, jwt, err) = sentia(
        &s,
        "",
        &["login", "--role-id", role_id],
        secret_id.as_bytes(),
    )
    .await;
    assert!(ok, "{err}");
    let jwt = jwt.trim();
    let (ok, out, _) = sentia(&s, jwt, &["token", "whoami"], b"").await;
    assert!(ok && out.contains("developer"), "{out}");
    let (ok, _, err) = sentia(&s, jwt, &["secret", "put", "prod/app/db"], b"x").await;
    assert!(!ok);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (ok, _, err) = sentia(&s, &root, &["secret", "get", "bad//path"], b"").await;
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("empty segment"),
        "{err}"
    );
    s.stop().await;
}
