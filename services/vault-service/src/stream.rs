//! The change stream's wake-up signal. The database table `secret_events` is the stream
//! itself (ordered, durable, resumable); this only tells watchers "the head moved to N" —
//! in-process for writes on this replica, and through Redis pub/sub for writes on others.
//! A lost notification costs latency, never an event: watchers also re-poll periodically.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sentia_runtime::Shutdown;
use tokio::sync::watch;

use crate::cache::Cache;

/// Redis channel (under the key prefix) carrying new stream positions.
pub const CHANNEL: &str = "events";

/// Wakes watchers when the stream head moves.
#[derive(Clone)]
pub struct Notifier {
    head: Arc<watch::Sender<u64>>,
    redis: Option<Arc<Cache>>,
}

impl Notifier {
    /// A notifier starting at `head`; with Redis, positions are also published to replicas.
    pub fn new(head: u64, redis: Option<Arc<Cache>>) -> Self {
        Self {
            head: Arc::new(watch::Sender::new(head)),
            redis,
        }
    }

    /// Announces that events up to `sequence` are committed.
    pub async fn committed(&self, sequence: u64) {
        if sequence == 0 {
            return;
        }
        self.advance(sequence);
        if let Some(r) = &self.redis {
            r.publish(CHANNEL, sequence).await;
        }
    }

    fn advance(&self, sequence: u64) {
        self.head.send_if_modified(|h| {
            if sequence > *h {
                *h = sequence;
                true
            } else {
                false
            }
        });
    }

    /// A receiver that changes when the head moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Listens for other replicas' positions on Redis until shutdown, reconnecting after
    /// failures.
    pub fn listen(&self, url: String, shutdown: Shutdown) {
        let Some(cache) = self.redis.clone() else {
            return;
        };
        let this = self.clone();
        let channel = cache.channel(CHANNEL);
        tokio::spawn(async move {
            loop {
                let attempt = async {
                    let client = redis::Client::open(url.as_str())?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    tracing::debug!(%channel, "listening for change-stream positions");
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(seq) = msg.get_payload::<u64>() {
                            this.advance(seq);
                        }
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    _ = shutdown.wait() => return,
                    r = attempt => if let Err(e) = r {
                        tracing::debug!(error = %e, "change-stream subscription lost; retrying");
                    },
                }
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}
