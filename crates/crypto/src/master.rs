use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey, shamir};

/// Lowest PBKDF2 iteration count accepted: the strategy document's 100,000.
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;
/// Shortest salt accepted for password-derived master keys (128 bits, per NIST SP 800-132).
pub const MIN_SALT_LEN: usize = 16;

/// The root of the key hierarchy. Only key-service ever holds one; it never leaves memory
/// except as base64 or Shamir shares handed to an operator exactly once.
pub struct MasterKey(SecretKey);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// From `SENTIA_MASTER_KEY`: standard base64 of exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| CryptoError::InvalidKey("master key is not valid base64".into()))?,
        );
        if bytes.len() != 32 {
            return Err(CryptoError::InvalidKey(format!(
                "master key must decode to 32 bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Self(SecretKey::from_slice(&bytes)?))
    }

    /// From raw bytes (exactly 32), e.g. an opened recovery escrow.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(SecretKey::from_slice(bytes)?))
    }

    /// The strategy document's `deriveMasterKey()`: PBKDF2-HMAC-SHA512(password, salt), 32 bytes.
    /// Refuses fewer than [`MIN_PBKDF2_ITERATIONS`] iterations and salts shorter than
    /// [`MIN_SALT_LEN`] bytes.
    pub fn from_password(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, CryptoError> {
        if password.is_empty() {
            return Err(CryptoError::InvalidKey("master password is empty".into()));
        }
        if salt.len() < MIN_SALT_LEN {
            return Err(CryptoError::InvalidKey(format!(
                "encryption salt must be at least {MIN_SALT_LEN} bytes, got {}",
                salt.len()
            )));
        }
        if iterations < MIN_PBKDF2_ITERATIONS {
            return Err(CryptoError::InvalidKey(format!(
                "pbkdf2 iterations must be at least {MIN_PBKDF2_ITERATIONS}, got {iterations}"
            )));
        }
        Ok(Self(pbkdf2_sha512(password, salt, iterations)))
    }

    /// Recombines Shamir shares (base64 strings as produced by [`MasterKey::split`]).
    /// Too few shares yield a wrong key, which the keyring check then rejects.
    pub fn from_shares(shares: &[Zeroizing<Vec<u8>>]) -> Result<Self, CryptoError> {
        let secret = shamir::combine(shares)?;
        Ok(Self(SecretKey::from_slice(&secret)?))
    }

    /// Splits into `n` base64 shares, any `k` of which rebuild the key.
    pub fn split(&self, k: u8, n: u8) -> Result<Vec<Zeroizing<String>>, CryptoError> {
        let shares = shamir::split(self.0.expose(), k, n)?;
        Ok(shares
            .iter()
            .map(|s| Zeroizing::new(STANDARD.encode(&s[..])))
            .collect())
    }

    /// Standard base64, for showing a newly generated key to an operator once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.expose()))
    }

    /// The key itself, for HKDF derivation.
    pub fn key(&self) -> &SecretKey {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fp:{})", self.0.fingerprint())
    }
}

pub(crate) fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> SecretKey {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out);
    let key = SecretKey::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_sha512_matches_the_published_vector() {
        // PBKDF2-HMAC-SHA512("password", "salt", 1): first 32 bytes of the 64-byte vector.
        let k = pbkdf2_sha512(b"password", b"salt", 1);
        assert_eq!(
            hex::encode(k.expose()),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"
        );
    }

    #[test]
    fn a_password_key_with_too_few_iterations_or_a_short_salt_is_refused() {
        let salt = [1u8; 16];
        assert!(MasterKey::from_password(b"pw", &salt, 99_999).is_err());
        assert!(MasterKey::from_password(b"pw", &salt[..15], 100_000).is_err());
        assert!(MasterKey::from_password(b"", &salt, 100_000).is_err());
    }

    #[test]
    fn base64_round_trips_and_bad_lengths_are_named() {
        let k = MasterKey::generate();
        let back = MasterKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.key().expose(), back.key().expose());
        let err = MasterKey::from_base64("AAAA").unwrap_err();
        assert!(err.to_string().contains("32 bytes"));
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn any_threshold_of_shares_rebuilds_the_key() {
        let k = MasterKey::generate();
        let shares = k.split(3, 5).unwrap();
        let decoded: Vec<_> = shares
            .iter()
            .map(|s| Zeroizing::new(STANDARD.decode(s.as_bytes()).unwrap()))
            .collect();
        let back = MasterKey::from_shares(&decoded[1..4]).unwrap();
        assert_eq!(k.key().expose(), back.key().expose());
        let wrong = MasterKey::from_shares(&decoded[..2]).unwrap();
        assert_ne!(k.key().expose(), wrong.key().expose());
    }
}
