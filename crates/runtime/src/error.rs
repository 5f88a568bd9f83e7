use thiserror::Error;

/// Failures while starting or running a server (never request errors: those are
/// `tonic::Status` built by each service's own error type).
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// Configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// Certificates or keys could not be read or used.
    #[error("tls: {0}")]
    Tls(String),
    /// The listening socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An outgoing channel could not be set up.
    #[error(transparent)]
    Channel(#[from] sentia_channel::ChannelError),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Telemetry could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
}
