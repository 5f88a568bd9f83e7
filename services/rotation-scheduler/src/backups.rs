//! Scheduled backups (ADR 8; the strategy document's daily backup with 90 days' retention):
//! the leader makes an archive of all four services every `SENTIA_BACKUP_INTERVAL`, copies it
//! to every destination, prunes what is past retention (never the newest archive), and records
//! each outcome in its database, as an audit event (`backup_created`, `backup_copy_failed`,
//! `backup_failed`, `backup_pruned`; audit-service alerts on the failures) and as metrics.
//!
//! The scheduler is given only what this needs: `SENTIA_BACKUP_IDENTITIES` at key-service
//! (BeginBackup, the keyring's snapshot — sealed under the master) and audit-service (the
//! log's snapshot), Sign on `backup-manifest` in key-service's grants, and the snapshot of
//! vault-service its system_admin policy already allows. Its own database it reads directly.
//! The archive key it is handed opens only this archive, whose contents stay sealed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sentia_backup_ops::{BackupError, Destination, Made, Opener, Quiet, Source, Sources, Trust};
use sentia_runtime::audit::Emitter;
use sentia_runtime::{Reader, Shutdown};

use crate::metrics::Metrics;
use crate::store::{BackupOutcome, Store};
use sentia_runtime::Clock;

/// The `SENTIA_BACKUP_*` settings.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// `SENTIA_BACKUP_DESTINATIONS`: comma-separated directories and `s3://BUCKET/PREFIX`
    /// buckets (credentials, region and endpoint from the `AWS_*` variables). The archive is
    /// written in the first when it is a directory, then copied to the others.
    pub destinations: Vec<String>,
    /// `SENTIA_BACKUP_INTERVAL` (default 24h): how long after one backup the next is made.
    pub interval: Duration,
    /// `SENTIA_BACKUP_RETENTION` (default 90d): archives older than this are deleted from
    /// each destination after a backup, except the newest.
    pub retention: Duration,
    /// `SENTIA_BACKUP_RETRY` (default 1h, at most the interval): how soon a failed backup is
    /// tried again.
    pub retry: Duration,
    /// `SENTIA_BACKUP_CHECK_INTERVAL` (default 30d): how often every stored archive in every
    /// destination is read back and verified (its key opened by key-service), so a copy that
    /// rotted or was altered is found before a restore needs it.
    pub check_interval: Duration,
    /// `SENTIA_BACKUP_STAGING_DIR` (default the temporary directory): where an archive is
    /// written when the first destination is a bucket, and bucket copies are checked.
    pub staging: PathBuf,
    /// S3 options (`aws_endpoint`, ...) that win over the `AWS_*` variables; not read from
    /// the environment (a test's server, an embedding program's bucket).
    pub s3_options: Vec<(String, String)>,
}

/// `SENTIA_BACKUP_INTERVAL`'s default: the strategy document's daily backup.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(86_400);
/// `SENTIA_BACKUP_RETENTION`'s default: the strategy document's 90 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// `SENTIA_BACKUP_RETRY`'s default.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3600);
/// `SENTIA_BACKUP_CHECK_INTERVAL`'s default: the strategy document's monthly recovery test.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30 * 86_400);

impl BackupConfig {
    /// Daily backups into `destinations`, kept 90 days, retried hourly, staged in `staging`:
    /// the defaults, for a caller that configures in code (`sentia dev`).
    pub fn daily(destinations: Vec<String>, staging: PathBuf) -> Self {
        Self {
            destinations,
            interval: DEFAULT_INTERVAL,
            retention: DEFAULT_RETENTION,
            retry: DEFAULT_RETRY,
            check_interval: DEFAULT_CHECK_INTERVAL,
            staging,
            s3_options: Vec::new(),
        }
    }

