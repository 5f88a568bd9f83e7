//! Path policies: named sets of (path glob, capabilities) rules, loaded from a TOML file that
//! reloads without a restart. Default deny: a request needs the capability granted on the
//! path it names by one of the caller's policies. Shared by vault-service and
//! rotation-scheduler so both read one file the same way.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sentia_config::Reader;
use sentia_identity::text::{ECHO_MAX, clip};
use sentia_identity::{AuthMethod, Principal, Role};

pub mod kubernetes;
pub use kubernetes::{KeySource, KubernetesLogin, KubernetesRole};

/// The default policy file: the seed's four roles.
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.toml");

/// The built-in policy of root tokens and admin identities: everything, independent of the
/// policy file (so a broken file can always be repaired).
pub use sentia_identity::ROOT_POLICY;

/// A refusal, with a message naming the principal, the capability and the path; services map
/// it to PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        tonic::Status::permission_denied(d.0)
    }
}

/// What a policy can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Read values.
    Read,
    /// Write versions and metadata.
    Write,
    /// List paths, read metadata.
    List,
    /// Delete, undelete, destroy.
    Delete,
    /// Rotate, read or change rotation policies.
    Rotate,
    /// Read the audit log.
    AuditRead,
    /// Administer credentials, tokens and keys.
    Admin,
}

impl Capability {
    /// Every capability, in documentation order.
    pub const ALL: [Capability; 7] = [
        Self::Read,
        Self::Write,
        Self::List,
        Self::Delete,
        Self::Rotate,
        Self::AuditRead,
        Self::Admin,
    ];

    /// Name as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::List => "list",
            Self::Delete => "delete",
            Self::Rotate => "rotate",
            Self::AuditRead => "audit-read",
            Self::Admin => "admin",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The `Capability` number in common.proto (its values follow [`Self::ALL`] from 1).
    pub fn to_proto(self) -> i32 {
        self as i32 + 1
    }

