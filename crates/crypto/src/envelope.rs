//! The stored ciphertext format. Layout (all integers big-endian):
//!
//! ```text
//! "SNT" | format u8 | name_len u8 | key name | key_version u32 | nonce [12] | ciphertext+tag
//! ```
//!
//! The header (everything before the ciphertext) is authenticated together with the caller's
//! encryption context (`AAD = header || context`), so changing any byte of the blob, or
//! presenting it under another context, fails the tag check.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey};

const MAGIC: &[u8; 3] = b"SNT";
/// Current envelope format version.
pub const FORMAT_VERSION: u8 = 1;
/// AES-GCM nonce length: 96 bits, random per encryption.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Longest key name the header can carry.
pub const MAX_KEY_NAME_LEN: usize = 64;
/// Longest encryption context accepted.
pub const MAX_CONTEXT_LEN: usize = 1024;

/// A parsed (not yet authenticated) envelope. Nothing in it is trusted until [`open`]
/// succeeds; it only tells which key to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Name of the key that sealed it.
    pub key_name: &'a str,
    /// Version of that key.
    pub key_version: u32,
    header: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Splits a blob into header fields; fails on anything truncated or malformed.
    pub fn parse(blob: &'a [u8]) -> Result<Self, CryptoError> {
        if blob.len() < MAGIC.len() + 2 {
            return Err(CryptoError::Malformed(
                "too short to hold an envelope header",
            ));
        }
        if &blob[..3] != MAGIC {
            return Err(CryptoError::Malformed(
                "not a Sentia envelope (bad magic bytes)",
            ));
        }
        if blob[3] != FORMAT_VERSION {
            return Err(CryptoError::UnsupportedFormat(blob[3]));
        }
        let name_len = blob[4] as usize;
        if name_len == 0 || name_len > MAX_KEY_NAME_LEN {
            return Err(CryptoError::Malformed("key name length out of range"));
        }
        let name_end = 5 + name_len;
        let header_end = name_end + 4 + NONCE_LEN;
        if blob.len() < header_end + TAG_LEN {
            return Err(CryptoError::Malformed("truncated"));
        }
        let key_name = std::str::from_utf8(&blob[5..name_end])
            .map_err(|_| CryptoError::Malformed("key name is not UTF-8"))?;
        let mut version = [0u8; 4];
        version.copy_from_slice(&blob[name_end..name_end + 4]);
        let key_version = u32::from_be_bytes(version);
        if key_version == 0 {
            return Err(CryptoError::Malformed("key version 0"));
        }
        Ok(Self {
            key_name,
            key_version,
            header: &blob[..header_end],
            nonce: &blob[name_end + 4..header_end],
            ciphertext: &blob[header_end..],
        })
    }
}

fn check_context(context: &[u8]) -> Result<(), CryptoError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(CryptoError::InvalidInput(format!(
            "encryption context is {} bytes; the limit is {MAX_CONTEXT_LEN}",
            context.len()
        )));
    }
    Ok(())
}

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// Raw AES-256-GCM encryption; the nonce must never repeat under one key.
pub(crate) fn aes_gcm_encrypt(
    key: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&(*key.expose()).into());
    let nonce = Nonce::from(*nonce);
    cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("aes-gcm encryption only fails above 64 GiB"))
}

/// Raw AES-256-GCM decryption with tag check.
pub(crate) fn aes_gcm_decrypt(
    key: &SecretKey,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| CryptoError::Malformed("nonce length"))?;
    let cipher = Aes256Gcm::new(&(*key.expose()).into());
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::AuthenticationFailed)
}

/// Encrypts `plaintext` under `key` (named `key_name`, version `key_version`) with a fresh
/// random nonce, binding `context` as additional data.
pub fn seal(
    key: &SecretKey,
    key_name: &str,
    key_version: u32,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    seal_with_nonce(key, key_name, key_version, context, plaintext, &nonce)
}

