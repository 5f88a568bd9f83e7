//! Rotation policies and the strategy document's default schedule, and where a secret stands
//! against its policy at a given instant. Times are Unix milliseconds passed in by the caller,
//! so schedules are tested without waiting.

use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

/// How a rotation is carried out (values match `RotationMethod` in rotation.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The scheduler runs every step.
    Automated = 1,
    /// New value active at once; the old one still verifies during the grace period.
    Rolling = 2,
    /// The scheduler only reminds and tracks overdue; a person rotates.
    Manual = 3,
}

/// What kind of secret a policy is for: the strategy document's schedule is keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretClass {
    /// JWT signing key (critical).
    JwtSigningKey,
    /// Database password (critical).
    DatabasePassword,
    /// Encryption master key (critical).
    EncryptionMasterKey,
    /// API key.
    ApiKey,
    /// TLS certificate.
    Certificate,
}

impl SecretClass {
    /// Every class, in the seed's order.
    pub const ALL: [Self; 5] = [
        Self::JwtSigningKey,
        Self::DatabasePassword,
        Self::EncryptionMasterKey,
        Self::ApiKey,
        Self::Certificate,
    ];

    /// The name used in `class` tags, policy files and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::JwtSigningKey => "jwt_signing_key",
            Self::DatabasePassword => "database_password",
            Self::EncryptionMasterKey => "encryption_master_key",
            Self::ApiKey => "api_key",
            Self::Certificate => "certificate",
        }
    }

    /// Parses [`Self::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A secret's sensitivity tier (values match `Tier` in common.proto); it picks the default
/// schedule of a secret no stored policy or class tag covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Tier 1: credentials whose leak is an incident.
    Critical = 1,
    /// Tier 2: integration tokens, webhook secrets.
    Sensitive = 2,
    /// Tier 3, and every secret whose tier is not set (common.proto).
    Internal = 3,
}

impl Tier {
    /// From the contract's number; unset and unknown values count as internal.
    pub fn from_proto(n: i32) -> Self {
        match n {
            1 => Self::Critical,
            2 => Self::Sensitive,
            _ => Self::Internal,
        }
    }

    /// The name shown as the rule that applied.
    pub fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Sensitive => "sensitive",
            Self::Internal => "internal",
        }
    }
}

/// Expiry notices go out this long before a secret's `expire_time` unless its policy says
/// otherwise (the seed's UpcomingSecretExpiration: under 7 days).
pub const DEFAULT_EXPIRY_NOTICE: Duration = Duration::from_secs(7 * 86_400);

/// When and how a secret rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Time between rotations.
    pub frequency: Duration,
    /// Method.
    pub method: Method,
    /// Reminder lead time before the due date.
    pub notify_before: Duration,
    /// How long the previous value keeps working after finish.
    pub grace_period: Duration,
    /// Failures before a rotation is parked.
    pub max_attempts: u32,
    /// Lead time of the notice before the secret's `expire_time`.
    pub expiry_notify_before: Duration,
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Frequency under an hour.
    #[error("frequency must be at least 1h (got {0:?})")]
    TooFrequent(Duration),
    /// Reminder not before the due date.
    #[error("notify_before ({notify:?}) must be shorter than frequency ({frequency:?})")]
    NotifyTooLate {
        /// notify_before.
        notify: Duration,
        /// frequency.
        frequency: Duration,
    },
    /// Grace period not shorter than the frequency: two rotations would overlap.
    #[error("grace_period ({grace:?}) must be shorter than frequency ({frequency:?})")]
    GraceTooLong {
        /// grace_period.
        grace: Duration,
        /// frequency.
        frequency: Duration,
    },
    /// Zero attempts.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
}

impl Policy {
    /// The strategy document's schedule: JWT signing key 90 d rolling (notify 7 d); database
    /// password 180 d manual (14 d); encryption master key 365 d manual (30 d); API keys 90 d
    /// automated (7 d); certificates 365 d automated (30 d). Grace period: 7 days for rolling
    /// keys (tokens signed by the old key stay verifiable for their lifetime), 1 day otherwise.
    pub fn default_for(class: SecretClass) -> Self {
        let (days, method, notify, grace) = match class {
            SecretClass::JwtSigningKey => (90, Method::Rolling, 7, 7),
            SecretClass::DatabasePassword => (180, Method::Manual, 14, 1),
            SecretClass::EncryptionMasterKey => (365, Method::Manual, 30, 1),
            SecretClass::ApiKey => (90, Method::Automated, 7, 1),
            SecretClass::Certificate => (365, Method::Automated, 30, 1),
        };
        Self::days(days, method, notify, grace)
    }

    /// The default for a secret no stored policy or class tag covers, by tier. Every tier is
    /// manual (a reminder, never an automatic change): without a rotator nothing knows how to
    /// make a new value that the secret's consumers accept. Tier 1 matches the seed's shortest
    /// critical schedule (90 d, 14 d notice); tier 2 its database passwords (180 d, 14 d);
    /// tier 3 its master key (365 d, 30 d), so nothing goes unreviewed for over a year.
    pub fn default_for_tier(tier: Tier) -> Self {
        let (days, notify) = match tier {
            Tier::Critical => (90, 14),
            Tier::Sensitive => (180, 14),
            Tier::Internal => (365, 30),
        };
        Self::days(days, Method::Manual, notify, 1)
    }

