//! Envelope encryption, key derivation, master key loading and Shamir sharing for Sentia.
//! No I/O: everything here is a pure function of its inputs (plus the OS random source), so it
//! can be tested with known-answer vectors and reused by every service.
#![forbid(unsafe_code)]

mod envelope;
mod error;
mod kdf;
mod keys;
mod mac;
mod master;
mod recovery;
mod scram;
pub mod shamir;
mod signing;
mod stream;

pub use envelope::{
    Envelope, FORMAT_VERSION, MAX_CONTEXT_LEN, MAX_KEY_NAME_LEN, NONCE_LEN, TAG_LEN, open, seal,
};
pub use error::CryptoError;
pub use kdf::{derive_secret_key, hkdf_sha256};
pub use keys::{KEY_LEN, SecretKey, random_bytes};
pub use mac::{hmac_sha256, verify_hmac_sha256};
pub use master::{MIN_PBKDF2_ITERATIONS, MIN_SALT_LEN, MasterKey};
pub use recovery::{
    RecoveryPrivateKey, RecoveryPublicKey, escrow_key, escrow_master, open_escrow,
    open_escrowed_key,
};
pub use scram::{SCRAM_ITERATIONS, scram_sha256_matches, scram_sha256_verifier};
pub use signing::{ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, SigningKey, verify_ed25519};
pub use stream::{ChunkPosition, open_chunk, seal_chunk};

/// SHA-256 of `data`; used for fingerprints and token hashes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
