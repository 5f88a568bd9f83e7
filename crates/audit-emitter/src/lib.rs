//! The audit emitter every service uses. Events are batched to audit-service; when it is slow
//! or down, batches go to a durable local spool (length-prefixed protobuf, fsynced) and are
//! replayed in order once it answers again, before anything newer is sent. An event that can
//! be neither sent nor spooled makes `emit` fail, and the operation it describes must fail
//! with it (fail closed). Callers never wait longer than the send timeout plus a spool write.
//! Beside `sentia-audit` (the log's format and chain), below the server stack, which records
//! refusals through it.
#![forbid(unsafe_code)]

mod journal;
mod outcome;
pub mod private_file;

pub use outcome::{
    Call, CallInfo, Detail, Emitting, FAILURE_TRAILER, FailureKind, Sink, code_name,
};

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_proto::audit::v1::{AppendEventsRequest, AuditEvent};
use tokio::sync::{mpsc, oneshot};

use sentia_channel::{AuthedChannel, UpstreamConfig};
use sentia_config::Reader;

/// Most events sent in one append.
const MAX_BATCH: usize = 500;

/// Why an event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditUnavailable(pub String);

/// When an operation's event counts as recorded (`SENTIA_AUDIT_DURABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Stored by audit-service (or, while it is unreachable, fsynced to the local spool).
    Remote,
    /// Appended to the local journal and fsynced (group commit); shipped in the background.
    /// Survives a process kill and a power loss.
    LocalFsync,
    /// Appended to the local journal without fsync; shipped in the background. Survives a
    /// process kill (the OS holds the write), not a power loss.
    Local,
}

impl Durability {
    /// The setting's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::LocalFsync => "local-fsync",
            Self::Local => "local",
        }
    }
}

/// Where events go.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// audit-service (`SENTIA_AUDIT_SERVICE_ADDR` / `_TOKEN`); `None` only when auditing was
    /// explicitly disabled with `SENTIA_AUDIT_DISABLED=true`.
    pub upstream: Option<UpstreamConfig>,
    /// `SENTIA_AUDIT_SPOOL`: the durable spool file.
    pub spool: PathBuf,
    /// `SENTIA_AUDIT_TIMEOUT`: how long a batch may take before it is spooled instead.
    pub timeout: Duration,
    /// `SENTIA_AUDIT_QUEUE`: events waiting at most; beyond it `emit` fails at once.
    pub queue: usize,
    /// `SENTIA_AUDIT_DURABILITY`: when an event counts as recorded.
    pub durability: Durability,
}

impl AuditConfig {
    /// Reads the audit settings of `service`. Without `SENTIA_AUDIT_SERVICE_ADDR` the service
    /// refuses to start unless `SENTIA_AUDIT_DISABLED=true` says otherwise.
    pub fn from_source(reader: &mut Reader<'_>, service: &str) -> Self {
        let disabled = reader.bool_or("SENTIA_AUDIT_DISABLED", false);
        let upstream = match (disabled, reader.optional("SENTIA_AUDIT_SERVICE_ADDR")) {
            (true, _) => None,
            (false, Some(_)) => Some(UpstreamConfig::from_source(
                reader,
                "SENTIA_AUDIT_SERVICE",
                "",
            )),
            (false, None) => {
                reader.problem(
                    "SENTIA_AUDIT_SERVICE_ADDR is not set: every operation must be audited. Point it \
                     at audit-service, or set SENTIA_AUDIT_DISABLED=true to run without an audit log \
                     (never in production)",
                );
                None
            }
        };
        let spool = PathBuf::from(
            reader.string_or("SENTIA_AUDIT_SPOOL", &format!("{service}-audit.spool")),
        );
        Self::tuned(reader, upstream, spool)
    }

    /// The delivery settings (timeout, queue, durability) from `reader`, around `upstream`
    /// and `spool`.
    fn tuned(reader: &mut Reader<'_>, upstream: Option<UpstreamConfig>, spool: PathBuf) -> Self {
        let timeout = reader.duration_or("SENTIA_AUDIT_TIMEOUT", Duration::from_secs(2));
        let queue = reader.parse_or("SENTIA_AUDIT_QUEUE", 10_000usize, "a positive integer");
        let durability = match reader
            .string_or("SENTIA_AUDIT_DURABILITY", "remote")
            .as_str()
        {
            "remote" => Durability::Remote,
            "local-fsync" => Durability::LocalFsync,
            "local" => Durability::Local,
            other => {
                reader.problem(format!(
                    "SENTIA_AUDIT_DURABILITY={other:?}: use remote, local-fsync or local"
                ));
                Durability::Remote
            }
        };
        Self {
            upstream,
            spool,
            timeout,
            queue: queue.max(1),
            durability,
        }
    }

