//! The audit log in the database (sqlx `Any`: Postgres or SQLite). Appends lock the single
//! chain-head row, so sequence numbers have no gaps and every record's `prev_hash` is the
//! hash of the record before it.

use std::collections::{HashMap, HashSet};

use prost::Message;
use sentia_audit::record_hash;
use sentia_db::{MigrationSource, Migrations};
use sentia_proto::audit::v1::{Alert, AuditEvent, AuditRecord, Checkpoint};
use sentia_proto::wkt::{now_ms, timestamp};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::AuditError;

/// This service's migrations for each dialect (the schema-parity test compares what they make).
pub const MIGRATIONS: Migrations = Migrations {
    postgres: PG_MIGRATIONS,
    sqlite: SQLITE_MIGRATIONS,
    seeded: &["chain_head"],
};

const PG_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "audit",
        include_str!("../migrations/postgres/0001_audit.sql"),
    ),
    (
        2,
        "alerts",
        include_str!("../migrations/postgres/0002_alerts.sql"),
    ),
    (
        3,
        "appenders",
        include_str!("../migrations/postgres/0003_appenders.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "audit",
        include_str!("../migrations/sqlite/0001_audit.sql"),
    ),
    (
        2,
        "alerts",
        include_str!("../migrations/sqlite/0002_alerts.sql"),
    ),
    (
        3,
        "appenders",
        include_str!("../migrations/sqlite/0003_appenders.sql"),
    ),
];

/// Rows per INSERT statement. Measured on Postgres through sqlx: 100 events took 44 ms as
/// one 200-row statement chunk and 1.6 ms as four 25-row statements (10-row: 1.8 ms).
const INSERT_CHUNK: usize = 25;

/// Filters of a query.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Event time at or after (ms).
    pub start_ms: Option<i64>,
    /// Event time before (ms).
    pub end_ms: Option<i64>,
    /// Principal.
    pub principal: Option<String>,
    /// Secret or key name.
    pub secret_name: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Outcome.
    pub success: Option<bool>,
}

/// Result of an append.
#[derive(Debug, Clone, Default)]
pub struct Appended {
    /// The records stored by this append (sequence, event), for alert evaluation.
    pub new_records: Vec<(u64, AuditEvent)>,
    /// Sequence of the last record stored (the head).
    pub last_sequence: u64,
    /// Events skipped because they were stored before.
    pub duplicates: u32,
    /// Events stored.
    pub stored: u32,
    /// Sequence given to each stored event, and where that event was in the append.
    stored_at: Vec<(u64, usize)>,
}

impl Appended {
    /// Moves the stored events out of the append that sent them into `new_records`.
    fn take_events(mut self, mut events: Vec<AuditEvent>) -> Self {
        self.new_records = self
            .stored_at
            .iter()
            .filter_map(|&(sequence, i)| Some((sequence, std::mem::take(events.get_mut(i)?))))
            .collect();
        self
    }
}

/// A record about to be inserted: sequence, event, its protobuf bytes, prev hash, hash,
/// appender.
type NewRow<'a> = (i64, &'a AuditEvent, Vec<u8>, [u8; 32], [u8; 32], &'a str);

/// Emitter id -> the identity that owns it, for bindings already committed: a binding never
/// changes once stored, so an append whose emitters are all known here skips looking them up.
type Owners = std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>;

/// One append waiting for the group commit.
struct PendingAppend {
    events: Vec<AuditEvent>,
    appender: String,
    reply: tokio::sync::oneshot::Sender<Result<Appended, AuditError>>,
}

/// Most events committed in one group.
const GROUP_EVENTS: usize = 5000;

/// Database access for audit-service.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// The group committer: appends that arrive while one commits share the next
    /// transaction (one chain-head lock, one fsync).
    commits: tokio::sync::mpsc::Sender<PendingAppend>,
}

/// Most emitter bindings remembered (each is a process lifetime of some service).
const MAX_KNOWN_OWNERS: usize = 10_000;

fn u64_of(row: &AnyRow, col: &str) -> Result<u64, AuditError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| AuditError::Corrupt(format!("column {col} out of range")))
}

fn i64_of(v: u64) -> Result<i64, AuditError> {
    i64::try_from(v).map_err(|_| AuditError::Invalid(format!("{v} is out of range")))
}

fn hash_of(row: &AnyRow, col: &str) -> Result<[u8; 32], AuditError> {
    let v: Vec<u8> = row.try_get(col)?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| AuditError::Corrupt(format!("column {col} is not 32 bytes")))
}

