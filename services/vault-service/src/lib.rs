//! vault-service: the public face of Sentia. Versioned secrets sealed under per-version data
//! keys from key-service, app-credential login with JWTs signed by key-service, path policies
//! (default deny), an optional Redis cache of sealed records, and a resumable change stream.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod error;
pub mod keys;
pub mod kubernetes;
pub mod model;
pub mod rewrap;
pub mod sequencer;
pub mod store;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::vault::v1::auth_service_server::AuthServiceServer;
use sentia_proto::vault::v1::secret_service_server::SecretServiceServer;
use sentia_runtime::jwt::PublicKeySet;
use sentia_runtime::{Server, Shutdown};
use sentia_snapshot::Snapshots;
use tokio::net::TcpListener;
use tonic::service::Routes;
use zeroize::Zeroizing;

pub use config::Config;
pub use error::VaultError;

/// How often old change-stream events are trimmed.
const TRIM_INTERVAL: Duration = Duration::from_secs(600);

/// Runs vault-service on `listener` until `shutdown`. At first start it mints the bootstrap
/// root token and shows it once (to `SENTIA_ROOT_TOKEN_FILE`, or stdout).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), VaultError> {
    let store = store::Store::connect(&config.database_url, config.max_connections).await?;
    let pool = store.pool().clone();
    let policies = sentia_policy::Policies::start(&config.policies, shutdown.clone().stopped())
        .map_err(VaultError::Startup)?;
    let emitter = sentia_runtime::audit::Emitter::start("vault-service", &config.audit)
        .map_err(|e| VaultError::Startup(e.to_string()))?;
    let client = KeyServiceClient::new(
        config
            .key_service
            .channel()
            .map_err(sentia_runtime::RuntimeError::from)?,
    );
    let keys = Arc::new(keys::Keys::new(
        client.clone(),
        config.data_key_name.clone(),
        config.jwt_key_name.clone(),
        config.dek_cache_ttl,
        config.dek_cache_max,
    ));
    let public_keys = PublicKeySet::from_key_service(client, &config.jwt_key_name);
    let tokens = auth::Tokens::load(store.clone(), keys.clone(), public_keys).await?;
    tokens.keep_fresh(config.token_refresh, shutdown.clone());
    if let Some(token) = tokens.bootstrap_root().await? {
        show_root_token(&token, config.root_token_file.as_ref())?;
    }

    let cache = match &config.redis_url {
        Some(url) => Some(Arc::new(
            cache::Cache::new(url, &config.redis_prefix, config.cache_ttl)
                .map_err(VaultError::Startup)?,
        )),
        None => None,
    };
    let (_, head) = store.stream_bounds().await?;
    let notifier = stream::Notifier::new(head, cache.clone());
    if let Some(url) = &config.redis_url {
        notifier.listen(url.clone(), shutdown.clone());
    }
    spawn_trim(store.clone(), config.event_retention, shutdown.clone());
    spawn_sequencer(store.clone(), shutdown.clone());
    let local = (!config.local_cache_ttl.is_zero()).then(|| {
        Arc::new(cache::LocalCache::new(
            config.local_cache_ttl,
            config.local_cache_max,
        ))
    });
    if let Some(local) = &local {
        spawn_follow(
            store.clone(),
            notifier.clone(),
            local.clone(),
            head,
            shutdown.clone(),
        );
    }

    let rewrapper = Arc::new(rewrap::Rewrapper::new(
        store.clone(),
        keys.client(),
        config.data_key_name.clone(),
        config.rewrap_batch,
        config.rewrap_retire_delay,
    ));
    if !config.rewrap_interval.is_zero() {
        tokio::spawn(
            rewrapper
                .clone()
                .run(config.rewrap_interval, shutdown.clone()),
        );
    }
    let secrets = api::SecretApi {
        rewrapper,
        clock: config.clock.clone(),
        store,
        keys,
        cache,
        local,
        policies: policies.clone(),
        notifier,
        audit: emitter.clone(),
        shutdown: shutdown.clone(),
        writers: Arc::new(api::PathLocks::new(1024)),
    };
    let auth_api = auth::AuthApi::new(tokens.clone(), policies.clone(), emitter.clone());
    let routes = Routes::new(SecretServiceServer::new(secrets))
        .add_service(AuthServiceServer::new(auth_api))
        .add_service(
            Snapshots::new(pool, &config.database_url, emitter.clone())
                .admitting(sentia_snapshot::by_policy(policies.clone()))
                .server(),
        );
    Server::new(config.server)
        .audit_refusals(emitter)
        .public_method("/sentia.vault.v1.AuthService/Login")
        .public_method("/sentia.vault.v1.AuthService/LoginKubernetes")
        .bearer_verifier(Arc::new(auth::TokenVerifier(tokens, policies)))
        .serve(routes, listener, shutdown.clone())
        .await?;
    shutdown.trigger();
    Ok(())
}

