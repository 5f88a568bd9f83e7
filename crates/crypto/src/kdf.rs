use hkdf::Hkdf;
use sha2::Sha256;

use crate::{CryptoError, SecretKey};

/// HKDF-SHA256 (RFC 5869) into `out`; `out` may be at most 255 * 32 bytes.
pub fn hkdf_sha256(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .map_err(|_| {
            CryptoError::InvalidInput(format!("hkdf output of {} bytes is too long", out.len()))
        })
}

/// The strategy document's `deriveSecretKey(purpose, version)`: HKDF-SHA256 with no salt and
/// info `"{purpose}-v{version}"`, so each purpose and version gets an independent key.
pub fn derive_secret_key(master: &SecretKey, purpose: &str, version: u32) -> SecretKey {
    let mut out = [0u8; 32];
    let info = format!("{purpose}-v{version}");
    // 32 bytes is always a valid HKDF-SHA256 output length.
    Hkdf::<Sha256>::new(None, master.expose())
        .expand(info.as_bytes(), &mut out)
        .unwrap_or_else(|_| unreachable!("32-byte hkdf output"));
    let key = SecretKey::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc5869_test_case_1_matches() {
        let ikm = [0x0b; 22];
        let salt = unhex("000102030405060708090a0b0c");
        let info = unhex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf_sha256(Some(&salt), &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn rfc5869_test_case_3_without_salt_or_info_matches() {
        let mut okm = [0u8; 42];
        hkdf_sha256(None, &[0x0b; 22], &[], &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_version() {
        let master = SecretKey::from_bytes([7; 32]);
        let a = derive_secret_key(&master, "sentia/keyring", 1);
        let b = derive_secret_key(&master, "sentia/keyring", 2);
        let c = derive_secret_key(&master, "sentia/other", 1);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
        let again = derive_secret_key(&master, "sentia/keyring", 1);
        assert_eq!(a.expose(), again.expose());
    }

    #[test]
    fn derivation_uses_the_seed_info_format() {
        let master = SecretKey::from_bytes([7; 32]);
        let mut expected = [0u8; 32];
        hkdf_sha256(None, master.expose(), b"vault-v3", &mut expected).unwrap();
        assert_eq!(derive_secret_key(&master, "vault", 3).expose(), &expected);
    }
}