    /// Events to `upstream`, spooled at `spool` while it is away, every other setting at its
    /// default: how an in-process caller (`sentia dev`, the bench, the test sandbox) turns
    /// auditing on without variables.
    pub fn to(upstream: UpstreamConfig, spool: PathBuf) -> Self {
        let defaults = sentia_config::MapSource::default();
        Self::tuned(&mut Reader::new(&defaults), Some(upstream), spool)
    }

    /// Auditing off (tests of other features, `SENTIA_AUDIT_DISABLED=true`).
    pub fn disabled() -> Self {
        Self {
            upstream: None,
            spool: PathBuf::new(),
            timeout: Duration::from_secs(2),
            queue: 1,
            durability: Durability::Remote,
        }
    }
}

type Ack = oneshot::Sender<Result<(), AuditUnavailable>>;

/// Records audit events for one service.
pub struct Emitter {
    service: &'static str,
    emitter_id: String,
    sequence: AtomicU64,
    queue: Option<mpsc::Sender<(AuditEvent, Ack)>>,
    wait: Duration,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("service", &self.service)
            .field("emitter_id", &self.emitter_id)
            .field("enabled", &self.queue.is_some())
            .finish()
    }
}

impl Emitter {
    /// Starts the emitter's worker (when auditing is on). Spooled events from an earlier run
    /// are replayed first. The worker runs until the last handle is dropped — after the
    /// server has drained its in-flight calls, whose events it still records.
    pub fn start(
        service: &'static str,
        config: &AuditConfig,
    ) -> Result<Arc<Self>, AuditUnavailable> {
        let emitter_id = uuid::Uuid::new_v4().to_string();
        let Some(upstream) = &config.upstream else {
            tracing::warn!(
                service,
                "AUDIT DISABLED: operations are not recorded (SENTIA_AUDIT_DISABLED=true)"
            );
            return Ok(Arc::new(Self {
                service,
                emitter_id,
                sequence: AtomicU64::new(0),
                queue: None,
                wait: config.timeout,
            }));
        };
        let channel = upstream
            .channel()
            .map_err(|e| AuditUnavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(config.queue);
        observe_backlog(service, &tx, &config.spool);
        let client = AuditServiceClient::new(channel);
        match config.durability {
            Durability::Remote => {
                let spool = Spool::open(&config.spool)?;
                tokio::spawn(worker(client, spool, rx, config.timeout));
            }
            local => {
                let journal = Arc::new(
                    crate::journal::Journal::open(&config.spool, local == Durability::LocalFsync)
                        .map_err(AuditUnavailable)?,
                );
                let shipped = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(journal_writer(journal.clone(), rx, shipped.clone()));
                tokio::spawn(journal_shipper(client, journal, shipped, config.timeout));
            }
        }
        Ok(Arc::new(Self {
            service,
            emitter_id,
            sequence: AtomicU64::new(0),
            queue: Some(tx),
            wait: config.timeout,
        }))
    }

    /// True when events are being recorded.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Records `event` (service, emitter id and sequence, and time when unset, are filled
    /// in). Returns once it is durable as `SENTIA_AUDIT_DURABILITY` says: stored by
    /// audit-service or in the local spool (`remote`), or written to the local journal
    /// (`local-fsync`, `local`).
    pub async fn emit(&self, mut event: AuditEvent) -> Result<(), AuditUnavailable> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        event.service = self.service.to_string();
        event.emitter_id.clone_from(&self.emitter_id);
        event.emitter_sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        if event.time.is_none() {
            let now = sentia_proto::wkt::now_ms();
            event.time = Some(sentia_proto::wkt::timestamp(now));
        }
        let (ack, done) = oneshot::channel();
        queue
            .try_send((event, ack))
            .map_err(|_| AuditUnavailable("the audit queue is full".into()))?;
        // The worker answers within the send timeout plus a spool write; the extra margin
        // only guards against a stuck disk.
        match tokio::time::timeout(self.wait * 3 + Duration::from_secs(1), done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AuditUnavailable("the audit worker stopped".into())),
            Err(_) => Err(AuditUnavailable("recording the event timed out".into())),
        }
    }
}

