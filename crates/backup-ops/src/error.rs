//! What can go wrong making, checking or restoring a backup.

use sentia_backup::ArchiveError;
use sentia_db::snapshot::SnapshotError;

/// Why a backup operation stopped. Each names the service, entry or table concerned.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A service refused or failed a call.
    #[error("{service}: {code:?}: {message}")]
    Service {
        /// The service called.
        service: &'static str,
        /// Its status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The archive could not be read or written (wrong key, tampering, truncation).
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The archive opened but does not hold what its manifest says.
    #[error("verification failed: {0}")]
    Invalid(String),
    /// A snapshot is malformed, or does not fit a target database.
    #[error("{service}: {source}")]
    Snapshot {
        /// Whose snapshot.
        service: String,
        /// What is wrong.
        source: SnapshotError,
    },
    /// A target database refused the restore before anything was written.
    #[error("{0}")]
    Refused(String),
    /// A restore drill step failed: the restored system does not work as the backup promised.
    #[error("drill failed at {step}: {detail}")]
    Drill {
        /// The step.
        step: String,
        /// What went wrong.
        detail: String,
    },
    /// A destination (directory or bucket) failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Reading or writing a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BackupError {
    /// A refused or failed call to `service`, as a [`BackupError::Service`].
    pub fn service(service: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |s| Self::Service {
            service,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// A malformed or misfitting snapshot of `service`, as a [`BackupError::Snapshot`].
    pub fn snapshot(service: &str) -> impl FnOnce(SnapshotError) -> Self + '_ {
        move |source| Self::Snapshot {
            service: service.to_string(),
            source,
        }
    }
}
