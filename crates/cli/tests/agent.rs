//! `sentia agent run` against real key-service and vault-service: a program gets its secrets in
//! its environment and is restarted or signalled when one changes.
#![allow(clippy::unwrap_used)]

mod shell;
use sentia_testkit as support;

use std::time::{Duration, Instant};

use support::{Backend, Stack};
use tokio::process::{Child, Command};

async fn sentia(s: &Stack, args: &[&str], stdin: &[u8]) -> String {
    let (ok, out, err) = shell::sentia(
        &[("SENTIA_ADDR", &s.addr), ("SENTIA_TOKEN", &s.root_token)],
        args,
        stdin,
    )
    .await;
    assert!(ok, "sentia {args:?}: {err}");
    out
}

/// `sentia agent run ARGS -- sh -c SCRIPT` with `env`, its output discarded.
fn agent(env: &[(&str, &str)], args: &[&str], script: &str) -> Child {
    let mut all = vec!["agent", "run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "sh", "-c", script]);
    shell::spawn(env, &all)
}

/// Waits (up to a minute) until `file` holds exactly `lines`.
async fn lines(file: &std::path::Path, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = std::fs::read_to_string(file).unwrap_or_default();
        if got.lines().collect::<Vec<_>>() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {got:?}, not {want:?}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM to the agent: it stops the program and exits.
async fn stop(mut agent: Child) {
    let pid = agent.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(killed.unwrap().success());
    let exited = tokio::time::timeout(Duration::from_secs(30), agent.wait()).await;
    assert!(exited.is_ok(), "the agent exits on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_in_hands_a_secret_to_its_program_restarts_it_on_change_and_rides_out_an_outage()
 {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    sentia(&s, &["secret", "put", "dev/app/db"], b"first-value").await;
    let out = sentia(
        &s,
        &[
            "token",
            "create-credential",
            "app",
            "--policy",
            "developer",
            "--json",
        ],
        b"",
    )
    .await;
    let cred: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dir = support::scratch_path(&support::unique("agent"));
    std::fs::create_dir_all(&dir).unwrap();
    let (role, secret, log) = (dir.join("role-id"), dir.join("secret-id"), dir.join("log"));
    std::fs::write(&role, cred["role_id"].as_str().unwrap()).unwrap();
    std::fs::write(&secret, cred["secret_id"].as_str().unwrap()).unwrap();
    let (role, secret) = (role.to_str().unwrap(), secret.to_str().unwrap());
    let script = format!("echo \"start $DB\" >> {}; exec sleep 600", log.display());
    let running = agent(
        &[("SENTIA_ADDR", &s.addr)],
        &[
            "--secret",
            "DB=dev/app/db",
            "--role-id-file",
            role,
            "--secret-id-file",
            secret,
        ],
        &script,
    );
    lines(&log, &["start first-value"]).await;
    sentia(&s, &["secret", "put", "dev/app/db"], b"second-value").await;
    lines(&log, &["start first-value", "start second-value"]).await;
    // vault-service goes away and comes back: the program is left alone meanwhile, and the
    // agent's watch resumes, so the next change still restarts it.
    let mut s = s;
    s.restart_vault().await;
    sentia(&s, &["secret", "put", "dev/app/db"], b"third-value").await;
    lines(
        &log,
        &[
            "start first-value",
            "start second-value",
            "start third-value",
        ],
    )
    .await;
    stop(running).await;
    std::fs::remove_dir_all(&dir).unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_signals_its_program_on_a_change_instead_of_restarting_it_when_asked() {
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    sentia(&s, &["secret", "put", "dev/app/key"], b"one").await;
    let dir = support::scratch_path(&support::unique("agent_hup"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let script = format!(
        "trap 'echo \"hup $KEY\" >> {0}' HUP; echo \"start $KEY ${{SENTIA_TOKEN:-no-token}}\" >> {0}; \
         while true; do sleep 0.1; done",
        log.display()
    );
    let running = agent(
        &[("SENTIA_ADDR", &s.addr), ("SENTIA_TOKEN", &s.root_token)],
        &["--secret", "KEY=dev/app/key", "--on-change", "signal:HUP"],
        &script,
    );
    // The program gets its secret and not the agent's token.
    lines(&log, &["start one no-token"]).await;
    sentia(&s, &["secret", "put", "dev/app/key"], b"two").await;
    // The same process, told to reread: its environment still holds the value it started with.
    lines(&log, &["start one no-token", "hup one"]).await;
    stop(running).await;
    std::fs::remove_dir_all(&dir).unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_malformed_binding_or_change_action_naming_it() {
    for (args, wanted) in [
        (
            vec!["--secret", "1DB=dev/app/db"],
            "NAME must be letters, digits and _",
        ),
        (
            vec!["--secret", "DB=dev/app/db", "--on-change", "reload"],
            "give restart, signal:NAME",
        ),
    ] {
        let mut all = vec!["agent", "run"];
        all.extend(args);
        all.extend(["--", "true"]);
        let (ok, _, err) = shell::sentia(&[("SENTIA_ADDR", "127.0.0.1:1")], &all, b"").await;
        assert!(!ok && err.contains(wanted), "{all:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_in_with_a_kubernetes_service_account_token() {
    use support::kubernetes::{self as k8s, Alg, Cluster};
    let cluster = Cluster::new("https://kubernetes.default.svc.cluster.local");
    let Some((s, dir)) = cluster.stack("agent-k8s").await else {
        return;
    };
    sentia(
        &s,
        &["secret", "put", "prod/monitoring/grafana"],
        b"grafana-pw",
    )
    .await;
    let (token, log) = (dir.join("token"), dir.join("log"));
    std::fs::write(&token, cluster.bound_token(Alg::Es256, 3600)).unwrap();
    let script = format!("echo \"start $PW\" >> {}; exec sleep 600", log.display());
    let running = agent(
        &[
            ("SENTIA_ADDR", &s.addr),
            ("SENTIA_K8S_ROLE", k8s::ROLE),
            ("SENTIA_K8S_TOKEN_FILE", token.to_str().unwrap()),
        ],
        &["--secret", "PW=prod/monitoring/grafana"],
        &script,
    );
    lines(&log, &["start grafana-pw"]).await;
    sentia(
        &s,
        &["secret", "put", "prod/monitoring/grafana"],
        b"rotated-pw",
    )
    .await;
    lines(&log, &["start grafana-pw", "start rotated-pw"]).await;
    stop(running).await;

    // A service account the role does not bind: the agent says why and never starts the
    // program.
    std::fs::write(
        &token,
        cluster.token(Alg::Es256, k8s::NAMESPACE, "intruder", k8s::AUDIENCE),
    )
    .unwrap();
    let started = format!("echo started >> {}", log.display());
    let (ok, _, err) = shell::sentia(
        &[("SENTIA_ADDR", &s.addr)],
        &[
            "agent",
            "run",
            "--secret",
            "PW=prod/monitoring/grafana",
            "--k8s-role",
            k8s::ROLE,
            "--k8s-token-file",
            token.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &started,
        ],
        b"",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("apps/intruder is not bound"), "{err}");
    lines(&log, &["start grafana-pw", "start rotated-pw"]).await;
    s.stop().await;
}

/// GET `addr` once; the status line's code.
async fn health(addr: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renders_templates_into_0600_files_atomically_and_again_on_change() {
    use std::os::unix::fs::PermissionsExt;
    let Some(s) = Stack::start(Backend::Sqlite, &[]).await else {
        return;
    };
    sentia(&s, &["secret", "put", "dev/app/db-user"], b"app").await;
    sentia(&s, &["secret", "put", "dev/app/db-password"], b"first\"pw").await;
    let dir = support::scratch_path(&support::unique("render"));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        dir.join("db.json.tmpl"),
        "{\"user\": {{ secret \"dev/app/db-user\" | json }}, \"password\": {{ secret \"dev/app/db-password\" | json }}}\n",
    )
    .unwrap();
    let (env_file, json_file, log) = (out.join("db.env"), out.join("db.json"), dir.join("log"));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[template]]
contents = "DB_USER={{{{ secret \"dev/app/db-user\" }}}}\n"
destination = {env:?}

[[template]]
source = "db.json.tmpl"
destination = {json:?}
command = ["sh", "-c", "echo rendered >> {log}"]
"#,
            env = env_file.display().to_string(),
            json = json_file.display().to_string(),
            log = log.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let health_addr = format!("127.0.0.1:{port}");
    let agent = shell::spawn(
        &[("SENTIA_ADDR", &s.addr), ("SENTIA_TOKEN", &s.root_token)],
        &[
            "agent",
            "render",
            "--config",
            config.to_str().unwrap(),
            "--health-addr",
            &health_addr,
        ],
    );
    lines(&log, &["rendered"]).await;
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "DB_USER=app\n");
    let first = "{\"user\": \"app\", \"password\": \"first\\\"pw\"}\n";
    assert_eq!(std::fs::read_to_string(&json_file).unwrap(), first);
    for f in [&env_file, &json_file] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let mut healthy = None;
    for _ in 0..100 {
        healthy = health(&health_addr).await;
        if healthy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthy, Some(200));

    // While the password rotates, a reader sees the old file or the new one, never a part.
    let second = "{\"user\": \"app\", \"password\": \"second-pw\"}\n";
    let reader = {
        let json_file = json_file.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            loop {
                let got = std::fs::read_to_string(&json_file).unwrap();
                reads += 1;
                assert!(got == first || got == second, "a torn read: {got:?}");
                if got == second {
                    return reads;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    sentia(&s, &["secret", "put", "dev/app/db-password"], b"second-pw").await;
    let reads = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the file was re-rendered")
        .unwrap();
    assert!(reads > 1, "the reader saw the file before and after");
    lines(&log, &["rendered", "rendered"]).await;
    // Only the rendered files are there: no temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["db.env", "db.json"]);
    stop(agent).await;

    // --once renders and exits (an init container).
    std::fs::remove_file(&env_file).unwrap();
    let (ok, _, err) = shell::sentia(
        &[("SENTIA_ADDR", &s.addr), ("SENTIA_TOKEN", &s.root_token)],
        &[
            "agent",
            "render",
            "--once",
            "--config",
            config.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "DB_USER=app\n");
    s.stop().await;
}