/// OpenTelemetry gauges of the emitter's backlog: `sentia.audit.queue.depth` (events
/// waiting to be sent) and `sentia.audit.spool.size` (bytes spooled while audit-service was
/// unreachable), by service. They hold the queue weakly, so the worker still stops when the
/// last handle drops.
fn observe_backlog(
    service: &'static str,
    tx: &mpsc::Sender<(AuditEvent, Ack)>,
    spool: &std::path::Path,
) {
    let meter = opentelemetry::global::meter("sentia-runtime");
    let queue = tx.downgrade();
    meter
        .u64_observable_gauge("sentia.audit.queue.depth")
        .with_description("Audit events waiting to be sent")
        .with_callback(move |o| {
            if let Some(q) = queue.upgrade() {
                let depth = q.max_capacity() - q.capacity();
                o.observe(
                    depth as u64,
                    &[opentelemetry::KeyValue::new("service", service)],
                );
            }
        })
        .build();
    let path = spool.to_path_buf();
    meter
        .u64_observable_gauge("sentia.audit.spool.size")
        .with_description("Bytes of audit events spooled locally")
        .with_unit("By")
        .with_callback(move |o| {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            o.observe(size, &[opentelemetry::KeyValue::new("service", service)]);
        })
        .build();
}

/// The durable spool: `u32 length | AuditEvent protobuf` records, fsynced per batch.
struct Spool {
    path: PathBuf,
    file: std::fs::File,
    pending: bool,
}

impl Spool {
    fn open(path: &Path) -> Result<Self, AuditUnavailable> {
        // Events name principals and addresses: owner-only, like the other private files.
        let file = crate::private_file::open(
            path,
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true),
        )
        .map_err(|e| {
            AuditUnavailable(format!(
                "cannot open the audit spool {}: {e}",
                path.display()
            ))
        })?;
        let pending = file.metadata().map(|m| m.len() > 0).unwrap_or(true);
        Ok(Self {
            path: path.to_path_buf(),
            file,
            pending,
        })
    }

    fn append(&mut self, events: &[AuditEvent]) -> std::io::Result<()> {
        self.file.write_all(&crate::journal::encode(events))?;
        self.file.sync_data()?;
        self.pending = true;
        Ok(())
    }

    /// Every complete record, oldest first (a torn last record is ignored).
    fn read_all(&mut self) -> std::io::Result<Vec<AuditEvent>> {
        let mut bytes = Vec::new();
        let mut f = std::fs::File::open(&self.path)?;
        f.read_to_end(&mut bytes)?;
        Ok(crate::journal::records(&bytes).0)
    }

    fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_data()?;
        self.pending = false;
        Ok(())
    }
}

async fn send(
    client: &AuditServiceClient<AuthedChannel>,
    events: &[AuditEvent],
    timeout: Duration,
) -> Result<(), String> {
    for chunk in events.chunks(MAX_BATCH) {
        let mut c = client.clone();
        let req = AppendEventsRequest {
            events: chunk.to_vec(),
        };
        // Its own span, so the call carries trace context (each event's correlation_id names
        // the trace of the request it records).
        let span = tracing::info_span!("audit_append", events = chunk.len());
        let call = tracing::Instrument::instrument(c.append_events(req), span);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => return Err("timed out".into()),
        }
    }
    Ok(())
}

/// Sends the spool in order; clears it when everything was accepted.
async fn replay(
    client: &AuditServiceClient<AuthedChannel>,
    spool: &mut Spool,
    timeout: Duration,
) -> bool {
    let events = match spool.read_all() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "reading the audit spool failed");
            return false;
        }
    };
    if let Err(e) = send(client, &events, timeout).await {
        tracing::debug!(error = %e, pending = events.len(), "audit-service still unavailable; events stay spooled");
        return false;
    }
    match spool.clear() {
        Ok(()) => {
            tracing::info!(replayed = events.len(), "spooled audit events delivered");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "clearing the audit spool failed (its events will be re-sent; audit-service drops duplicates)");
            false
        }
    }
}

/// `first` and whatever else is queued already, up to a batch.
fn take_batch(
    first: (AuditEvent, Ack),
    rx: &mut mpsc::Receiver<(AuditEvent, Ack)>,
) -> (Vec<AuditEvent>, Vec<Ack>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(i) => batch.push(i),
            Err(_) => break,
        }
    }
    batch.into_iter().unzip()
}

/// Batches in flight to audit-service at once in `remote`: while one commits, the next is on
/// the wire and audit-service commits whatever arrived meanwhile in one transaction (group
/// commit), so a read waits for about one commit, not for a queue of them.
const PIPELINE: usize = 4;

/// A batch's outcome, in the order the batches were taken.
type Sent = (Vec<AuditEvent>, Vec<Ack>, Result<(), String>);

