//! Webhook alert sink: each alert is POSTed as JSON, signed so the receiver can check it came
//! from this deployment and is fresh: `X-Sentia-Timestamp: <unix seconds>` and
//! `X-Sentia-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. Receivers
//! should reject a timestamp older than a few minutes (replay). Failed deliveries (network
//! errors, 408, 429, 5xx) are retried with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sentia_proto::audit::v1::Alert;
use sentia_runtime::Reader;
use zeroize::Zeroizing;

/// Where and how alerts are delivered.
#[derive(Clone)]
pub struct Webhook {
    url: http::Uri,
    secret: Arc<Zeroizing<Vec<u8>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
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
            .map(|s| Zeroizing::new(s.into_bytes()));
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(_) => {
                r.problem(format!("SENTIA_ALERT_WEBHOOK_URL={url:?} is not a URL"));
                return None;
            }
        };
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                r.problem("SENTIA_ALERT_WEBHOOK_URL must start with http:// or https://");
                return None;
            }
        };
        let Some(secret) = secret.filter(|s| s.len() >= 16) else {
            r.problem("SENTIA_ALERT_WEBHOOK_SECRET must be set (at least 16 bytes) to sign webhook bodies");
            return None;
        };
        let tls = https.then(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            config.ok().map(Arc::new)
        });
        Some(Self {
            url: uri,
            secret: Arc::new(secret),
            tls: tls.flatten(),
            attempts: ATTEMPTS,
        })
    }

    /// A webhook to `url` signed with `secret` (tests).
    pub fn new(url: &str, secret: &[u8]) -> Option<Self> {
        Some(Self {
            url: url.parse().ok()?,
            secret: Arc::new(Zeroizing::new(secret.to_vec())),
            tls: None,
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

    /// `sha256=<hex>` over `"<timestamp>.<body>"`.
    pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> Result<String, String> {
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
            .map_err(|e| format!("webhook secret: {e}"))?;
        mac.update(format!("{timestamp}.{body}").as_bytes());
        Ok(format!(
            "sha256={}",
            hex::encode(mac.finalize().into_bytes())
        ))
    }

    /// Delivers `alert`, retrying transient failures; returns whether it was accepted.
    pub async fn deliver(&self, alert: &Alert) -> bool {
        let body = Self::body(alert);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=self.attempts {
            match self.post(&body).await {
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

    async fn post(&self, body: &str) -> Result<http::StatusCode, String> {
        let host = self
            .url
            .host()
            .ok_or("webhook URL has no host")?
            .to_string();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let timestamp = sentia_runtime::jwt::now_secs();
        let request = http::Request::post(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-sentia-timestamp", timestamp.to_string())
            .header(
                "x-sentia-signature",
                Self::signature(&self.secret, timestamp, body)?,
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let status = if https {
            let tls = self.tls.clone().ok_or("no TLS configuration")?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        Ok(status)
    }
}

async fn send<I>(io: I, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}