fn show_root_token(
    token: &Zeroizing<String>,
    file: Option<&std::path::PathBuf>,
) -> Result<(), VaultError> {
    match file {
        Some(path) => {
            write_private(path, token.as_bytes()).map_err(|e| {
                VaultError::Startup(format!("writing the root token to {}: {e}", path.display()))
            })?;
            tracing::warn!(file = %path.display(), "bootstrap root token written; move it to a safe place and delete the file");
        }
        None => {
            println!("\n==================== SENTIA ROOT TOKEN ====================");
            println!("  {}", token.as_str());
            println!("  Shown once. It holds every capability: store it offline, use it to");
            println!("  create app credentials, then revoke it (sentia token revoke).");
            println!("===========================================================\n");
        }
    }
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    sentia_runtime::private_file::open(
        path,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
    )?
    .write_all(contents)
}

/// Evicts the in-process cache entries of every path the change stream reports changed, so
/// other replicas' writes reach this replica's cache (at once with Redis pub/sub, within the
/// watch poll interval without).
fn spawn_follow(
    store: store::Store,
    notifier: stream::Notifier,
    local: Arc<cache::LocalCache>,
    head: u64,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let mut last = head;
        let mut moved = notifier.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = moved.changed() => {}
                _ = tokio::time::sleep(api::WATCH_POLL) => {}
            }
            loop {
                match store.events_after(last, 1000).await {
                    Ok(batch) => {
                        let Some(tail) = batch.last() else { break };
                        last = tail.sequence;
                        local.evict_changed(batch.iter().map(|e| (e.path.as_str(), e.sequence)));
                        if batch.len() < 1000 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the change stream for cache eviction failed");
                        break;
                    }
                }
            }
        }
    });
}

/// Numbers committed change-stream events (Postgres, [`sequencer`]): whenever a write waits
/// for its number, and every poll interval for events a crashed writer left behind.
fn spawn_sequencer(store: store::Store, shutdown: Shutdown) {
    let Some(sequencer) = store.sequencer() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            if let Err(e) = sequencer.run_passes(store.pool()).await {
                tracing::warn!(error = %e, "numbering change-stream events failed; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = sequencer.woken() => {}
                _ = tokio::time::sleep(api::WATCH_POLL) => {}
            }
        }
        // Writes answered during the drain still get their numbers.
        if let Err(e) = sequencer.run_passes(store.pool()).await {
            tracing::warn!(error = %e, "numbering change-stream events at shutdown failed");
        }
    });
}

fn spawn_trim(store: store::Store, retention: Duration, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {
                    let before = sentia_proto::wkt::now_ms() - retention.as_millis() as i64;
                    match store.trim_events(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(trimmed = n, "old change-stream events trimmed"),
                        Err(e) => tracing::warn!(error = %e, "trimming change-stream events failed"),
                    }
                }
            }
        }
    });
}
