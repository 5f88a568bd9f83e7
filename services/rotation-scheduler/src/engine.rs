//! The leader's loop: hold the lease, start rotations that are due, send reminders for manual
//! secrets, and move each unfinished rotation through its steps — every step persisted
//! (fenced by the lease) before the next one runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::keys::v1::system_service_client::SystemServiceClient;
use sentia_proto::vault::v1 as pb;
use sentia_runtime::Shutdown;
use sentia_runtime::audit::{CallInfo, Emitter};
use sentia_runtime::client::AuthedChannel;

use crate::config::Hooks;
use crate::metrics::Metrics;
use crate::policy::{Applied, RotationPolicy, Source, for_secret};
use crate::rotator::{Ctx, Progress, Rotator, Secret, StepError, is_transient_code};
use crate::schedule::{Method, SecretClass, State};
use crate::steps::{Outcome, Rotation, Step};
use crate::store::{RotationRecord, Store};
use crate::vault::Vault;
use crate::{Clock, RotationError};

/// The name the master key's reminders carry (it is not a secret path).
pub const MASTER_KEY: &str = "key-service/master-key";

/// The identity recorded as starting scheduled rotations.
pub const SCHEDULER: &str = "rotation-scheduler";

/// Why the loop stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for; the lease was given up.
    Shutdown,
    /// A test hook ended it as a crash would: mid-rotation, the lease still held.
    Crashed,
}

/// Everything the loop needs.
#[derive(Clone)]
pub struct Engine {
    /// Database.
    pub store: Store,
    /// vault-service.
    pub vault: Vault,
    /// key-service, when configured (signing-key rotations).
    pub keys: Option<KeyServiceClient<AuthedChannel>>,
    /// key-service's status, when configured: the master key's age, for its reminders.
    pub key_system: Option<SystemServiceClient<AuthedChannel>>,
    /// Audit events.
    pub emitter: Arc<Emitter>,
    /// This replica's lease name.
    pub replica: String,
    /// Loop period.
    pub tick: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Grace period cap for emergency rotations.
    pub emergency_grace: Duration,
    /// Clock and test hooks.
    pub hooks: Hooks,
    /// OpenTelemetry instruments.
    pub metrics: Metrics,
    /// When CURRENT versions were written, as last described.
    pub current_times: CurrentTimes,
    /// Scheduled backups, when configured: the leader starts them.
    pub backups: Option<crate::backups::Backups>,
}

/// Most entries [`CurrentTimes`] keeps; it is emptied when it would grow past this.
const CURRENT_TIMES_MAX: usize = 100_000;

/// When each secret's CURRENT version was written, by (path, version). Versions never change
/// once written and their numbers are never reused, so a scan describes a secret that looks
/// due only when its CURRENT label has moved, not on every pass (an overdue manual secret
/// used to cost a DescribeSecret every tick).
#[derive(Clone, Default)]
pub struct CurrentTimes(Arc<std::sync::Mutex<CurrentTimesByPath>>);

/// Path → (CURRENT version, when it was written).
type CurrentTimesByPath = HashMap<String, (u64, Option<i64>)>;

impl CurrentTimes {
    fn get(&self, path: &str, version: u64) -> Option<Option<i64>> {
        let known = self.0.lock().ok()?;
        known
            .get(path)
            .filter(|(v, _)| *v == version)
            .map(|(_, time)| *time)
    }

