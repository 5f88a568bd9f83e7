//! Generated gRPC contracts for every Sentia service, and the descriptor set that every server
//! mounts for reflection. Re-exports `tonic` and `prost` so the whole tree shares one version.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod json;
pub mod page;
pub mod wkt;

pub use prost;
pub use prost_types;
pub use tonic;

/// Encoded `FileDescriptorSet` of all Sentia protos, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sentia_descriptor.bin"));

/// Types shared by all contracts.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("sentia.common.v1");
    }
}

/// key-service contract.
pub mod keys {
    pub mod v1 {
        tonic::include_proto!("sentia.keys.v1");
    }
}

/// vault-service contract.
pub mod vault {
    pub mod v1 {
        tonic::include_proto!("sentia.vault.v1");
    }
}

/// rotation-scheduler contract.
pub mod rotation {
    pub mod v1 {
        tonic::include_proto!("sentia.rotation.v1");
    }
}

/// audit-service contract.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("sentia.audit.v1");
    }
}

/// Database snapshots for backups, served by every service.
pub mod backup {
    pub mod v1 {
        tonic::include_proto!("sentia.backup.v1");
    }
}

/// The Kubernetes KMS v2 plugin API (package `v2`, as kube-apiserver calls it), served by
/// `sentia kms-plugin`.
pub mod kms {
    pub mod v2 {
        tonic::include_proto!("v2");
    }
}
