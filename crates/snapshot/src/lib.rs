//! The SnapshotService every service mounts over its own database (ADR 8): an admin streams
//! the database as `sentia_db::snapshot` lines, read in one transaction, for `sentia backup`.
//! The call is recorded in the audit log before the first byte leaves.
//!
//! Besides administrators, the service identities named in `SENTIA_BACKUP_IDENTITIES`
//! ([`BackupMakers`]) may take one: rotation-scheduler makes the scheduled backups, and that
//! is all it is given — not the admin role.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::Arc;

use sentia_audit_emitter::{Call, Sink};
use sentia_identity::{Principal, Role};
use sentia_proto::backup::v1::snapshot_service_server::SnapshotService;
use sentia_proto::backup::v1::{SnapshotChunk, SnapshotRequest};
use sqlx::AnyPool;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub use sentia_proto::backup::v1::snapshot_service_server::SnapshotServiceServer;

/// Who may take a snapshot: `Ok` for a caller the service counts as an administrator.
pub type Admits = Arc<dyn Fn(&Principal) -> Result<(), Status> + Send + Sync>;

/// A service's database, as its snapshot source.
#[derive(Clone)]
pub struct Snapshots {
    pool: AnyPool,
    sqlite: bool,
    audit: Arc<dyn Sink>,
    admits: Admits,
}

impl Snapshots {
    /// Snapshots of `pool` (a database at `database_url`), recorded through `audit`, for
    /// callers with the admin role.
    pub fn new(pool: AnyPool, database_url: &str, audit: Arc<dyn Sink>) -> Self {
        Self {
            pool,
            sqlite: sentia_db::is_sqlite(database_url),
            audit,
            admits: Arc::new(|p: &Principal| p.require(Role::Admin, "Snapshot")),
        }
    }

    /// Who may take one, where the service decides administrators by policy (the `admin`
    /// capability) rather than by role.
    pub fn admitting(mut self, admits: Admits) -> Self {
        self.admits = admits;
        self
    }

    /// The gRPC service to mount.
    pub fn server(self) -> SnapshotServiceServer<Self> {
        SnapshotServiceServer::new(self)
    }
}

/// Administrators by policy: holders of the `admin` capability on every path (the root token,
/// static admin identities, `system_admin`) — for vault-service and rotation-scheduler.
pub fn by_policy(policies: sentia_policy::Policies) -> Admits {
    Arc::new(move |p: &Principal| {
        policies
            .check_everywhere(p, sentia_policy::Capability::Admin, "Snapshot")
            .map_err(Status::from)
    })
}

/// The service identities that may make backups without being administrators
/// (`SENTIA_BACKUP_IDENTITIES`, default none): at key-service BeginBackup and its Snapshot, at
/// audit-service its Snapshot. A backup's snapshots hold only sealed data, hashes and the
/// audit log, so this is the least a scheduled backup's maker can be given.
#[derive(Debug, Clone, Default)]
pub struct BackupMakers(Arc<[String]>);

impl BackupMakers {
    /// The names in a comma-separated list.
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    /// `SENTIA_BACKUP_IDENTITIES`.
    pub fn from_source(r: &sentia_config::Reader<'_>) -> Self {
        Self::parse(&r.string_or("SENTIA_BACKUP_IDENTITIES", ""))
    }

    /// `Ok` for an administrator or a service identity named here; otherwise
    /// PERMISSION_DENIED saying what would let the caller in.
    pub fn admit(&self, p: &Principal, action: &str) -> Result<(), Status> {
        let named = p.role == Role::Service && self.0.contains(&p.id);
        if p.role == Role::Admin || named {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{action} needs the admin role or a service identity named in \
             SENTIA_BACKUP_IDENTITIES; caller '{}' has the {} role",
            p.id,
            p.role.as_str()
        )))
    }

    /// [`BackupMakers::admit`] as a snapshot admission.
    pub fn admits(self) -> Admits {
        Arc::new(move |p: &Principal| self.admit(p, "Snapshot"))
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotService for Snapshots {
    type SnapshotStream = Chunks;

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Chunks>, Status> {
        let call = Call::new(self.audit.as_ref(), &req, "admin", "backup_snapshot", "");
        let result: Result<Response<Chunks>, Status> = async {
            (self.admits)(&Principal::of(&req)?)?;
            call.admit().await?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (pool, sqlite) = (self.pool.clone(), self.sqlite);
            tokio::spawn(async move {
                let sink = |data: Vec<u8>| {
                    let tx = tx.clone();
                    async move { tx.send(Ok(SnapshotChunk { data })).await.is_ok() }
                };
                match sentia_db::snapshot::dump(&pool, sqlite, sink).await {
                    Ok(counts) => {
                        tracing::info!(
                            tables = counts.rows.len(),
                            rows = counts.rows.values().sum::<u64>(),
                            "snapshot streamed"
                        );
                    }
                    Err(sentia_db::snapshot::SnapshotError::Cancelled) => {
                        tracing::info!("snapshot stopped: its reader went away");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "snapshot failed");
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "the snapshot failed part-way ({e}); take it again"
                            ))))
                            .await;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Chunks))
        }
        .await;
        call.finish(result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentia_identity::AuthMethod;

    #[test]
    fn only_administrators_and_named_service_identities_may_make_backups() {
        let makers = BackupMakers::parse(" rotation-scheduler, ,");
        let who = |id: &str, role| Principal::new(id, role, AuthMethod::Mtls);
        assert!(makers.admit(&who("operator", Role::Admin), "x").is_ok());
        assert!(
            makers
                .admit(&who("rotation-scheduler", Role::Service), "x")
                .is_ok()
        );
        let denied = makers
            .admit(&who("vault-service", Role::Service), "BeginBackup")
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("SENTIA_BACKUP_IDENTITIES"));
        assert!(denied.message().contains("BeginBackup"));
        // A user token carrying a listed name is still a user.
        assert!(
            makers
                .admit(&who("rotation-scheduler", Role::User), "x")
                .is_err()
        );
        assert!(
            BackupMakers::default()
                .admit(&who("rotation-scheduler", Role::Service), "x")
                .is_err()
        );
    }
}