    /// From the `Capability` number in common.proto; None for unset or unknown.
    pub fn from_proto(n: i32) -> Option<Self> {
        Self::ALL
            .get(usize::try_from(n).ok()?.checked_sub(1)?)
            .copied()
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Longest glob accepted, as for secret paths: it bounds the work of every match.
pub const MAX_GLOB_LEN: usize = 512;

/// A path glob: `*` matches inside one segment, `**` any number of whole segments. Matching
/// never backtracks: within a segment the literal pieces between `*`s are found leftmost
/// in one pass (linear in the segment), and between `**`s each run of segment patterns is
/// placed at its leftmost fit, which is always a safe choice because `**` absorbs whatever
/// lies between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<String>);

impl Glob {
    /// Parses a glob; segments follow path syntax plus `*`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty path glob".into());
        }
        if raw.len() > MAX_GLOB_LEN {
            return Err(format!(
                "path glob is {} bytes; the limit is {MAX_GLOB_LEN}",
                raw.len()
            ));
        }
        let segments: Vec<String> = raw.split('/').map(str::to_string).collect();
        for s in &segments {
            let ok = !s.is_empty()
                && (s == "**"
                    || s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))
                        && !s.contains("**"));
            if !ok {
                return Err(format!(
                    "glob {:?}: segment {:?} must be '**' or path characters and '*'",
                    clip(raw, ECHO_MAX),
                    clip(s, ECHO_MAX)
                ));
            }
        }
        Ok(Self(segments))
    }

    /// True if the glob is `**` (matches everything, including non-path operations).
    pub fn is_everything(&self) -> bool {
        self.0.len() == 1 && self.0[0] == "**"
    }

    /// True if `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let path: Vec<&str> = path.split('/').collect();
        let runs: Vec<&[String]> = self.0.split(|s| s == "**").collect();
        let [first, middle @ .., last] = runs.as_slice() else {
            // No `**`: segment for segment.
            return self.0.len() == path.len()
                && self.0.iter().zip(&path).all(|(p, s)| segment_matches(p, s));
        };
        // `a/**/b/**/c`: `a` anchored at the start, `c` at the end, `b` leftmost between.
        if first.len() + last.len() > path.len() {
            return false;
        }
        let (head, rest) = path.split_at(first.len());
        let (mut rest, tail) = rest.split_at(rest.len() - last.len());
        if !run_matches(first, head) || !run_matches(last, tail) {
            return false;
        }
        for run in middle {
            match (0..=rest.len().saturating_sub(run.len()))
                .find(|&i| rest.len() >= i + run.len() && run_matches(run, &rest[i..i + run.len()]))
            {
                Some(i) => rest = &rest[i + run.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Segment patterns against as many path segments, one for one.
fn run_matches(run: &[String], path: &[&str]) -> bool {
    run.len() == path.len() && run.iter().zip(path).all(|(p, s)| segment_matches(p, s))
}

/// Wildcard match of one segment (`*` = any run of characters) in time linear in both:
/// the text before the first `*` is a prefix, after the last a suffix, and each piece in
/// between is found at its leftmost place after the previous one.
pub fn segment_matches(pattern: &str, s: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(rest) = s.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    if rest.len() < last.len() {
        return false;
    }
    let (mut rest, tail) = rest.split_at(rest.len() - last.len());
    if tail != *last {
        return false;
    }
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    glob: Glob,
    capabilities: u8,
    /// Where it is in its policy's `rules` (from 1), and the path as written: what a
    /// decision names.
    number: usize,
    path: String,
}

/// Which policy and rule granted a capability: what `sentia policy check` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The policy ("root" for the built-in).
    pub policy: String,
    /// The rule's number within the policy, from 1 (0 for the built-in root).
    pub rule: usize,
    /// The rule's path glob as written.
    pub path: String,
}

/// One named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What it is for.
    pub description: String,
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    description: String,
    rules: Vec<RuleFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    paths: Vec<String>,
    capabilities: Vec<String>,
}

/// All policies by name, and the Kubernetes login bound to them.
#[derive(Debug, Clone, Default)]
pub struct PolicySet(HashMap<String, Policy>, Option<Arc<KubernetesLogin>>);

impl PolicySet {
    /// Parses a policy file; errors name the policy and rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| format!("policy file: {e}"))?;
        let kubernetes = table.remove(kubernetes::TABLE);
        let raw: HashMap<String, PolicyFile> =
            table.try_into().map_err(|e| format!("policy file: {e}"))?;
        let mut out = HashMap::new();
        for (name, p) in raw {
            if name == ROOT_POLICY {
                return Err(format!(
                    "policy name {ROOT_POLICY:?} is reserved (built in)"
                ));
            }
            let mut rules = Vec::new();
            for (i, r) in p.rules.iter().enumerate() {
                let mut capabilities = 0u8;
                for c in &r.capabilities {
                    capabilities |= Capability::parse(c)
                        .ok_or_else(|| {
                            format!(
                                "policy {name}, rule {}: unknown capability {c:?} (known: read, \
                                 write, list, delete, rotate, audit-read, admin)",
                                i + 1
                            )
                        })?
                        .bit();
                }
                for path in &r.paths {
                    let glob = Glob::parse(path)
                        .map_err(|e| format!("policy {name}, rule {}: {e}", i + 1))?;
                    rules.push(Rule {
                        glob,
                        capabilities,
                        number: i + 1,
                        path: path.clone(),
                    });
                }
            }
            out.insert(
                name,
                Policy {
                    description: p.description,
                    rules,
                },
            );
        }
        let kubernetes = kubernetes
            .map(|t| kubernetes::parse(t, |p| out.contains_key(p)))
            .transpose()?
            .map(Arc::new);
        Ok(Self(out, kubernetes))
    }

    /// Kubernetes login, when the file configures it.
    pub fn kubernetes(&self) -> Option<Arc<KubernetesLogin>> {
        self.1.clone()
    }

    /// The default set (the seed's roles).
    pub fn default_set() -> Self {
        // The embedded file is checked by a unit test; an empty set (deny all) is the safe
        // fallback if it were ever broken.
        Self::parse(DEFAULT_POLICIES).unwrap_or_default()
    }

    /// True if a policy of this name exists (or is the built-in root).
    pub fn contains(&self, name: &str) -> bool {
        name == ROOT_POLICY || self.0.contains_key(name)
    }

    /// The policy called `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.0.get(name)
    }

    /// Policy names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.keys().cloned().collect();
        v.sort();
        v
    }

    /// True if one of `policies` grants `cap` on `path`.
    pub fn allows(&self, policies: &[String], cap: Capability, path: &str) -> bool {
        self.grant(policies, cap, path).is_some()
    }

    /// The first policy of `policies` (in the order given) and its first rule that grants
    /// `cap` on `path`; None when none does (default deny).
    pub fn grant(&self, policies: &[String], cap: Capability, path: &str) -> Option<Grant> {
        policies.iter().find_map(|name| {
            if name == ROOT_POLICY {
                return Some(Grant {
                    policy: ROOT_POLICY.into(),
                    rule: 0,
                    path: "**".into(),
                });
            }
            let rule = self
                .0
                .get(name)?
                .rules
                .iter()
                .find(|r| r.capabilities & cap.bit() != 0 && r.glob.matches(path))?;
            Some(Grant {
                policy: name.clone(),
                rule: rule.number,
                path: rule.path.clone(),
            })
        })
    }

    /// True if one of `policies` grants `cap` on every path (`**`): what operations that do
    /// not name a path (credentials, tokens) require.
    pub fn allows_everywhere(&self, policies: &[String], cap: Capability) -> bool {
        policies.iter().any(|name| {
            name == ROOT_POLICY
                || self.0.get(name).is_some_and(|p| {
                    p.rules
                        .iter()
                        .any(|r| r.capabilities & cap.bit() != 0 && r.glob.is_everything())
                })
        })
    }
}