/// A record and, if its query columns no longer match its hashed event, what differs.
fn checked_record_from(row: &AnyRow) -> Result<(AuditRecord, Option<String>), AuditError> {
    let sequence = u64_of(row, "sequence")?;
    let bytes: Vec<u8> = row.try_get("event")?;
    // A record whose event no longer decodes is reported, not skipped: verification names it.
    let event = AuditEvent::decode(bytes.as_slice()).ok();
    let edited = match &event {
        Some(e) => index_edits(row, e)?,
        None => None,
    };
    Ok((
        AuditRecord {
            sequence,
            event,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
            receive_time: Some(timestamp(row.try_get("receive_time")?)),
            appender: row.try_get("appender")?,
        },
        edited,
    ))
}

/// The columns queries filter on (and replays are matched on) are copies of the hashed
/// event's fields; the hash covers them only through this comparison. Names every column
/// that differs.
fn index_edits(row: &AnyRow, e: &AuditEvent) -> Result<Option<String>, AuditError> {
    let mut edited = Vec::new();
    let text = |col: &str, want: &str, edited: &mut Vec<String>| -> Result<(), AuditError> {
        if row.try_get::<String, _>(col)? != want {
            edited.push(col.to_string());
        }
        Ok(())
    };
    text("emitter_id", &e.emitter_id, &mut edited)?;
    text("event_type", &e.event_type, &mut edited)?;
    text("principal", &e.principal, &mut edited)?;
    text("secret_name", &e.secret_name, &mut edited)?;
    let ints = [
        ("emitter_sequence", i64_of(e.emitter_sequence).unwrap_or(-1)),
        ("time", time_ms(e)),
        ("success", i64::from(e.success)),
    ];
    for (col, want) in ints {
        if row.try_get::<i64, _>(col)? != want {
            edited.push(col.to_string());
        }
    }
    Ok((!edited.is_empty()).then(|| {
        format!(
            "the indexed column(s) {} differ from the hashed event (edited)",
            edited.join(", ")
        )
    }))
}

fn alert_from(row: &AnyRow) -> Result<Alert, AuditError> {
    let sequences: String = row.try_get("sequences")?;
    Ok(Alert {
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        severity: row.try_get::<i64, _>("severity")? as i32,
        summary: row.try_get("summary")?,
        principal: row.try_get("principal")?,
        secret_name: row.try_get("secret_name")?,
        time: Some(timestamp(row.try_get("time")?)),
        sequences: serde_json::from_str(&sequences)
            .map_err(|_| AuditError::Corrupt("an alert's sequences".into()))?,
        acknowledged: row.try_get::<i64, _>("acknowledged")? != 0,
        acknowledged_by: row.try_get("acknowledged_by")?,
    })
}

fn checkpoint_from(row: &AnyRow) -> Result<Checkpoint, AuditError> {
    Ok(Checkpoint {
        sequence: u64_of(row, "sequence")?,
        head_hash: row.try_get("head_hash")?,
        signature: row.try_get("signature")?,
        kid: row.try_get("kid")?,
        time: Some(timestamp(row.try_get("time")?)),
    })
}

fn time_ms(e: &AuditEvent) -> i64 {
    e.time.as_ref().map_or(0, |t| {
        t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
    })
}

const RECORD_COLUMNS: &str = "sequence, event, prev_hash, hash, receive_time, appender, \
     emitter_id, emitter_sequence, time, event_type, principal, secret_name, success";

