//! Disaster recovery of a lost master key: the master is escrowed to an offline X25519
//! recovery key (ECIES — an ephemeral X25519 agreement, HKDF-SHA256, AES-256-GCM through the
//! envelope format), so key-service needs only the public half, and the escrow opens only
//! with the private half that operators keep elsewhere (a safe, an HSM, split custody).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{CryptoError, Envelope, KEY_LEN, MasterKey, SecretKey, hkdf_sha256, open, seal};

const MAGIC: &[u8; 4] = b"SRE1";
const INFO: &[u8] = b"sentia/recovery-escrow/v1";

/// The public half of a recovery key: what key-service is configured with
/// (`SENTIA_RECOVERY_PUBLIC_KEY`, base64 of 32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryPublicKey([u8; KEY_LEN]);

impl RecoveryPublicKey {
    /// From standard base64 of exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD.decode(encoded.trim()).map_err(|_| {
            CryptoError::InvalidKey("recovery public key is not valid base64".into())
        })?;
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            CryptoError::InvalidKey(format!(
                "recovery public key must decode to {KEY_LEN} bytes, got {}",
                b.len()
            ))
        })?;
        Ok(Self(arr))
    }

    /// Standard base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// First 16 hex digits of SHA-256 of the key: what Status shows, so operators can check
    /// which recovery key an escrow was made for without handling the key.
    pub fn fingerprint(&self) -> String {
        hex::encode(&crate::sha256(&self.0)[..8])
    }
}

impl fmt::Debug for RecoveryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryPublicKey(fp:{})", self.fingerprint())
    }
}

/// The private half of a recovery key. Zeroized on drop; `Debug` shows only the public
/// fingerprint.
pub struct RecoveryPrivateKey(SecretKey);

impl RecoveryPrivateKey {
    /// A fresh key pair's private half.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// From standard base64 of exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| {
            CryptoError::InvalidKey("recovery private key is not valid base64".into())
        })?);
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey(format!(
                "recovery private key must decode to {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Self(SecretKey::from_slice(&bytes)?))
    }

    /// Standard base64, for writing the key to its file once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.expose()))
    }

    /// The matching public key.
    pub fn public(&self) -> RecoveryPublicKey {
        let secret = StaticSecret::from(*self.0.expose());
        RecoveryPublicKey(PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for RecoveryPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RecoveryPrivateKey(public fp:{})",
            self.public().fingerprint()
        )
    }
}

/// The AES key both sides derive: HKDF-SHA256 over the X25519 shared secret, salted with the
/// ephemeral and recipient public keys so the key is bound to both.
fn escrow_key_for(
    secret: &StaticSecret,
    their: &PublicKey,
    ephemeral: &[u8; KEY_LEN],
    recipient: &[u8; KEY_LEN],
) -> Result<SecretKey, CryptoError> {
    let shared = secret.diffie_hellman(their);
    if !shared.was_contributory() {
        return Err(CryptoError::InvalidKey(
            "recovery public key is a low-order point".into(),
        ));
    }
    let mut salt = Vec::with_capacity(2 * KEY_LEN);
    salt.extend_from_slice(ephemeral);
    salt.extend_from_slice(recipient);
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(Some(&salt), shared.as_bytes(), INFO, &mut okm[..])?;
    Ok(SecretKey::from_bytes(*okm))
}

/// Seals `master` to `to`. `context` (e.g. the master version) is authenticated, so an escrow
/// only opens for what it was made for. Layout: `SRE1 ‖ ephemeral public key ‖ envelope`.
pub fn escrow_master(
    master: &MasterKey,
    to: &RecoveryPublicKey,
    context: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    escrow_key(master.key(), to, context)
}

