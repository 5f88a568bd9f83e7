//! vault-service configuration from `SENTIA_*` variables (see `.env.example`).

use std::path::PathBuf;
use std::time::Duration;

use sentia_policy::PolicyConfig;
use sentia_runtime::audit::AuditConfig;
use sentia_runtime::{ConfigError, Reader, ServerConfig, Source, UpstreamConfig};

/// Everything vault-service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, TLS and static tokens.
    pub server: ServerConfig,
    /// `SENTIA_DATABASE_URL`: `postgres://...` or `sqlite://path?mode=rwc`.
    pub database_url: String,
    /// `SENTIA_DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `SENTIA_KEY_SERVICE_ADDR` / `_TOKEN` and the client TLS files.
    pub key_service: UpstreamConfig,
    /// `SENTIA_VAULT_KEY`: key-service key that wraps data keys.
    pub data_key_name: String,
    /// `SENTIA_JWT_KEY`: key-service signing key for tokens.
    pub jwt_key_name: String,
    /// `SENTIA_DEK_CACHE_TTL`: how long an unwrapped data key stays in memory (0 = off).
    pub dek_cache_ttl: Duration,
    /// `SENTIA_DEK_CACHE_MAX`: most data keys held.
    pub dek_cache_max: usize,
    /// `SENTIA_REDIS_URL`: sealed-record cache and cross-replica change fan-out.
    pub redis_url: Option<String>,
    /// `SENTIA_REDIS_PREFIX`: key prefix, so deployments (and tests) can share a Redis.
    pub redis_prefix: String,
    /// `SENTIA_CACHE_TTL`: lifetime of Redis cache entries.
    pub cache_ttl: Duration,
    /// `SENTIA_LOCAL_CACHE_TTL`: lifetime of in-process sealed-record cache entries (0 = off).
    pub local_cache_ttl: Duration,
    /// `SENTIA_LOCAL_CACHE_MAX`: most secrets held in the in-process cache.
    pub local_cache_max: usize,
    /// Policy file and static identities' policies (`SENTIA_POLICY_*`,
    /// `SENTIA_IDENTITY_POLICIES`).
    pub policies: PolicyConfig,
    /// `SENTIA_ROOT_TOKEN_FILE`: where the bootstrap root token is written (mode 0600) at
    /// first start; printed to stdout once when unset.
    pub root_token_file: Option<PathBuf>,
    /// `SENTIA_TOKEN_REFRESH`: how often revocations, root tokens and the published token
    /// signing keys are re-read.
    pub token_refresh: Duration,
    /// `SENTIA_EVENT_RETENTION`: how long change-stream events stay resumable.
    pub event_retention: Duration,
    /// Where audit events go (`SENTIA_AUDIT_*`).
    pub audit: AuditConfig,
    /// `SENTIA_REWRAP_INTERVAL`: how often a batch of stored data keys is moved to the
    /// wrapping key's primary version (0 = never).
    pub rewrap_interval: Duration,
    /// `SENTIA_REWRAP_BATCH`: data keys per batch (1-10000): with the interval, the rate limit.
    pub rewrap_batch: usize,
    /// `SENTIA_REWRAP_RETIRE_DELAY`: how long every data key must have been on the primary
    /// version before older versions are retired; None (`off`) = never automatically.
    pub rewrap_retire_delay: Option<Duration>,
    /// What "now" is for secret expiry: the system clock; tests set a manual one.
    pub clock: sentia_runtime::Clock,
}

/// The service that calls vault-service in every shipped deployment (with the policies
/// `SENTIA_IDENTITY_POLICIES` gives it): the certificate names that hold the service role
/// when `SENTIA_SERVICE_IDENTITIES` is unset, besides every identity mapped to policies.
pub const DEFAULT_SERVICE_IDENTITIES: &[&str] = &["rotation-scheduler"];

