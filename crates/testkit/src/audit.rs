//! audit-service in this process, for suites that read what the other services recorded.

use sentia_proto::audit::v1 as pb;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use sentia_runtime::{MapSource, Shutdown};
use tokio::net::TcpListener;

use crate::{keys, sqlite_url};

/// audit-service in this process, accepting the harness's tokens and signing checkpoints
/// through a key-service.
pub struct AuditService {
    /// `host:port` it serves on.
    pub addr: String,
    stop: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl AuditService {
    /// Serves on `listener` (bound by the caller, whose other services may need the address
    /// before audit-service starts) on a fresh SQLite file, signing through `keys_addr`.
    pub async fn start(listener: TcpListener, keys_addr: &str) -> Self {
        Self::start_on(listener, keys_addr, &sqlite_url(), &[]).await
    }

    /// [`AuditService::start`] on `database_url` with `extra` settings (later pairs win);
    /// returns once it answers health checks.
    pub async fn start_on(
        listener: TcpListener,
        keys_addr: &str,
        database_url: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let addr = listener.local_addr().unwrap().to_string();
        let tokens = keys::tokens();
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", database_url),
            ("SENTIA_KEY_SERVICE_ADDR", keys_addr),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::AUDIT_TOKEN),
            ("SENTIA_AUTH_TOKENS", tokens.as_str()),
        ];
        pairs.extend_from_slice(extra);
        let config = audit_service::Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        let stop = Shutdown::new();
        let shutdown = stop.clone();
        let handle = tokio::spawn(async move {
            audit_service::run(config, listener, shutdown)
                .await
                .unwrap()
        });
        crate::wait_for_health(&addr).await;
        Self { addr, stop, handle }
    }

    /// An AuditService client with `token`.
    pub fn client(&self, token: &str) -> AuditServiceClient<AuthedChannel> {
        let ch = connect_lazy(&self.addr, None).unwrap();
        AuditServiceClient::new(CallContext::with_token(Some(token)).unwrap().wrap(ch))
    }

    /// Every event in the log, oldest first, read as the operator (the reads are recorded
    /// in the log as they happen).
    pub async fn events(&self) -> Vec<pb::AuditEvent> {
        keys::audit_records(&self.client(keys::ADMIN_TOKEN))
            .await
            .into_iter()
            .filter_map(|r| r.event)
            .collect()
    }

    /// Every alert raised, acknowledged ones included, newest first.
    pub async fn alerts(&self) -> Vec<pb::Alert> {
        alerts_at(&self.addr).await
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.stop.trigger();
        self.handle.await.unwrap();
    }
}

/// Every alert the audit-service at `addr` raised, acknowledged ones included, newest first
/// (read as the operator).
pub async fn alerts_at(addr: &str) -> Vec<pb::Alert> {
    let ch = connect_lazy(addr, None).unwrap();
    AuditServiceClient::new(
        CallContext::with_token(Some(keys::ADMIN_TOKEN))
            .unwrap()
            .wrap(ch),
    )
    .list_alerts(pb::ListAlertsRequest {
        include_acknowledged: true,
        page_size: 1000,
        page_token: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .alerts
}