async fn worker(
    client: AuditServiceClient<AuthedChannel>,
    mut spool: Spool,
    mut rx: mpsc::Receiver<(AuditEvent, Ack)>,
    timeout: Duration,
) {
    use futures_util::StreamExt;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Outcomes are handled in the order the batches were taken, whatever order audit-service
    // answers in: a failed batch reaches the spool before any later one.
    let mut in_flight = futures_util::stream::FuturesOrdered::<
        std::pin::Pin<Box<dyn std::future::Future<Output = Sent> + Send>>,
    >::new();
    let mut open = true;
    loop {
        tokio::select! {
            Some((events, acks, sent)) = in_flight.next(), if !in_flight.is_empty() => {
                // A batch that was sent is in the log even when an earlier one was spooled
                // (audit-service drops the duplicates a replay may bring).
                let result = if sent.is_ok() {
                    Ok(())
                } else {
                    spool.append(&events).map_err(|e| {
                        tracing::error!(error = %e, "audit events can be neither sent nor spooled");
                        AuditUnavailable(format!(
                            "audit-service unreachable and the spool failed: {e}"
                        ))
                    })
                };
                for a in acks {
                    let _ = a.send(result.clone());
                }
            }
            item = rx.recv(), if open && in_flight.len() < PIPELINE => {
                let Some(first) = item else {
                    open = false;
                    continue;
                };
                let (events, acks) = take_batch(first, &mut rx);
                // While anything is spooled, new events queue behind it in the spool (no send
                // attempt, so callers do not wait on an audit-service that is down); the retry
                // tick replays the spool once audit-service answers.
                if spool.pending {
                    in_flight.push_back(Box::pin(async move {
                        (events, acks, Err("spooled behind earlier events".to_string()))
                    }));
                } else {
                    let client = client.clone();
                    in_flight.push_back(Box::pin(async move {
                        let sent = send(&client, &events, timeout).await;
                        (events, acks, sent)
                    }));
                }
            }
            _ = retry.tick(), if open || !in_flight.is_empty() => {
                if spool.pending && in_flight.is_empty() {
                    replay(&client, &mut spool, timeout).await;
                }
            }
            else => return,
        }
    }
}

/// `local-fsync` / `local`: appends each batch of queued events to the journal (one write,
/// and one fsync in `local-fsync`, for the whole batch: group commit) and answers their
/// callers; wakes the shipper.
async fn journal_writer(
    journal: Arc<crate::journal::Journal>,
    mut rx: mpsc::Receiver<(AuditEvent, Ack)>,
    wake: Arc<tokio::sync::Notify>,
) {
    while let Some(first) = rx.recv().await {
        let (events, acks) = take_batch(first, &mut rx);
        let result = journal.append(&events).map_err(|e| {
            tracing::error!(error = %e, "audit events cannot be journaled");
            AuditUnavailable(e)
        });
        for a in acks {
            let _ = a.send(result.clone());
        }
        wake.notify_one();
    }
    // The last handle is gone: let the shipper deliver what is left, then stop.
    wake.notify_one();
}

/// Sends the journal to audit-service in order, from the shipped offset; retries every
/// second while it is unreachable. Stops when the writer has stopped and nothing is left.
async fn journal_shipper(
    client: AuditServiceClient<AuthedChannel>,
    journal: Arc<crate::journal::Journal>,
    wake: Arc<tokio::sync::Notify>,
    timeout: Duration,
) {
    loop {
        let (events, upto) = match journal.unshipped() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "reading the audit journal failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if events.is_empty() {
            if Arc::strong_count(&wake) == 1 {
                return;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        match send(&client, &events, timeout).await {
            Ok(()) => {
                if let Err(e) = journal.shipped(upto) {
                    tracing::error!(error = %e, "recording shipped audit events failed (they will be re-sent; audit-service drops duplicates)");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, backlog = journal.backlog(), "audit-service unavailable; events stay journaled");
                if Arc::strong_count(&wake) == 1 {
                    // Shutting down: the next start ships them.
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            event_type: "secret_access".into(),
            emitter_sequence: i,
            ..Default::default()
        }
    }

    #[test]
    fn the_spool_keeps_order_and_ignores_a_torn_tail() {
        let path = std::env::temp_dir().join(format!("sentia-spool-{}", uuid::Uuid::new_v4()));
        let mut s = Spool::open(&path).unwrap();
        assert!(!s.pending);
        s.append(&[event(1), event(2)]).unwrap();
        s.append(&[event(3)]).unwrap();
        // A crash mid-write leaves half a record.
        s.file.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        let got: Vec<u64> = s
            .read_all()
            .unwrap()
            .iter()
            .map(|e| e.emitter_sequence)
            .collect();
        assert_eq!(got, vec![1, 2, 3]);
        let mut reopened = Spool::open(&path).unwrap();
        assert!(
            reopened.pending,
            "a non-empty spool is replayed after a restart"
        );
        reopened.clear().unwrap();
        assert!(reopened.read_all().unwrap().is_empty());
        let _ = std::fs::remove_file(path);
    }
}
