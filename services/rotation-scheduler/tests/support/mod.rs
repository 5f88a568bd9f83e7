//! Test harness for rotation-scheduler: key-service and vault-service in-process (the vault
//! harness), schedulers started on ephemeral ports on their own database with a shared manual
//! clock, and real Postgres roles and Redis ACL users as rotation targets.
#![allow(clippy::unwrap_used, dead_code)]

pub use sentia_testkit as vault;

use std::time::Duration;

use rotation_scheduler::steps::Step;
use rotation_scheduler::{Clock, Hooks};
use sentia_proto::rotation::v1 as pb;
use sentia_proto::rotation::v1::rotation_service_client::RotationServiceClient;
use sentia_proto::vault::v1 as vpb;
use sentia_runtime::client::{AuthedChannel, CallContext};
use sqlx::Executor;
use tokio::net::TcpListener;

pub use vault::{Backend, Stack, unique};

pub use sentia_testkit::rotation::{Scheduler, vault_settings};

pub const DAY: i64 = 86_400_000;

/// key-service and vault-service on `backend`, set up for the scheduler.
pub async fn stack(backend: Backend) -> Option<Stack> {
    let settings = vault_settings();
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Stack::start(backend, &pairs).await
}

/// Every `rotation` event in the audit log at `addr`, oldest first.
pub async fn rotation_events(addr: &str) -> Vec<sentia_proto::audit::v1::AuditEvent> {
    use sentia_proto::audit::v1 as apb;
    let ch = sentia_runtime::client::connect_lazy(addr, None).unwrap();
    let mut client = apb::audit_service_client::AuditServiceClient::new(
        CallContext::with_token(Some(vault::keys::ADMIN_TOKEN))
            .unwrap()
            .wrap(ch),
    );
    let r = client
        .query_events(apb::QueryEventsRequest {
            event_type: "rotation".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.records.into_iter().filter_map(|r| r.event).collect()
}

/// Alerts raised in the audit-service at `addr`, newest first.
pub async fn alerts(addr: &str) -> Vec<sentia_proto::audit::v1::Alert> {
    sentia_testkit::audit::alerts_at(addr).await
}

/// A manual clock at the real time (vault-service stamps versions with the real clock).
pub fn clock() -> Clock {
    Clock::manual(sentia_proto::wkt::now_ms())
}

/// Hooks with `clock` and nothing else.
pub fn hooks(clock: &Clock) -> Hooks {
    Hooks {
        clock: clock.clone(),
        ..Hooks::default()
    }
}

/// Polls `path`'s newest rotation until it reaches `step` (30 s at most).
pub async fn wait_for(
    client: &RotationServiceClient<AuthedChannel>,
    path: &str,
    step: Step,
) -> pb::Rotation {
    wait_until(client, path, &format!("{step:?}"), |r| {
        r.step == step as i32
    })
    .await
}

/// Polls `path`'s newest rotation until `done` holds (30 s at most).
pub async fn wait_until(
    client: &RotationServiceClient<AuthedChannel>,
    path: &str,
    what: &str,
    done: impl Fn(&pb::Rotation) -> bool,
) -> pb::Rotation {
    let mut last = None;
    for _ in 0..600 {
        let h = client
            .clone()
            .get_rotation_history(pb::GetRotationHistoryRequest {
                path: path.into(),
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(r) = h.rotations.into_iter().next() {
            if done(&r) {
                return r;
            }
            last = Some(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never reached {what}; last seen {last:?}");
}

/// A policy for `pattern` with `rotator` and `params`, the API-key schedule otherwise.
pub fn policy(pattern: &str, rotator: &str, params: serde_json::Value) -> pb::RotationPolicy {
    let day = |d: i64| prost_types::Duration {
        seconds: d * 86_400,
        nanos: 0,
    };
    let fields = params
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            use prost_types::value::Kind;
            let kind = match v {
                serde_json::Value::String(s) => Kind::StringValue(s.clone()),
                serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                    values: a
                        .iter()
                        .map(|x| prost_types::Value {
                            kind: Some(Kind::StringValue(x.as_str().unwrap().into())),
                        })
                        .collect(),
                }),
                other => panic!("unsupported parameter {other}"),
            };
            (k.clone(), prost_types::Value { kind: Some(kind) })
        })
        .collect();
    pb::RotationPolicy {
        path_pattern: pattern.into(),
        frequency: Some(day(90)),
        method: pb::RotationMethod::Automated as i32,
        notify_before: Some(day(7)),
        grace_period: Some(day(1)),
        rotator: rotator.into(),
        rotator_params: Some(prost_types::Struct { fields }),
        max_attempts: 3,
        ..Default::default()
    }
}

/// The Postgres admin URL for rotation targets (the suite's superuser), or None (announced).
pub fn postgres_admin() -> Option<String> {
    sentia_testkit::postgres_admin_url()
}

/// A login role of its own, with `password`; dropped by [`drop_role`].
pub async fn create_role(admin_url: &str, password: &str) -> String {
    let role = unique("rot").to_lowercase();
    let mut conn = pg(admin_url).await;
    let verifier = sentia_crypto::scram_sha256_verifier(password.as_bytes());
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{verifier}'"
    )))
    .await
    .unwrap();
    role
}

