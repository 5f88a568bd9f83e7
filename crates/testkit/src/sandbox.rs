//! Any set of Sentia's four services in this process, wired to each other as a deployment
//! wires them: key-service always (every other service needs it), audit-service receiving
//! every other service's events when asked for, vault-service, and rotation-scheduler (which
//! needs vault-service). Each on a fresh database of the chosen backend, on port 0, ready
//! when [`SandboxBuilder::start`] returns; [`Sandbox::stop`] joins every task it started.

use rotation_scheduler::Hooks;
use tokio::net::TcpListener;

use crate::audit::AuditService;
use crate::rotation::{self, Scheduler};
use crate::{Backend, Stack, database, keys, unique};

/// Which services to start, and how. Made by [`Sandbox::builder`].
#[derive(Default)]
pub struct SandboxBuilder {
    postgres: bool,
    redis: bool,
    audit: bool,
    vault: bool,
    scheduler: Option<Hooks>,
    key_settings: Vec<(String, String)>,
    vault_settings: Vec<(String, String)>,
    scheduler_settings: Vec<(String, String)>,
    audit_settings: Vec<(String, String)>,
    backups: Option<Vec<(String, String)>>,
}

impl SandboxBuilder {
    /// Every database on `backend` (SQLite files by default).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.postgres = matches!(backend, Backend::Postgres);
        self
    }

    /// Redis for the services that use it (vault-service's caches and change fan-out,
    /// audit-service's alert windows), under a key prefix of this sandbox's own.
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// audit-service too, and every service records its events there (spooling to a
    /// private file while it is away), as deployed.
    pub fn audit(mut self) -> Self {
        self.audit = true;
        self
    }

    /// vault-service too.
    pub fn vault(mut self) -> Self {
        self.vault = true;
        self
    }

    /// key-service settings beyond the sandbox's (later pairs win): a known master key, a
    /// recovery public key.
    pub fn key_setting(mut self, key: &str, value: &str) -> Self {
        self.key_settings.push((key.into(), value.into()));
        self
    }

    /// vault-service settings beyond the sandbox's (later pairs win).
    pub fn vault_setting(mut self, key: &str, value: &str) -> Self {
        self.vault_settings.push((key.into(), value.into()));
        self
    }

    /// rotation-scheduler too (and so vault-service, where it holds the identity the
    /// deployment docs give it), with `hooks`.
    pub fn scheduler(mut self, hooks: Hooks) -> Self {
        self.vault = true;
        self.scheduler = Some(hooks);
        self
    }

    /// rotation-scheduler settings beyond the sandbox's (later pairs win).
    pub fn scheduler_setting(mut self, key: &str, value: &str) -> Self {
        self.scheduler_settings.push((key.into(), value.into()));
        self
    }

    /// audit-service settings beyond the sandbox's (later pairs win).
    pub fn audit_setting(mut self, key: &str, value: &str) -> Self {
        self.audit_settings.push((key.into(), value.into()));
        self
    }

    /// All four services, the scheduler making scheduled backups into `destinations`
    /// (`SENTIA_BACKUP_DESTINATIONS`) with `s3_options` for buckets, given exactly what a
    /// deployment gives it: its key-service token, and `rotation-scheduler` in
    /// `SENTIA_BACKUP_IDENTITIES` at key-service and audit-service.
    pub fn scheduled_backups(self, destinations: &str, s3_options: Vec<(String, String)>) -> Self {
        let mut b = self
            .audit()
            .key_setting("SENTIA_BACKUP_IDENTITIES", "rotation-scheduler")
            .audit_setting("SENTIA_BACKUP_IDENTITIES", "rotation-scheduler")
            .scheduler_setting("SENTIA_BACKUP_DESTINATIONS", destinations);
        if b.scheduler.is_none() {
            b = b.scheduler(Default::default());
        }
        b.backups = Some(s3_options);
        b
    }

    /// Starts the services; None (announced) when the backend or Redis is not available
    /// here.
    pub async fn start(self) -> Option<Sandbox> {
        let redis: Vec<(String, String)> = if self.redis {
            vec![
                ("SENTIA_REDIS_URL".into(), crate::redis_url()?),
                (
                    "SENTIA_REDIS_PREFIX".into(),
                    format!("{}:", unique("sandbox")),
                ),
            ]
        } else {
            Vec::new()
        };
        let backend = if self.postgres {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        // audit-service's address first: the others record into it, and it signs its
        // checkpoints with key-service, which must be running before it starts.
        let audit_listener = if self.audit {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let audit_addr = audit_listener
            .as_ref()
            .map(|l| l.local_addr().unwrap().to_string());
        let mut spools = Vec::new();
        let mut emitting = |token: &str| -> Vec<(String, String)> {
            let Some(addr) = &audit_addr else {
                return Vec::new();
            };
            let spool = crate::scratch_path(&format!("{}.spool", unique("sentia_spool")));
            let settings = vec![
                ("SENTIA_AUDIT_DISABLED".into(), "false".into()),
                ("SENTIA_AUDIT_SERVICE_ADDR".into(), addr.clone()),
                ("SENTIA_AUDIT_SERVICE_TOKEN".into(), token.into()),
                ("SENTIA_AUDIT_SPOOL".into(), spool.display().to_string()),
            ];
            spools.push(spool);
            settings
        };
        let mut key_settings = emitting(keys::KEY_TOKEN);
        key_settings.extend(self.key_settings);
        let vault_emitting = emitting(keys::SERVICE_TOKEN);
        let scheduler_emitting = emitting(keys::SCHEDULER_KEY_TOKEN);

        let keys = keys::Running::start(&database(backend).await?, &pairs(&key_settings)).await;
        let audit = match audit_listener {
            Some(listener) => Some(
                AuditService::start_on(
                    listener,
                    &keys.addr,
                    &database(backend).await?,
                    &pairs(&self.audit_settings),
                )
                .await,
            ),
            None => None,
        };
        let (keys, vault) = if self.vault {
            let mut settings = vault_emitting;
            settings.extend(redis.iter().cloned());
            if self.scheduler.is_some() {
                settings.extend(
                    rotation::vault_settings()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v)),
                );
            }
            settings.extend(self.vault_settings);
            let stack = Stack::start_vault(keys, database(backend).await?, &pairs(&settings)).await;
            (None, Some(stack))
        } else {
            (Some(keys), None)
        };
        let mut scheduler_settings = scheduler_emitting;
        // As deployed, the scheduler reaches key-service (signing-key rotations, the master
        // key's reminders, backups).
        if let Some(v) = &vault {
            scheduler_settings.push(("SENTIA_KEY_SERVICE_ADDR".into(), v.keys.addr.clone()));
            scheduler_settings.push((
                "SENTIA_KEY_SERVICE_TOKEN".into(),
                keys::SCHEDULER_KEY_TOKEN.into(),
            ));
        }
        scheduler_settings.extend(self.scheduler_settings);
        let mut sandbox = Sandbox {
            keys,
            vault,
            audit,
            scheduler: None,
            scheduler_settings,
            s3_options: self.backups.unwrap_or_default(),
            spools,
        };
        if let Some(hooks) = self.scheduler {
            let db = database(backend).await?;
            sandbox.scheduler = Some(sandbox.launch_scheduler(&db, hooks).await);
        }
        Some(sandbox)
    }
}