/// Where policies come from: `SENTIA_POLICY_FILE`, `SENTIA_POLICY_RELOAD` and
/// `SENTIA_IDENTITY_POLICIES`, read the same way by every service that authorizes by path.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// `SENTIA_POLICY_FILE`: policies (TOML); the built-in seed roles when unset.
    pub file: Option<PathBuf>,
    /// `SENTIA_POLICY_RELOAD`: how often the policy file is checked for changes.
    pub reload: Duration,
    /// `SENTIA_IDENTITY_POLICIES`: policies of static-token and certificate identities,
    /// `id=policy+policy,...` (admin identities always hold root).
    pub identities: HashMap<String, Vec<String>>,
}

impl PolicyConfig {
    /// Reads the three variables; problems are collected by `r`.
    pub fn from_source(r: &mut Reader<'_>) -> Self {
        let file = r.optional("SENTIA_POLICY_FILE").map(PathBuf::from);
        let reload = r.duration_or("SENTIA_POLICY_RELOAD", Duration::from_secs(5));
        let identities = match r.optional("SENTIA_IDENTITY_POLICIES") {
            None => HashMap::new(),
            Some(raw) => parse_identity_policies(&raw).unwrap_or_else(|e| {
                r.problem(format!("SENTIA_IDENTITY_POLICIES: {e}"));
                HashMap::new()
            }),
        };
        Self {
            file,
            reload,
            identities,
        }
    }
}

/// Parses `id=policy+policy,id2=policy`.
pub fn parse_identity_policies(raw: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out = HashMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, policies) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not id=policy+policy"))?;
        let policies: Vec<String> = policies
            .split('+')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if id.trim().is_empty() || policies.is_empty() {
            return Err(format!("{item:?} needs an id and at least one policy"));
        }
        out.insert(id.trim().to_string(), policies);
    }
    Ok(out)
}

/// The live policy set, reloaded from its file when the file changes.
#[derive(Clone)]
pub struct Policies {
    current: Arc<RwLock<Arc<PolicySet>>>,
    identities: Arc<HashMap<String, Vec<String>>>,
}

