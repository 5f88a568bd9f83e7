use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;

/// Length of every symmetric key in Sentia (AES-256, HMAC-SHA256, Ed25519 seeds).
pub const KEY_LEN: usize = 32;

/// 32 bytes of key material. Zeroized on drop; `Debug` shows only a short fingerprint, so a
/// stray `{:?}` can never leak the key. Deliberately not `Clone`-by-accident: cloning is
/// explicit via [`SecretKey::duplicate`].
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps existing bytes (which the caller should zeroize).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies from a slice, refusing any length but 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            CryptoError::InvalidKey(format!("expected {KEY_LEN} bytes, got {}", bytes.len()))
        })?;
        Ok(Self(arr))
    }

    /// Fresh key from the OS random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        Self(bytes)
    }

    /// The raw bytes; keep the borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An explicit copy (both copies zeroize on drop).
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }

    /// First 8 hex digits of SHA-256(key): enough to tell keys apart in logs, useless to an
    /// attacker.
    pub fn fingerprint(&self) -> String {
        hex::encode(&crate::sha256(&self.0)[..4])
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(fp:{})", self.fingerprint())
    }
}

/// `n` bytes from the OS random source.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_a_fingerprint_and_never_the_key() {
        let key = SecretKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?}");
        assert!(shown.starts_with("SecretKey(fp:"));
        assert!(!shown.to_lowercase().contains("abab"));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            SecretKey::generate().expose(),
            SecretKey::generate().expose()
        );
    }

    #[test]
    fn a_slice_of_the_wrong_length_is_refused() {
        assert!(matches!(
            SecretKey::from_slice(&[0; 31]),
            Err(CryptoError::InvalidKey(_))
        ));
    }
}
