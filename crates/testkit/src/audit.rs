//! audit-service in this process, for suites that read what the other services recorded.

use sentia_runtime::{MapSource, Shutdown};
use tokio::net::TcpListener;

use crate::{keys, sqlite_url};

/// audit-service in this process on a fresh SQLite file, accepting the harness's tokens and
/// signing checkpoints through the key-service at `keys_addr`.
pub struct AuditService {
    /// `host:port` it serves on.
    pub addr: String,
    stop: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl AuditService {
    /// Serves on `listener` (bound by the caller, whose other services may need the address
    /// before audit-service starts).
    pub async fn start(listener: TcpListener, keys_addr: &str) -> Self {
        let addr = listener.local_addr().unwrap().to_string();
        let db = sqlite_url();
        let tokens = keys::tokens();
        let config = audit_service::Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", db.as_str()),
            ("SENTIA_KEY_SERVICE_ADDR", keys_addr),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::SERVICE_TOKEN),
            ("SENTIA_AUTH_TOKENS", tokens.as_str()),
        ]))
        .unwrap();
        let stop = Shutdown::new();
        let shutdown = stop.clone();
        let handle = tokio::spawn(async move {
            audit_service::run(config, listener, shutdown)
                .await
                .unwrap()
        });
        Self { addr, stop, handle }
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.stop.trigger();
        self.handle.await.unwrap();
    }
}
