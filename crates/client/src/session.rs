//! A logged-in session: the token a [`Client`](crate::Client) logged in with (by app credential
//! or Kubernetes service account), renewed before it expires by logging in again, so a
//! long-running service never has to handle an expired token itself.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sentia_channel::AuthedChannel;
use sentia_channel::CallContext;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use tokio::sync::{Notify, watch};
use tonic::Code;
use zeroize::Zeroizing;

use crate::{ClientError, Login, Retry};

/// When a session renews its token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Renewal {
    /// Renew once this much of the token's lifetime is left; `None` (the default) renews when a
    /// third is left, which leaves room for retries against an unavailable server.
    pub before_expiry: Option<Duration>,
}

/// The token a session holds now (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The current token's id (JWT `jti`), for revocation.
    pub token_id: String,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
    /// Logins since the first (renewals that succeeded).
    pub renewals: u64,
}

/// A running renewal; stops when the last client sharing it is dropped.
#[derive(Debug)]
pub(crate) struct Session {
    state: watch::Receiver<SessionState>,
    /// Wakes the renewal task before its time (a call was refused).
    nudge: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a client logs in with; kept by the session for its renewals.
#[derive(Clone)]
pub enum Credential {
    /// An app credential: role id and secret id.
    App {
        /// The public role id.
        role_id: String,
        /// The secret id.
        secret_id: Zeroizing<String>,
    },
    /// A Kubernetes login role and the file holding the pod's projected service-account
    /// token, read again at every login because the kubelet replaces it before it expires.
    Kubernetes {
        /// The role (a key of the policy file's `[kubernetes.roles]`).
        role: String,
        /// The token file, e.g. `/var/run/secrets/tokens/sentia`.
        token_file: PathBuf,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App { role_id, .. } => f
                .debug_struct("App")
                .field("role_id", role_id)
                .finish_non_exhaustive(),
            Self::Kubernetes { role, token_file } => f
                .debug_struct("Kubernetes")
                .field("role", role)
                .field("token_file", token_file)
                .finish(),
        }
    }
}

impl Credential {
    /// The login request this credential makes now; a Kubernetes token is read from its file.
    async fn request(&self) -> Result<Request, ClientError> {
        Ok(match self {
            Self::App { role_id, secret_id } => Request::App(pb::LoginRequest {
                role_id: role_id.clone(),
                secret_id: secret_id.to_string(),
            }),
            Self::Kubernetes { role, token_file } => {
                let jwt =
                    Zeroizing::new(tokio::fs::read_to_string(token_file).await.map_err(|e| {
                        ClientError::Setup(format!(
                            "cannot read the service-account token {}: {e}",
                            token_file.display()
                        ))
                    })?);
                Request::Kubernetes(pb::LoginKubernetesRequest {
                    role: role.clone(),
                    jwt: jwt.trim().to_string(),
                })
            }
        })
    }
}

enum Request {
    App(pb::LoginRequest),
    Kubernetes(pb::LoginKubernetesRequest),
}

/// Logs in with `credential`, retrying UNAVAILABLE.
pub(crate) async fn login(
    auth: &AuthServiceClient<AuthedChannel>,
    retry: &Retry,
    credential: &Credential,
) -> Result<Login, ClientError> {
    let request = credential.request().await?;
    let r = retry
        .run(|| {
            let mut auth = auth.clone();
            let request = match &request {
                Request::App(r) => Request::App(r.clone()),
                Request::Kubernetes(r) => Request::Kubernetes(r.clone()),
            };
            async move {
                match request {
                    Request::App(r) => auth.login(r).await,
                    Request::Kubernetes(r) => auth.login_kubernetes(r).await,
                }
            }
        })
        .await?
        .into_inner();
    Ok(Login {
        token: Zeroizing::new(r.token),
        token_id: r.token_id,
        expires_at: r.expire_time.map_or(0, |t| t.seconds),
    })
}

