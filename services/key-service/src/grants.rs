//! Who may use which key for what: key-service's answer to "any service identity can do
//! anything". Each service identity holds explicit grants (operations on key-name patterns,
//! optionally only under encryption-context patterns), in the manner of AWS KMS key
//! policies; admin identities hold everything. A refusal names the identity, key and
//! operation, and is audited like every other outcome.

use std::collections::HashMap;
use std::fmt;

use sentia_policy::segment_matches;
use sentia_runtime::text::{ECHO_MAX, clip};
use sentia_runtime::{Principal, Role};

use crate::KeyError;

/// The grants shipped for the deployments this repository describes.
pub const DEFAULT_GRANTS: &str = include_str!("../grants/default.toml");

/// An operation a grant can allow; one per KeyService RPC that touches a named key
/// (GetPublicKeys is open to every identity: public keys are public).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// GenerateDataKey.
    GenerateDataKey,
    /// UnwrapDataKey.
    UnwrapDataKey,
    /// RewrapDataKey.
    RewrapDataKey,
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Hmac.
    Hmac,
    /// VerifyHmac.
    VerifyHmac,
    /// Sign.
    Sign,
    /// GetKey.
    GetKey,
    /// ListKeys (names only the keys the caller may list).
    ListKeys,
    /// RotateKey (stage or promote).
    RotateKey,
    /// SetKeyPolicy.
    SetKeyPolicy,
}

const OPERATIONS: [(Operation, &str); 12] = [
    (Operation::GenerateDataKey, "generate_data_key"),
    (Operation::UnwrapDataKey, "unwrap_data_key"),
    (Operation::RewrapDataKey, "rewrap_data_key"),
    (Operation::Encrypt, "encrypt"),
    (Operation::Decrypt, "decrypt"),
    (Operation::Hmac, "hmac"),
    (Operation::VerifyHmac, "verify_hmac"),
    (Operation::Sign, "sign"),
    (Operation::GetKey, "get_key"),
    (Operation::ListKeys, "list_keys"),
    (Operation::RotateKey, "rotate_key"),
    (Operation::SetKeyPolicy, "set_key_policy"),
];

impl Operation {
    /// The name used in grant files and messages.
    pub fn as_str(self) -> &'static str {
        OPERATIONS
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("?", |(_, name)| name)
    }

    fn parse(name: &str) -> Option<Self> {
        OPERATIONS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(op, _)| *op)
    }
}

#[derive(Debug, Clone)]
struct Grant {
    keys: Vec<String>,
    operations: Vec<Operation>,
    /// `None`: any context.
    contexts: Option<Vec<String>>,
}

impl Grant {
    fn allows(&self, op: Operation, key: &str, context: Option<&[u8]>) -> bool {
        self.operations.contains(&op)
            && self.keys.iter().any(|k| segment_matches(k, key))
            && match (&self.contexts, context) {
                (None, _) | (Some(_), None) => true,
                (Some(patterns), Some(ctx)) => std::str::from_utf8(ctx)
                    .is_ok_and(|ctx| patterns.iter().any(|p| segment_matches(p, ctx))),
            }
    }
}

/// Every identity's grants.
#[derive(Clone, Default)]
pub struct Grants(HashMap<String, Vec<Grant>>);

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.0.keys().collect();
        ids.sort();
        f.debug_tuple("Grants").field(&ids).finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    grants: Vec<GrantFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    keys: Vec<String>,
    operations: Vec<String>,
    contexts: Option<Vec<String>>,
}

