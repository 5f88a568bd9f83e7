//! rotation-scheduler configuration from `SENTIA_*` variables (see `.env.example`).

use std::time::Duration;

use sentia_policy::PolicyConfig;
use sentia_runtime::audit::AuditConfig;
use sentia_runtime::{ConfigError, Reader, ServerConfig, Source, UpstreamConfig};

use crate::backups::BackupConfig;
#[cfg(feature = "test-hooks")]
use crate::steps::Step;
use sentia_runtime::Clock;

/// Everything rotation-scheduler needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, TLS and static tokens.
    pub server: ServerConfig,
    /// `SENTIA_DATABASE_URL`: policies, rotations, reminders and the leader lease.
    pub database_url: String,
    /// `SENTIA_DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `SENTIA_VAULT_SERVICE_ADDR` / `_TOKEN`: where secrets are read and versions written. The
    /// token's identity needs read, write, list and delete on rotated paths
    /// (`SENTIA_IDENTITY_POLICIES=rotation-scheduler=system_admin` on vault-service). Callers'
    /// tokens are checked there too (WhoAmI), so root tokens, app JWTs and revocation work
    /// here as they do at vault-service.
    pub vault_service: UpstreamConfig,
    /// `SENTIA_IDENTITY_CACHE_TTL`: how long a WhoAmI answer is reused (bounds how long a
    /// revoked token still works here).
    pub identity_cache_ttl: Duration,
    /// `SENTIA_KEY_SERVICE_ADDR` / `_TOKEN`: key-service, for `jwt_signing_key` rotations
    /// (the grants give `rotation-scheduler` RotateKey and SetKeyPolicy on the signing key)
    /// and scheduled backups. Unset: that rotator fails with a message saying so.
    pub key_service: Option<UpstreamConfig>,
    /// Who may do what (`SENTIA_POLICY_FILE`, `SENTIA_IDENTITY_POLICIES`).
    pub policies: PolicyConfig,
    /// Where rotation events go (`SENTIA_AUDIT_SERVICE_ADDR`, ...).
    pub audit: AuditConfig,
    /// `SENTIA_ROTATION_TICK`: how often the leader looks for due secrets and runnable steps.
    pub tick: Duration,
    /// `SENTIA_LEADER_LEASE`: how long a leader's lease lasts without renewal; a replica that
    /// dies is replaced after at most this long.
    pub lease: Duration,
    /// `SENTIA_REPLICA_ID`: this replica's name in the lease (default: random).
    pub replica_id: String,
    /// `SENTIA_EMERGENCY_GRACE`: grace period of emergency rotations (when shorter than the
    /// policy's).
    pub emergency_grace: Duration,
    /// `SENTIA_ROTATION_PAUSED`: serve policies, status and history but run no rotation step
    /// and never take the leader lease — a restored system before its operator lets it touch
    /// the credentials outside, and the restore drill's scratch copy.
    pub paused: bool,
    /// `SENTIA_BACKUP_*`: scheduled backups made by the leader; None unless
    /// `SENTIA_BACKUP_DESTINATIONS` names somewhere to keep them. They need key-service
    /// (`SENTIA_KEY_SERVICE_ADDR`) and audit-service.
    pub backups: Option<BackupConfig>,
    /// The clock, and (built with the `test-hooks` feature only) injected failures; not
    /// read from the environment.
    pub hooks: Hooks,
}

/// What a test injects: the clock and, only in a build with the `test-hooks` feature (the
/// test sandbox's; never a shipped binary), where to fail or stop as if the process had been
/// killed.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// The time source (the system clock unless a test sets one).
    pub clock: Clock,
    /// Die right after this step's action ran, before its completion is persisted.
    #[cfg(feature = "test-hooks")]
    pub crash_after: Option<Step>,
    /// Report this step as failed instead of running it.
    #[cfg(feature = "test-hooks")]
    pub fail: Option<Step>,
}

