//! Shamir secret sharing over GF(2^8) (the AES field), as Vault's unseal keys do. Each share
//! is `x || y_1..y_len`; field arithmetic is branch-free so timing does not depend on secrets.

use zeroize::Zeroizing;

use crate::CryptoError;

fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

fn gf_inv(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8); 0 maps to 0 (never used: x values are distinct and non-zero).
    let mut result = 1u8;
    let mut base = a;
    let mut exp = 254u8;
    while exp > 0 {
        if exp & 1 == 1 {
            result = gf_mul(result, base);
        }
        base = gf_mul(base, base);
        exp >>= 1;
    }
    result
}

/// Splits `secret` into `n` shares with threshold `k` (2 <= k <= n <= 255).
pub fn split(secret: &[u8], k: u8, n: u8) -> Result<Vec<Zeroizing<Vec<u8>>>, CryptoError> {
    if k < 2 || k > n {
        return Err(CryptoError::InvalidInput(format!(
            "threshold must be between 2 and the number of shares ({n}), got {k}"
        )));
    }
    if secret.is_empty() {
        return Err(CryptoError::InvalidInput(
            "cannot split an empty secret".into(),
        ));
    }
    let mut shares: Vec<Zeroizing<Vec<u8>>> = (1..=n)
        .map(|x| {
            let mut s = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
            s.push(x);
            s
        })
        .collect();
    let mut coefficients = Zeroizing::new(vec![0u8; k as usize]);
    for &byte in secret {
        coefficients[0] = byte;
        rand::fill(&mut coefficients[1..]);
        for share in shares.iter_mut() {
            let x = share[0];
            // Horner's rule from the highest coefficient down.
            let y = coefficients
                .iter()
                .rev()
                .fold(0u8, |acc, &c| gf_mul(acc, x) ^ c);
            share.push(y);
        }
    }
    Ok(shares)
}

/// Rebuilds the secret from shares. It cannot tell whether enough shares were given: too few
/// produce a wrong secret, which callers must detect (key-service checks it against the
/// keyring).
pub fn combine(shares: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if shares.len() < 2 {
        return Err(CryptoError::InvalidShares(
            "at least 2 shares are needed".into(),
        ));
    }
    let len = shares[0].len();
    if len < 2 {
        return Err(CryptoError::InvalidShares("a share is too short".into()));
    }
    let mut seen = [false; 256];
    for share in shares {
        if share.len() != len {
            return Err(CryptoError::InvalidShares(
                "shares have different lengths".into(),
            ));
        }
        if share[0] == 0 {
            return Err(CryptoError::InvalidShares("a share has x = 0".into()));
        }
        if std::mem::replace(&mut seen[share[0] as usize], true) {
            return Err(CryptoError::InvalidShares(
                "the same share was given twice".into(),
            ));
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (i, share_i) in shares.iter().enumerate() {
        // Lagrange basis polynomial for share i, evaluated at x = 0.
        let mut basis = 1u8;
        for (j, share_j) in shares.iter().enumerate() {
            if i != j {
                basis = gf_mul(basis, gf_mul(share_j[0], gf_inv(share_j[0] ^ share_i[0])));
            }
        }
        for (out, &y) in secret.iter_mut().zip(&share_i[1..]) {
            *out ^= gf_mul(y, basis);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_inverse_is_correct_for_every_element() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "a = {a}");
        }
    }

    #[test]
    fn every_subset_of_threshold_size_recovers_the_secret() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let shares = split(secret, 3, 5).unwrap();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let subset = [shares[a].clone(), shares[b].clone(), shares[c].clone()];
                    assert_eq!(&combine(&subset).unwrap()[..], secret);
                }
            }
        }
    }

    #[test]
    fn bad_parameters_and_bad_share_sets_are_refused() {
        assert!(split(b"s", 1, 3).is_err());
        assert!(split(b"s", 4, 3).is_err());
        let shares = split(b"secret", 2, 3).unwrap();
        assert!(combine(&shares[..1]).is_err());
        assert!(combine(&[shares[0].clone(), shares[0].clone()]).is_err());
        let short = Zeroizing::new(shares[1][..3].to_vec());
        assert!(combine(&[shares[0].clone(), short]).is_err());
    }
}
