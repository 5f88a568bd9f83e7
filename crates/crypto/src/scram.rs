//! PostgreSQL's SCRAM-SHA-256 password verifiers (RFC 5802 / 7677, as `pg_authid` stores
//! them). Sending `ALTER ROLE ... PASSWORD '<verifier>'` instead of the password keeps the
//! plaintext out of the server's statement log, and checking a stored verifier proves which
//! password a role has even where the server trusts every login.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// PostgreSQL's default iteration count.
pub const SCRAM_ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted[..]);
    let client_key = Zeroizing::new(hmac(&salted[..], b"Client Key"));
    let stored_key: [u8; 32] = Sha256::digest(&client_key[..]).into();
    let server_key = hmac(&salted[..], b"Server Key");
    (stored_key, server_key)
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password`, with a fresh
/// 16-byte salt.
pub fn scram_sha256_verifier(password: &[u8]) -> String {
    let salt = crate::random_bytes(16);
    verifier_with(password, &salt, SCRAM_ITERATIONS)
}

fn verifier_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let (stored, server) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored),
        STANDARD.encode(server)
    )
}

/// True if `verifier` (as stored in `pg_authid.rolpassword`) was made from `password`.
/// Anything that is not a well-formed SCRAM-SHA-256 verifier (md5, NULL, garbage) is false.
pub fn scram_sha256_matches(verifier: &str, password: &[u8]) -> bool {
    type Parts = (u32, Vec<u8>, Vec<u8>, Vec<u8>);
    let parse = || -> Option<Parts> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some((
            iterations
                .parse()
                .ok()
                .filter(|i| *i > 0 && *i <= 1_000_000)?,
            STANDARD.decode(salt).ok()?,
            STANDARD.decode(stored).ok()?,
            STANDARD.decode(server).ok()?,
        ))
    };
    let Some((iterations, salt, stored, server)) = parse() else {
        return false;
    };
    let (want_stored, want_server) = keys(password, &salt, iterations);
    bool::from(want_stored.ct_eq(&stored[..]) & want_server.ct_eq(&server[..]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_verifier_matches_its_password_only() {
        let v = scram_sha256_verifier(b"correct horse");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(scram_sha256_matches(&v, b"correct horse"));
        assert!(!scram_sha256_matches(&v, b"correct horsf"));
        assert!(!scram_sha256_matches("md5abc", b"correct horse"));
        assert!(!scram_sha256_matches(
            "SCRAM-SHA-256$x:y$z:w",
            b"correct horse"
        ));
        assert_ne!(v, scram_sha256_verifier(b"correct horse"), "fresh salt");
    }

    #[test]
    fn a_verifier_postgres_computed_is_recognised_and_reproduced() {
        // PostgreSQL 15: `SET password_encryption = 'scram-sha-256'; CREATE ROLE r PASSWORD
        // 'pencil'; SELECT rolpassword FROM pg_authid WHERE rolname = 'r';`
        let pg = "SCRAM-SHA-256$4096:ZaTMPIFx2vkPaAnRu0qsJQ==$hSmjRjmWdpK5z/z4xjlk6z4m0PkPf+ikuEw8V5Nj6Bo=:+dwMb/RHFmu1b/Tp1IcObaNnbn2snXa54HnGZ203FVk=";
        assert!(scram_sha256_matches(pg, b"pencil"));
        assert!(!scram_sha256_matches(pg, b"pencil2"));
        let salt = STANDARD.decode("ZaTMPIFx2vkPaAnRu0qsJQ==").unwrap();
        assert_eq!(verifier_with(b"pencil", &salt, 4096), pg);
    }
}