impl Config {
    /// Reads and validates the configuration; every problem is reported at once.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut r = Reader::new(source);
        let server = ServerConfig::from_source(
            &mut r,
            "vault-service",
            "127.0.0.1:8200",
            false,
            DEFAULT_SERVICE_IDENTITIES,
        );
        let audit = AuditConfig::from_source(&mut r, "vault-service");
        let config = Self::read(&mut r, server, audit);
        r.finish()?;
        Ok(config)
    }

    /// Every other setting at its default around a typed `server` and `audit`: how `sentia
    /// dev`, the bench and the test sandbox configure a service they run in-process, instead
    /// of making up variables to parse.
    pub fn in_process(server: ServerConfig, audit: AuditConfig) -> Result<Self, ConfigError> {
        sentia_runtime::config::defaults(|r| Self::read(r, server, audit))
    }

    /// The settings besides `server` and `audit`, from `r`.
    fn read(r: &mut Reader<'_>, mut server: ServerConfig, audit: AuditConfig) -> Self {
        let (database_url, max_connections) =
            sentia_db::from_source(r, "sqlite://sentia-vault.db?mode=rwc");
        let key_service = UpstreamConfig::from_source(r, "SENTIA_KEY_SERVICE", "127.0.0.1:8201");
        let data_key_name = r.string_or("SENTIA_VAULT_KEY", "vault");
        let jwt_key_name = r.string_or("SENTIA_JWT_KEY", "sentia-jwt");
        let dek_cache_ttl = r.duration_or("SENTIA_DEK_CACHE_TTL", Duration::from_secs(60));
        let dek_cache_max = r.parse_or("SENTIA_DEK_CACHE_MAX", 10_000usize, "a positive integer");
        let redis_url = r.optional("SENTIA_REDIS_URL");
        if let Some(u) = &redis_url
            && !(u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            r.problem("SENTIA_REDIS_URL must start with redis:// or rediss://");
        }
        let redis_prefix = r.string_or("SENTIA_REDIS_PREFIX", "sentia:");
        let cache_ttl = r.duration_or("SENTIA_CACHE_TTL", Duration::from_secs(30));
        let local_cache_ttl = r.duration_or("SENTIA_LOCAL_CACHE_TTL", Duration::from_secs(30));
        let local_cache_max =
            r.parse_or("SENTIA_LOCAL_CACHE_MAX", 10_000usize, "a positive integer");
        let policies = PolicyConfig::from_source(r);
        // A certificate mapped to policies is an identity here by that mapping alone.
        for id in policies.identities.keys() {
            if !server.service_identities.contains(id) {
                server.service_identities.push(id.clone());
            }
        }
        let root_token_file = r.optional("SENTIA_ROOT_TOKEN_FILE").map(PathBuf::from);
        let token_refresh = r.duration_or("SENTIA_TOKEN_REFRESH", Duration::from_secs(5));
        let event_retention = r.duration_or("SENTIA_EVENT_RETENTION", Duration::from_secs(86_400));
        if event_retention < Duration::from_secs(3600) {
            r.problem("SENTIA_EVENT_RETENTION must be at least 1h (watchers resume from it)");
        }
        let rewrap_interval = r.duration_or("SENTIA_REWRAP_INTERVAL", Duration::from_secs(10));
        let rewrap_batch = r.parse_or("SENTIA_REWRAP_BATCH", 200usize, "a number from 1 to 10000");
        if !(1..=10_000).contains(&rewrap_batch) {
            r.problem("SENTIA_REWRAP_BATCH must be from 1 to 10000");
        }
        let rewrap_retire_delay = match r.optional("SENTIA_REWRAP_RETIRE_DELAY").as_deref() {
            Some("off") => None,
            _ => Some(r.duration_or("SENTIA_REWRAP_RETIRE_DELAY", Duration::from_secs(600))),
        };
        // A cache may hold a record wrapped under an old version for its lifetime: retiring
        // sooner would make such a read fail.
        let longest_cache = local_cache_ttl.max(if redis_url.is_some() {
            cache_ttl
        } else {
            Duration::ZERO
        });
        if rewrap_retire_delay.is_some_and(|d| d < longest_cache) {
            r.problem(format!(
                "SENTIA_REWRAP_RETIRE_DELAY must be at least the longest cache lifetime \
                 ({}s): a cached record wrapped under a retired version would fail to open",
                longest_cache.as_secs()
            ));
        }
        Self {
            server,
            database_url,
            max_connections,
            key_service,
            data_key_name,
            jwt_key_name,
            dek_cache_ttl,
            dek_cache_max,
            redis_url,
            redis_prefix,
            cache_ttl,
            local_cache_ttl,
            local_cache_max,
            policies,
            root_token_file,
            token_refresh,
            event_retention,
            audit,
            rewrap_interval,
            rewrap_batch,
            rewrap_retire_delay,
            clock: sentia_runtime::Clock::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentia_runtime::MapSource;

    #[test]
    fn in_process_gets_the_same_defaults_as_an_environment_that_sets_nothing_else() {
        let parsed = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ]))
        .unwrap();
        let built = Config::in_process(parsed.server.clone(), parsed.audit.clone()).unwrap();
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }

    #[test]
    fn without_an_audit_service_it_refuses_to_start_unless_auditing_is_disabled() {
        let err = Config::from_source(&MapSource::from_pairs([("SENTIA_ALLOW_PLAINTEXT", "true")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SENTIA_AUDIT_SERVICE_ADDR"), "{err}");
        let c = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_SERVICE_ADDR", "127.0.0.1:8202"),
        ]))
        .unwrap();
        assert!(c.audit.upstream.is_some());
    }

    #[test]
    fn defaults_need_only_plaintext_permission() {
        let c = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ]))
        .unwrap();
        assert_eq!(c.server.listen_addr.port(), 8200);
        assert_eq!(c.key_service.addr, "127.0.0.1:8201");
        assert_eq!(c.dek_cache_ttl, Duration::from_secs(60));
        assert!(c.redis_url.is_none());
    }

    #[test]
    fn bad_values_are_all_named_at_once() {
        let err = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
            ("SENTIA_IDENTITY_POLICIES", "nobody"),
            ("SENTIA_REDIS_URL", "http://x"),
            ("SENTIA_DEK_CACHE_TTL", "soon"),
        ]))
        .unwrap_err()
        .to_string();
        for v in [
            "SENTIA_IDENTITY_POLICIES",
            "SENTIA_REDIS_URL",
            "SENTIA_DEK_CACHE_TTL",
        ] {
            assert!(err.contains(v), "{v} missing: {err}");
        }
    }
}
