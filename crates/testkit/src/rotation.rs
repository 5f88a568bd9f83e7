//! rotation-scheduler in this process against a vault [`Stack`], with the identity the
//! deployment docs give it at vault-service.

use std::time::Duration;

use rotation_scheduler::{Config, Hooks, Stopped};
use sentia_proto::rotation::v1::rotation_service_client::RotationServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext};
use sentia_runtime::{MapSource, Role, Shutdown};
use tokio::net::TcpListener;

use crate::{Stack, unique};

/// The scheduler's static token at vault-service.
pub const SCHEDULER_TOKEN: &str = "rotation-scheduler-token-for-tests";

/// vault-service settings that let the scheduler in as `rotation-scheduler` with the seed's
/// system_admin policy, as the deployment docs configure it.
pub fn vault_settings() -> Vec<(&'static str, String)> {
    vec![
        (
            "SENTIA_AUTH_TOKENS",
            sentia_runtime::auth::TokenTable::from_plain([(
                "rotation-scheduler",
                Role::Service,
                SCHEDULER_TOKEN,
            )])
            .to_config(),
        ),
        (
            "SENTIA_IDENTITY_POLICIES",
            "rotation-scheduler=system_admin".to_string(),
        ),
        // Revocations and retired signing keys are noticed quickly.
        ("SENTIA_TOKEN_REFRESH", "200ms".to_string()),
    ]
}

/// A scheduler running in this process.
pub struct Scheduler {
    /// `host:port` it serves on.
    pub addr: String,
    /// Its database.
    pub database_url: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<Stopped>,
}

impl Scheduler {
    /// Starts a scheduler against `stack` on `database_url` with `hooks`.
    pub async fn start(stack: &Stack, database_url: &str, hooks: Hooks) -> Self {
        Self::start_with(stack, database_url, hooks, &[]).await
    }

    /// [`Scheduler::start`] with `extra` settings (later pairs win).
    pub async fn start_with(
        stack: &Stack,
        database_url: &str,
        hooks: Hooks,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_configured(stack, database_url, hooks, extra, |_| {}).await
    }

    /// [`Scheduler::start_with`], then `tweak` on the parsed config (what no variable sets:
    /// S3 options for a test's server).
    pub async fn start_configured(
        stack: &Stack,
        database_url: &str,
        hooks: Hooks,
        extra: &[(&str, &str)],
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let replica = unique("replica");
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
            ("SENTIA_DATABASE_URL", database_url),
            ("SENTIA_VAULT_SERVICE_ADDR", stack.addr.as_str()),
            ("SENTIA_VAULT_SERVICE_TOKEN", SCHEDULER_TOKEN),
            ("SENTIA_ROTATION_TICK", "50ms"),
            ("SENTIA_LEADER_LEASE", "5s"),
            ("SENTIA_REPLICA_ID", replica.as_str()),
        ];
        pairs.extend_from_slice(extra);
        let config = Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        let mut config = Config { hooks, ..config };
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move {
            rotation_scheduler::run(config, listener, stop)
                .await
                .unwrap()
        });
        Self {
            addr,
            database_url: database_url.to_string(),
            shutdown,
            handle,
        }
    }

    /// A RotationService client with `token`.
    pub fn client(&self, token: &str) -> RotationServiceClient<AuthedChannel> {
        let channel = sentia_runtime::client::connect_lazy(&self.addr, None).unwrap();
        RotationServiceClient::new(CallContext::with_token(Some(token)).unwrap().wrap(channel))
    }

    /// Waits for the loop to end on its own (a crash hook) and says how it ended.
    pub async fn died(self) -> Stopped {
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the scheduler did not stop")
            .unwrap()
    }

    /// Stops it cleanly.
    pub async fn stop(self) -> Stopped {
        self.shutdown.trigger();
        self.handle.await.unwrap()
    }
}
