//! key-service configuration from `SENTIA_*` variables (see `.env.example`).

use std::fmt;
use std::time::Duration;

use sentia_crypto::{MIN_PBKDF2_ITERATIONS, MasterKey, RecoveryPublicKey};
use sentia_runtime::audit::AuditConfig;
use sentia_runtime::{ConfigError, Reader, ServerConfig, Source};
use zeroize::Zeroizing;

use crate::grants::Grants;
use crate::keyring::Purpose;
use sentia_snapshot::BackupMakers;

/// Where the master key comes from.
pub enum MasterSource {
    /// `SENTIA_MASTER_KEY`: base64 of 32 random bytes. Unsealed at start.
    Key(MasterKey),
    /// `MASTER_PASSWORD` + `ENCRYPTION_SALT` (the strategy document's names), PBKDF2-HMAC-SHA512.
    /// Derived and unsealed at start.
    Password {
        /// The password.
        password: Zeroizing<String>,
        /// The salt (at least 16 bytes).
        salt: Zeroizing<String>,
        /// PBKDF2 iterations.
        iterations: u32,
    },
    /// `SENTIA_SEAL_TYPE=shamir`: starts sealed; k of n shares unseal it.
    Shamir,
    /// `SENTIA_SEAL_TYPE=recovery`: the master key is lost; starts sealed and waits for
    /// Unseal with the recovery private key (then RotateMasterKey).
    Recovery,
}

impl MasterSource {
    /// Name reported by Status.
    pub fn seal_type(&self) -> &'static str {
        match self {
            Self::Key(_) => "master-key",
            Self::Password { .. } => "password",
            Self::Shamir => "shamir",
            Self::Recovery => "recovery",
        }
    }
}

impl fmt::Debug for MasterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.seal_type())
    }
}

/// Everything key-service needs to run.
#[derive(Debug)]
pub struct Config {
    /// Listener, TLS and auth.
    pub server: ServerConfig,
    /// `SENTIA_DATABASE_URL`: `postgres://...` or `sqlite://path?mode=rwc`.
    pub database_url: String,
    /// `SENTIA_DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// The master key source.
    pub master: MasterSource,
    /// `SENTIA_RECOVERY_PUBLIC_KEY`: the offline recovery key's public half (base64); the
    /// master key is kept escrowed to it for the lost-master-key procedure.
    pub recovery_public_key: Option<RecoveryPublicKey>,
    /// `SENTIA_DEFAULT_KEYS`: keys created on first unseal when missing
    /// (`name:purpose[:auto-rotate period],...`).
    pub default_keys: Vec<DefaultKey>,
    /// `SENTIA_MAX_ENCRYPTIONS_PER_VERSION`: hard stop for random-nonce encryptions under one
    /// key version (default 2^32). Rotation happens automatically at half of it.
    pub max_encryptions_per_version: u64,
    /// `SENTIA_KEYRING_REFRESH`: how often a replica reloads key metadata written by others.
    pub refresh_interval: Duration,
    /// Where audit events go (`SENTIA_AUDIT_*`).
    pub audit: AuditConfig,
    /// `SENTIA_KEY_GRANTS_FILE`: which service identity may use which key for what (the
    /// shipped `grants/default.toml` when unset).
    pub grants: Grants,
    /// `SENTIA_BACKUP_IDENTITIES`: service identities that may begin backups and snapshot the
    /// keyring (sealed under the master) without the admin role — rotation-scheduler, where
    /// it makes the scheduled backups.
    pub backup_makers: BackupMakers,
    /// `sentia dev` only: the file its master key lives in, rewritten by a master rotation.
    pub master_key_file: Option<std::path::PathBuf>,
}

/// Default keys: the vault data-key wrapping key (rotated every 90 days: the seed's schedule
/// for API keys, so a stolen version wraps at most a quarter's writes), the token signing key,
/// the audit checkpoint signing key, the backup manifest signing key. Signing keys are not
/// rotated here: their rotation is staged (`jwt_signing_key` rotator), not automatic.
pub const DEFAULT_KEYS: &str = "vault:encryption:90d,sentia-jwt:signing,audit-checkpoint:signing,\
                                backup-manifest:signing";

/// A key created at first unseal when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultKey {
    /// Key name.
    pub name: String,
    /// What it is for.
    pub purpose: Purpose,
    /// Its auto-rotation period in seconds, if any.
    pub auto_rotate_secs: Option<i64>,
}

/// Who calls key-service in every shipped deployment: the certificate names that hold the
/// service role when `SENTIA_SERVICE_IDENTITIES` is unset (what each may do is in the grants;
/// `backup-drill`, the monthly restore drill job, has none: it reads public keys only).
pub const DEFAULT_SERVICE_IDENTITIES: &[&str] = &[
    "vault-service",
    "audit-service",
    "rotation-scheduler",
    "backup-drill",
];

