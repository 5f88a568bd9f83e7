//! An app-credential session: the token a [`Client`](crate::Client) logged in with, renewed
//! before it expires by logging in again, so a long-running service never has to handle an
//! expired token itself.

use std::time::Duration;

use sentia_channel::AuthedChannel;
use sentia_channel::CallContext;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use tokio::sync::watch;
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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The credential a session logs in with, kept only for renewals.
struct Credential {
    role_id: Zeroizing<String>,
    secret_id: Zeroizing<String>,
}

/// Exchanges an app credential for a token, retrying UNAVAILABLE.
pub(crate) async fn login(
    auth: &AuthServiceClient<AuthedChannel>,
    retry: &Retry,
    role_id: &str,
    secret_id: &str,
) -> Result<Login, ClientError> {
    let r = retry
        .run(|| {
            let mut auth = auth.clone();
            let req = pb::LoginRequest {
                role_id: role_id.to_string(),
                secret_id: secret_id.to_string(),
            };
            async move { auth.login(req).await }
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
    /// Starts renewing `first` (obtained with `role_id`/`secret_id` through `auth`) into
    /// `context`, which every channel of the client shares.
    pub(crate) fn start(
        auth: AuthServiceClient<AuthedChannel>,
        retry: Retry,
        context: CallContext,
        role_id: &str,
        secret_id: &str,
        first: &Login,
        renewal: Renewal,
    ) -> Self {
        let (tx, state) = watch::channel(SessionState {
            token_id: first.token_id.clone(),
            expires_at: first.expires_at,
            renewals: 0,
        });
        let credential = Credential {
            role_id: Zeroizing::new(role_id.to_string()),
            secret_id: Zeroizing::new(secret_id.to_string()),
        };
        let task = tokio::spawn(renew(auth, retry, context, credential, renewal, tx));
        Self { state, task }
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

async fn renew(
    auth: AuthServiceClient<AuthedChannel>,
    retry: Retry,
    context: CallContext,
    credential: Credential,
    renewal: Renewal,
    tx: watch::Sender<SessionState>,
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
        tokio::time::sleep(wait).await;
        match login(&auth, &retry, &credential.role_id, &credential.secret_id).await {
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
            // The credential was revoked, rotated or used up: no retry can succeed.
            Err(e)
                if matches!(
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
