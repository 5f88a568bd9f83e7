//! audit-service configuration from `SENTIA_*` variables (see `.env.example`).

use std::time::Duration;

use sentia_runtime::{ConfigError, Reader, ServerConfig, Source, UpstreamConfig};

use sentia_policy::PolicyConfig;

use crate::alerts::Rules;
use crate::webhook::Webhook;

/// Everything audit-service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, TLS and static tokens (emitting services authenticate with these or mTLS).
    pub server: ServerConfig,
    /// `SENTIA_DATABASE_URL`.
    pub database_url: String,
    /// `SENTIA_DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `SENTIA_KEY_SERVICE_ADDR` / `_TOKEN`: signs checkpoints, publishes token keys.
    pub key_service: UpstreamConfig,
    /// `SENTIA_CHECKPOINT_KEY`: key-service signing key for checkpoints.
    pub checkpoint_key: String,
    /// `SENTIA_JWT_KEY`: key-service signing key of access tokens (to verify readers' JWTs
    /// here when vault-service is not configured).
    pub jwt_key: String,
    /// `SENTIA_VAULT_SERVICE_ADDR` (and the shared client TLS settings): when set, readers'
    /// tokens are checked with vault-service (WhoAmI), so root tokens work and a revoked
    /// token stops working within `identity_cache_ttl`; unset, JWTs are verified here
    /// against key-service's published keys and revocation is not seen before they expire.
    pub vault_service: Option<UpstreamConfig>,
    /// `SENTIA_IDENTITY_CACHE_TTL`: how long a WhoAmI answer is reused.
    pub identity_cache_ttl: Duration,
    /// `SENTIA_CHECKPOINT_EVERY`: sign a checkpoint after this many new records ...
    pub checkpoint_every: u64,
    /// `SENTIA_CHECKPOINT_INTERVAL`: ... or this long after the last one, if anything changed.
    pub checkpoint_interval: Duration,
    /// `SENTIA_POLICY_FILE` and friends: who may read the log is whoever holds the
    /// `audit-read` capability on every path (the seed's system_admin does; static admin
    /// identities and root tokens always do).
    pub policies: PolicyConfig,
    /// `SENTIA_AUDIT_VERIFY_INTERVAL`: how often the chain is checked from the last verified
    /// record (a break raises the `AuditChainBroken` alert).
    pub verify_interval: Duration,
    /// `SENTIA_AUDIT_FULL_VERIFY_INTERVAL`: how often the whole retained chain is checked
    /// again, so an edit behind the verified point is found too.
    pub full_verify_interval: Duration,
    /// `SENTIA_AUDIT_RETENTION`: records older than this are purged, up to the newest
    /// checkpoint among them (default 7 years, the strategy document's figure).
    pub retention: Duration,
    /// `SENTIA_RETENTION_CHECK`: how often the purge runs.
    pub retention_check: Duration,
    /// Alert rule settings (`SENTIA_ALERT_*`).
    pub rules: Rules,
    /// `SENTIA_BACKUP_IDENTITIES`: service identities that may snapshot the log for a backup
    /// without the admin role (rotation-scheduler, where it makes the scheduled backups).
    pub backup_makers: sentia_snapshot::BackupMakers,
    /// `SENTIA_REDIS_URL`: shared sliding windows for alert rules (in process when unset).
    pub redis_url: Option<String>,
    /// `SENTIA_REDIS_PREFIX`: key prefix in Redis.
    pub redis_prefix: String,
    /// `SENTIA_ALERT_WEBHOOK_URL` / `_SECRET`: where alerts are POSTed, HMAC-signed.
    pub webhook: Option<Webhook>,
}

/// The variable that once listed the JWT policies that may read the log; set, it stops the
/// start, so a deployment relying on it learns it now grants nothing.
const RETIRED_READ_POLICIES: &str = "SENTIA_AUDIT_READ_POLICIES";

/// The services that append audit events in every shipped deployment: the certificate names
/// that hold the service role when `SENTIA_SERVICE_IDENTITIES` is unset. `backup-drill` is the
/// monthly restore drill job, which records its outcome.
pub const DEFAULT_SERVICE_IDENTITIES: &[&str] = &[
    "key-service",
    "vault-service",
    "rotation-scheduler",
    "backup-drill",
];

