//! rotation-scheduler: rotation policies, the schedule, and the crash-safe rotation state
//! machine (create_pending → set → test → finish → cleanup, each step persisted before it
//! runs). One replica at a time leads, through a fenced lease in the database; the others
//! serve the API and take over when the leader's lease runs out.
#![forbid(unsafe_code)]

pub mod api;
pub mod backups;
pub mod config;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod rotator;
pub mod schedule;
pub mod steps;
pub mod store;
pub mod vault;

use std::sync::Arc;

use sentia_proto::rotation::v1::rotation_service_server::RotationServiceServer;
use sentia_runtime::{Server, Shutdown};
use sentia_snapshot::Snapshots;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use config::{Config, Hooks};
pub use engine::Stopped;
pub use error::RotationError;
pub use sentia_runtime::Clock;

/// Runs rotation-scheduler on `listener` until `shutdown`. Returns how the rotation loop
/// ended (a test hook can end it as a crash would, lease held and step unrecorded).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Stopped, RotationError> {
    #[cfg(feature = "test-hooks")]
    tracing::warn!(
        "built with the test-hooks feature: injected failures are possible; not for production"
    );
    let store = store::Store::connect(&config.database_url, config.max_connections).await?;
    let pool = store.pool().clone();
    let policies = sentia_policy::Policies::start(&config.policies, shutdown.clone().stopped())
        .map_err(RotationError::Startup)?;
    let emitter = sentia_runtime::audit::Emitter::start("rotation-scheduler", &config.audit)
        .map_err(|e| RotationError::Startup(e.to_string()))?;
    let vault = vault::Vault::new(
        sentia_client::Client::new(
            &config.vault_service.addr,
            config.vault_service.token.as_ref().map(|t| t.as_str()),
            config.vault_service.tls.as_ref(),
        )
        .map_err(|e| RotationError::Startup(format!("vault-service client: {e}")))?,
    );
    let key_channel = match &config.key_service {
        Some(k) => Some(k.channel().map_err(sentia_runtime::RuntimeError::from)?),
        None => None,
    };
    let keys = key_channel
        .clone()
        .map(sentia_proto::keys::v1::key_service_client::KeyServiceClient::new);
    let key_system =
        key_channel.map(sentia_proto::keys::v1::system_service_client::SystemServiceClient::new);
    let metrics = metrics::Metrics::new();
    let backups = match config.backups.clone() {
        Some(settings) => Some(scheduled_backups(
            settings,
            &config,
            backups::Wiring {
                sources: sentia_backup_ops::Sources {
                    keys: upstream(config.key_service.as_ref(), "SENTIA_KEY_SERVICE_ADDR")?,
                    vault: upstream(Some(&config.vault_service), "SENTIA_VAULT_SERVICE_ADDR")?,
                    audit: upstream(config.audit.upstream.as_ref(), "SENTIA_AUDIT_SERVICE_ADDR")?,
                    scheduler: backups::local_source(pool.clone(), &config.database_url),
                },
                store: store.clone(),
                emitter: emitter.clone(),
                metrics: metrics.clone(),
                clock: config.hooks.clock.clone(),
                replica: config.replica_id.clone(),
                shutdown: shutdown.clone(),
            },
        )?),
        None => None,
    };
    let engine = engine::Engine {
        store,
        vault,
        keys,
        key_system,
        emitter: emitter.clone(),
        replica: config.replica_id.clone(),
        tick: config.tick,
        lease: config.lease,
        emergency_grace: config.emergency_grace,
        hooks: config.hooks.clone(),
        metrics,
        current_times: engine::CurrentTimes::default(),
        backups,
    };
    let api = api::RotationApi::new(engine.clone(), policies.clone(), emitter.clone());
    let callers = sentia_runtime::identity::VaultIdentity::new(
        sentia_runtime::client::connect_lazy(
            &config.vault_service.addr,
            config.vault_service.tls.as_ref(),
        )
        .map_err(sentia_runtime::RuntimeError::from)?,
        config.identity_cache_ttl,
    );
    let server_stop = Shutdown::new();
    let server = tokio::spawn(
        Server::new(config.server)
            .bearer_verifier(Arc::new(callers))
            .audit_refusals(emitter.clone())
            .serve(
                Routes::new(RotationServiceServer::new(api)).add_service(
                    Snapshots::new(pool, &config.database_url, emitter)
                        .admitting(sentia_snapshot::by_policy(policies.clone()))
                        .server(),
                ),
                listener,
                server_stop.clone(),
            ),
    );
    let stopped = if config.paused {
        tracing::warn!(
            "rotation is paused (SENTIA_ROTATION_PAUSED): no rotation runs until it is unset"
        );
        shutdown.clone().stopped().await;
        Stopped::Shutdown
    } else {
        engine.run(shutdown.clone()).await
    };
    server_stop.trigger();
    if stopped == Stopped::Crashed {
        server.abort();
        return Ok(stopped);
    }
    server
        .await
        .map_err(|e| RotationError::Startup(format!("server task: {e}")))??;
    Ok(stopped)
}

/// The backup maker for `settings`, its destinations checked now so a bad one stops the start.
fn scheduled_backups(
    settings: backups::BackupConfig,
    config: &Config,
    wiring: backups::Wiring,
) -> Result<backups::Backups, RotationError> {
    let every = settings.interval;
    let made = backups::Backups::new(settings, wiring)
        .map_err(|e| RotationError::Startup(format!("SENTIA_BACKUP_DESTINATIONS: {e}")))?;
    if !config.paused {
        tracing::info!(every = ?every, "scheduled backups on: the leader makes them");
    }
    Ok(made)
}

/// A channel to an upstream the backups need; `variable` names the setting when it is absent.
fn upstream(
    upstream: Option<&sentia_runtime::UpstreamConfig>,
    variable: &str,
) -> Result<sentia_channel::AuthedChannel, RotationError> {
    upstream
        .ok_or_else(|| RotationError::Startup(format!("scheduled backups need {variable}")))?
        .channel()
        .map_err(|e| RotationError::Startup(format!("{variable}: {e}")))
}
