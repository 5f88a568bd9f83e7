//! The `sentia` binary against real key-service and vault-service: what an operator types.
#![allow(clippy::unwrap_used)]

mod shell;
use sentia_testkit as support;

use support::{Backend, Stack};
use tokio::process::Command;

async fn sentia(s: &Stack, token: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    shell::sentia(
        &[("SENTIA_ADDR", &s.addr), ("SENTIA_TOKEN", token)],
        args,
        stdin,
    )
    .await
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
    // A mistaken put, undone: version 1's value comes back as version 3.
    let (ok, _, err) = sentia(&s, &root, &["secret", "put", "dev/app/db"], b"typo").await;
    assert!(ok, "{err}");
    let restore = [
        "secret",
        "restore",
        "dev/app/db",
        "--version",
        "1",
        "--cas",
        "2",
    ];
    let (ok, out, err) = sentia(&s, &root, &restore, b"").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "dev/app/db: version 3 (the value of version 1)");
    assert!(
        !out.contains("pa55word"),
        "a restore never prints the value"
    );
    let (ok, out, _) = sentia(&s, &root, &["secret", "get", "dev/app/db"], b"").await;
    assert!(ok);
    assert_eq!(out, "pa55word");
    let (ok, _, err) = sentia(&s, &root, &restore, b"").await;
    assert!(!ok && err.contains("check-and-set"), "{err}");
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

    // The credential's lifecycle from the shell: listed, its secret id replaced, revoked.
    let (ok, out, err) = sentia(&s, &root, &["token", "list-credentials"], b"").await;
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.contains(role_id)).unwrap();
    assert!(
        line.contains("ci") && line.contains("developer") && line.contains("live"),
        "{out}"
    );
    let (ok, out, err) = sentia(
        &s,
        &root,
        &["token", "rotate-credential", role_id, "--json"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_secret = rotated["secret_id"].as_str().unwrap();
    assert_ne!(new_secret, secret_id);
    let (ok, _, _) = sentia(
        &s,
        "",
        &["login", "--role-id", role_id],
        secret_id.as_bytes(),
    )
    .await;
    assert!(!ok, "the replaced secret id no longer logs in");
    let (ok, _, err) = sentia(&s, &root, &["token", "revoke-credential", role_id], b"").await;
    assert!(ok, "{err}");
    let (ok, _, err) = sentia(&s, jwt, &["token", "whoami"], b"").await;
    assert!(
        !ok && err.contains("Unauthenticated"),
        "its token stops working: {err}"
    );
    let (ok, _, _) = sentia(
        &s,
        "",
        &["login", "--role-id", role_id],
        new_secret.as_bytes(),
    )
    .await;
    assert!(!ok, "a revoked credential does not log in");
    let (ok, out, _) = sentia(
        &s,
        &root,
        &["token", "list-credentials", "--include-revoked"],
        b"",
    )
    .await;
    assert!(ok && out.contains("revoked"), "{out}");
    s.stop().await;
}

/// audit-service (with checkpoints every 3 records) over a key-service, in this process.
async fn audit_stack() -> (support::keys::Running, String, sentia_runtime::Shutdown) {
    use support::keys;
    let keys = keys::Running::start(&keys::sqlite_url(), &[]).await;
    let db = keys::sqlite_url();
    let tokens = keys::tokens();
    let config = audit_service::Config::from_source(&sentia_runtime::MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_DATABASE_URL", db.as_str()),
        ("SENTIA_KEY_SERVICE_ADDR", keys.addr.as_str()),
        ("SENTIA_KEY_SERVICE_TOKEN", keys::AUDIT_TOKEN),
        ("SENTIA_AUTH_TOKENS", tokens.as_str()),
        ("SENTIA_CHECKPOINT_EVERY", "3"),
        ("SENTIA_CHECKPOINT_INTERVAL", "100ms"),
    ]))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = sentia_runtime::Shutdown::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { audit_service::run(config, listener, stop).await.unwrap() });
    (keys, addr, shutdown)
}