impl Config {
    /// Reads and validates the configuration; every problem is reported at once.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mut r = Reader::new(source);
        let server = ServerConfig::from_source(
            &mut r,
            "key-service",
            "127.0.0.1:8201",
            true,
            DEFAULT_SERVICE_IDENTITIES,
        );
        let seal_type = r.string_or("SENTIA_SEAL_TYPE", "auto");
        let master = match seal_type.as_str() {
            "shamir" => MasterSource::Shamir,
            "recovery" => MasterSource::Recovery,
            "auto" | "master-key" | "password" => master_from(&mut r),
            other => {
                r.problem(format!(
                    "SENTIA_SEAL_TYPE={other:?} must be auto, shamir or recovery"
                ));
                MasterSource::Shamir
            }
        };
        let audit = AuditConfig::from_source(&mut r, "key-service");
        let config = Self::read(&mut r, server, audit, master);
        r.finish()?;
        Ok(config)
    }

    /// Every other setting at its default around a typed `server`, `audit` and `master`:
    /// how `sentia dev`, the bench and the test sandbox configure a key-service they run
    /// in-process, instead of making up variables to parse.
    pub fn in_process(
        server: ServerConfig,
        audit: AuditConfig,
        master: MasterSource,
    ) -> Result<Self, ConfigError> {
        sentia_runtime::config::defaults(|r| Self::read(r, server, audit, master))
    }

    /// The settings besides `server`, `audit` and `master`, from `r`.
    fn read(
        r: &mut Reader<'_>,
        server: ServerConfig,
        audit: AuditConfig,
        master: MasterSource,
    ) -> Self {
        let (database_url, max_connections) =
            sentia_db::from_source(r, "sqlite://sentia-keys.db?mode=rwc");
        let recovery_public_key = r.optional("SENTIA_RECOVERY_PUBLIC_KEY").and_then(|k| {
            RecoveryPublicKey::from_base64(&k)
                .map_err(|e| {
                    r.problem(format!(
                        "SENTIA_RECOVERY_PUBLIC_KEY: {e} (make a pair with: sentia key recovery-keygen --out FILE)"
                    ))
                })
                .ok()
        });
        let default_keys = parse_default_keys(r);
        let max_encryptions_per_version = r.parse_or(
            "SENTIA_MAX_ENCRYPTIONS_PER_VERSION",
            1u64 << 32,
            "a positive integer",
        );
        if !(16..=1u64 << 32).contains(&max_encryptions_per_version) {
            r.problem("SENTIA_MAX_ENCRYPTIONS_PER_VERSION must be between 16 and 4294967296");
        }
        let refresh_interval = r.duration_or("SENTIA_KEYRING_REFRESH", Duration::from_secs(30));
        let grants = match r.optional("SENTIA_KEY_GRANTS_FILE") {
            None => Grants::default_set(),
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|text| Grants::parse(&text).map_err(|e| format!("{path}: {e}")))
                .unwrap_or_else(|e| {
                    r.problem(format!("SENTIA_KEY_GRANTS_FILE: {e}"));
                    Grants::default()
                }),
        };
        let backup_makers = BackupMakers::from_source(r);
        Self {
            server,
            database_url,
            max_connections,
            master,
            recovery_public_key,
            default_keys,
            max_encryptions_per_version,
            refresh_interval,
            audit,
            grants,
            backup_makers,
            master_key_file: None,
        }
    }
}

fn master_from(r: &mut Reader<'_>) -> MasterSource {
    let key = r.optional("SENTIA_MASTER_KEY");
    let password = r
        .optional("MASTER_PASSWORD")
        .or_else(|| r.optional("SENTIA_MASTER_PASSWORD"));
    let salt = r
        .optional("ENCRYPTION_SALT")
        .or_else(|| r.optional("SENTIA_ENCRYPTION_SALT"));
    let iterations = r.parse_or("SENTIA_PBKDF2_ITERATIONS", 210_000u32, "a positive integer");
    match (key, password, salt) {
        (Some(key), None, None) => {
            match MasterKey::from_base64(&Zeroizing::new(key)) {
                Ok(k) => MasterSource::Key(k),
                Err(e) => {
                    r.problem(format!("SENTIA_MASTER_KEY: {e} (generate one with: head -c 32 /dev/urandom | base64)"));
                    MasterSource::Shamir
                }
            }
        }
        (None, Some(password), Some(salt)) => {
            if iterations < MIN_PBKDF2_ITERATIONS {
                r.problem(format!(
                    "SENTIA_PBKDF2_ITERATIONS must be at least {MIN_PBKDF2_ITERATIONS}"
                ));
            }
            if salt.len() < sentia_crypto::MIN_SALT_LEN {
                r.problem(format!(
                    "ENCRYPTION_SALT must be at least {} bytes",
                    sentia_crypto::MIN_SALT_LEN
                ));
            }
            MasterSource::Password {
                password: Zeroizing::new(password),
                salt: Zeroizing::new(salt),
                iterations,
            }
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            r.problem("MASTER_PASSWORD and ENCRYPTION_SALT must be set together");
            MasterSource::Shamir
        }
        (Some(_), _, _) => {
            r.problem("set SENTIA_MASTER_KEY or MASTER_PASSWORD/ENCRYPTION_SALT, not both");
            MasterSource::Shamir
        }
        (None, None, None) => {
            r.problem(
                "no master key: set SENTIA_MASTER_KEY (base64 of 32 random bytes), or \
                 MASTER_PASSWORD and ENCRYPTION_SALT, or SENTIA_SEAL_TYPE=shamir",
            );
            MasterSource::Shamir
        }
    }
}