fn pairs(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Running services made by a [`SandboxBuilder`].
pub struct Sandbox {
    keys: Option<keys::Running>,
    vault: Option<Stack>,
    audit: Option<AuditService>,
    scheduler: Option<Scheduler>,
    scheduler_settings: Vec<(String, String)>,
    s3_options: Vec<(String, String)>,
    spools: Vec<std::path::PathBuf>,
}

impl Sandbox {
    async fn launch_scheduler(&self, database_url: &str, hooks: Hooks) -> Scheduler {
        let s3_options = self.s3_options.clone();
        let s = Scheduler::start_configured(
            self.vault(),
            database_url,
            hooks,
            &pairs(&self.scheduler_settings),
            move |c| {
                if let Some(b) = &mut c.backups {
                    b.s3_options = s3_options;
                }
            },
        )
        .await;
        crate::wait_for_health(&s.addr).await;
        s
    }

    /// Stops rotation-scheduler and starts it again on the same database and settings with
    /// `hooks` (a restart, or a build that fails where a test wants it to).
    pub async fn restart_scheduler(&mut self, hooks: Hooks) -> &Scheduler {
        let old = self
            .scheduler
            .take()
            .expect("the sandbox has no rotation-scheduler");
        let db = old.database_url.clone();
        old.stop().await;
        let new = self.launch_scheduler(&db, hooks).await;
        self.scheduler.insert(new)
    }

    /// Nothing but key-service, on SQLite, until more is asked for.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// key-service.
    pub fn keys(&self) -> &keys::Running {
        match (&self.vault, &self.keys) {
            (Some(stack), _) => &stack.keys,
            (None, Some(keys)) => keys,
            (None, None) => unreachable!("key-service always runs"),
        }
    }

    /// vault-service (with its key-service); the sandbox was built with it.
    pub fn vault(&self) -> &Stack {
        self.vault
            .as_ref()
            .expect("the sandbox has no vault-service")
    }

    /// audit-service; the sandbox was built with it.
    pub fn audit(&self) -> &AuditService {
        self.audit
            .as_ref()
            .expect("the sandbox has no audit-service")
    }

    /// rotation-scheduler; the sandbox was built with it.
    pub fn scheduler(&self) -> &Scheduler {
        self.scheduler
            .as_ref()
            .expect("the sandbox has no rotation-scheduler")
    }

    /// Stops every service, callers first, and joins each one's task; removes the spools.
    pub async fn stop(self) {
        if let Some(s) = self.scheduler {
            s.stop().await;
        }
        match (self.vault, self.keys) {
            (Some(stack), _) => stack.stop().await,
            (None, Some(keys)) => keys.stop().await,
            (None, None) => {}
        }
        if let Some(a) = self.audit {
            a.stop().await;
        }
        for spool in self.spools {
            let _ = std::fs::remove_file(spool);
        }
    }
}
