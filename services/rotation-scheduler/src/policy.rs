//! Rotation policies as stored and served: a path or glob, the schedule, and the rotator with
//! its parameters; which policy applies to a path; conversion to and from the contract.

use std::time::Duration;

use sentia_policy::Glob;
use sentia_proto::json::{json_to_struct, struct_to_json};
use sentia_proto::rotation::v1 as pb;
use sentia_proto::vault::v1::SecretMetadata;
use serde_json::{Map, Value, json};

use crate::RotationError;
use crate::rotator::Rotator;
use crate::schedule::{DEFAULT_EXPIRY_NOTICE, Method, Policy, SecretClass, Tier};

/// The tag that names a secret's class; its value picks the seed's default schedule.
pub const CLASS_TAG: &str = "class";

/// A policy for a path or every path under a glob.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationPolicy {
    /// Exact path or glob.
    pub pattern: String,
    /// Schedule.
    pub timing: Policy,
    /// The parsed rotator (none for manual policies without one); its parameters are a JSON
    /// object and never secrets.
    pub rotator: Option<Rotator>,
}

/// The rotator `name` with `params`, none when the name is empty.
fn rotator(name: &str, params: &Map<String, Value>) -> Result<Option<Rotator>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    Rotator::parse(name, params).map(Some)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn method_from(n: i64) -> Option<Method> {
    Some(match n {
        1 => Method::Automated,
        2 => Method::Rolling,
        3 => Method::Manual,
        _ => return None,
    })
}

impl RotationPolicy {
    /// The default for a tier: a manual schedule, no rotator.
    pub fn default_for_tier(tier: Tier, path: &str) -> Self {
        Self {
            pattern: path.to_string(),
            timing: Policy::default_for_tier(tier),
            rotator: None,
        }
    }

    /// The seed's default for a secret class, with the rotator that class uses.
    pub fn default_for(class: SecretClass, path: &str) -> Self {
        let rotator_name = match class {
            SecretClass::ApiKey => "api_key",
            SecretClass::JwtSigningKey => "jwt_signing_key",
            // Manual by default (a person rotates); certificates need a CA: a webhook
            // rotator set by SetPolicy, until then they are tracked and reminded like manual.
            SecretClass::DatabasePassword
            | SecretClass::EncryptionMasterKey
            | SecretClass::Certificate => "",
        };
        Self {
            pattern: path.to_string(),
            timing: Policy::default_for(class),
            // The defaults take no parameters, so they always parse.
            rotator: rotator(rotator_name, &Map::new()).ok().flatten(),
        }
    }

    /// True for a glob, false for an exact path.
    pub fn is_glob(&self) -> bool {
        self.pattern.contains('*')
    }

    /// How specific the pattern is: exact paths first, then more literal segments, then
    /// fewer `**`, then longer.
    pub fn specificity(&self) -> (bool, usize, usize, usize) {
        let segs: Vec<&str> = self.pattern.split('/').collect();
        (
            !self.is_glob(),
            segs.iter().filter(|s| !s.contains('*')).count(),
            usize::MAX - segs.iter().filter(|s| **s == "**").count(),
            self.pattern.len(),
        )
    }

    /// True if this policy covers `path`.
    pub fn covers(&self, path: &str) -> bool {
        if self.is_glob() {
            Glob::parse(&self.pattern).is_ok_and(|g| g.matches(path))
        } else {
            self.pattern == path
        }
    }

