//! rotation-scheduler's errors and their one mapping to gRPC statuses.

use thiserror::Error;
use tonic::Status;

/// Everything that can go wrong in rotation-scheduler.
#[derive(Debug, Error)]
pub enum RotationError {
    /// The request breaks a documented rule.
    #[error("{0}")]
    Invalid(String),
    /// No such secret, or no policy applies.
    #[error("{0}")]
    NotFound(String),
    /// The secret or its policy is not in a state that allows this.
    #[error("{0}")]
    Precondition(String),
    /// A rotation of the secret is already running.
    #[error("{0}")]
    Busy(String),
    /// Authenticated, but not allowed.
    #[error(transparent)]
    Denied(#[from] sentia_policy::Denied),
    /// vault-service or key-service refused or could not be reached.
    #[error("{service}: {status}")]
    Upstream {
        /// Which service.
        service: &'static str,
        /// What it answered.
        status: Status,
    },
    /// The change's audit event could not be recorded, so the change was not made
    /// (UNAVAILABLE, as the audit gate worded it).
    #[error("{}", .0.message())]
    AuditUnavailable(Status),
    /// A stored row cannot be read back.
    #[error("stored rotation data is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Schema migration failed at start.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Start-up failed.
    #[error("{0}")]
    Startup(String),
    /// Server start-up failed.
    #[error(transparent)]
    Runtime(#[from] sentia_runtime::RuntimeError),
}

impl RotationError {
    /// A vault-service failure.
    pub fn vault(status: Status) -> Self {
        Self::Upstream {
            service: "vault-service",
            status,
        }
    }
}

impl From<RotationError> for Status {
    fn from(err: RotationError) -> Self {
        match err {
            RotationError::Invalid(m) => Status::invalid_argument(m),
            RotationError::NotFound(m) => Status::not_found(m),
            RotationError::Precondition(m) => Status::failed_precondition(m),
            RotationError::Busy(m) => Status::aborted(m),
            RotationError::Denied(d) => d.into(),
            RotationError::Upstream { service, status } => {
                use tonic::Code;
                match status.code() {
                    // The caller's input or the secret's state, judged by the service that
                    // owns it: the same answer reaches the caller.
                    code @ (Code::InvalidArgument
                    | Code::NotFound
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Aborted
                    | Code::AlreadyExists
                    | Code::ResourceExhausted
                    | Code::DataLoss) => Status::new(code, status.message().to_string()),
                    Code::Unavailable | Code::DeadlineExceeded => Status::unavailable(format!(
                        "{service} is unavailable ({}); retry later",
                        status.message()
                    )),
                    // The scheduler's own identity was refused, or the upstream failed: a
                    // deployment problem, not the caller's.
                    Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::Internal
                    | Code::Unknown
                    | Code::Unimplemented
                    | Code::Cancelled
                    | Code::Ok => Status::internal(format!(
                        "{service} refused the call: {}",
                        status.message()
                    )),
                }
            }
            RotationError::AuditUnavailable(status) => status,
            RotationError::Corrupt(m) => {
                tracing::error!(problem = %m, "stored rotation data is unreadable");
                Status::data_loss(format!("stored rotation data is unreadable: {m}"))
            }
            RotationError::Storage(e) => sentia_db::error_status(&e, "rotation storage"),
            RotationError::Migration(e) => Status::internal(format!("migration: {e}")),
            RotationError::Startup(m) => Status::internal(m),
            RotationError::Runtime(e) => Status::internal(e.to_string()),
        }
    }
}
