//! The change stream's table side: events as stored, reading them in order, trimming, and
//! writing a transaction's events at its very end (numbered here on SQLite, by the
//! [`crate::sequencer`] on Postgres).

use sentia_runtime::audit::Call;
use sqlx::{Any, Row, Transaction};

use super::{Store, i64_of, u64_of};
use crate::VaultError;

/// Change-stream event kinds (values match `EventKind` in vault.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// New version.
    VersionCreated = 1,
    /// Label moved.
    LabelMoved = 2,
    /// Soft-deleted.
    Deleted = 3,
    /// Undeleted.
    Undeleted = 4,
    /// Destroyed.
    Destroyed = 5,
    /// Metadata changed.
    MetadataUpdated = 6,
}

/// One change-stream event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Position.
    pub sequence: u64,
    /// Kind.
    pub kind: i32,
    /// Path.
    pub path: String,
    /// Versions affected.
    pub versions: Vec<u64>,
    /// Label (label moves).
    pub label: String,
    /// When (ms).
    pub time: i64,
}

impl Store {
    /// Events after `after`, oldest first.
    pub async fn events_after(&self, after: u64, limit: i64) -> Result<Vec<Event>, VaultError> {
        let rows = sqlx::query(
            "SELECT sequence, kind, path, versions, label, time FROM secret_events \
             WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(i64_of(after)?)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let versions: String = r.try_get("versions")?;
                Ok(Event {
                    sequence: u64_of(r, "sequence")?,
                    kind: r.try_get::<i64, _>("kind")? as i32,
                    path: r.try_get("path")?,
                    versions: serde_json::from_str(&versions)
                        .map_err(|_| VaultError::DataLoss("an event row".into()))?,
                    label: r.try_get("label")?,
                    time: r.try_get("time")?,
                })
            })
            .collect()
    }

    /// (oldest retained sequence, head sequence). With no retained events oldest = head + 1.
    pub async fn stream_bounds(&self) -> Result<(u64, u64), VaultError> {
        let head = sqlx::query("SELECT sequence FROM stream_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let head = u64_of(&head, "sequence")?;
        let oldest = sqlx::query("SELECT MIN(sequence) AS m FROM secret_events")
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<i64> = oldest.try_get("m")?;
        Ok((oldest.map_or(head + 1, |o| o as u64), head))
    }

    /// Drops events older than `before_ms`, keeping the newest one so the stream head stays
    /// visible. Returns how many were dropped.
    pub async fn trim_events(&self, before_ms: i64) -> Result<u64, VaultError> {
        let r = sqlx::query(
            "DELETE FROM secret_events WHERE time < $1 AND sequence < (SELECT sequence FROM stream_head WHERE id = 1)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

/// Change-stream events of one transaction, written at its very end.
#[derive(Default)]
pub(super) struct Pending(Vec<(EventKind, String, String, String)>);

impl Pending {
    pub(super) fn push(&mut self, kind: EventKind, path: &str, versions: &[u64], label: &str) {
        let versions = serde_json::to_string(versions).unwrap_or_else(|_| "[]".into());
        self.0
            .push((kind, path.to_string(), versions, label.to_string()));
    }

    /// Writes the events and commits; returns the highest sequence number they got (0 if
    /// none, or if it is not known: see [`crate::sequencer`]).
    /// With an `audit` call, the change's audit event is recorded first; if it cannot be, the
    /// transaction is dropped and nothing changes.
    /// On Postgres the events go to `unsequenced_events`; this transaction numbers them if the
    /// stream head is free, else the sequencer does after commit, so writers never wait for
    /// each other's commits ([`crate::sequencer`]). On SQLite (one writer at a time anyway) the
    /// numbers come from `stream_head` in this transaction.
    pub(super) async fn commit(
        self,
        store: &Store,
        mut tx: Transaction<'static, Any>,
        now: i64,
        audit: Option<&Call<'_>>,
    ) -> Result<u64, VaultError> {
        if self.0.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        if let Some(g) = audit {
            g.record()
                .await
                .map_err(|e| VaultError::AuditUnavailable(e.0))?;
        }
        let n = self.0.len();
        let Some(sequencer) = &store.sequencer else {
            let row = sqlx::query(
                "UPDATE stream_head SET sequence = sequence + $1 WHERE id = 1 RETURNING sequence",
            )
            .bind(n as i64)
            .fetch_one(&mut *tx)
            .await?;
            let last: i64 = row.try_get("sequence")?;
            self.insert(&mut tx, Some(last - n as i64 + 1), now).await?;
            tx.commit().await?;
            return Ok(last as u64);
        };
        let last_id = self.insert(&mut tx, None, now).await?;
        let ticket = sequencer.ticket(last_id);
        let numbered = match sequencer.number_now(&mut tx).await {
            Ok(n) => n,
            Err(e) => {
                ticket.abandon();
                return Err(e);
            }
        };
        if let Err(e) = tx.commit().await {
            ticket.abandon();
            return Err(e.into());
        }
        if let Some(n) = &numbered {
            sequencer.resolve(n);
        }
        Ok(ticket.committed().await.unwrap_or(0))
    }

    /// Inserts the events: into the stream numbered from `first`, or without `first` into
    /// `unsequenced_events`, returning the largest id generated.
    async fn insert(
        self,
        tx: &mut Transaction<'static, Any>,
        first: Option<i64>,
        now: i64,
    ) -> Result<i64, VaultError> {
        let (cols, into, returning) = match first {
            Some(_) => (6, "secret_events (sequence, ", ""),
            None => (5, "unsequenced_events (", " RETURNING id"),
        };
        let placeholders: Vec<String> = (0..self.0.len())
            .map(|i| {
                let b = i * cols;
                let p: Vec<String> = (1..=cols).map(|k| format!("${}", b + k)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {into}kind, path, versions, label, time) VALUES {}{returning}",
            placeholders.join(", "),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, (kind, path, versions, label)) in self.0.into_iter().enumerate() {
            if let Some(first) = first {
                q = q.bind(first + i as i64);
            }
            q = q
                .bind(kind as i64)
                .bind(path)
                .bind(versions)
                .bind(label)
                .bind(now);
        }
        if first.is_some() {
            q.execute(&mut **tx).await?;
            return Ok(0);
        }
        let mut last = 0;
        for r in q.fetch_all(&mut **tx).await? {
            last = last.max(r.try_get::<i64, _>("id")?);
        }
        Ok(last)
    }
}
