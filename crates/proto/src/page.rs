//! The one page-token format of every List RPC: opaque to callers (base64url), bound to the
//! listing and to the request's filters that issued it, and bounded in size — so a token
//! from another listing, from the same listing with other filters, or a 100 KB one is
//! refused the same way everywhere (INVALID_ARGUMENT), before any query runs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The longest page token accepted, in bytes.
pub const MAX_PAGE_TOKEN: usize = 1024;

const VERSION: &str = "p1";

/// Items on a page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most items on one page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size a caller asked for: 1-1000, 0 for the default of 100 — the same rule on
/// every List RPC.
pub fn size(n: i32) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(format!("page_size {n} must be 1-1000 (0 = 100)")),
    }
}

/// FNV-1a: a short fingerprint of the request's filters (a token only moves a cursor, so
/// this guards against mistakes, not forgery; every item is still authorized).
fn fingerprint(scope: &str) -> u64 {
    scope.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The token for the page after `position` of `listing` made with filters `scope`.
pub fn encode(listing: &str, scope: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{VERSION}:{listing}:{:016x}:{position}",
        fingerprint(scope)
    ))
}

/// The position in `token` (None for the first page), if `listing` issued it for `scope`.
pub fn decode(token: &str, listing: &str, scope: &str) -> Result<Option<String>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let refuse = || {
        format!(
            "page_token is not one this listing issued for these filters (at most \
             {MAX_PAGE_TOKEN} bytes, from the previous response's next_page_token); start again \
             with an empty page_token"
        )
    };
    if token.len() > MAX_PAGE_TOKEN {
        return Err(refuse());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| refuse())?;
    let text = String::from_utf8(raw).map_err(|_| refuse())?;
    let mut parts = text.splitn(4, ':');
    let (Some(v), Some(l), Some(f), Some(position)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse());
    };
    if v != VERSION || l != listing || f != format!("{:016x}", fingerprint(scope)) {
        return Err(refuse());
    }
    Ok(Some(position.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_1_to_1000_and_0_means_100() {
        assert_eq!(size(0), Ok(100));
        assert_eq!(size(1000), Ok(1000));
        assert!(size(1001).unwrap_err().contains("1-1000"));
        assert!(size(-1).is_err());
    }

    #[test]
    fn a_token_round_trips_and_only_in_its_own_listing_and_filters() {
        let t = encode("vault.ListSecrets", "prefix=prod/", "prod/app:db");
        assert_eq!(
            decode(&t, "vault.ListSecrets", "prefix=prod/"),
            Ok(Some("prod/app:db".into()))
        );
        assert_eq!(decode("", "vault.ListSecrets", "x"), Ok(None));
        assert!(decode(&t, "keys.ListKeys", "prefix=prod/").is_err());
        assert!(decode(&t, "vault.ListSecrets", "prefix=dev/").is_err());
        assert!(decode(&"A".repeat(100_000), "vault.ListSecrets", "").is_err());
        assert!(decode("not base64!", "vault.ListSecrets", "").is_err());
        assert!(decode("12", "audit.QueryEvents", "").is_err());
    }
}
