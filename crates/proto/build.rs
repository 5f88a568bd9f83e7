//! Compiles `proto/` with protox (no system protoc) and writes the descriptor set for reflection.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "sentia/common/v1/common.proto",
    "sentia/keys/v1/keys.proto",
    "sentia/vault/v1/vault.proto",
    "sentia/rotation/v1/rotation.proto",
    "sentia/audit/v1/audit.proto",
    "sentia/backup/v1/backup.proto",
];

/// Contracts Sentia serves for others, outside its reflection descriptor: the Kubernetes KMS
/// v2 plugin API.
const FOREIGN: &[&str] = &["k8s/kms/v2/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // Neither protox nor tonic-prost-build tells cargo about protos outside the crate.
    println!("cargo:rerun-if-changed={}", root.display());
    for file in FILES.iter().chain(FOREIGN) {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sentia_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile(FOREIGN, [&root])?)?;
    Ok(())
}
