//! Validation at the edge: wire messages become these checked values, and every rule a caller
//! can break answers INVALID_ARGUMENT with a message that says what to fix. The core never
//! sees an unchecked path, label or metadata field.

use std::collections::BTreeMap;

use prost_types::Timestamp;
use sentia_proto::common::v1::Tier;
use sentia_proto::vault::v1 as pb;

use crate::VaultError;

/// Longest path, in bytes.
pub const MAX_PATH_LEN: usize = 512;
/// Longest path segment.
pub const MAX_SEGMENT_LEN: usize = 128;
/// Largest value (like AWS Secrets Manager and GCP Secret Manager).
pub const MAX_VALUE_LEN: usize = 65_536;
/// Most tags on one secret.
pub const MAX_TAGS: usize = 64;
/// Longest tag key.
pub const MAX_TAG_KEY_LEN: usize = 63;
/// Longest tag value.
pub const MAX_TAG_VALUE_LEN: usize = 256;
/// Longest owner.
pub const MAX_OWNER_LEN: usize = 128;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest content type.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Longest stage label.
pub const MAX_LABEL_LEN: usize = 32;
/// Most labels set by one Put.
pub const MAX_LABELS_PER_PUT: usize = 8;
/// Longest idempotency request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Versions kept when the caller does not say.
pub const DEFAULT_MAX_VERSIONS: u32 = 10;
/// Most versions a secret may keep.
pub const MAX_MAX_VERSIONS: u32 = 100;
/// Most reads in one BatchGet.
pub const MAX_BATCH: usize = 100;
/// The label a plain Get reads and a plain Put moves.
pub const CURRENT: &str = "CURRENT";
/// The label the previous CURRENT version gets when CURRENT moves.
pub const PREVIOUS: &str = "PREVIOUS";
/// The label of a staged version (a rotation's new value); it leaves a version that becomes
/// CURRENT.
pub const PENDING: &str = "PENDING";

fn invalid(msg: impl Into<String>) -> VaultError {
    VaultError::Invalid(msg.into())
}

/// A validated secret path such as `prod/database/password`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath(String);

impl SecretPath {
    /// Checks the path syntax documented in vault.proto.
    pub fn parse(raw: &str) -> Result<Self, VaultError> {
        if raw.is_empty() {
            return Err(invalid(
                "path is empty; use a path like prod/database/password",
            ));
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(invalid(format!(
                "path is {} bytes; the limit is {MAX_PATH_LEN}",
                raw.len()
            )));
        }
        if raw.starts_with('/') || raw.ends_with('/') {
            return Err(invalid(format!(
                "path {raw:?} must not start or end with '/'"
            )));
        }
        for segment in raw.split('/') {
            check_segment(raw, segment)?;
        }
        Ok(Self(raw.to_string()))
    }

    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SecretPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_segment(raw: &str, segment: &str) -> Result<(), VaultError> {
    if segment.is_empty() {
        return Err(invalid(format!("path {raw:?} has an empty segment ('//')")));
    }
    if segment == "." || segment == ".." {
        return Err(invalid(format!(
            "path {raw:?} has a {segment:?} segment; relative segments are not allowed"
        )));
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(invalid(format!(
            "path segment {:.20}... is {} characters; the limit is {MAX_SEGMENT_LEN}",
            segment,
            segment.len()
        )));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "path {raw:?} contains {c:?}; segments may only use A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// A validated path prefix for List and Watch: empty (everything) or a path, matched on
/// segment boundaries (`prod/db` matches `prod/db` and `prod/db/x`, not `prod/dbx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Accepts "", a path, or a path with one trailing '/'.
    pub fn parse(raw: &str) -> Result<Self, VaultError> {
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        if trimmed.is_empty() {
            return Ok(Self(String::new()));
        }
        SecretPath::parse(trimmed).map_err(|e| match e {
            VaultError::Invalid(m) => invalid(format!("prefix: {m}")),
            other => other,
        })?;
        Ok(Self(trimmed.to_string()))
    }

    /// The prefix text without a trailing '/' ("" = everything).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `path` is under this prefix.
    pub fn matches(&self, path: &str) -> bool {
        self.0.is_empty()
            || path == self.0
            || (path.starts_with(&self.0) && path.as_bytes().get(self.0.len()) == Some(&b'/'))
    }
}

/// A validated stage label (`CURRENT`, `PENDING`, `PREVIOUS` or custom).
pub fn label(raw: &str) -> Result<String, VaultError> {
    if raw.is_empty() || raw.len() > MAX_LABEL_LEN {
        return Err(invalid(format!(
            "label {raw:?} must be 1-{MAX_LABEL_LEN} characters"
        )));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(format!(
            "label {raw:?} may only use A-Z 0-9 _ (e.g. CURRENT, PENDING, CANARY_2)"
        )));
    }
    Ok(raw.to_string())
}

/// Which version a read wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A version number.
    Version(u64),
    /// A stage label.
    Label(String),
}