    fn put(&self, path: &str, version: u64, time: Option<i64>) {
        if let Ok(mut known) = self.0.lock() {
            if known.len() >= CURRENT_TIMES_MAX {
                known.clear();
            }
            known.insert(path.to_string(), (version, time));
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn step_name(s: Step) -> &'static str {
    match s {
        Step::CreatePending => "create_pending",
        Step::Set => "set",
        Step::Test => "test",
        Step::Finish => "finish",
        Step::Cleanup => "cleanup",
        Step::Completed => "completed",
        Step::RolledBack => "rollback",
        Step::Parked => "parked",
    }
}

impl Engine {
    fn clock(&self) -> &Clock {
        &self.hooks.clock
    }

    /// Runs until shutdown (or a test hook's crash).
    pub async fn run(self, shutdown: Shutdown) -> Stopped {
        let mut fence: Option<i64> = None;
        loop {
            let now = self.clock().now_ms();
            fence = match self
                .store
                .lead(&self.replica, fence, now, ms(self.lease))
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "leader lease check failed; retrying");
                    None
                }
            };
            if let Some(f) = fence {
                let scan = tracing::info_span!("rotation_scan");
                if let Err(e) = tracing::Instrument::instrument(self.scan(now), scan).await {
                    tracing::warn!(error = %e, "looking for due secrets failed; retrying next tick");
                }
                match self.work(f).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(replica = %self.replica, "lost the leader lease mid-rotation");
                        fence = None;
                    }
                    Err(Crash) => return Stopped::Crashed,
                }
            }
            if let (Some(f), Some(backups)) = (fence, &self.backups) {
                backups.tick(f).await;
            }
            tokio::select! {
                _ = shutdown.wait() => {
                    if let Some(f) = fence {
                        let _ = self.store.resign(&self.replica, f).await;
                    }
                    return Stopped::Shutdown;
                }
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// Policies, last finishes and latest rotations, read once for a pass over many secrets.
    pub async fn snapshot(&self) -> Result<Snapshot, RotationError> {
        Ok(Snapshot {
            policies: self.store.policies().await?,
            finished: self.store.last_finished().await?,
            latest: self
                .store
                .latest_by_path()
                .await?
                .into_iter()
                .map(|r| (r.path.clone(), r))
                .collect(),
            notices: self.store.notices().await?,
        })
    }

    /// Where a listed secret stands at `now`: its policy (every secret has one, at worst its
    /// tier's default), when it last rotated and its standing.
    pub async fn status(
        &self,
        snap: &Snapshot,
        meta: &pb::SecretMetadata,
        now: i64,
    ) -> Result<SecretStatus, RotationError> {
        let Applied { policy, source } = for_secret(&snap.policies, meta);
        let last = self
            .last_rotation(meta, snap.finished.get(&meta.path).copied(), &policy, now)
            .await?;
        let standing = policy.timing.standing(last, now);
        Ok(SecretStatus {
            policy,
            source,
            last_ms: last,
            standing,
        })
    }

    /// Starts rotations that are due and sends reminders for manual ones.
    pub async fn scan(&self, now: i64) -> Result<(), RotationError> {
        let snap = self.snapshot().await?;
        let mut overdue = 0;
        for meta in self.vault.list("").await? {
            let SecretStatus {
                policy,
                last_ms: last,
                standing,
                ..
            } = self.status(&snap, &meta, now).await?;
            self.metrics.since_last(&meta.path, now - last);
            let expired = self.expiry_notice(&meta, &policy, now).await?;
            if standing.state == State::Overdue {
                overdue += 1;
            }
            let latest = snap.latest.get(&meta.path);
            if latest.is_some_and(|r| !r.state.step.is_terminal()) {
                continue;
            }
            // A parked rotation waits for a person (RotateNow, or writing a new value);
            // meanwhile the secret is reminded about like a manual one.
            let parked = latest.is_some_and(|r| r.state.step == Step::Parked && r.start_ms >= last);
            // An expired secret is not rotated (its SecretExpired alert asks for a person):
            // its value cannot be read, and a new version would be expired too.
            let automatic = policy.timing.method != Method::Manual
                && policy.rotator.is_some()
                && !parked
                && !expired;
            match (standing.state, automatic) {
                (State::Scheduled, _) => {}
                (State::Overdue, true) => {
                    match self
                        .start(&meta.path, policy, "scheduled", false, SCHEDULER, now)
                        .await
                    {
                        Ok(r) => {
                            tracing::info!(path = %meta.path, id = %r.id, "scheduled rotation started")
                        }
                        Err(RotationError::Busy(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                (State::NotifyWindow, true) => {
                    if self
                        .store
                        .remind_once(&meta.path, standing.due_ms, "notice", now)
                        .await?
                    {
                        tracing::info!(path = %meta.path, due_ms = standing.due_ms, "rotation notice");
                        self.event("rotation_notice", &meta.path, "", None).await;
                    }
                }
                (state, false) => {
                    let kind = if state == State::Overdue {
                        "overdue"
                    } else {
                        "upcoming"
                    };
                    if self
                        .store
                        .remind_once(&meta.path, standing.due_ms, kind, now)
                        .await?
                    {
                        tracing::warn!(path = %meta.path, kind, due_ms = standing.due_ms, "rotation reminder");
                        self.event(&format!("reminder_{kind}"), &meta.path, "", None)
                            .await;
                    }
                }
            }
        }
        if self.master_key_reminder(now).await? {
            overdue += 1;
        }
        self.metrics.overdue(overdue);
        Ok(())
    }

    /// Reminds about the master key like a manual secret of its class (365 d, 30 d notice):
    /// a person rotates it (`sentia key rotate-master`). True when it is overdue. Skipped
    /// when key-service is not configured or cannot say.
    async fn master_key_reminder(&self, now: i64) -> Result<bool, RotationError> {
        let Some(system) = &self.key_system else {
            return Ok(false);
        };
        let status = match system
            .clone()
            .status(sentia_proto::keys::v1::StatusRequest {})
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e.message(), "key-service status unavailable; master key reminder skipped");
                return Ok(false);
            }
        };
        let Some(created) = status.master_create_time.as_ref().map(ts_ms) else {
            return Ok(false);
        };
        let policy = crate::schedule::Policy::default_for(SecretClass::EncryptionMasterKey);
        let standing = policy.standing(created, now);
        let kind = match standing.state {
            State::Scheduled => return Ok(false),
            State::NotifyWindow => "upcoming",
            State::Overdue => "overdue",
        };
        if self
            .store
            .remind_once(MASTER_KEY, standing.due_ms, kind, now)
            .await?
        {
            tracing::warn!(
                kind,
                due_ms = standing.due_ms,
                master_version = status.master_version,
                "master key rotation reminder"
            );
            self.event(&format!("reminder_{kind}"), MASTER_KEY, "", None)
                .await;
        }
        Ok(standing.state == State::Overdue)
    }

    /// Sends the notice before `meta`'s expiry (at the policy's `expiry_notify_before`) and
    /// the one at it, each once per expiry time. True when the secret has expired.
    async fn expiry_notice(
        &self,
        meta: &pb::SecretMetadata,
        policy: &RotationPolicy,
        now: i64,
    ) -> Result<bool, RotationError> {
        let Some(expire) = meta.expire_time.as_ref().map(ts_ms) else {
            return Ok(false);
        };
        let expired = now >= expire;
        let op = if expired {
            "secret_expired"
        } else if now >= expire.saturating_sub(ms(policy.timing.expiry_notify_before)) {
            "secret_expiring"
        } else {
            return Ok(false);
        };
        if self.store.remind_once(&meta.path, expire, op, now).await? {
            tracing::warn!(path = %meta.path, expire_ms = expire, op, "expiry notice");
            self.event(op, &meta.path, "", None).await;
        }
        Ok(expired)
    }

    /// When `meta`'s secret last rotated: the scheduler's last finish, else its creation —
    /// or, once that looks due, the time its CURRENT version was written, since a person
    /// writing a new value is a rotation too.
    pub async fn last_rotation(
        &self,
        meta: &pb::SecretMetadata,
        last_finish: Option<i64>,
        policy: &RotationPolicy,
        now: i64,
    ) -> Result<i64, RotationError> {
        let created = meta.create_time.as_ref().map(ts_ms).unwrap_or(now);
        let last = last_finish.unwrap_or(created);
        if policy.timing.standing(last, now).state == State::Scheduled {
            return Ok(last);
        }
        let listed_current = meta.labels.get("CURRENT").copied();
        if let Some(v) = listed_current
            && let Some(time) = self.current_times.get(&meta.path, v)
        {
            return Ok(last.max(time.unwrap_or(last)));
        }
        Ok(match self.vault.describe(&meta.path).await? {
            Some(d) => {
                let time = current_version_time(&d);
                if let Some(v) = d.metadata.as_ref().and_then(|m| m.labels.get("CURRENT")) {
                    self.current_times.put(&meta.path, *v, time);
                }
                last.max(time.unwrap_or(last))
            }
            None => last,
        })
    }

    /// Records and returns a new rotation of `path`; BUSY if one is running.
    pub async fn start(
        &self,
        path: &str,
        policy: RotationPolicy,
        reason: &str,
        emergency: bool,
        by: &str,
        now: i64,
    ) -> Result<RotationRecord, RotationError> {
        let mut policy = policy;
        if emergency {
            policy.timing.grace_period = policy.timing.grace_period.min(self.emergency_grace);
        }
        let r = RotationRecord {
            id: uuid::Uuid::now_v7().to_string(),
            path: path.into(),
            state: Rotation::start(now),
            pending_version: 0,
            previous_version: 0,
            policy,
            reason: reason.into(),
            emergency,
            started_by: by.into(),
            start_ms: now,
            update_ms: now,
            finish_ms: None,
        };
        self.store.insert_rotation(&r).await?;
        Ok(r)
    }

    /// Advances every runnable rotation as far as it goes now. Ok(false) when the lease was
    /// lost.
    async fn work(&self, fence: i64) -> Result<bool, Crash> {
        let list = match self.store.unfinished().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading unfinished rotations failed");
                return Ok(true);
            }
        };
        for mut r in list {
            while r.state.runnable(self.clock().now_ms()) {
                // One trace per step: the calls it makes to vault-service and key-service
                // carry its context.
                let span = tracing::info_span!(
                    "rotation_step",
                    rotation = %r.id,
                    path = %r.path,
                    step = step_name(r.state.step)
                );
                match tracing::Instrument::instrument(self.step(&mut r, fence), span).await? {
                    Some(true) => {}
                    Some(false) => return Ok(false),
                    None => break,
                }
            }
        }
        Ok(true)
    }

    /// Runs the current step and persists where it led. Some(false) = lease lost, None =
    /// persisting failed (retried next tick).
    async fn step(&self, r: &mut RotationRecord, fence: i64) -> Result<Option<bool>, Crash> {
        let from = r.state.clone();
        let step = from.step;
        let mut next = r.clone();
        let outcome = match self.act(&mut next).await {
            Ok(Progress::Done) => Outcome::Done,
            Ok(Progress::WaitUntil(at)) => Outcome::Wait(at),
            Err(StepError::Transient(why)) => Outcome::Unavailable(why),
            Err(StepError::Rejected(why)) => Outcome::Failed(why),
        };
        #[cfg(feature = "test-hooks")]
        if self.hooks.crash_after == Some(step) {
            tracing::warn!(id = %r.id, step = step_name(step), "test hook: crashing before the step is recorded");
            return Err(Crash);
        }
        let now = self.clock().now_ms();
        next.state = from.advance(outcome.clone(), &r.policy.timing, now);
        next.update_ms = now;
        if step == Step::Finish && outcome == Outcome::Done {
            next.finish_ms = Some(now);
        }
        match self.store.save(&next, &from, fence).await {
            Ok(true) => {}
            Ok(false) => return Ok(Some(false)),
            Err(e) => {
                tracing::warn!(id = %r.id, error = %e, "recording a rotation step failed; retrying");
                return Ok(None);
            }
        }
        self.report(&next, step, &outcome).await;
        *r = next;
        Ok(Some(true))
    }

    /// Logs, audits and counts a step's outcome.
    async fn report(&self, r: &RotationRecord, step: Step, outcome: &Outcome) {
        let mut events: Vec<(String, Option<tonic::Code>)> = Vec::new();
        let mut results: Vec<String> = Vec::new();
        match outcome {
            Outcome::Done => {
                tracing::info!(id = %r.id, path = %r.path, step = step_name(step), next = step_name(r.state.step), "rotation step done");
                if step == Step::Finish {
                    events.push(("rotation_finished".into(), None));
                }
                if step == Step::RolledBack {
                    events.push(("rotation_rolled_back".into(), None));
                    results.push("rolled_back".into());
                }
                if r.state.step == Step::Completed {
                    events.push(("rotation_completed".into(), None));
                    results.push("completed".into());
                }
            }
            Outcome::Wait(until) => {
                tracing::info!(id = %r.id, path = %r.path, step = step_name(step), until_ms = until, "rotation step waits");
            }
            Outcome::Failed(why) => {
                tracing::warn!(id = %r.id, path = %r.path, step = step_name(step), error = %why, attempts = r.state.attempts, "rotation step failed");
                events.push((
                    format!("rotation_{}_failed", step_name(step)),
                    Some(tonic::Code::FailedPrecondition),
                ));
                results.push(format!("{}_failed", step_name(step)));
            }
            Outcome::Unavailable(why) => {
                tracing::warn!(id = %r.id, path = %r.path, step = step_name(step), error = %why, "rotation step could not reach its target; it runs again after a backoff");
                events.push((
                    format!("rotation_{}_failed", step_name(step)),
                    Some(tonic::Code::Unavailable),
                ));
                results.push(format!("{}_unavailable", step_name(step)));
            }
        }
        if r.state.step == Step::Parked {
            tracing::error!(id = %r.id, path = %r.path, attempts = r.state.attempts, "rotation parked: it needs a person");
            events.push(("rotation_parked".into(), Some(tonic::Code::Aborted)));
            results.push("parked".into());
        }
        for result in &results {
            self.metrics.outcome(result, r.policy.rotator_name());
        }
        for (op, code) in events {
            self.event(&op, &r.path, &r.id, code).await;
        }
    }

    async fn event(&self, op: &str, path: &str, id: &str, code: Option<tonic::Code>) {
        record(&self.emitter, "rotation", op, path, id, code).await;
    }

    async fn admin(&self, rotator: &Rotator) -> Result<Option<Secret>, StepError> {
        let Some(path) = rotator.admin_secret() else {
            return Ok(None);
        };
        match self.vault.labelled(path, "CURRENT").await {
            Ok(Some((_, s))) => Ok(Some(s)),
            Ok(None) => Err(format!("the admin secret {path} does not exist").into()),
            Err(e) => Err(step_error(&format!("reading the admin secret {path}"), e)),
        }
    }

    async fn pending(&self, r: &RotationRecord) -> Result<Secret, StepError> {
        match self.vault.version(&r.path, r.pending_version).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(format!(
                "pending version {} of {} is gone",
                r.pending_version, r.path
            )
            .into()),
            Err(e) => Err(step_error("", e)),
        }
    }

    /// The current step's action. Every one is idempotent: after a crash it runs again.
    async fn act(&self, r: &mut RotationRecord) -> Result<Progress, StepError> {
        let step = r.state.step;
        #[cfg(feature = "test-hooks")]
        if self.hooks.fail == Some(step) {
            return Err(format!("test hook: {} fails", step_name(step)).into());
        }
        let Some(rotator) = r.policy.rotator.clone() else {
            return Err(format!(
                "no rotator is configured for {}; set one with SetPolicy",
                r.path
            )
            .into());
        };
        let err = |e: RotationError| step_error("", e);
        let admin = match step {
            Step::Set | Step::Test | Step::Cleanup | Step::RolledBack => {
                self.admin(&rotator).await?
            }
            _ => None,
        };
        let ctx = Ctx {
            path: &r.path,
            rotation_id: &r.id,
            pending_version: r.pending_version,
            previous_version: r.previous_version,
            admin: admin.as_ref(),
            keys: self.keys.as_ref(),
            now_ms: self.clock().now_ms(),
        };
        let done = |r: Result<(), StepError>| r.map(|()| Progress::Done);
        match step {
            Step::CreatePending => {
                let current = self
                    .vault
                    .labelled(&r.path, "CURRENT")
                    .await
                    .map_err(err)?
                    .ok_or_else(|| {
                        format!(
                            "{} has no CURRENT version to rotate; write one first",
                            r.path
                        )
                    })?;
                let new = rotator.generate(&ctx, Some(&current.1)).await?;
                // The request id makes a retry after a crash return the version written the
                // first time instead of writing another.
                let request_id = format!("rotation-{}-{}", r.id, r.state.attempts);
                r.pending_version = self
                    .vault
                    .put_pending(&r.path, &new, &request_id)
                    .await
                    .map_err(err)?;
                r.previous_version = current.0;
                Ok(Progress::Done)
            }
            Step::Set => {
                let new = self.pending(r).await?;
                done(rotator.set(&ctx, &new).await)
            }
            Step::Test => {
                let new = self.pending(r).await?;
                rotator.test(&ctx, &new).await
            }
            Step::Finish => {
                let new = self.pending(r).await?;
                rotator.finish(&ctx, &new).await?;
                done(
                    self.vault
                        .move_label(&r.path, "CURRENT", r.pending_version)
                        .await
                        .map_err(err),
                )
            }
            Step::Cleanup => {
                if r.previous_version == 0 || r.previous_version == r.pending_version {
                    return Ok(Progress::Done);
                }
                // Revoke before destroy: once destroyed the old value cannot be read, which
                // on a retry means it was already revoked.
                if let Some(prev) = self
                    .vault
                    .version(&r.path, r.previous_version)
                    .await
                    .map_err(err)?
                {
                    let current = self.pending(r).await?;
                    rotator.revoke(&ctx, &prev, &current).await?;
                }
                done(
                    self.vault
                        .destroy(&r.path, r.previous_version)
                        .await
                        .map_err(err),
                )
            }
            Step::RolledBack => {
                if r.pending_version == 0 {
                    return Ok(Progress::Done);
                }
                if let Some(new) = self
                    .vault
                    .version(&r.path, r.pending_version)
                    .await
                    .map_err(err)?
                {
                    let mut before = Vec::new();
                    for label in ["CURRENT", "PREVIOUS"] {
                        if let Some((v, s)) =
                            self.vault.labelled(&r.path, label).await.map_err(err)?
                            && v != r.pending_version
                        {
                            before.push(s);
                        }
                    }
                    rotator.restore(&ctx, &new, &before).await?;
                }
                done(
                    self.vault
                        .destroy(&r.path, r.pending_version)
                        .await
                        .map_err(err),
                )
            }
            Step::Completed | Step::Parked => Ok(Progress::Done),
        }
    }
}

