//! The restore drill (the strategy document's monthly "full-system-test"): a checked archive
//! restored into scratch SQLite databases, the four services started on them in this process,
//! and the restored system exercised through gRPC as its users would — then torn down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

use sentia_channel::{AuthedChannel, CallContext, connect_lazy};
use sentia_crypto::MasterKey;
use sentia_proto::audit::v1::VerifyChainRequest;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_proto::keys::v1::system_service_client::SystemServiceClient;
use sentia_proto::keys::v1::{StatusRequest, UnsealRequest, unseal_request};
use sentia_proto::rotation::v1::ListRotationsRequest;
use sentia_proto::rotation::v1::rotation_service_client::RotationServiceClient;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::auth_service_client::AuthServiceClient;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::audit::AuditConfig;
use sentia_runtime::auth::TokenTable;
use sentia_runtime::{Role, ServerConfig, Shutdown, UpstreamConfig};
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use zeroize::Zeroizing;

use sentia_backup_ops::{BackupError, Opener, Progress, Quiet, Sources, Verified, manifest};

use crate::restore::{Restored, Targets, restore_with};

/// What a passed drill saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillReport {
    /// The archive drilled.
    pub archive_id: String,
    /// What the restore wrote.
    pub restored: Restored,
    /// Enabled secret versions read back through vault-service and key-service.
    pub versions_read: usize,
    /// Soft-deleted versions (refused as deleted, as before the backup).
    pub versions_deleted: usize,
    /// Destroyed versions (refused as destroyed, as before the backup).
    pub versions_destroyed: usize,
    /// Audit records the restored audit-service verified.
    pub audit_records_checked: u64,
    /// Rotation schedules the restored rotation-scheduler listed.
    pub rotations_listed: usize,
}

/// Restores `archive` (opened with `opener`) into fresh databases under `scratch` (created,
/// owner-only, and removed afterwards whatever happens), runs the four services on them and
/// checks the restored system: every enabled secret version decrypts, deleted and destroyed
/// ones stay so, the audit chain verifies, a token is issued and accepted, rotation-scheduler
/// answers (paused: a drill never rotates a real credential). The error names the step.
pub async fn drill(
    archive: &Verified,
    opener: &Opener,
    scratch: &Path,
) -> Result<DrillReport, BackupError> {
    drill_with(archive, opener, scratch, &Quiet).await
}

