//! Typed Rust client for Sentia's vault-service: log in, read and write secrets with retries
//! on UNAVAILABLE, watch for changes with automatic resume, and keep a secret fresh in memory
//! so a service picks up rotations without a restart.
#![forbid(unsafe_code)]

mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sentia_channel::tls::TlsClientConfig;
use sentia_channel::{AuthedChannel, CallContext, connect_lazy};
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use tokio::sync::watch;
use tonic::{Code, Status, Streaming};
use zeroize::Zeroizing;

pub use sentia_proto::vault::v1::EventKind;
pub use session::{Credential, Renewal, SessionState};

use session::Session;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status (after retries, for UNAVAILABLE).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// The address or TLS settings are unusable.
    #[error("connection setup: {0}")]
    Setup(String),
    /// The background task keeping a secret fresh stopped.
    #[error("the watch keeping {0} fresh stopped")]
    WatchStopped(String),
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        Self::Status(s)
    }
}

impl ClientError {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn setup(e: sentia_channel::ChannelError) -> ClientError {
    ClientError::Setup(e.to_string())
}

/// Retry policy for calls that are safe to repeat: exponential backoff with jitter on
/// UNAVAILABLE (server restarting, key-service briefly unreachable).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl Retry {
    fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        // Full jitter: a random point in [base/2, base], so clients restarting together
        // do not retry in lockstep.
        let half = base / 2;
        let jitter = (uuid::Uuid::new_v4().as_u128() % (half.as_micros().max(1))) as u64;
        half + Duration::from_micros(jitter)
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are spent. Only for
    /// calls that are safe to repeat (reads; writes carrying a request id).
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) && attempt + 1 < self.attempts => {
                    tracing::debug!(attempt, message = s.message(), "unavailable; retrying");
                    tokio::time::sleep(self.delay(attempt)).await;
                    attempt += 1;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

/// UNAVAILABLE, ABORTED (a write that lost races and did not happen), or a connection that
/// broke mid-call (tonic reports those as UNKNOWN or CANCELLED with a transport error as the
/// source). Only idempotent calls are retried: reads, and writes that carry a request id.
fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Aborted)
        || std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// A secret value as read. The value is zeroized on drop and never shown by `Debug`.
#[derive(Clone)]
pub struct Secret {
    /// Path.
    pub path: String,
    /// Version read.
    pub version: u64,
    /// Content type.
    pub content_type: String,
    /// Labels on this version.
    pub labels: Vec<String>,
    value: Arc<Zeroizing<Vec<u8>>>,
}

impl Secret {
    /// The value.
    pub fn expose(&self) -> &[u8] {
        &self.value
    }

    /// The value as UTF-8, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    fn from_pb(r: pb::GetSecretResponse) -> Self {
        Self {
            path: r.path,
            version: r.version,
            content_type: r.content_type,
            labels: r.labels,
            value: Arc::new(Zeroizing::new(r.value)),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("labels", &self.labels)
            .field(
                "value",
                &format_args!("<{} bytes redacted>", self.value.len()),
            )
            .finish()
    }
}

/// The result of a login.
#[derive(Clone)]
pub struct Login {
    /// The JWT.
    pub token: Zeroizing<String>,
    /// Its id, for revocation.
    pub token_id: String,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A connection to vault-service.
#[derive(Clone)]
pub struct Client {
    secrets: SecretServiceClient<AuthedChannel>,
    auth: AuthServiceClient<AuthedChannel>,
    retry: Retry,
    /// The renewal of a logged-in client's token; shared by its clones.
    session: Option<Arc<Session>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `addr` (`host:port` or URI) sending `token`. Connects on first use and
    /// reconnects by itself.
    pub fn new(
        addr: &str,
        token: Option<&str>,
        tls: Option<&TlsClientConfig>,
    ) -> Result<Self, ClientError> {
        let context = CallContext::with_token(token).map_err(setup)?;
        Self::over(connect_lazy(addr, tls).map_err(setup)?, context)
    }

    /// Like [`Client::new`], but connects now: for a command-line tool, which should fail at
    /// once, naming the address, when the server is not there.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        tls: Option<&TlsClientConfig>,
    ) -> Result<Self, ClientError> {
        let context = CallContext::with_token(token).map_err(setup)?;
        let channel = sentia_channel::connect(addr, tls).await.map_err(setup)?;
        Self::over(channel, context)
    }

    fn over(channel: tonic::transport::Channel, context: CallContext) -> Result<Self, ClientError> {
        let channel = context.wrap(channel);
        Ok(Self {
            secrets: SecretServiceClient::new(channel.clone()),
            auth: AuthServiceClient::new(channel),
            retry: Retry::default(),
            session: None,
        })
    }

    /// Logs in with an app credential and returns a client carrying the new token, which it
    /// renews (by logging in again) while a third of its lifetime is left; clones share the
    /// renewed token, and renewal stops when the last clone is dropped.
    pub async fn login(
        addr: &str,
        role_id: &str,
        secret_id: &str,
        tls: Option<&TlsClientConfig>,
    ) -> Result<(Self, Login), ClientError> {
        let credential = Credential::App {
            role_id: role_id.to_string(),
            secret_id: Zeroizing::new(secret_id.to_string()),
        };
        Self::login_with(addr, credential, tls, Renewal::default()).await
    }