impl Store {
    /// Connects and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, AuditError> {
        let pool = sentia_db::connect(url, max_connections, MIGRATIONS).await?;
        let owners = Owners::default();
        let (commits, queue) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(group_commit(pool.clone(), owners.clone(), queue));
        Ok(Self { pool, commits })
    }

    /// The pool, for tests that alter rows.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Appends events (already validated) from the authenticated identity `appender`;
    /// duplicates of stored events (same emitter id and emitter sequence) are skipped. An
    /// emitter id another identity appended with first is refused (nothing is stored).
    /// Appends waiting together are committed in one transaction; each gets its own result.
    pub async fn append(
        &self,
        events: Vec<AuditEvent>,
        appender: &str,
    ) -> Result<Appended, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let closed = || AuditError::Unavailable("the audit log's committer stopped".into());
        self.commits
            .send(PendingAppend {
                events,
                appender: appender.to_string(),
                reply,
            })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// (sequence, hash) of the chain head.
    pub async fn head(&self) -> Result<(u64, [u8; 32]), AuditError> {
        let row = sqlx::query("SELECT sequence, hash FROM chain_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((u64_of(&row, "sequence")?, hash_of(&row, "hash")?))
    }

    /// Records from `after` + 1 up to `to` (inclusive), at most `limit`, in sequence order.
    pub async fn records(
        &self,
        after: u64,
        to: u64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(self
            .checked_records(after, to, limit)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// [`Store::records`], each with what is wrong with its indexed columns, if anything.
    pub async fn checked_records(
        &self,
        after: u64,
        to: u64,
        limit: i64,
    ) -> Result<Vec<(AuditRecord, Option<String>)>, AuditError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records WHERE sequence > $1 AND sequence <= $2 \
             ORDER BY sequence LIMIT $3"
        ));
        let rows = sqlx::query(sql)
            .bind(i64_of(after)?)
            .bind(i64_of(to.min(i64::MAX as u64))?)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(checked_record_from).collect()
    }

    /// The hash stored in record `sequence`, if it exists.
    pub async fn hash_at(&self, sequence: u64) -> Result<Option<[u8; 32]>, AuditError> {
        let row = sqlx::query("SELECT hash FROM audit_records WHERE sequence = $1")
            .bind(i64_of(sequence)?)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| hash_of(&r, "hash")).transpose()
    }

    /// Records matching `filter` after sequence `after`, oldest first.
    pub async fn query(
        &self,
        filter: &Filter,
        after: u64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let mut clauses = vec!["sequence > $1".to_string()];
        let mut n = 1;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.start_ms.is_some() {
            clauses.push(format!("time >= {}", next()));
        }
        if filter.end_ms.is_some() {
            clauses.push(format!("time < {}", next()));
        }
        if filter.principal.is_some() {
            clauses.push(format!("principal = {}", next()));
        }
        if filter.secret_name.is_some() {
            clauses.push(format!("secret_name = {}", next()));
        }
        if filter.event_type.is_some() {
            clauses.push(format!("event_type = {}", next()));
        }
        if filter.success.is_some() {
            clauses.push(format!("success = {}", next()));
        }
        let limit_param = next();
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records WHERE {} ORDER BY sequence LIMIT {limit_param}",
            clauses.join(" AND ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64_of(after)?);
        if let Some(v) = filter.start_ms {
            q = q.bind(v);
        }
        if let Some(v) = filter.end_ms {
            q = q.bind(v);
        }
        if let Some(v) = &filter.principal {
            q = q.bind(v.clone());
        }
        if let Some(v) = &filter.secret_name {
            q = q.bind(v.clone());
        }
        if let Some(v) = &filter.event_type {
            q = q.bind(v.clone());
        }
        if let Some(v) = filter.success {
            q = q.bind(i64::from(v));
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let (record, edited) = checked_record_from(row)?;
            if let Some(why) = edited {
                return Err(AuditError::Corrupt(format!(
                    "record {}: {why}; run VerifyChain",
                    record.sequence
                )));
            }
            out.push(record);
        }
        Ok(out)
    }

    /// Checkpoints with `from <= sequence <= to`, oldest first.
    pub async fn checkpoints(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, AuditError> {
        let rows = sqlx::query(
            "SELECT sequence, head_hash, signature, kid, time FROM checkpoints \
             WHERE sequence >= $1 AND sequence <= $2 ORDER BY sequence",
        )
        .bind(i64_of(from)?)
        .bind(i64_of(to.min(i64::MAX as u64))?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from).collect()
    }

    /// Checkpoints below `before` (0 = all), newest first.
    pub async fn checkpoints_desc(
        &self,
        before: u64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, AuditError> {
        let before = if before == 0 {
            i64::MAX
        } else {
            i64_of(before)?
        };
        let rows = sqlx::query(
            "SELECT sequence, head_hash, signature, kid, time FROM checkpoints \
             WHERE sequence < $1 ORDER BY sequence DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from).collect()
    }

    /// Sequence of the newest checkpoint (0 if none).
    pub async fn last_checkpoint(&self) -> Result<u64, AuditError> {
        let row = sqlx::query("SELECT MAX(sequence) AS m FROM checkpoints")
            .fetch_one(&self.pool)
            .await?;
        let m: Option<i64> = row.try_get("m")?;
        Ok(m.unwrap_or(0).max(0) as u64)
    }

    /// Stores a checkpoint (another replica may have stored the same one: not an error).
    pub async fn add_checkpoint(&self, c: &Checkpoint) -> Result<(), AuditError> {
        sqlx::query(
            "INSERT INTO checkpoints (sequence, head_hash, signature, kid, time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sequence) DO NOTHING",
        )
        .bind(i64_of(c.sequence)?)
        .bind(c.head_hash.clone())
        .bind(c.signature.clone())
        .bind(c.kid.clone())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the records received before `before_ms`, but only up to the newest signed
    /// checkpoint among them, so what remains is anchored by a checkpoint. Returns the
    /// sequence purged through (0 = nothing) and how many records went.
    pub async fn purge(&self, before_ms: i64) -> Result<(u64, u64), AuditError> {
        let row = sqlx::query(
            "SELECT MAX(c.sequence) AS m FROM checkpoints c \
             JOIN audit_records r ON r.sequence = c.sequence WHERE r.receive_time < $1",
        )
        .bind(before_ms)
        .fetch_one(&self.pool)
        .await?;
        let Some(through) = row.try_get::<Option<i64>, _>("m")? else {
            return Ok((0, 0));
        };
        let r = sqlx::query("DELETE FROM audit_records WHERE sequence <= $1")
            .bind(through)
            .execute(&self.pool)
            .await?;
        Ok((through.max(0) as u64, r.rows_affected()))
    }

    /// The checkpoint at exactly `sequence`, if any.
    pub async fn checkpoint_at(&self, sequence: u64) -> Result<Option<Checkpoint>, AuditError> {
        Ok(self
            .checkpoints(sequence, sequence)
            .await?
            .into_iter()
            .next())
    }

    /// Stores a raised alert.
    pub async fn add_alert(&self, a: &Alert) -> Result<(), AuditError> {
        sqlx::query(
            "INSERT INTO alerts (id, rule, severity, summary, principal, secret_name, time, sequences, \
             acknowledged, acknowledged_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, '')",
        )
        .bind(a.id.clone())
        .bind(a.rule.clone())
        .bind(i64::from(a.severity))
        .bind(a.summary.clone())
        .bind(a.principal.clone())
        .bind(a.secret_name.clone())
        .bind(a.time.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
        .bind(serde_json::to_string(&a.sequences).unwrap_or_else(|_| "[]".into()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Alerts raised before alert `before` ("" = newest), newest first. Ids are UUIDv7 of
    /// one fixed shape, so their order is the same under any collation.
    pub async fn alerts(
        &self,
        include_acknowledged: bool,
        before: &str,
        limit: i64,
    ) -> Result<Vec<Alert>, AuditError> {
        const COLUMNS: &str = "id, rule, severity, summary, principal, secret_name, time, \
             sequences, acknowledged, acknowledged_by";
        let acked = i64::from(include_acknowledged);
        let rows = if before.is_empty() {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM alerts WHERE (acknowledged = 0 OR $1 = 1) \
                 ORDER BY id DESC LIMIT $2"
            ));
            sqlx::query(sql)
                .bind(acked)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
        } else {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM alerts WHERE id < $1 AND (acknowledged = 0 OR $2 = 1) \
                 ORDER BY id DESC LIMIT $3"
            ));
            sqlx::query(sql)
                .bind(before)
                .bind(acked)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
        };
        rows.iter().map(alert_from).collect()
    }

    /// Marks an alert acknowledged by `by`; `None` if there is no such alert.
    pub async fn acknowledge(&self, id: &str, by: &str) -> Result<Option<Alert>, AuditError> {
        sqlx::query("UPDATE alerts SET acknowledged = 1, acknowledged_by = $1 WHERE id = $2 AND acknowledged = 0")
            .bind(by)
            .bind(id)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(
            "SELECT id, rule, severity, summary, principal, secret_name, time, sequences, acknowledged, \
             acknowledged_by FROM alerts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alert_from).transpose()
    }

    /// When `identity` last appended an event of `event_type` about itself (its principal
    /// and the authenticated appender both `identity`, so no other caller can stand in for
    /// it), in ms; `None` if never.
    pub async fn last_report_of(
        &self,
        identity: &str,
        event_type: &str,
    ) -> Result<Option<i64>, AuditError> {
        let row = sqlx::query(
            "SELECT MAX(time) AS t FROM audit_records WHERE principal = $1 AND appender = $1 \
             AND event_type = $2",
        )
        .bind(identity)
        .bind(event_type)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    /// The time of the oldest retained record, in ms; `None` when the log is empty.
    pub async fn oldest_record_time(&self) -> Result<Option<i64>, AuditError> {
        let row = sqlx::query("SELECT MIN(time) AS t FROM audit_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("t")?)
    }

    /// How many alerts of `rule` are still unacknowledged.
    pub async fn open_alerts_of(&self, rule: &str) -> Result<i64, AuditError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM alerts WHERE acknowledged = 0 AND rule = $1")
                .bind(rule)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("n")?)
    }

    /// The oldest retained sequence (head + 1 when empty).
    pub async fn oldest(&self) -> Result<u64, AuditError> {
        let row = sqlx::query("SELECT MIN(sequence) AS m FROM audit_records")
            .fetch_one(&self.pool)
            .await?;
        let m: Option<i64> = row.try_get("m")?;
        match m {
            Some(m) => Ok(m.max(0) as u64),
            None => Ok(self.head().await?.0 + 1),
        }
    }
}

/// Commits queued appends: everything waiting when a commit starts goes into the next one. A
/// group that fails as a whole is retried one append at a time, so each caller gets its own
/// outcome and one bad append cannot fail the others.
async fn group_commit(
    pool: AnyPool,
    owners: Owners,
    mut queue: tokio::sync::mpsc::Receiver<PendingAppend>,
) {
    let sqlite = pool.connect_options().database_url.scheme() == "sqlite";
    while let Some(first) = queue.recv().await {
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < GROUP_EVENTS {
            match queue.try_recv() {
                Ok(p) => {
                    events += p.events.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let requests: Vec<(&[AuditEvent], &str)> = group
            .iter()
            .map(|p| (p.events.as_slice(), p.appender.as_str()))
            .collect();
        match append_group(&pool, sqlite, &owners, &requests).await {
            Ok(results) => {
                drop(requests);
                for (p, r) in group.into_iter().zip(results) {
                    let _ = p.reply.send(r.map(|a| a.take_events(p.events)));
                }
            }
            Err(e) if group.len() == 1 => {
                drop(requests);
                if let Some(p) = group.pop() {
                    let _ = p.reply.send(Err(e));
                }
            }
            Err(_) => {
                drop(requests);
                for p in group {
                    let one = [(p.events.as_slice(), p.appender.as_str())];
                    let r = match append_group(&pool, sqlite, &owners, &one).await {
                        Ok(mut r) => r.pop().unwrap_or_else(|| {
                            Err(AuditError::Unavailable("the append had no outcome".into()))
                        }),
                        Err(e) => Err(e),
                    };
                    let _ = p.reply.send(r.map(|a| a.take_events(p.events)));
                }
            }
        }
    }
}

/// Appends each request's events in one transaction under the chain-head lock. A request
/// whose emitter id belongs to another identity gets its own PERMISSION_DENIED and stores
/// nothing; the others go ahead. Any other failure fails the whole transaction.
async fn append_group(
    pool: &AnyPool,
    sqlite: bool,
    owners: &Owners,
    requests: &[(&[AuditEvent], &str)],
) -> Result<Vec<Result<Appended, AuditError>>, AuditError> {
    let mut tx = pool.begin().await?;
    // Takes the head row's lock until commit: appends are serialized, the chain is linear.
    let head = sqlx::query(
        "UPDATE chain_head SET sequence = sequence WHERE id = 1 RETURNING sequence, hash",
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut sequence = u64_of(&head, "sequence")?;
    let mut prev = hash_of(&head, "hash")?;
    let now = now_ms();

    // Ownership: decided per request, in order; a binding made earlier in this group counts.
    let mut decided: HashMap<&str, &str> = HashMap::new();
    let mut bound: Vec<(&str, &str)> = Vec::new();
    let mut results: Vec<Option<Result<Appended, AuditError>>> = Vec::new();
    for (events, appender) in requests {
        let emitters: HashSet<&str> = events.iter().map(|e| e.emitter_id.as_str()).collect();
        let mut denied = None;
        let mut new = Vec::new();
        for emitter in emitters {
            let owner = match decided.get(emitter) {
                Some(o) => Some((*o).to_string()),
                None => match owners.lock().ok().and_then(|o| o.get(emitter).cloned()) {
                    Some(o) => Some(o),
                    None => sqlx::query("SELECT identity FROM emitters WHERE emitter_id = $1")
                        .bind(emitter)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| row.try_get::<String, _>("identity"))
                        .transpose()?,
                },
            };
            match owner {
                Some(owner) if owner != *appender => {
                    denied = Some(AuditError::Denied(format!(
                        "emitter id {emitter} belongs to '{owner}'; '{appender}' may not append \
                         under it"
                    )));
                    break;
                }
                Some(_) => {
                    decided.insert(emitter, appender);
                }
                None => new.push(emitter),
            }
        }
        if let Some(d) = denied {
            results.push(Some(Err(d)));
            continue;
        }
        for emitter in new {
            // Under the head lock: the first appender of an emitter id wins it for good.
            sqlx::query(
                "INSERT INTO emitters (emitter_id, identity, first_seen) VALUES ($1, $2, $3)",
            )
            .bind(emitter)
            .bind(*appender)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            decided.insert(emitter, appender);
            bound.push((emitter, appender));
        }
        results.push(None);
    }

    // Duplicates: events stored before, or earlier in this group.
    let accepted = || {
        requests
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .flat_map(|((events, _), _)| events.iter())
    };
    let mut ranges: HashMap<&str, (u64, u64)> = HashMap::new();
    for e in accepted() {
        let r = ranges
            .entry(e.emitter_id.as_str())
            .or_insert((e.emitter_sequence, e.emitter_sequence));
        r.0 = r.0.min(e.emitter_sequence);
        r.1 = r.1.max(e.emitter_sequence);
    }
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    for (emitter, (lo, hi)) in &ranges {
        let rows = sqlx::query(
            "SELECT emitter_sequence FROM audit_records \
             WHERE emitter_id = $1 AND emitter_sequence >= $2 AND emitter_sequence <= $3",
        )
        .bind(*emitter)
        .bind(i64_of(*lo)?)
        .bind(i64_of(*hi)?)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            seen.insert((emitter, u64_of(r, "emitter_sequence")?));
        }
    }

    let mut rows: Vec<NewRow<'_>> = Vec::new();
    for ((events, appender), result) in requests.iter().zip(results.iter_mut()) {
        if result.is_some() {
            continue;
        }
        let mut out = Appended::default();
        for (i, e) in events.iter().enumerate() {
            if !seen.insert((e.emitter_id.as_str(), e.emitter_sequence)) {
                out.duplicates += 1;
                continue;
            }
            sequence += 1;
            let hash = record_hash(&prev, e, sequence, appender);
            rows.push((
                i64_of(sequence)?,
                e,
                e.encode_to_vec(),
                prev,
                hash,
                appender,
            ));
            // The event itself is moved in by the caller, which owns it.
            out.stored_at.push((sequence, i));
            prev = hash;
        }
        out.stored = out.stored_at.len() as u32;
        out.last_sequence = sequence;
        *result = Some(Ok(out));
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        // SQLite looks each numbered parameter up by name (linear in the statement's count,
        // so quadratic per statement): anonymous `?` parameters bind in order for free.
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = i * 13;
                let p: Vec<String> = (1..=13)
                    .map(|k| {
                        if sqlite {
                            "?".into()
                        } else {
                            format!("${}", b + k)
                        }
                    })
                    .collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_records (sequence, emitter_id, emitter_sequence, time, event_type, \
             principal, secret_name, success, event, prev_hash, hash, receive_time, appender) VALUES {}",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (seq, e, bytes, prev_hash, hash, appender) in chunk {
            q = q
                .bind(*seq)
                .bind(e.emitter_id.as_str())
                .bind(i64_of(e.emitter_sequence)?)
                .bind(time_ms(e))
                .bind(e.event_type.as_str())
                .bind(e.principal.as_str())
                .bind(e.secret_name.as_str())
                .bind(i64::from(e.success))
                .bind(bytes.clone())
                .bind(prev_hash.to_vec())
                .bind(hash.to_vec())
                .bind(now)
                .bind(*appender);
        }
        q.execute(&mut *tx).await?;
    }
    if !rows.is_empty() {
        sqlx::query("UPDATE chain_head SET sequence = $1, hash = $2 WHERE id = 1")
            .bind(i64_of(sequence)?)
            .bind(prev.to_vec())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // Only committed bindings are remembered: they never change after that.
    if let Ok(mut o) = owners.lock() {
        if o.len() + bound.len() > MAX_KNOWN_OWNERS {
            o.clear();
        }
        for (e, a) in bound {
            o.insert(e.to_string(), a.to_string());
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(AuditError::Unavailable("no outcome".into()))))
        .collect())
}
