//! Change-stream sequence numbers given after commit (Postgres; ADR 2).
//!
//! A write inserts its events into `unsequenced_events`. If the `stream_head` row is free at
//! that moment (no other write or pass holds it) the write numbers them itself, in its own
//! transaction, together with any other committed unnumbered events — as cheap as numbering
//! always was when writes do not overlap. If the row is held, the write commits without it, so
//! concurrent writes commit (and flush WAL) together, and the sequencer then moves every
//! committed unnumbered event into `secret_events`, numbered in id order, under the row lock —
//! one short transaction for all writes that committed meanwhile.
//! A reader that has seen sequence N never later finds an event below N, because numbers are
//! only handed out, and made visible, under that lock. The writer waits for its number, so a
//! change is in the stream when its RPC returns.
//!
//! Events of one path keep their commit order: every change updates the path's `secrets` row
//! before inserting its events, so a later change of that path inserts (and gets ids) only
//! after the earlier one committed. Events a crashed writer committed, or another replica's
//! sequencer took, are numbered by whichever sequencer runs next (every replica also runs one
//! every poll interval).
//!
//! SQLite has one writer at a time anyway, so there a write numbers its events in its own
//! transaction and no sequencer runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Notify, oneshot};

use crate::VaultError;

/// Events numbered per sequencer transaction.
const BATCH: i64 = 1000;

/// How long a write waits for its number before answering without it. The write itself is
/// committed; its events get numbered by a later pass, and watchers find them by polling.
const WAIT: Duration = Duration::from_secs(5);

/// Writers waiting for their events' numbers, keyed by the id of each write's last event.
#[derive(Debug, Default)]
pub struct Sequencer {
    waiting: Mutex<HashMap<i64, Waiter>>,
    wake: Notify,
}

#[derive(Debug)]
struct Waiter {
    /// Set once the write committed: a pass that starts afterwards sees its events.
    committed: bool,
    reply: oneshot::Sender<Option<u64>>,
}

/// A write's claim on its number, taken before it commits.
pub struct Ticket<'a> {
    sequencer: &'a Sequencer,
    last_id: i64,
    reply: oneshot::Receiver<Option<u64>>,
}

impl Sequencer {
    /// Registers a write whose last event has `last_id`; call before committing it.
    pub fn ticket(&self, last_id: i64) -> Ticket<'_> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(
                last_id,
                Waiter {
                    committed: false,
                    reply: tx,
                },
            );
        }
        Ticket {
            sequencer: self,
            last_id,
            reply: rx,
        }
    }

    /// Resolves when a write has committed events to number (or a poll is due).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Numbers every committed unsequenced event, in passes of up to `BATCH`.
    pub async fn run_passes(&self, pool: &AnyPool) -> Result<(), VaultError> {
        while self.pass(pool).await? == BATCH as usize {}
        Ok(())
    }

    /// Inside a write's transaction, after its events were inserted: numbers every event it
    /// can see (its own included) if no other transaction holds the stream head; `None` if one
    /// does. Pass the result to [`Sequencer::resolve`] once the transaction committed.
    pub async fn number_now(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<Option<Numbered>, VaultError> {
        let Some(row) =
            sqlx::query("SELECT sequence FROM stream_head WHERE id = 1 FOR UPDATE SKIP LOCKED")
                .fetch_optional(&mut **tx)
                .await?
        else {
            return Ok(None);
        };
        Ok(Some(move_visible(tx, row.try_get("sequence")?).await?))
    }

    /// Hands the numbers of a committed [`Numbered`] to the writes waiting for them.
    pub fn resolve(&self, numbered: &Numbered) {
        if let Ok(mut w) = self.waiting.lock() {
            for (i, id) in numbered.ids.iter().enumerate() {
                if let Some(waiter) = w.remove(id) {
                    let _ = waiter.reply.send(Some(numbered.head + i as u64 + 1));
                }
            }
        }
    }

    /// One transaction under the head lock; returns how many events it numbered.
    async fn pass(&self, pool: &AnyPool) -> Result<usize, VaultError> {
        // Writes committed before this pass's statements start: their events are visible to it.
        let settled: Vec<i64> = match self.waiting.lock() {
            Ok(w) => w
                .iter()
                .filter(|(_, w)| w.committed)
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut tx = pool.begin().await?;
        let head: i64 = sqlx::query("SELECT sequence FROM stream_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?
            .try_get("sequence")?;
        let numbered = move_visible(&mut tx, head).await?;
        tx.commit().await?;
        self.resolve(&numbered);
        let moved = numbered.ids.len();
        if moved < BATCH as usize
            && let Ok(mut w) = self.waiting.lock()
        {
            // This pass took every visible event, so a settled write it did not number was
            // numbered by another transaction (a write, or another replica's sequencer).
            for id in settled {
                if let Some(waiter) = w.remove(&id) {
                    let _ = waiter.reply.send(None);
                }
            }
        }
        Ok(moved)
    }

    fn forget(&self, last_id: i64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&last_id);
        }
    }
}

impl Ticket<'_> {
    /// After the write committed: the sequence number of its last event, or `None` if another
    /// replica numbered it or no number came within `WAIT`.
    pub async fn committed(self) -> Option<u64> {
        // Still waiting unless this write numbered its events itself: then the sequencer
        // has work to do.
        if let Ok(mut w) = self.sequencer.waiting.lock()
            && let Some(waiter) = w.get_mut(&self.last_id)
        {
            waiter.committed = true;
            self.sequencer.wake.notify_one();
        }
        match tokio::time::timeout(WAIT, self.reply).await {
            Ok(Ok(n)) => n,
            _ => {
                self.sequencer.forget(self.last_id);
                tracing::warn!(
                    "a committed change got no change-stream number in time; a later pass numbers it"
                );
                None
            }
        }
    }

    /// The write did not commit.
    pub fn abandon(self) {
        self.sequencer.forget(self.last_id);
    }
}

/// Events numbered by one transaction: `ids[i]` got `head + i + 1`.
pub struct Numbered {
    head: u64,
    ids: Vec<i64>,
}

/// With the `stream_head` lock held at `head`: moves up to `BATCH` visible unnumbered events
/// into the stream in id order and advances the head, in one statement (taken after the lock,
/// so its snapshot includes every earlier numbering).
async fn move_visible(
    tx: &mut Transaction<'static, Any>,
    head: i64,
) -> Result<Numbered, VaultError> {
    let ids = sqlx::query(
        "WITH moved AS (DELETE FROM unsequenced_events WHERE id IN \
           (SELECT id FROM unsequenced_events ORDER BY id LIMIT $2) \
           RETURNING id, kind, path, versions, label, time), \
         numbered AS (INSERT INTO secret_events (sequence, kind, path, versions, label, time) \
           SELECT $1 + row_number() OVER (ORDER BY id), kind, path, versions, label, time \
           FROM moved), \
         head AS (UPDATE stream_head SET sequence = $1 + (SELECT COUNT(*) FROM moved) \
           WHERE id = 1 AND EXISTS (SELECT 1 FROM moved)) \
         SELECT id FROM moved ORDER BY id",
    )
    .bind(head)
    .bind(BATCH)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    Ok(Numbered {
        head: head as u64,
        ids,
    })
}