async fn sentia_audit(
    keys: &support::keys::Running,
    addr: &str,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sentia"))
        .arg("audit")
        .args(args)
        .env("SENTIA_AUDIT_ADDR", addr)
        .env("SENTIA_KEY_ADDR", &keys.addr)
        .env("SENTIA_TOKEN", support::keys::ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_an_edited_line_is_named() {
    use sentia_proto::audit::v1 as apb;
    let (keys, addr, shutdown) = audit_stack().await;
    let channel = sentia_runtime::client::connect_lazy(&addr, None).unwrap();
    let mut emitter = apb::audit_service_client::AuditServiceClient::new(
        sentia_runtime::client::CallContext::with_token(Some(support::keys::SERVICE_TOKEN))
            .unwrap()
            .wrap(channel),
    );
    let event = |i: u64, ok: bool| apb::AuditEvent {
        time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000 + i as i64,
            nanos: 0,
        }),
        event_type: "secret_access".into(),
        principal: "app:billing".into(),
        secret_name: "prod/app/db".into(),
        operation: "read".into(),
        success: ok,
        status_code: if ok {
            "OK".into()
        } else {
            "PERMISSION_DENIED".into()
        },
        service: "vault-service".into(),
        emitter_id: "e1".into(),
        emitter_sequence: i,
        ..Default::default()
    };
    for _ in 0..100 {
        if emitter
            .append_events(apb::AppendEventsRequest {
                events: (1..=6).map(|i| event(i, i != 4)).collect(),
            })
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;

    let (ok, export, err) = sentia_audit(&keys, &addr, &["export"]).await;
    assert!(ok, "{err}");
    assert!(
        export
            .lines()
            .filter(|l| l.contains("\"checkpoint\""))
            .count()
            >= 1,
        "{export}"
    );
    let file = std::env::temp_dir().join(format!("{}.jsonl", support::unique("export")));
    std::fs::write(&file, &export).unwrap();
    let f = file.display().to_string();
    let (ok, out, err) = sentia_audit(&keys, &addr, &["verify", "--file", &f]).await;
    assert!(ok, "{out}{err}");
    // The six events and the export's own read, which is recorded before it runs.
    assert!(out.contains("valid: 7 records"), "{out}");
    assert!(
        export.lines().last().unwrap().contains("\"type\":\"end\""),
        "{export}"
    );

    // An export cut short — even right after a checkpoint line — does not verify.
    let lines: Vec<&str> = export.lines().collect();
    let after_checkpoint = 1 + lines
        .iter()
        .position(|l| l.contains("\"type\":\"checkpoint\""))
        .unwrap();
    assert!(after_checkpoint < lines.len() - 1, "{export}");
    for keep in [lines.len() - 1, after_checkpoint] {
        std::fs::write(&file, lines[..keep].join("\n")).unwrap();
        let (ok, out, _) = sentia_audit(&keys, &addr, &["verify", "--file", &f]).await;
        assert!(!ok, "an export cut to {keep} lines must not verify: {out}");
        assert!(out.contains("cut"), "{out}");
    }

    // Someone edits record 4 to hide a refusal.
    let edited: String = export
        .lines()
        .map(|l| {
            if l.contains("\"sequence\":4") && l.contains("\"record\"") {
                l.replace("\"success\":false", "\"success\":true")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&file, edited).unwrap();
    let (ok, out, _) = sentia_audit(&keys, &addr, &["verify", "--file", &f]).await;
    assert!(!ok, "an edited export must not verify");
    assert!(out.contains("INVALID at sequence 4"), "{out}");

    let (ok, csv, err) = sentia_audit(
        &keys,
        &addr,
        &["report", "--since", "3650d", "--format", "csv"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        csv.contains("\"prod/app/db\",5,\"app:billing\",0,\"\",1,\"app:billing\",0,0"),
        "{csv}"
    );
    shutdown.trigger();
    keys.stop().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_init_issues_certificates_that_a_health_check_over_mutual_tls_uses() {
    let dir = std::env::temp_dir().join(support::unique("pki"));
    let d = dir.display().to_string();
    let (ok, _, err) = shell::sentia(
        &[],
        &["pki", "init", "--dir", &d, "key-service", "ops"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, _) = shell::sentia(&[], &["pki", "init", "--dir", &d, "key-service"], b"").await;
    assert!(
        ok && out.contains("nothing to do"),
        "a second run keeps the first CA: {out}"
    );
    let file = |n: &str| dir.join(n).display().to_string();
    let keys = support::keys::Running::start(
        &support::keys::sqlite_url(),
        &[
            ("SENTIA_TLS_CERT", file("key-service.pem").as_str()),
            ("SENTIA_TLS_KEY", file("key-service-key.pem").as_str()),
            ("SENTIA_TLS_CLIENT_CA", file("ca.pem").as_str()),
        ],
    )
    .await;
    let addr = format!(
        "https://localhost:{}",
        keys.addr.rsplit(':').next().unwrap()
    );
    let (ok, out, err) = shell::sentia(
        &[
            ("SENTIA_CLIENT_CA", file("ca.pem").as_str()),
            ("SENTIA_CLIENT_CERT", file("ops.pem").as_str()),
            ("SENTIA_CLIENT_KEY", file("ops-key.pem").as_str()),
        ],
        &["health", &addr],
        b"",
    )
    .await;
    assert!(ok && out.trim() == "SERVING", "{out}{err}");
    let (ok, _, err) = shell::sentia(
        &[("SENTIA_CA_CERT", file("ca.pem").as_str())],
        &["health", &addr],
        b"",
    )
    .await;
    assert!(!ok, "key-service wants a client certificate: {err}");
    assert!(
        err.contains("SENTIA_CA_CERT is deprecated"),
        "the old variable name is still read, with a warning: {err}"
    );
    keys.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// DR scenario 1 (lost master key) as an operator runs it: make a recovery key pair offline,
/// give key-service the public half; after the master is lost, start key-service for
/// recovery, unseal with the private key file, and rotate to a new master that then opens
/// everything encrypted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_master_key_runbook_works_from_the_shell() {
    use sentia_proto::keys::v1::{DecryptRequest, EncryptRequest};
    let dir = support::scratch_path(&support::unique("sentia_recovery"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("recovery.key");
    let file_s = file.display().to_string();
    let keygen = ["key", "recovery-keygen", "--out", file_s.as_str(), "--json"];
    let (ok, out, err) = shell::sentia(&[], &keygen, b"").await;
    assert!(ok, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let public = made["public_key"].as_str().unwrap().to_string();
    let private = std::fs::read_to_string(&file).unwrap();
    assert!(
        !out.contains(private.trim()),
        "the private key is never printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (ok, _, err) = shell::sentia(&[], &keygen, b"").await;
    assert!(!ok, "an existing recovery key is never overwritten");
    assert!(err.contains(&file_s), "{err}");

    let db = support::sqlite_url();
    let ks = support::keys::Running::start(&db, &[("SENTIA_RECOVERY_PUBLIC_KEY", &public)]).await;
    let sealed_value = ks
        .client(Some(support::keys::CRYPTO_TOKEN))
        .await
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"before".to_vec(),
            encryption_context: b"ctx".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    ks.stop().await;

    let ks = support::keys::Running::start(&db, &[("SENTIA_SEAL_TYPE", "recovery")]).await;
    let env = [
        ("SENTIA_KEY_ADDR", ks.addr.as_str()),
        ("SENTIA_TOKEN", support::keys::ADMIN_TOKEN),
    ];
    let (ok, out, err) = shell::sentia(&env, &["key", "status"], b"").await;
    assert!(ok, "{err}");
    assert!(out.contains("sealed          true"), "{out}");
    assert!(
        out.contains(&format!(
            "recovery key {}",
            made["fingerprint"].as_str().unwrap()
        )),
        "{out}"
    );
    let (ok, out, err) = shell::sentia(
        &env,
        &["key", "unseal", "--recovery-key-file", file_s.as_str()],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("sealed false"), "{out}");
    let (ok, out, err) = shell::sentia(&env, &["key", "rotate-master", "--json"], b"").await;
    assert!(ok, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["master_version"], 2);
    let new_master = rotated["master_key"].as_str().unwrap().to_string();
    ks.stop().await;

    let ks = support::keys::Running::start(&db, &[("SENTIA_MASTER_KEY", &new_master)]).await;
    let opened = ks
        .client(Some(support::keys::CRYPTO_TOKEN))
        .await
        .decrypt(DecryptRequest {
            ciphertext: sealed_value,
            encryption_context: b"ctx".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(opened, b"before");
    ks.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_initializes_seals_unseals_and_sets_key_policy_from_the_shell() {
    let db = support::sqlite_url();
    let ks = support::keys::Running::start(&db, &[("SENTIA_SEAL_TYPE", "shamir")]).await;
    let env = [
        ("SENTIA_KEY_ADDR", ks.addr.as_str()),
        ("SENTIA_TOKEN", support::keys::ADMIN_TOKEN),
    ];
    let key = |args: &[&str]| {
        let all: Vec<String> = std::iter::once("key")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            shell::sentia(&env, &all, b"").await
        }
    };
    let (ok, _, err) = key(&["init", "--shares", "3", "--threshold", "1"]).await;
    assert!(!ok && err.contains("threshold"), "{err}");
    let (ok, out, err) = key(&["init", "--shares", "3", "--threshold", "2", "--json"]).await;
    assert!(ok, "{err}");
    let init: serde_json::Value = serde_json::from_str(&out).unwrap();
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 3);
    let (ok, _, err) = key(&["init", "--shares", "3", "--threshold", "2"]).await;
    assert!(
        !ok && err.contains("FailedPrecondition"),
        "once only: {err}"
    );

    let (ok, out, err) = key(&["seal"]).await;
    assert!(ok && out.starts_with("sealed"), "{out}{err}");
    let (ok, _, err) = key(&["get", "vault"]).await;
    assert!(!ok && err.contains("sealed"), "{err}");
    let (ok, out, err) = key(&["unseal", &shares[2]]).await;
    assert!(
        ok && out.starts_with("sealed true (progress 1/2)"),
        "{out}{err}"
    );
    let (ok, out, err) = key(&["unseal", &shares[0]]).await;
    assert!(ok && out.starts_with("sealed false"), "{out}{err}");

    let (ok, out, err) = key(&["set-policy", "vault", "--auto-rotate", "30d", "--json"]).await;
    assert!(ok, "{err}");
    let k: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(k[0]["auto_rotate_seconds"], 30 * 86_400);
    let (ok, out, err) = key(&["set-policy", "vault", "--auto-rotate", "off", "--json"]).await;
    assert!(ok, "{err}");
    let k: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(k[0]["auto_rotate_seconds"].is_null(), "{k}");
    let (ok, _, err) = key(&["set-policy", "vault", "--min-decryption-version", "2"]).await;
    assert!(
        !ok && err.contains("InvalidArgument"),
        "above the primary: {err}"
    );
    let (ok, _, err) = key(&["set-policy", "vault"]).await;
    assert!(!ok && err.contains("nothing to change"), "{err}");
    ks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rewrap_follows_the_move_to_a_rotated_vault_key_until_older_versions_retire() {
    let Some(s) = Stack::start(
        Backend::Sqlite,
        &[
            ("SENTIA_REWRAP_INTERVAL", "100ms"),
            ("SENTIA_REWRAP_BATCH", "1"),
            ("SENTIA_REWRAP_RETIRE_DELAY", "200ms"),
            ("SENTIA_LOCAL_CACHE_TTL", "100ms"),
        ],
    )
    .await
    else {
        return;
    };
    for i in 0..3 {
        s.put(&format!("dev/app/k{i}"), b"v").await;
    }
    let as_key_admin = [
        ("SENTIA_KEY_ADDR", s.keys.addr.as_str()),
        ("SENTIA_TOKEN", support::keys::ADMIN_TOKEN),
    ];
    let (ok, _, err) = shell::sentia(&as_key_admin, &["key", "rotate", "vault"], b"").await;
    assert!(ok, "{err}");
    let (ok, out, err) = sentia(&s, &s.root_token, &["key", "rewrap", "--progress"], b"").await;
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vault v2: 3/3 data keys moved (100%) [")
            && last.ends_with("older versions retired"),
        "{out}"
    );
    let (ok, out, err) = sentia(&s, &s.root_token, &["key", "rewrap", "--json"], b"").await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["remaining"].as_u64(),
            v["min_decryption_version"].as_u64()
        ),
        (Some(0), Some(2))
    );
    // Only an admin may read it.
    let (dev, _) = s.login_as(&["developer"]).await;
    let (ok, _, err) = sentia(&s, &dev, &["key", "rewrap"], b"").await;
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    s.stop().await;
}
