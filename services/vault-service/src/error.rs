//! vault-service's errors and their one mapping to gRPC statuses.

use thiserror::Error;
use tonic::Status;

/// Everything that can go wrong in vault-service.
#[derive(Debug, Error)]
pub enum VaultError {
    /// The request breaks a documented rule (path syntax, sizes, limits).
    #[error("{0}")]
    Invalid(String),
    /// No such secret, version, label, credential or token.
    #[error("{0}")]
    NotFound(String),
    /// Check-and-set lost: the secret changed since the caller read it.
    #[error("{0}")]
    Conflict(String),
    /// The target is in the wrong state (version deleted or destroyed, ...).
    #[error("{0}")]
    Precondition(String),
    /// A write that did not ask for check-and-set kept losing races to writers on other
    /// replicas: safe to retry as it is (ABORTED, which the SDK and CLI retry).
    #[error("{0}")]
    Contended(String),
    /// Authenticated, but no policy grants the capability.
    #[error("{0}")]
    Denied(String),
    /// Bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A watch resumed from a position older than the retained change stream.
    #[error("{0}")]
    OutOfRange(String),
    /// A stored ciphertext or wrapped key failed authentication: the row was altered.
    #[error("stored data for {0} failed authentication")]
    DataLoss(String),
    /// key-service refused or could not be reached.
    #[error("key-service: {0}")]
    KeyService(Status),
    /// The change's audit event could be neither sent nor spooled, so the change was
    /// rolled back.
    #[error("{0}")]
    AuditUnavailable(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Schema migration failed at start.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Server start-up failed.
    #[error(transparent)]
    Runtime(#[from] sentia_runtime::RuntimeError),
    /// Invalid policy file or inconsistent stored state at start-up.
    #[error("{0}")]
    Startup(String),
}

impl From<sentia_policy::Denied> for VaultError {
    fn from(d: sentia_policy::Denied) -> Self {
        Self::Denied(d.0)
    }
}

impl From<VaultError> for Status {
    fn from(err: VaultError) -> Self {
        match err {
            VaultError::Invalid(m) => Status::invalid_argument(m),
            VaultError::NotFound(m) => Status::not_found(m),
            VaultError::Conflict(m) | VaultError::Precondition(m) => Status::failed_precondition(m),
            VaultError::Contended(m) => Status::aborted(m),
            VaultError::Denied(m) => Status::permission_denied(m),
            VaultError::Unauthenticated(m) => Status::unauthenticated(m),
            VaultError::OutOfRange(m) => Status::out_of_range(m),
            VaultError::DataLoss(what) => {
                tracing::error!(secret = %what, "stored secret data failed authentication");
                Status::data_loss(format!(
                    "stored data for {what} failed authentication: the record was altered or \
                     moved; restore it from backup"
                ))
            }
            VaultError::KeyService(s) => match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted => Status::unavailable(format!(
                    "key-service is unavailable ({}); retry later",
                    s.message()
                )),
                _ => {
                    tracing::error!(code = ?s.code(), message = s.message(), "key-service call failed");
                    Status::internal(format!("key-service refused the call: {}", s.message()))
                }
            },
            VaultError::AuditUnavailable(m) => Status::unavailable(format!(
                "{m}; nothing was changed — retry when the audit log is back"
            )),
            VaultError::Storage(e) => sentia_db::error_status(&e, "secret storage"),
            VaultError::Migration(e) => Status::internal(format!("migration: {e}")),
            VaultError::Runtime(e) => Status::internal(e.to_string()),
            VaultError::Startup(m) => Status::internal(m),
        }
    }
}
