//! Test harness for vault-service suites: key-service and vault-service started in-process on
//! ephemeral ports over a fresh SQLite file or a new Postgres database, an optional Redis
//! (behind a proxy the test can cut), and clients with chosen policies.
#![allow(clippy::unwrap_used, dead_code)]

/// Runs each named `async fn(&Stack)` as a test on SQLite and on Postgres.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(stack) = crate::support::Stack::start(crate::support::Backend::Sqlite, &[]).await {
                    super::$name(&stack).await;
                    stack.stop().await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(stack) = crate::support::Stack::start(crate::support::Backend::Postgres, &[]).await {
                    super::$name(&stack).await;
                    stack.stop().await;
                }
            })*
        }
    };
}

#[path = "../../../key-service/tests/support/mod.rs"]
pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext};
use sentia_runtime::{MapSource, Shutdown};
use tokio::net::{TcpListener, TcpStream};
use vault_service::Config;

pub use keys::{postgres_url, sqlite_url, unique};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL for `backend`, or None (announced) when Postgres is not available here.
pub async fn database(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(sqlite_url()),
        Backend::Postgres => postgres_url().await,
    }
}

/// The Redis URL for tests, or None (announced) outside CI when `SENTIA_TEST_REDIS_URL` is
/// not set. Under CI=true a missing Redis fails the test.
pub fn redis_url() -> Option<String> {
    match std::env::var("SENTIA_TEST_REDIS_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but SENTIA_TEST_REDIS_URL is not set"
            );
            eprintln!("SKIPPED: redis test (SENTIA_TEST_REDIS_URL not set; run `bash tests/run`)");
            None
        }
    }
}

/// A TCP proxy a test can cut (and restore), to see a peer disappear: Redis behind
/// vault-service, or vault-service behind a client.
pub struct Proxy {
    pub url: String,
    pub addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// A proxy to the Redis at `redis_url`; `url` is the proxied Redis URL.
    pub async fn start(redis_url: &str) -> Self {
        let target = redis_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut p = Self::to(&target).await;
        p.url = format!("redis://{}", p.addr);
        p
    }

    /// A proxy to `target` (`host:port`).
    pub async fn to(target: &str) -> Self {
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let url = format!("http://{addr}");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close at once
                }
                let target = target.clone();
                let (up, cut) = (up2.clone(), cut2.clone());
                tokio::spawn(async move {
                    // Listen for a cut before anything can be forwarded, and then look at the
                    // flag: a cut while this connection was still being set up is not missed.
                    let cutting = cut.notified();
                    tokio::pin!(cutting);
                    cutting.as_mut().enable();
                    if !up.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cutting => {}
                    }
                });
            }
        });
        Self { url, addr, up, cut }
    }

    /// Drops every connection and refuses new ones, as if the peer had stopped.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// key-service plus vault-service, in this process.
pub struct Stack {
    pub keys: keys::Running,
    pub addr: String,
    pub database_url: String,
    pub root_token: String,
    pub dir: std::path::PathBuf,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Starts both services on `backend` (None when that backend is unavailable here), with
    /// `extra` vault-service settings.
    pub async fn start(backend: Backend, extra: &[(&str, &str)]) -> Option<Self> {
        let keys_db = database(backend).await?;
        let vault_db = database(backend).await?;
        let keys = keys::Running::start(&keys_db, &[]).await;
        Some(Self::start_vault(keys, vault_db, extra).await)
    }