fn parse_default_keys(r: &mut Reader<'_>) -> Vec<DefaultKey> {
    let raw = r.string_or("SENTIA_DEFAULT_KEYS", DEFAULT_KEYS);
    let mut keys = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        let (Some(name), Some(purpose), period, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            r.problem(format!(
                "SENTIA_DEFAULT_KEYS: {item:?} is not name:purpose or name:purpose:period"
            ));
            continue;
        };
        let auto_rotate_secs = match period.map(|p| (p, sentia_runtime::config::parse_duration(p)))
        {
            None => None,
            Some((_, Some(d))) if d.as_secs() >= 3600 => Some(d.as_secs() as i64),
            Some((p, _)) => {
                r.problem(format!(
                    "SENTIA_DEFAULT_KEYS: {name}'s rotation period {p:?} must be a duration of \
                     at least 1h, like 90d"
                ));
                continue;
            }
        };
        match (
            crate::keyring::validate_key_name(name),
            Purpose::parse(purpose),
        ) {
            (Ok(()), Some(purpose)) => keys.push(DefaultKey {
                name: name.to_string(),
                purpose,
                auto_rotate_secs,
            }),
            (Err(e), _) => r.problem(format!("SENTIA_DEFAULT_KEYS: {e}")),
            (_, None) => r.problem(format!(
                "SENTIA_DEFAULT_KEYS: purpose {purpose:?} must be encryption, signing or hmac"
            )),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use sentia_runtime::MapSource;

    use super::*;

    #[test]
    fn a_missing_master_key_is_explained() {
        let src = MapSource::from_pairs([("SENTIA_ALLOW_PLAINTEXT", "true")]);
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains("no master key"), "{err}");
    }

    #[test]
    fn the_seed_password_variables_are_accepted() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
            ("MASTER_PASSWORD", "correct horse battery staple"),
            ("ENCRYPTION_SALT", "0123456789abcdef"),
        ]);
        let cfg = Config::from_source(&src).unwrap();
        assert_eq!(cfg.master.seal_type(), "password");
    }

    #[test]
    fn a_short_master_key_is_refused_with_a_hint() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_MASTER_KEY", "AAAA"),
        ]);
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains("32 bytes") && err.contains("urandom"), "{err}");
    }

    #[test]
    fn bad_default_keys_are_named() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_SEAL_TYPE", "shamir"),
            (
                "SENTIA_DEFAULT_KEYS",
                "vault:encryption,Bad:signing,x:teleport",
            ),
        ]);
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(err.contains("Bad") && err.contains("teleport"), "{err}");
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_SEAL_TYPE", "shamir"),
            ("SENTIA_DEFAULT_KEYS", "vault:encryption:10m,k:hmac:1:2"),
        ]);
        let err = Config::from_source(&src).unwrap_err().to_string();
        assert!(
            err.contains("at least 1h") && err.contains("k:hmac:1:2"),
            "{err}"
        );
    }

    #[test]
    fn the_vault_key_rotates_every_90_days_by_default_and_signing_keys_do_not() {
        let src = MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_AUDIT_DISABLED", "true"),
            ("SENTIA_SEAL_TYPE", "shamir"),
        ]);
        let cfg = Config::from_source(&src).unwrap();
        let period = |name: &str| {
            cfg.default_keys
                .iter()
                .find(|k| k.name == name)
                .unwrap()
                .auto_rotate_secs
        };
        assert_eq!(period("vault"), Some(90 * 86_400));
        assert_eq!(period("sentia-jwt"), None);
        assert_eq!(cfg.default_keys.len(), 4);
    }
}
