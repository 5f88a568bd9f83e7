//! Webhook alert sink: each alert is POSTed as JSON through the runtime's signed POST
//! (`X-Sentia-Timestamp`, `X-Sentia-Signature: sha256=<hex HMAC-SHA256(secret,
//! "<timestamp>.<body>")>`). Failed deliveries (network errors, 408, 429, 5xx) are retried
//! with exponential backoff.

use std::time::Duration;

use sentia_proto::audit::v1::Alert;
use sentia_runtime::Reader;
use sentia_runtime::webhook::SignedPost;
use zeroize::Zeroizing;

/// Where and how alerts are delivered.
#[derive(Clone, Debug)]
pub struct Webhook {
    endpoint: SignedPost,
    attempts: u32,
}

/// Delivery attempts before an alert is given up (and logged).
const ATTEMPTS: u32 = 5;

impl Webhook {
    /// `SENTIA_ALERT_WEBHOOK_URL` (http or https) and `SENTIA_ALERT_WEBHOOK_SECRET` (at least
    /// 16 bytes); `None` when no URL is set.
    pub fn from_source(r: &mut Reader<'_>) -> Option<Self> {
        let url = r.optional("SENTIA_ALERT_WEBHOOK_URL")?;
        let secret = r
            .optional("SENTIA_ALERT_WEBHOOK_SECRET")
            .map(|s| Zeroizing::new(s.into_bytes()))
            .unwrap_or_default();
        match SignedPost::new(&url, secret) {
            Ok(endpoint) => Some(Self {
                endpoint,
                attempts: ATTEMPTS,
            }),
            Err(e) => {
                r.problem(format!(
                    "SENTIA_ALERT_WEBHOOK_URL / SENTIA_ALERT_WEBHOOK_SECRET: {e}"
                ));
                None
            }
        }
    }

    /// A webhook to `url` signed with `secret` (tests).
    pub fn new(url: &str, secret: &[u8]) -> Option<Self> {
        Some(Self {
            endpoint: SignedPost::new(url, Zeroizing::new(secret.to_vec())).ok()?,
            attempts: ATTEMPTS,
        })
    }

    /// The JSON body for an alert.
    pub fn body(alert: &Alert) -> String {
        serde_json::json!({
            "id": alert.id, "rule": alert.rule,
            "severity": match alert.severity { 2 => "critical", 1 => "warning", 3 => "info", _ => "unspecified" },
            "summary": alert.summary, "principal": alert.principal, "secret_name": alert.secret_name,
            "time_unix": alert.time.as_ref().map(|t| t.seconds), "sequences": alert.sequences,
        })
        .to_string()
    }

    /// Delivers `alert`, retrying transient failures; returns whether it was accepted.
    pub async fn deliver(&self, alert: &Alert) -> bool {
        let body = Self::body(alert);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=self.attempts {
            match self.endpoint.post(&body).await.map(|a| a.status) {
                Ok(status) if status.is_success() => return true,
                Ok(status)
                    if !(status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429) =>
                {
                    tracing::error!(%status, alert = %alert.id, "webhook refused the alert; not retrying");
                    return false;
                }
                Ok(status) => {
                    tracing::warn!(%status, attempt, alert = %alert.id, "webhook delivery failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, alert = %alert.id, "webhook delivery failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        tracing::error!(alert = %alert.id, rule = %alert.rule, "webhook delivery gave up; the alert stays listed by ListAlerts");
        false
    }
}