impl Config {
    /// Reads and validates the configuration; every problem is reported at once.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut r = Reader::new(source);
        let server = ServerConfig::from_source(
            &mut r,
            "audit-service",
            "127.0.0.1:8202",
            false,
            DEFAULT_SERVICE_IDENTITIES,
        );
        let config = Self::read(&mut r, server);
        r.finish()?;
        Ok(config)
    }

    /// Every other setting at its default around a typed `server`: how `sentia dev`, the
    /// bench and the test sandbox configure an audit-service they run in-process, instead
    /// of making up variables to parse.
    pub fn in_process(server: ServerConfig) -> Result<Self, ConfigError> {
        sentia_runtime::config::defaults(|r| Self::read(r, server))
    }

    /// The settings besides `server`, from `r`.
    fn read(r: &mut Reader<'_>, server: ServerConfig) -> Self {
        let (database_url, max_connections) =
            sentia_db::from_source(r, "sqlite://sentia-audit.db?mode=rwc");
        let key_service = UpstreamConfig::from_source(r, "SENTIA_KEY_SERVICE", "127.0.0.1:8201");
        let checkpoint_key = r.string_or("SENTIA_CHECKPOINT_KEY", "audit-checkpoint");
        let jwt_key = r.string_or("SENTIA_JWT_KEY", "sentia-jwt");
        let vault_service = r
            .optional("SENTIA_VAULT_SERVICE_ADDR")
            .is_some()
            .then(|| UpstreamConfig::from_source(r, "SENTIA_VAULT_SERVICE", ""));
        let identity_cache_ttl = sentia_runtime::identity::cache_ttl_from(r);
        let checkpoint_every = r.parse_or("SENTIA_CHECKPOINT_EVERY", 1000u64, "a positive integer");
        if checkpoint_every == 0 {
            r.problem("SENTIA_CHECKPOINT_EVERY must be at least 1");
        }
        let checkpoint_interval =
            r.duration_or("SENTIA_CHECKPOINT_INTERVAL", Duration::from_secs(60));
        let policies = PolicyConfig::from_source(r);
        if r.optional(RETIRED_READ_POLICIES).is_some() {
            r.problem(format!(
                "{RETIRED_READ_POLICIES} is no longer read: readers of the audit log need the \
                 audit-read capability in the policy file (SENTIA_POLICY_FILE, shared with \
                 vault-service; the built-in system_admin has it). Unset it and grant \
                 audit-read to the policies that should read the log"
            ));
        }
        let verify_interval =
            r.duration_or("SENTIA_AUDIT_VERIFY_INTERVAL", Duration::from_secs(60));
        let full_verify_interval = r.duration_or(
            "SENTIA_AUDIT_FULL_VERIFY_INTERVAL",
            Duration::from_secs(6 * 3600),
        );
        if verify_interval.is_zero() || full_verify_interval.is_zero() {
            r.problem(
                "SENTIA_AUDIT_VERIFY_INTERVAL and SENTIA_AUDIT_FULL_VERIFY_INTERVAL must be positive",
            );
        }
        let retention = r.duration_or("SENTIA_AUDIT_RETENTION", Duration::from_secs(2555 * 86_400));
        let retention_check = r.duration_or("SENTIA_RETENTION_CHECK", Duration::from_secs(3600));
        let rules = Rules::from_source(r);
        let redis_url = r.optional("SENTIA_REDIS_URL");
        let redis_prefix = r.string_or("SENTIA_REDIS_PREFIX", "sentia:");
        let webhook = Webhook::from_source(r);
        let backup_makers = sentia_snapshot::BackupMakers::from_source(r);
        Self {
            server,
            database_url,
            max_connections,
            key_service,
            checkpoint_key,
            jwt_key,
            vault_service,
            identity_cache_ttl,
            checkpoint_every,
            checkpoint_interval,
            policies,
            verify_interval,
            full_verify_interval,
            retention,
            retention_check,
            rules,
            backup_makers,
            redis_url,
            redis_prefix,
            webhook,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentia_runtime::MapSource;

    #[test]
    fn in_process_gets_the_same_defaults_as_an_environment_that_sets_nothing_else() {
        let parsed =
            Config::from_source(&MapSource::from_pairs([("SENTIA_ALLOW_PLAINTEXT", "true")]))
                .unwrap();
        let built = Config::in_process(parsed.server.clone()).unwrap();
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }

    #[test]
    fn the_retired_reader_list_stops_the_start_and_says_what_replaced_it() {
        let err = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_READ_POLICIES", "system_admin"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SENTIA_AUDIT_READ_POLICIES") && err.contains("audit-read"),
            "{err}"
        );
        assert!(
            Config::from_source(&MapSource::from_pairs([("SENTIA_ALLOW_PLAINTEXT", "true")]))
                .is_ok()
        );
    }
}