    fn days(days: u32, method: Method, notify: u32, grace: u32) -> Self {
        Self {
            frequency: DAY * days,
            method,
            notify_before: DAY * notify,
            grace_period: DAY * grace,
            max_attempts: 5,
            expiry_notify_before: DEFAULT_EXPIRY_NOTICE,
        }
    }

    /// Checks the rules stated in rotation.proto.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.frequency < Duration::from_secs(3600) {
            return Err(PolicyError::TooFrequent(self.frequency));
        }
        if self.notify_before >= self.frequency {
            return Err(PolicyError::NotifyTooLate {
                notify: self.notify_before,
                frequency: self.frequency,
            });
        }
        if self.grace_period >= self.frequency {
            return Err(PolicyError::GraceTooLong {
                grace: self.grace_period,
                frequency: self.frequency,
            });
        }
        if self.max_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        Ok(())
    }

    /// Where a secret last rotated at `last_ms` (its creation if never rotated) stands at
    /// `now_ms`.
    pub fn standing(&self, last_ms: i64, now_ms: i64) -> Standing {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let due = last_ms.saturating_add(ms(self.frequency));
        let notify_from = due.saturating_sub(ms(self.notify_before));
        let state = if now_ms >= due {
            State::Overdue
        } else if now_ms >= notify_from {
            State::NotifyWindow
        } else {
            State::Scheduled
        };
        Standing {
            due_ms: due,
            notify_from_ms: notify_from,
            state,
        }
    }
}

/// Where a secret stands against its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// When the next rotation is due.
    pub due_ms: i64,
    /// When reminders start.
    pub notify_from_ms: i64,
    /// Summary.
    pub state: State,
}

/// Summary of a standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing to do yet.
    Scheduled,
    /// Within `notify_before` of the due date: remind (manual) or prepare.
    NotifyWindow,
    /// Past due: rotate now (automated, rolling) or report overdue (manual).
    Overdue,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = 86_400_000;

    #[test]
    fn the_seed_schedule_is_the_default() {
        let cases = [
            (SecretClass::JwtSigningKey, 90, Method::Rolling, 7),
            (SecretClass::DatabasePassword, 180, Method::Manual, 14),
            (SecretClass::EncryptionMasterKey, 365, Method::Manual, 30),
            (SecretClass::ApiKey, 90, Method::Automated, 7),
            (SecretClass::Certificate, 365, Method::Automated, 30),
        ];
        for (class, days, method, notify) in cases {
            let p = Policy::default_for(class);
            assert_eq!(p.frequency, DAY * days, "{class:?}");
            assert_eq!(p.method, method, "{class:?}");
            assert_eq!(p.notify_before, DAY * notify, "{class:?}");
            assert!(p.validate().is_ok(), "{class:?}");
        }
        assert_eq!(SecretClass::parse("api_key"), Some(SecretClass::ApiKey));
        let tiers = [
            (Tier::Critical, 90, 14),
            (Tier::Sensitive, 180, 14),
            (Tier::Internal, 365, 30),
        ];
        for (tier, days, notify) in tiers {
            let p = Policy::default_for_tier(tier);
            assert_eq!(p.frequency, DAY * days, "{tier:?}");
            assert_eq!(p.method, Method::Manual, "{tier:?}");
            assert_eq!(p.notify_before, DAY * notify, "{tier:?}");
            assert_eq!(p.expiry_notify_before, DEFAULT_EXPIRY_NOTICE);
            assert!(p.validate().is_ok(), "{tier:?}");
        }
        assert_eq!(
            Tier::from_proto(0),
            Tier::Internal,
            "unset counts as internal"
        );
        assert_eq!(Tier::from_proto(1), Tier::Critical);
        assert_eq!(SecretClass::parse("password"), None);
    }

    #[test]
    fn standing_moves_from_scheduled_to_notify_to_overdue_at_the_exact_edges() {
        let p = Policy::default_for(SecretClass::DatabasePassword); // 180 d, notify 14 d
        let last = 1_700_000_000_000;
        let at = |ms| p.standing(last, ms).state;
        assert_eq!(at(last + 166 * D - 1), State::Scheduled);
        assert_eq!(at(last + 166 * D), State::NotifyWindow);
        assert_eq!(at(last + 180 * D - 1), State::NotifyWindow);
        assert_eq!(at(last + 180 * D), State::Overdue);
        assert_eq!(p.standing(last, last).due_ms, last + 180 * D);
    }

    #[test]
    fn inconsistent_policies_are_refused_with_the_reason() {
        let mut p = Policy::default_for(SecretClass::ApiKey);
        p.frequency = Duration::from_secs(60);
        assert!(matches!(p.validate(), Err(PolicyError::TooFrequent(_))));
        let mut p = Policy::default_for(SecretClass::ApiKey);
        p.notify_before = p.frequency;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("notify_before")
        );
        let mut p = Policy::default_for(SecretClass::ApiKey);
        p.grace_period = p.frequency * 2;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("grace_period")
        );
        let mut p = Policy::default_for(SecretClass::ApiKey);
        p.max_attempts = 0;
        assert_eq!(p.validate(), Err(PolicyError::NoAttempts));
    }
}
