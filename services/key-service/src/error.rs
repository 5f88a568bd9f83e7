//! key-service errors and their single mapping to gRPC statuses.

use sentia_crypto::CryptoError;
use sentia_runtime::audit::FailureKind;
use thiserror::Error;
use tonic::Status;

/// Everything key-service can fail with. Converted to a gRPC status in exactly one place
/// (the `From` impl below); messages never include key material or plaintext.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The request is malformed or outside stated limits.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such key or version.
    #[error("{0}")]
    NotFound(String),
    /// The key already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the key's state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The master key is not in memory.
    #[error(
        "key-service is sealed: unseal it with `sentia key unseal` (Shamir shares) or restart with SENTIA_MASTER_KEY"
    )]
    Sealed,
    /// Worth retrying shortly (another replica changed the keyring under this one).
    #[error("{0}")]
    Unavailable(String),
    /// Unseal material does not open the keyring.
    #[error("{0}")]
    PermissionDenied(String),
    /// A caller-supplied ciphertext failed parsing or authentication.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Stored key material failed authentication: the database was altered or the wrong
    /// master key is configured.
    #[error("stored key material for {0} failed authentication")]
    Corrupt(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// Schema migration failed at start.
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Server start-up failed.
    #[error(transparent)]
    Runtime(#[from] sentia_runtime::RuntimeError),
    /// Configuration is inconsistent with stored state.
    #[error("{0}")]
    Startup(String),
}

impl From<KeyError> for Status {
    fn from(err: KeyError) -> Self {
        match err {
            KeyError::InvalidArgument(m) => Status::invalid_argument(m),
            KeyError::NotFound(m) => Status::not_found(m),
            KeyError::AlreadyExists(m) => Status::already_exists(m),
            KeyError::FailedPrecondition(m) => Status::failed_precondition(m),
            KeyError::Sealed => Status::unavailable(KeyError::Sealed.to_string()),
            KeyError::Unavailable(m) => Status::unavailable(m),
            KeyError::PermissionDenied(m) => Status::permission_denied(m),
            KeyError::Crypto(e) => match e {
                CryptoError::AuthenticationFailed => {
                    FailureKind::FailedDecryption.mark(Status::invalid_argument(e.to_string()))
                }
                CryptoError::Malformed(_)
                | CryptoError::UnsupportedFormat(_)
                | CryptoError::InvalidInput(_)
                | CryptoError::InvalidShares(_)
                | CryptoError::InvalidKey(_) => Status::invalid_argument(e.to_string()),
            },
            KeyError::Corrupt(what) => {
                tracing::error!(key = %what, "stored key material failed authentication");
                Status::data_loss(format!(
                    "stored key material for {what} failed authentication"
                ))
            }
            KeyError::Storage(e) => sentia_db::error_status(&e, "key storage"),
            KeyError::Migration(e) => Status::internal(format!("migration: {e}")),
            KeyError::Runtime(e) => Status::internal(e.to_string()),
            KeyError::Startup(m) => Status::internal(m),
        }
    }
}
