//! key-service: the only holder of master key material. This crate so far holds its
//! configuration (master key sources, seal type, default keys), its error type with the one
//! mapping to gRPC statuses, the keyring vocabulary and the storage schema; the gRPC server
//! (`run`) lands next.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod keyring;
pub mod store;

pub use config::{Config, MasterSource};
pub use error::KeyError;
