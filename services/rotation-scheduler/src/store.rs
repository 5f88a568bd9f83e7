//! Policies, rotations, reminders and the leader lease in the database (sqlx `Any`: Postgres,
//! or SQLite for the embedded default). Every write of a rotation's step is conditional on
//! the writer's lease fence, so a deposed leader cannot move a rotation.

use std::collections::HashMap;

use sentia_db::{MigrationSource, Migrations};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::RotationError;
use crate::policy::RotationPolicy;
use crate::steps::{Rotation, Step};

/// This service's migrations for each dialect (the schema-parity test compares what they make).
pub const MIGRATIONS: Migrations = Migrations {
    postgres: PG,
    sqlite: SQLITE,
    seeded: &[],
};

const PG: &[MigrationSource] = &[
    (
        1,
        "rotation",
        include_str!("../migrations/postgres/0001_rotation.sql"),
    ),
    (
        2,
        "backups",
        include_str!("../migrations/postgres/0002_backups.sql"),
    ),
    (
        3,
        "expiry_notice",
        include_str!("../migrations/postgres/0003_expiry_notice.sql"),
    ),
];
const SQLITE: &[MigrationSource] = &[
    (
        1,
        "rotation",
        include_str!("../migrations/sqlite/0001_rotation.sql"),
    ),
    (
        2,
        "backups",
        include_str!("../migrations/sqlite/0002_backups.sql"),
    ),
    (
        3,
        "expiry_notice",
        include_str!("../migrations/sqlite/0003_expiry_notice.sql"),
    ),
];

/// The one lease every replica competes for.
const LEASE: &str = "leader";

/// How a scheduled backup ended, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOutcome {
    /// When it ended (ms since the epoch).
    pub finished_ms: i64,
    /// A backup: `created` (every copy made), `partial` (some copies failed) or `failed` (no
    /// archive). A check: `checked` (it ran; `detail` names copies that failed) or `failed`.
    pub outcome: &'static str,
    /// The archive's file name, when one was made.
    pub archive: Option<String>,
    /// Copies made (a check: copies that verified).
    pub copies: u32,
    /// What failed, if anything.
    pub detail: Option<String>,
}

/// One rotation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationRecord {
    /// UUID.
    pub id: String,
    /// Secret path.
    pub path: String,
    /// State machine position.
    pub state: Rotation,
    /// Version written by create_pending (0 before).
    pub pending_version: u64,
    /// CURRENT version when create_pending ran (0 if none).
    pub previous_version: u64,
    /// Policy snapshot taken at start.
    pub policy: RotationPolicy,
    /// Why it started.
    pub reason: String,
    /// Emergency rotation.
    pub emergency: bool,
    /// Who started it ("scheduler" for scheduled ones).
    pub started_by: String,
    /// Unix ms.
    pub start_ms: i64,
    /// Unix ms of the last change.
    pub update_ms: i64,
    /// When finish made the new value CURRENT.
    pub finish_ms: Option<i64>,
}

fn step_from(n: i64) -> Result<Step, RotationError> {
    Ok(match n {
        1 => Step::CreatePending,
        2 => Step::Set,
        3 => Step::Test,
        4 => Step::Finish,
        5 => Step::Cleanup,
        6 => Step::Completed,
        7 => Step::RolledBack,
        8 => Step::Parked,
        _ => return Err(RotationError::Corrupt(format!("unknown step {n}"))),
    })
}

fn record(row: &AnyRow) -> Result<RotationRecord, RotationError> {
    let policy: String = row.try_get("policy")?;
    Ok(RotationRecord {
        id: row.try_get("id")?,
        path: row.try_get("path")?,
        state: Rotation {
            step: step_from(row.try_get("step")?)?,
            attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
            not_before_ms: row.try_get("not_before_ms")?,
            grace_until_ms: row.try_get("grace_until_ms")?,
            last_error: row.try_get("last_error")?,
        },
        pending_version: row.try_get::<i64, _>("pending_version")?.max(0) as u64,
        previous_version: row.try_get::<i64, _>("previous_version")?.max(0) as u64,
        policy: RotationPolicy::from_json(&policy)?,
        reason: row.try_get("reason")?,
        emergency: row.try_get::<i64, _>("emergency")? != 0,
        started_by: row.try_get("started_by")?,
        start_ms: row.try_get("start_ms")?,
        update_ms: row.try_get("update_ms")?,
        finish_ms: row.try_get("finish_ms")?,
    })
}

