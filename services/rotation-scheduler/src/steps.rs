//! The rotation state machine, AWS Secrets Manager's steps: create_pending → set → test →
//! finish → cleanup (after the grace period) → completed. Each step is persisted before it
//! runs and every step is idempotent, so a crash anywhere resumes at the persisted step. This
//! module is the pure transition function; running steps and persisting them is the caller's.

use std::time::Duration;

use crate::schedule::Policy;

/// A persisted step (values match `RotationStep` in rotation.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the new version labelled PENDING.
    CreatePending = 1,
    /// Apply the new value to the target.
    Set = 2,
    /// Prove the new value works against the target.
    Test = 3,
    /// PENDING → CURRENT, CURRENT → PREVIOUS.
    Finish = 4,
    /// After the grace period: destroy PREVIOUS, revoke it on the target.
    Cleanup = 5,
    /// Done.
    Completed = 6,
    /// Set or test failed: restore the target and discard PENDING, then retry or park.
    RolledBack = 7,
    /// Failed `max_attempts` times; needs a person.
    Parked = 8,
}

impl Step {
    /// True when nothing more will run.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Parked)
    }
}

/// The persisted state of one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The step to run next.
    pub step: Step,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time (backoff after a failure), Unix ms.
    pub not_before_ms: i64,
    /// Cleanup waits until this time (end of the grace period), Unix ms.
    pub grace_until_ms: Option<i64>,
    /// The last failure, for status and alerts.
    pub last_error: Option<String>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it should.
    Done,
    /// It failed, with a reason a person can act on: the target (or the configuration)
    /// refused. A `set` or `test` failing so is rolled back.
    Failed(String),
    /// The target or a service it needs could not be reached: the same step runs again after
    /// a backoff, nothing is rolled back and no attempt is counted (every step is idempotent).
    Unavailable(String),
    /// Not yet: run the same step again at this time (Unix ms); not a failure.
    Wait(i64),
}

