use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::SecretKey;

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 tag of `data`.
pub fn hmac_sha256(key: &SecretKey, data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Checks an HMAC-SHA256 tag in constant time.
pub fn verify_hmac_sha256(key: &SecretKey, data: &[u8], tag: &[u8]) -> bool {
    crate::constant_time_eq(&hmac_sha256(key, data), tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2_matches_when_the_key_is_padded_to_32_bytes() {
        // RFC 4231 case 2 uses the 4-byte key "Jefe"; HMAC zero-pads short keys to the block
        // size, so the same key padded with zeros to 32 bytes gives the same tag.
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(b"Jefe");
        let tag = hmac_sha256(&SecretKey::from_bytes(k), b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verification_accepts_the_tag_and_rejects_another() {
        let k = SecretKey::from_bytes([3; 32]);
        let tag = hmac_sha256(&k, b"data");
        assert!(verify_hmac_sha256(&k, b"data", &tag));
        assert!(!verify_hmac_sha256(&k, b"data2", &tag));
        assert!(!verify_hmac_sha256(&k, b"data", &tag[..31]));
    }
}