impl Selector {
    /// From the request's oneof; none = the CURRENT label (as AWS Secrets Manager does), which
    /// is what keeps readers on the live value while a rotation stages a PENDING one.
    pub fn from_pb(s: Option<&pb::get_secret_request::Selector>) -> Result<Self, VaultError> {
        match s {
            None => Ok(Self::Label(CURRENT.into())),
            Some(pb::get_secret_request::Selector::Version(0)) => Err(invalid(
                "version must be 1 or more (omit it to read CURRENT)",
            )),
            Some(pb::get_secret_request::Selector::Version(v)) => Ok(Self::Version(*v)),
            Some(pb::get_secret_request::Selector::Label(l)) => Ok(Self::Label(label(l)?)),
        }
    }
}

/// Secret metadata other than versions and labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// 1 critical, 2 sensitive, 3 internal.
    pub tier: i32,
    /// Owning team or principal.
    pub owner: String,
    /// Free text.
    pub description: String,
    /// MIME type of the value.
    pub content_type: String,
    /// Labels for search and policy.
    pub tags: BTreeMap<String, String>,
    /// Versions kept.
    pub max_versions: u32,
    /// Expiry, Unix ms.
    pub expire_time: Option<i64>,
    /// Rotate-by deadline, Unix ms.
    pub rotate_by_time: Option<i64>,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            tier: Tier::Internal as i32,
            owner: String::new(),
            description: String::new(),
            content_type: "text/plain".into(),
            tags: BTreeMap::new(),
            max_versions: DEFAULT_MAX_VERSIONS,
            expire_time: None,
            rotate_by_time: None,
        }
    }
}

/// Metadata fields a field mask may name.
pub const METADATA_FIELDS: &[&str] = &[
    "tier",
    "owner",
    "description",
    "content_type",
    "tags",
    "max_versions",
    "expire_time",
    "rotate_by_time",
];

fn ms_of(ts: &Option<Timestamp>, field: &str) -> Result<Option<i64>, VaultError> {
    ts.as_ref()
        .map(|t| sentia_proto::wkt::timestamp_ms(field, t))
        .transpose()
        .map_err(invalid)
}