/// No service calls rotation-scheduler: people and apps do, with vault-service tokens.
pub const DEFAULT_SERVICE_IDENTITIES: &[&str] = &[];

impl Config {
    /// Reads and validates the configuration; every problem is reported at once.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut r = Reader::new(source);
        let server = ServerConfig::from_source(
            &mut r,
            "rotation-scheduler",
            "127.0.0.1:8203",
            false,
            DEFAULT_SERVICE_IDENTITIES,
        );
        let audit = AuditConfig::from_source(&mut r, "rotation-scheduler");
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
    fn read(r: &mut Reader<'_>, server: ServerConfig, audit: AuditConfig) -> Self {
        let (database_url, max_connections) =
            sentia_db::from_source(r, "sqlite://sentia-rotation.db?mode=rwc");
        let vault_service =
            UpstreamConfig::from_source(r, "SENTIA_VAULT_SERVICE", "127.0.0.1:8200");
        let identity_cache_ttl = sentia_runtime::identity::cache_ttl_from(r);
        let key_service = r
            .optional("SENTIA_KEY_SERVICE_ADDR")
            .is_some()
            .then(|| UpstreamConfig::from_source(r, "SENTIA_KEY_SERVICE", ""));
        let policies = PolicyConfig::from_source(r);
        let tick = r.duration_or("SENTIA_ROTATION_TICK", Duration::from_secs(10));
        let lease = r.duration_or("SENTIA_LEADER_LEASE", Duration::from_secs(15));
        if lease <= tick {
            r.problem("SENTIA_LEADER_LEASE must be longer than SENTIA_ROTATION_TICK");
        }
        let replica_id = r
            .optional("SENTIA_REPLICA_ID")
            .unwrap_or_else(|| format!("scheduler-{}", uuid::Uuid::new_v4().simple()));
        let emergency_grace = r.duration_or("SENTIA_EMERGENCY_GRACE", Duration::from_secs(600));
        let paused = r.bool_or("SENTIA_ROTATION_PAUSED", false);
        let backups = BackupConfig::from_source(r);
        if backups.is_some() && key_service.is_none() {
            r.problem(
                "SENTIA_BACKUP_DESTINATIONS needs SENTIA_KEY_SERVICE_ADDR: key-service begins \
                 each backup and signs its manifest",
            );
        }
        if backups.is_some() && audit.upstream.is_none() {
            r.problem(
                "SENTIA_BACKUP_DESTINATIONS needs audit-service (SENTIA_AUDIT_SERVICE_ADDR): a \
                 backup holds the audit log",
            );
        }
        Self {
            server,
            database_url,
            max_connections,
            vault_service,
            identity_cache_ttl,
            key_service,
            policies,
            audit,
            tick,
            lease,
            replica_id,
            emergency_grace,
            paused,
            backups,
            hooks: Hooks::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sentia_runtime::MapSource;

    #[test]
    fn a_lease_no_longer_than_the_tick_is_refused_with_both_names() {
        let err = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
            ("SENTIA_ROTATION_TICK", "20s"),
            ("SENTIA_LEADER_LEASE", "10s"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("SENTIA_LEADER_LEASE"), "{err}");
        let c = Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ]))
        .unwrap();
        assert_eq!(c.server.listen_addr.port(), 8203);
        assert!(c.replica_id.starts_with("scheduler-"));
        assert!(!c.paused, "rotation runs unless paused");
    }

    #[test]
    fn rotation_can_be_paused_and_a_bad_value_is_named() {
        let with = |v: &str| {
            Config::from_source(&MapSource::from_pairs([
                ("SENTIA_ALLOW_PLAINTEXT", "true"),
                ("SENTIA_AUDIT_DISABLED", "true"),
                ("SENTIA_ROTATION_PAUSED", v),
            ]))
        };
        assert!(with("true").unwrap().paused);
        let err = with("sometimes").unwrap_err().to_string();
        assert!(err.contains("SENTIA_ROTATION_PAUSED"), "{err}");
    }
}