    /// Logs in with `credential` (an app credential or a Kubernetes service account) and
    /// renews the token at the chosen point, as [`Client::login`] does.
    pub async fn login_with(
        addr: &str,
        credential: Credential,
        tls: Option<&TlsClientConfig>,
        renewal: Renewal,
    ) -> Result<(Self, Login), ClientError> {
        let anonymous = Self::new(addr, None, tls)?;
        let login = session::login(&anonymous.auth, &anonymous.retry, &credential).await?;
        // Every channel of the client shares this context, so a renewal reaches them all.
        let context = CallContext::with_token(Some(&login.token)).map_err(setup)?;
        let mut client = Self::over(connect_lazy(addr, tls).map_err(setup)?, context.clone())?;
        client.session = Some(Arc::new(Session::start(
            anonymous.auth,
            anonymous.retry,
            context,
            credential,
            &login,
            renewal,
        )));
        Ok((client, login))
    }

    /// For a client from [`Client::login`]: the current token's id and expiry, which change at
    /// each renewal (`changed().await` waits for the next one).
    pub fn session(&self) -> Option<tokio::sync::watch::Receiver<SessionState>> {
        self.session.as_ref().map(|s| s.state())
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The raw SecretService stub, for calls this wrapper does not cover.
    pub fn secrets(&self) -> SecretServiceClient<AuthedChannel> {
        self.secrets.clone()
    }

    /// The raw AuthService stub.
    pub fn auth(&self) -> AuthServiceClient<AuthedChannel> {
        self.auth.clone()
    }

    /// Runs `call` with the retry policy. When a logged-in client's token is refused
    /// (UNAUTHENTICATED: it expired while renewals failed, was revoked, or its signing key was
    /// retired), the session logs in again at once and the call is tried once more.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        match self.retry.run(&mut call).await {
            Err(e) if e.code() == Some(Code::Unauthenticated) && self.renew_now().await => {
                self.retry.run(call).await
            }
            r => r,
        }
    }

    /// For a logged-in client: logs in again now; true once a new token is in use.
    async fn renew_now(&self) -> bool {
        match &self.session {
            Some(s) => s.renew_now().await,
            None => false,
        }
    }

    async fn read(&self, req: pb::GetSecretRequest) -> Result<Secret, ClientError> {
        let r = self
            .call(|| {
                let mut c = self.secrets.clone();
                let req = req.clone();
                async move { c.get_secret(req).await }
            })
            .await?;
        Ok(Secret::from_pb(r.into_inner()))
    }

    /// Reads the CURRENT version.
    pub async fn get(&self, path: &str) -> Result<Secret, ClientError> {
        self.read(pb::GetSecretRequest {
            path: path.into(),
            selector: None,
            allow_expired: false,
        })
        .await
    }

    /// Reads the CURRENT version even if the secret has expired (a plain [`Client::get`] is
    /// FAILED_PRECONDITION then). Audited as `read_expired`, and it raises an alert: for
    /// migrations and forensics, not for serving.
    pub async fn get_expired(&self, path: &str) -> Result<Secret, ClientError> {
        self.read(pb::GetSecretRequest {
            path: path.into(),
            selector: None,
            allow_expired: true,
        })
        .await
    }

    /// Reads a version number.
    pub async fn get_version(&self, path: &str, version: u64) -> Result<Secret, ClientError> {
        self.read(pb::GetSecretRequest {
            path: path.into(),
            selector: Some(pb::get_secret_request::Selector::Version(version)),
            allow_expired: false,
        })
        .await
    }

    /// Reads the version a label points at.
    pub async fn get_label(&self, path: &str, label: &str) -> Result<Secret, ClientError> {
        self.read(pb::GetSecretRequest {
            path: path.into(),
            selector: Some(pb::get_secret_request::Selector::Label(label.into())),
            allow_expired: false,
        })
        .await
    }

    /// Writes a new version (labelled CURRENT); with `expected_version`, only if the secret
    /// is still at that version. Retries are safe: every call carries a request id, so a
    /// retried write is applied once. Returns the version written.
    pub async fn put(
        &self,
        path: &str,
        value: &[u8],
        expected_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let req = pb::PutSecretRequest {
            path: path.into(),
            value: value.to_vec(),
            expected_version,
            request_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        };
        let r = self
            .call(|| {
                let mut c = self.secrets.clone();
                let req = req.clone();
                async move { c.put_secret(req).await }
            })
            .await?;
        Ok(r.into_inner().version)
    }

    /// Writes the value of `version` as a new version labelled CURRENT (undoing a bad
    /// rotation or a mistaken write; the value never comes to this client); with
    /// `expected_version`, only if the secret is still at that version. Retries are safe, as
    /// for [`Client::put`]. Returns the version written.
    pub async fn restore_version(
        &self,
        path: &str,
        version: u64,
        expected_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let req = pb::RestoreSecretVersionRequest {
            path: path.into(),
            version,
            expected_version,
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        let r = self
            .call(|| {
                let mut c = self.secrets.clone();
                let req = req.clone();
                async move { c.restore_secret_version(req).await }
            })
            .await?;
        Ok(r.into_inner().version)
    }

    /// Watches changes under `prefix` starting after `after_sequence` (0 = from now). The
    /// watch reconnects by itself and resumes where it stopped.
    pub fn watch(&self, prefix: &str, after_sequence: u64) -> Watch {
        Watch {
            client: self.clone(),
            prefix: prefix.to_string(),
            last: after_sequence,
            started: after_sequence != 0,
            stream: None,
            failures: 0,
        }
    }

    /// Reads `path` now and keeps the CURRENT value up to date in the background, by
    /// watching it: what a service holding a database password needs to survive rotation.
    pub async fn keep_fresh(&self, path: &str) -> Result<Fresh, ClientError> {
        let mut watch = self.watch(path, 0);
        // Position the watch before the first read, so no change between the two is missed.
        watch.open().await?;
        let first = self.get(path).await?;
        let (tx, rx) = watch::channel(first);
        let client = self.clone();
        let path = path.to_string();
        let task = tokio::spawn(async move {
            loop {
                let event = match watch.next().await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(path = %path, error = %e, "keep_fresh watch failed");
                        return;
                    }
                };
                if event.path != path || event.kind == EventKind::MetadataUpdated as i32 {
                    continue;
                }
                match client.get(&path).await {
                    Ok(s) if s.version != tx.borrow().version => {
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %path, error = %e, "re-reading a changed secret failed")
                    }
                }
            }
        });
        Ok(Fresh { rx, task })
    }
}