/// [`drill`], reporting its stages and the versions read to `progress`.
pub async fn drill_with(
    archive: &Verified,
    opener: &Opener,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<DrillReport, BackupError> {
    let _cleanup = Scratch::create(scratch)?;
    let url = |name: &str| format!("sqlite://{}?mode=rwc", scratch.join(name).display());
    let targets = Targets {
        keys: url("keys.db"),
        vault: url("vault.db"),
        audit: url("audit.db"),
        scheduler: url("rotation.db"),
    };
    let restored = restore_with(archive, &targets, false, progress).await?;
    progress.stage("starting the restored services", None);
    let system = InProcess::start(&targets, opener, scratch).await?;
    let result = system.exercise(archive, progress).await;
    system.stop().await;
    let (versions, audit_records_checked, rotations_listed) = result?;
    Ok(DrillReport {
        archive_id: archive.manifest.archive_id.clone(),
        restored,
        versions_read: versions[0],
        versions_deleted: versions[1],
        versions_destroyed: versions[2],
        audit_records_checked,
        rotations_listed,
    })
}

/// The identity (certificate name or service token id) and `service` a drill's report is
/// recorded under; audit-service raises BackupDrillFailed for its failures.
pub const DRILL_IDENTITY: &str = "backup-drill";

/// Records a drill's outcome in the live audit log (`backup_drill_passed` or
/// `backup_drill_failed`, the archive's name as its subject), through `audit` reached with a
/// service identity — [`DRILL_IDENTITY`] in the shipped deployments. One event, appended
/// directly: a scheduled drill whose report cannot be recorded fails, rather than spooling it
/// somewhere the job's end removes.
pub async fn record(
    audit: AuthedChannel,
    archive: &str,
    outcome: &Result<DrillReport, BackupError>,
) -> Result<(), BackupError> {
    let (operation, status) = match outcome {
        Ok(_) => ("backup_drill_passed", tonic::Code::Ok),
        Err(BackupError::Service { code, .. }) => ("backup_drill_failed", *code),
        Err(_) => ("backup_drill_failed", tonic::Code::DataLoss),
    };
    let now = sentia_proto::wkt::now_ms();
    let event = sentia_proto::audit::v1::AuditEvent {
        time: Some(sentia_proto::wkt::timestamp(now)),
        event_type: "backup".into(),
        principal: DRILL_IDENTITY.into(),
        secret_name: archive.chars().take(512).collect(),
        operation: operation.into(),
        success: outcome.is_ok(),
        service: DRILL_IDENTITY.into(),
        status_code: sentia_runtime::audit::code_name(status).into(),
        emitter_id: hex::encode(sentia_crypto::random_bytes(16)),
        emitter_sequence: 1,
        ..Default::default()
    };
    AuditServiceClient::new(audit)
        .append_events(sentia_proto::audit::v1::AppendEventsRequest {
            events: vec![event],
        })
        .await
        .map_err(BackupError::service("audit-service"))?;
    Ok(())
}

fn failed(step: &str, detail: impl std::fmt::Display) -> BackupError {
    BackupError::Drill {
        step: step.to_string(),
        detail: detail.to_string(),
    }
}

/// The scratch directory, removed when the drill ends.
struct Scratch(PathBuf);

impl Scratch {
    fn create(dir: &Path) -> Result<Self, BackupError> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The four services running in this process on given databases, each on port 0 with a
/// fresh token of its own and rotation paused: the drill's restored system, and the
/// benchmark's. Auditing is off (its audit-service holds the log it was given, and nothing
/// else); the one administrator token reaches every service.
pub struct InProcess {
    /// key-service's address.
    pub keys: String,
    /// vault-service's address.
    pub vault: String,
    /// audit-service's address.
    pub audit: String,
    /// rotation-scheduler's address.
    pub scheduler: String,
    admin: Zeroizing<String>,
    shutdown: Shutdown,
    tasks: tokio::task::JoinSet<(&'static str, Result<(), String>)>,
}

fn token() -> Zeroizing<String> {
    Zeroizing::new(hex::encode(sentia_crypto::random_bytes(32)))
}

async fn listener() -> Result<(tokio::net::TcpListener, String), BackupError> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

fn upstream(addr: &str, token: &Zeroizing<String>) -> UpstreamConfig {
    UpstreamConfig {
        addr: addr.to_string(),
        token: Some(token.clone()),
        tls: None,
    }
}

fn config_err(
    service: &str,
) -> impl FnOnce(sentia_runtime::config::ConfigError) -> BackupError + '_ {
    move |e| failed("start", format!("{service}: {e}"))
}

impl InProcess {
    /// Starts the four on `targets` (migrating them; an empty keyring is created under the
    /// master), key-service unsealed with `opener`'s master or recovery key, and waits until
    /// each answers. A root token minted for an empty vault database goes to a private file
    /// in `work`, never to the console.
    pub async fn start(
        targets: &Targets,
        opener: &Opener,
        work: &Path,
    ) -> Result<Self, BackupError> {
        let (admin, vault_t, audit_t, sched_t) = (token(), token(), token(), token());
        let tokens = TokenTable::from_plain([
            ("drill", Role::Admin, admin.as_str()),
            ("vault-service", Role::Service, vault_t.as_str()),
            ("audit-service", Role::Service, audit_t.as_str()),
            ("rotation-scheduler", Role::Service, sched_t.as_str()),
        ]);
        let shutdown = Shutdown::new();
        let mut tasks = tokio::task::JoinSet::new();
        let dev = |name: &'static str, tokens: TokenTable, addr: &str| {
            let mut s = ServerConfig::dev(name, tokens);
            s.listen_addr = addr.parse().unwrap_or(s.listen_addr);
            s
        };

        let (key_l, keys) = listener().await?;
        let master = match opener {
            Opener::Master(m) => key_service::MasterSource::Key(
                MasterKey::from_base64(&m.to_base64())
                    .map_err(|e| failed("start", format!("key-service: {e}")))?,
            ),
            Opener::Recovery(_) => key_service::MasterSource::Recovery,
            Opener::Archive(_) => {
                return Err(failed(
                    "start",
                    "a drill unseals key-service: give the master or the recovery key",
                ));
            }
        };
        let mut kc = key_service::Config::in_process(
            dev("key-service", tokens.clone(), &keys),
            AuditConfig::disabled(),
            master,
        )
        .map_err(config_err("key-service"))?;
        kc.database_url = targets.keys.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let r = key_service::run(kc, key_l, stop).await;
            ("key-service", r.map_err(|e| e.to_string()))
        });
        let system_client = SystemServiceClient::new(channel(&keys, None)?);
        ready("key-service", || {
            let mut c = system_client.clone();
            async move { c.status(StatusRequest {}).await.is_ok() }
        })
        .await?;
        if let Opener::Recovery(r) = opener {
            let mut c = system_client.clone();
            c.unseal(UnsealRequest {
                material: Some(unseal_request::Material::RecoveryKey(
                    r.to_base64().to_string(),
                )),
                reset: false,
            })
            .await
            .map_err(|s| failed("unseal", s.message()))?;
        }

        let (audit_l, audit) = listener().await?;
        let mut ac =
            audit_service::Config::in_process(dev("audit-service", tokens.clone(), &audit))
                .map_err(config_err("audit-service"))?;
        ac.database_url = targets.audit.clone();
        ac.key_service = upstream(&keys, &audit_t);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let r = audit_service::run(ac, audit_l, stop).await;
            ("audit-service", r.map_err(|e| e.to_string()))
        });

        let (vault_l, vault) = listener().await?;
        let vault_tokens = TokenTable::from_plain([
            ("drill", Role::Admin, admin.as_str()),
            ("rotation-scheduler", Role::Service, sched_t.as_str()),
        ]);
        let mut vc = vault_service::Config::in_process(
            dev("vault-service", vault_tokens, &vault),
            AuditConfig::disabled(),
        )
        .map_err(config_err("vault-service"))?;
        vc.policies.identities = [(
            "rotation-scheduler".to_string(),
            vec!["system_admin".to_string()],
        )]
        .into();
        vc.database_url = targets.vault.clone();
        vc.root_token_file = Some(work.join("root-token"));
        vc.key_service = upstream(&keys, &vault_t);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let r = vault_service::run(vc, vault_l, stop).await;
            ("vault-service", r.map_err(|e| e.to_string()))
        });

        let (sched_l, scheduler) = listener().await?;
        let mut rc = rotation_scheduler::Config::in_process(
            dev("rotation-scheduler", tokens.clone(), &scheduler),
            AuditConfig::disabled(),
        )
        .map_err(config_err("rotation-scheduler"))?;
        rc.database_url = targets.scheduler.clone();
        rc.vault_service = upstream(&vault, &sched_t);
        rc.paused = true;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let r = rotation_scheduler::run(rc, sched_l, stop).await;
            (
                "rotation-scheduler",
                r.map(|_| ()).map_err(|e| e.to_string()),
            )
        });

        let running = Self {
            keys,
            vault,
            audit,
            scheduler,
            admin,
            shutdown,
            tasks,
        };
        running.ready().await?;
        Ok(running)
    }

    /// The administrator token every service accepts.
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    /// Channels to the four with the administrator token: what a backup is made from.
    pub fn sources(&self) -> Result<Sources, BackupError> {
        let admin = Some(self.admin.as_str());
        Ok(Sources {
            keys: channel(&self.keys, admin)?,
            vault: channel(&self.vault, admin)?,
            audit: channel(&self.audit, admin)?,
            scheduler: channel(&self.scheduler, admin)?.into(),
        })
    }

    /// Waits until vault-service, audit-service and rotation-scheduler answer health checks.
    async fn ready(&self) -> Result<(), BackupError> {
        for (service, addr) in [
            ("vault-service", &self.vault),
            ("audit-service", &self.audit),
            ("rotation-scheduler", &self.scheduler),
        ] {
            let health = HealthClient::new(channel(addr, None)?);
            ready(service, || {
                let mut c = health.clone();
                async move { c.check(HealthCheckRequest::default()).await.is_ok() }
            })
            .await?;
        }
        Ok(())
    }

    /// Stops the four and waits for each.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        while self.tasks.join_next().await.is_some() {}
    }

    async fn exercise(
        &self,
        archive: &Verified,
        progress: &dyn Progress,
    ) -> Result<([usize; 3], u64, usize), BackupError> {
        let status = SystemServiceClient::new(channel(&self.keys, None)?)
            .status(StatusRequest {})
            .await
            .map_err(|s| failed("unseal", s.message()))?
            .into_inner();
        if status.sealed || status.master_version != archive.manifest.master_version {
            return Err(failed(
                "unseal",
                format!(
                    "key-service is {} at master version {}, the archive names {}",
                    if status.sealed { "sealed" } else { "unsealed" },
                    status.master_version,
                    archive.manifest.master_version
                ),
            ));
        }
        let admin = Some(self.admin.as_str());
        let secrets = SecretServiceClient::new(channel(&self.vault, admin)?);
        let versions = read_every_version(&secrets, archive, progress).await?;
        progress.stage("verifying the audit chain", None);

        let mut audit = AuditServiceClient::new(channel(&self.audit, admin)?);
        let verdict = audit
            .verify_chain(VerifyChainRequest::default())
            .await
            .map_err(|s| failed("verify the audit chain", s.message()))?
            .into_inner();
        if !verdict.valid || verdict.records_checked < archive.manifest.audit.records {
            return Err(failed(
                "verify the audit chain",
                format!(
                    "{} records checked of {}; first bad sequence {}: {}",
                    verdict.records_checked,
                    archive.manifest.audit.records,
                    verdict.first_bad_sequence,
                    verdict.problem
                ),
            ));
        }

        // A token issued by the restored system (signed with its restored keys) is accepted.
        let mut auth = AuthServiceClient::new(channel(&self.vault, admin)?);
        let cred = auth
            .create_app_credential(pb::CreateAppCredentialRequest {
                name: "sentia-restore-drill".into(),
                policies: vec!["developer".into()],
                max_uses: 1,
                ..Default::default()
            })
            .await
            .map_err(|s| failed("issue a token", s.message()))?
            .into_inner();
        let login = auth
            .login(pb::LoginRequest {
                role_id: cred.role_id,
                secret_id: cred.secret_id,
            })
            .await
            .map_err(|s| failed("issue a token", s.message()))?
            .into_inner();
        let who = AuthServiceClient::new(channel(&self.vault, Some(&login.token))?)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map_err(|s| failed("accept the issued token", s.message()))?
            .into_inner();
        if who.principal.is_none_or(|p| p.auth_method != "jwt") {
            return Err(failed(
                "accept the issued token",
                "WhoAmI did not name a token holder",
            ));
        }

        let mut rotations = RotationServiceClient::new(channel(&self.scheduler, admin)?);
        let listed = rotations
            .list_rotations(ListRotationsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .map_err(|s| failed("list rotations", s.message()))?
            .into_inner();
        Ok((versions, verdict.records_checked, listed.rotations.len()))
    }
}