const COLUMNS: &str = "id, path, CAST(step AS BIGINT) AS step, CAST(attempts AS BIGINT) AS attempts, \
    not_before_ms, grace_until_ms, last_error, pending_version, previous_version, policy, reason, \
    CAST(emergency AS BIGINT) AS emergency, started_by, start_ms, update_ms, finish_ms";

/// The steps a rotation ends in ([`Step::Completed`], [`Step::Parked`]) as SQL. Written out
/// rather than bound so that queries match the predicate of the partial unique index
/// `rotations_one_active` in the migrations (a test checks both against [`Step`]).
const TERMINAL_STEPS: &str = "(6, 8)";

/// The scheduler's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// The pool, for the database's snapshot (backups).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Connects and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, RotationError> {
        let pool = sentia_db::connect(url, max_connections, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    /// Creates or replaces a policy.
    pub async fn put_policy(
        &self,
        p: &RotationPolicy,
        by: &str,
        now_ms: i64,
    ) -> Result<(), RotationError> {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO rotation_policies (pattern, frequency_ms, method, notify_before_ms, \
             grace_ms, rotator, params, max_attempts, updated_by, update_ms, expiry_notify_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (pattern) DO UPDATE SET frequency_ms = excluded.frequency_ms, \
             method = excluded.method, notify_before_ms = excluded.notify_before_ms, \
             grace_ms = excluded.grace_ms, rotator = excluded.rotator, params = excluded.params, \
             max_attempts = excluded.max_attempts, updated_by = excluded.updated_by, \
             update_ms = excluded.update_ms, expiry_notify_ms = excluded.expiry_notify_ms",
        )
        .bind(&p.pattern)
        .bind(ms(p.timing.frequency))
        .bind(p.timing.method as i32)
        .bind(ms(p.timing.notify_before))
        .bind(ms(p.timing.grace_period))
        .bind(p.rotator_name())
        .bind(
            serde_json::Value::Object(
                p.rotator
                    .as_ref()
                    .map(|r| r.params().clone())
                    .unwrap_or_default(),
            )
            .to_string(),
        )
        .bind(p.timing.max_attempts as i32)
        .bind(by)
        .bind(now_ms)
        .bind(ms(p.timing.expiry_notify_before))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every stored policy.
    pub async fn policies(&self) -> Result<Vec<RotationPolicy>, RotationError> {
        let rows = sqlx::query(
            "SELECT pattern, frequency_ms, CAST(method AS BIGINT) AS method, notify_before_ms, \
             grace_ms, rotator, params, CAST(max_attempts AS BIGINT) AS max_attempts, \
             expiry_notify_ms FROM rotation_policies ORDER BY pattern",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let json = serde_json::json!({
                    "pattern": r.try_get::<String, _>("pattern")?,
                    "frequency_ms": r.try_get::<i64, _>("frequency_ms")?,
                    "method": r.try_get::<i64, _>("method")?,
                    "notify_before_ms": r.try_get::<i64, _>("notify_before_ms")?,
                    "grace_ms": r.try_get::<i64, _>("grace_ms")?,
                    "max_attempts": r.try_get::<i64, _>("max_attempts")?,
                    "expiry_notify_ms": r.try_get::<i64, _>("expiry_notify_ms")?,
                    "rotator": r.try_get::<String, _>("rotator")?,
                    "params": serde_json::from_str::<serde_json::Value>(
                        &r.try_get::<String, _>("params")?
                    ).map_err(|_| RotationError::Corrupt("policy parameters".into()))?,
                });
                RotationPolicy::from_json(&json.to_string())
            })
            .collect()
    }

    /// Starts a rotation; BUSY (with the running one's id) if the secret already has one.
    pub async fn insert_rotation(&self, r: &RotationRecord) -> Result<(), RotationError> {
        let done = sqlx::query(
            "INSERT INTO rotations (id, path, step, attempts, not_before_ms, grace_until_ms, \
             last_error, pending_version, previous_version, policy, reason, emergency, \
             started_by, start_ms, update_ms, finish_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&r.id)
        .bind(&r.path)
        .bind(r.state.step as i32)
        .bind(r.state.attempts as i32)
        .bind(r.state.not_before_ms)
        .bind(r.state.grace_until_ms)
        .bind(r.state.last_error.clone())
        .bind(r.pending_version as i64)
        .bind(r.previous_version as i64)
        .bind(r.policy.to_json())
        .bind(&r.reason)
        .bind(i32::from(r.emergency))
        .bind(&r.started_by)
        .bind(r.start_ms)
        .bind(r.update_ms)
        .bind(r.finish_ms)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.active(&r.path).await? {
            Some(running) => Err(RotationError::Busy(format!(
                "a rotation of {} is already running (id {}, step {:?}); wait for it or see \
                 `sentia rotation history {}`",
                r.path, running.id, running.state.step, r.path
            ))),
            None => Err(RotationError::Busy(format!(
                "rotation id {} is taken; retry",
                r.id
            ))),
        }
    }

    /// The unfinished rotation of a secret, if any.
    pub async fn active(&self, path: &str) -> Result<Option<RotationRecord>, RotationError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rotations WHERE path = $1 AND step NOT IN {TERMINAL_STEPS}"
        )))
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// Every unfinished rotation, oldest first.
    pub async fn unfinished(&self) -> Result<Vec<RotationRecord>, RotationError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rotations WHERE step NOT IN {TERMINAL_STEPS} ORDER BY start_ms, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Rotations of a secret, newest first, from offset `skip`.
    pub async fn history(
        &self,
        path: &str,
        skip: i64,
        limit: i64,
    ) -> Result<Vec<RotationRecord>, RotationError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rotations WHERE path = $1 \
             ORDER BY start_ms DESC, id DESC LIMIT $2 OFFSET $3"
        )))
        .bind(path)
        .bind(limit)
        .bind(skip)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// The latest rotation of each secret that has one.
    pub async fn latest_by_path(&self) -> Result<Vec<RotationRecord>, RotationError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rotations r WHERE start_ms = \
             (SELECT MAX(start_ms) FROM rotations x WHERE x.path = r.path) ORDER BY path"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// When each secret last finished a rotation (the new value became CURRENT).
    pub async fn last_finished(
        &self,
    ) -> Result<std::collections::HashMap<String, i64>, RotationError> {
        let rows = sqlx::query(
            "SELECT path, MAX(finish_ms) AS at FROM rotations WHERE finish_ms IS NOT NULL \
             GROUP BY path",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("path")?, r.try_get("at")?)))
            .collect()
    }

    /// Persists `r`'s new state if it is still at `from` and `fence` is the newest lease;
    /// false when another leader has taken over (nothing is written then).
    pub async fn save(
        &self,
        r: &RotationRecord,
        from: &Rotation,
        fence: i64,
    ) -> Result<bool, RotationError> {
        let done = sqlx::query(
            "UPDATE rotations SET step = $1, attempts = $2, not_before_ms = $3, \
             grace_until_ms = $4, last_error = $5, pending_version = $6, previous_version = $7, \
             update_ms = $8, finish_ms = $9 \
             WHERE id = $10 AND step = $11 AND attempts = $12 \
             AND EXISTS (SELECT 1 FROM scheduler_lease WHERE name = $13 AND fence = $14)",
        )
        .bind(r.state.step as i32)
        .bind(r.state.attempts as i32)
        .bind(r.state.not_before_ms)
        .bind(r.state.grace_until_ms)
        .bind(r.state.last_error.clone())
        .bind(r.pending_version as i64)
        .bind(r.previous_version as i64)
        .bind(r.update_ms)
        .bind(r.finish_ms)
        .bind(&r.id)
        .bind(from.step as i32)
        .bind(from.attempts as i32)
        .bind(LEASE)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes the lease if it is free or expired, or renews it if `holder` has it with `fence`.
    /// Returns the fence this replica now holds, or None.
    pub async fn lead(
        &self,
        holder: &str,
        held: Option<i64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, RotationError> {
        let expires = now_ms.saturating_add(ttl_ms);
        if let Some(fence) = held {
            let renewed = sqlx::query(
                "UPDATE scheduler_lease SET expires_ms = $1 \
                 WHERE name = $2 AND holder = $3 AND fence = $4",
            )
            .bind(expires)
            .bind(LEASE)
            .bind(holder)
            .bind(fence)
            .execute(&self.pool)
            .await?;
            if renewed.rows_affected() == 1 {
                return Ok(Some(fence));
            }
        }
        sqlx::query(
            "INSERT INTO scheduler_lease (name, holder, fence, expires_ms) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             fence = scheduler_lease.fence + 1, expires_ms = excluded.expires_ms \
             WHERE scheduler_lease.expires_ms < $4",
        )
        .bind(LEASE)
        .bind(holder)
        .bind(expires)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT holder, fence FROM scheduler_lease WHERE name = $1")
            .bind(LEASE)
            .fetch_one(&self.pool)
            .await?;
        let (h, fence): (String, i64) = (row.try_get("holder")?, row.try_get("fence")?);
        Ok((h == holder).then_some(fence))
    }

    /// Gives the lease up (clean shutdown), so another replica takes over at once.
    pub async fn resign(&self, holder: &str, fence: i64) -> Result<(), RotationError> {
        sqlx::query(
            "UPDATE scheduler_lease SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND fence = $3",
        )
        .bind(LEASE)
        .bind(holder)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a scheduled backup (`kind` backup) or check of the stored copies (`kind`
    /// check) `id` starts, if `holder` still leads with `fence`; false when it does not
    /// (another replica took over).
    pub async fn begin_backup(
        &self,
        id: &str,
        kind: &str,
        holder: &str,
        fence: i64,
        now_ms: i64,
    ) -> Result<bool, RotationError> {
        let done = sqlx::query(
            "INSERT INTO backup_runs (id, kind, replica, started_ms) SELECT $1, $2, $3, $4 \
             WHERE EXISTS (SELECT 1 FROM scheduler_lease \
             WHERE name = $5 AND holder = $3 AND fence = $6)",
        )
        .bind(id)
        .bind(kind)
        .bind(holder)
        .bind(now_ms)
        .bind(LEASE)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how scheduled backup `id` ended.
    pub async fn finish_backup(&self, id: &str, run: &BackupOutcome) -> Result<(), RotationError> {
        sqlx::query(
            "UPDATE backup_runs SET finished_ms = $1, outcome = $2, archive = $3, copies = $4, \
             detail = $5 WHERE id = $6",
        )
        .bind(run.finished_ms)
        .bind(run.outcome)
        .bind(run.archive.clone())
        .bind(i64::from(run.copies))
        .bind(run.detail.clone())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the newest attempt of `kind` (backup or check) started, and the newest that
    /// succeeded (a backup that made an archive, `created` or `partial`; a check that ran,
    /// whatever it found).
    pub async fn backup_times(
        &self,
        kind: &str,
    ) -> Result<(Option<i64>, Option<i64>), RotationError> {
        let row = sqlx::query(
            "SELECT MAX(started_ms) AS attempt, \
             MAX(CASE WHEN outcome IN ('created', 'partial', 'checked') THEN started_ms END) \
             AS made FROM backup_runs WHERE kind = $1",
        )
        .bind(kind)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("attempt")?, row.try_get("made")?))
    }

    /// When the first notice or reminder for each (secret, due date) went out.
    pub async fn notices(&self) -> Result<HashMap<(String, i64), i64>, RotationError> {
        let rows = sqlx::query(
            "SELECT path, due_ms, MIN(sent_ms) AS sent_ms FROM rotation_reminders \
             WHERE kind IN ('notice', 'upcoming', 'overdue') GROUP BY path, due_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    (r.try_get("path")?, r.try_get("due_ms")?),
                    r.try_get("sent_ms")?,
                ))
            })
            .collect()
    }

    /// Records a reminder; false if it was already sent.
    pub async fn remind_once(
        &self,
        path: &str,
        due_ms: i64,
        kind: &str,
        now_ms: i64,
    ) -> Result<bool, RotationError> {
        let done = sqlx::query(
            "INSERT INTO rotation_reminders (path, due_ms, kind, sent_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(path)
        .bind(due_ms)
        .bind(kind)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_steps_in_sql_are_the_enum_s_and_the_index_s() {
        assert_eq!(
            TERMINAL_STEPS,
            format!("({}, {})", Step::Completed as i32, Step::Parked as i32)
        );
        assert!(Step::Completed.is_terminal() && Step::Parked.is_terminal());
        let predicate = format!("WHERE step NOT IN {TERMINAL_STEPS}");
        let indexes: Vec<_> = PG
            .iter()
            .chain(SQLITE)
            .filter(|(_, _, sql)| sql.contains("rotations_one_active"))
            .collect();
        assert_eq!(indexes.len(), 2, "one index per dialect");
        for (_, _, sql) in indexes {
            assert!(sql.contains(&predicate), "{sql}");
        }
    }
}