    /// The settings, or None when `SENTIA_BACKUP_DESTINATIONS` is unset or empty (no
    /// scheduled backups).
    pub fn from_source(r: &mut Reader<'_>) -> Option<Self> {
        let destinations: Vec<String> = r
            .string_or("SENTIA_BACKUP_DESTINATIONS", "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let interval = r.duration_or("SENTIA_BACKUP_INTERVAL", DEFAULT_INTERVAL);
        let retention = r.duration_or("SENTIA_BACKUP_RETENTION", DEFAULT_RETENTION);
        let retry = r.duration_or("SENTIA_BACKUP_RETRY", DEFAULT_RETRY);
        let check_interval = r.duration_or("SENTIA_BACKUP_CHECK_INTERVAL", DEFAULT_CHECK_INTERVAL);
        let staging = r
            .optional("SENTIA_BACKUP_STAGING_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from);
        if destinations.is_empty() {
            return None;
        }
        if interval < Duration::from_secs(60) {
            r.problem("SENTIA_BACKUP_INTERVAL must be at least 1m");
        }
        if retention < interval {
            r.problem(
                "SENTIA_BACKUP_RETENTION must be at least SENTIA_BACKUP_INTERVAL: every \
                 backup would be pruned before the next is made",
            );
        }
        if retry.is_zero() || check_interval.is_zero() {
            r.problem("SENTIA_BACKUP_RETRY and SENTIA_BACKUP_CHECK_INTERVAL must be positive");
        }
        for d in &destinations {
            if let Some(rest) = d.strip_prefix("s3://")
                && rest.split('/').next().is_none_or(str::is_empty)
            {
                r.problem(format!(
                    "SENTIA_BACKUP_DESTINATIONS: {d:?} names no bucket (s3://BUCKET/PREFIX)"
                ));
            }
        }
        Some(Self {
            interval,
            retention,
            retry: retry.min(interval),
            check_interval,
            ..Self::daily(destinations, staging)
        })
    }
}

/// The leader's backup maker: at most one backup at a time, in a task of its own so the
/// lease keeps being renewed while it runs.
#[derive(Clone)]
pub struct Backups {
    config: Arc<BackupConfig>,
    destinations: Arc<Vec<Destination>>,
    sources: Sources,
    store: Store,
    emitter: Arc<Emitter>,
    metrics: Metrics,
    clock: Clock,
    replica: String,
    running: Arc<AtomicBool>,
    shutdown: Shutdown,
}

/// Everything [`Backups::new`] needs besides the settings.
pub struct Wiring {
    /// key-service, vault-service and audit-service channels, and this service's database.
    pub sources: Sources,
    /// The scheduler's store (backup runs, the lease).
    pub store: Store,
    /// Where outcomes are audited.
    pub emitter: Arc<Emitter>,
    /// Where outcomes are counted.
    pub metrics: Metrics,
    /// The time source.
    pub clock: Clock,
    /// This replica's lease name.
    pub replica: String,
    /// Stops a backup in progress (its partial files are removed).
    pub shutdown: Shutdown,
}

impl Backups {
    /// The backup maker for `config`; an unusable destination is an error naming it.
    pub fn new(config: BackupConfig, wiring: Wiring) -> Result<Self, BackupError> {
        let destinations = config
            .destinations
            .iter()
            .map(|d| Destination::parse_with(d, &config.s3_options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            config: Arc::new(config),
            destinations: Arc::new(destinations),
            sources: wiring.sources,
            store: wiring.store,
            emitter: wiring.emitter,
            metrics: wiring.metrics,
            clock: wiring.clock,
            replica: wiring.replica,
            running: Arc::new(AtomicBool::new(false)),
            shutdown: wiring.shutdown,
        })
    }

    /// The leader's check, once a tick: starts a backup in the background when one is due
    /// (none made within the interval, and no attempt within the retry delay) and none runs.
    pub async fn tick(&self, fence: i64) {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        let now = self.clock.now_ms();
        let is_due = |kind: &'static str, every: Duration| async move {
            match self.store.backup_times(kind).await {
                Ok((attempt, done)) => due(every, self.config.retry, now, attempt, done),
                Err(e) => {
                    tracing::warn!(error = %e, kind, "could not read when backups last ran; retrying");
                    false
                }
            }
        };
        // A due backup first: the check that follows then covers it too.
        let kind = if is_due("backup", self.config.interval).await {
            "backup"
        } else if is_due("check", self.config.check_interval).await {
            "check"
        } else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = uuid::Uuid::now_v7().to_string();
        match self
            .store
            .begin_backup(&id, kind, &self.replica, fence, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.running.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, kind, "could not record a backup run's start; retrying");
                self.running.store(false, Ordering::Release);
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("scheduled_backup", %id, kind);
            let work = async {
                this.sweep();
                let outcome = if kind == "backup" {
                    let made = this.run(&id).await;
                    this.metrics.backup(&made);
                    made
                } else {
                    this.check(&id).await
                };
                if let Err(e) = this.store.finish_backup(&id, &outcome).await {
                    tracing::error!(error = %e, "could not record how a backup run ended");
                }
            };
            tokio::select! {
                _ = tracing::Instrument::instrument(work, span) => {}
                _ = this.shutdown.wait() => {
                    tracing::warn!(%id, kind, "a scheduled backup run was stopped by shutdown; it runs again after the retry delay");
                }
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// Removes what runs stopped by a crash or a shutdown left in the staging directory and
    /// the first directory destination (nothing touched within [`LEFTOVER_AGE`]).
    fn sweep(&self) {
        let first_dir = self.destinations.first().and_then(Destination::dir);
        for dir in std::iter::once(self.config.staging.as_path()).chain(first_dir) {
            if let Err(e) = sentia_backup_ops::sweep(dir, LEFTOVER_AGE) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove what interrupted backups left");
            }
        }
    }

    /// One backup: make, copy, prune; says how it went.
    async fn run(&self, id: &str) -> BackupOutcome {
        tracing::info!("scheduled backup starts");
        let made = sentia_backup_ops::create_in(
            &self.sources,
            &self.destinations,
            &self.config.staging,
            Arc::new(Quiet),
        )
        .await;
        match made {
            Ok(made) => self.made(id, made).await,
            Err(e) => {
                tracing::error!(error = %e, "scheduled backup failed: no archive was made");
                self.event(id, "backup_failed", "", Some(code_of(&e))).await;
                self.failed(&e)
            }
        }
    }

    /// Reads back every archive in every destination and verifies it, its key opened by
    /// key-service (archives of an earlier master version are skipped: only that master or
    /// the recovery key opens them). Each destination checked is audited as `backup_checked`;
    /// each copy that fails, or a destination that cannot be listed, as `backup_check_failed`.
    async fn check(&self, id: &str) -> BackupOutcome {
        tracing::info!("check of the stored backups starts");
        let (mut verified, mut skipped, mut failures) = (0u32, 0u32, Vec::new());
        let trust = match sentia_backup_ops::trusted_keys(self.sources.keys.clone()).await {
            Ok(keys) => Arc::new(Trust::Keys(keys)),
            Err(e) => {
                tracing::error!(error = %e, "checking the stored backups failed: no public keys");
                self.event(id, "backup_check_failed", "", Some(code_of(&e)))
                    .await;
                return self.failed(&e);
            }
        };
        let scratch = self
            .config
            .staging
            .join(format!("{}check-{id}", sentia_backup_ops::STAGING_PREFIX));
        for dest in self.destinations.iter() {
            let stored = match dest.list().await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(destination = dest.label(), error = %e, "listing stored backups failed");
                    self.event(id, "backup_check_failed", dest.label(), Some(code_of(&e)))
                        .await;
                    failures.push(format!("{}: {e}", dest.label()));
                    continue;
                }
            };
            for archive in stored.iter().filter(|a| a.created_ms.is_some()) {
                let place = dest.place_of(&archive.name);
                match self.check_one(dest, &archive.name, &scratch, &trust).await {
                    Ok(()) => verified += 1,
                    Err(BackupError::Service {
                        code: tonic::Code::FailedPrecondition,
                        ..
                    }) => {
                        tracing::info!(archive = %place, "not checked: keyed to an earlier master version");
                        skipped += 1;
                    }
                    Err(e) => {
                        tracing::error!(archive = %place, error = %e, "a stored backup does not verify");
                        self.event(id, "backup_check_failed", &place, Some(code_of(&e)))
                            .await;
                        failures.push(format!("{place}: {e}"));
                    }
                }
            }
            self.event(id, "backup_checked", dest.label(), None).await;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        tracing::info!(
            verified,
            skipped,
            failed = failures.len(),
            "stored backups checked"
        );
        let outcome = BackupOutcome {
            finished_ms: self.clock.now_ms(),
            outcome: "checked",
            archive: None,
            copies: verified,
            detail: (!failures.is_empty()).then(|| failures.join("; ")),
        };
        self.metrics.check(
            verified.into(),
            skipped.into(),
            failures.len() as u64,
            &outcome,
        );
        outcome
    }

    /// Verifies one stored archive: in place in a directory, downloaded from a bucket.
    async fn check_one(
        &self,
        dest: &Destination,
        name: &str,
        scratch: &Path,
        trust: &Arc<Trust>,
    ) -> Result<(), BackupError> {
        let path = match dest.dir() {
            Some(dir) => dir.join(name),
            None => {
                sentia_backup_ops::create_private_dir(scratch)?;
                let to = scratch.join(name);
                dest.download(name, &to).await?;
                to
            }
        };
        let key = sentia_backup_ops::archive_key_from(self.sources.keys.clone(), &path).await;
        let result = match key {
            Ok(key) => {
                let (at, trust) = (path.clone(), trust.clone());
                tokio::task::spawn_blocking(move || {
                    sentia_backup_ops::check(
                        &at,
                        &Opener::Archive(key),
                        &trust,
                        &sentia_backup_ops::Quiet,
                    )
                    .map(|_| ())
                })
                .await
                .map_err(|e| BackupError::Invalid(format!("the check stopped: {e}")))?
            }
            Err(e) => Err(e),
        };
        if dest.dir().is_none() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Audits the copies of an archive made, prunes every destination that holds one, and
    /// says how it went.
    async fn made(&self, id: &str, made: Made) -> BackupOutcome {
        let copies = made.copies.iter().filter(|(_, r)| r.is_ok()).count();
        for (label, copy) in &made.copies {
            if copy.is_err() {
                self.event(
                    id,
                    "backup_copy_failed",
                    label,
                    Some(tonic::Code::Unavailable),
                )
                .await;
            }
        }
        self.event(id, "backup_created", &made.name, None).await;
        let now = self.clock.now_ms();
        for (dest, (_, copy)) in self.destinations.iter().zip(&made.copies) {
            // Only where this backup landed: a destination that is failing keeps what it has.
            if copy.is_err() {
                continue;
            }
            match dest.prune(self.config.retention, now).await {
                Ok(pruned) => {
                    for name in pruned {
                        tracing::info!(archive = %dest.place_of(&name), "backup past retention deleted");
                        self.event(id, "backup_pruned", &dest.place_of(&name), None)
                            .await;
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = dest.label(), error = %e, "pruning old backups failed");
                    self.event(
                        id,
                        "backup_prune_failed",
                        dest.label(),
                        Some(tonic::Code::Unavailable),
                    )
                    .await;
                }
            }
        }
        let failures: Vec<String> = made
            .failures()
            .map(|(label, e)| format!("{label}: {e}"))
            .collect();
        tracing::info!(archive = %made.name, bytes = made.bytes, copies, failed = failures.len(), "scheduled backup made");
        self.metrics.backup_size(made.bytes);
        BackupOutcome {
            finished_ms: self.clock.now_ms(),
            outcome: if failures.is_empty() {
                "created"
            } else {
                "partial"
            },
            archive: Some(made.name),
            copies: u32::try_from(copies).unwrap_or(u32::MAX),
            detail: (!failures.is_empty()).then(|| failures.join("; ")),
        }
    }

    /// A run that stopped at `e` before it made or checked anything.
    fn failed(&self, e: &BackupError) -> BackupOutcome {
        BackupOutcome {
            finished_ms: self.clock.now_ms(),
            outcome: "failed",
            archive: None,
            copies: 0,
            detail: Some(e.to_string()),
        }
    }

    /// Audits one outcome of run `id` (its request id, so a run's events can be found together).
    async fn event(&self, id: &str, op: &str, subject: &str, code: Option<tonic::Code>) {
        crate::engine::record(&self.emitter, "backup", op, subject, id, code).await;
    }
}

/// How long what a backup run writes must lie untouched before a later run takes it for
/// the leftover of an interrupted one: far longer than any run pauses between writes.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// The status code a failed backup is audited with: the failing service's own, else
/// UNAVAILABLE for storage and INTERNAL for an archive that did not check out.
fn code_of(e: &BackupError) -> tonic::Code {
    match e {
        BackupError::Service { code, .. } => *code,
        BackupError::Storage(_) | BackupError::Io(_) => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// True when a run is due at `now`: none succeeded within `every`, and no attempt (a failed
/// one, or one a crash or shutdown cut short) within `retry`.
fn due(
    every: Duration,
    retry: Duration,
    now: i64,
    attempt: Option<i64>,
    done: Option<i64>,
) -> bool {
    let since = |t: Option<i64>, d: Duration| t.is_none_or(|t| now.saturating_sub(t) >= millis(d));
    since(done, every) && since(attempt, retry)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// This service's own database as a backup source.
pub fn local_source(pool: sqlx::AnyPool, database_url: &str) -> Source {
    Source::Local {
        pool,
        sqlite: sentia_db::is_sqlite(database_url),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sentia_runtime::MapSource;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<BackupConfig>, String> {
        let source = MapSource::from_pairs(pairs.iter().copied());
        let mut r = Reader::new(&source);
        let c = BackupConfig::from_source(&mut r);
        r.finish().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn backups_are_off_without_destinations_and_daily_for_ninety_days_with_them() {
        assert!(read(&[]).unwrap().is_none());
        assert!(
            read(&[("SENTIA_BACKUP_DESTINATIONS", " , ")])
                .unwrap()
                .is_none()
        );
        let c = read(&[(
            "SENTIA_BACKUP_DESTINATIONS",
            "/var/lib/sentia/backups, s3://bucket/sentia",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.destinations,
            ["/var/lib/sentia/backups", "s3://bucket/sentia"]
        );
        assert_eq!(c.interval, Duration::from_secs(86_400));
        assert_eq!(c.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.retry, Duration::from_secs(3600));
    }

    #[test]
    fn a_schedule_that_would_prune_everything_or_names_no_bucket_is_refused_by_name() {
        let err = read(&[
            ("SENTIA_BACKUP_DESTINATIONS", "/b"),
            ("SENTIA_BACKUP_INTERVAL", "2d"),
            ("SENTIA_BACKUP_RETENTION", "1d"),
        ])
        .unwrap_err();
        assert!(err.contains("SENTIA_BACKUP_RETENTION"), "{err}");
        let err = read(&[("SENTIA_BACKUP_DESTINATIONS", "s3:///x")]).unwrap_err();
        assert!(err.contains("names no bucket"), "{err}");
        let err = read(&[
            ("SENTIA_BACKUP_DESTINATIONS", "/b"),
            ("SENTIA_BACKUP_INTERVAL", "5s"),
        ])
        .unwrap_err();
        assert!(err.contains("SENTIA_BACKUP_INTERVAL"), "{err}");
    }

    #[test]
    fn a_backup_is_due_a_day_after_the_last_one_made_and_an_hour_after_a_failed_attempt() {
        let c = BackupConfig::daily(vec!["/b".into()], "/tmp".into());
        let due = |now, attempt, made| due(c.interval, c.retry, now, attempt, made);
        let (h, d) = (3_600_000, 86_400_000);
        let t = 100 * d;
        assert!(due(t, None, None), "the first one at once");
        assert!(!due(t + d - 1, Some(t), Some(t)));
        assert!(due(t + d, Some(t), Some(t)));
        // The last attempt failed (or was cut short) half an hour ago: wait for the retry.
        assert!(!due(t + d, Some(t + d - h / 2), Some(t)));
        assert!(due(t + d + h / 2, Some(t + d - h / 2), Some(t)));
        // Never one made, failing since: retried hourly.
        assert!(!due(t + h - 1, Some(t), None));
        assert!(due(t + h, Some(t), None));
    }

    #[test]
    fn a_retry_delay_longer_than_the_interval_is_the_interval() {
        let c = read(&[
            ("SENTIA_BACKUP_DESTINATIONS", "/b"),
            ("SENTIA_BACKUP_INTERVAL", "30m"),
            ("SENTIA_BACKUP_RETRY", "2h"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.retry, Duration::from_secs(1800));
    }
}