impl Policies {
    /// Loads the configured policies and, when they come from a file, watches it until
    /// `stop` resolves (a service passes its shutdown).
    pub fn start(
        config: &PolicyConfig,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, String> {
        let policies = Self::load(config.file.as_ref(), config.identities.clone())?;
        if let Some(file) = &config.file {
            policies.watch(file.clone(), config.reload, stop);
        }
        Ok(policies)
    }

    /// Loads `file` (or the defaults) and maps static identities (service tokens, certificate
    /// names) to policies.
    pub fn load(
        file: Option<&PathBuf>,
        identities: HashMap<String, Vec<String>>,
    ) -> Result<Self, String> {
        let set = match file {
            Some(path) => read(path)?,
            None => PolicySet::default_set(),
        };
        for (id, names) in &identities {
            for n in names {
                if !set.contains(n) {
                    return Err(format!(
                        "SENTIA_IDENTITY_POLICIES maps {id} to unknown policy {n:?}; known: {}",
                        set.names().join(", ")
                    ));
                }
            }
        }
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            identities: Arc::new(identities),
        })
    }

    /// The current set.
    pub fn get(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The policies a principal holds: JWTs carry theirs; root tokens and admin identities
    /// hold the built-in root; other static identities hold what SENTIA_IDENTITY_POLICIES
    /// maps them to (nothing by default).
    pub fn of(&self, p: &Principal) -> Vec<String> {
        match p.method {
            AuthMethod::Jwt => p.policies.clone(),
            AuthMethod::Root => vec![ROOT_POLICY.into()],
            AuthMethod::Token | AuthMethod::Mtls if p.role == Role::Admin => {
                vec![ROOT_POLICY.into()]
            }
            AuthMethod::Token | AuthMethod::Mtls => {
                self.identities.get(&p.id).cloned().unwrap_or_default()
            }
        }
    }

    /// The policies `SENTIA_IDENTITY_POLICIES` maps a static identity to, if it names it.
    pub fn of_identity(&self, id: &str) -> Option<Vec<String>> {
        self.identities.get(id).cloned()
    }

    /// PERMISSION_DENIED unless `p` holds `cap` on `path`.
    pub fn check(&self, p: &Principal, cap: Capability, path: &str) -> Result<(), Denied> {
        if self.get().allows(&self.of(p), cap, path) {
            Ok(())
        } else {
            Err(Denied(format!(
                "'{}' has no {} capability on {path:?} (policies: {})",
                p.id,
                cap.as_str(),
                self.of(p).join(", ")
            )))
        }
    }

    /// PERMISSION_DENIED unless `p` holds `cap` on every path.
    pub fn check_everywhere(
        &self,
        p: &Principal,
        cap: Capability,
        action: &str,
    ) -> Result<(), Denied> {
        if self.get().allows_everywhere(&self.of(p), cap) {
            Ok(())
        } else {
            Err(Denied(format!(
                "{action} needs the {} capability on all paths; '{}' does not have it",
                cap.as_str(),
                p.id
            )))
        }
    }

    /// Re-reads `file` every `interval` while its modification time changes; a broken file
    /// is logged and the previous policies stay in force. Stops when `stop` resolves.
    pub fn watch(
        &self,
        file: PathBuf,
        interval: Duration,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        let current = self.current.clone();
        tokio::spawn(async move {
            let mut stop = std::pin::pin!(stop);
            let mut seen = modified(&file);
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {}
                }
                let now = modified(&file);
                if now == seen {
                    continue;
                }
                seen = now;
                match read(&file) {
                    Ok(set) => {
                        tracing::info!(file = %file.display(), policies = ?set.names(), "policy file reloaded");
                        if let Ok(mut g) = current.write() {
                            *g = Arc::new(set);
                        }
                    }
                    Err(e) => {
                        tracing::error!(file = %file.display(), error = %e, "policy file rejected; keeping the previous policies")
                    }
                }
            }
        });
    }
}

