//! key-service: the only holder of master key material. It keeps the keyring (named,
//! versioned keys wrapped under a master-derived key), hands out and unwraps data keys, does
//! small-payload encryption, HMACs and Ed25519 signatures, and manages seal state.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod core;
pub mod error;
pub mod grants;
pub mod keyring;
pub mod store;

use std::sync::Arc;

use sentia_proto::keys::v1::key_service_server::KeyServiceServer;
use sentia_proto::keys::v1::system_service_server::SystemServiceServer;
use sentia_runtime::{Server, Shutdown};
use sentia_snapshot::Snapshots;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use config::{Config, MasterSource};
pub use error::KeyError;

/// Runs key-service on `listener` until `shutdown`. With a master key or password configured
/// it unseals at start (initializing the keyring on first run); in Shamir mode it starts
/// sealed and waits for Init or Unseal.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), KeyError> {
    let store = store::Store::connect(&config.database_url, config.max_connections).await?;
    let pool = store.pool().clone();
    let core = Arc::new(core::Core::new(
        store,
        config.master.seal_type(),
        config.max_encryptions_per_version,
        config.default_keys.clone(),
        config.recovery_public_key.clone(),
    ));
    match config.master {
        MasterSource::Key(master) => core.unseal(&master, None).await?,
        MasterSource::Password {
            password,
            salt,
            iterations,
        } => {
            let master = tokio::task::spawn_blocking(move || {
                sentia_crypto::MasterKey::from_password(
                    password.as_bytes(),
                    salt.as_bytes(),
                    iterations,
                )
            })
            .await
            .map_err(|e| KeyError::Startup(format!("key derivation task failed: {e}")))??;
            core.unseal(&master, None).await?;
        }
        MasterSource::Shamir => {
            tracing::warn!(
                "key-service starts sealed (Shamir): call Init once, then Unseal with the shares"
            )
        }
        MasterSource::Recovery => {
            tracing::warn!(
                "key-service starts sealed for recovery: Unseal with the recovery private key \
                 (sentia key unseal --recovery-key-file FILE), then rotate the master key"
            )
        }
    }
    let upkeep = tokio::spawn(upkeep(
        core.clone(),
        config.refresh_interval,
        shutdown.clone(),
    ));
    let emitter = sentia_runtime::audit::Emitter::start("key-service", &config.audit)
        .map_err(|e| KeyError::Startup(e.to_string()))?;
    let api = api::Api::new(core, config.grants, emitter.clone())
        .with_master_key_file(config.master_key_file)
        .with_backup_makers(config.backup_makers.clone());
    let routes = Routes::new(KeyServiceServer::new(api.clone()))
        .add_service(SystemServiceServer::new(api))
        .add_service(
            Snapshots::new(pool, &config.database_url, emitter.clone())
                .admitting(config.backup_makers.admits())
                .server(),
        );
    Server::new(config.server)
        .audit_refusals(emitter)
        .public_method("/sentia.keys.v1.SystemService/Status")
        .public_method("/sentia.keys.v1.SystemService/Unseal")
        .serve(routes, listener, shutdown.clone())
        .await?;
    shutdown.trigger();
    let _ = upkeep.await;
    Ok(())
}

/// Runs [`core::Core::maintain`] every `interval` until shutdown.
async fn upkeep(core: Arc<core::Core>, interval: std::time::Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                if let Err(e) = core.maintain().await {
                    tracing::warn!(error = %e, "keyring upkeep failed; retrying next interval");
                }
            }
        }
    }
}