impl Metadata {
    /// Applies `fields` (all of them when `None`) of `m` onto `self`, validating each.
    pub fn apply(
        &mut self,
        m: &pb::SecretMetadata,
        fields: Option<&[String]>,
    ) -> Result<(), VaultError> {
        let all: Vec<String>;
        let fields = match fields {
            Some(f) => f,
            None => {
                all = METADATA_FIELDS
                    .iter()
                    .filter(|f| is_set(m, f))
                    .map(|f| f.to_string())
                    .collect();
                &all
            }
        };
        for field in fields {
            match field.as_str() {
                "tier" => {
                    self.tier = match Tier::try_from(m.tier) {
                        Ok(Tier::Unspecified) => Tier::Internal as i32,
                        Ok(t) => t as i32,
                        Err(_) => {
                            return Err(invalid(format!(
                                "tier {} is not 1 (critical), 2 (sensitive) or 3 (internal)",
                                m.tier
                            )));
                        }
                    }
                }
                "owner" => self.owner = bounded(&m.owner, "owner", MAX_OWNER_LEN)?,
                "description" => {
                    self.description = bounded(&m.description, "description", MAX_DESCRIPTION_LEN)?
                }
                "content_type" => {
                    self.content_type =
                        bounded(&m.content_type, "content_type", MAX_CONTENT_TYPE_LEN)?;
                    if self.content_type.is_empty() {
                        self.content_type = "text/plain".into();
                    }
                }
                "tags" => self.tags = tags(&m.tags)?,
                "max_versions" => {
                    self.max_versions = match m.max_versions {
                        0 => DEFAULT_MAX_VERSIONS,
                        n @ 1..=MAX_MAX_VERSIONS => n,
                        n => {
                            return Err(invalid(format!(
                                "max_versions {n} must be 1-{MAX_MAX_VERSIONS}"
                            )));
                        }
                    }
                }
                "expire_time" => self.expire_time = ms_of(&m.expire_time, "expire_time")?,
                "rotate_by_time" => {
                    self.rotate_by_time = ms_of(&m.rotate_by_time, "rotate_by_time")?
                }
                other => {
                    return Err(invalid(format!(
                        "update_mask names {other:?}; allowed: {}",
                        METADATA_FIELDS.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

fn is_set(m: &pb::SecretMetadata, field: &str) -> bool {
    match field {
        "tier" => m.tier != 0,
        "owner" => !m.owner.is_empty(),
        "description" => !m.description.is_empty(),
        "content_type" => !m.content_type.is_empty(),
        "tags" => !m.tags.is_empty(),
        "max_versions" => m.max_versions != 0,
        "expire_time" => m.expire_time.is_some(),
        "rotate_by_time" => m.rotate_by_time.is_some(),
        _ => false,
    }
}

fn bounded(v: &str, field: &str, max: usize) -> Result<String, VaultError> {
    if v.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(v.to_string())
}

fn tags(
    raw: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, VaultError> {
    if raw.len() > MAX_TAGS {
        return Err(invalid(format!(
            "{} tags; the limit is {MAX_TAGS}",
            raw.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        if k.is_empty()
            || k.len() > MAX_TAG_KEY_LEN
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "tag key {k:?} must be 1-{MAX_TAG_KEY_LEN} characters of a-z 0-9 _ -"
            )));
        }
        out.insert(
            k.clone(),
            bounded(v, &format!("tag {k}"), MAX_TAG_VALUE_LEN)?,
        );
    }
    Ok(out)
}

/// Checks a value's size.
pub fn value(v: &[u8]) -> Result<(), VaultError> {
    if v.len() > MAX_VALUE_LEN {
        return Err(invalid(format!(
            "value is {} bytes; the limit is {MAX_VALUE_LEN} (64 KiB)",
            v.len()
        )));
    }
    Ok(())
}

/// Checks an idempotency request id.
pub fn request_id(v: &str) -> Result<Option<String>, VaultError> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > MAX_REQUEST_ID_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "request_id must be at most {MAX_REQUEST_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(Some(v.to_string()))
}

/// Field-mask paths, checked against the metadata fields (an empty mask = none given).
pub fn mask(m: &Option<prost_types::FieldMask>) -> Result<Option<Vec<String>>, VaultError> {
    let Some(m) = m else { return Ok(None) };
    if m.paths.is_empty() {
        return Ok(None);
    }
    for p in &m.paths {
        if !METADATA_FIELDS.contains(&p.as_str()) {
            return Err(invalid(format!(
                "update_mask names {p:?}; allowed: {}",
                METADATA_FIELDS.join(", ")
            )));
        }
    }
    Ok(Some(m.paths.clone()))
}

/// The encryption context bound into a version's data key and ciphertext: moving either to
/// another path or version makes decryption fail.
pub fn context(path: &SecretPath, version: u64) -> Vec<u8> {
    format!("vault|{}|{version}", path.as_str()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_syntax() {
        for ok in [
            "prod/database/password",
            "a",
            "dev/app-1/api_key.v2",
            "a/".repeat(100).trim_end_matches('/'),
        ] {
            assert!(SecretPath::parse(ok).is_ok(), "{ok}");
        }
        for (bad, hint) in [
            ("", "empty"),
            ("/prod/x", "start or end"),
            ("prod/x/", "start or end"),
            ("prod//x", "empty segment"),
            ("prod/../x", "relative"),
            ("prod/./x", "relative"),
            ("prod/x y", "contains ' '"),
            ("prod/ü", "contains"),
        ] {
            let err = SecretPath::parse(bad).unwrap_err().to_string();
            assert!(err.contains(hint), "{bad}: {err}");
        }
        assert!(
            SecretPath::parse(&"a".repeat(129))
                .unwrap_err()
                .to_string()
                .contains("128")
        );
        let long = vec!["abcdefgh"; 60].join("/");
        assert!(
            SecretPath::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("512")
        );
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let p = Prefix::parse("prod/db/").unwrap();
        assert!(p.matches("prod/db"));
        assert!(p.matches("prod/db/password"));
        assert!(!p.matches("prod/dbx"));
        assert!(Prefix::parse("").unwrap().matches("anything"));
        assert!(Prefix::parse("prod//").is_err());
    }

    #[test]
    fn labels_and_tags_are_bounded() {
        assert!(label("CURRENT").is_ok());
        assert!(label("current").is_err());
        assert!(label(&"A".repeat(33)).is_err());
        let mut m = Metadata::default();
        let mut pbm = pb::SecretMetadata::default();
        pbm.tags.insert("Team".into(), "x".into());
        assert!(
            m.apply(&pbm, None)
                .unwrap_err()
                .to_string()
                .contains("tag key")
        );
        pbm.tags.clear();
        for i in 0..65 {
            pbm.tags.insert(format!("k{i}"), "v".into());
        }
        assert!(m.apply(&pbm, None).unwrap_err().to_string().contains("64"));
    }

    #[test]
    fn metadata_applies_only_masked_fields() {
        let mut m = Metadata::default();
        let pbm = pb::SecretMetadata {
            owner: "payments".into(),
            description: "ignored".into(),
            tier: 1,
            ..Default::default()
        };
        m.apply(&pbm, Some(&["owner".to_string()])).unwrap();
        assert_eq!(m.owner, "payments");
        assert_eq!(m.description, "");
        assert_eq!(m.tier, 3);
        let bad = pb::SecretMetadata {
            max_versions: 101,
            ..Default::default()
        };
        assert!(m.apply(&bad, None).is_err());
        assert!(value(&vec![0; MAX_VALUE_LEN + 1]).is_err());
        assert!(value(&vec![0; MAX_VALUE_LEN]).is_ok());
    }
}
