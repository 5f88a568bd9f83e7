//! Kubernetes login: the cluster issuer whose service-account tokens vault-service trusts, and
//! roles binding (namespace, service account) pairs to policies. It lives in the policy file
//! (table `[kubernetes]`) so a binding reloads with the policies it names and can never name
//! one that does not exist.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sentia_identity::text::{ECHO_MAX, clip};

/// The policy file's table holding Kubernetes login (so no policy may take this name).
pub const TABLE: &str = "kubernetes";

/// Shortest token lifetime a role may set (as for app credentials).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(sentia_identity::MIN_TOKEN_TTL_SECS);
/// Longest token lifetime a role may set: what vault-service issues at most.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(sentia_identity::MAX_TOKEN_TTL_SECS);
/// Token lifetime when a role does not set one.
pub const DEFAULT_TOKEN_TTL: Duration =
    Duration::from_secs(sentia_identity::DEFAULT_TOKEN_TTL_SECS);
/// Most policies one role grants (as on an app credential).
pub const MAX_ROLE_POLICIES: usize = sentia_identity::MAX_TOKEN_POLICIES;

/// Where the issuer's public keys (a JWKS) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk (e.g. `kubectl get --raw /openid/v1/jwks`), re-read when it
    /// changes.
    File(PathBuf),
    /// A JWKS URL, e.g. `https://kubernetes.default.svc/openid/v1/jwks`.
    Url(String),
    /// An OIDC discovery base URL: its `/.well-known/openid-configuration` names the JWKS.
    Discovery(String),
}

/// The trusted cluster and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesLogin {
    /// The `iss` a token must carry: the cluster's `--service-account-issuer`.
    pub issuer: String,
    /// A token must name one of these in `aud` (the audience of its projected volume), so a
    /// token minted for the API server or another system does not log in here.
    pub audiences: Vec<String>,
    /// The issuer's signing keys.
    pub keys: KeySource,
    /// CA bundle (PEM) for an https key source; the system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Bearer token file sent to an https key source (the API server serves its JWKS to
    /// authenticated service accounts), e.g. vault-service's own projected token.
    pub token_file: Option<PathBuf>,
    /// Roles by name.
    pub roles: BTreeMap<String, KubernetesRole>,
}

/// Who may log in under a role, and what they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesRole {
    /// Namespaces whose service accounts this role admits (exact names).
    pub namespaces: Vec<String>,
    /// Service-account names this role admits, in any of `namespaces` (exact names).
    pub service_accounts: Vec<String>,
    /// Policies the issued token carries.
    pub policies: Vec<String>,
    /// Lifetime of an issued token (never beyond the Kubernetes token's own expiry).
    pub token_ttl: Duration,
}

