//! Signed JSON POSTs to endpoints users run (alert sinks, webhook rotators): HTTP/1.1 over
//! TCP or TLS (rustls with ring, the Mozilla roots), every body signed so the receiver can
//! check it came from this deployment and is fresh: `X-Sentia-Timestamp: <unix seconds>` and
//! `X-Sentia-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. Receivers
//! should reject a timestamp older than a few minutes (replay).

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

/// Most bytes of a response body kept (for error messages).
const RESPONSE_KEEP: usize = 512;

/// An endpoint and the secret that signs what is sent to it.
#[derive(Clone)]
pub struct SignedPost {
    url: http::Uri,
    secret: Arc<Zeroizing<Vec<u8>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for SignedPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedPost")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: http::StatusCode,
    /// The start of the body (at most 512 bytes), lossily as text.
    pub body: String,
}

impl SignedPost {
    /// An `http://` or `https://` URL and a signing secret of at least 16 bytes.
    pub fn new(url: &str, secret: Zeroizing<Vec<u8>>) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        if uri.host().is_none() {
            return Err(format!("{url:?} has no host"));
        }
        if secret.len() < 16 {
            return Err("the signing secret must be at least 16 bytes".into());
        }
        let tls = if https {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Self {
            url: uri,
            secret: Arc::new(secret),
            tls,
        })
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

    /// POSTs `body` (JSON) once; Err for network failures and timeouts (5 s to connect, 10 s
    /// for the answer).
    pub async fn post(&self, body: &str) -> Result<Answer, String> {
        let host = self
            .url
            .host()
            .ok_or("webhook URL has no host")?
            .to_string();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let timestamp = sentia_proto::wkt::now_secs();
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
        if https {
            let tls = self.tls.clone().ok_or("no TLS configuration")?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn send<I>(io: I, request: http::Request<Full<Bytes>>) -> Result<Answer, String>
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
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let keep = &bytes[..bytes.len().min(RESPONSE_KEEP)];
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(keep).into_owned(),
    })
}
