use thiserror::Error;

/// Everything that can go wrong in this crate. Messages never contain key material or
/// plaintext; they say what is wrong with the input so a caller can act on it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The blob cannot be parsed (truncated, bad lengths, bad magic).
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// The blob was written by an unknown envelope format version.
    #[error("unsupported envelope format version {0}")]
    UnsupportedFormat(u8),
    /// AES-GCM tag check failed: wrong key, wrong encryption context, or tampered bytes.
    #[error(
        "authentication failed: wrong key or encryption context, or the ciphertext was modified"
    )]
    AuthenticationFailed,
    /// A key, salt, password or share has the wrong shape.
    #[error("invalid key material: {0}")]
    InvalidKey(String),
    /// An input is outside its stated limits.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Shamir shares cannot be combined.
    #[error("invalid shares: {0}")]
    InvalidShares(String),
}