/// A failure of the scheduler's own calls during a step: vault-service or key-service not
/// reachable is transient (the step runs again), anything else is a refusal.
fn step_error(context: &str, e: RotationError) -> StepError {
    let why = if context.is_empty() {
        e.to_string()
    } else {
        format!("{context}: {e}")
    };
    match &e {
        RotationError::Upstream { status, .. } if is_transient_code(status.code()) => {
            StepError::Transient(why)
        }
        _ => StepError::Rejected(why),
    }
}

/// What a pass over many secrets reads once.
pub struct Snapshot {
    /// Stored policies.
    pub policies: Vec<RotationPolicy>,
    /// When each secret's last rotation finished.
    pub finished: HashMap<String, i64>,
    /// Each secret's newest rotation.
    pub latest: HashMap<String, RotationRecord>,
    /// When the first notice or reminder went out, by (path, due date).
    pub notices: HashMap<(String, i64), i64>,
}

/// Where one secret stands.
pub struct SecretStatus {
    /// The policy that applies.
    pub policy: RotationPolicy,
    /// The rule that chose it.
    pub source: Source,
    /// When it last rotated (Unix ms).
    pub last_ms: i64,
    /// Due date and state.
    pub standing: crate::schedule::Standing,
}

/// A test hook stopped the loop as a crash would.
#[derive(Debug)]
pub struct Crash;

/// Unix milliseconds of a timestamp.
pub fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

fn current_version_time(d: &pb::DescribeSecretResponse) -> Option<i64> {
    let meta = d.metadata.as_ref()?;
    let current = meta.labels.get("CURRENT")?;
    d.versions
        .iter()
        .find(|v| v.version == *current)
        .and_then(|v| v.create_time.as_ref())
        .map(ts_ms)
}

/// Records one of the scheduler's own actions (`event_type` rotation or backup) as
/// rotation-scheduler, about `subject`, under `request_id`; a failure to record is logged.
pub(crate) async fn record(
    emitter: &Emitter,
    event_type: &str,
    op: &str,
    subject: &str,
    request_id: &str,
    code: Option<tonic::Code>,
) {
    let info = CallInfo {
        principal: SCHEDULER.into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    if let Err(e) = emitter
        .emit(info.event(event_type, op, subject, code))
        .await
    {
        tracing::error!(subject, op, error = %e, "a {event_type} event could not be audited");
    }
}