fn modified(file: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

fn read(path: &PathBuf) -> Result<PolicySet, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
    PolicySet::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn capabilities_round_trip_through_the_contract_numbers() {
        use sentia_proto::common::v1::Capability as Pb;
        for c in Capability::ALL {
            assert_eq!(Capability::from_proto(c.to_proto()), Some(c));
            let name = Pb::try_from(c.to_proto()).unwrap().as_str_name();
            assert_eq!(
                name,
                format!("CAPABILITY_{}", c.as_str().replace('-', "_").to_uppercase())
            );
        }
        assert_eq!(Capability::from_proto(0), None);
        assert_eq!(Capability::from_proto(8), None);
        assert_eq!(Capability::from_proto(-1), None);
    }

    #[test]
    fn a_grant_names_the_first_policy_and_rule_that_allows() {
        let set = PolicySet::parse(
            r#"
            [ops]
            rules = [
              { paths = ["dev/**"], capabilities = ["list"] },
              { paths = ["prod/db/*", "prod/app/**"], capabilities = ["read", "list"] },
            ]
            [audit]
            rules = [{ paths = ["**"], capabilities = ["audit-read", "read"] }]
            "#,
        )
        .unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let g = set
            .grant(&names(&["ops", "audit"]), Capability::Read, "prod/app/x/y")
            .unwrap();
        assert_eq!(
            (g.policy.as_str(), g.rule, g.path.as_str()),
            ("ops", 2, "prod/app/**")
        );
        let g = set
            .grant(&names(&["ops", "audit"]), Capability::Read, "dev/x")
            .unwrap();
        assert_eq!((g.policy.as_str(), g.rule), ("audit", 1));
        assert!(
            set.grant(&names(&["ops"]), Capability::Write, "prod/db/main")
                .is_none()
        );
        assert!(
            set.grant(&names(&["nope"]), Capability::Read, "x")
                .is_none()
        );
        let g = set
            .grant(&names(&[ROOT_POLICY]), Capability::Admin, "x")
            .unwrap();
        assert_eq!((g.policy.as_str(), g.rule), (ROOT_POLICY, 0));
    }

    #[test]
    fn globs_match_segments_and_wildcards() {
        let g = Glob::parse("*/config/**").unwrap();
        assert!(g.matches("prod/config/db"));
        assert!(g.matches("dev/config"));
        assert!(g.matches("dev/config/a/b/c"));
        assert!(!g.matches("prod/app/db"));
        assert!(!g.matches("config"));
        let g = Glob::parse("prod/db-*").unwrap();
        assert!(g.matches("prod/db-main"));
        assert!(!g.matches("prod/db-main/x"));
        assert!(Glob::parse("prod/**x").is_err());
        assert!(Glob::parse("prod//x").is_err());
        assert!(Glob::parse("**").unwrap().is_everything());
    }

    /// The backtracking matcher this crate used before: the reference for what matches.
    fn reference(pattern: &[&str], path: &[&str]) -> bool {
        fn one(p: &[u8], s: &[u8]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((b'*', rest)) => (0..=s.len()).any(|i| one(rest, &s[i..])),
                Some((c, rest)) => s.first() == Some(c) && one(rest, &s[1..]),
            }
        }
        match pattern.split_first() {
            None => path.is_empty(),
            Some((&"**", rest)) => (0..=path.len()).any(|i| reference(rest, &path[i..])),
            Some((p, rest)) => path
                .split_first()
                .is_some_and(|(s, more)| one(p.as_bytes(), s.as_bytes()) && reference(rest, more)),
        }
    }

    #[test]
    fn the_linear_matcher_agrees_with_backtracking_on_every_small_case() {
        // Every segment pattern over {a, b, *} up to 4 long against every word over {a, b}
        // up to 5 long, and globs of those with `**` against short paths.
        let words = |alphabet: &[char], max: usize| {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        };
        let patterns: Vec<String> = words(&['a', 'b', '*'], 4)
            .into_iter()
            .filter(|p| !p.is_empty() && !p.contains("**"))
            .collect();
        let texts: Vec<String> = words(&['a', 'b'], 5).into_iter().skip(1).collect();
        for p in &patterns {
            for t in &texts {
                assert_eq!(
                    segment_matches(p, t),
                    reference(&[p.as_str()], &[t.as_str()]),
                    "{p} vs {t}"
                );
            }
        }
        let globs = [
            "**",
            "a/**",
            "**/b",
            "a/**/b",
            "**/a*/**",
            "a/**/b/**/a",
            "**/**/b",
            "*a/**/a*/b",
        ];
        let paths = [
            "a",
            "b",
            "a/b",
            "b/a",
            "a/a/b",
            "a/b/a",
            "aa/b/ab/b",
            "a/x/b/y/a",
            "b/b/b",
        ];
        for g in globs {
            let segs: Vec<&str> = g.split('/').collect();
            for path in paths {
                let parts: Vec<&str> = path.split('/').collect();
                assert_eq!(
                    Glob::parse(g).unwrap().matches(path),
                    reference(&segs, &parts),
                    "{g} vs {path}"
                );
            }
        }
    }

    #[test]
    fn a_pathological_glob_is_answered_without_backtracking() {
        // Backtracking took 5.5 s for six stars against 60 characters and grew 8-16x per star:
        // twenty stars would not finish. The linear matcher answers at once.
        let pattern = format!("dev/g/{}b", "*a".repeat(20));
        let g = Glob::parse(&pattern).unwrap();
        let segment = "a".repeat(128);
        assert!(!g.matches(&format!("dev/g/{segment}")));
        assert!(g.matches(&format!("dev/g/{segment}b")));
        let many = format!("{}x", "**/a/".repeat(40));
        let g = Glob::parse(&many).unwrap();
        assert!(!g.matches(&vec!["a"; 200].join("/")));
    }

    #[test]
    fn a_glob_past_the_path_limit_is_refused_without_echoing_it() {
        let long = "a*".repeat(50_000);
        let err = Glob::parse(&long).unwrap_err();
        assert!(err.contains("limit is 512"), "{err}");
        assert!(err.len() < 200, "{}", err.len());
        let bad = format!("{}!", "a".repeat(400));
        let err = Glob::parse(&bad).unwrap_err();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn the_default_file_parses_and_holds_the_seed_roles() {
        let set = PolicySet::parse(DEFAULT_POLICIES).unwrap();
        assert_eq!(
            set.names(),
            [
                "deployment_engineer",
                "developer",
                "monitoring_system",
                "system_admin"
            ]
        );
    }

    #[test]
    fn only_system_admin_may_rotate_read_the_audit_log_or_administer() {
        // The capabilities with no SecretService RPC of their own (the gRPC matrix test
        // covers read, write, list, delete and admin through real calls).
        let set = PolicySet::default_set();
        for role in [
            "system_admin",
            "deployment_engineer",
            "developer",
            "monitoring_system",
        ] {
            let held = [role.to_string()];
            for cap in [Capability::Rotate, Capability::AuditRead, Capability::Admin] {
                for path in ["prod/app/key", "dev/app/key", "test/config/x"] {
                    assert_eq!(
                        set.allows(&held, cap, path),
                        role == "system_admin",
                        "{role} {} {path}",
                        cap.as_str()
                    );
                }
                assert_eq!(set.allows_everywhere(&held, cap), role == "system_admin");
            }
        }
        assert!(
            !set.allows(&[], Capability::Read, "dev/app/key"),
            "no policy = deny"
        );
        assert!(!set.allows(&["unknown".into()], Capability::Read, "dev/app/key"));
        assert!(set.allows(&[ROOT_POLICY.into()], Capability::Admin, "x"));
    }

    #[test]
    fn identity_policies_parse_and_bad_values_are_named() {
        let m = parse_identity_policies(
            "rotation-scheduler=system_admin, ci=developer+monitoring_system",
        )
        .unwrap();
        assert_eq!(m["ci"], vec!["developer", "monitoring_system"]);
        assert!(
            parse_identity_policies("nobody")
                .unwrap_err()
                .contains("nobody")
        );
        assert!(parse_identity_policies("x=").is_err());
    }

    #[test]
    fn policy_errors_name_the_policy_and_rule() {
        let err = PolicySet::parse("[p]\nrules = [{ paths = [\"**\"], capabilities = [\"fly\"] }]")
            .unwrap_err();
        assert!(
            err.contains("policy p, rule 1") && err.contains("fly"),
            "{err}"
        );
        let err = PolicySet::parse("[root]\nrules = []").unwrap_err();
        assert!(err.contains("reserved"));
        assert!(PolicySet::parse("[p]\nrulez = []").is_err());
    }
}
