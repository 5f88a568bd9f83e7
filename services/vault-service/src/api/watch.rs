//! WatchSecrets: the change stream from a position, filtered by prefix and policy, with
//! bookmarks; woken by the notifier and re-polling so a lost wake-up costs latency only.

use std::pin::Pin;
use std::time::Duration;

use sentia_policy::Capability;
use sentia_proto::vault::v1 as pb;
use sentia_proto::wkt::timestamp;
use sentia_runtime::Principal;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::SecretApi;
use crate::VaultError;
use crate::model::Prefix;

/// Events read from the database per query while a watcher catches up.
const WATCH_BATCH: i64 = 500;
/// Watchers re-poll this often even without a notification (a lost Redis message costs at
/// most this much latency).
pub const WATCH_POLL: Duration = Duration::from_secs(2);
/// Stream type of WatchSecrets.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SecretEvent, Status>> + Send>>;

impl SecretApi {
    pub(super) fn watch(
        &self,
        p: Principal,
        r: pb::WatchSecretsRequest,
    ) -> Result<ReceiverStream<Result<pb::SecretEvent, Status>>, VaultError> {
        let prefix = Prefix::parse(&r.prefix)?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut head_rx = self.notifier.subscribe();
        let bounds = async move {
            let (oldest, head) = this.store.stream_bounds().await?;
            let start = match r.after_sequence {
                0 => head,
                a if a > head => {
                    return Err(VaultError::OutOfRange(format!(
                        "after_sequence {a} is ahead of the stream head {head}"
                    )));
                }
                a if a + 1 < oldest => {
                    return Err(VaultError::OutOfRange(format!(
                        "events after {a} are no longer retained (oldest is {oldest}); re-read \
                         the secrets you track and watch from 0"
                    )));
                }
                a => a,
            };
            Ok::<_, VaultError>((this, start))
        };
        tokio::spawn(async move {
            let (this, mut last) = match bounds.await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let bookmark = |sequence| pb::SecretEvent {
                sequence,
                kind: pb::EventKind::Bookmark as i32,
                time: Some(timestamp(sentia_proto::wkt::now_ms())),
                ..Default::default()
            };
            if tx.send(Ok(bookmark(last))).await.is_err() {
                return;
            }
            let mut told = last;
            loop {
                if p.expires_at
                    .is_some_and(|e| e <= sentia_proto::wkt::now_secs())
                {
                    let _ = tx
                        .send(Err(Status::unauthenticated(
                            "token expired; log in again and resume from the last sequence",
                        )))
                        .await;
                    return;
                }
                let batch = match this.store.events_after(last, WATCH_BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if let Some(first) = batch.first()
                    && first.sequence != last + 1
                {
                    let _ = tx.send(Err(Status::out_of_range(format!(
                        "events {}..{} were trimmed before this watcher read them; re-read and watch from 0",
                        last + 1,
                        first.sequence - 1
                    )))).await;
                    return;
                }
                let full = batch.len() as i64 == WATCH_BATCH;
                for e in batch {
                    last = e.sequence;
                    // A reader of a path may learn that it changed (it could poll the value);
                    // so may a lister.
                    if !prefix.matches(&e.path)
                        || (this.policies.check(&p, Capability::List, &e.path).is_err()
                            && this.policies.check(&p, Capability::Read, &e.path).is_err())
                    {
                        continue;
                    }
                    let event = pb::SecretEvent {
                        sequence: e.sequence,
                        kind: e.kind,
                        path: e.path,
                        versions: e.versions,
                        label: e.label,
                        time: Some(timestamp(e.time)),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    told = last;
                }
                if full {
                    continue;
                }
                if last > told {
                    if tx.send(Ok(bookmark(last))).await.is_err() {
                        return;
                    }
                    told = last;
                }
                tokio::select! {
                    _ = head_rx.changed() => {}
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                    _ = tx.closed() => return,
                    _ = this.shutdown.wait() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