    /// Starts vault-service against a running key-service and an existing database.
    pub async fn start_vault(
        keys: keys::Running,
        database_url: String,
        extra: &[(&str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(unique("sentia_vault"));
        std::fs::create_dir_all(&dir).unwrap();
        let root_file = dir.join("root-token");
        let root_file_s = root_file.display().to_string();
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", database_url.as_str()),
            ("SENTIA_KEY_SERVICE_ADDR", keys.addr.as_str()),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::SERVICE_TOKEN),
            ("SENTIA_ROOT_TOKEN_FILE", root_file_s.as_str()),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ];
        pairs.extend_from_slice(extra);
        let config = Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle =
            tokio::spawn(async move { vault_service::run(config, listener, stop).await.unwrap() });
        let mut stack = Self {
            keys,
            addr,
            database_url,
            root_token: String::new(),
            dir,
            shutdown,
            handle,
        };
        // Ready once Login (public) answers; the root token file is written before serving.
        for _ in 0..500 {
            let r = stack
                .auth("")
                .await
                .login(pb::LoginRequest::default())
                .await;
            if matches!(r, Err(e) if e.code() == tonic::Code::Unauthenticated) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stack.root_token = std::fs::read_to_string(&root_file).unwrap_or_default();
        stack
    }

    async fn channel(&self, token: &str) -> AuthedChannel {
        let channel = sentia_runtime::client::connect_lazy(&self.addr, None).unwrap();
        let token = (!token.is_empty()).then_some(token);
        CallContext::with_token(token).unwrap().wrap(channel)
    }

    /// A SecretService client with `token`.
    pub async fn secrets(&self, token: &str) -> SecretServiceClient<AuthedChannel> {
        SecretServiceClient::new(self.channel(token).await)
    }

    /// An AuthService client with `token`.
    pub async fn auth(&self, token: &str) -> AuthServiceClient<AuthedChannel> {
        AuthServiceClient::new(self.channel(token).await)
    }

    /// Creates an app credential (as root) with `policies`.
    pub async fn credential(
        &self,
        name: &str,
        policies: &[&str],
    ) -> pb::CreateAppCredentialResponse {
        self.auth(&self.root_token)
            .await
            .create_app_credential(pb::CreateAppCredentialRequest {
                name: name.into(),
                policies: policies.iter().map(|s| s.to_string()).collect(),
                token_ttl: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Creates an app credential with `policies` and logs in: returns (token, token id).
    pub async fn login_as(&self, policies: &[&str]) -> (String, String) {
        let cred = self.credential(&unique("app"), policies).await;
        let login = self
            .auth("unused")
            .await
            .login(pb::LoginRequest {
                role_id: cred.role_id,
                secret_id: cred.secret_id,
            })
            .await
            .unwrap()
            .into_inner();
        (login.token, login.token_id)
    }

    /// Writes `value` at `path` as root; returns the version.
    pub async fn put(&self, path: &str, value: &[u8]) -> u64 {
        self.secrets(&self.root_token)
            .await
            .put_secret(put(path, value))
            .await
            .unwrap()
            .into_inner()
            .version
    }

    /// Another vault-service replica on the same database and key-service.
    pub async fn replica(&self, extra: &[(&str, &str)]) -> Replica {
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", self.database_url.as_str()),
            ("SENTIA_KEY_SERVICE_ADDR", self.keys.addr.as_str()),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::SERVICE_TOKEN),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ];
        pairs.extend_from_slice(extra);
        let config = Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle =
            tokio::spawn(async move { vault_service::run(config, listener, stop).await.unwrap() });
        Replica {
            addr,
            shutdown,
            handle,
        }
    }

    /// Stops vault-service (key-service keeps running) and returns the key-service handle.
    pub async fn stop_vault(self) -> keys::Running {
        self.shutdown.trigger();
        self.handle.await.unwrap();
        self.keys
    }

    /// Stops both services.
    pub async fn stop(self) {
        let keys = self.stop_vault().await;
        keys.stop().await;
    }
}

/// A second vault-service on the same database.
pub struct Replica {
    pub addr: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// A SecretService client with `token`.
    pub fn secrets(&self, token: &str) -> SecretServiceClient<AuthedChannel> {
        let channel = sentia_runtime::client::connect_lazy(&self.addr, None).unwrap();
        SecretServiceClient::new(CallContext::with_token(Some(token)).unwrap().wrap(channel))
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.unwrap();
    }
}

/// A plain Put request.
pub fn put(path: &str, value: &[u8]) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        path: path.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

/// A Get request for the CURRENT version.
pub fn get(path: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        path: path.into(),
        selector: None,
    }
}

/// A Get request for a version.
pub fn get_version(path: &str, version: u64) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        path: path.into(),
        selector: Some(pb::get_secret_request::Selector::Version(version)),
    }
}

/// A Get request for a label.
pub fn get_label(path: &str, label: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        path: path.into(),
        selector: Some(pb::get_secret_request::Selector::Label(label.into())),
    }
}
