//! audit-service: the append-only, hash-chained audit log. Emitting services append batches;
//! every record's hash covers the previous one; checkpoints of the head are signed by a
//! key-service signing key so a rewritten chain is detectable even by someone holding the
//! database; the log is queried, tailed, exported and verified over gRPC.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod config;
pub mod error;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sentia_proto::audit::v1::Checkpoint;
use sentia_proto::audit::v1::audit_service_server::AuditServiceServer;
use sentia_proto::keys::v1::SignRequest;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_runtime::client::{AuthedChannel, connect_lazy};
use sentia_runtime::identity::VaultIdentity;
use sentia_runtime::jwt::{JwtVerifier, PublicKeySet};
use sentia_runtime::{BearerVerifier, Server, Shutdown};
use sentia_snapshot::Snapshots;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;

pub use config::Config;
pub use error::AuditError;

/// Runs audit-service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), AuditError> {
    let store = store::Store::connect(&config.database_url, config.max_connections).await?;
    let pool = store.pool().clone();
    let client = KeyServiceClient::new(
        config
            .key_service
            .channel()
            .map_err(sentia_runtime::RuntimeError::from)?,
    );
    let (head, _) = store.head().await?;
    let head = Arc::new(watch::Sender::new(head));
    let signer = Signer::new(client.clone(), &config.checkpoint_key);
    let witness = Arc::new(api::Witness::default());
    let checkpointer = tokio::spawn(checkpoints(
        store.clone(),
        signer.clone(),
        witness.clone(),
        config.checkpoint_every,
        config.checkpoint_interval,
        head.subscribe(),
        shutdown.clone(),
    ));
    tokio::spawn(purge_old(
        store.clone(),
        config.retention,
        config.retention_check,
        shutdown.clone(),
    ));
    let windows = match &config.redis_url {
        Some(url) => {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| AuditError::Invalid(format!("SENTIA_REDIS_URL: {e}")))?;
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(
                client,
                redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500))),
            )
            .map_err(|e| AuditError::Invalid(format!("redis: {e}")))?;
            alerts::Windows::Redis {
                conn,
                prefix: config.redis_prefix.clone(),
            }
        }
        None => alerts::Windows::memory(),
    };
    if let Some(after) = config.rules.drill_overdue_after {
        tokio::spawn(alerts::watch_drills(
            store.clone(),
            config.webhook.clone(),
            after,
            shutdown.clone(),
        ));
    }
    let alert_queue = alerts::spawn(
        alerts::Engine::new(config.rules.clone(), windows),
        store.clone(),
        config.webhook.clone(),
        shutdown.clone(),
    );
    let policies = sentia_policy::Policies::start(&config.policies, shutdown.clone().stopped())
        .map_err(AuditError::Invalid)?;
    let api = api::AuditApi::new(api::Parts {
        store,
        head,
        alerts: alert_queue,
        checkpoint_keys: PublicKeySet::from_key_service(client.clone(), &config.checkpoint_key),
        signer,
        witness,
        policies: policies.clone(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(api.clone().watch_chain(
        config.verify_interval,
        config.full_verify_interval,
        config.webhook.clone(),
    ));
    let verifier: Arc<dyn BearerVerifier> = match &config.vault_service {
        Some(vault) => Arc::new(VaultIdentity::new(
            connect_lazy(&vault.addr, vault.tls.as_ref())
                .map_err(sentia_runtime::RuntimeError::from)?,
            config.identity_cache_ttl,
        )),
        None => {
            let tokens = PublicKeySet::from_key_service(client, &config.jwt_key);
            // A signing key version retired after a rotation stops verifying within a minute.
            tokens.reload_every(Duration::from_secs(60), shutdown.clone());
            Arc::new(JwtVerifier(tokens))
        }
    };
    Server::new(config.server)
        .bearer_verifier(verifier)
        .audit_refusals(Arc::new(api.clone()))
        .serve(
            Routes::new(AuditServiceServer::new(api.clone())).add_service(
                Snapshots::new(pool, &config.database_url, Arc::new(api))
                    .admitting(config.backup_makers.admits())
                    .server(),
            ),
            listener,
            shutdown.clone(),
        )
        .await?;
    shutdown.trigger();
    let _ = checkpointer.await;
    Ok(())
}

/// Signs statements about the log (checkpoints, export ends) with key-service's checkpoint
/// key — the only key audit-service may sign with.
#[derive(Clone)]
pub struct Signer {
    client: KeyServiceClient<AuthedChannel>,
    key: String,
}

impl Signer {
    /// Signs with `key` through `client`.
    pub fn new(client: KeyServiceClient<AuthedChannel>, key: &str) -> Self {
        Self {
            client,
            key: key.to_string(),
        }
    }

    /// (signature, kid) of `message`.
    pub async fn sign(&self, message: String) -> Result<(Vec<u8>, String), AuditError> {
        let signed = self
            .client
            .clone()
            .sign(SignRequest {
                key_name: self.key.clone(),
                message: message.into_bytes(),
            })
            .await
            .map_err(AuditError::KeyService)?
            .into_inner();
        Ok((signed.signature, signed.kid))
    }
}

/// Signs a checkpoint of the head through key-service and stores it.
pub async fn sign_checkpoint(
    store: &store::Store,
    signer: &Signer,
) -> Result<Option<(u64, [u8; 32])>, AuditError> {
    let (sequence, hash) = store.head().await?;
    if sequence == 0 || sequence <= store.last_checkpoint().await? {
        return Ok(None);
    }
    let (signature, kid) = signer
        .sign(sentia_audit::checkpoint_message(sequence, &hash))
        .await?;
    store
        .add_checkpoint(&Checkpoint {
            sequence,
            head_hash: hash.to_vec(),
            signature,
            kid,
            time: None,
        })
        .await?;
    tracing::debug!(sequence, "audit checkpoint signed");
    Ok(Some((sequence, hash)))
}

/// Purges records past retention every `check`, keeping the chain anchored.
async fn purge_old(store: store::Store, retention: Duration, check: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(check) => {}
        }
        let before =
            sentia_proto::wkt::now_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
        match store.purge(before).await {
            Ok((0, _)) => {}
            Ok((through, n)) => {
                tracing::info!(through, purged = n, "audit records past retention purged")
            }
            Err(e) => tracing::warn!(error = %e, "purging audit records failed; retrying later"),
        }
    }
}

/// Signs a checkpoint after `every` new records or `interval` after the last one.
async fn checkpoints(
    store: store::Store,
    signer: Signer,
    witness: Arc<api::Witness>,
    every: u64,
    interval: Duration,
    mut moved: watch::Receiver<u64>,
    shutdown: Shutdown,
) {
    let mut last_signed = store.last_checkpoint().await.unwrap_or(0);
    let mut since = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = moved.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let head = *moved.borrow();
        let due =
            head >= last_signed + every || (head > last_signed && since.elapsed() >= interval);
        if !due {
            continue;
        }
        match sign_checkpoint(&store, &signer).await {
            Ok(Some((s, hash))) => {
                witness.checkpoint(s, hash);
                last_signed = s;
                since = Instant::now();
            }
            Ok(None) => since = Instant::now(),
            Err(e) => {
                tracing::warn!(error = %e, "signing an audit checkpoint failed; retrying later")
            }
        }
    }
}
