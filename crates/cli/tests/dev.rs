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

/// A running `sentia dev` and what its banner said.
struct Dev {
    child: tokio::process::Child,
    vault: String,
    keys: String,
    audit: String,
    rotation: String,
    admin: String,
    /// The root token, when this start minted it and showed it.
    root: Option<String>,
    /// Every banner line.
    banner: String,
}

/// Starts `sentia dev` on free ports in `dir` and reads its banner up to the root token
/// (a first start) or the end of the banner (later starts).
async fn start_dev(dir: &std::path::Path) -> Dev {
    start_dev_with(dir, &[]).await
}

/// [`start_dev`] with more arguments (e.g. `--tls`: addresses are then `https://` ones).
async fn start_dev_with(dir: &std::path::Path, extra: &[&str]) -> Dev {
    let d = dir.display().to_string();
    let minted_before = dir.join("root-token").exists();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentia"))
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
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr_of = |line: &str| {
        line.split("://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let (mut vault, mut keys, mut audit, mut rotation, mut admin, mut root) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        None,
    );
    let mut banner = String::new();
    let mut ended = false;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("vault-service: http") {
            vault = addr_of(&line);
        } else if line.contains("key-service:") && line.contains("://") {
            keys = addr_of(&line);
            admin = line
                .split("admin token ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')')
                .to_string();
        } else if line.contains("audit-service:") && line.contains("://") {
            audit = addr_of(&line);
        } else if line.contains("rotation:") && line.contains("://") {
            rotation = addr_of(&line);
        } else if let Some(t) = line.trim().strip_prefix("vault root token: ") {
            root = Some(t.to_string());
            break;
        } else if line.starts_with("=====") && ended && minted_before {
            break;
        } else if line.contains("SENTIA DEV MODE") {
            ended = true;
        }
    }
    assert!(
        !vault.is_empty() && !keys.is_empty() && !rotation.is_empty(),
        "{banner}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Dev {
        child,
        vault,
        keys,
        audit,
        rotation,
        admin,
        root,
        banner,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentia_dev_runs_the_scheduler_and_the_rotation_commands_drive_it() {
    let dir = data_dir();
    let Dev {
        child: mut dev,
        vault,
        rotation,
        root,
        ..
    } = start_dev(&dir).await;
    let root = root.expect("a first start shows the root token");
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
    assert!(
        out.contains("dev/app/stripe\tglob:dev/app/*\tautomated"),
        "the rule that chose the policy shows: {out}"
    );
    assert!(out.contains("cleanup"), "{out}");

    // Metadata from the shell: tier, owner, description, tags and expiry.
    let (ok, _, err) = sentia(&env, &["secret", "put", "dev/db/legacy"], b"x").await;
    assert!(ok, "{err}");
    let update = |args: &'static [&'static str]| async move {
        let mut all = vec!["secret", "update", "dev/db/legacy"];
        all.extend_from_slice(args);
        sentia(&env, &all, b"").await
    };
    let (ok, out, err) = update(&[
        "--tier",
        "1",
        "--owner",
        "payments",
        "--description",
        "the old ledger",
        "--tag",
        "team=pay",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("tier 1") && out.contains("payments"), "{out}");
    let (ok, out, err) = sentia(
        &env,
        &["secret", "describe", "dev/db/legacy", "--json"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["metadata"]["description"], "the old ledger");
    assert_eq!(d["metadata"]["tags"]["team"], "pay");
    // No policy or class: the tier default, shown as the rule.
    let (ok, out, err) = sentia(
        &env,
        &["rotation", "status", "--prefix", "dev/db", "--json"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"rule\":\"tier:critical\""), "{out}");
    let (ok, _, err) = update(&["--expires", "2000-01-01"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = sentia(&env, &["secret", "get", "dev/db/legacy"], b"").await;
    assert!(
        !ok && err.contains("expired at 2000-01-01T00:00:00Z"),
        "{err}"
    );
    let (ok, value, err) = sentia(
        &env,
        &["secret", "get", "dev/db/legacy", "--allow-expired"],
        b"",
    )
    .await;
    assert!(ok && value.trim() == "x", "{value}{err}");
    let (ok, _, err) = update(&["--expires", "never"]).await;
    assert!(ok, "{err}");
    let (ok, value, err) = sentia(&env, &["secret", "get", "dev/db/legacy"], b"").await;
    assert!(ok && value.trim() == "x", "{value}{err}");
    let (ok, _, err) = update(&[]).await;
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, _, err) = update(&["--expires", "soon"]).await;
    assert!(!ok && err.contains("not a time"), "{err}");

    // The policy simulator: allow names the rule, deny exits non-zero, a file is tested
    // before it is loaded.
    let check = |args: &[&str]| {
        let all: Vec<String> = ["policy", "check", "--capability", "read"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            sentia(&env, &all, b"").await
        }
    };
    let (ok, out, err) = check(&["--policy", "developer", "--path", "dev/app/x"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "allow: policy developer rule 1 (dev/**) grants read on dev/app/x"
    );
    let (ok, out, _) = check(&["--policy", "developer", "--path", "prod/app/x"]).await;
    assert!(!ok && out.starts_with("deny:"), "{out}");
    let file = dir.join("candidate.toml");
    std::fs::write(
        &file,
        "[auditor]\nrules = [{ paths = [\"prod/**\"], capabilities = [\"read\"] }]\n",
    )
    .unwrap();
    let (ok, out, err) = check(&[
        "--policy",
        "auditor",
        "--path",
        "prod/app/x",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["allowed"].as_bool(), v["rule"].as_u64()),
        (Some(true), Some(1))
    );
    let _ = dev.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_files_are_owner_only_the_root_token_shows_once_and_a_master_rotation_keeps_it_starting()
 {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let mut first = start_dev(&dir).await;
    let root = first
        .root
        .clone()
        .expect("the first start mints and shows it");
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.clone()), 0o700);
    for db in ["keys.db", "vault.db", "audit.db", "rotation.db"] {
        assert_eq!(mode(dir.join(db)), 0o600, "{db}");
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            mode(path.clone()) & 0o077,
            0,
            "{} is readable by others",
            path.display()
        );
    }
    let env = [
        ("SENTIA_KEY_ADDR", first.keys.as_str()),
        ("SENTIA_TOKEN", first.admin.as_str()),
    ];
    let (ok, out, err) = sentia(&env, &["key", "rotate-master", "--json"], b"").await;
    assert!(ok, "{err}");
    let new_master: serde_json::Value = serde_json::from_str(&out).unwrap();
    let saved = std::fs::read_to_string(dir.join("dev-master.key")).unwrap();
    assert_eq!(saved.trim(), new_master["master_key"].as_str().unwrap());
    assert_eq!(mode(dir.join("dev-master.key")), 0o600);

    // Output to a reader that is gone: a quiet exit, no panic and no backtrace.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_sentia"))
        .args(["key", "status"])
        .envs(env)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(141),
        "{stderr} / {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let _ = first.child.kill().await;
    let _ = first.child.wait().await;
    // The next start opens the keyring with the rotated master and does not show the root
    // token again; the token still works.
    let mut second = start_dev(&dir).await;
    assert!(second.root.is_none(), "{}", second.banner);
    assert!(!second.banner.contains(&root), "{}", second.banner);
    let (ok, _, err) = sentia(
        &[
            ("SENTIA_ADDR", second.vault.as_str()),
            ("SENTIA_TOKEN", root.as_str()),
        ],
        &["secret", "list", "dev"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let _ = second.child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentia_backup_makes_lists_checks_and_restores_an_archive_of_sentia_dev() {
    let dir = data_dir();
    let mut dev = start_dev(&dir).await;
    let root = dev
        .root
        .clone()
        .expect("a first start shows the root token");
    // sentia dev backs itself up daily into its data directory: the first one at the start.
    let scheduled = dir.join("backups").display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, out, err) = sentia(&[], &["backup", "list", &scheduled, "--json"], b"").await;
        assert!(ok, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        if listed.as_array().is_some_and(|a| a.len() == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled backup in {scheduled}: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let backups = dir.join("manual-backups");
    let b = backups.display().to_string();
    let env = [
        ("SENTIA_ADDR", dev.vault.as_str()),
        ("SENTIA_KEY_ADDR", dev.keys.as_str()),
        ("SENTIA_AUDIT_ADDR", dev.audit.as_str()),
        ("SENTIA_ROTATION_ADDR", dev.rotation.as_str()),
        ("SENTIA_TOKEN", root.as_str()),
        ("SENTIA_KEY_TOKEN", dev.admin.as_str()),
    ];
    let (ok, _, err) = sentia(&env, &["secret", "put", "dev/app/db"], b"hunter2").await;
    assert!(ok, "{err}");
    // A copy in a bucket too when the test command's S3 server is here (always under CI).
    let s3 = sentia_testkit::s3_destination();
    let mut env: Vec<(&str, &str)> = env.to_vec();
    let mut create = vec!["backup", "create", "--to", &b, "--json"];
    let s3_env: Vec<(String, String)> = s3
        .iter()
        .flat_map(|(_, options)| options.iter())
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect();
    if let Some((bucket, _)) = &s3 {
        create.extend(["--to", bucket.as_str()]);
        env.extend(s3_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    let (ok, out, err) = sentia(&env, &create, b"").await;
    assert!(ok, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let archive = made["archive"].as_str().unwrap().to_string();
    assert_eq!(made["secret_versions"], 1, "{out}");
    assert!(
        err.contains("no recovery key is configured"),
        "an archive only the master opens is said so: {err}"
    );

    let (ok, out, err) = sentia(&env, &["backup", "list", &b, "--json"], b"").await;
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed[0]["archive"].as_str(),
        Some(archive.as_str()),
        "{out}"
    );
    assert_eq!(listed.as_array().unwrap().len(), 1, "{out}");

    let key_file = dir.join("dev-master.key").display().to_string();
    let (ok, out, err) = sentia(
        &env,
        &["backup", "verify", &archive, "--master-key-file", &key_file],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(": valid") && out.contains("1 secret versions"),
        "{out}"
    );
    // Without a key file, key-service opens it (the operator's admin token is in the env).
    let (ok, out, err) = sentia(&env, &["backup", "verify", &archive], b"").await;
    assert!(ok && out.contains(": valid"), "{out}{err}");
    let wrong = dir.join("wrong.key");
    std::fs::write(
        &wrong,
        sentia_crypto::MasterKey::generate().to_base64().as_bytes(),
    )
    .unwrap();
    let (ok, _, err) = sentia(
        &env,
        &[
            "backup",
            "verify",
            &archive,
            "--master-key-file",
            &wrong.display().to_string(),
            "--offline",
        ],
        b"",
    )
    .await;
    assert!(!ok && err.contains("master"), "{err}");
    // The drill, on the newest archive of the directory; then on a corrupted copy.
    let (ok, out, err) = sentia(
        &env,
        &[
            "backup",
            "drill",
            &b,
            "--master-key-file",
            &key_file,
            "--json",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let drilled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(drilled["passed"], true, "{out}");
    assert_eq!(drilled["versions_read"], 1, "{out}");
    let corrupted = dir.join("corrupted.sbk");
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 1;
    std::fs::write(&corrupted, bytes).unwrap();
    let (ok, _, err) = sentia(
        &env,
        &[
            "backup",
            "drill",
            &corrupted.display().to_string(),
            "--master-key-file",
            &key_file,
        ],
        b"",
    )
    .await;
    assert!(!ok && err.contains("chunk"), "{err}");
    if let Some((bucket, _)) = &s3 {
        assert_eq!(made["copies"].as_array().unwrap().len(), 2, "{made}");
        let (ok, out, err) = sentia(&env, &["backup", "list", bucket, "--json"], b"").await;
        assert!(ok, "{err}");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            listed[0]["name"],
            made["archive"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        );
        // The bucket's newest archive, downloaded and drilled.
        let (ok, out, err) = sentia(
            &env,
            &[
                "backup",
                "drill",
                bucket,
                "--master-key-file",
                &key_file,
                "--json",
            ],
            b"",
        )
        .await;
        assert!(ok, "{err}");
        assert!(out.contains("\"passed\":true"), "{out}");
        let (ok, out, err) = sentia(
            &env,
            &["backup", "prune", bucket, "--retention", "1d", "--json"],
            b"",
        )
        .await;
        assert!(
            ok && out.contains("\"deleted\":[]"),
            "the newest is kept: {out}{err}"
        );
    }
    let _ = dev.child.kill().await;
    let _ = dev.child.wait().await;

    let db = |name: &str| format!("sqlite://{}?mode=rwc", dir.join(name).display());
    let restore = |force: bool| {
        let mut args: Vec<String> = [
            "backup",
            "restore",
            &archive,
            "--master-key-file",
            &key_file,
            "--offline",
            "--json",
            "--keys-db",
            &db("r-keys.db"),
            "--vault-db",
            &db("r-vault.db"),
            "--audit-db",
            &db("r-audit.db"),
            "--rotation-db",
            &db("r-rotation.db"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if force {
            args.push("--force".into());
        }
        args
    };
    let args = restore(false);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = sentia(&[], &argv, b"").await;
    assert!(ok, "{err}");
    let restored: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(restored["secret_versions_checked"], 1, "{out}");
    let (ok, _, err) = sentia(&[], &argv, b"").await;
    assert!(!ok && err.contains("not empty"), "{err}");
    let args = restore(true);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = sentia(&[], &argv, b"").await;
    assert!(ok, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_move_between_stores_in_an_export_sealed_to_a_recipient() {
    let (from_dir, to_dir) = (data_dir(), data_dir());
    let mut from = start_dev(&from_dir).await;
    let root = from.root.clone().unwrap();
    let env = [
        ("SENTIA_ADDR", from.vault.as_str()),
        ("SENTIA_TOKEN", root.as_str()),
    ];
    for (path, value) in [
        ("dev/app/a", "alpha-value"),
        ("dev/app/b", "beta-value"),
        ("ops/x", "outside"),
    ] {
        let (ok, _, err) = sentia(&env, &["secret", "put", path], value.as_bytes()).await;
        assert!(ok, "{err}");
    }
    let key = from_dir.join("recipient.key").display().to_string();
    let (ok, out, err) = sentia(
        &[],
        &["key", "recovery-keygen", "--out", &key, "--json"],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let recipient = serde_json::from_str::<serde_json::Value>(&out).unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let file = from_dir.join("app.export").display().to_string();
    let (ok, out, err) = sentia(
        &env,
        &[
            "secret",
            "export",
            "--prefix",
            "dev/app",
            "--to",
            &file,
            "--recipient",
            &recipient,
            "--json",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"secrets\":2"), "{out}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(5).any(|w| w == b"alpha" || w == b"dev/a"),
        "values and paths are sealed"
    );
    let (ok, _, err) = sentia(
        &env,
        &[
            "secret",
            "export",
            "--prefix",
            "dev/app",
            "--to",
            &file,
            "--recipient",
            &recipient,
        ],
        b"",
    )
    .await;
    assert!(!ok && err.contains("never overwrites"), "{err}");

    // Into the same store after a change: a dry run first, then the write.
    let (ok, _, err) = sentia(&env, &["secret", "put", "dev/app/a"], b"changed").await;
    assert!(ok, "{err}");
    let import = |apply: bool| {
        let mut args = vec![
            "secret",
            "import",
            file.as_str(),
            "--key-file",
            key.as_str(),
            "--json",
        ];
        if apply {
            args.push("--apply");
        }
        args
    };
    let (ok, out, err) = sentia(&env, &import(false), b"").await;
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (plan["update"].as_u64(), plan["unchanged"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    let (_, value, _) = sentia(&env, &["secret", "get", "dev/app/a"], b"").await;
    assert_eq!(value.trim(), "changed", "a dry run writes nothing");
    let (ok, out, err) = sentia(&env, &import(true), b"").await;
    assert!(ok && out.contains("updated: version 3"), "{out}{err}");
    let (_, value, _) = sentia(&env, &["secret", "get", "dev/app/a"], b"").await;
    assert_eq!(value.trim(), "alpha-value");
    let wrong = from_dir.join("wrong.key").display().to_string();
    let (ok, _, _) = sentia(&[], &["key", "recovery-keygen", "--out", &wrong], b"").await;
    assert!(ok);
    let (ok, _, err) = sentia(
        &env,
        &["secret", "import", &file, "--key-file", &wrong],
        b"",
    )
    .await;
    assert!(!ok && err.contains("recovery private key"), "{err}");
    let _ = from.child.kill().await;

    // Into another store: created there.
    let mut to = start_dev(&to_dir).await;
    let root = to.root.clone().unwrap();
    let env = [
        ("SENTIA_ADDR", to.vault.as_str()),
        ("SENTIA_TOKEN", root.as_str()),
    ];
    let (ok, out, err) = sentia(&env, &import(true), b"").await;
    assert!(ok, "{err}");
    assert!(out.contains("\"create\":2"), "{out}");
    let (_, value, _) = sentia(&env, &["secret", "get", "dev/app/b"], b"").await;
    assert_eq!(value.trim(), "beta-value");
    let (ok, _, _) = sentia(&env, &["secret", "get", "ops/x"], b"").await;
    assert!(!ok, "only the prefix was exported");
    let _ = to.child.kill().await;
    let _ = std::fs::remove_dir_all(&from_dir);
    let _ = std::fs::remove_dir_all(&to_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_authenticates_with_a_client_certificate_alone() {
    let dir = data_dir();
    let mut dev = start_dev_with(&dir, &["--tls"]).await;
    let file = |name: &str| dir.join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("cli.pem"), file("cli-key.pem"));
    let port = dev.vault.rsplit(':').next().unwrap();
    let addr = format!("https://localhost:{port}");
    // No token anywhere: the certificate is the identity (the dev CLI's, an administrator).
    let env = [
        ("SENTIA_ADDR", addr.as_str()),
        ("SENTIA_CLIENT_CA", ca.as_str()),
        ("SENTIA_CLIENT_CERT", cert.as_str()),
        ("SENTIA_CLIENT_KEY", key.as_str()),
    ];
    let (ok, _, err) = sentia(&env, &["secret", "put", "dev/app/by-cert"], b"from-cert").await;
    assert!(ok, "{err}");
    let (ok, out, err) = sentia(
        &env,
        &[
            "agent",
            "run",
            "--secret",
            "V=dev/app/by-cert",
            "--",
            "sh",
            "-c",
            "printf %s \"$V\"",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "from-cert");
    // Without the certificate (CA only), vault-service does not know the caller.
    let (ok, _, err) = sentia(
        &env[..2],
        &[
            "agent",
            "run",
            "--secret",
            "V=dev/app/by-cert",
            "--",
            "true",
        ],
        b"",
    )
    .await;
    assert!(!ok, "no certificate, no token: refused");
    assert!(
        err.contains("Unauthenticated") || err.contains("certificate"),
        "{err}"
    );
    dev.child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_and_acknowledges_the_alert_a_prober_raises() {
    let dir = data_dir();
    let mut dev = start_dev(&dir).await;
    let root = dev.root.clone().unwrap();
    let as_root = [
        ("SENTIA_ADDR", dev.vault.as_str()),
        ("SENTIA_AUDIT_ADDR", dev.audit.as_str()),
        ("SENTIA_TOKEN", root.as_str()),
    ];
    let (ok, out, err) = sentia(
        &as_root,
        &[
            "token",
            "create-credential",
            "prober",
            "--policy",
            "developer",
            "--json",
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let cred: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (ok, jwt, err) = sentia(
        &[("SENTIA_ADDR", dev.vault.as_str())],
        &["login", "--role-id", cred["role_id"].as_str().unwrap()],
        cred["secret_id"].as_str().unwrap().as_bytes(),
    )
    .await;
    assert!(ok, "{err}");
    // A developer probing production: six refusals in five minutes raise
    // UnauthorizedSecretAccess.
    let as_prober = [
        ("SENTIA_ADDR", dev.vault.as_str()),
        ("SENTIA_TOKEN", jwt.trim()),
    ];
    for i in 0..6 {
        let path = format!("prod/app/probe-{i}");
        let (ok, _, err) = sentia(&as_prober, &["secret", "get", &path], b"").await;
        assert!(!ok && err.contains("PermissionDenied"), "{err}");
    }
    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        let (ok, out, err) = sentia(&as_root, &["alert", "list", "--json"], b"").await;
        assert!(ok, "{err}");
        listed = serde_json::from_str(&out).unwrap();
        if listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "UnauthorizedSecretAccess")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alert = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "UnauthorizedSecretAccess")
        .unwrap_or_else(|| panic!("no alert raised: {listed}"))
        .clone();
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["principal"]
            .as_str()
            .unwrap()
            .starts_with("app:prober"),
        "{alert}"
    );
    let id = alert["id"].as_str().unwrap();

    let (ok, out, err) = sentia(&as_root, &["alert", "ack", id], b"").await;
    assert!(ok, "{err}");
    assert!(out.contains("acknowledged by root"), "{out}");
    let (ok, out, _) = sentia(&as_root, &["alert", "list"], b"").await;
    assert!(
        ok && !out.contains(id),
        "an acknowledged alert is no longer open: {out}"
    );
    let (ok, out, _) = sentia(&as_root, &["alert", "list", "--all"], b"").await;
    assert!(ok && out.contains(id), "{out}");
    // An unknown id says so.
    let (ok, _, err) = sentia(&as_root, &["alert", "ack", "no-such-alert"], b"").await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    // A developer may not read alerts.
    let prober_audit = [
        ("SENTIA_AUDIT_ADDR", dev.audit.as_str()),
        ("SENTIA_TOKEN", jwt.trim()),
    ];
    let (ok, _, err) = sentia(&prober_audit, &["alert", "list"], b"").await;
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    dev.child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
