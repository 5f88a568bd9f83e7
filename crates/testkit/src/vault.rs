//! vault-service in this process on top of a key-service: a [`Stack`], its replicas, and the
//! request builders its suites share.

use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext};
use sentia_runtime::{Clock, MapSource, Shutdown};
use tokio::net::TcpListener;
use vault_service::Config;

use crate::{Backend, database, keys, unique};

/// key-service plus vault-service, in this process.
pub struct Stack {
    /// The key-service it uses.
    pub keys: keys::Running,
    /// `host:port` of vault-service.
    pub addr: String,
    /// vault-service's database.
    pub database_url: String,
    /// The bootstrap root token it wrote on first start.
    pub root_token: String,
    /// A private directory of its files (root token file).
    pub dir: std::path::PathBuf,
    /// vault-service's clock (the system's unless started with one).
    pub clock: Clock,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Starts both services on `backend` (None when that backend is unavailable here), with
    /// `extra` vault-service settings.
    pub async fn start(backend: Backend, extra: &[(&str, &str)]) -> Option<Self> {
        Self::start_with_clock(backend, extra, Clock::default()).await
    }

    /// [`Stack::start`] with vault-service on `clock` (secret expiry without waiting).
    pub async fn start_with_clock(
        backend: Backend,
        extra: &[(&str, &str)],
        clock: Clock,
    ) -> Option<Self> {
        let keys_db = database(backend).await?;
        let vault_db = database(backend).await?;
        let keys = keys::Running::start(&keys_db, &[]).await;
        Some(Self::start_vault_with_clock(keys, vault_db, extra, clock).await)
    }

    /// Starts vault-service against a running key-service and an existing database.
    pub async fn start_vault(
        keys: keys::Running,
        database_url: String,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_vault_with_clock(keys, database_url, extra, Clock::default()).await
    }

    async fn start_vault_with_clock(
        keys: keys::Running,
        database_url: String,
        extra: &[(&str, &str)],
        clock: Clock,
    ) -> Self {
        let dir = crate::scratch_path(&unique("sentia_vault"));
        std::fs::create_dir_all(&dir).unwrap();
        let root_file = dir.join("root-token");
        let root_file_s = root_file.display().to_string();
        let mut pairs = vec![("SENTIA_ROOT_TOKEN_FILE", root_file_s.as_str())];
        pairs.extend_from_slice(extra);
        let (addr, shutdown, handle) = serve(&database_url, &keys.addr, &pairs, &clock).await;
        let mut stack = Self {
            keys,
            addr,
            database_url,
            root_token: String::new(),
            dir,
            clock,
            shutdown,
            handle,
        };
        stack.ready().await;
        stack.root_token = std::fs::read_to_string(&root_file).unwrap_or_default();
        stack
    }

    /// Waits until Login (public) answers; the root token file is written before serving.
    async fn ready(&self) {
        for _ in 0..500 {
            let r = self.auth("").await.login(pb::LoginRequest::default()).await;
            if matches!(r, Err(e) if e.code() == tonic::Code::Unauthenticated) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops vault-service and starts it again at the same address on the same database
    /// (the root token stays valid): an outage its clients must ride out.
    pub async fn restart_vault(&mut self) {
        self.shutdown.trigger();
        (&mut self.handle).await.unwrap();
        let (_, shutdown, handle) = serve_at(
            &self.database_url,
            &self.keys.addr,
            &[],
            &self.addr,
            &self.clock,
        )
        .await;
        (self.shutdown, self.handle) = (shutdown, handle);
        self.ready().await;
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
        let (addr, shutdown, handle) =
            serve(&self.database_url, &self.keys.addr, extra, &self.clock).await;
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

/// Runs vault-service on `database_url` with the key-service at `keys_addr`, plaintext on
/// loopback, audit off, and `extra` settings (later pairs win): its address, its shutdown,
/// and the task to join.
async fn serve(
    database_url: &str,
    keys_addr: &str,
    extra: &[(&str, &str)],
    clock: &Clock,
) -> (String, Shutdown, tokio::task::JoinHandle<()>) {
    serve_at(database_url, keys_addr, extra, "127.0.0.1:0", clock).await
}

async fn serve_at(
    database_url: &str,
    keys_addr: &str,
    extra: &[(&str, &str)],
    at: &str,
    clock: &Clock,
) -> (String, Shutdown, tokio::task::JoinHandle<()>) {
    let mut pairs = vec![
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_DATABASE_URL", database_url),
        ("SENTIA_KEY_SERVICE_ADDR", keys_addr),
        ("SENTIA_KEY_SERVICE_TOKEN", keys::SERVICE_TOKEN),
        ("SENTIA_AUDIT_DISABLED", "true"),
    ];
    pairs.extend_from_slice(extra);
    let mut config = Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
    config.clock = clock.clone();
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle =
        tokio::spawn(async move { vault_service::run(config, listener, stop).await.unwrap() });
    (addr, shutdown, handle)
}

/// A second vault-service on the same database.
pub struct Replica {
    /// `host:port` of the replica.
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

    /// Shuts down and waits for the replica to stop.
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
        allow_expired: false,
    }
}

/// A Get request for a version.
pub fn get_version(path: &str, version: u64) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        path: path.into(),
        selector: Some(pb::get_secret_request::Selector::Version(version)),
        allow_expired: false,
    }
}

/// A Get request for a label.
pub fn get_label(path: &str, label: &str) -> pb::GetSecretRequest {
    pb::GetSecretRequest {
        path: path.into(),
        selector: Some(pb::get_secret_request::Selector::Label(label.into())),
        allow_expired: false,
    }
}
