//! A real vault-service process killed with SIGKILL right after it answered: in every
//! `SENTIA_AUDIT_DURABILITY` setting the answered operations' events reach the audit log once
//! the process is started again — from the fsynced spool (`remote`, audit-service being down
//! when they happened) or from the journal (`local-fsync`, `local`). A power loss is not
//! simulated here: `local` keeps its promise only against a process kill (see ADR 4).
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;
use sentia_testkit::audit as audit_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use audit_support::AuditService;
use sentia_proto::audit::v1 as apb;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use support::{Proxy, keys, unique};

/// The vault-service binary with the settings of one durability.
struct Process {
    env: Vec<(String, String)>,
    addr: String,
    root_file: std::path::PathBuf,
}

impl Process {
    fn new(keys_addr: &str, audit_addr: &str, durability: &str, dir: &std::path::Path) -> Self {
        // A free port the restarted process binds again.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let root_file = dir.join("root-token");
        let path = |name: &str| dir.join(name).display().to_string();
        let env = [
            ("SENTIA_LISTEN_ADDR", addr.clone()),
            ("SENTIA_ALLOW_PLAINTEXT", "true".into()),
            (
                "SENTIA_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", path("vault.db")),
            ),
            ("SENTIA_KEY_SERVICE_ADDR", keys_addr.into()),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::SERVICE_TOKEN.into()),
            ("SENTIA_ROOT_TOKEN_FILE", root_file.display().to_string()),
            ("SENTIA_AUDIT_SERVICE_ADDR", audit_addr.into()),
            ("SENTIA_AUDIT_SERVICE_TOKEN", keys::SERVICE_TOKEN.into()),
            ("SENTIA_AUDIT_SPOOL", path("audit.journal")),
            ("SENTIA_AUDIT_TIMEOUT", "300ms".into()),
            ("SENTIA_AUDIT_DURABILITY", durability.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            env,
            addr,
            root_file,
        }
    }

    /// Starts the process and waits until it answers.
    async fn start(&self) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vault-service"))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SENTIA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            let ch = connect_lazy(&self.addr, None).unwrap();
            let r = AuthServiceClient::new(ch)
                .login(pb::LoginRequest::default())
                .await;
            if matches!(r, Err(e) if e.code() == tonic::Code::Unauthenticated) {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("vault-service did not start");
    }

    fn secrets(&self) -> SecretServiceClient<AuthedChannel> {
        let token = std::fs::read_to_string(&self.root_file).unwrap();
        let ch = connect_lazy(&self.addr, None).unwrap();
        SecretServiceClient::new(CallContext::with_token(Some(&token)).unwrap().wrap(ch))
    }
}

/// vault-service's events about `path` in the log.
async fn events_about(reader: &AuditServiceClient<AuthedChannel>, path: &str) -> Vec<String> {
    let page = reader
        .clone()
        .query_events(apb::QueryEventsRequest {
            secret_name: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.records
        .into_iter()
        .filter_map(|r| r.event)
        .filter(|e| e.service == "vault-service")
        .map(|e| e.operation)
        .collect()
}

async fn answered_operations_survive_a_kill(durability: &str) {
    let keys = keys::Running::start(&keys::sqlite_url(), &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audit_addr = listener.local_addr().unwrap().to_string();
    let audit = AuditService::start(listener, &keys.addr).await;
    let proxy = Proxy::to(&audit_addr).await;
    let reader = AuditServiceClient::new(
        CallContext::with_token(Some(keys::ADMIN_TOKEN))
            .unwrap()
            .wrap(connect_lazy(&audit_addr, None).unwrap()),
    );

    let dir = std::env::temp_dir().join(unique("sentia_killed"));
    std::fs::create_dir_all(&dir).unwrap();
    let process = Process::new(&keys.addr, &proxy.addr, durability, &dir);
    let mut first = process.start().await;

    // audit-service unreachable: nothing the process records can reach it before the kill.
    proxy.cut();
    let path = "prod/app/killed";
    let mut secrets = process.secrets();
    secrets
        .put_secret(pb::PutSecretRequest {
            path: path.into(),
            value: b"v1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = secrets
        .get_secret(pb::GetSecretRequest {
            path: path.into(),
            selector: None,
            allow_expired: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"v1");
    // SIGKILL right after the answer: no shutdown hook runs.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        events_about(&reader, path).await.is_empty(),
        "audit-service was unreachable, so nothing arrived before the kill"
    );

    proxy.restore();
    let mut second = process.start().await;
    let mut ops = Vec::new();
    for _ in 0..300 {
        ops = events_about(&reader, path).await;
        if ops.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ops.sort();
    assert_eq!(
        ops,
        vec!["read".to_string(), "write".to_string()],
        "{durability}: each answered operation is in the log once after the restart"
    );

    second.kill().unwrap();
    second.wait().unwrap();
    audit.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_delivers_its_spooled_events_on_restart_with_remote_durability() {
    answered_operations_survive_a_kill("remote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_ships_its_journal_on_restart_with_local_fsync_durability() {
    answered_operations_survive_a_kill("local-fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_ships_its_journal_on_restart_with_local_durability() {
    answered_operations_survive_a_kill("local").await;
}
