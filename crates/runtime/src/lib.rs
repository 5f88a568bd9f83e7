//! What every Sentia service shares: configuration from the environment, telemetry, graceful
//! shutdown, TLS/mTLS, bearer-token authentication, and the one gRPC server stack (health,
//! reflection, request id, trace context, auth, timeout, concurrency limit).
#![forbid(unsafe_code)]

pub mod auth;
pub mod binary;
pub mod clock;
pub mod config;
mod error;
pub mod identity;
pub mod jwt;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub use sentia_audit_emitter as audit;
pub use sentia_audit_emitter::private_file;
pub use sentia_channel as client;
pub use sentia_identity::text;

pub use auth::{AuthMethod, Authenticator, BearerVerifier, Principal, Role};
pub use client::UpstreamConfig;
pub use clock::Clock;
pub use config::{ConfigError, MapSource, ProcessEnv, Reader, ServerConfig, Source};
pub use error::RuntimeError;
pub use server::{RequestId, Server};
pub use shutdown::Shutdown;
pub use tls::{TlsFiles, TlsServerConfig};