/// Delay before retry number `attempt` (1-based): 30 s doubling, at most an hour.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 30u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    Duration::from_secs(secs.min(3600))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Rotation {
    /// A new rotation, ready to start at `now_ms`.
    pub fn start(now_ms: i64) -> Self {
        Self {
            step: Step::CreatePending,
            attempts: 0,
            not_before_ms: now_ms,
            grace_until_ms: None,
            last_error: None,
        }
    }

    /// True if its current step may run at `now_ms`.
    pub fn runnable(&self, now_ms: i64) -> bool {
        !self.step.is_terminal()
            && now_ms >= self.not_before_ms
            && (self.step != Step::Cleanup || self.grace_until_ms.is_some_and(|g| now_ms >= g))
    }

    /// The state after the current step ended with `outcome` at `now_ms`.
    pub fn advance(&self, outcome: Outcome, policy: &Policy, now_ms: i64) -> Self {
        let mut next = self.clone();
        match outcome {
            Outcome::Done => {
                // A finished rollback keeps the failure that caused it, for status and alerts.
                if self.step != Step::RolledBack {
                    next.last_error = None;
                }
                next.not_before_ms = now_ms;
                next.step = match self.step {
                    Step::CreatePending => Step::Set,
                    Step::Set => Step::Test,
                    Step::Test => Step::Finish,
                    Step::Finish => {
                        next.grace_until_ms = Some(now_ms.saturating_add(ms(policy.grace_period)));
                        Step::Cleanup
                    }
                    Step::Cleanup => Step::Completed,
                    // The target is restored and PENDING discarded: try again, or give up.
                    Step::RolledBack if self.attempts >= policy.max_attempts => Step::Parked,
                    Step::RolledBack => {
                        next.not_before_ms = now_ms.saturating_add(ms(backoff(self.attempts)));
                        Step::CreatePending
                    }
                    done @ (Step::Completed | Step::Parked) => done,
                };
            }
            Outcome::Wait(until_ms) => {
                next.not_before_ms = until_ms.max(now_ms);
            }
            Outcome::Unavailable(why) => {
                next.last_error = Some(why);
                if !self.step.is_terminal() {
                    let n = self.attempts.max(1);
                    next.not_before_ms = now_ms.saturating_add(ms(backoff(n)));
                }
            }
            Outcome::Failed(why) => {
                next.last_error = Some(why);
                match self.step {
                    // Nothing was applied yet: count it and retry, or give up.
                    Step::CreatePending => {
                        next.attempts += 1;
                        if next.attempts >= policy.max_attempts {
                            next.step = Step::Parked;
                        } else {
                            next.not_before_ms = now_ms.saturating_add(ms(backoff(next.attempts)));
                        }
                    }
                    // The target may hold the new value: it must be restored first.
                    Step::Set | Step::Test => {
                        next.attempts += 1;
                        next.step = Step::RolledBack;
                        next.not_before_ms = now_ms;
                    }
                    // Past the point of no return (finish, cleanup) or restoring: retry the
                    // same step until it succeeds — these only need the services reachable.
                    Step::Finish | Step::Cleanup | Step::RolledBack => {
                        let n = self.attempts.max(1);
                        next.not_before_ms = now_ms.saturating_add(ms(backoff(n)));
                    }
                    Step::Completed | Step::Parked => {}
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::SecretClass;

    fn policy() -> Policy {
        Policy::default_for(SecretClass::ApiKey) // grace 1 d, 5 attempts
    }

    #[test]
    fn a_clean_rotation_walks_every_step_and_waits_out_the_grace_period() {
        let p = policy();
        let mut r = Rotation::start(0);
        let mut seen = vec![r.step];
        let mut now = 0;
        while !r.step.is_terminal() {
            if !r.runnable(now) {
                assert_eq!(r.step, Step::Cleanup, "only cleanup waits");
                assert!(!r.runnable(86_400_000 - 1));
                now = 86_400_000;
                continue;
            }
            r = r.advance(Outcome::Done, &p, now);
            seen.push(r.step);
        }
        assert_eq!(
            seen,
            [
                Step::CreatePending,
                Step::Set,
                Step::Test,
                Step::Finish,
                Step::Cleanup,
                Step::Completed
            ]
        );
    }

    #[test]
    fn an_unreachable_target_repeats_the_step_after_a_backoff_without_rolling_back() {
        let p = policy();
        for step in [
            Step::CreatePending,
            Step::Set,
            Step::Test,
            Step::Finish,
            Step::Cleanup,
            Step::RolledBack,
        ] {
            let r = Rotation {
                step,
                ..Rotation::start(0)
            };
            let next = r.advance(Outcome::Unavailable("refused".into()), &p, 1_000);
            assert_eq!(next.step, step, "{step:?} stays where it was");
            assert_eq!(
                next.attempts, r.attempts,
                "{step:?}: not counted as an attempt"
            );
            assert_eq!(next.last_error.as_deref(), Some("refused"));
            assert_eq!(
                next.not_before_ms,
                1_000 + 30_000,
                "{step:?}: after the backoff"
            );
            assert!(!next.runnable(1_000 + 29_999));
        }
        // The same failure as a refusal rolls a set back.
        let r = Rotation {
            step: Step::Set,
            ..Rotation::start(0)
        };
        let next = r.advance(Outcome::Failed("refused".into()), &p, 1_000);
        assert_eq!(next.step, Step::RolledBack);
    }

    #[test]
    fn a_failed_test_rolls_back_then_retries_with_backoff_and_parks_after_max_attempts() {
        let p = policy();
        let mut r = Rotation::start(0);
        let mut now = 0;
        for attempt in 1..=p.max_attempts {
            r = r.advance(Outcome::Done, &p, now); // create_pending
            r = r.advance(Outcome::Done, &p, now); // set
            r = r.advance(
                Outcome::Failed("login with the new password failed".into()),
                &p,
                now,
            );
            assert_eq!((r.step, r.attempts), (Step::RolledBack, attempt));
            assert!(r.runnable(now), "rollback runs at once");
            r = r.advance(Outcome::Done, &p, now); // target restored
            if attempt < p.max_attempts {
                assert_eq!(r.step, Step::CreatePending);
                let wait = ms(backoff(attempt));
                assert!(!r.runnable(now + wait - 1) && r.runnable(now + wait));
                now += wait;
            }
        }
        assert_eq!(r.step, Step::Parked);
        assert_eq!(
            r.last_error.as_deref(),
            Some("login with the new password failed"),
            "the cause stays visible"
        );
        assert!(!r.runnable(i64::MAX));
    }

    #[test]
    fn failures_after_finish_or_while_restoring_retry_the_same_step() {
        let p = policy();
        for step in [Step::Finish, Step::Cleanup, Step::RolledBack] {
            let r = Rotation {
                step,
                grace_until_ms: Some(0),
                ..Rotation::start(0)
            };
            let next = r.advance(
                Outcome::Failed("vault-service unavailable".into()),
                &p,
                1000,
            );
            assert_eq!(next.step, step, "{step:?}");
            assert!(next.not_before_ms > 1000);
            assert_eq!(
                next.last_error.as_deref(),
                Some("vault-service unavailable")
            );
        }
        let r = Rotation::start(0).advance(Outcome::Failed("vault down".into()), &p, 0);
        assert_eq!((r.step, r.attempts), (Step::CreatePending, 1));
    }

    #[test]
    fn waiting_keeps_the_step_without_counting_a_failure() {
        let p = policy();
        let r = Rotation {
            step: Step::Test,
            ..Rotation::start(0)
        };
        let next = r.advance(Outcome::Wait(5000), &p, 1000);
        assert_eq!(
            (next.step, next.attempts, next.last_error.clone()),
            (Step::Test, 0, None)
        );
        assert!(!next.runnable(4999) && next.runnable(5000));
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(8), Duration::from_secs(3600));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(3600));
    }
}