pub(crate) fn seal_with_nonce(
    key: &SecretKey,
    key_name: &str,
    key_version: u32,
    context: &[u8],
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    check_context(context)?;
    if key_name.is_empty() || key_name.len() > MAX_KEY_NAME_LEN {
        return Err(CryptoError::InvalidInput(format!(
            "key name must be 1 to {MAX_KEY_NAME_LEN} bytes"
        )));
    }
    if key_version == 0 {
        return Err(CryptoError::InvalidInput(
            "key version must be at least 1".into(),
        ));
    }
    let mut blob =
        Vec::with_capacity(5 + key_name.len() + 4 + NONCE_LEN + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(MAGIC);
    blob.push(FORMAT_VERSION);
    blob.push(key_name.len() as u8);
    blob.extend_from_slice(key_name.as_bytes());
    blob.extend_from_slice(&key_version.to_be_bytes());
    blob.extend_from_slice(nonce);
    let ciphertext = aes_gcm_encrypt(key, nonce, &aad(&blob, context), plaintext);
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
}

/// Authenticates and decrypts a parsed envelope with the key its header names.
pub fn open(
    key: &SecretKey,
    envelope: &Envelope<'_>,
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_context(context)?;
    aes_gcm_decrypt(
        key,
        envelope.nonce,
        &aad(envelope.header, context),
        envelope.ciphertext,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn nist_gcm_test_case_13_empty_plaintext() {
        let k = key(0);
        let ct = aes_gcm_encrypt(&k, &[0; 12], &[], &[]);
        assert_eq!(hex::encode(ct), "530f8afbc74536b9a963b4f1c4cb738b");
    }

    #[test]
    fn nist_gcm_test_case_14_one_block() {
        let k = key(0);
        let ct = aes_gcm_encrypt(&k, &[0; 12], &[], &[0; 16]);
        assert_eq!(
            hex::encode(ct),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
    }

    #[test]
    fn nist_gcm_test_case_16_with_additional_data() {
        let k = SecretKey::from_slice(&unhex(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        ))
        .unwrap();
        let iv: [u8; 12] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
        let pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = aes_gcm_encrypt(&k, &iv, &aad, &pt);
        assert_eq!(
            hex::encode(&ct),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b"
        );
        let back = aes_gcm_decrypt(&k, &iv, &aad, &ct).unwrap();
        assert_eq!(&back[..], &pt[..]);
    }

    #[test]
    fn a_sealed_envelope_opens_with_the_same_key_and_context() {
        let blob = seal(&key(1), "vault", 3, b"vault|a/b|1", b"hunter2").unwrap();
        let env = Envelope::parse(&blob).unwrap();
        assert_eq!(env.key_name, "vault");
        assert_eq!(env.key_version, 3);
        assert_eq!(
            &open(&key(1), &env, b"vault|a/b|1").unwrap()[..],
            b"hunter2"
        );
    }

    #[test]
    fn two_encryptions_of_one_plaintext_use_different_nonces() {
        let a = seal(&key(1), "k", 1, b"", b"same").unwrap();
        let b = seal(&key(1), "k", 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_context_fails_authentication() {
        let blob = seal(&key(1), "vault", 1, b"vault|a|1", b"x").unwrap();
        let env = Envelope::parse(&blob).unwrap();
        assert_eq!(
            open(&key(1), &env, b"vault|b|1"),
            Err(CryptoError::AuthenticationFailed)
        );
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let blob = seal(&key(1), "vault", 1, b"", b"x").unwrap();
        let env = Envelope::parse(&blob).unwrap();
        assert_eq!(
            open(&key(2), &env, b""),
            Err(CryptoError::AuthenticationFailed)
        );
    }

    #[test]
    fn flipping_any_bit_of_any_byte_is_detected_and_never_panics() {
        let blob = seal(&key(9), "vault", 2, b"ctx", b"attack at dawn").unwrap();
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[i] ^= 1 << bit;
                let result = Envelope::parse(&bad).and_then(|env| {
                    if env.key_name != "vault" {
                        // A changed name would fetch another key; with the original key the tag
                        // still fails because the header is authenticated.
                    }
                    open(&key(9), &env, b"ctx")
                });
                assert!(result.is_err(), "byte {i} bit {bit} went undetected");
            }
        }
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let blob = seal(&key(9), "vault", 2, b"ctx", b"attack at dawn").unwrap();
        for len in 0..blob.len() {
            let result = Envelope::parse(&blob[..len]).and_then(|env| open(&key(9), &env, b"ctx"));
            assert!(
                matches!(
                    result,
                    Err(CryptoError::Malformed(_) | CryptoError::AuthenticationFailed)
                ),
                "length {len}: {result:?}"
            );
        }
    }

    #[test]
    fn an_unknown_format_version_is_named() {
        let mut blob = seal(&key(1), "k", 1, b"", b"x").unwrap();
        blob[3] = 9;
        assert_eq!(
            Envelope::parse(&blob),
            Err(CryptoError::UnsupportedFormat(9))
        );
    }

    #[test]
    fn an_oversized_context_is_refused() {
        let big = vec![0u8; MAX_CONTEXT_LEN + 1];
        assert!(matches!(
            seal(&key(1), "k", 1, &big, b"x"),
            Err(CryptoError::InvalidInput(_))
        ));
    }
}