/// Drops a role made by [`create_role`].
pub async fn drop_role(admin_url: &str, role: &str) {
    let mut conn = pg(admin_url).await;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{role}\""
    )))
    .await
    .unwrap();
}

/// True if `role`'s stored SCRAM verifier was made from `password`.
pub async fn role_has_password(admin_url: &str, role: &str, password: &str) -> bool {
    let mut conn = pg(admin_url).await;
    let v: Option<String> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    v.is_some_and(|v| sentia_crypto::scram_sha256_matches(&v, password.as_bytes()))
}

/// A Postgres connection.
pub async fn pg(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

/// `{"username", "password"}` as a secret value.
pub fn login(user: &str, password: &str) -> Vec<u8> {
    serde_json::json!({"username": user, "password": password})
        .to_string()
        .into_bytes()
}

/// The username and password in a login value.
pub fn parse_login(value: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    (
        v["username"].as_str().unwrap().into(),
        v["password"].as_str().unwrap().into(),
    )
}

/// A webhook rotator's endpoint: checks each request's signature, records its JSON body and
/// answers 200 — or 500 for the step named `fail`.
pub struct Endpoint {
    pub url: String,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Endpoint {
    /// Listens on a free port; requests must be signed with `secret`.
    pub async fn start(secret: &str, fail: Option<&str>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/rotate", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (secret, fail, log) = (secret.to_string(), fail.map(str::to_string), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body[..len].to_string());
                        }
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let ts: i64 = header("x-sentia-timestamp").parse().unwrap_or(0);
                let want =
                    sentia_runtime::webhook::SignedPost::signature(secret.as_bytes(), ts, &body)
                        .unwrap();
                let status = if header("x-sentia-signature") != want {
                    "401 Unauthorized"
                } else {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let failing = fail.as_deref() == v["step"].as_str();
                    log.lock().unwrap().push(v);
                    if failing {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    }
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        Self { url, seen }
    }

    /// The steps received, in order.
    pub fn steps(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["step"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Writes `value` at `path` as root, tagged with the secret class `class` (whose default
/// rotation policy then applies).
pub async fn put_tagged(s: &Stack, path: &str, class: &str, value: &[u8]) {
    s.secrets(&s.root_token)
        .await
        .put_secret(vpb::PutSecretRequest {
            path: path.into(),
            value: value.to_vec(),
            metadata: Some(vpb::SecretMetadata {
                path: path.into(),
                tags: [("class".to_string(), class.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// An in-memory metric exporter behind the global meter provider (global: one per test
/// process, so each metrics suite is a file of its own).
pub fn in_memory_metrics() -> (
    opentelemetry_sdk::metrics::SdkMeterProvider,
    opentelemetry_sdk::metrics::InMemoryMetricExporter,
) {
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    (provider, exporter)
}