impl Grants {
    /// Parses a grants file (TOML: one table per identity, see `grants/default.toml`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: HashMap<String, IdentityFile> =
            toml::from_str(text).map_err(|e| format!("not a grants file: {e}"))?;
        let mut out = HashMap::new();
        for (identity, entry) in file {
            let mut grants = Vec::new();
            for (i, g) in entry.grants.into_iter().enumerate() {
                let at = format!("[{identity}] grant {}", i + 1);
                if g.keys.is_empty() || g.operations.is_empty() {
                    return Err(format!("{at}: name at least one key and one operation"));
                }
                let operations = g
                    .operations
                    .iter()
                    .map(|name| {
                        Operation::parse(name).ok_or_else(|| {
                            format!(
                                "{at}: unknown operation {:?}; known: {}",
                                clip(name, ECHO_MAX),
                                OPERATIONS.map(|(_, n)| n).join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if g.keys.iter().any(|k| k.is_empty() || k.len() > 256)
                    || g.contexts
                        .iter()
                        .flatten()
                        .any(|c| c.is_empty() || c.len() > 1024)
                {
                    return Err(format!(
                        "{at}: key patterns are 1-256 bytes, context patterns 1-1024"
                    ));
                }
                grants.push(Grant {
                    keys: g.keys,
                    operations,
                    contexts: g.contexts,
                });
            }
            out.insert(identity, grants);
        }
        Ok(Self(out))
    }

    /// The shipped grants.
    pub fn default_set() -> Self {
        // The built-in file is tested to parse; an empty set (deny all) is the safe fallback.
        Self::parse(DEFAULT_GRANTS).unwrap_or_default()
    }

    /// True if `p` may do `op` on `key` (under `context`, for operations that have one).
    pub fn allows(&self, p: &Principal, op: Operation, key: &str, context: Option<&[u8]>) -> bool {
        match p.role {
            Role::Admin => true,
            Role::Service => self
                .0
                .get(&p.id)
                .is_some_and(|grants| grants.iter().any(|g| g.allows(op, key, context))),
            Role::User => false,
        }
    }

    /// PERMISSION_DENIED naming the identity, operation and key unless [`Grants::allows`].
    pub fn check(
        &self,
        p: &Principal,
        op: Operation,
        key: &str,
        context: Option<&[u8]>,
    ) -> Result<(), KeyError> {
        if self.allows(p, op, key, context) {
            return Ok(());
        }
        let under = match context {
            Some(ctx) => format!(
                " under encryption context {:?}",
                clip(&String::from_utf8_lossy(ctx), ECHO_MAX)
            ),
            None => String::new(),
        };
        Err(KeyError::PermissionDenied(format!(
            "'{}' has no grant to {} with key {:?}{under} (key-service grants: \
             SENTIA_KEY_GRANTS_FILE)",
            p.id,
            op.as_str(),
            clip(key, ECHO_MAX)
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sentia_runtime::AuthMethod;

    fn service(id: &str) -> Principal {
        Principal::new(id, Role::Service, AuthMethod::Mtls)
    }

    #[test]
    fn the_shipped_grants_give_each_service_exactly_its_job() {
        let g = Grants::parse(DEFAULT_GRANTS).unwrap();
        let vault = service("vault-service");
        let ctx = Some(&b"vault|prod/db|3"[..]);
        assert!(g.allows(&vault, Operation::GenerateDataKey, "vault", ctx));
        assert!(g.allows(&vault, Operation::UnwrapDataKey, "vault", ctx));
        assert!(g.allows(&vault, Operation::Sign, "sentia-jwt", None));
        assert!(!g.allows(
            &vault,
            Operation::UnwrapDataKey,
            "vault",
            Some(b"billing|x")
        ));
        assert!(!g.allows(&vault, Operation::Sign, "audit-checkpoint", None));
        assert!(!g.allows(&vault, Operation::Decrypt, "vault", ctx));
        assert!(!g.allows(&vault, Operation::RotateKey, "sentia-jwt", None));

        let audit = service("audit-service");
        assert!(g.allows(&audit, Operation::Sign, "audit-checkpoint", None));
        assert!(!g.allows(&audit, Operation::Sign, "sentia-jwt", None));
        assert!(!g.allows(&audit, Operation::UnwrapDataKey, "vault", ctx));

        let scheduler = service("rotation-scheduler");
        assert!(g.allows(&scheduler, Operation::RotateKey, "sentia-jwt", None));
        assert!(g.allows(&scheduler, Operation::SetKeyPolicy, "sentia-jwt", None));
        assert!(!g.allows(&scheduler, Operation::Sign, "sentia-jwt", None));
        assert!(g.allows(&scheduler, Operation::Sign, "backup-manifest", None));
        assert!(!g.allows(&scheduler, Operation::Sign, "audit-checkpoint", None));
        assert!(!g.allows(&vault, Operation::Sign, "backup-manifest", None));
        assert!(!g.allows(&scheduler, Operation::RotateKey, "vault", None));

        assert!(!g.allows(&service("stranger"), Operation::GetKey, "vault", None));
        let user = Principal::new("app:x", Role::User, AuthMethod::Jwt);
        assert!(!g.allows(&user, Operation::Sign, "sentia-jwt", None));
        let admin = Principal::new("operator", Role::Admin, AuthMethod::Mtls);
        assert!(g.allows(&admin, Operation::Decrypt, "anything", Some(b"any")));
    }

    #[test]
    fn a_refusal_names_the_identity_the_operation_and_the_key() {
        let g = Grants::default_set();
        let err = g
            .check(
                &service("audit-service"),
                Operation::Sign,
                "sentia-jwt",
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("'audit-service'"), "{err}");
        assert!(err.contains("sign"), "{err}");
        assert!(err.contains("\"sentia-jwt\""), "{err}");
    }

    #[test]
    fn a_broken_grants_file_is_refused_with_the_place() {
        let err = Grants::parse(
            "[svc]\ngrants = [{ keys = [\"k\"], operations = [\"launch_missiles\"] }]",
        )
        .unwrap_err();
        assert!(err.contains("[svc] grant 1"), "{err}");
        assert!(err.contains("launch_missiles"), "{err}");
        assert!(Grants::parse("[svc]\ngrants = [{ keys = [], operations = [\"sign\"] }]").is_err());
        assert!(Grants::parse("[svc]\nwho = 1").is_err());
        let non_utf8 = Grants::parse(
            "[svc]\ngrants = [{ keys = [\"k*\"], operations = [\"encrypt\"], contexts = [\"a*\"] }]",
        )
        .unwrap();
        assert!(non_utf8.allows(&service("svc"), Operation::Encrypt, "k1", Some(b"ab")));
        assert!(!non_utf8.allows(
            &service("svc"),
            Operation::Encrypt,
            "k1",
            Some(&[b'a', 0xff])
        ));
    }
}