impl KubernetesRole {
    /// True if `namespace`/`service_account` may log in under this role.
    pub fn binds(&self, namespace: &str, service_account: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
            && self.service_accounts.iter().any(|s| s == service_account)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginFile {
    issuer: String,
    audiences: Vec<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    discovery_url: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    roles: BTreeMap<String, RoleFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    namespaces: Vec<String>,
    service_accounts: Vec<String>,
    policies: Vec<String>,
    token_ttl: Option<String>,
}

/// Parses the `[kubernetes]` table; `policy_exists` says which policy names a role may grant.
/// Errors name the key at fault.
pub fn parse(
    table: toml::Value,
    policy_exists: impl Fn(&str) -> bool,
) -> Result<KubernetesLogin, String> {
    let raw: LoginFile = table
        .try_into()
        .map_err(|e| format!("[{TABLE}]: {}", e.to_string().trim()))?;
    let issuer = raw.issuer.trim().to_string();
    if issuer.is_empty() || issuer.len() > 512 {
        return Err(format!(
            "[{TABLE}] issuer must be the cluster's service-account issuer (1-512 characters)"
        ));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.is_empty() || a.len() > 256) {
        return Err(format!(
            "[{TABLE}] audiences must list at least one audience (the `audience` of the \
             workloads' projected token volume), each 1-256 characters"
        ));
    }
    let keys = match (raw.jwks_file, raw.jwks_url, raw.discovery_url) {
        (Some(f), None, None) => KeySource::File(f),
        (None, Some(u), None) => KeySource::Url(checked_url("jwks_url", u)?),
        (None, None, Some(u)) => KeySource::Discovery(checked_url("discovery_url", u)?),
        _ => {
            return Err(format!(
                "[{TABLE}] needs exactly one of jwks_file, jwks_url or discovery_url"
            ));
        }
    };
    let mut roles = BTreeMap::new();
    for (name, r) in raw.roles {
        let role = role(&name, r, &policy_exists)?;
        roles.insert(name, role);
    }
    Ok(KubernetesLogin {
        issuer,
        audiences: raw.audiences,
        keys,
        ca_file: raw.ca_file,
        token_file: raw.token_file,
        roles,
    })
}

fn role(
    name: &str,
    r: RoleFile,
    policy_exists: &impl Fn(&str) -> bool,
) -> Result<KubernetesRole, String> {
    let at = format!("[{TABLE}.roles.{}]", clip(name, ECHO_MAX));
    if !is_dns_label_or_subdomain(name) {
        return Err(format!(
            "{at}: a role name is 1-253 lowercase letters, digits, '-' and '.'"
        ));
    }
    for (what, names) in [
        ("namespaces", &r.namespaces),
        ("service_accounts", &r.service_accounts),
    ] {
        if names.is_empty() {
            return Err(format!("{at}: {what} must list at least one name"));
        }
        if let Some(bad) = names.iter().find(|n| !is_dns_label_or_subdomain(n)) {
            return Err(format!(
                "{at}: {what} entry {:?} is not a Kubernetes name (lowercase letters, digits, \
                 '-' and '.'; wildcards are not accepted)",
                clip(bad, ECHO_MAX)
            ));
        }
    }
    if r.policies.is_empty() || r.policies.len() > MAX_ROLE_POLICIES {
        return Err(format!(
            "{at}: policies must name 1-{MAX_ROLE_POLICIES} policies"
        ));
    }
    if let Some(p) = r.policies.iter().find(|p| !policy_exists(p)) {
        return Err(format!(
            "{at}: policy {:?} is not defined in this file",
            clip(p, ECHO_MAX)
        ));
    }
    let token_ttl = match r.token_ttl {
        None => DEFAULT_TOKEN_TTL,
        Some(raw) => sentia_config::parse_duration(&raw)
            .filter(|d| (MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(d))
            .ok_or_else(|| {
                format!(
                    "{at}: token_ttl {:?} must be a duration from 1m to 24h (e.g. \"15m\")",
                    clip(&raw, ECHO_MAX)
                )
            })?,
    };
    Ok(KubernetesRole {
        namespaces: r.namespaces,
        service_accounts: r.service_accounts,
        policies: r.policies,
        token_ttl,
    })
}

/// https anywhere; plain http only to this host (a test issuer, a local proxy).
fn checked_url(key: &str, url: String) -> Result<String, String> {
    let loopback = ["http://127.0.0.1:", "http://[::1]:", "http://localhost:"];
    if url.starts_with("https://") || loopback.iter().any(|p| url.starts_with(p)) {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(format!(
            "[{TABLE}] {key} {:?} must be an https:// URL (plain http only to 127.0.0.1, [::1] \
             or localhost)",
            clip(&url, ECHO_MAX)
        ))
    }
}

/// A Kubernetes object name: DNS subdomain rules (namespaces are labels, a subset).
fn is_dns_label_or_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(text: &str) -> toml::Value {
        let mut t: toml::Table = toml::from_str(text).unwrap();
        t.remove(TABLE).unwrap()
    }

    const GOOD: &str = r#"
[kubernetes]
issuer = "https://kubernetes.default.svc.cluster.local"
audiences = ["sentia"]
discovery_url = "https://kubernetes.default.svc/"
[kubernetes.roles.sentia-mcp-server]
namespaces = ["apps"]
service_accounts = ["mcp-server"]
policies = ["monitoring_system"]
token_ttl = "15m"
"#;

    #[test]
    fn a_role_binds_exactly_its_namespaces_and_service_accounts() {
        let k = parse(table(GOOD), |p| p == "monitoring_system").unwrap();
        assert_eq!(
            k.keys,
            KeySource::Discovery("https://kubernetes.default.svc".into())
        );
        let r = &k.roles["sentia-mcp-server"];
        assert_eq!(r.token_ttl, Duration::from_secs(900));
        assert!(r.binds("apps", "mcp-server"));
        assert!(!r.binds("apps", "other"));
        assert!(!r.binds("default", "mcp-server"));
    }

    #[test]
    fn a_broken_kubernetes_table_is_refused_naming_what_to_fix() {
        let cases = [
            (
                GOOD.replace("monitoring_system", "nope"),
                "\"nope\" is not defined",
            ),
            (
                GOOD.replace("audiences = [\"sentia\"]", "audiences = []"),
                "audiences",
            ),
            (
                GOOD.replace("\"apps\"", "\"*\""),
                "wildcards are not accepted",
            ),
            (GOOD.replace("\"15m\"", "\"2d\""), "token_ttl"),
            (
                GOOD.replace("https://kubernetes.default.svc/", "http://10.0.0.1/"),
                "must be an https:// URL",
            ),
            (
                GOOD.replace("discovery_url", "jwks_file = \"/x\"\ndiscovery_url"),
                "exactly one of",
            ),
            (GOOD.replace("issuer =", "isuer ="), "unknown field"),
        ];
        for (text, expected) in cases {
            let e = parse(table(&text), |p| p == "monitoring_system").unwrap_err();
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
        }
    }
}
