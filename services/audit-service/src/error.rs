//! audit-service's errors and their one mapping to gRPC statuses.

use thiserror::Error;
use tonic::Status;

/// Everything that can go wrong in audit-service.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The request breaks a documented rule.
    #[error("{0}")]
    Invalid(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Denied(String),
    /// A stored row cannot be read back.
    #[error("stored audit data is unreadable: {0}")]
    Corrupt(String),
    /// key-service refused or could not be reached.
    #[error("key-service: {0}")]
    KeyService(Status),
    /// The log cannot take appends now (its committer stopped).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Schema migration failed at start.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Server start-up failed.
    #[error(transparent)]
    Runtime(#[from] sentia_runtime::RuntimeError),
}

impl From<AuditError> for Status {
    fn from(err: AuditError) -> Self {
        match err {
            AuditError::Invalid(m) => Status::invalid_argument(m),
            AuditError::Denied(m) => Status::permission_denied(m),
            AuditError::Unavailable(m) => Status::unavailable(format!("{m}; retry later")),
            AuditError::Corrupt(m) => {
                tracing::error!(problem = %m, "stored audit data is unreadable");
                Status::data_loss(format!("stored audit data is unreadable: {m}"))
            }
            AuditError::KeyService(s) => match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Status::unavailable(
                    format!("key-service is unavailable ({}); retry later", s.message()),
                ),
                _ => Status::internal(format!("key-service refused the call: {}", s.message())),
            },
            AuditError::Storage(e) => sentia_db::error_status(&e, "audit storage"),
            AuditError::Migration(e) => Status::internal(format!("migration: {e}")),
            AuditError::Runtime(e) => Status::internal(e.to_string()),
        }
    }
}
