//! Keyring vocabulary shared by config, storage and the gRPC layer.

/// What a named key is for; a key can only serve the RPCs of its purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// AES-256-GCM data keys and transit encryption.
    Encryption,
    /// Ed25519 signatures (JWKS).
    Signing,
    /// HMAC-SHA256.
    Hmac,
}

impl Purpose {
    /// Parses the stored / configured lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "encryption" => Some(Self::Encryption),
            "signing" => Some(Self::Signing),
            "hmac" => Some(Self::Hmac),
            _ => None,
        }
    }

    /// Lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encryption => "encryption",
            Self::Signing => "signing",
            Self::Hmac => "hmac",
        }
    }
}

/// Key names: 1-64 characters from `[a-z0-9_-]`, starting with a letter, so they are safe in
/// envelope headers, JWK key ids and log fields.
pub fn validate_key_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if name.is_empty() || name.len() > 64 || !starts_with_letter || !rest_ok {
        return Err(format!(
            "key name {name:?} must be 1-64 characters from [a-z0-9_-] and start with a letter"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_documented_syntax() {
        assert!(validate_key_name("vault").is_ok());
        assert!(validate_key_name("sentia-jwt_2").is_ok());
        for bad in ["", "Vault", "1key", "a/b", "a b", &"a".repeat(65)] {
            assert!(validate_key_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn purposes_round_trip_through_their_names() {
        for p in [Purpose::Encryption, Purpose::Signing, Purpose::Hmac] {
            assert_eq!(Purpose::parse(p.as_str()), Some(p));
        }
        assert_eq!(Purpose::parse("teleport"), None);
    }
}