/// A resumable stream of change events (bookmarks are consumed internally).
pub struct Watch {
    client: Client,
    prefix: String,
    last: u64,
    started: bool,
    stream: Option<Streaming<pb::SecretEvent>>,
    failures: u32,
}

impl Watch {
    /// The last sequence seen: resume from it later with [`Client::watch`].
    pub fn position(&self) -> u64 {
        self.last
    }

    async fn open(&mut self) -> Result<(), ClientError> {
        let mut c = self.client.secrets.clone();
        let mut stream = c
            .watch_secrets(pb::WatchSecretsRequest {
                prefix: self.prefix.clone(),
                after_sequence: self.last,
            })
            .await?
            .into_inner();
        if !self.started {
            // The first message is a bookmark of the head: from now on, resume from it.
            if let Some(b) = stream.message().await? {
                self.last = b.sequence;
            }
            self.started = true;
        }
        self.stream = Some(stream);
        Ok(())
    }

    /// The next change. Disconnects and UNAVAILABLE are retried with backoff, resuming from
    /// the last sequence; a logged-in client whose token is refused renews it and resumes;
    /// other errors (e.g. OUT_OF_RANGE after a very long outage,
    /// PERMISSION_DENIED) are returned.
    pub async fn next(&mut self) -> Result<pb::SecretEvent, ClientError> {
        loop {
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err(ClientError::Status(s)) if transient(&s) => {
                        self.backoff().await;
                        continue;
                    }
                    Err(ClientError::Status(s))
                        if s.code() == Code::Unauthenticated && self.client.renew_now().await =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(e)) => {
                    self.failures = 0;
                    self.last = e.sequence;
                    if e.kind != EventKind::Bookmark as i32 {
                        return Ok(e);
                    }
                }
                Ok(None) => {
                    self.stream = None;
                    self.backoff().await;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                    ) =>
                {
                    tracing::debug!(code = ?s.code(), "watch interrupted; resuming");
                    self.stream = None;
                    self.backoff().await;
                }
                // The token the stream was opened with expired: resume with a renewed one.
                Err(s) if s.code() == Code::Unauthenticated && self.client.renew_now().await => {
                    self.stream = None;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    async fn backoff(&mut self) {
        let d = self.client.retry.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(d).await;
    }
}

/// A secret kept up to date by a background watch. Dropping it stops the watch.
pub struct Fresh {
    rx: watch::Receiver<Secret>,
    task: tokio::task::JoinHandle<()>,
}

impl Fresh {
    /// The latest CURRENT value.
    pub fn current(&self) -> Secret {
        self.rx.borrow().clone()
    }

    /// Waits until the value changes (a new CURRENT version).
    pub async fn changed(&mut self) -> Result<Secret, ClientError> {
        let path = self.rx.borrow().path.clone();
        self.rx
            .changed()
            .await
            .map_err(|_| ClientError::WatchStopped(path))?;
        Ok(self.rx.borrow().clone())
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let r = Retry::default();
        for attempt in 0..20 {
            let d = r.delay(attempt);
            let base = (r.initial * (1u32 << attempt.min(16))).min(r.max);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
    }

    #[test]
    fn secret_debug_never_shows_the_value() {
        let s = Secret::from_pb(pb::GetSecretResponse {
            path: "prod/db".into(),
            version: 3,
            value: b"hunter2".to_vec(),
            ..Default::default()
        });
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("7 bytes redacted"));
        assert_eq!(s.expose_str(), Some("hunter2"));
    }
}