    /// The literal part before the first wildcard: where to list secrets it may cover.
    pub fn list_prefix(&self) -> String {
        self.pattern
            .split('/')
            .take_while(|s| !s.contains('*'))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Checks the pattern, the schedule and the rotator's parameters.
    pub fn validate(&self) -> Result<(), RotationError> {
        if self.is_glob() {
            Glob::parse(&self.pattern)
                .map_err(|e| RotationError::Invalid(format!("path_pattern: {e}")))?;
        } else if self.pattern.is_empty() || self.pattern.len() > 512 {
            return Err(RotationError::Invalid(
                "path_pattern must be a secret path or glob of 1-512 bytes".into(),
            ));
        }
        self.timing
            .validate()
            .map_err(|e| RotationError::Invalid(e.to_string()))?;
        if self.timing.method != Method::Manual && self.rotator.is_none() {
            return Err(RotationError::Invalid(
                "automated and rolling policies need a rotator (random, api_key, \
                 postgres_password, redis_acl, webhook)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// From the contract; missing fields are refused by name.
    pub fn from_proto(p: pb::RotationPolicy) -> Result<Self, RotationError> {
        // Ten years bounds every span of a schedule (the seed's longest is a year).
        const LONGEST: Duration = Duration::from_secs(3650 * 86_400);
        let dur = |d: Option<prost_types::Duration>, name: &str, required: bool| match d {
            None if required => Err(RotationError::Invalid(format!("{name} is required"))),
            None => Ok(Duration::ZERO),
            Some(d) => sentia_proto::wkt::duration(name, &d, Duration::ZERO, LONGEST)
                .map_err(RotationError::Invalid),
        };
        let method = method_from(i64::from(p.method)).ok_or_else(|| {
            RotationError::Invalid("method must be AUTOMATED, ROLLING or MANUAL".into())
        })?;
        let params = p.rotator_params.map(struct_to_json).unwrap_or_default();
        let policy = Self {
            pattern: p.path_pattern,
            timing: Policy {
                frequency: dur(p.frequency, "frequency", true)?,
                method,
                notify_before: dur(p.notify_before, "notify_before", false)?,
                grace_period: dur(p.grace_period, "grace_period", false)?,
                max_attempts: if p.max_attempts == 0 {
                    5
                } else {
                    p.max_attempts
                },
                expiry_notify_before: match dur(
                    p.expiry_notify_before,
                    "expiry_notify_before",
                    false,
                )? {
                    d if d.is_zero() => DEFAULT_EXPIRY_NOTICE,
                    d => d,
                },
            },
            rotator: rotator(&p.rotator, &params).map_err(RotationError::Invalid)?,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// The rotator's name, "" when there is none.
    pub fn rotator_name(&self) -> &str {
        self.rotator.as_ref().map_or("", Rotator::name)
    }

    /// To the contract.
    pub fn to_proto(&self) -> pb::RotationPolicy {
        let dur = |d: Duration| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        };
        pb::RotationPolicy {
            path_pattern: self.pattern.clone(),
            frequency: Some(dur(self.timing.frequency)),
            method: self.timing.method as i32,
            notify_before: Some(dur(self.timing.notify_before)),
            grace_period: Some(dur(self.timing.grace_period)),
            rotator: self.rotator_name().into(),
            rotator_params: Some(json_to_struct(
                self.rotator
                    .as_ref()
                    .map(Rotator::params)
                    .unwrap_or(&Map::new()),
            )),
            max_attempts: self.timing.max_attempts,
            expiry_notify_before: Some(dur(self.timing.expiry_notify_before)),
            source: pb::PolicySource::Unspecified as i32,
            source_default: String::new(),
        }
    }

    /// As stored with each rotation, so a policy edited mid-rotation does not change it.
    pub fn to_json(&self) -> String {
        json!({
            "pattern": self.pattern,
            "frequency_ms": ms(self.timing.frequency),
            "method": self.timing.method as i64,
            "notify_before_ms": ms(self.timing.notify_before),
            "grace_ms": ms(self.timing.grace_period),
            "max_attempts": self.timing.max_attempts,
            "expiry_notify_ms": ms(self.timing.expiry_notify_before),
            "rotator": self.rotator_name(),
            "params": self.rotator.as_ref().map(Rotator::params),
        })
        .to_string()
    }

    /// Reads what `to_json` wrote.
    pub fn from_json(text: &str) -> Result<Self, RotationError> {
        let bad = || RotationError::Corrupt("a rotation's policy snapshot".into());
        let v: Value = serde_json::from_str(text).map_err(|_| bad())?;
        let int = |k: &str| v.get(k).and_then(Value::as_i64).ok_or_else(bad);
        let dur = |k: &str| int(k).map(|n| Duration::from_millis(n.max(0) as u64));
        Ok(Self {
            pattern: v
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(bad)?
                .into(),
            timing: Policy {
                frequency: dur("frequency_ms")?,
                method: method_from(int("method")?).ok_or_else(bad)?,
                notify_before: dur("notify_before_ms")?,
                grace_period: dur("grace_ms")?,
                max_attempts: u32::try_from(int("max_attempts")?).map_err(|_| bad())?,
                // Snapshots taken before expiry notices existed have none: the default.
                expiry_notify_before: match v.get("expiry_notify_ms") {
                    None => DEFAULT_EXPIRY_NOTICE,
                    Some(_) => dur("expiry_notify_ms")?,
                },
            },
            rotator: rotator(
                v.get("rotator").and_then(Value::as_str).ok_or_else(bad)?,
                v.get("params")
                    .and_then(Value::as_object)
                    .unwrap_or(&Map::new()),
            )
            .map_err(|e| RotationError::Corrupt(format!("a stored rotator: {e}")))?,
        })
    }
}

/// Which rule chose the policy that applies to a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A stored policy for exactly this path.
    Exact,
    /// The most specific stored glob.
    Glob,
    /// The seed's default for the `class` tag.
    Class(SecretClass),
    /// The default for the secret's tier.
    Tier(Tier),
}

impl Source {
    /// The contract's enum and the class or tier name.
    pub fn to_proto(self) -> (pb::PolicySource, &'static str) {
        match self {
            Self::Exact => (pb::PolicySource::Exact, ""),
            Self::Glob => (pb::PolicySource::Glob, ""),
            Self::Class(c) => (pb::PolicySource::ClassDefault, c.name()),
            Self::Tier(t) => (pb::PolicySource::TierDefault, t.name()),
        }
    }
}

/// The policy that applies to a secret and the rule that chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The policy (for a default, its pattern is the secret's path).
    pub policy: RotationPolicy,
    /// Which rule chose it.
    pub source: Source,
}

impl Applied {
    /// To the contract, saying which rule chose it.
    pub fn to_proto(&self) -> pb::RotationPolicy {
        let (source, default) = self.source.to_proto();
        pb::RotationPolicy {
            source: source as i32,
            source_default: default.into(),
            ..self.policy.to_proto()
        }
    }
}

/// Picks the policy for `path`: an exact match, else the most specific glob, else the seed's
/// default for the secret's `class` tag, else its tier's default. Without the secret's
/// metadata (no secret there) only stored policies apply.
pub fn applicable(
    policies: &[RotationPolicy],
    path: &str,
    secret: Option<&SecretMetadata>,
) -> Option<Applied> {
    stored(policies, path).or_else(|| secret.map(|s| default_for_secret(s, path)))
}

/// [`applicable`] for an existing secret, which always has a policy.
pub fn for_secret(policies: &[RotationPolicy], secret: &SecretMetadata) -> Applied {
    stored(policies, &secret.path).unwrap_or_else(|| default_for_secret(secret, &secret.path))
}

fn stored(policies: &[RotationPolicy], path: &str) -> Option<Applied> {
    let policy = policies
        .iter()
        .filter(|p| p.covers(path))
        .max_by_key(|p| p.specificity())?;
    let source = if policy.is_glob() {
        Source::Glob
    } else {
        Source::Exact
    };
    Some(Applied {
        policy: policy.clone(),
        source,
    })
}

fn default_for_secret(secret: &SecretMetadata, path: &str) -> Applied {
    match secret
        .tags
        .get(CLASS_TAG)
        .and_then(|c| SecretClass::parse(c))
    {
        Some(class) => Applied {
            policy: RotationPolicy::default_for(class, path),
            source: Source::Class(class),
        },
        None => {
            let tier = Tier::from_proto(secret.tier);
            Applied {
                policy: RotationPolicy::default_for_tier(tier, path),
                source: Source::Tier(tier),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(pattern: &str) -> RotationPolicy {
        RotationPolicy {
            pattern: pattern.into(),
            ..RotationPolicy::default_for(SecretClass::ApiKey, pattern)
        }
    }

    #[test]
    fn an_exact_path_beats_the_most_specific_glob_which_beats_the_class_default() {
        let all = [
            policy("**"),
            policy("prod/**"),
            policy("prod/app/*"),
            policy("prod/app/stripe"),
        ];
        let secret = |class: Option<&str>, tier: i32| SecretMetadata {
            tags: class
                .map(|c| [(CLASS_TAG.to_string(), c.to_string())].into())
                .unwrap_or_default(),
            tier,
            ..Default::default()
        };
        let meta = secret(Some("api_key"), 1);
        let pick = |path| applicable(&all, path, Some(&meta)).unwrap();
        let stripe = pick("prod/app/stripe");
        assert_eq!(
            (stripe.policy.pattern.as_str(), stripe.source),
            ("prod/app/stripe", Source::Exact)
        );
        let github = pick("prod/app/github");
        assert_eq!(
            (github.policy.pattern.as_str(), github.source),
            ("prod/app/*", Source::Glob)
        );
        assert_eq!(pick("prod/db/main").policy.pattern, "prod/**");
        assert_eq!(pick("dev/x").policy.pattern, "**");
        let none: [RotationPolicy; 0] = [];
        let d = applicable(&none, "dev/db", Some(&secret(Some("database_password"), 1))).unwrap();
        assert_eq!(d.policy.timing.method, Method::Manual);
        assert_eq!(d.policy.pattern, "dev/db");
        assert_eq!(d.source, Source::Class(SecretClass::DatabasePassword));
        // A class tag nobody knows falls through to the tier; no tier is tier 3.
        let t = applicable(&none, "dev/db", Some(&secret(Some("nonsense"), 1))).unwrap();
        assert_eq!(t.source, Source::Tier(Tier::Critical));
        assert_eq!(t.policy.timing, Policy::default_for_tier(Tier::Critical));
        assert!(t.policy.rotator.is_none());
        let t = applicable(&none, "dev/db", Some(&secret(None, 0))).unwrap();
        assert_eq!(t.source, Source::Tier(Tier::Internal));
        assert_eq!(
            t.to_proto().source,
            pb::PolicySource::TierDefault as i32,
            "the contract says which rule applied"
        );
        assert_eq!(t.to_proto().source_default, "internal");
        assert!(applicable(&none, "dev/db", None).is_none());
    }

    #[test]
    fn list_prefix_is_the_literal_head_of_a_glob() {
        assert_eq!(policy("prod/app/**").list_prefix(), "prod/app");
        assert_eq!(policy("*/app/**").list_prefix(), "");
        assert_eq!(policy("prod/app/key").list_prefix(), "prod/app/key");
    }

    #[test]
    fn a_policy_survives_the_contract_and_its_stored_snapshot() {
        let mut p = policy("prod/app/**");
        let params = json!({"length": 48, "charset": "hex"});
        p.rotator = Some(Rotator::parse("random", params.as_object().unwrap()).unwrap());
        p.timing.expiry_notify_before = Duration::from_secs(3 * 86_400);
        assert_eq!(RotationPolicy::from_json(&p.to_json()).unwrap(), p);
        assert_eq!(RotationPolicy::from_proto(p.to_proto()).unwrap(), p);
        // A snapshot from before expiry notices existed reads with the default.
        let mut old: Value = serde_json::from_str(&p.to_json()).unwrap();
        old.as_object_mut().unwrap().remove("expiry_notify_ms");
        let read = RotationPolicy::from_json(&old.to_string()).unwrap();
        assert_eq!(read.timing.expiry_notify_before, DEFAULT_EXPIRY_NOTICE);
    }

    #[test]
    fn a_policy_holds_its_rotator_parsed_and_the_class_defaults_parse() {
        let name = |c| {
            RotationPolicy::default_for(c, "p")
                .rotator_name()
                .to_string()
        };
        assert_eq!(name(SecretClass::ApiKey), "api_key");
        assert_eq!(name(SecretClass::JwtSigningKey), "jwt_signing_key");
        assert_eq!(name(SecretClass::DatabasePassword), "");
        assert!(
            RotationPolicy::default_for(SecretClass::ApiKey, "p")
                .rotator
                .is_some_and(|r| r.admin_secret().is_none())
        );
        // A stored snapshot whose rotator no longer parses is named as damaged data.
        let mut v: Value = serde_json::from_str(&policy("p").to_json()).unwrap();
        v["rotator"] = Value::from("magic");
        let e = RotationPolicy::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(e, RotationError::Corrupt(_)), "{e}");
    }

    #[test]
    fn contract_mistakes_are_named() {
        let mut p = policy("prod/app/**").to_proto();
        p.frequency = None;
        let e = RotationPolicy::from_proto(p).unwrap_err().to_string();
        assert!(e.contains("frequency is required"), "{e}");
        let mut p = policy("prod/app/**").to_proto();
        p.rotator = "magic".into();
        let e = RotationPolicy::from_proto(p).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let mut p = policy("prod//x").to_proto();
        p.path_pattern = "prod/**x".into();
        assert!(RotationPolicy::from_proto(p).is_err());
    }
}