/// Reads every version the vault snapshot holds; returns [read, deleted, destroyed].
/// Reads the drill keeps in flight.
const READS_IN_FLIGHT: usize = 8;

async fn read_every_version(
    secrets: &SecretServiceClient<AuthedChannel>,
    archive: &Verified,
    progress: &dyn Progress,
) -> Result<[usize; 3], BackupError> {
    let mut rows = Vec::new();
    manifest::rows(
        &archive.snapshots["vault-service"],
        |table, columns, row| {
            if table == "secret_versions" {
                let get = |c: &str| {
                    columns
                        .iter()
                        .position(|x| x == c)
                        .and_then(|i| row.get(i))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                rows.push((get("path"), get("version"), get("state")));
            }
            Ok(())
        },
    )
    .map_err(BackupError::snapshot("vault-service"))?;
    progress.stage("reading every secret version", Some(rows.len() as u64));
    // A few reads in flight, as the services' users would make them.
    let mut reads = futures_util::stream::iter(rows.into_iter().map(|(path, version, state)| {
        let mut c = secrets.clone();
        async move {
            let (Some(path), Some(version), Some(state)) =
                (path.as_str(), version.as_u64(), state.as_i64())
            else {
                return Err(failed(
                    "read secrets",
                    "a version row without path, number or state",
                ));
            };
            let got = c
                .get_secret(pb::GetSecretRequest {
                    path: path.to_string(),
                    selector: Some(pb::get_secret_request::Selector::Version(version)),
                    allow_expired: true,
                })
                .await;
            let enabled = state == vault_service::store::State::Enabled as i64;
            let destroyed = state == vault_service::store::State::Destroyed as i64;
            match got {
                Ok(r) if enabled => {
                    drop(Zeroizing::new(r.into_inner().value));
                    Ok(0)
                }
                Err(s) if !enabled && s.code() == tonic::Code::FailedPrecondition => {
                    Ok(if destroyed { 2 } else { 1 })
                }
                Ok(_) => Err(failed(
                    "read secrets",
                    format!("{path} version {version} was readable, but was not before"),
                )),
                Err(s) => Err(failed(
                    "read secrets",
                    format!("{path} version {version}: {:?}: {}", s.code(), s.message()),
                )),
            }
        }
    }))
    .buffer_unordered(READS_IN_FLIGHT);
    let mut counts = [0usize; 3];
    while let Some(outcome) = reads.next().await {
        counts[outcome?] += 1;
        progress.advance(1);
    }
    Ok(counts)
}

fn channel(addr: &str, token: Option<&str>) -> Result<AuthedChannel, BackupError> {
    let ch = connect_lazy(addr, None).map_err(|e| failed("connect", e))?;
    Ok(CallContext::with_token(token)
        .map_err(|e| failed("connect", e))?
        .wrap(ch))
}

/// Waits (at most about 30 s) until `probe` answers true.
async fn ready<F, Fut>(service: &str, probe: F) -> Result<(), BackupError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if probe().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(failed("start", format!("{service} did not answer")))
}