impl Session {
    /// Starts renewing `first` (obtained with `credential` through `auth`) into `context`,
    /// which every channel of the client shares.
    pub(crate) fn start(
        auth: AuthServiceClient<AuthedChannel>,
        retry: Retry,
        context: CallContext,
        credential: Credential,
        first: &Login,
        renewal: Renewal,
    ) -> Self {
        let (tx, state) = watch::channel(SessionState {
            token_id: first.token_id.clone(),
            expires_at: first.expires_at,
            renewals: 0,
        });
        let nudge = Arc::new(Notify::new());
        let task = tokio::spawn(renew(
            auth,
            retry,
            context,
            credential,
            renewal,
            tx,
            nudge.clone(),
        ));
        Self { state, nudge, task }
    }

    /// Logs in again now, for a call whose token was refused; true once a new token is in
    /// use, false if renewal has ended (the credential was refused) or takes over
    /// [`RENEW_NOW_WAIT`].
    pub(crate) async fn renew_now(&self) -> bool {
        let mut state = self.state.clone();
        let before = state.borrow().renewals;
        self.nudge.notify_one();
        matches!(
            tokio::time::timeout(RENEW_NOW_WAIT, state.wait_for(|s| s.renewals > before)).await,
            Ok(Ok(_))
        )
    }

    /// The current token's id and expiry, updated at each renewal.
    pub(crate) fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }
}

/// How long to wait before renewing a token that has `left` seconds to live.
fn renew_in(left: i64, renewal: Renewal) -> Duration {
    let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
    let before = renewal.before_expiry.unwrap_or(left / 3);
    left.saturating_sub(before).max(Duration::from_secs(1))
}

/// How long a refused call waits for an immediate renewal.
const RENEW_NOW_WAIT: Duration = Duration::from_secs(30);

async fn renew(
    auth: AuthServiceClient<AuthedChannel>,
    retry: Retry,
    context: CallContext,
    credential: Credential,
    renewal: Renewal,
    tx: watch::Sender<SessionState>,
    nudge: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        let (expires_at, renewals) = {
            let s = tx.borrow();
            (s.expires_at, s.renewals)
        };
        if expires_at == 0 {
            return; // a token without an expiry needs no renewal
        }
        let left = expires_at - sentia_proto::wkt::now_secs();
        let wait = if failures == 0 {
            renew_in(left, renewal)
        } else {
            retry.delay(failures.min(16))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = nudge.notified() => {}
        }
        match login(&auth, &retry, &credential).await {
            Ok(next) => {
                if let Err(e) = context.set_token(Some(&next.token)) {
                    tracing::error!(error = %e, "renewed token cannot be sent; keeping the old one");
                    return;
                }
                failures = 0;
                tx.send_replace(SessionState {
                    token_id: next.token_id,
                    expires_at: next.expires_at,
                    renewals: renewals + 1,
                });
                tracing::debug!("token renewed");
            }
            // The app credential was revoked, rotated or used up: no retry can succeed. (A
            // Kubernetes token file is replaced by the kubelet, so a refusal may pass.)
            Err(e)
                if matches!(credential, Credential::App { .. })
                    && matches!(
                        e.code(),
                        Some(Code::Unauthenticated | Code::PermissionDenied)
                    ) =>
            {
                tracing::error!(error = %e, "token renewal refused; the session ends when its token expires");
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "token renewal failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_when_a_third_of_its_life_is_left_or_when_asked() {
        assert_eq!(
            renew_in(3600, Renewal::default()),
            Duration::from_secs(2400)
        );
        let early = Renewal {
            before_expiry: Some(Duration::from_secs(58)),
        };
        assert_eq!(renew_in(60, early), Duration::from_secs(2));
        // Already inside the window, or expired: renew almost at once, never in a busy loop.
        assert_eq!(renew_in(30, early), Duration::from_secs(1));
        assert_eq!(renew_in(-5, Renewal::default()), Duration::from_secs(1));
    }
}
