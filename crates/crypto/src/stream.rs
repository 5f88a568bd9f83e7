//! Chunked authenticated encryption of a long stream (the STREAM construction): each chunk is
//! AES-256-GCM under a per-stream key, its nonce is its index, and its associated data binds
//! the stream id, the index and whether it is the last chunk. A chunk moved, dropped,
//! duplicated, swapped with another stream's or cut off at the end fails authentication.

use zeroize::Zeroizing;

use crate::envelope::{aes_gcm_decrypt, aes_gcm_encrypt};
use crate::{CryptoError, NONCE_LEN, SecretKey};

/// Where a chunk sits in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPosition<'a> {
    /// The stream's id (unique per key; a random id per stream is enough).
    pub stream_id: &'a [u8],
    /// 0-based index of the chunk.
    pub index: u64,
    /// True for the final chunk.
    pub last: bool,
}

fn nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(at: &ChunkPosition<'_>, extra: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + at.stream_id.len() + 9 + extra.len());
    aad.extend_from_slice(b"sentia-stream-v1");
    aad.extend_from_slice(&(at.stream_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(at.stream_id);
    aad.extend_from_slice(&at.index.to_be_bytes());
    aad.push(u8::from(at.last));
    aad.extend_from_slice(extra);
    aad
}

/// Encrypts one chunk at `at`; `extra` is authenticated too (e.g. the stream's header, on the
/// first chunk). The key must be used for one stream only.
pub fn seal_chunk(
    key: &SecretKey,
    at: ChunkPosition<'_>,
    extra: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    aes_gcm_encrypt(key, &nonce(at.index), &aad(&at, extra), plaintext)
}

/// Decrypts the chunk sealed at `at` with `extra`; anything else is
/// [`CryptoError::AuthenticationFailed`].
pub fn open_chunk(
    key: &SecretKey,
    at: ChunkPosition<'_>,
    extra: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    aes_gcm_decrypt(key, &nonce(at.index), &aad(&at, extra), ciphertext)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_chunk_opens_only_where_it_was_sealed() {
        let key = SecretKey::generate();
        let at = ChunkPosition {
            stream_id: b"s1",
            index: 3,
            last: false,
        };
        let c = seal_chunk(&key, at, b"hdr", b"data");
        assert_eq!(
            open_chunk(&key, at, b"hdr", &c).unwrap().as_slice(),
            b"data"
        );
        let elsewhere = [
            ChunkPosition { index: 4, ..at },
            ChunkPosition { last: true, ..at },
            ChunkPosition {
                stream_id: b"s2",
                ..at
            },
        ];
        for other in elsewhere {
            assert!(matches!(
                open_chunk(&key, other, b"hdr", &c),
                Err(CryptoError::AuthenticationFailed)
            ));
        }
        assert!(open_chunk(&key, at, b"other", &c).is_err());
        assert!(open_chunk(&SecretKey::generate(), at, b"hdr", &c).is_err());
    }
}