/// Seals any 256-bit key to `to` the way [`escrow_master`] seals the master (a backup's key,
/// for one).
pub fn escrow_key(
    secret: &SecretKey,
    to: &RecoveryPublicKey,
    context: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let ephemeral = StaticSecret::from(*SecretKey::generate().expose());
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let key = escrow_key_for(&ephemeral, &PublicKey::from(to.0), &ephemeral_public, &to.0)?;
    let sealed = seal(&key, "recovery", 1, context, secret.expose())?;
    let mut out = Vec::with_capacity(MAGIC.len() + KEY_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens an escrow made by [`escrow_master`] with the recovery private key. A wrong key, a
/// different `context` or any altered byte is [`CryptoError::AuthenticationFailed`].
pub fn open_escrow(
    blob: &[u8],
    with: &RecoveryPrivateKey,
    context: &[u8],
) -> Result<MasterKey, CryptoError> {
    let key = open_escrowed_key(blob, with, context)?;
    MasterKey::from_bytes(key.expose())
}

/// Opens an escrow made by [`escrow_key`] (or [`escrow_master`]).
pub fn open_escrowed_key(
    blob: &[u8],
    with: &RecoveryPrivateKey,
    context: &[u8],
) -> Result<SecretKey, CryptoError> {
    let rest = blob
        .strip_prefix(MAGIC)
        .ok_or(CryptoError::Malformed("not a recovery escrow"))?;
    if rest.len() < KEY_LEN {
        return Err(CryptoError::Malformed("recovery escrow is truncated"));
    }
    let (ephemeral, sealed) = rest.split_at(KEY_LEN);
    let ephemeral: [u8; KEY_LEN] = ephemeral
        .try_into()
        .map_err(|_| CryptoError::Malformed("recovery escrow is truncated"))?;
    let secret = StaticSecret::from(*with.0.expose());
    let key = escrow_key_for(
        &secret,
        &PublicKey::from(ephemeral),
        &ephemeral,
        &with.public().0,
    )?;
    let envelope = Envelope::parse(sealed)?;
    let opened = open(&key, &envelope, context)?;
    SecretKey::from_slice(&opened)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_escrow_opens_with_its_private_key_and_context_only() {
        let recovery = RecoveryPrivateKey::generate();
        let master = MasterKey::generate();
        let blob = escrow_master(&master, &recovery.public(), b"master-v1").unwrap();
        let opened = open_escrow(&blob, &recovery, b"master-v1").unwrap();
        assert_eq!(opened.key().expose(), master.key().expose());

        let other = RecoveryPrivateKey::generate();
        assert!(matches!(
            open_escrow(&blob, &other, b"master-v1"),
            Err(CryptoError::AuthenticationFailed)
        ));
        assert!(matches!(
            open_escrow(&blob, &recovery, b"master-v2"),
            Err(CryptoError::AuthenticationFailed)
        ));
    }

    #[test]
    fn every_altered_byte_of_an_escrow_is_refused() {
        let recovery = RecoveryPrivateKey::generate();
        let blob = escrow_master(&MasterKey::generate(), &recovery.public(), b"ctx").unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(open_escrow(&bad, &recovery, b"ctx").is_err(), "byte {i}");
        }
        assert!(open_escrow(&blob[..40], &recovery, b"ctx").is_err());
    }

    #[test]
    fn the_escrow_holds_neither_the_master_nor_the_same_bytes_twice() {
        let recovery = RecoveryPrivateKey::generate();
        let master = MasterKey::generate();
        let a = escrow_master(&master, &recovery.public(), b"ctx").unwrap();
        let b = escrow_master(&master, &recovery.public(), b"ctx").unwrap();
        assert_ne!(a, b, "fresh ephemeral key and nonce each time");
        let m = master.key().expose();
        assert!(!a.windows(m.len()).any(|w| w == m));
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        let zero = RecoveryPublicKey::from_base64(&STANDARD.encode([0u8; 32])).unwrap();
        assert!(matches!(
            escrow_master(&MasterKey::generate(), &zero, b"ctx"),
            Err(CryptoError::InvalidKey(_))
        ));
    }

    #[test]
    fn keys_round_trip_through_base64_and_debug_shows_no_key() {
        let private = RecoveryPrivateKey::generate();
        let again = RecoveryPrivateKey::from_base64(&private.to_base64()).unwrap();
        assert_eq!(again.public(), private.public());
        let public = RecoveryPublicKey::from_base64(&private.public().to_base64()).unwrap();
        assert_eq!(public, private.public());
        let shown = format!("{private:?} {public:?}");
        assert!(!shown.contains(private.to_base64().as_str()));
        assert!(!shown.contains(&public.to_base64()));
        assert!(RecoveryPublicKey::from_base64("c2hvcnQ=").is_err());
        assert!(RecoveryPrivateKey::from_base64("not base64!").is_err());
    }
}
